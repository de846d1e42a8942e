//! The watch: one loop per printer ([`watcher`]), started and kept by one supervisor
//! ([`supervisor`]).
//!
//! A watch loop knows no firmware and no camera kind: it sees a [`PrinterLink`] and a
//! [`Camera`]. While the printer prints it takes a frame at the cadence, runs the detector,
//! smooths, decides, and on a pause decision acts per [`Action`] (at most once per print,
//! not within the cooldown after a user resumes). Every sink is best effort: a failing
//! server, disk or camera never stops detection or the pause.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::camera::{Camera, CameraConfig};
use crate::config::{ConfigError, invalid};
use crate::printer::{JobOutcome, PrinterLink};

pub mod check;
pub mod control;
pub mod frames;
pub mod state;
pub mod supervisor;
pub mod view;
pub mod watcher;

/// What to do when the detector decides a print is failing (defined with the printer links,
/// whose per-printer settings name it too).
pub use crate::printer::Action;

/// The `[watch]` settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Seconds between scored frames while printing. Obico's thresholds assume 10.
    pub cadence_secs: f64,
    /// Allow a cadence under 10 s. The thresholds keep their values, so warnings and pauses
    /// come after fewer seconds of failure (for demos and tests, not for real prints).
    pub allow_fast_cadence: bool,
    /// What to do on a pause decision: `pause`, `cancel` or `notify`.
    pub action_on_failure: Action,
    /// After a person resumes a print, and between two warnings, no automatic action for
    /// this long (the Obico server's alert cooldown is 90 s).
    pub cooldown_secs: f64,
    /// Disk budget, per printer, for the annotated frames of decisions (MiB).
    pub frames_max_mib: u64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            cadence_secs: crate::detector::smoothing::CADENCE_SECS as f64,
            allow_fast_cadence: false,
            action_on_failure: Action::Pause,
            cooldown_secs: 90.0,
            frames_max_mib: 100,
        }
    }
}

impl WatchConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = self.cadence_secs;
        if !(c.is_finite() && c > 0.0 && c <= 3600.0) {
            return Err(invalid("watch.cadence_secs", &c.to_string(), "use seconds between frames, 10 (Obico's) or more"));
        }
        if c < crate::detector::smoothing::CADENCE_SECS as f64 && !self.allow_fast_cadence {
            return Err(invalid(
                "watch.cadence_secs",
                &c.to_string(),
                "Obico's thresholds assume one frame every 10 s; a faster cadence makes warnings and pauses come sooner. Use 10 or more, or set watch.allow_fast_cadence = true if that is what you want",
            ));
        }
        let cd = self.cooldown_secs;
        if !(cd.is_finite() && (0.0..=86400.0).contains(&cd)) {
            return Err(invalid("watch.cooldown_secs", &cd.to_string(), "use seconds, e.g. 90 (the Obico server's)"));
        }
        if self.frames_max_mib == 0 || self.frames_max_mib > 1 << 20 {
            return Err(invalid(
                "watch.frames_max_mib",
                &self.frames_max_mib.to_string(),
                "use a disk budget in MiB for saved decision frames, e.g. 100",
            ));
        }
        Ok(())
    }

    pub fn cadence(&self) -> Duration {
        Duration::from_secs_f64(self.cadence_secs)
    }

    pub fn cooldown(&self) -> Duration {
        Duration::from_secs_f64(self.cooldown_secs)
    }
}

/// The scheduler every watch submits its frames to: JPEG in, detections out.
pub type FrameScheduler =
    crate::schedule::Scheduler<Arc<Vec<u8>>, Result<crate::detector::FrameDetections, crate::detector::DetectError>>;

/// Builds the scheduler over detector sessions, one worker each.
pub fn frame_scheduler(detectors: Vec<crate::detector::Detector>, cadence: Duration) -> Arc<FrameScheduler> {
    let scorers = detectors
        .into_iter()
        .map(|mut d| {
            Box::new(move |jpeg: &Arc<Vec<u8>>| d.detect(jpeg)) as crate::schedule::ScoreFn<Arc<Vec<u8>>, _>
        })
        .collect();
    crate::schedule::Scheduler::new(scorers, cadence)
}

/// Where a frame's time went, from the camera to the decision.
#[derive(Debug, Clone, Copy)]
pub struct FrameTiming {
    /// When the camera's frame arrived.
    pub grabbed: Instant,
    /// From the grab to the start of inference: the frame's age when scored (its wait in
    /// the scheduler's queue, mostly).
    pub age: Duration,
    /// Inference: decode, resize, the model, post-processing.
    pub infer: Duration,
    /// From the grab to the decision (end to end).
    pub latency: Duration,
    /// The frame was submitted as urgent (the printer had just warned).
    pub urgent: bool,
}

impl FrameTiming {
    /// When the decision was made.
    pub fn decided(&self) -> Instant {
        self.grabbed + self.latency
    }
}

/// A scored frame as the camera gave it, and its detections.
#[derive(Debug)]
pub struct ScoredFrame {
    pub jpeg: Arc<Vec<u8>>,
    pub detections: Vec<crate::detector::postprocess::Detection>,
}

/// Where a watch gets its frames.
pub enum CameraChoice {
    /// A camera from the settings file.
    Config(CameraConfig),
    /// A camera built by the caller.
    Ready(Box<dyn Camera>),
    /// The first usable camera the printer link reports (re-read when it changes).
    Discover,
}

/// One printer to watch.
pub struct WatchSpec {
    /// The printer's name (logs, status line, saved frames).
    pub name: String,
    /// The printer's key in the server mirror.
    pub mirror_key: String,
    pub link: Arc<dyn PrinterLink>,
    pub camera: CameraChoice,
    pub action: Action,
}

/// What a watch did, for the demo's summary, the tests and the benchmarks.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    /// A print is being watched. `continued`: the same print as before a restart or a
    /// reconnect, its smoothing state kept.
    PrintStarted { printer: String, job: String, file: String, continued: bool },
    /// A frame was scored.
    Scored {
        printer: String,
        frame_num: u64,
        p: f64,
        ewm: f64,
        normalized_p: f64,
        warn: bool,
        pause: bool,
        timing: FrameTiming,
        /// The frame and what the detector found in it (for a live view; shared, not copied).
        frame: Arc<ScoredFrame>,
    },
    /// A warning (failure suspected, not yet certain).
    Warned { printer: String, p: f64, frame: Option<PathBuf> },
    /// A pause decision: the action is being carried out. `decided` is when the verdict
    /// was computed, `requested` when the printer link was asked.
    Acting { printer: String, action: Action, decided: Instant, requested: Instant },
    /// The action's outcome (`Err` holds the printer's error, already logged).
    Acted { printer: String, action: Action, result: Result<(), String>, decided: Instant, done: Instant },
    /// The annotated frame of a pause decision was saved.
    FrameSaved { printer: String, path: PathBuf },
    /// The print ended.
    PrintFinished { printer: String, job: String, outcome: JobOutcome },
    /// The camera gave no frame (the message says why and what to do).
    CameraFailed { printer: String, message: String },
    /// The camera gives frames again.
    CameraBack { printer: String },
    /// A frame could not be had or scored (`stage`: `camera` or `detector`); the next one
    /// is tried at the cadence.
    FrameFailed { printer: String, stage: &'static str },
}
