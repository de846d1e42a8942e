//! `printvigil bench --printers N`: a print farm on one host, measured.
//!
//! N simulated printers print at once, each with a file camera replaying camera-sized
//! frames, all watched by the real supervisor, watches and inference scheduler with the
//! given model. Printer 0 (when N >= 2) is the *warned* printer: its smoothing state is
//! set so that every frame it sends warns (a print suspected failing), so each of its
//! frames is submitted as urgent. The figures:
//!
//! - scored frames per second, and the time per frame;
//! - each printer's interval between scored frames (p50, p99), summarised over printers;
//! - Jain's fairness index over the scored-frame counts of the printers that did not warn
//!   (1 = all the same; goal >= 0.99);
//! - frame age at inference (grab to the start of inference), p99;
//! - the warned printer's time from a warning to its next scored frame (p50, p99): under
//!   saturation it stays near one cadence while the others stretch;
//! - resident memory (peak sampled during the run, and `VmHWM`) against the goal
//!   `300 MiB + 2 MiB x N`.
//!
//! The figures cover the window from the moment every printer has had its first frame
//! scored (the start, when all printers ask at once, is left out) to the end. Under
//! saturation a run needs about ten rounds of the printers in that window for the counts
//! (and Jain's index) to mean something: `--duration` accordingly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::camera::files::FilesCamera;
use crate::config::Config;
use crate::detector::Detector;
use crate::detector::smoothing::{SmoothingState, frame_p};
use crate::printer::sim::SimPrinter;
use crate::watch::state::{PrinterRecord, StateStore, state_file};
use crate::watch::supervisor::{Parts, supervise};
use crate::watch::{Action, CameraChoice, WatchEvent, WatchSpec};

#[derive(Debug, thiserror::Error)]
pub enum FarmError {
    #[error("cannot prepare the bench folder {path}: {source}")]
    Folder { path: String, source: std::io::Error },
    #[error("the test frame could not be scored: {0}")]
    Detect(#[from] crate::detector::DetectError),
    #[error(transparent)]
    Run(#[from] crate::watch::supervisor::RunError),
    #[error(transparent)]
    State(#[from] crate::watch::state::StateError),
    #[error("the bench needs at least one printer and one detector session")]
    Empty,
}

/// What to run.
pub struct FarmOptions {
    pub printers: usize,
    pub cadence: Duration,
    /// How long the printers print.
    pub duration: Duration,
    /// Camera frames (JPEG), replayed by every camera in turn.
    pub frames: Vec<Vec<u8>>,
    /// A folder for the frames and the state (emptied).
    pub dir: PathBuf,
}

/// One printer's figures.
#[derive(Debug, Clone, Default)]
pub struct PrinterFigures {
    pub name: String,
    pub warned: bool,
    pub scored: usize,
    pub interval_p50: Duration,
    pub interval_p99: Duration,
}

/// The run's figures.
#[derive(Debug, Clone, Default)]
pub struct FarmReport {
    pub printers: usize,
    pub sessions: usize,
    pub threads: usize,
    pub cadence: Duration,
    /// The measured window (after the first frames).
    pub window: Duration,
    pub scored: usize,
    pub per_frame_p50: Duration,
    pub each: Vec<PrinterFigures>,
    pub jain: f64,
    pub age_p50: Duration,
    pub age_p99: Duration,
    /// Warning to the warned printer's next scored frame.
    pub warn_to_next: Option<(Duration, Duration)>,
    /// The scheduler's load and stretch at the end.
    pub load: f64,
    pub stretch: f64,
    pub rss_before_mib: f64,
    pub rss_peak_mib: f64,
    pub hwm_mib: f64,
}

/// Jain's fairness index of `x`: `(sum x)^2 / (n * sum x^2)`, 1 when all are equal.
pub fn jain(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().sum();
    let squares: f64 = x.iter().map(|v| v * v).sum();
    if squares == 0.0 { 1.0 } else { sum * sum / (x.len() as f64 * squares) }
}

/// The `q` quantile (0..=1) of `v`, nearest rank.
pub fn quantile(v: &[Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let mut s = v.to_vec();
    s.sort();
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// Memory goal: one model, and a little per printer.
pub fn rss_goal_mib(printers: usize) -> f64 {
    300.0 + 2.0 * printers as f64
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    decided: Instant,
    age: Duration,
    infer: Duration,
    warn: bool,
}

/// Runs the farm; `detectors` are the sessions (loaded by the caller, so that the memory
/// before the run includes them).
pub async fn run(opts: FarmOptions, mut detectors: Vec<Detector>, threads: usize) -> Result<FarmReport, FarmError> {
    if opts.printers == 0 || detectors.is_empty() || opts.frames.is_empty() {
        return Err(FarmError::Empty);
    }
    let err = |source| FarmError::Folder { path: opts.dir.display().to_string(), source };
    let _ = std::fs::remove_dir_all(&opts.dir);
    let cam_dir = opts.dir.join("camera");
    std::fs::create_dir_all(&cam_dir).map_err(err)?;
    let mut files = Vec::new();
    for (i, f) in opts.frames.iter().enumerate() {
        let path = cam_dir.join(format!("{i:04}.jpg"));
        std::fs::write(&path, f).map_err(err)?;
        files.push(path);
    }
    // The warned printer warns on every frame: its state says the print has been going
    // for a while and p is now one above its long-run mean (a warning, not a pause).
    let p = {
        let d = &mut detectors[0];
        let mut sum = 0.0;
        for f in &opts.frames {
            sum += frame_p(&d.detect(f)?.detections, 1.0);
        }
        sum / opts.frames.len() as f64
    };
    let state_dir = opts.dir.join("state");
    let store = Arc::new(StateStore::open(&state_file(&state_dir))?);
    let mut config = Config { state_dir: state_dir.clone(), ..Config::default() };
    config.watch.cadence_secs = opts.cadence.as_secs_f64();
    config.watch.allow_fast_cadence = true;
    config.watch.action_on_failure = Action::Notify;
    config.watch.frames_max_mib = 16;

    let frames_needed = (opts.duration.as_secs_f64() / opts.cadence.as_secs_f64()).ceil() as usize + 16;
    let mut specs = Vec::new();
    let mut sims = Vec::new();
    for i in 0..opts.printers {
        let name = format!("printer-{i:02}");
        let sim = SimPrinter::new(&name);
        let job = sim.start_print("farm-bench.gcode");
        if i == 0 && opts.printers >= 2 {
            let record = PrinterRecord {
                job: Some(job.0.clone()),
                file: Some("farm-bench.gcode".into()),
                smoothing: SmoothingState {
                    current_frame_num: 100,
                    lifetime_frame_num: 7200,
                    current_p: p,
                    ewm_mean: p,
                    rolling_mean_short: p,
                    rolling_mean_long: p - 1.05,
                },
                ..Default::default()
            };
            store.save(&name, &record)?;
        }
        // Each camera starts at another frame of the list, and goes round it.
        let list: Vec<PathBuf> = (0..frames_needed).map(|k| files[(i + k) % files.len()].clone()).collect();
        specs.push(WatchSpec {
            name: name.clone(),
            mirror_key: name,
            link: sim.clone(),
            camera: CameraChoice::Ready(Box::new(FilesCamera::from_list("bench frames", list))),
            action: Action::Notify,
        });
        sims.push(sim);
    }
    let sessions = detectors.len();
    let before = super::Memory::now();
    let (tx, mut events) = broadcast::channel(1 << 16);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let scheduler = crate::watch::frame_scheduler(detectors, config.watch.cadence());
    let parts = Parts { scheduler, mirror: None, store, board: crate::watch::view::Board::new() };
    let cfg = config.clone();
    let supervisor = tokio::spawn(async move {
        supervise(&cfg, specs, parts, tx, async {
            let _ = stop_rx.await;
        })
        .await
    });

    let started = Instant::now();
    let end = tokio::time::Instant::now() + opts.duration;
    let mut seen: HashMap<String, Vec<Seen>> = HashMap::new();
    let mut rss_peak = before.rss_mib;
    let mut sample = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => break,
            _ = sample.tick() => rss_peak = rss_peak.max(super::Memory::now().rss_mib),
            ev = events.recv() => match ev {
                Ok(WatchEvent::Scored { printer, warn, timing, .. }) => {
                    seen.entry(printer).or_default().push(Seen { decided: timing.decided(), age: timing.age, infer: timing.infer, warn });
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    let _ = stop_tx.send(());
    if let Ok(Err(e)) = supervisor.await {
        return Err(e.into());
    }
    drop(sims);
    let hwm = super::Memory::now().peak_rss_mib;
    let mut report = summarise(&seen, opts.printers, started.elapsed());
    // The load the run put on the detector: printers x time per frame over cadence x sessions.
    report.load = crate::schedule::expected_load(opts.printers, report.per_frame_p50, opts.cadence, sessions);
    report.stretch = report.load.max(1.0);
    report.sessions = sessions;
    report.threads = threads;
    report.cadence = opts.cadence;
    report.rss_before_mib = before.rss_mib;
    report.rss_peak_mib = rss_peak;
    report.hwm_mib = hwm;
    Ok(report)
}

fn summarise(seen: &HashMap<String, Vec<Seen>>, printers: usize, total: Duration) -> FarmReport {
    let mut names: Vec<&String> = seen.keys().collect();
    names.sort();
    let warned_name = (printers >= 2).then(|| "printer-00".to_string());
    // The window: from the moment every printer had its first frame scored, to the end.
    let from = if names.len() == printers { names.iter().filter_map(|n| seen[*n].first().map(|s| s.decided)).max() } else { None };
    let to = names.iter().filter_map(|n| seen[*n].last().map(|s| s.decided)).max();
    let window = match (from, to) {
        (Some(a), Some(b)) if b > a => b - a,
        _ => total,
    };
    let mut each = Vec::new();
    let mut ages = Vec::new();
    let mut infers = Vec::new();
    let mut scored = 0;
    let mut warn_to_next = Vec::new();
    let mut counts = Vec::new();
    for n in &names {
        let v = &seen[*n];
        // Frames after the window opened (the one that opened it excluded).
        let counted: Vec<&Seen> = v.iter().filter(|s| from.is_some_and(|f| s.decided > f)).collect();
        let in_window = counted.len();
        let intervals: Vec<Duration> = counted.windows(2).map(|w| w[1].decided - w[0].decided).collect();
        let warned = warned_name.as_ref() == Some(*n);
        if warned {
            warn_to_next.extend(counted.windows(2).filter(|w| w[0].warn).map(|w| w[1].decided - w[0].decided));
        } else {
            ages.extend(counted.iter().map(|s| s.age));
            counts.push(in_window as f64);
        }
        infers.extend(counted.iter().map(|s| s.infer));
        scored += in_window;
        each.push(PrinterFigures {
            name: (*n).clone(),
            warned,
            scored: in_window,
            interval_p50: quantile(&intervals, 0.5),
            interval_p99: quantile(&intervals, 0.99),
        });
    }
    // Printers that never scored a frame count as zero.
    counts.resize(printers.saturating_sub(warned_name.is_some() as usize).max(counts.len()), 0.0);
    FarmReport {
        printers,
        window,
        scored,
        per_frame_p50: quantile(&infers, 0.5),
        jain: jain(&counts),
        age_p50: quantile(&ages, 0.5),
        age_p99: quantile(&ages, 0.99),
        warn_to_next: (!warn_to_next.is_empty()).then(|| (quantile(&warn_to_next, 0.5), quantile(&warn_to_next, 0.99))),
        each,
        ..Default::default()
    }
}

impl FarmReport {
    /// Scored frames per second over the window.
    pub fn rate(&self) -> f64 {
        let w = self.window.as_secs_f64();
        if w > 0.0 { self.scored as f64 / w } else { 0.0 }
    }

    fn healthy(&self) -> impl Iterator<Item = &PrinterFigures> {
        self.each.iter().filter(|p| !p.warned)
    }

    /// (median over printers of the p50 interval, largest p99 interval), printers that
    /// did not warn.
    pub fn intervals(&self) -> (Duration, Duration) {
        let p50: Vec<Duration> = self.healthy().map(|p| p.interval_p50).collect();
        (quantile(&p50, 0.5), self.healthy().map(|p| p.interval_p99).max().unwrap_or_default())
    }

    /// The report as text; `per_printer` adds one line per printer.
    pub fn render(&self, per_printer: bool) -> String {
        let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        let (p50, p99) = self.intervals();
        let mut out = format!(
            "farm: {} printer(s), cadence {}, {} session(s) x {} thread(s), {} measured\n",
            self.printers,
            s(self.cadence),
            self.sessions,
            self.threads,
            s(self.window)
        );
        let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<42}{v}\n"));
        line("scored frames / s", format!("{:.2} ({} frames)", self.rate(), self.scored));
        line("time per frame (median)", ms(self.per_frame_p50));
        line("load / stretch", format!("{:.2} / {:.2}", self.load, self.stretch));
        line("interval p50 / p99 (printers)", format!("{} / {}", s(p50), s(p99)));
        line("Jain's fairness index", format!("{:.4} (goal >= 0.99)", self.jain));
        line("frame age at inference p50 / p99", format!("{} / {} (goal <= {} unsaturated)", ms(self.age_p50), ms(self.age_p99), s(self.cadence)));
        match self.warn_to_next {
            Some((a, b)) => line("warned printer: warn -> next p50 / p99", format!("{} / {}", s(a), s(b))),
            None => line("warned printer", "none (one printer)".into()),
        }
        line(
            "RSS before / peak / VmHWM",
            format!(
                "{:.0} / {:.0} / {:.0} MiB (goal <= {:.0} MiB)",
                self.rss_before_mib,
                self.rss_peak_mib,
                self.hwm_mib,
                rss_goal_mib(self.printers)
            ),
        );
        if per_printer {
            for p in &self.each {
                out.push_str(&format!(
                    "  {:<12} {:>5} frames, interval p50 {} p99 {}{}\n",
                    p.name,
                    p.scored,
                    s(p.interval_p50),
                    s(p.interval_p99),
                    if p.warned { " (warned)" } else { "" }
                ));
            }
        }
        // One line for tables.
        let (w50, w99) = self.warn_to_next.unwrap_or_default();
        out.push_str(&format!(
            "BENCH farm printers={} cadence_s={:.2} sessions={} threads={} frames_per_s={:.3} frame_ms={:.0} load={:.2} interval_p50_s={:.2} interval_p99_s={:.2} jain={:.4} age_p99_ms={:.0} warn_next_p50_s={:.2} warn_next_p99_s={:.2} rss_peak_mib={:.0} hwm_mib={:.0}\n",
            self.printers,
            self.cadence.as_secs_f64(),
            self.sessions,
            self.threads,
            self.rate(),
            self.per_frame_p50.as_secs_f64() * 1000.0,
            self.load,
            p50.as_secs_f64(),
            p99.as_secs_f64(),
            self.jain,
            self.age_p99.as_secs_f64() * 1000.0,
            w50.as_secs_f64(),
            w99.as_secs_f64(),
            self.rss_peak_mib,
            self.hwm_mib
        ));
        out
    }
}

/// The bench's folder under the system's temporary directory.
pub fn default_dir() -> PathBuf {
    std::env::temp_dir().join(format!("printvigil-farm-bench-{}", std::process::id()))
}

/// Removes the bench's folder (best effort).
pub fn clean(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_and_quantiles() {
        assert_eq!(jain(&[3.0, 3.0, 3.0]), 1.0);
        assert!((jain(&[1.0, 0.0]) - 0.5).abs() < 1e-12);
        let ms = Duration::from_millis;
        let v: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(quantile(&v, 0.5), ms(50));
        assert_eq!(quantile(&v, 0.99), ms(99));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
        assert_eq!(rss_goal_mib(32), 364.0);
    }
}
