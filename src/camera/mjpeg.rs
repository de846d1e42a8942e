//! A camera behind an MJPEG stream (`multipart/x-mixed-replace`, as mjpg-streamer,
//! ustreamer, crowsnest and most IP cameras serve it).
//!
//! The stream is read continuously by a background task (started by the first grab) so
//! that a grab returns the **newest** complete frame, not one that waited in a buffer.
//! When the stream ends, stalls or fails, the task reconnects with a growing pause.
//!
//! [`MjpegParser`] cuts the JPEGs out of the byte stream. It trusts a part's
//! `Content-Length` only when the bytes it announces are a whole JPEG; otherwise it walks
//! the JPEG markers from the start of image (SOI) to the end of image (EOI), skipping
//! marker segments by their length (so the EOI of an EXIF thumbnail does not end the
//! frame) and, in entropy-coded data, treating `FF00` as stuffing and `FFD0`-`FFD7` as
//! restart markers. Garbage between parts, missing boundaries, frames split across reads,
//! and a truncated frame followed by a good one are all survived; a frame larger than the
//! size cap is dropped without being buffered whole.
//!
//! Known limits: a part whose `Content-Length` is wrong *and* that is not followed by a
//! boundary may swallow the next frame; a frame cut short inside its EXIF segment, in a
//! stream without boundaries, may yield the EXIF thumbnail as a frame. Either costs one
//! frame, never the stream.

use std::time::Duration;

use futures_util::StreamExt;

use super::stream::{Reader, Slot};
use super::{Camera, CameraConfig, CameraError, Grab, SecretUrl, sniff};

/// What the parser found.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A complete JPEG (SOI .. EOI).
    Frame(Vec<u8>),
    /// A frame larger than the cap was dropped.
    TooLarge,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Looking for a start of image.
    Seek,
    /// A frame starts at `buf[0]`; its part announced `len` bytes; no boundary before
    /// `checked`.
    Sized { len: usize, checked: usize },
    /// A frame starts at `buf[0]`; markers walked up to `i`.
    Walk { i: usize, scan: Phase },
    /// A bad frame is being dropped up to the next multipart boundary, which has not
    /// arrived yet (nothing inside the bad frame may be taken for a frame).
    SkipToBoundary,
}

/// Where the walk is in a frame.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Marker segments before the first scan.
    Head,
    /// Entropy-coded data.
    Scan,
    /// A marker segment after scan data (progressive scans, tables, restart interval).
    Between,
}

/// Whether a marker segment of this length can be what its marker says. Cuts and garbage
/// read as a segment are caught here instead of sending the walk far ahead.
fn plausible(marker: u8, len: usize, body: &[u8], phase: Phase) -> bool {
    match marker {
        // Start of scan: 1..4 components, two bytes each.
        0xDA => body.first().is_some_and(|&n| (1..=4).contains(&n) && len == 6 + 2 * n as usize),
        // Restart interval, number of lines.
        0xDD | 0xDC => len == 4,
        // Quantisation tables: 65 bytes (8-bit) or 129 bytes (16-bit) each.
        0xDB => (0..=4).any(|b| (len - 2).checked_sub(129 * b).is_some_and(|r| r % 65 == 0 && r + 129 * b > 0)),
        // Huffman tables: at least one 17-byte header with one code.
        0xC4 => (19..=2 + 4 * (17 + 256)).contains(&len),
        _ if phase == Phase::Between => marker == 0xFE,
        // Frame headers, arithmetic conditioning, hierarchical, APPn, JPGn, COM.
        0xC0..=0xFE => true,
        _ => false,
    }
}

enum Walked {
    NeedMore { i: usize, scan: Phase },
    Done(usize),
    /// Not a JPEG after all: a new start of image met at this offset.
    Restart(usize),
    /// Not a JPEG after all; no new frame starts before `resume` (the bytes before it
    /// were walked as this frame's segments and scan data).
    Corrupt { resume: usize },
    TooLarge,
}

const SOI: [u8; 3] = [0xFF, 0xD8, 0xFF];
/// Bytes of non-JPEG data kept while looking for a frame (part headers live there).
const KEEP: usize = 1024;

/// Cuts JPEG frames out of an MJPEG byte stream, fed in chunks of any size.
pub struct MjpegParser {
    buf: Vec<u8>,
    max: usize,
    boundary: Option<Vec<u8>>,
    state: State,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

impl MjpegParser {
    /// `max`: largest frame kept, in bytes. `boundary`: the multipart boundary from the
    /// Content-Type header, if any (with or without its leading `--`).
    pub fn new(max: usize, boundary: Option<&str>) -> Self {
        let boundary = boundary
            .map(|b| b.trim().trim_matches('"').trim_start_matches("--").as_bytes().to_vec())
            .filter(|b| !b.is_empty());
        Self { buf: Vec::new(), max, boundary, state: State::Seek }
    }

    /// Feeds a chunk of the stream; returns the frames it completed, oldest first.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Seek => {
                    let Some(s) = find(&self.buf, &SOI) else {
                        let drop = self.buf.len().saturating_sub(KEEP);
                        self.buf.drain(..drop);
                        return out;
                    };
                    let announced = if self.boundary.is_some() { content_length(&self.buf[..s]) } else { None };
                    self.buf.drain(..s);
                    self.state = match announced {
                        Some(len) if len >= 4 && len <= self.max => State::Sized { len, checked: 2 },
                        _ => State::Walk { i: 2, scan: Phase::Head },
                    };
                }
                State::Sized { len, checked } => {
                    if self.buf.len() < len {
                        // A part that ends before its announced length: walk it instead.
                        // (Only the new bytes are searched, so waiting costs no rescans.)
                        let b = self.boundary.as_deref().unwrap_or_default();
                        let from = checked.saturating_sub(b.len()).max(2).min(self.buf.len());
                        if find(&self.buf[from..], b).is_none() {
                            self.state = State::Sized { len, checked: self.buf.len() };
                            return out;
                        }
                        self.state = State::Walk { i: 2, scan: Phase::Head };
                        continue;
                    }
                    let part = &self.buf[..len];
                    let end = part.iter().rposition(|b| !b" \t\r\n".contains(b)).map_or(0, |p| p + 1);
                    if end >= 4 && part[end - 2..end] == [0xFF, 0xD9] {
                        out.push(Event::Frame(part[..end].to_vec()));
                        self.buf.drain(..len);
                        self.state = State::Seek;
                    } else {
                        self.state = State::Walk { i: 2, scan: Phase::Head };
                    }
                }
                State::SkipToBoundary => {
                    let b = self.boundary.as_deref().unwrap_or_default();
                    match find(&self.buf, b) {
                        Some(p) => {
                            self.buf.drain(..p);
                            self.state = State::Seek;
                        }
                        None => {
                            let keep = b.len().saturating_sub(1);
                            let drop = self.buf.len().saturating_sub(keep);
                            self.buf.drain(..drop);
                            return out;
                        }
                    }
                }
                State::Walk { i, scan } => match self.walk(i, scan) {
                    Walked::NeedMore { i, scan } => {
                        self.state = State::Walk { i, scan };
                        return out;
                    }
                    Walked::Done(end) => {
                        // A frame that came whole in one read may end past the cap.
                        out.push(if end > self.max { Event::TooLarge } else { Event::Frame(self.buf[..end].to_vec()) });
                        self.buf.drain(..end);
                        self.state = State::Seek;
                    }
                    Walked::Restart(next) => {
                        self.buf.drain(..next);
                        self.state = State::Seek;
                    }
                    Walked::Corrupt { resume } => self.resync(resume),
                    Walked::TooLarge => {
                        out.push(Event::TooLarge);
                        self.resync(2);
                    }
                },
            }
        }
    }

    /// Drops the frame that starts at `buf[0]`: up to the next boundary when the stream has
    /// boundaries (so nothing inside the bad frame, like an EXIF thumbnail, is taken for a
    /// frame), else up to `resume`.
    fn resync(&mut self, resume: usize) {
        if self.boundary.is_some() {
            // Drop the frame's first bytes, then everything up to the boundary, even when
            // the boundary is still to come.
            self.buf.drain(..2.min(self.buf.len()));
            self.state = State::SkipToBoundary;
            return;
        }
        self.buf.drain(..resume.max(2).min(self.buf.len()));
        self.state = State::Seek;
    }

    fn walk(&self, mut i: usize, mut scan: Phase) -> Walked {
        let buf = &self.buf;
        // Before the first scan, a segment skip may have jumped over the next frame's
        // start: search again from this frame's start. After scan data, everything up to
        // `i` was walked, so the search resumes there.
        let head_resume = |i: usize, scan: Phase| if scan == Phase::Head { 2 } else { i };
        loop {
            if i > self.max || (i >= buf.len() && buf.len() > self.max) {
                return Walked::TooLarge;
            }
            if scan != Phase::Scan {
                if i + 2 > buf.len() {
                    return Walked::NeedMore { i, scan };
                }
                if buf[i] != 0xFF {
                    return Walked::Corrupt { resume: head_resume(i, scan) };
                }
                match buf[i + 1] {
                    0xFF => i += 1, // fill byte
                    0xD8 => return Walked::Restart(i),
                    0xD9 => return Walked::Done(i + 2),
                    0x01 | 0xD0..=0xD7 => i += 2,
                    marker => {
                        if i + 5 > buf.len() {
                            return Walked::NeedMore { i, scan };
                        }
                        let len = u16::from_be_bytes([buf[i + 2], buf[i + 3]]) as usize;
                        if len < 2 || !plausible(marker, len, &buf[i + 4..], scan) {
                            return Walked::Corrupt { resume: head_resume(i, scan) };
                        }
                        let next = i + 2 + len;
                        if next > self.max {
                            return Walked::TooLarge;
                        }
                        // A segment never holds a multipart boundary: the frame was cut.
                        if let Some(b) = &self.boundary
                            && find(&buf[i + 4..next.min(buf.len())], b).is_some()
                        {
                            return Walked::Corrupt { resume: 2 };
                        }
                        if next > buf.len() {
                            return Walked::NeedMore { i, scan };
                        }
                        i = next;
                        if marker == 0xDA {
                            scan = Phase::Scan;
                        }
                    }
                }
            } else {
                let Some(k) = buf[i.min(buf.len())..].iter().position(|&b| b == 0xFF) else {
                    return Walked::NeedMore { i: buf.len(), scan };
                };
                let j = i + k;
                if j + 2 > buf.len() {
                    return Walked::NeedMore { i: j, scan };
                }
                match buf[j + 1] {
                    0x00 | 0xD0..=0xD7 => i = j + 2,
                    0xFF => i = j + 1,
                    0xD8 => return Walked::Restart(j),
                    0xD9 => return Walked::Done(j + 2),
                    // Tables, restart interval or the next scan of a progressive JPEG.
                    0xC4 | 0xDA | 0xDB | 0xDC | 0xDD | 0xFE => {
                        i = j;
                        scan = Phase::Between;
                    }
                    // Nothing else may follow scan data: the frame was cut here.
                    _ => return Walked::Corrupt { resume: j },
                }
            }
        }
    }
}

/// The Content-Length of the part headers that end right before `before`'s end.
fn content_length(before: &[u8]) -> Option<usize> {
    let head = before.strip_suffix(b"\r\n\r\n").or_else(|| before.strip_suffix(b"\n\n"))?;
    let text = String::from_utf8_lossy(head);
    let block = match (text.rfind("\r\n\r\n"), text.rfind("\n\n")) {
        (Some(a), Some(b)) => &text[a.max(b)..],
        (Some(a), None) | (None, Some(a)) => &text[a..],
        (None, None) => &text[..],
    };
    block.lines().rev().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
    })
}

/// The `boundary` parameter of a multipart Content-Type.
pub fn boundary_of(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("boundary").then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Bytes without a frame after which a connection is given up as not an MJPEG stream (and
/// opened again after a pause): the size cap, twice, and at least 4 MiB. The parser holds
/// at most a frame's worth of them meanwhile.
fn unframed_limit(max: usize) -> usize {
    max.saturating_mul(2).max(4 << 20)
}

struct Link {
    url: SecretUrl,
    timeout: Duration,
    max: usize,
    client: reqwest::Client,
    slot: Slot,
}

const EXPECTED: &str = "MJPEG stream URL (for a single-picture URL use kind = \"snapshot\")";

impl Link {
    fn timeout_err(&self) -> CameraError {
        CameraError::Timeout { url: self.url.clone(), secs: self.timeout.as_secs_f64() }
    }

    /// Keeps the stream open, reconnecting, until the camera is dropped.
    async fn run(self) {
        self.slot.keep_open(&self.url, self.timeout, || self.connection()).await
    }

    /// One connection; returns why it ended.
    async fn connection(&self) -> CameraError {
        let url = &self.url;
        let resp = match tokio::time::timeout(self.timeout, self.client.get(url.expose()).send()).await {
            Err(_) => return self.timeout_err(),
            Ok(Err(e)) if e.is_timeout() => return self.timeout_err(),
            Ok(Err(e)) => return CameraError::Connect { url: url.clone(), reason: super::chain(&e) },
            Ok(Ok(r)) => r,
        };
        if !resp.status().is_success() {
            return CameraError::HttpStatus { url: url.clone(), status: resp.status().as_u16() };
        }
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim().to_string();
        if essence.starts_with("text/") || essence.contains("json") || essence.contains("xml") {
            return CameraError::NotJpeg { url: url.clone(), what: format!("Content-Type {essence}"), expected: EXPECTED };
        }
        let mut parser = MjpegParser::new(self.max, boundary_of(&ct).as_deref());
        let mut stream = resp.bytes_stream();
        let mut seen = 0usize;
        let mut unframed = 0usize;
        let limit = unframed_limit(self.max);
        let mut head = Vec::new();
        loop {
            let chunk = match tokio::time::timeout(self.timeout, stream.next()).await {
                Err(_) => return self.timeout_err(),
                Ok(None) => {
                    if !self.slot.got_frames() && seen > 0 && !head.starts_with(&SOI[..2]) && !head.windows(2).any(|w| w == [0xFF, 0xD8]) {
                        return CameraError::NotJpeg { url: url.clone(), what: sniff(&head), expected: EXPECTED };
                    }
                    return CameraError::StreamEnded { url: url.clone() };
                }
                Ok(Some(Err(e))) => return CameraError::Connect { url: url.clone(), reason: super::chain(&e) },
                Ok(Some(Ok(c))) => c,
            };
            seen += chunk.len();
            unframed = unframed.saturating_add(chunk.len());
            if head.len() < 256 {
                head.extend_from_slice(&chunk[..chunk.len().min(256 - head.len())]);
            }
            for event in parser.push(&chunk) {
                match event {
                    Event::Frame(jpeg) => {
                        unframed = 0;
                        self.slot.frame(jpeg);
                    }
                    Event::TooLarge => {
                        unframed = 0;
                        self.slot.error(CameraError::TooLarge { url: url.clone(), max: self.max })
                    }
                }
            }
            // Only a connection that gave no frame yet: a slow frame on a good stream is
            // a timeout, not a stream of something else.
            self.slot.unframed(if self.slot.got_frames() { 0 } else { unframed });
            if unframed > limit {
                return CameraError::NoFrames { url: url.clone(), bytes: unframed };
            }
        }
    }
}

pub struct MjpegCamera {
    name: String,
    url: SecretUrl,
    timeout: Duration,
    max: usize,
    client: reqwest::Client,
    stream: Reader,
}

impl MjpegCamera {
    pub fn new(cfg: &CameraConfig) -> Result<Self, CameraError> {
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.timeout())
            .build()
            .map_err(|e| CameraError::Config(format!("could not set up the HTTP client: {e}")))?;
        Ok(Self {
            name: cfg.display_name(),
            url: cfg.url.clone(),
            timeout: cfg.timeout(),
            max: cfg.max_frame_bytes,
            client,
            stream: Reader::new(cfg.url.clone(), cfg.timeout()),
        })
    }
}

impl Camera for MjpegCamera {
    fn name(&self) -> &str {
        &self.name
    }

    /// The newest frame not returned before; waits up to the timeout for one. An error the
    /// stream met since the last grab is returned at once when no new frame came.
    fn grab(&mut self) -> Grab<'_> {
        Box::pin(async move {
            let link = |slot| Link { url: self.url.clone(), timeout: self.timeout, max: self.max, client: self.client.clone(), slot };
            self.stream.grab(|slot| link(slot).run()).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::preprocess::Rgb8;
    use proptest::prelude::*;

    fn jpeg(w: usize, h: usize, seed: u8) -> Vec<u8> {
        let pixels = (0..w * h * 3).map(|i| (i as u8).wrapping_mul(seed).wrapping_add((i / 97) as u8)).collect();
        crate::detector::annotate::encode_jpeg(&Rgb8 { width: w, height: h, pixels }, 80).unwrap()
    }

    /// A JPEG with an APP1 (EXIF-like) segment holding a whole thumbnail JPEG, with its own EOI.
    fn with_thumbnail(main: &[u8], thumb: &[u8]) -> Vec<u8> {
        let mut seg = b"Exif\0\0".to_vec();
        seg.extend_from_slice(thumb);
        let mut out = main[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((seg.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&seg);
        out.extend_from_slice(&main[2..]);
        out
    }

    /// Three JPEGs of different sizes, the last with an EXIF-like thumbnail.
    fn pool() -> Vec<Vec<u8>> {
        let a = jpeg(48, 32, 3);
        let b = jpeg(96, 64, 7);
        let thumb = jpeg(16, 16, 11);
        let c = with_thumbnail(&jpeg(64, 48, 13), &thumb);
        vec![a, b, c]
    }

    fn feed_all(p: &mut MjpegParser, stream: &[u8], chunks: &[usize]) -> Vec<Event> {
        let mut out = Vec::new();
        let mut at = 0;
        let mut k = 0;
        while at < stream.len() {
            let n = chunks.get(k % chunks.len().max(1)).copied().unwrap_or(stream.len()).max(1);
            let end = (at + n).min(stream.len());
            out.extend(p.push(&stream[at..end]));
            at = end;
            k += 1;
        }
        out
    }

    fn frames(events: Vec<Event>) -> Vec<Vec<u8>> {
        events.into_iter().filter_map(|e| if let Event::Frame(f) = e { Some(f) } else { None }).collect()
    }

    fn part(body: &[u8], content_length: bool) -> Vec<u8> {
        let mut out = b"--frame\r\nContent-Type: image/jpeg\r\n".to_vec();
        if content_length {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
        out
    }

    #[test]
    fn thumbnail_eoi_does_not_end_the_frame() {
        let p = pool();
        let mut parser = MjpegParser::new(1 << 20, None);
        let got = frames(parser.push(&p[2]));
        assert_eq!(got, vec![p[2].clone()]);
        assert!(crate::detector::preprocess::decode_jpeg(&got[0]).is_ok());
    }

    #[test]
    fn a_wrong_content_length_falls_back_to_markers() {
        let p = pool();
        let mut s = b"--frame\r\nContent-Length: 10\r\n\r\n".to_vec();
        s.extend_from_slice(&p[0]);
        s.extend_from_slice(&part(&p[1], true));
        let got = frames(MjpegParser::new(1 << 20, Some("frame")).push(&s));
        assert_eq!(got, vec![p[0].clone(), p[1].clone()]);
    }

    #[test]
    fn a_frame_cut_in_its_headers_is_dropped_and_the_next_kept() {
        let p = pool();
        // Cut the thumbnail-carrying frame inside its APP1 segment, then a good part.
        let mut s = part(&p[2][..40], false);
        s.extend_from_slice(&part(&p[0], false));
        let got = frames(MjpegParser::new(1 << 20, Some("--frame")).push(&s));
        assert_eq!(got, vec![p[0].clone()]);
    }

    #[test]
    fn an_oversized_frame_is_dropped_without_being_kept_whole() {
        let p = pool();
        let max = p[0].len() + 16;
        let mut parser = MjpegParser::new(max, Some("frame"));
        let mut s = part(&p[1], false);
        s.extend_from_slice(&part(&p[0], false));
        let mut events = Vec::new();
        for c in s.chunks(100) {
            events.extend(parser.push(c));
            assert!(parser.buf.len() <= max + 100 + KEEP, "buffer {} over the cap", parser.buf.len());
        }
        assert_eq!(events, vec![Event::TooLarge, Event::Frame(p[0].clone())]);
    }

    #[test]
    fn stuffing_and_restart_markers_stay_inside_the_frame() {
        // SOI, DRI, SOS header, then scan data with FF00 stuffing, RST0..RST7, a fill byte, EOI.
        let mut f = vec![0xFF, 0xD8, 0xFF, 0xDD, 0x00, 0x04, 0x00, 0x08];
        f.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 1, 1, 0, 0, 63, 0]);
        f.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xD7, 0xFF, 0xFF, 0xD3, 0x78]);
        f.extend_from_slice(&[0xFF, 0xD9]);
        let mut s = f.clone();
        s.extend_from_slice(b"junk");
        s.extend_from_slice(&f);
        for split in 1..s.len() {
            let mut p = MjpegParser::new(4096, None);
            let mut got = frames(p.push(&s[..split]));
            got.extend(frames(p.push(&s[split..])));
            assert_eq!(got, vec![f.clone(), f.clone()], "split at {split}");
        }
    }

    #[test]
    fn endless_garbage_is_not_kept() {
        let mut parser = MjpegParser::new(1 << 20, Some("frame"));
        let chunk: Vec<u8> = (0..4096u32).map(|i| b"not a jpeg, just text\r\n"[i as usize % 23]).collect();
        for _ in 0..2500 {
            assert!(parser.push(&chunk).is_empty());
            assert!(parser.buf.len() <= KEEP + chunk.len(), "{} bytes kept", parser.buf.len());
        }
        assert!(unframed_limit(8 << 20) >= 16 << 20 && unframed_limit(1024) == 4 << 20);
    }

    #[test]
    fn header_parsing() {
        assert_eq!(content_length(b"--x\r\nContent-Type: image/jpeg\r\ncontent-length:  1234\r\n\r\n"), Some(1234));
        assert_eq!(content_length(b"Content-Length: 5\r\n\r\n--x\r\nContent-Type: image/jpeg\r\n\r\n"), None);
        assert_eq!(content_length(b"garbage"), None);
        assert_eq!(boundary_of("multipart/x-mixed-replace;boundary=boundarydonotcross").as_deref(), Some("boundarydonotcross"));
        assert_eq!(boundary_of("multipart/x-mixed-replace; Boundary=\"--frame\"").as_deref(), Some("--frame"));
        assert_eq!(boundary_of("image/jpeg"), None);
    }

    #[derive(Debug, Clone)]
    struct Item {
        which: usize,
        framing: u8, // 0 bare, 1 boundary, 2 boundary + Content-Length
        garbage: Vec<u8>,
        truncated_before: Option<f64>,
    }

    fn item() -> impl Strategy<Value = Item> {
        (
            0..3usize,
            0..3u8,
            proptest::collection::vec(0u8..0xFF, 0..64),
            proptest::option::of(0.0f64..1.0),
        )
            .prop_map(|(which, framing, garbage, truncated_before)| Item { which, framing, garbage, truncated_before })
    }

    /// Cuts a JPEG somewhere in its entropy-coded data (after its last SOS).
    fn truncate(jpeg: &[u8], at: f64) -> Vec<u8> {
        let sos = jpeg.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
        let start = sos + 4 + u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]) as usize;
        let end = jpeg.len() - 2;
        jpeg[..start + ((end - start) as f64 * at) as usize].to_vec()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn any_bytes_never_panic_and_frames_are_framed_and_capped(
            // Random bytes, a third of them marker bytes, so that markers meet often.
            bytes in proptest::collection::vec(any::<u16>(), 0..3000).prop_map(|v| {
                v.into_iter()
                    .map(|x| if x % 3 == 0 { [0xFF, 0xD8, 0xD9, 0xDA, 0x00][(x / 3 % 5) as usize] } else { x as u8 })
                    .collect::<Vec<u8>>()
            }),
            chunks in proptest::collection::vec(1usize..300, 1..6),
            max in 16usize..2000,
            boundary in proptest::option::of(Just("frame")),
        ) {
            let mut parser = MjpegParser::new(max, boundary);
            for e in feed_all(&mut parser, &bytes, &chunks) {
                if let Event::Frame(f) = e {
                    prop_assert!(f.starts_with(&[0xFF, 0xD8]) && f.ends_with(&[0xFF, 0xD9]));
                    prop_assert!(f.len() <= max + 2);
                }
            }
            prop_assert!(parser.buf.len() <= max + 300 + KEEP + 4);
        }
    }

    /// Builds a stream from `items`, feeds it in `chunks`, returns (frames got, frames wanted).
    fn run_items(items: &[Item], chunks: &[usize], boundary_known: bool) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let pool = pool();
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for it in items {
            stream.extend_from_slice(&it.garbage);
            let body = &pool[it.which];
            if let Some(at) = it.truncated_before {
                // A frame cut short (the camera dropped it), framed as the good ones
                // are: anywhere when parts have boundaries the parser knows, else in
                // its scan data (see the known limits at the top).
                let cut = if boundary_known && it.framing != 0 {
                    body[..3 + ((body.len() - 5) as f64 * at) as usize].to_vec()
                } else {
                    truncate(body, at)
                };
                let framed = if it.framing == 0 { cut.clone() } else {
                    let mut p = part(&cut, false);
                    if it.framing == 2 {
                        // The announced length is the full frame's.
                        p = b"--frame\r\nContent-Length: ".to_vec();
                        p.extend_from_slice(format!("{}\r\n\r\n", body.len()).as_bytes());
                        p.extend_from_slice(&cut);
                        // Servers that announce lengths close parts with a boundary.
                        p.extend_from_slice(b"\r\n--frame\r\n");
                    }
                    p
                };
                stream.extend_from_slice(&framed);
            }
            match it.framing {
                0 => stream.extend_from_slice(body),
                f => stream.extend_from_slice(&part(body, f == 2)),
            }
            want.push(body.clone());
        }
        let mut parser = MjpegParser::new(1 << 20, boundary_known.then_some("frame"));
        (frames(feed_all(&mut parser, &stream, chunks)), want)
    }

    #[test]
    fn a_cut_frame_between_known_boundaries_yields_nothing_of_its_own() {
        // A case proptest found: a whole frame, then the same picture cut short inside its
        // head, each in its own part.
        let items = [
            Item { which: 2, framing: 2, garbage: vec![0; 47], truncated_before: None },
            Item { which: 2, framing: 1, garbage: vec![0; 5], truncated_before: Some(0.3691285362563245) },
        ];
        let (got, want) = run_items(&items, &[430, 130, 311, 309, 354, 575], true);
        assert_eq!(got.len(), want.len(), "got {:?} want {:?}", got.iter().map(|f| f.len()).collect::<Vec<_>>(), want.iter().map(|f| f.len()).collect::<Vec<_>>());
        assert!(got == want);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn random_chunkings_yield_exactly_the_complete_jpegs(
            items in proptest::collection::vec(item(), 1..6),
            chunks in proptest::collection::vec(1usize..700, 1..8),
            boundary_known in any::<bool>(),
        ) {
            let (got, want) = run_items(&items, &chunks, boundary_known);
            prop_assert_eq!(got.len(), want.len());
            prop_assert!(got == want);
        }
    }
}
