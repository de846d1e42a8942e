//! Rotation and flips applied to camera frames, so the detector (and the user) see the
//! print the right way up.
//!
//! Semantics, as web UIs (Mainsail, Fluidd) show a webcam: the picture is first rotated
//! **clockwise** by `rotation` degrees, then mirrored left-right (`flip_horizontal`) and/or
//! top-bottom (`flip_vertical`) as seen on the screen.
//!
//! The eight possible results are one lossless libjpeg-turbo transform each. When the
//! frame is made of whole MCUs (8 or 16 pixel blocks, depending on chroma subsampling) the
//! transform is done on the compressed data (no quality loss, fast); otherwise the frame
//! is decoded, turned pixel by pixel, and encoded again.

use serde::{Deserialize, Serialize};
use turbojpeg::TransformOp;

use super::CameraError;
use crate::detector::preprocess::{Rgb8, decode_jpeg};

/// Quality used when a frame has to be re-encoded.
const REENCODE_QUALITY: i32 = 92;

/// How a camera's frames are turned before use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orientation {
    /// Clockwise rotation in degrees: 0, 90, 180 or 270.
    pub rotation: u16,
    pub flip_horizontal: bool,
    pub flip_vertical: bool,
}

/// How [`Orientation::apply_traced`] produced its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Nothing to do; the bytes are returned as they came.
    Unchanged,
    /// libjpeg-turbo's lossless transform on the compressed data.
    Lossless,
    /// Decoded, turned, encoded again (the frame is not whole MCUs).
    Reencoded,
}

/// A 2x2 matrix on pixel coordinates (x right, y down), offsets implied.
type M = [[i8; 2]; 2];

const OPS: [(TransformOp, M); 8] = [
    (TransformOp::None, [[1, 0], [0, 1]]),
    (TransformOp::Hflip, [[-1, 0], [0, 1]]),
    (TransformOp::Vflip, [[1, 0], [0, -1]]),
    (TransformOp::Transpose, [[0, 1], [1, 0]]),
    (TransformOp::Transverse, [[0, -1], [-1, 0]]),
    (TransformOp::Rot90, [[0, -1], [1, 0]]),
    (TransformOp::Rot180, [[-1, 0], [0, -1]]),
    (TransformOp::Rot270, [[0, 1], [-1, 0]]),
];

fn mul(a: M, b: M) -> M {
    let mut r = [[0i8; 2]; 2];
    for (i, row) in r.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = a[i][0] * b[0][j] + a[i][1] * b[1][j];
        }
    }
    r
}

fn matrix(op: TransformOp) -> M {
    OPS.iter().find(|(o, _)| *o == op).map(|(_, m)| *m).unwrap_or([[1, 0], [0, 1]])
}

impl Orientation {
    /// Checks the rotation; the message names the key and the fix.
    pub fn validate(&self) -> Result<(), String> {
        if !matches!(self.rotation, 0 | 90 | 180 | 270) {
            return Err(format!(
                "`rotation` = {} is not allowed; use 0, 90, 180 or 270 (degrees clockwise)",
                self.rotation
            ));
        }
        Ok(())
    }

    /// The single transform equal to "rotate clockwise, then flip".
    pub fn op(&self) -> TransformOp {
        let rot = match self.rotation {
            90 => TransformOp::Rot90,
            180 => TransformOp::Rot180,
            270 => TransformOp::Rot270,
            _ => TransformOp::None,
        };
        let mut m = matrix(rot);
        if self.flip_horizontal {
            m = mul(matrix(TransformOp::Hflip), m);
        }
        if self.flip_vertical {
            m = mul(matrix(TransformOp::Vflip), m);
        }
        OPS.iter().find(|(_, om)| *om == m).map(|(o, _)| *o).unwrap_or(TransformOp::None)
    }

    /// Applies the orientation to a JPEG frame.
    pub fn apply(&self, jpeg: &[u8]) -> Result<Vec<u8>, CameraError> {
        self.apply_traced(jpeg).map(|(bytes, _)| bytes)
    }

    /// As [`apply`](Self::apply), also saying which way the work was done. The frame
    /// passes the frame guard first: libjpeg-turbo's transform allocates what the header
    /// claims, before it reads any picture data.
    pub fn apply_traced(&self, jpeg: &[u8]) -> Result<(Vec<u8>, Method), CameraError> {
        let op = self.op();
        if op == TransformOp::None {
            return Ok((jpeg.to_vec(), Method::Unchanged));
        }
        crate::frameguard::check(jpeg).map_err(|reason| CameraError::Refused { camera: "the camera".into(), reason })?;
        let bad = |e: String| CameraError::Orientation(e);
        let header = turbojpeg::read_header(jpeg).map_err(|e| bad(e.to_string()))?;
        let whole = header.subsamp != turbojpeg::Subsamp::Unknown
            && !header.is_lossless
            && header.width % header.subsamp.mcu_width() == 0
            && header.height % header.subsamp.mcu_height() == 0;
        if whole {
            let mut t = turbojpeg::Transform::op(op);
            t.perfect = true;
            // EXIF orientation and thumbnails would no longer match the pixels.
            t.copy_none = true;
            if let Ok(out) = turbojpeg::Transformer::new().and_then(|mut tr| tr.transform_to_vec(&t, jpeg)) {
                return Ok((out, Method::Lossless));
            }
        }
        let img = decode_jpeg(jpeg).map_err(|e| bad(e.to_string()))?;
        let turned = turn(&img, op);
        let out = crate::detector::annotate::encode_jpeg(&turned, REENCODE_QUALITY).map_err(|e| bad(e.to_string()))?;
        Ok((out, Method::Reencoded))
    }
}

/// Turns an RGB image pixel by pixel.
pub fn turn(img: &Rgb8, op: TransformOp) -> Rgb8 {
    let m = matrix(op);
    let (w, h) = (img.width, img.height);
    let (dw, dh) = if m[0][0] == 0 { (h, w) } else { (w, h) };
    let mut pixels = vec![0u8; img.pixels.len()];
    // Destination coordinate from a source one: dst = m * src, negatives counted from the end.
    let coord = |row: [i8; 2], x: usize, y: usize, len: usize| -> usize {
        let v = if row[0] != 0 { (row[0], x) } else { (row[1], y) };
        if v.0 > 0 { v.1 } else { len - 1 - v.1 }
    };
    for y in 0..h {
        for x in 0..w {
            let dx = coord(m[0], x, y, dw);
            let dy = coord(m[1], x, y, dh);
            let s = (y * w + x) * 3;
            let d = (dy * dw + dx) * 3;
            pixels[d..d + 3].copy_from_slice(&img.pixels[s..s + 3]);
        }
    }
    Rgb8 { width: dw, height: dh, pixels }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2x3 image (w=2, h=3) with distinct pixels: value = 10*y + x.
    fn tiny() -> Rgb8 {
        let mut pixels = Vec::new();
        for y in 0..3u8 {
            for x in 0..2u8 {
                pixels.extend([10 * y + x; 3]);
            }
        }
        Rgb8 { width: 2, height: 3, pixels }
    }

    fn grid(img: &Rgb8) -> Vec<Vec<u8>> {
        (0..img.height).map(|y| (0..img.width).map(|x| img.pixels[(y * img.width + x) * 3]).collect()).collect()
    }

    #[test]
    fn rotations_are_clockwise_and_flips_come_after() {
        let o = |rotation, h, v| Orientation { rotation, flip_horizontal: h, flip_vertical: v };
        // Source:     Rot90 (clockwise):
        //  0  1       20 10  0
        // 10 11       21 11  1
        // 20 21
        assert_eq!(grid(&turn(&tiny(), o(90, false, false).op())), vec![vec![20, 10, 0], vec![21, 11, 1]]);
        assert_eq!(grid(&turn(&tiny(), o(270, false, false).op())), vec![vec![1, 11, 21], vec![0, 10, 20]]);
        assert_eq!(
            grid(&turn(&tiny(), o(180, false, false).op())),
            vec![vec![21, 20], vec![11, 10], vec![1, 0]]
        );
        assert_eq!(grid(&turn(&tiny(), o(0, true, false).op())), vec![vec![1, 0], vec![11, 10], vec![21, 20]]);
        assert_eq!(grid(&turn(&tiny(), o(0, false, true).op())), vec![vec![20, 21], vec![10, 11], vec![0, 1]]);
        // Rotate 90 clockwise, then mirror left-right: the transpose.
        assert_eq!(o(90, true, false).op(), TransformOp::Transpose);
        assert_eq!(grid(&turn(&tiny(), o(90, true, false).op())), vec![vec![0, 10, 20], vec![1, 11, 21]]);
        // Both flips are a half turn; a half turn and both flips is nothing.
        assert_eq!(o(0, true, true).op(), TransformOp::Rot180);
        assert_eq!(o(180, true, true).op(), TransformOp::None);
        assert_eq!(o(270, true, false).op(), TransformOp::Transverse);
    }

    #[test]
    fn odd_rotations_are_refused_with_the_fix() {
        let e = Orientation { rotation: 45, ..Default::default() }.validate().unwrap_err();
        assert!(e.contains("rotation") && e.contains("0, 90, 180 or 270"), "{e}");
    }
}
