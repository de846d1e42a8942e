//! `printvigil bench`: runs frames through the whole detection pipeline and prints per-stage
//! figures (median, min, max), the ratio total / `session.run`, and the process's memory.
//! `--compare` times printvigil's session against a plain ONNX Runtime session of the same
//! model, frame by frame, in one process. `--printers N` ([`farm`]) runs N simulated
//! printers through the real watches and the inference scheduler.

pub mod farm;

use std::time::Duration;

use crate::detector::{DetectError, Detector, Prepared, StageTimes};

/// Per-stage statistics over a benchmark run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub frames: usize,
    pub times: Vec<StageTimes>,
}

/// Resident memory figures of this process, from `/proc/self/status`, in MiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

impl Memory {
    pub fn now() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .map(|kib| kib / 1024.0)
                .unwrap_or(0.0)
        };
        Memory { rss_mib: field("VmRSS:"), peak_rss_mib: field("VmHWM:") }
    }
}

/// Runs `runs` passes over `frames` (after one warm-up frame).
pub fn run(detector: &mut Detector, frames: &[Vec<u8>], runs: usize) -> Result<BenchReport, DetectError> {
    if let Some(first) = frames.first() {
        detector.detect(first)?;
    }
    let mut times = Vec::with_capacity(frames.len() * runs);
    for _ in 0..runs {
        for f in frames {
            times.push(detector.detect(f)?.times);
        }
    }
    Ok(BenchReport { frames: frames.len(), times })
}

/// Runs the same passes pipelined: a second thread decodes and resizes the next frame
/// while the model scores the current one. Returns the report and the wall time per frame.
pub fn run_pipelined(
    detector: &mut Detector,
    frames: &[Vec<u8>],
    runs: usize,
) -> Result<(BenchReport, Duration), DetectError> {
    let size = detector.model().input_size();
    if let Some(first) = frames.first() {
        detector.detect(first)?;
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let start = std::time::Instant::now();
    let mut times = Vec::with_capacity(frames.len() * runs);
    std::thread::scope(|scope| -> Result<(), DetectError> {
        scope.spawn(move || {
            for _ in 0..runs {
                for f in frames {
                    if tx.send(crate::detector::prepare(f, size)).is_err() {
                        return;
                    }
                }
            }
        });
        for prepared in rx {
            times.push(detector.infer(&prepared?)?.times);
        }
        Ok(())
    })?;
    let per_frame = start.elapsed() / times.len().max(1) as u32;
    Ok((BenchReport { frames: frames.len(), times }, per_frame))
}

/// `session.run` times of two sessions over the same frames (`printvigil bench --compare`).
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    /// printvigil's session.
    pub ours: Vec<Duration>,
    /// The plain session (ONNX Runtime's defaults, from the `.onnx`).
    pub plain: Vec<Duration>,
}

/// Runs `runs` passes over `frames` through both detectors, alternating frame by frame and
/// which of the two goes first, so that both see the same load from the rest of the machine
/// and neither always finds the caches as the other left them. Frames are prepared once,
/// before timing.
pub fn compare(ours: &mut Detector, plain: &mut Detector, frames: &[Vec<u8>], runs: usize) -> Result<Comparison, DetectError> {
    let size = ours.model().input_size();
    let prepared: Vec<Prepared> =
        frames.iter().map(|f| crate::detector::prepare(f, size)).collect::<Result<_, _>>()?;
    if let Some(first) = prepared.first() {
        ours.infer(first)?;
        plain.infer(first)?;
    }
    let mut c = Comparison::default();
    for (i, p) in std::iter::repeat_n(&prepared, runs).flatten().enumerate() {
        if i % 2 == 0 {
            c.ours.push(ours.infer(p)?.times.infer);
            c.plain.push(plain.infer(p)?.times.infer);
        } else {
            c.plain.push(plain.infer(p)?.times.infer);
            c.ours.push(ours.infer(p)?.times.infer);
        }
    }
    Ok(c)
}

impl Comparison {
    /// Median printvigil / median plain.
    pub fn ratio(&self) -> f64 {
        let (ours, plain) = (stats(self.ours.clone()).0.as_secs_f64(), stats(self.plain.clone()).0.as_secs_f64());
        if plain > 0.0 { ours / plain } else { f64::NAN }
    }

    /// Median over frames of printvigil / plain on that frame.
    pub fn per_frame_ratio(&self) -> f64 {
        median_ratio(self.ours.iter().copied().zip(self.plain.iter().copied()))
    }

    /// The comparison as text.
    pub fn render(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut out = format!(
            "compare: session.run, frames alternating between the two sessions ({} each)\n{:<32} {:>10} {:>10} {:>10}\n",
            self.ours.len(),
            "session (ms)",
            "median",
            "min",
            "max"
        );
        for (name, v) in [("printvigil", &self.ours), ("plain ONNX Runtime (defaults)", &self.plain)] {
            let (med, min, max) = stats(v.clone());
            out += &format!("{name:<32} {:>10.3} {:>10.3} {:>10.3}\n", ms(med), ms(min), ms(max));
        }
        out += &format!("printvigil / plain (ratio of medians): {:.4}\n", self.ratio());
        out += &format!("per-frame printvigil / plain (median): {:.4}\n", self.per_frame_ratio());
        out
    }
}

/// The median of `num / den` over the pairs whose `den` is not zero; NaN when none is.
fn median_ratio(pairs: impl Iterator<Item = (Duration, Duration)>) -> f64 {
    let mut r: Vec<f64> =
        pairs.filter(|(_, d)| !d.is_zero()).map(|(n, d)| n.as_secs_f64() / d.as_secs_f64()).collect();
    if r.is_empty() {
        return f64::NAN;
    }
    r.sort_by(f64::total_cmp);
    r[r.len() / 2]
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    if v.is_empty() {
        return Default::default();
    }
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

impl BenchReport {
    /// (median, min, max) of one stage.
    pub fn stage(&self, pick: impl Fn(&StageTimes) -> Duration) -> (Duration, Duration, Duration) {
        stats(self.times.iter().map(pick).collect())
    }

    /// Median total / median `session.run`.
    pub fn ratio(&self) -> f64 {
        let total = self.stage(|t| t.total()).0.as_secs_f64();
        let run = self.stage(|t| t.infer).0.as_secs_f64();
        if run > 0.0 { total / run } else { f64::NAN }
    }

    /// Median over frames of that frame's total / its `session.run` (less sensitive to
    /// `session.run`'s own jitter than the ratio of medians).
    pub fn per_frame_ratio(&self) -> f64 {
        median_ratio(self.times.iter().map(|t| (t.total(), t.infer)))
    }

    /// The report as text.
    pub fn render(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut out = format!(
            "{} timed frames ({} distinct)\n{:<20} {:>10} {:>10} {:>10}\n",
            self.times.len(),
            self.frames,
            "stage (ms)",
            "median",
            "min",
            "max"
        );
        type Stage = fn(&StageTimes) -> Duration;
        let rows: [(&str, Stage); 5] = [
            ("decode", |t| t.decode),
            ("resize+normalise", |t| t.resize),
            ("session.run", |t| t.infer),
            ("post-process", |t| t.post),
            ("total", |t| t.total()),
        ];
        for (name, pick) in rows {
            let (med, min, max) = self.stage(pick);
            out += &format!("{name:<20} {:>10.3} {:>10.3} {:>10.3}\n", ms(med), ms(min), ms(max));
        }
        out += &format!("total / session.run (median): {:.4}\n", self.ratio());
        out += &format!("per-frame total / session.run (median): {:.4}\n", self.per_frame_ratio());
        out
    }
}

/// Synthetic camera-like JPEG frames for benchmarks when no frames are given: a lit bed,
/// a part, strands of filament and a little sensor noise, which makes JPEGs the size a
/// webcam sends (about 100-200 KB at 1280x720).
pub fn synthetic_frames(count: usize, width: usize, height: usize) -> Vec<Vec<u8>> {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..count)
        .map(|i| {
            let mut pixels = Vec::with_capacity(width * height * 3);
            let (cx, cy) = (width / 2 + i * 7, height * 2 / 3);
            for y in 0..height {
                for x in 0..width {
                    let noise = (next() % 7) as i32 - 3;
                    let light = 60 + (x * 50 / width) as i32 + (y * 40 / height) as i32;
                    let grid = if x % 64 == 0 || y % 64 == 0 { 12 } else { 0 };
                    let part = x.abs_diff(cx) < width / 10 && y < cy && y > cy - height / 4 - i * 4;
                    let strand = (((x as f64 / 9.0 + i as f64).sin() * 20.0 + (y as f64 / 5.0)) as usize).is_multiple_of(23)
                        && x.abs_diff(cx) < width / 5
                        && y.abs_diff(cy) < height / 6;
                    let rgb = if strand {
                        [200, 60, 190]
                    } else if part {
                        [150 + (y % 4) as i32 * 6, 45, 180]
                    } else {
                        [light + grid, light + grid, light + 8 + grid]
                    };
                    pixels.extend(rgb.map(|v| (v + noise).clamp(0, 255) as u8));
                }
            }
            let img = crate::detector::preprocess::Rgb8 { width, height, pixels };
            crate::detector::annotate::encode_jpeg(&img, 85).expect("encoding an in-memory frame")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(decode_ms: u64, infer_ms: u64) -> StageTimes {
        StageTimes {
            decode: Duration::from_millis(decode_ms),
            resize: Duration::ZERO,
            infer: Duration::from_millis(infer_ms),
            post: Duration::ZERO,
        }
    }

    #[test]
    fn ratios_of_medians_and_per_frame() {
        // Jitter in session.run: the ratio of medians mixes frames, the per-frame one does not.
        let r = BenchReport { frames: 3, times: vec![t(2, 100), t(2, 200), t(2, 300)] };
        assert!((r.ratio() - 202.0 / 200.0).abs() < 1e-12);
        assert!((r.per_frame_ratio() - 202.0 / 200.0).abs() < 1e-12);
        let r = BenchReport { frames: 3, times: vec![t(50, 100), t(2, 200), t(2, 300)] };
        assert!((r.ratio() - 202.0 / 200.0).abs() < 1e-12, "median total is 202, median run 200");
        assert!((r.per_frame_ratio() - 202.0 / 200.0).abs() < 1e-12, "per frame: 1.5, 1.01, 1.0067");
        assert!(BenchReport { frames: 0, times: vec![] }.per_frame_ratio().is_nan());
    }

    #[test]
    fn comparison_ratios() {
        let ms = Duration::from_millis;
        let c = Comparison { ours: vec![ms(110), ms(90), ms(200)], plain: vec![ms(100), ms(100), ms(100)] };
        assert!((c.ratio() - 1.1).abs() < 1e-12, "median 110 / median 100");
        assert!((c.per_frame_ratio() - 1.1).abs() < 1e-12, "per frame 1.1, 0.9, 2.0");
        let text = c.render();
        assert!(text.contains("printvigil / plain (ratio of medians): 1.1000"), "{text}");
        assert!(Comparison::default().ratio().is_nan());
    }
}
