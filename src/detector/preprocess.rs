//! Pre-processing exactly as the Obico server's ONNX path: decode the JPEG to 8-bit RGB
//! with libjpeg-turbo (EXIF orientation ignored), stretch it to the model's input size with OpenCV's
//! `INTER_LINEAR` (half-pixel centres, 11-bit fixed-point weights, on 8-bit pixels; no
//! letterbox), then NCHW float32 divided by 255.

/// Largest accepted frame side, in pixels (webcams top out at 4K).
pub const MAX_SIDE: usize = 8192;
/// Largest accepted frame area, in pixels (about 40 MP).
pub const MAX_PIXELS: usize = 40_000_000;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("the frame is empty (0 bytes); the camera returned nothing")]
    Empty,
    #[error("the frame is not a JPEG (it looks like {0}); point the camera at a JPEG snapshot URL or MJPEG stream")]
    NotJpeg(&'static str),
    #[error("the frame is {width}x{height}, larger than printvigil accepts ({MAX_SIDE} px a side, {MAX_PIXELS} px in all); lower the camera resolution")]
    TooLarge { width: usize, height: usize },
    #[error("the frame has no pixels ({width}x{height})")]
    NoPixels { width: usize, height: usize },
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
    if bytes.is_empty() {
        return Err(FrameError::Empty);
    }
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Err(FrameError::NotJpeg(sniff(bytes)));
    }
    // Size limits first, from the frame header, before the decoder allocates anything.
    if let Some((width, height)) = sof_size(bytes) {
        if width == 0 || height == 0 {
            return Err(FrameError::NoPixels { width, height });
        }
        if width > MAX_SIDE || height > MAX_SIDE || width * height > MAX_PIXELS {
            return Err(FrameError::TooLarge { width, height });
        }
    }
    let corrupt = |e: turbojpeg::Error| FrameError::Corrupt(e.to_string());
    let mut decoder = turbojpeg::Decompressor::new().map_err(corrupt)?;
    // The header first, so the size limit is checked before any pixel is allocated.
    let header = decoder.read_header(bytes).map_err(corrupt)?;
    let (width, height) = (header.width, header.height);
    if width == 0 || height == 0 {
        return Err(FrameError::NoPixels { width, height });
    }
    if width > MAX_SIDE || height > MAX_SIDE || width * height > MAX_PIXELS {
        return Err(FrameError::TooLarge { width, height });
    }
    out.pixels.resize(width * height * 3, 0);
    out.width = width;
    out.height = height;
    let image = turbojpeg::Image {
        pixels: out.pixels.as_mut_slice(),
        width,
        pitch: width * 3,
        height,
        format: turbojpeg::PixelFormat::RGB,
    };
    decoder.decompress(bytes, image).map_err(corrupt)?;
    Ok(())
}

/// A JPEG's width and height, read from its header without decoding the pixels.
pub fn jpeg_dimensions(bytes: &[u8]) -> Result<(usize, usize), FrameError> {
    if bytes.is_empty() {
        return Err(FrameError::Empty);
    }
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Err(FrameError::NotJpeg(sniff(bytes)));
    }
    if let Some(size) = sof_size(bytes) {
        return Ok(size);
    }
    let mut decoder = turbojpeg::Decompressor::new().map_err(|e| FrameError::Corrupt(e.to_string()))?;
    let header = decoder.read_header(bytes).map_err(|e| FrameError::Corrupt(e.to_string()))?;
    Ok((header.width, header.height))
}

/// The frame size from the JPEG's start-of-frame marker, when one is found before the
/// scan data.
fn sof_size(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut i = 2;
    while i + 9 <= bytes.len() {
        if bytes[i] != 0xFF {
            return None;
        }
        let marker = bytes[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        // SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC).
        if (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let h = u16::from_be_bytes([bytes[i + 5], bytes[i + 6]]) as usize;
            let w = u16::from_be_bytes([bytes[i + 7], bytes[i + 8]]) as usize;
            return Some((w, h));
        }
        if marker == 0xDA {
            return None; // start of scan: no frame header before it
        }
        i += 2 + len;
    }
    None
}

const COEF_BITS: u32 = 11;
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;

/// One destination index's two source taps and fixed-point weights, as OpenCV computes
/// them. At the right/bottom edge OpenCV uses a single tap with weight 1.0: that is the
/// pair (`s0 = s1 = last`, `w0 = 2048`, `w1 = 0`), which gives the same sums.
#[derive(Clone, Copy)]
struct Tap {
    s0: usize,
    s1: usize,
    w0: i32,
    w1: i32,
}

fn taps(src: usize, dst: usize) -> Vec<Tap> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let mut f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as i64;
            f -= s as f32;
            if s < 0 {
                f = 0.0;
                s = 0;
            }
            if s + 1 >= src as i64 {
                return Tap { s0: src - 1, s1: src - 1, w0: 1 << COEF_BITS, w1: 0 };
            }
            // saturate_cast<short>(float) rounds half to even, as cvRound does.
            Tap {
                s0: s as usize,
                s1: s as usize + 1,
                w0: ((1.0 - f) * COEF_SCALE).round_ties_even() as i32,
                w1: (f * COEF_SCALE).round_ties_even() as i32,
            }
        })
        .collect()
}

/// Bilinear resize of an interleaved 8-bit image with OpenCV `INTER_LINEAR` semantics
/// (`cv2.resize(img, (dst_w, dst_h))`), agreeing with OpenCV to within one level.
pub fn resize_linear(src: &Rgb8, dst_w: usize, dst_h: usize) -> Rgb8 {
    let mut pixels = vec![0u8; dst_w * dst_h * 3];
    resize_rows(src, dst_w, dst_h, |dy, row| {
        pixels[dy * dst_w * 3..(dy + 1) * dst_w * 3].copy_from_slice(row)
    });
    Rgb8 { width: dst_w, height: dst_h, pixels }
}

/// Resizes (as [`resize_linear`]) straight into an NCHW float32 tensor in [0, 1]
/// (`out.len() == 3 * dst_w * dst_h`), the model's input, without an intermediate image.
pub fn resize_to_nchw(src: &Rgb8, dst_w: usize, dst_h: usize, out: &mut [f32]) {
    let plane = dst_w * dst_h;
    assert_eq!(out.len(), plane * 3, "tensor buffer size");
    let lut = unit_lut();
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    resize_rows(src, dst_w, dst_h, |dy, row| {
        let base = dy * dst_w;
        for (x, px) in row.chunks_exact(3).enumerate() {
            r[base + x] = lut[px[0] as usize];
            g[base + x] = lut[px[1] as usize];
            b[base + x] = lut[px[2] as usize];
        }
    });
}

/// `v as f32 / 255.0` for every byte (the same float32 division numpy does).
fn unit_lut() -> [f32; 256] {
    std::array::from_fn(|v| v as f32 / 255.0)
}

/// The resize itself: hands each finished destination row (interleaved RGB) to `emit`.
fn resize_rows(src: &Rgb8, dst_w: usize, dst_h: usize, mut emit: impl FnMut(usize, &[u8])) {
    const CN: usize = 3;
    let (sw, sh) = (src.width, src.height);
    assert!(sw > 0 && sh > 0 && dst_w > 0 && dst_h > 0, "resize of an empty image");
    let xt = taps(sw, dst_w);
    let yt = taps(sh, dst_h);
    let row_len = dst_w * CN;

    // Horizontal pass of one source row into fixed-point sums (scaled by 2^11).
    let hresize = |sy: usize, out: &mut [i32]| {
        let row = &src.pixels[sy * sw * CN..(sy + 1) * sw * CN];
        for (t, o) in xt.iter().zip(out.chunks_exact_mut(CN)) {
            let a: &[u8; CN] = row[t.s0 * CN..][..CN].try_into().expect("3 bytes");
            let b: &[u8; CN] = row[t.s1 * CN..][..CN].try_into().expect("3 bytes");
            let o: &mut [i32; CN] = o.try_into().expect("3 values");
            for c in 0..CN {
                o[c] = a[c] as i32 * t.w0 + b[c] as i32 * t.w1;
            }
        }
    };

    let mut rows = [vec![0i32; row_len], vec![0i32; row_len]];
    let mut cached: [Option<usize>; 2] = [None, None];
    let mut dst_row = vec![0u8; row_len];
    for (dy, tap) in yt.iter().enumerate().take(dst_h) {
        let Tap { s0: sy0, s1: sy1, w0: b0, w1: b1 } = *tap;
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
        for ((d, &s0), &s1) in dst_row.iter_mut().zip(&rows[0]).zip(&rows[1]) {
            // OpenCV's vectorised VResizeLinear for 8-bit output.
            let v = (((s0 >> 4) * b0) >> 16) + (((s1 >> 4) * b1) >> 16);
            *d = ((v + 2) >> 2).clamp(0, 255) as u8;
        }
        emit(dy, &dst_row);
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

    #[test]
    fn non_jpeg_inputs_are_named() {
        assert_eq!(decode_jpeg(b""), Err(FrameError::Empty));
        assert_eq!(decode_jpeg(b"\x89PNG\r\n\x1a\n...."), Err(FrameError::NotJpeg("a PNG image")));
        assert_eq!(decode_jpeg(b"<html>"), Err(FrameError::NotJpeg("an HTML or XML page")));
        assert!(matches!(decode_jpeg(&[0xFF, 0xD8, 0xFF]), Err(FrameError::Corrupt(_))));
        // Headers with absurd or empty sizes are refused before decoding.
        let sof = |w: u16, h: u16| {
            let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0, 0xFF, 0xC2, 0, 11, 8];
            v.extend_from_slice(&h.to_be_bytes());
            v.extend_from_slice(&w.to_be_bytes());
            v.extend_from_slice(&[1, 1, 0x11, 0]);
            v
        };
        assert_eq!(decode_jpeg(&sof(20000, 20000)), Err(FrameError::TooLarge { width: 20000, height: 20000 }));
        assert_eq!(decode_jpeg(&sof(0, 0)), Err(FrameError::NoPixels { width: 0, height: 0 }));
        assert_eq!(decode_jpeg(&sof(8000, 8000)), Err(FrameError::TooLarge { width: 8000, height: 8000 }));
    }
}
