//! Pre-processing exactly as the Obico server's ONNX path: decode the JPEG to 8-bit RGB
//! with libjpeg-turbo (EXIF orientation ignored), stretch it to the model's input size with OpenCV's
//! `INTER_LINEAR` (half-pixel centres, 11-bit fixed-point weights, on 8-bit pixels; no
//! letterbox), then NCHW float32 divided by 255.

use std::ops::Range;
use std::time::{Duration, Instant};

use super::jpeg;

pub use crate::frameguard::{MAX_PIXELS, MAX_SIDE};
use crate::frameguard::{self, Refused};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    /// Refused by the frame guard before any decoding (empty, not a JPEG, too large...).
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("the JPEG could not be decoded ({0}); the file is corrupt or truncated")]
    Corrupt(String),
}

/// An 8-bit RGB image, rows top to bottom, pixels interleaved.
#[derive(Clone, PartialEq, Default)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl std::fmt::Debug for Rgb8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rgb8({}x{})", self.width, self.height)
    }
}

/// Decodes a JPEG to 8-bit RGB with libjpeg-turbo, the decoder OpenCV (and so the Obico
/// server) uses, with the same settings (accurate integer IDCT, fancy upsampling).
/// Every failure is an error, never a panic; a truncated or corrupt frame is refused
/// rather than scored half grey.
pub fn decode_jpeg(bytes: &[u8]) -> Result<Rgb8, FrameError> {
    let mut img = Rgb8 { width: 0, height: 0, pixels: Vec::new() };
    decode_jpeg_into(bytes, &mut img)?;
    Ok(img)
}

/// [`decode_jpeg`] into an image whose pixel buffer is reused from frame to frame (no
/// fresh allocation, no page faults for a frame no larger than the last). On an error,
/// `out` holds no meaningful picture.
pub fn decode_jpeg_into(bytes: &[u8], out: &mut Rgb8) -> Result<(), FrameError> {
    let mut decoder = jpeg::Decoder::new().map_err(FrameError::Corrupt)?;
    let header = checked_header(&mut decoder, bytes)?;
    decode_band(&mut decoder, bytes, &header, 0..header.height, out)
}

/// Passes the frame through the guard (empty, not a JPEG, absurd size or scan count in
/// its header), then reads the header with the decoder, which agrees or refuses.
fn checked_header(decoder: &mut jpeg::Decoder, bytes: &[u8]) -> Result<jpeg::Header, FrameError> {
    let info = frameguard::check(bytes)?;
    let header = decoder.header(bytes).map_err(FrameError::Corrupt)?;
    if (header.width, header.height) != (info.width, info.height) {
        return Err(FrameError::Corrupt(format!(
            "the frame header says {}x{} to the decoder and {}x{} to the guard",
            header.width, header.height, info.width, info.height
        )));
    }
    Ok(header)
}

/// Decodes source rows `rows` of a frame whose header was checked into `out`.
fn decode_band(
    decoder: &mut jpeg::Decoder,
    bytes: &[u8],
    header: &jpeg::Header,
    rows: Range<usize>,
    out: &mut Rgb8,
) -> Result<(), FrameError> {
    out.width = header.width;
    out.height = rows.len();
    out.pixels.resize(header.width * rows.len() * 3, 0);
    decoder.decode_rows(bytes, rows, &mut out.pixels).map_err(FrameError::Corrupt)
}

/// A JPEG's width and height, read from its header by the frame guard (which refuses
/// the frame when they are over its limits) without decoding the pixels.
pub fn jpeg_dimensions(bytes: &[u8]) -> Result<(usize, usize), FrameError> {
    let info = frameguard::check(bytes)?;
    Ok((info.width, info.height))
}

const COEF_BITS: u32 = 11;
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;

/// One destination index's two source taps and fixed-point weights, as OpenCV's
/// `hal::resize` computes them for `INTER_LINEAR` on 8-bit images.
#[derive(Clone, Copy)]
struct Tap {
    s0: usize,
    s1: usize,
    w0: i32,
    w1: i32,
}

/// The source position of each destination index and its fraction, exactly as OpenCV:
/// `fx = (float)((dx + 0.5) * scale - 0.5)`, `sx = cvFloor(fx)`, `fx -= sx`, with
/// `scale = 1 / (dst / src)` in double (not `src / dst`, which can differ in the last bit).
fn positions(src: usize, dst: usize) -> impl Iterator<Item = (i64, f32)> {
    let scale = 1.0 / (dst as f64 / src as f64);
    (0..dst).map(move |d| {
        let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
        let s = f.floor() as i64;
        (s, f - s as f32)
    })
}

/// `saturate_cast<short>(w * INTER_RESIZE_COEF_SCALE)`: rounds half to even, as cvRound.
fn weights(f: f32) -> (i32, i32) {
    (((1.0 - f) * COEF_SCALE).round_ties_even() as i32, (f * COEF_SCALE).round_ties_even() as i32)
}

/// Horizontal taps. OpenCV clamps them at the borders: left of the first pixel centre the
/// position becomes pixel 0 with fraction 0; at or right of the last centre it takes that
/// pixel alone (`S[last] * 2048`), written here as the pair (`last`, `last`, 2048, 0).
fn x_taps(src: usize, dst: usize) -> Vec<Tap> {
    positions(src, dst)
        .map(|(s, f)| {
            let (s, f) = if s < 0 { (0, 0.0) } else { (s, f) };
            if s + 1 >= src as i64 {
                return Tap { s0: src - 1, s1: src - 1, w0: 1 << COEF_BITS, w1: 0 };
            }
            let (w0, w1) = weights(f);
            Tap { s0: s as usize, s1: s as usize + 1, w0, w1 }
        })
        .collect()
}

/// Vertical taps. Unlike the horizontal ones, OpenCV does NOT clamp them: the weights come
/// from the unclamped fraction and only the two source rows are clipped into the image
/// (`clip(sy, 0, h)`, `clip(sy + 1, 0, h)`). Above the first row centre and below the last
/// (only when the height is upscaled) a row is thus blended with itself with weights
/// such as (512, 1536), and the truncating 8-bit blend ([`blend`]) makes that differ by
/// one level now and then from the row taken alone.
fn y_taps(src: usize, dst: usize) -> Vec<Tap> {
    let clip = |s: i64| s.clamp(0, src as i64 - 1) as usize;
    positions(src, dst)
        .map(|(s, f)| {
            let (w0, w1) = weights(f);
            Tap { s0: clip(s), s1: clip(s + 1), w0, w1 }
        })
        .collect()
}

/// Bilinear resize of an interleaved 8-bit image with OpenCV `INTER_LINEAR` semantics
/// (`cv2.resize(img, (dst_w, dst_h), interpolation=cv2.INTER_LINEAR)`), byte for byte
/// (tested against OpenCV over hundreds of sizes, up- and downscales). OpenCV's own special
/// cases need none here: an exact 2x downscale in both directions (where it switches to
/// `INTER_AREA`) gives `(a + b + c + d + 2) >> 2` either way, and a same-size "resize"
/// (a copy) gives weights (2048, 0) everywhere.
pub fn resize_linear(src: &Rgb8, dst_w: usize, dst_h: usize) -> Rgb8 {
    let mut pixels = vec![0u8; dst_w * dst_h * 3];
    let (xt, yt) = (x_taps(src.width, dst_w), y_taps(src.height, dst_h));
    resize_rows(src, 0, &xt, &yt, 0..dst_h, |dy, [r0, r1], (b0, b1)| {
        let out = &mut pixels[dy * dst_w * 3..(dy + 1) * dst_w * 3];
        for c in 0..3 {
            let plane = c * dst_w..(c + 1) * dst_w;
            for ((px, &s0), &s1) in out.chunks_exact_mut(3).zip(&r0[plane.clone()]).zip(&r1[plane]) {
                px[c] = blend(s0, s1, b0, b1) as u8;
            }
        }
    });
    Rgb8 { width: dst_w, height: dst_h, pixels }
}

/// Resizes (as [`resize_linear`]) straight into an NCHW float32 tensor in [0, 1]
/// (`out.len() == 3 * dst_w * dst_h`), the model's input, without an intermediate image.
pub fn resize_to_nchw(src: &Rgb8, dst_w: usize, dst_h: usize, out: &mut [f32]) {
    let plane = dst_w * dst_h;
    assert_eq!(out.len(), plane * 3, "tensor buffer size");
    let (xt, yt) = (x_taps(src.width, dst_w), y_taps(src.height, dst_h));
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    band_to_nchw(src, 0, &xt, &yt, 0..dst_h, [r, g, b]);
}

/// Resizes destination rows `dst` into the three planes' slices for those rows, from
/// `src`, which holds source rows `src_y0..src_y0 + src.height`.
fn band_to_nchw(src: &Rgb8, src_y0: usize, xt: &[Tap], yt: &[Tap], dst: Range<usize>, mut planes: [&mut [f32]; 3]) {
    let dst_w = xt.len();
    let first = dst.start;
    resize_rows(src, src_y0, xt, yt, dst, |dy, [r0, r1], (b0, b1)| {
        let at = (dy - first) * dst_w;
        for (c, plane) in planes.iter_mut().enumerate() {
            let row = c * dst_w..(c + 1) * dst_w;
            for ((o, &s0), &s1) in plane[at..at + dst_w].iter_mut().zip(&r0[row.clone()]).zip(&r1[row]) {
                // `v as f32 / 255.0`: the same float32 division numpy does.
                *o = blend(s0, s1, b0, b1) as f32 / 255.0;
            }
        }
    });
}

/// OpenCV's `VResizeLinear` for 8-bit output (its vector and scalar code compute the same):
/// blends two horizontally resized rows (fixed point, scaled by 2^11) with vertical weights
/// `b0`, `b1` (also 2^11), truncating each product.
#[inline(always)]
fn blend(s0: i32, s1: i32, b0: i32, b1: i32) -> i32 {
    let v = (((s0 >> 4) * b0) >> 16) + (((s1 >> 4) * b1) >> 16);
    ((v + 2) >> 2).clamp(0, 255)
}

/// `v as f32 / 255.0` for every byte (the same float32 division numpy does).
fn unit_lut() -> [f32; 256] {
    std::array::from_fn(|v| v as f32 / 255.0)
}

/// The resize itself, for destination rows `dst`: for each destination row, hands `emit`
/// the two horizontally resized source rows it blends (planar: all red sums, then green,
/// then blue; fixed point scaled by 2^11) and their vertical weights. `src` holds source
/// rows `src_y0..src_y0 + src.height`, which must cover every row `yt` names for `dst`;
/// `xt` and `yt` are the taps of the whole frame.
fn resize_rows(
    src: &Rgb8,
    src_y0: usize,
    xt: &[Tap],
    yt: &[Tap],
    dst: Range<usize>,
    mut emit: impl FnMut(usize, [&[i32]; 2], (i32, i32)),
) {
    const CN: usize = 3;
    let sw = src.width;
    assert!(sw > 0 && src.height > 0 && !xt.is_empty(), "resize of an empty image");
    let dw = xt.len();
    let row_len = dw * CN;

    // Horizontal pass of one source row into planar fixed-point sums.
    let hresize = |sy: usize, out: &mut [i32]| {
        let sy = sy - src_y0;
        let row = &src.pixels[sy * sw * CN..(sy + 1) * sw * CN];
        let (r, rest) = out.split_at_mut(dw);
        let (g, b) = rest.split_at_mut(dw);
        for ((t, (r, g)), b) in xt.iter().zip(r.iter_mut().zip(g.iter_mut())).zip(b.iter_mut()) {
            let a: &[u8; CN] = row[t.s0 * CN..][..CN].try_into().expect("3 bytes");
            let c: &[u8; CN] = row[t.s1 * CN..][..CN].try_into().expect("3 bytes");
            *r = a[0] as i32 * t.w0 + c[0] as i32 * t.w1;
            *g = a[1] as i32 * t.w0 + c[1] as i32 * t.w1;
            *b = a[2] as i32 * t.w0 + c[2] as i32 * t.w1;
        }
    };

    let mut rows = [vec![0i32; row_len], vec![0i32; row_len]];
    let mut cached: [Option<usize>; 2] = [None, None];
    for dy in dst {
        let Tap { s0: sy0, s1: sy1, w0: b0, w1: b1 } = yt[dy];
        // Reuse horizontally resized rows across destination rows, as OpenCV does.
        if cached[0] != Some(sy0) {
            if cached[1] == Some(sy0) {
                rows.swap(0, 1);
                cached.swap(0, 1);
            } else {
                hresize(sy0, &mut rows[0]);
                cached[0] = Some(sy0);
            }
        }
        if cached[1] != Some(sy1) {
            if sy1 == sy0 {
                let (a, b) = rows.split_at_mut(1);
                b[0].copy_from_slice(&a[0]);
            } else {
                hresize(sy1, &mut rows[1]);
            }
            cached[1] = Some(sy1);
        }
        emit(dy, [&rows[0], &rows[1]], (b0, b1));
    }
}

/// Writes an RGB image as NCHW float32 in [0, 1] into `out` (length 3*w*h).
pub fn to_nchw(img: &Rgb8, out: &mut [f32]) {
    let plane = img.width * img.height;
    assert_eq!(out.len(), plane * 3, "tensor buffer size");
    let lut = unit_lut();
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.pixels.chunks_exact(3).enumerate() {
        r[i] = lut[px[0] as usize];
        g[i] = lut[px[1] as usize];
        b[i] = lut[px[2] as usize];
    }
}

/// One horizontal band of a frame's pre-processing: the source rows it decodes and the
/// model-input rows it fills (which need exactly those source rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Band {
    pub src: Range<usize>,
    pub dst: Range<usize>,
}

/// Cost of skipping a source row (entropy decoding only) relative to decoding and resizing
/// it, measured with `printvigil bench` on 720p webcam-like frames.
const SKIP_COST: f64 = 0.3;
/// A band gets at least this many source rows (fewer are not worth a thread).
const MIN_BAND_ROWS: usize = 64;

/// Splits a frame `src_h` rows tall, resized to `dst_h` rows, into at most `n` bands of
/// about equal work. A band lower down also skips (entropy-decodes) every row above it,
/// so lower bands are given fewer rows: band `i` starts at
/// `src_h * (1 - k^i) / (1 - k^n)` with `k = 1 - SKIP_COST`.
pub fn plan_bands(src_h: usize, dst_h: usize, n: usize) -> Vec<Band> {
    plan(&y_taps(src_h, dst_h), src_h, n)
}

fn plan(yt: &[Tap], src_h: usize, n: usize) -> Vec<Band> {
    let dst_h = yt.len();
    let n = n.min(src_h / MIN_BAND_ROWS).min(dst_h).max(1);
    let keep = 1.0 - SKIP_COST;
    let whole = 1.0 - keep.powi(n as i32);
    let mut cuts = vec![0];
    for i in 1..n {
        let target = src_h as f64 * (1.0 - keep.powi(i as i32)) / whole;
        let d = yt.partition_point(|t| (t.s0 as f64) < target);
        let prev = *cuts.last().expect("starts with 0");
        cuts.push(d.clamp(prev + 1, dst_h - (n - i)));
    }
    cuts.push(dst_h);
    bands_at(yt, &cuts)
}

/// The bands between consecutive destination-row cuts (`0, .., dst_h`), each with the
/// source rows its destination rows blend.
fn bands_at(yt: &[Tap], cuts: &[usize]) -> Vec<Band> {
    cuts.windows(2).map(|c| Band { src: yt[c[0]].s0..yt[c[1] - 1].s1 + 1, dst: c[0]..c[1] }).collect()
}

/// The time a frame's pre-processing took: decoding (until the last band was decoded)
/// and resizing into the tensor (the rest).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PrepTimes {
    pub decode: Duration,
    pub resize: Duration,
}

/// Turns JPEG frames into the model's input tensor: decode, resize, NCHW float32 / 255.
/// With more than one thread the frame is cut into horizontal bands (see [`plan_bands`]),
/// each decoded and resized on its own core; the tensor is the same either way (tested).
/// Decoders and row buffers are kept from frame to frame.
#[derive(Debug)]
pub struct Preprocessor {
    threads: usize,
    workers: Vec<Worker>,
}

#[derive(Debug, Default)]
struct Worker {
    decoder: Option<jpeg::Decoder>,
    rows: Rgb8,
}

impl Worker {
    /// Decodes and resizes one band; returns when its decoding ended.
    fn run(&mut self, bytes: &[u8], header: &jpeg::Header, band: &Band, xt: &[Tap], yt: &[Tap], planes: [&mut [f32]; 3]) -> Result<Instant, FrameError> {
        decode_band(decoder(&mut self.decoder)?, bytes, header, band.src.clone(), &mut self.rows)?;
        let decoded = Instant::now();
        band_to_nchw(&self.rows, band.src.start, xt, yt, band.dst.clone(), planes);
        Ok(decoded)
    }
}

fn decoder(slot: &mut Option<jpeg::Decoder>) -> Result<&mut jpeg::Decoder, FrameError> {
    if slot.is_none() {
        *slot = Some(jpeg::Decoder::new().map_err(FrameError::Corrupt)?);
    }
    Ok(slot.as_mut().expect("set above"))
}

impl Preprocessor {
    /// A pre-processor using up to `threads` cores per frame.
    pub fn new(threads: usize) -> Self {
        Preprocessor { threads: threads.max(1), workers: Vec::new() }
    }

    /// Decodes `jpeg` and writes the model input of size (`w`, `h`) into `tensor`
    /// (`3 * w * h` values). Returns the frame's width and height and the time taken.
    pub fn run(&mut self, bytes: &[u8], (w, h): (usize, usize), tensor: &mut [f32]) -> Result<(usize, usize, PrepTimes), FrameError> {
        let start = Instant::now();
        assert!(w > 0 && h > 0 && tensor.len() == 3 * w * h, "tensor buffer size");
        if self.workers.is_empty() {
            self.workers.push(Worker::default());
        }
        let header = checked_header(decoder(&mut self.workers[0].decoder)?, bytes)?;
        let (xt, yt) = (x_taps(header.width, w), y_taps(header.height, h));
        let n = if header.bands_help() { self.threads } else { 1 };
        let bands = plan(&yt, header.height, n);
        if self.workers.len() < bands.len() {
            self.workers.resize_with(bands.len(), Worker::default);
        }

        // Each band's slice of each plane.
        let plane = w * h;
        let (r, rest) = tensor.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        let mut planes = [r, g, b].map(Some);
        let mut jobs = Vec::with_capacity(bands.len());
        for (band, worker) in bands.iter().zip(self.workers.iter_mut()) {
            let cut = (band.dst.end - band.dst.start) * w;
            let [r, g, b] = planes.each_mut().map(|p| {
                let (head, tail) = p.take().expect("refilled below").split_at_mut(cut);
                *p = Some(tail);
                head
            });
            jobs.push((band, worker, [r, g, b]));
        }

        let (header, xt, yt) = (&header, &xt[..], &yt[..]);
        let results: Vec<Result<Instant, FrameError>> = std::thread::scope(|scope| {
            let mut jobs = jobs.into_iter();
            let (band0, worker0, planes0) = jobs.next().expect("at least one band");
            let mut spawned = Vec::new();
            let mut failed = Vec::new();
            for (band, worker, planes) in jobs {
                let job = move || worker.run(bytes, header, band, xt, yt, planes);
                // A thread that cannot be started fails this frame, not the process.
                match std::thread::Builder::new().name("pv-decode".into()).spawn_scoped(scope, job) {
                    Ok(handle) => spawned.push(handle),
                    Err(e) => failed.push(Err(FrameError::Corrupt(format!("no thread to decode a band: {e}")))),
                }
            }
            let mut results = vec![worker0.run(bytes, header, band0, xt, yt, planes0)];
            results.extend(spawned.into_iter().map(|h| {
                h.join().unwrap_or_else(|_| Err(FrameError::Corrupt("a decoding thread failed".into())))
            }));
            results.extend(failed);
            results
        });
        let mut decoded = start;
        for r in results {
            decoded = decoded.max(r?);
        }
        let end = Instant::now();
        Ok((header.width, header.height, PrepTimes { decode: decoded - start, resize: end - decoded }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: usize, h: usize, f: impl Fn(usize, usize, usize) -> u8) -> Rgb8 {
        let mut pixels = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    pixels.push(f(x, y, c));
                }
            }
        }
        Rgb8 { width: w, height: h, pixels }
    }

    #[test]
    fn constant_image_stays_constant_at_any_scale() {
        for (sw, sh, dw, dh) in [(1, 1, 5, 3), (7, 5, 416, 416), (1280, 720, 416, 416), (3, 1000, 2, 9)] {
            let src = img(sw, sh, |_, _, c| 17 + 100 * c as u8);
            let out = resize_linear(&src, dw, dh);
            assert!(out.pixels.chunks(3).all(|p| p == [17, 117, 217]), "{sw}x{sh}->{dw}x{dh}");
        }
    }

    #[test]
    fn identity_size_is_exact() {
        let src = img(13, 11, |x, y, c| (x * 19 + y * 7 + c * 50) as u8);
        assert_eq!(resize_linear(&src, 13, 11), src);
    }

    #[test]
    fn upscale_by_two_interpolates_between_neighbours() {
        // Half-pixel centres: destination x=1 maps to source 0.25 -> 0.75*a + 0.25*b.
        let src = img(2, 1, |x, _, _| if x == 0 { 0 } else { 200 });
        let out = resize_linear(&src, 4, 1);
        let reds: Vec<u8> = out.pixels.chunks(3).map(|p| p[0]).collect();
        assert_eq!(reds, vec![0, 50, 150, 200]);
    }

    #[test]
    fn fused_resize_to_tensor_equals_resize_then_convert() {
        let src = img(37, 23, |x, y, c| (x * 7 + y * 13 + c * 71) as u8);
        let mut a = vec![0f32; 3 * 19 * 29];
        let mut b = vec![0f32; 3 * 19 * 29];
        resize_to_nchw(&src, 19, 29, &mut a);
        to_nchw(&resize_linear(&src, 19, 29), &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn nchw_layout_and_scale() {
        let src = img(2, 1, |x, _, c| (x * 3 + c) as u8 * 51);
        let mut t = vec![0f32; 6];
        to_nchw(&src, &mut t);
        assert_eq!(t, vec![0.0, 0.6, 0.2, 0.8, 0.4, 1.0]);
    }

    #[test]
    fn a_reused_buffer_decodes_as_a_fresh_one_whatever_the_sizes() {
        let jpeg = |w: usize, h: usize, seed: u8| {
            let src = img(w, h, |x, y, c| (x * 7 + y * 3 + c * 50) as u8 ^ seed);
            crate::detector::annotate::encode_jpeg(&src, 90).unwrap()
        };
        let mut reused = Rgb8::default();
        for (w, h, seed) in [(64, 48, 1), (16, 8, 2), (80, 60, 3), (33, 17, 4)] {
            let bytes = jpeg(w, h, seed);
            decode_jpeg_into(&bytes, &mut reused).unwrap();
            assert!(reused == decode_jpeg(&bytes).unwrap(), "{w}x{h}");
            assert_eq!(reused.pixels.len(), w * h * 3);
        }
        assert!(decode_jpeg_into(b"nope", &mut reused).is_err());
    }

    /// A busy test picture (edges, gradients, noise) as a JPEG with the given chroma
    /// subsampling (or greyscale), optionally progressive.
    fn test_jpeg(w: usize, h: usize, subsamp: turbojpeg::Subsamp, progressive: bool) -> Vec<u8> {
        let src = img(w, h, |x, y, c| {
            let noise = (x * 7919 + y * 104729 + c * 31) % 23;
            let stripe = if (x / 9 + y / 5) % 3 == 0 { 120 } else { 0 };
            (x * 127 / w + y * 85 / h + stripe / (c + 1) + noise).min(255) as u8
        });
        let mut c = turbojpeg::Compressor::new().unwrap();
        c.set_quality(88).unwrap();
        c.set_subsamp(subsamp).unwrap();
        if progressive {
            c.set_progressive(true).unwrap();
        }
        let image = turbojpeg::Image { pixels: &src.pixels[..], width: w, pitch: w * 3, height: h, format: turbojpeg::PixelFormat::RGB };
        c.compress_to_vec(image).unwrap()
    }

    const SUBSAMPLINGS: [turbojpeg::Subsamp; 5] = [
        turbojpeg::Subsamp::None,
        turbojpeg::Subsamp::Sub2x1,
        turbojpeg::Subsamp::Sub2x2,
        turbojpeg::Subsamp::Sub1x2,
        turbojpeg::Subsamp::Gray,
    ];

    #[test]
    fn a_band_decodes_to_the_same_rows_as_the_whole_frame() {
        for subsamp in SUBSAMPLINGS {
            let (w, h) = (203, 157);
            let jpeg = test_jpeg(w, h, subsamp, false);
            let whole = decode_jpeg(&jpeg).unwrap();
            let mut d = jpeg::Decoder::new().unwrap();
            // Starts and ends inside, at and across MCU rows (8 or 16 rows), and the edges.
            for rows in [0..1, 0..16, 1..2, 7..9, 15..17, 16..32, 17..100, 100..157, 156..157, 31..157, 0..157] {
                let mut out = vec![0u8; rows.len() * w * 3];
                d.decode_rows(&jpeg, rows.clone(), &mut out).unwrap();
                assert!(out == whole.pixels[rows.start * w * 3..rows.end * w * 3], "{subsamp:?} rows {rows:?}");
            }
            let mut out = vec![0u8; 10 * w * 3];
            assert!(d.decode_rows(&jpeg, 150..160, &mut out).is_err(), "rows past the bottom");
            assert!(d.decode_rows(&jpeg, 0..10, &mut out[1..]).is_err(), "a buffer of the wrong size");
        }
    }

    #[test]
    fn bands_cover_every_row_once_and_have_the_rows_they_need() {
        for (src_h, dst_h) in [(720, 416), (1080, 416), (416, 416), (300, 1000), (64, 416), (4000, 7), (129, 416)] {
            let yt = y_taps(src_h, dst_h);
            for n in 1..=4 {
                let bands = plan_bands(src_h, dst_h, n);
                assert!(!bands.is_empty() && bands.len() <= n, "{src_h}->{dst_h} n={n}: {bands:?}");
                assert!(bands.len() == 1 || src_h / bands.len() >= MIN_BAND_ROWS, "{bands:?}");
                assert_eq!(bands[0].dst.start, 0);
                assert_eq!(bands.last().unwrap().dst.end, dst_h);
                for pair in bands.windows(2) {
                    assert_eq!(pair[0].dst.end, pair[1].dst.start, "{bands:?}");
                }
                for band in &bands {
                    assert!(!band.dst.is_empty() && band.src.end <= src_h, "{band:?}");
                    for t in &yt[band.dst.clone()] {
                        assert!(band.src.contains(&t.s0) && band.src.contains(&t.s1), "{band:?}");
                    }
                }
            }
        }
        // Lower bands skip the rows above them, so they are given fewer rows.
        let bands = plan_bands(720, 416, 2);
        assert!(bands[0].src.len() > bands[1].src.len(), "{bands:?}");
    }

    /// Any cut of the destination rows, the way the banded path does it (each band from
    /// its own source rows only), gives the whole-frame tensor: up- and downscales, cuts
    /// in the border rows where OpenCV blends a row with itself.
    #[test]
    fn any_band_cut_gives_the_whole_frame_tensor() {
        for (sw, sh, dw, dh) in [(37, 23, 19, 29), (19, 7, 23, 41), (40, 300, 31, 17), (5, 1, 9, 6), (3, 2, 4, 4), (64, 48, 64, 48)] {
            let src = img(sw, sh, |x, y, c| ((x * 7919 + y * 104729 + c * 31) % 251) as u8);
            let mut whole = vec![0f32; 3 * dw * dh];
            resize_to_nchw(&src, dw, dh, &mut whole);
            let (xt, yt) = (x_taps(sw, dw), y_taps(sh, dh));
            let mut cut_sets: Vec<Vec<usize>> = (1..dh).map(|c| vec![0, c, dh]).collect();
            cut_sets.push((0..=dh).collect()); // one row per band
            cut_sets.push(vec![0, 1, dh - 1, dh]);
            for cuts in cut_sets {
                let mut got = vec![-1f32; whole.len()];
                for band in bands_at(&yt, &cuts) {
                    let rows = Rgb8 {
                        width: sw,
                        height: band.src.len(),
                        pixels: src.pixels[band.src.start * sw * 3..band.src.end * sw * 3].to_vec(),
                    };
                    let at = band.dst.start * dw..band.dst.end * dw;
                    let (r, rest) = got.split_at_mut(dw * dh);
                    let (g, b) = rest.split_at_mut(dw * dh);
                    let planes = [&mut r[at.clone()], &mut g[at.clone()], &mut b[at]];
                    band_to_nchw(&rows, band.src.start, &xt, &yt, band.dst.clone(), planes);
                }
                assert!(got == whole, "{sw}x{sh} -> {dw}x{dh}, cuts {cuts:?}");
            }
        }
    }

    #[test]
    fn the_tensor_is_the_same_whatever_the_number_of_threads() {
        let size = (416, 416);
        let mut frames: Vec<(String, Vec<u8>)> = SUBSAMPLINGS
            .iter()
            .map(|&s| (format!("{s:?} 641x483"), test_jpeg(641, 483, s, false)))
            .collect();
        frames.push(("4:2:0 1280x720".into(), test_jpeg(1280, 720, turbojpeg::Subsamp::Sub2x2, false)));
        frames.push(("4:2:0 300x200 up-scaled".into(), test_jpeg(300, 200, turbojpeg::Subsamp::Sub2x2, false)));
        frames.push(("progressive".into(), test_jpeg(641, 483, turbojpeg::Subsamp::Sub2x2, true)));
        for (name, jpeg) in &frames {
            let mut expected = vec![0f32; 3 * size.0 * size.1];
            resize_to_nchw(&decode_jpeg(jpeg).unwrap(), size.0, size.1, &mut expected);
            for threads in 1..=4 {
                let mut pre = Preprocessor::new(threads);
                // Twice: the second time with the buffers of the first.
                for pass in 0..2 {
                    let mut got = vec![-1f32; expected.len()];
                    let (w, h, _) = pre.run(jpeg, size, &mut got).unwrap();
                    assert_eq!((w, h), jpeg_dimensions(jpeg).unwrap());
                    assert!(got == expected, "{name}, {threads} threads, pass {pass}");
                }
            }
        }
    }

    #[test]
    fn a_damaged_frame_is_refused_whatever_the_number_of_threads() {
        let jpeg = test_jpeg(640, 480, turbojpeg::Subsamp::Sub2x2, false);
        let mut tensor = vec![0f32; 3 * 416 * 416];
        for threads in [1, 2, 3] {
            let mut pre = Preprocessor::new(threads);
            for cut in [jpeg.len() / 4, jpeg.len() / 2, jpeg.len() - 100] {
                let err = pre.run(&jpeg[..cut], (416, 416), &mut tensor).unwrap_err();
                assert!(matches!(err, FrameError::Corrupt(_)), "{threads} threads, cut at {cut}: {err:?}");
            }
            assert_eq!(pre.run(b"", (416, 416), &mut tensor), Err(FrameError::Refused(Refused::Empty)));
            // And the next good frame still goes through.
            pre.run(&jpeg, (416, 416), &mut tensor).unwrap();
        }
    }

    #[test]
    fn non_jpeg_inputs_are_named() {
        assert_eq!(decode_jpeg(b""), Err(FrameError::Refused(Refused::Empty)));
        assert_eq!(decode_jpeg(b"\x89PNG\r\n\x1a\n...."), Err(FrameError::Refused(Refused::NotJpeg("a PNG image"))));
        assert_eq!(decode_jpeg(b"<html>"), Err(FrameError::Refused(Refused::NotJpeg("an HTML or XML page"))));
        assert_eq!(decode_jpeg(&[0xFF, 0xD8, 0xFF]), Err(FrameError::Refused(Refused::NoFrameHeader)));
        // Headers with absurd or empty sizes are refused before decoding.
        let sof = |w: u16, h: u16| {
            let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0, 0xFF, 0xC2, 0, 11, 8];
            v.extend_from_slice(&h.to_be_bytes());
            v.extend_from_slice(&w.to_be_bytes());
            v.extend_from_slice(&[1, 1, 0x11, 0]);
            v
        };
        assert_eq!(decode_jpeg(&sof(20000, 20000)), Err(FrameError::Refused(Refused::TooLarge { width: 20000, height: 20000 })));
        assert_eq!(decode_jpeg(&sof(0, 0)), Err(FrameError::Refused(Refused::NoPixels { width: 0, height: 0 })));
        assert_eq!(decode_jpeg(&sof(8000, 8000)), Err(FrameError::Refused(Refused::TooLarge { width: 8000, height: 8000 })));
    }
}
