//! Upload policy (which scored frames go to the server) and shrink-to-fit re-encoding.

use std::time::{Duration, Instant};

use crate::server::config::{ServerConfig, UploadMode};

/// The largest frame sent to the server.
pub const MAX_W: usize = 1280;
pub const MAX_H: usize = 960;

/// What the local detector said about a frame.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FrameScore {
    /// Raw per-frame score (sum of detection confidences).
    pub p: f64,
    /// Smoothed score (e.g. `ewm_mean` or `normalized_p`).
    pub smoothed: f64,
    pub warn: bool,
    pub pause: bool,
}

/// Decides, frame by frame, whether to upload (one per printer).
#[derive(Debug, Clone)]
pub struct UploadGate {
    mode: UploadMode,
    threshold: f64,
    every: Option<Duration>,
    min_interval: Duration,
    last: Option<Instant>,
}

impl UploadGate {
    pub fn new(cfg: &ServerConfig) -> Self {
        Self {
            mode: cfg.upload,
            threshold: cfg.upload_threshold,
            every: (cfg.upload_every_minutes > 0)
                .then(|| Duration::from_secs(cfg.upload_every_minutes.saturating_mul(60))),
            min_interval: Duration::from_secs_f64(cfg.upload_min_interval_secs),
            last: None,
        }
    }

    /// True when this frame should be uploaded; records the upload time when it is.
    pub fn decide(&mut self, s: &FrameScore, now: Instant) -> bool {
        let since = self.last.map(|l| now.saturating_duration_since(l));
        let rate_ok = since.is_none_or(|d| d >= self.min_interval);
        let want = match self.mode {
            UploadMode::Never => false,
            UploadMode::Always => true,
            UploadMode::Suspicious => {
                let crossed = (s.p.is_finite() && s.p >= self.threshold)
                    || (s.smoothed.is_finite() && s.smoothed >= self.threshold);
                let periodic = self.every.is_some_and(|e| since.is_none_or(|d| d >= e));
                // Warn/pause frames are the evidence: they pass the rate limit.
                s.warn || s.pause || crossed && rate_ok || periodic
            }
        };
        let go = want && (rate_ok || s.warn || s.pause);
        if go {
            self.last = Some(now);
        }
        go
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Decode(#[from] crate::detector::preprocess::FrameError),
    #[error(transparent)]
    Encode(#[from] crate::detector::annotate::EncodeError),
}

/// Returns the JPEG unchanged when it fits 1280x960, else shrinks it to fit (area
/// averaging, aspect kept) and re-encodes at `quality`.
pub fn shrink_to_fit(jpeg: &[u8], quality: u8) -> Result<Vec<u8>, FrameError> {
    use crate::detector::{annotate, preprocess};
    // The frame guard first: a frame that claims a huge size is refused before decoding.
    let info = crate::frameguard::check(jpeg).map_err(preprocess::FrameError::from)?;
    let (w, h) = (info.width, info.height);
    if w <= MAX_W && h <= MAX_H {
        return Ok(jpeg.to_vec());
    }
    let frame = preprocess::decode_jpeg(jpeg)?;
    let scale = (MAX_W as f64 / w as f64).min(MAX_H as f64 / h as f64);
    let nw = ((w as f64 * scale).round() as usize).clamp(1, MAX_W);
    let nh = ((h as f64 * scale).round() as usize).clamp(1, MAX_H);
    let pixels = area_resize(&frame.pixels, w, h, 3, nw, nh);
    let small = preprocess::Rgb8 { width: nw, height: nh, pixels };
    Ok(annotate::encode_jpeg(&small, quality as i32)?)
}

/// Box-filter (area) resize for downscaling, like OpenCV's INTER_AREA for integer-ish ratios.
pub fn area_resize(src: &[u8], w: usize, h: usize, c: usize, nw: usize, nh: usize) -> Vec<u8> {
    let mut out = vec![0u8; nw * nh * c];
    for y in 0..nh {
        let y0 = y * h / nh;
        let y1 = ((y + 1) * h / nh).max(y0 + 1).min(h);
        for x in 0..nw {
            let x0 = x * w / nw;
            let x1 = ((x + 1) * w / nw).max(x0 + 1).min(w);
            let n = ((y1 - y0) * (x1 - x0)) as u32;
            for ch in 0..c {
                let mut sum = 0u32;
                for yy in y0..y1 {
                    let row = yy * w * c;
                    for xx in x0..x1 {
                        sum += src[row + xx * c + ch] as u32;
                    }
                }
                out[(y * nw + x) * c + ch] = ((sum + n / 2) / n) as u8;
            }
        }
    }
    out
}

/// A small solid-colour JPEG (tests and the simulator).
pub fn solid_jpeg(w: u16, h: u16, rgb: [u8; 3]) -> Vec<u8> {
    let pixels: Vec<u8> = (0..w as usize * h as usize).flat_map(|_| rgb).collect();
    let img = crate::detector::preprocess::Rgb8 { width: w as usize, height: h as usize, pixels };
    crate::detector::annotate::encode_jpeg(&img, 85).expect("encoding an in-memory frame")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(jpeg: &[u8]) -> (usize, usize) {
        crate::detector::preprocess::jpeg_dimensions(jpeg).unwrap()
    }

    #[test]
    fn shrinks_big_frames_keeps_small_ones() {
        let small = solid_jpeg(640, 480, [10, 200, 30]);
        assert_eq!(shrink_to_fit(&small, 80).unwrap(), small);
        let big = solid_jpeg(1920, 1080, [10, 200, 30]);
        let out = shrink_to_fit(&big, 70).unwrap();
        assert_eq!(dims(&out), (1280, 720));
        let tall = solid_jpeg(1000, 2000, [1, 2, 3]);
        assert_eq!(dims(&shrink_to_fit(&tall, 70).unwrap()), (480, 960));
        assert!(shrink_to_fit(b"not a jpeg", 80).is_err());
    }

    #[test]
    fn area_resize_averages() {
        let src = [0u8, 100, 200, 100];
        assert_eq!(area_resize(&src, 2, 2, 1, 1, 1), vec![100]);
    }

    fn gate(mode: UploadMode) -> UploadGate {
        UploadGate::new(&ServerConfig {
            upload: mode,
            upload_threshold: 0.4,
            upload_every_minutes: 5,
            upload_min_interval_secs: 10.0,
            ..Default::default()
        })
    }

    #[test]
    fn policies() {
        let t0 = Instant::now();
        let low = FrameScore {
            p: 0.1,
            smoothed: 0.1,
            ..Default::default()
        };
        let high = FrameScore {
            p: 0.6,
            smoothed: 0.2,
            ..Default::default()
        };
        let mut never = gate(UploadMode::Never);
        assert!(!never.decide(&high, t0));
        let mut always = gate(UploadMode::Always);
        assert!(always.decide(&low, t0));
        assert!(
            !always.decide(&low, t0 + Duration::from_secs(3)),
            "rate limited to the 10 s cadence"
        );
        assert!(always.decide(&low, t0 + Duration::from_secs(10)));
        let mut s = gate(UploadMode::Suspicious);
        assert!(s.decide(&low, t0), "first frame: periodic one");
        assert!(!s.decide(&low, t0 + Duration::from_secs(60)));
        assert!(
            s.decide(&high, t0 + Duration::from_secs(70)),
            "crossed threshold"
        );
        assert!(!s.decide(&high, t0 + Duration::from_secs(71)), "rate limit");
        assert!(
            s.decide(
                &FrameScore { warn: true, ..low },
                t0 + Duration::from_secs(72)
            ),
            "warn passes"
        );
        assert!(
            s.decide(&low, t0 + Duration::from_secs(72 + 300)),
            "one every 5 minutes"
        );
        let smooth = FrameScore {
            p: 0.0,
            smoothed: 0.5,
            ..Default::default()
        };
        assert!(s.decide(&smooth, t0 + Duration::from_secs(72 + 320)));
    }
}
