//! The frame guard: the one check every camera frame passes before any work is done on it
//! (rotation and flips, decoding for the detector, drawing, shrinking for the server).
//!
//! A JPEG's header says how large the picture is, and the decoder believes it: a 1 KB
//! frame can claim 65008x65008 pixels, and turning or decoding it then allocates gigabytes.
//! So the guard reads the header itself, walking the JPEG markers without decoding
//! anything (a pass over the bytes, no allocation), and refuses a frame that:
//!
//! - is empty, larger than [`MAX_BYTES`], or not a JPEG;
//! - has no frame header (SOF) before its first scan, or more than one;
//! - is of a kind the decoder does not handle (hierarchical, not 8-bit samples);
//! - declares a zero size or more than [`MAX_SIDE`] pixels a side or [`MAX_PIXELS`] in all;
//! - has impossible components (none or more than 4, sampling factors outside 1-4);
//! - has more than [`MAX_SCANS`] scans: each progressive scan is a pass over the whole
//!   picture, so a small file of many scans takes minutes to decode.
//!
//! The same limits are set inside libjpeg-turbo on every decoder printvigil opens
//! ([`harden`]), in case a frame ever reaches one without passing here.
//!
//! Camera frames are checked once, where every camera kind's frames pass (see
//! `camera::from_config`); the decoding and transforming functions check again, since they
//! are also called on frames that come from elsewhere (files, tests, the bench).

use turbojpeg_sys as raw;

/// Largest accepted frame side, in pixels (webcams top out at 4K, 3840 px).
pub const MAX_SIDE: usize = 8192;
/// Largest accepted frame area, in pixels (about 40 MP; a 4K frame is 8.3 MP). Decoding
/// one this large holds about 120 MB of pixels.
pub const MAX_PIXELS: usize = 40_000_000;
/// Most scans accepted in one frame. A baseline JPEG has 1 (or one per component), a
/// progressive one from libjpeg about 10; each scan is a pass over the whole picture.
pub const MAX_SCANS: usize = 100;
/// Largest frame accepted, in bytes, whatever the camera's `max_frame_bytes` says.
pub const MAX_BYTES: usize = 64 << 20;

/// Why a frame was refused. Every message names what the frame claims and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the frame is empty (0 bytes); the camera returned nothing")]
    Empty,
    #[error("the frame is {len} bytes, over the limit of {max} bytes; lower the camera resolution or quality")]
    TooManyBytes { len: usize, max: usize },
    #[error("the frame is not a JPEG (it looks like {0}); point the camera at a JPEG snapshot URL or MJPEG stream")]
    NotJpeg(&'static str),
    #[error("the JPEG has no frame header before its picture data; the camera sent a corrupt frame")]
    NoFrameHeader,
    #[error("the JPEG has more than one frame header; the camera sent a corrupt frame")]
    TwoFrameHeaders,
    #[error("the JPEG is {0}, which printvigil does not decode; set the camera to plain (baseline) JPEG")]
    Unsupported(String),
    #[error("the frame has no pixels ({width}x{height})")]
    NoPixels { width: usize, height: usize },
    #[error(
        "the frame declares {width}x{height} pixels, over printvigil's limit of {MAX_SIDE} px a side and {} MP in all; lower the camera resolution",
        MAX_PIXELS / 1_000_000
    )]
    TooLarge { width: usize, height: usize },
    #[error("the JPEG frame header is impossible ({0}); the camera sent a corrupt frame")]
    BadHeader(String),
    #[error(
        "the frame has {scans} or more scans, over printvigil's limit of {MAX_SCANS} (each is a pass over the picture); set the camera to plain (baseline) JPEG"
    )]
    TooManyScans { scans: usize },
}

/// What the guard read from a frame it let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegInfo {
    pub width: usize,
    pub height: usize,
    pub components: u8,
    pub progressive: bool,
    pub lossless: bool,
    /// Scans found (at least 1, unless the frame was cut short before its first).
    pub scans: usize,
}

/// Checks a frame against the absolute limits (see the module documentation).
pub fn check(jpeg: &[u8]) -> Result<JpegInfo, Refused> {
    check_within(jpeg, MAX_BYTES)
}

/// As [`check`], with a byte limit of `max_bytes` (a camera's `max_frame_bytes`; never
/// above [`MAX_BYTES`]).
pub fn check_within(jpeg: &[u8], max_bytes: usize) -> Result<JpegInfo, Refused> {
    let max = max_bytes.min(MAX_BYTES);
    if jpeg.is_empty() {
        return Err(Refused::Empty);
    }
    if jpeg.len() > max {
        return Err(Refused::TooManyBytes { len: jpeg.len(), max });
    }
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        return Err(Refused::NotJpeg(sniff(jpeg)));
    }
    let mut frame: Option<JpegInfo> = None;
    let mut scans = 0usize;
    let mut i = 2;
    // Walks marker segments; after a scan header, skips the entropy-coded data to the next
    // marker. Bytes where a marker should be are skipped as libjpeg skips them.
    while i + 1 < jpeg.len() {
        if jpeg[i] != 0xFF {
            i += 1;
            continue;
        }
        let marker = jpeg[i + 1];
        match marker {
            0xFF => {
                i += 1; // fill byte
                continue;
            }
            0x00 | 0x01 | 0xD0..=0xD7 => {
                i += 2;
                continue;
            }
            0xD8 => return Err(Refused::BadHeader("a second start of image inside the frame".into())),
            0xD9 => break,
            _ => {}
        }
        let Some(len) = jpeg.get(i + 2..i + 4).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize) else {
            break; // cut short: the decoder says so
        };
        if len < 2 {
            return Err(Refused::BadHeader(format!("a marker segment of length {len}")));
        }
        let body = &jpeg[(i + 4).min(jpeg.len())..(i + 2 + len).min(jpeg.len())];
        match marker {
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                if frame.is_some() {
                    return Err(Refused::TwoFrameHeaders);
                }
                frame = Some(frame_header(marker, len, body)?);
            }
            0xDA => {
                if frame.is_none() {
                    return Err(Refused::NoFrameHeader);
                }
                scans += 1;
                if scans > MAX_SCANS {
                    return Err(Refused::TooManyScans { scans });
                }
                // The entropy-coded data: up to the next marker (not stuffing, not a restart).
                let mut j = i + 2 + len;
                while j + 1 < jpeg.len() && (jpeg[j] != 0xFF || matches!(jpeg[j + 1], 0x00 | 0xD0..=0xD7 | 0xFF)) {
                    j += 1;
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 2 + len;
    }
    let info = frame.ok_or(Refused::NoFrameHeader)?;
    Ok(JpegInfo { scans, ..info })
}

/// Reads and checks a frame header (SOFn) of length `len` whose body is `body`.
fn frame_header(marker: u8, len: usize, body: &[u8]) -> Result<JpegInfo, Refused> {
    let kind = match marker {
        0xC0 | 0xC1 => "baseline",
        0xC2 => "progressive",
        0xC3 => "lossless",
        0xC9 => "arithmetic",
        0xCA => "arithmetic progressive",
        0xCB => "arithmetic lossless",
        _ => return Err(Refused::Unsupported("a hierarchical JPEG".into())),
    };
    if body.len() < 6 {
        return Err(Refused::BadHeader("the frame header is cut short".into()));
    }
    let precision = body[0];
    let height = u16::from_be_bytes([body[1], body[2]]) as usize;
    let width = u16::from_be_bytes([body[3], body[4]]) as usize;
    let components = body[5];
    if precision != 8 {
        return Err(Refused::Unsupported(format!("a {precision}-bit {kind} JPEG (only 8-bit samples are decoded)")));
    }
    if width == 0 || height == 0 {
        return Err(Refused::NoPixels { width, height });
    }
    if width > MAX_SIDE || height > MAX_SIDE || width * height > MAX_PIXELS {
        return Err(Refused::TooLarge { width, height });
    }
    if !(1..=4).contains(&components) {
        return Err(Refused::BadHeader(format!("{components} colour components")));
    }
    if len != 8 + 3 * components as usize || body.len() < 6 + 3 * components as usize {
        return Err(Refused::BadHeader(format!("a frame header of {len} bytes for {components} components")));
    }
    for c in body[6..6 + 3 * components as usize].chunks_exact(3) {
        let (h, v) = (c[1] >> 4, c[1] & 0x0F);
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
            return Err(Refused::BadHeader(format!("sampling factors {h}x{v}")));
        }
    }
    Ok(JpegInfo {
        width,
        height,
        components,
        progressive: matches!(marker, 0xC2 | 0xCA),
        lossless: matches!(marker, 0xC3 | 0xCB),
        scans: 0,
    })
}

/// Sets the guard's limits inside libjpeg-turbo on a TurboJPEG 3 handle (decompressor or
/// transformer): most pixels and most progressive scans. Returns libjpeg-turbo's error.
///
/// # Safety
/// `handle` must be a live handle from `tj3Init`.
pub unsafe fn harden(handle: raw::tjhandle) -> Result<(), String> {
    let limits = [
        (raw::TJPARAM_TJPARAM_MAXPIXELS, MAX_PIXELS as libc::c_int),
        (raw::TJPARAM_TJPARAM_SCANLIMIT, MAX_SCANS as libc::c_int),
    ];
    for (param, value) in limits {
        // SAFETY: the caller passes a live handle; setting a parameter has no other effect.
        if unsafe { raw::tj3Set(handle, param as libc::c_int, value) } != 0 {
            // SAFETY: as above; the string is copied at once.
            let msg = unsafe { std::ffi::CStr::from_ptr(raw::tj3GetErrorStr(handle)) };
            return Err(msg.to_string_lossy().trim().to_string());
        }
    }
    Ok(())
}

/// What a non-JPEG frame looks like, for messages.
fn sniff(bytes: &[u8]) -> &'static str {
    match bytes {
        [0x89, b'P', b'N', b'G', ..] => "a PNG image",
        [b'G', b'I', b'F', b'8', ..] => "a GIF image",
        [b'B', b'M', ..] => "a BMP image",
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => "a WebP image",
        [b'<', ..] => "an HTML or XML page",
        [b'{', ..] => "JSON",
        _ => "something else",
    }
}

/// A small, well-formed JPEG whose header claims `width` x `height` pixels (grey, one
/// table of each kind, one tiny scan): what a hostile camera sends to exhaust memory.
/// For tests and the bench; never decode it without the guard.
pub fn bomb(width: u16, height: u16) -> Vec<u8> {
    let mut j = vec![0xFF, 0xD8];
    // DQT: table 0, all ones.
    j.extend_from_slice(&[0xFF, 0xDB, 0x00, 0x43, 0x00]);
    j.extend_from_slice(&[1u8; 64]);
    // SOF0: 8-bit, height, width, 1 component (id 1, 1x1, table 0).
    j.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 0x08]);
    j.extend_from_slice(&height.to_be_bytes());
    j.extend_from_slice(&width.to_be_bytes());
    j.extend_from_slice(&[0x01, 0x01, 0x11, 0x00]);
    // DHT: DC table 0 with one 1-bit code (category 0), AC table 0 with one 1-bit code (EOB).
    for class in [0x00u8, 0x10] {
        j.extend_from_slice(&[0xFF, 0xC4, 0x00, 0x14, class]);
        let mut counts = [0u8; 16];
        counts[0] = 1;
        j.extend_from_slice(&counts);
        j.push(0x00);
    }
    // SOS: 1 component (id 1, tables 0/0), spectral 0..63, no approximation.
    j.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00]);
    // Scan data: each block is "DC diff 0, EOB" = bits 0 0; a few hundred blocks' worth.
    j.extend_from_slice(&[0x00; 64]);
    j.extend_from_slice(&[0xFF, 0xD9]);
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_jpeg(w: usize, h: usize, progressive: bool) -> Vec<u8> {
        let pixels: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let image = turbojpeg::Image { pixels: &pixels[..], width: w, pitch: w * 3, height: h, format: turbojpeg::PixelFormat::RGB };
        let mut c = turbojpeg::Compressor::new().unwrap();
        c.set_quality(80).unwrap();
        c.set_subsamp(turbojpeg::Subsamp::Sub2x2).unwrap();
        c.set_progressive(progressive).unwrap();
        c.compress_to_vec(image).unwrap()
    }

    #[test]
    fn a_real_frame_passes_with_its_size() {
        let jpeg = small_jpeg(96, 64, false);
        let info = check(&jpeg).unwrap();
        assert_eq!((info.width, info.height, info.components, info.progressive, info.lossless), (96, 64, 3, false, false));
        assert_eq!(info.scans, 1);
    }

    #[test]
    fn the_bomb_is_refused_naming_its_size_and_the_limit() {
        let bomb = bomb(65008, 65008);
        assert!(bomb.len() < 1024, "{} bytes", bomb.len());
        // The bomb is a JPEG libjpeg-turbo reads the header of: only the guard stops it.
        let header = turbojpeg::read_header(&bomb).unwrap();
        assert_eq!((header.width, header.height), (65008, 65008));
        let e = check(&bomb).unwrap_err();
        assert_eq!(e, Refused::TooLarge { width: 65008, height: 65008 });
        let msg = e.to_string();
        assert!(msg.contains("65008x65008") && msg.contains("8192") && msg.contains("40 MP"), "{msg}");
        // Within the limits, the same construction passes.
        assert_eq!(check(&super::bomb(640, 480)).unwrap().width, 640);
        assert!(matches!(check(&super::bomb(8193, 8)), Err(Refused::TooLarge { .. })));
        assert!(matches!(check(&super::bomb(8000, 8000)), Err(Refused::TooLarge { .. })), "64 MP is over 40 MP");
    }

    /// `bomb` with its frame header's bytes changed by `f` (the SOF0 body starts at 73).
    fn patched(f: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
        let mut j = super::bomb(64, 64);
        assert_eq!(&j[71..73], &[0xFF, 0xC0]);
        f(&mut j);
        j
    }

    #[test]
    fn impossible_headers_are_refused() {
        let sof = 75; // first byte of the SOF0 body (precision)
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("12-bit", patched(|j| j[sof] = 12), "12-bit"),
            ("zero height", patched(|j| j[sof + 1..sof + 3].copy_from_slice(&[0, 0])), "no pixels"),
            ("no components", patched(|j| j[sof + 5] = 0), "0 colour components"),
            ("sampling 0x1", patched(|j| j[sof + 7] = 0x01), "sampling factors 0x1"),
            ("sampling 8x8", patched(|j| j[sof + 7] = 0x88), "sampling factors 8x8"),
            ("hierarchical", patched(|j| j[72] = 0xC5), "hierarchical"),
            ("length", patched(|j| j[74] = 0x0E), "frame header of 14 bytes"),
        ];
        for (what, jpeg, says) in cases {
            let e = check(&jpeg).unwrap_err().to_string();
            assert!(e.contains(says), "{what}: {e}");
        }
        assert_eq!(check(&[]), Err(Refused::Empty));
        assert_eq!(check(b"\x89PNG\r\n"), Err(Refused::NotJpeg("a PNG image")));
        assert!(matches!(check_within(&super::bomb(8, 8), 100), Err(Refused::TooManyBytes { max: 100, .. })));
        // Scan before any frame header; two frame headers.
        let mut no_sof = super::bomb(8, 8);
        no_sof.splice(71..84, []);
        assert_eq!(check(&no_sof), Err(Refused::NoFrameHeader));
        let mut two = super::bomb(8, 8);
        let sof0 = two[71..84].to_vec();
        two.splice(84..84, sof0);
        assert_eq!(check(&two), Err(Refused::TwoFrameHeaders));
        assert_eq!(check(&[0xFF, 0xD8, 0xFF, 0xD9]), Err(Refused::NoFrameHeader));
    }

    #[test]
    fn a_small_frame_of_many_scans_is_refused() {
        // A progressive-looking frame: the bomb's header as SOF2, then thousands of tiny scans.
        let mut j = super::bomb(4096, 4096);
        j[72] = 0xC2;
        j.truncate(j.len() - 2 - 64 - 10); // drop SOS, data and EOI
        for _ in 0..5000 {
            j.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x01, 0x3F, 0x00, 0x00]);
        }
        j.extend_from_slice(&[0xFF, 0xD9]);
        assert!(j.len() < 64 * 1024);
        let e = check(&j).unwrap_err();
        assert_eq!(e, Refused::TooManyScans { scans: MAX_SCANS + 1 });
        assert!(e.to_string().contains(&MAX_SCANS.to_string()), "{e}");
        // A real progressive frame passes.
        let p = small_jpeg(64, 48, true);
        let info = check(&p).unwrap();
        assert!(info.progressive && (2..=MAX_SCANS).contains(&info.scans), "{info:?}");
    }

    #[test]
    fn markers_inside_segments_and_stuffing_do_not_count_as_scans() {
        // An APP1 segment full of FF DA bytes, and scan data with FF00 stuffing and restarts.
        let mut j = super::bomb(16, 16);
        let app: Vec<u8> = [0xFF, 0xDA].repeat(200);
        let mut seg = vec![0xFF, 0xE1];
        seg.extend_from_slice(&((app.len() + 2) as u16).to_be_bytes());
        seg.extend_from_slice(&app);
        j.splice(2..2, seg);
        let eoi = j.len() - 2;
        j.splice(eoi..eoi, [0xFF, 0x00, 0xFF, 0xD0, 0x12, 0xFF, 0xFF, 0xD1]);
        assert_eq!(check(&j).unwrap().scans, 1);
    }
}
