//! Draws detections on a frame, as the server draws them (confidence above
//! `VISUALIZATION_THRESH`), and encodes the result as a JPEG.

use super::postprocess::Detection;
use super::preprocess::Rgb8;
use super::smoothing::VISUALIZATION_THRESH;

#[derive(Debug, thiserror::Error)]
#[error("could not encode the annotated JPEG: {0}")]
pub struct EncodeError(String);

/// Draws a box outline for each detection above the visualisation threshold; the stronger
/// the confidence, the thicker the line.
pub fn draw(img: &mut Rgb8, detections: &[Detection]) -> usize {
    let mut drawn = 0;
    for d in detections.iter().filter(|d| d.confidence > VISUALIZATION_THRESH) {
        let [xc, yc, w, h] = d.bbox;
        let clampx = |v: f64| (v.round().max(0.0) as usize).min(img.width.saturating_sub(1));
        let clampy = |v: f64| (v.round().max(0.0) as usize).min(img.height.saturating_sub(1));
        let (x0, x1) = (clampx(xc - w / 2.0), clampx(xc + w / 2.0));
        let (y0, y1) = (clampy(yc - h / 2.0), clampy(yc + h / 2.0));
        let thick = if d.confidence > 0.5 { 3 } else { 2 };
        let color = [255u8, 40, 40];
        let mut put = |x: usize, y: usize| {
            let i = (y * img.width + x) * 3;
            img.pixels[i..i + 3].copy_from_slice(&color);
        };
        for t in 0..thick {
            for x in x0..=x1 {
                put(x, (y0 + t).min(y1));
                put(x, y1.saturating_sub(t).max(y0));
            }
            for y in y0..=y1 {
                put((x0 + t).min(x1), y);
                put(x1.saturating_sub(t).max(x0), y);
            }
        }
        drawn += 1;
    }
    drawn
}

/// Encodes an RGB image as a JPEG of the given quality (1-100).
pub fn encode_jpeg(img: &Rgb8, quality: i32) -> Result<Vec<u8>, EncodeError> {
    let image = turbojpeg::Image {
        pixels: img.pixels.as_slice(),
        width: img.width,
        pitch: img.width * 3,
        height: img.height,
        format: turbojpeg::PixelFormat::RGB,
    };
    let mut c = turbojpeg::Compressor::new().map_err(|e| EncodeError(e.to_string()))?;
    c.set_quality(quality.clamp(1, 100)).map_err(|e| EncodeError(e.to_string()))?;
    c.set_subsamp(turbojpeg::Subsamp::Sub2x2).map_err(|e| EncodeError(e.to_string()))?;
    c.compress_to_vec(image).map_err(|e| EncodeError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_only_boxes_above_the_threshold_and_round_trips() {
        let mut img = Rgb8 { width: 64, height: 48, pixels: vec![0; 64 * 48 * 3] };
        let dets = [
            Detection { confidence: 0.9, bbox: [32.0, 24.0, 20.0, 10.0] },
            Detection { confidence: 0.15, bbox: [10.0, 10.0, 4.0, 4.0] },
            Detection { confidence: 0.6, bbox: [-50.0, 500.0, 30.0, 30.0] }, // off-frame: clamped
        ];
        assert_eq!(draw(&mut img, &dets), 2);
        let px = |x: usize, y: usize| img.pixels[(y * 64 + x) * 3];
        assert_eq!(px(22, 19), 255, "top-left corner of the strong box");
        assert_eq!(px(10, 10), 0, "weak box not drawn");
        let jpeg = encode_jpeg(&img, 85).unwrap();
        let back = crate::detector::preprocess::decode_jpeg(&jpeg).unwrap();
        assert_eq!((back.width, back.height), (64, 48));
    }
}
