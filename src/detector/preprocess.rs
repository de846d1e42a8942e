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
#[derive(Clone, PartialEq)]
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
    if bytes.is_empty() {
        return Err(FrameError::Empty);
    }
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Err(FrameError::NotJpeg(sniff(bytes)));
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
    let mut pixels = vec![0u8; width * height * 3];
    let image = turbojpeg::Image {
        pixels: pixels.as_mut_slice(),
        width,
        pitch: width * 3,
        height,
        format: turbojpeg::PixelFormat::RGB,
    };
    decoder.decompress(bytes, image).map_err(corrupt)?;
    Ok(Rgb8 { width, height, pixels })
}

const COEF_BITS: u32 = 11;
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;

/// Per-destination-index source offset and fixed-point weights, as OpenCV computes them.
/// `single` marks the right/bottom edge where OpenCV uses one tap only.
struct Taps {
    offset: Vec<usize>,
    w0: Vec<i32>,
    w1: Vec<i32>,
    single: Vec<bool>,
}

fn taps(src: usize, dst: usize) -> Taps {
    let scale = src as f64 / dst as f64;
    let mut t = Taps {
        offset: Vec::with_capacity(dst),
        w0: Vec::with_capacity(dst),
        w1: Vec::with_capacity(dst),
        single: Vec::with_capacity(dst),
    };
    for d in 0..dst {
        let mut f = ((d as f64 + 0.5) * scale - 0.5) as f32;
        let mut s = f.floor() as i64;
        f -= s as f32;
        if s < 0 {
            f = 0.0;
            s = 0;
        }
        let single = s + 1 >= src as i64;
        if s >= src as i64 - 1 {
            f = 0.0;
            s = src as i64 - 1;
        }
        t.offset.push(s as usize);
        // saturate_cast<short>(float) rounds half to even, as cvRound does.
        t.w0.push(((1.0 - f) * COEF_SCALE).round_ties_even() as i32);
        t.w1.push((f * COEF_SCALE).round_ties_even() as i32);
        t.single.push(single);
    }
    t
}

/// Bilinear resize of an interleaved 8-bit image with OpenCV `INTER_LINEAR` semantics
/// (`cv2.resize(img, (dst_w, dst_h))`), agreeing with OpenCV to within one level.
pub fn resize_linear(src: &Rgb8, dst_w: usize, dst_h: usize) -> Rgb8 {
    const CN: usize = 3;
    let (sw, sh) = (src.width, src.height);
    assert!(sw > 0 && sh > 0 && dst_w > 0 && dst_h > 0, "resize of an empty image");
    let xt = taps(sw, dst_w);
    let yt = taps(sh, dst_h);
    let row_len = dst_w * CN;

    // Horizontal pass of one source row into fixed-point sums (scaled by 2^11).
    let hresize = |sy: usize, out: &mut [i32]| {
        let row = &src.pixels[sy * sw * CN..(sy + 1) * sw * CN];
        for dx in 0..dst_w {
            let sx = xt.offset[dx] * CN;
            for c in 0..CN {
                let a = row[sx + c] as i32;
                out[dx * CN + c] = if xt.single[dx] {
                    a * (1 << COEF_BITS)
                } else {
                    a * xt.w0[dx] + row[sx + CN + c] as i32 * xt.w1[dx]
                };
            }
        }
    };

    let mut out = vec![0u8; row_len * dst_h];
    let mut rows: [Vec<i32>; 2] = [vec![0; row_len], vec![0; row_len]];
    let mut cached: [Option<usize>; 2] = [None, None];
    for dy in 0..dst_h {
        let sy0 = yt.offset[dy];
        let sy1 = (sy0 + 1).min(sh - 1);
        // Reuse horizontally resized rows across destination rows (OpenCV does the same).
        for (k, sy) in [sy0, sy1].into_iter().enumerate() {
            if cached[k] != Some(sy) {
                if let Some(j) = (0..2).find(|&j| cached[j] == Some(sy)) {
                    let copy = rows[j].clone();
                    rows[k].copy_from_slice(&copy);
                } else {
                    hresize(sy, &mut rows[k]);
                }
                cached[k] = Some(sy);
            }
        }
        let (b0, b1) = (yt.w0[dy], yt.w1[dy]);
        let dst_row = &mut out[dy * row_len..(dy + 1) * row_len];
        for x in 0..row_len {
            // OpenCV's vectorised VResizeLinear for 8-bit output.
            let v = (((rows[0][x] >> 4) * b0) >> 16) + (((rows[1][x] >> 4) * b1) >> 16);
            dst_row[x] = ((v + 2) >> 2).clamp(0, 255) as u8;
        }
    }
    Rgb8 { width: dst_w, height: dst_h, pixels: out }
}

/// Writes an RGB image as NCHW float32 in [0, 1] into `out` (length 3*w*h).
pub fn to_nchw(img: &Rgb8, out: &mut [f32]) {
    let plane = img.width * img.height;
    assert_eq!(out.len(), plane * 3, "tensor buffer size");
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.pixels.chunks_exact(3).enumerate() {
        r[i] = px[0] as f32 / 255.0;
        g[i] = px[1] as f32 / 255.0;
        b[i] = px[2] as f32 / 255.0;
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
    fn nchw_layout_and_scale() {
        let src = img(2, 1, |x, _, c| (x * 3 + c) as u8 * 51);
        let mut t = vec![0f32; 6];
        to_nchw(&src, &mut t);
        assert_eq!(t, vec![0.0, 0.6, 0.2, 0.8, 0.4, 1.0]);
    }

    #[test]
    fn non_jpeg_inputs_are_named() {
        assert_eq!(decode_jpeg(b""), Err(FrameError::Empty));
        assert_eq!(decode_jpeg(b"\x89PNG\r\n\x1a\n...."), Err(FrameError::NotJpeg("a PNG image")));
        assert_eq!(decode_jpeg(b"<html>"), Err(FrameError::NotJpeg("an HTML or XML page")));
        assert!(matches!(decode_jpeg(&[0xFF, 0xD8, 0xFF]), Err(FrameError::Corrupt(_))));
    }
}
