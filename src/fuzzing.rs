//! What the fuzz targets (`fuzz/`) and their regression test (`tests/fuzz_regressions.rs`)
//! run, so the two cannot drift apart: one function per target, taking the fuzzer's bytes.
//!
//! Each function feeds the bytes to the parsers that see outside input, the way the daemon
//! does, and panics only when something the parser promised does not hold (a frame that is
//! not a JPEG, an event reported twice, a token in `Debug` output). An `Err` is a good
//! answer: bad input gets an error, never a panic, an unbounded allocation or a hang.
//!
//! Input layouts (a leading byte or two choose the variant, the rest is the peer's bytes):
//! - [`mjpeg`]: `[flags, chunking, stream...]`;
//! - [`jpeg`]: `[flags, jpeg...]`;
//! - [`moonraker`]: websocket text frames, one per line;
//! - [`server`]: `[status hi, status lo, clock, body...]`;
//! - [`config`]: TOML text.
//! - [`bambu`]: MQTT report messages of a Bambu printer, one per line (an empty line: the
//!   connection dropped); the first 16 bytes also as a camera frame header.
//!
//! Not part of the API: hidden from the documentation, may change at any time.

use crate::camera::mjpeg::{Event, MjpegParser};
use crate::camera::orientation::{Method, Orientation};
use crate::detector::jpeg::Decoder;
use crate::detector::preprocess::{self, MAX_PIXELS, MAX_SIDE, Preprocessor};
use crate::frameguard;

/// The MJPEG parser fed one stream in chunks whose sizes the input chooses.
///
/// `flags`: bits 0-1 the multipart boundary (none, `frame`, `--boundarydonotcross`,
/// quoted), bits 2-3 the frame size cap (64 B to 1 MiB). `chunking`: 0 feeds the stream
/// at once, else chunk sizes cycle pseudo-randomly in `1..=4 * chunking`.
pub fn mjpeg(data: &[u8]) {
    let [flags, chunking, stream @ ..] = data else { return };
    let boundary = [None, Some("frame"), Some("--boundarydonotcross"), Some("\"quoted\"")][usize::from(flags & 3)];
    let max = [64, 4096, 65536, 1 << 20][usize::from(flags >> 2 & 3)];
    let mut parser = MjpegParser::new(max, boundary);
    let mut rest = stream;
    let mut seed = u32::from(*chunking) | 0x9e37_7900;
    while !rest.is_empty() {
        let n = if *chunking == 0 {
            rest.len()
        } else {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            1 + (seed as usize) % (4 * usize::from(*chunking))
        };
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        for event in parser.push(chunk) {
            if let Event::Frame(f) = event {
                assert!(f.len() >= 4 && f.len() <= max, "a frame of {} bytes with a cap of {max}", f.len());
                assert!(f.starts_with(&[0xFF, 0xD8]) && f.ends_with(&[0xFF, 0xD9]), "a frame that is not SOI..EOI");
            }
        }
    }
}

/// The size a JPEG's frame header declares, as libjpeg-turbo reads it, or `None` when it
/// cannot be read.
fn declared_size(jpeg: &[u8]) -> Option<(usize, usize)> {
    let h = turbojpeg::read_header(jpeg).ok()?;
    Some((h.width, h.height))
}

fn within_limits((w, h): (usize, usize)) -> bool {
    w <= MAX_SIDE && h <= MAX_SIDE && w * h <= MAX_PIXELS
}

/// Header probing, one rotation/flip, the banded pre-processing and a band decode.
///
/// `flags`: bits 0-1 the rotation, bit 2 the left-right flip, bit 3 the top-bottom flip,
/// bits 4-5 the pre-processing threads (1-4), bits 6-7 which rows a direct band decode
/// asks for.
pub fn jpeg(data: &[u8]) {
    let [flags, jpeg @ ..] = data else { return };
    let _ = preprocess::jpeg_dimensions(jpeg);
    let mut decoder = Decoder::new().expect("a JPEG decoder");
    let header = decoder.header(jpeg);
    let guarded = frameguard::check(jpeg);
    // No guard here: the transform checks the frame itself (a frame bomb must not get
    // through it).
    let rotation = 90 * u16::from(flags & 3);
    let o = Orientation { rotation, flip_horizontal: flags & 4 != 0, flip_vertical: flags & 8 != 0 };
    if let Ok((out, method)) = o.apply_traced(jpeg) {
        assert!(guarded.is_ok() || method == Method::Unchanged, "{o:?} turned a frame the guard refuses");
        if let (Some((w, h)), true) = (declared_size(jpeg), method != Method::Unchanged) {
            let turned = if rotation % 180 == 90 { (h, w) } else { (w, h) };
            assert_eq!(declared_size(&out), Some(turned), "{method:?} {o:?} of a {w}x{h} frame");
        }
    }
    let threads = 1 + usize::from(flags >> 4 & 3);
    let (tw, th) = (24, 16);
    let mut tensor = vec![0f32; 3 * tw * th];
    if let Ok((w, h, _)) = Preprocessor::new(threads).run(jpeg, (tw, th), &mut tensor) {
        assert!(within_limits((w, h)), "a {w}x{h} frame was decoded");
        assert!(tensor.iter().all(|v| (0.0..=1.0).contains(v)), "tensor values outside 0..1");
    }
    // A band straight from the decoder (callers check the size first, as here).
    if let (Ok(hd), Ok(_)) = (header, &guarded) {
        assert!(within_limits((hd.width, hd.height)), "the guard let a {}x{} frame through", hd.width, hd.height);
        let band = usize::from(flags >> 6);
        let start = hd.height * band / 4;
        let end = (start + 1 + hd.height / 3).min(hd.height);
        let mut out = vec![0u8; (end - start) * hd.width * 3];
        let _ = decoder.decode_rows(jpeg, start..end, &mut out);
    }
}

/// Moonraker's websocket text frames, one per line, through the link's parsing, bounded
/// status merging and event derivation ([`MessageReplay`]); panics if a print is reported
/// as started twice, or as finished twice or without a start.
///
/// [`MessageReplay`]: crate::printer::moonraker::MessageReplay
pub fn moonraker(data: &[u8]) {
    use crate::printer::PrinterEvent;
    let text = String::from_utf8_lossy(data);
    let mut replay = crate::printer::moonraker::MessageReplay::new();
    let (mut started, mut finished) = (std::collections::HashSet::new(), std::collections::HashSet::new());
    for frame in text.split('\n') {
        let _ = replay.apply(frame).map_err(|e| e.to_string());
        for ev in replay.events() {
            match ev {
                PrinterEvent::PrintStarted { job, .. } | PrinterEvent::Attached { job, .. } => {
                    assert!(started.insert(job.clone()), "{job:?} reported as started twice");
                }
                PrinterEvent::Finished { job, .. } => {
                    assert!(started.contains(&job), "{job:?} finished but never started");
                    assert!(finished.insert(job.clone()), "{job:?} reported as finished twice");
                }
                _ => {}
            }
        }
        let _ = replay.status();
    }
}

/// A Bambu printer's report topic: each line parsed, merged into the report state and
/// read by the tracker, as the link does; the merged state stays bounded and each print
/// starts and ends once.
pub fn bambu(data: &[u8]) {
    use crate::printer::bambu::report::{Message, Report, parse_message};
    use crate::printer::bambu::tracker::Tracker;
    use crate::printer::{PrinterEvent, PrinterStatus};
    if let Ok(header) = <[u8; 16]>::try_from(&data[..data.len().min(16)]) {
        let _ = crate::camera::bambu::frame_length(&header, 8 << 20);
    }
    let mut report = Report::default();
    let mut tracker = Tracker::new("01P00A000000000");
    let mut status = PrinterStatus::default();
    let (mut started, mut current) = (std::collections::HashSet::new(), None);
    for line in data.split(|&b| b == b'\n') {
        let mut out = Vec::new();
        if line.is_empty() {
            report.clear();
            tracker.offline("lost", &mut out, &mut status);
        } else if let Ok(Message::Status(print)) = parse_message(line) {
            report.merge(print);
            assert!(report.keys() <= crate::printer::bambu::report::MAX_KEYS, "the merged state grew past its bound");
            tracker.observe(&report.view(), &mut out, &mut status);
        }
        for ev in out {
            match ev {
                PrinterEvent::PrintStarted { job, .. } | PrinterEvent::Attached { job, .. } => {
                    assert!(current.is_none(), "{job:?} started while {current:?} runs");
                    assert!(started.insert(job.clone()), "{job:?} reported as started twice");
                    current = Some(job);
                }
                PrinterEvent::Finished { job, .. } => {
                    assert_eq!(current.take().as_ref(), Some(&job), "a print finished that was not running");
                }
                _ => {}
            }
        }
        assert!(status.progress.is_none_or(|p| (0.0..=1.0).contains(&p)), "progress {:?}", status.progress);
        let _ = tracker.take_notes();
    }
}

/// Token endpoint and REST API answers: the body as the client reads it (bytes, JSON or
/// not), with an HTTP status and a clock.
pub fn server(data: &[u8]) {
    use crate::server::{api, oauth};
    let [hi, lo, clock, body @ ..] = data else { return };
    let status = u16::from_be_bytes([*hi, *lo]);
    let now = [0, 1, 1_700_000_000, u64::MAX / 2, u64::MAX - 1, u64::MAX][usize::from(*clock % 6)];
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    for source in [oauth::TokenSource::ClientCredentials, oauth::TokenSource::User] {
        if let Some(t) = oauth::parse_token_response(&json, now, source) {
            let _ = (t.renew_at(), t.needs_renewal(now), t.is_expired(now));
            let shown = format!("{t:?}");
            // Long enough not to be a field name by chance.
            if t.access.expose().len() >= 24 {
                assert!(!shown.contains(t.access.expose()), "the access token in Debug output");
            }
        }
    }
    let _ = api::parse_prediction(&json);
    let _ = api::error_text(&json);
    let url = "https://obico.example/api/v1/printers/7/";
    let shown = |e: api::ApiError| (e.to_string(), e.is_transient(), e.is_definite_rejection());
    let _ = api::classify_answer(url, status, body).map_err(shown);
    let _ = api::parse_printer_answer(url, Some(7), status, body).map(|p| format!("{p:?}")).map_err(shown);
    let _ = api::parse_printer_answer(url, None, status, body).map_err(shown);
    let _ = api::parse_printer_list_answer(url, status, body).map_err(shown);
    let _ = api::parse_start_answer(url, 7, status, body).map_err(shown);
    let _ = api::parse_finish_answer(url, 7, status, body).map_err(shown);
    let _ = api::parse_predict_answer(url, 7, status, body).map_err(shown);
}

/// A settings file: parsed, validated and, when valid, printed as `printvigil config` does.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match crate::config::Config::from_toml_str(&text) {
        Ok(cfg) => {
            let _ = serde_json::to_string_pretty(&cfg).expect("a valid config prints");
            let _ = format!("{cfg:?}");
        }
        Err(e) => drop(e.to_string()),
    }
}
