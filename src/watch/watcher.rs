//! One printer's watch loop.
//!
//! Printer events drive the print's life (start, pause, resume, end); a timer drives the
//! frames while the printer prints. The loop never waits on a sink: the server mirror
//! queues, the printer action runs in its own task, saved frames are written off the loop.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, oneshot, watch};

use super::frames::{FrameStore, safe_name};
use super::control::{Command, CommandError, MAX_SNOOZE, Outcome};
use super::state::{PrinterRecord, StateStore};
use super::view::{Board, Decision, LastDecision, PrinterView, Registration, WatchPhase};
use super::{Action, CameraChoice, FrameScheduler, FrameTiming, WatchConfig, WatchEvent, WatchSpec};
use crate::camera::{self, Camera, CameraError};
use crate::detector::smoothing::{Verdict, frame_p};
use crate::detector::{DetectError, FrameDetections, annotate, preprocess};
use crate::schedule::{Client, Priority, Scored, Ticket, Unscored};
use crate::printer::{CameraInfo, JobOutcome, PrinterEvent, PrinterState};
use crate::server::{FinishStatus, Mirror, upload::FrameScore};

/// Links report absolute camera URLs; a relative one is taken as on this host.
const LINK_BASE: &str = "http://127.0.0.1/";

/// An idle loop still turns this often, so the supervisor never takes it for stuck: its
/// shortest stuck limit is 1 s.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// The file name reported for a print whose printer gave none.
const UNNAMED: &str = "unnamed-print.gcode";

/// What every watch shares.
#[derive(Clone)]
pub struct Shared {
    /// One model in memory for all printers: frames are scored in the turns the
    /// scheduler gives (freshest frame per printer, fair, a warned printer first).
    pub scheduler: Arc<FrameScheduler>,
    pub sensitivity: f64,
    pub mirror: Option<Arc<Mirror>>,
    pub store: Arc<StateStore>,
    pub cfg: WatchConfig,
    /// Saved decision frames go to `<frames_root>/<printer>/`.
    pub frames_root: std::path::PathBuf,
    pub events: broadcast::Sender<WatchEvent>,
    /// Where each watch publishes its view and takes commands.
    pub board: Arc<Board>,
}

/// What the supervisor reads from a running watch.
#[derive(Debug, Default)]
pub struct Vitals {
    /// Milliseconds (monotonic, since the supervisor's start) of the loop's last turn.
    pub heartbeat_ms: AtomicI64,
    /// One line for systemd's STATUS.
    pub status: Mutex<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Printing,
    Paused,
    Offline,
}

type FrameInput = Arc<Vec<u8>>;
type FrameOutput = Result<FrameDetections, DetectError>;

/// A frame submitted to the scheduler, waiting for its score.
struct Pending {
    ticket: Ticket<FrameInput, FrameOutput>,
    jpeg: Arc<Vec<u8>>,
    grabbed: Instant,
    urgent: bool,
}

struct Watcher {
    spec_name: String,
    /// This printer's place at the detector.
    client: Client<FrameInput, FrameOutput>,
    /// The frame submitted and not yet scored (a newer frame replaces it).
    pending: Option<Pending>,
    /// The last frame warned: the next one is scored first.
    urgent: bool,
    mirror_key: String,
    link: Arc<dyn crate::printer::PrinterLink>,
    camera_choice: Option<CameraChoice>,
    camera: Option<Box<dyn Camera>>,
    camera_from: Option<CameraInfo>,
    camera_error: Option<String>,
    action: Action,
    shared: Shared,
    frames: FrameStore,
    record: PrinterRecord,
    phase: Phase,
    resumed_at: Option<Instant>,
    last_warn: Option<Instant>,
    acting: Arc<std::sync::atomic::AtomicBool>,
    /// Set by a failed action: the next failing frame may try again.
    retry: Arc<std::sync::atomic::AtomicBool>,
    vitals: Arc<Vitals>,
    epoch: Instant,
    last_p: Option<f64>,
    /// The view published on the board.
    view: watch::Sender<PrinterView>,
    last_decision: Option<LastDecision>,
    snoozed_until: Option<std::time::SystemTime>,
    offline_reason: Option<String>,
}

/// Runs one printer's watch until `shutdown` turns true; `registration` is the printer's
/// place on the board (the supervisor registers every printer before any watch starts);
/// its first frame comes `phase` after the start (watches started together spread out).
pub async fn run(
    spec: WatchSpec,
    shared: Shared,
    mut registration: Registration,
    vitals: Arc<Vitals>,
    epoch: Instant,
    phase: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let record = match shared.store.load(&spec.name) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(printer = spec.name, "{e}");
            PrinterRecord::default()
        }
    };
    let frames = FrameStore::new(
        shared.frames_root.join(safe_name(&spec.name)),
        shared.cfg.frames_max_mib.saturating_mul(1 << 20),
    );
    let client = shared.scheduler.client(&spec.name);
    let mut w = Watcher {
        client,
        pending: None,
        urgent: false,
        spec_name: spec.name,
        mirror_key: spec.mirror_key,
        link: spec.link,
        camera_choice: Some(spec.camera),
        camera: None,
        camera_from: None,
        camera_error: None,
        action: spec.action,
        shared,
        frames,
        record,
        phase: Phase::Offline,
        resumed_at: None,
        last_warn: None,
        acting: Default::default(),
        retry: Default::default(),
        vitals,
        epoch,
        last_p: None,
        view: registration.view,
        last_decision: None,
        snoozed_until: None,
        offline_reason: None,
    };
    let mut events = w.link.events();
    let mut status = w.link.status();
    // Watches started together tick `phase` apart, so that their frames do not all reach
    // the detector at the same moment (and wait behind each other).
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, w.shared.cfg.cadence());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    w.sync_status(&status.borrow_and_update().clone());
    w.update_status_line();
    w.publish();
    let mut status_open = true;
    loop {
        w.beat();
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            ev = events.recv() => match ev {
                Ok(ev) => w.on_event(ev),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(printer = w.spec_name, "{n} printer events were missed; going by the printer's status");
                    w.sync_status(&status.borrow().clone());
                }
                Err(broadcast::error::RecvError::Closed) => {
                    tracing::error!(printer = w.spec_name, "the printer link stopped; this printer is no longer watched");
                    w.set_status_line("link stopped".into());
                    // Keep the loop (and the watchdog) honest: nothing more to do here.
                    let _ = shutdown.changed().await;
                    break;
                }
            },
            r = status.changed(), if status_open => {
                if r.is_ok() {
                    let s = status.borrow_and_update().clone();
                    w.sync_status(&s);
                } else {
                    // The link dropped its status: events alone drive the watch now.
                    status_open = false;
                }
            }
            _ = ticker.tick(), if w.phase == Phase::Printing => {
                // A stop does not wait for the frame in flight (a camera that hangs up to
                // its timeout, a frame being decoded): it is dropped, the state was saved
                // at the last scored frame.
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => break,
                    _ = w.grab_and_submit() => {}
                }
            }
            scored = async { (&mut w.pending.as_mut().expect("checked by the guard").ticket).await }, if w.pending.is_some() => {
                let pending = w.pending.take().expect("checked by the guard");
                w.on_scored(scored, pending);
            }
            Some((command, reply)) = registration.commands.recv() => w.on_command(command, reply),
            _ = heartbeat.tick() => {}
        }
        w.update_status_line();
        w.publish();
    }
    w.save();
}


impl Watcher {
    fn beat(&self) {
        self.vitals.heartbeat_ms.store(self.epoch.elapsed().as_millis() as i64, Ordering::Relaxed);
    }

    fn emit(&self, ev: WatchEvent) {
        let _ = self.shared.events.send(ev);
    }

    fn save(&self) {
        if let Err(e) = self.shared.store.save(&self.spec_name, &self.record) {
            tracing::warn!(printer = self.spec_name, "{e}");
        }
    }

    /// A print begins being watched: a new one, or the one already known (after a restart
    /// or a reconnect), whose smoothing state goes on.
    fn begin(&mut self, job: &str, file: &str, paused: bool) {
        // The server needs a file name; a link that has none (a printer host that lost
        // it) still gets its print watched and mirrored.
        let status_file = self.link.status().borrow().file.clone().filter(|f| !f.is_empty());
        let file = match (file.trim(), status_file) {
            ("", Some(f)) => f,
            ("", None) => UNNAMED.to_string(),
            (f, _) => f.to_string(),
        };
        let file = file.as_str();
        let continued = self.record.job.as_deref() == Some(job);
        if continued && matches!(self.phase, Phase::Printing | Phase::Paused) {
            // Already watching it (seen in the status before its event arrived).
            self.phase = if paused { Phase::Paused } else { Phase::Printing };
            return;
        }
        if !continued {
            if self.record.job.is_some() {
                tracing::info!(printer = self.spec_name, "the print watched before ({}) is over", self.record.job.as_deref().unwrap_or(""));
            }
            self.record.smoothing.reset_for_print();
            self.record.job = Some(job.to_string());
            self.record.file = Some(file.to_string());
            self.record.acted = false;
            self.record.not_watching = false;
            self.resumed_at = None;
            self.last_warn = None;
            self.last_decision = None;
            // A frame of another print must not count for this one.
            self.pending = None;
            self.urgent = false;
        }
        self.phase = if paused { Phase::Paused } else { Phase::Printing };
        self.save();
        if continued {
            tracing::info!(
                printer = self.spec_name,
                "watching {file} again (frame {}, ewm {:.3}: the same print as before)",
                self.record.smoothing.current_frame_num,
                self.record.smoothing.ewm_mean
            );
        } else {
            tracing::info!(printer = self.spec_name, "print started: {file}");
        }
        if let Some(m) = &self.shared.mirror
            && let Err(e) = m.start_print(&self.mirror_key, job, file)
        {
            tracing::error!(printer = self.spec_name, "the print start could not be queued for the server: {e}");
        }
        self.emit(WatchEvent::PrintStarted {
            printer: self.spec_name.clone(),
            job: job.into(),
            file: file.into(),
            continued,
        });
    }

    fn end(&mut self, job: &str, outcome: JobOutcome) {
        match &outcome {
            JobOutcome::Completed => tracing::info!(printer = self.spec_name, "print finished"),
            JobOutcome::Cancelled => tracing::info!(printer = self.spec_name, "print cancelled"),
            JobOutcome::Failed(why) => tracing::warn!(printer = self.spec_name, "print stopped on an error: {why}"),
        }
        if let Some(m) = &self.shared.mirror {
            let status = if outcome == JobOutcome::Completed { FinishStatus::Success } else { FinishStatus::Cancelled };
            // The start may not have been seen (a print that began and ended while printvigil
            // was down is reported by the link in order: start first).
            if let Err(e) = m.finish_print(&self.mirror_key, job, status) {
                tracing::error!(printer = self.spec_name, "the print end could not be queued for the server: {e}");
            }
        }
        if self.record.job.as_deref() == Some(job) || self.record.job.is_none() {
            self.record.smoothing.reset_for_print();
            self.record.job = None;
            self.record.acted = false;
            self.record.not_watching = false;
            self.save();
        }
        self.phase = Phase::Idle;
        self.last_p = None;
        self.pending = None;
        self.urgent = false;
        self.emit(WatchEvent::PrintFinished { printer: self.spec_name.clone(), job: job.into(), outcome });
    }

    fn on_event(&mut self, ev: PrinterEvent) {
        tracing::debug!(printer = self.spec_name, "printer event {ev:?}");
        match ev {
            PrinterEvent::PrintStarted { job, file } => self.begin(&job.0, &file, false),
            PrinterEvent::Attached { job, file, paused } => self.begin(&job.0, &file, paused),
            PrinterEvent::Paused { .. } => {
                if self.phase == Phase::Printing {
                    tracing::info!(printer = self.spec_name, "print paused");
                }
                self.phase = Phase::Paused;
            }
            PrinterEvent::Resumed { .. } => {
                tracing::info!(
                    printer = self.spec_name,
                    "print resumed; no automatic action for {:.0} s",
                    self.shared.cfg.cooldown_secs
                );
                self.phase = Phase::Printing;
                self.resumed_at = Some(Instant::now());
            }
            PrinterEvent::Finished { job, outcome, .. } => self.end(&job.0, outcome),
            PrinterEvent::Halted { message } => {
                tracing::warn!(printer = self.spec_name, "the printer halted: {message}");
            }
            PrinterEvent::Offline { reason } => {
                tracing::warn!(printer = self.spec_name, "printer offline: {reason}");
                self.phase = Phase::Offline;
                self.offline_reason = Some(reason);
            }
            PrinterEvent::Online => {
                tracing::info!(printer = self.spec_name, "printer online");
                self.offline_reason = None;
                let s = self.link.status().borrow().clone();
                self.sync_status(&s);
            }
        }
    }

    /// Brings the phase in line with the printer's status. A print the events did not
    /// announce (missed events, or a state the link reports without an event) is watched
    /// rather than dropped.
    fn sync_status(&mut self, s: &crate::printer::PrinterStatus) {
        match s.state {
            PrinterState::Printing | PrinterState::Paused => {
                let paused = s.state == PrinterState::Paused;
                let job = s.job.as_ref().map(|j| j.0.clone());
                match (job, &self.record.job) {
                    (Some(j), Some(known)) if &j == known => {
                        if matches!(self.phase, Phase::Printing | Phase::Paused) {
                            self.phase = if paused { Phase::Paused } else { Phase::Printing };
                        } else {
                            // Not watched until now (a restart): the same print continues.
                            let file = s.file.clone().or_else(|| self.record.file.clone()).unwrap_or_default();
                            self.begin(&j, &file, paused);
                        }
                    }
                    (Some(j), _) => {
                        let file = s.file.clone().unwrap_or_default();
                        self.begin(&j, &file, paused);
                    }
                    (None, _) => {
                        // No job identity yet: watch anyway (the start event names it).
                        self.phase = if paused { Phase::Paused } else { Phase::Printing };
                    }
                }
            }
            PrinterState::Idle | PrinterState::Error => {
                if matches!(self.phase, Phase::Printing | Phase::Paused | Phase::Offline) {
                    self.phase = Phase::Idle;
                }
            }
            PrinterState::Offline => self.phase = Phase::Offline,
        }
    }

    fn set_status_line(&self, line: String) {
        *self.vitals.status.lock().unwrap_or_else(|p| p.into_inner()) = line;
    }

    fn update_status_line(&self) {
        let file = self.record.file.as_deref().unwrap_or("a print");
        let p = self.last_p.map(|p| format!(", p={p:.2}")).unwrap_or_default();
        let cam = self.camera_error.as_ref().map(|_| ", camera failing").unwrap_or_default();
        let line = match self.phase {
            Phase::Idle => format!("{}: idle", self.spec_name),
            Phase::Offline => format!("{}: printer offline", self.spec_name),
            Phase::Paused if self.record.acted && self.action == Action::Pause => {
                format!("{}: PAUSED by printvigil ({file}{p})", self.spec_name)
            }
            Phase::Paused => format!("{}: paused {file}{p}", self.spec_name),
            Phase::Printing => format!("{}: printing {file}{p}{cam}", self.spec_name),
        };
        let line = if crate::detector::runtime::INFERENCE { line } else { format!("{line} (no inference in this build)") };
        self.set_status_line(line);
    }

    /// Makes sure there is a camera to grab from; false when none can be had now.
    fn ensure_camera(&mut self) -> bool {
        match self.camera_choice.take() {
            Some(CameraChoice::Ready(c)) => self.camera = Some(c),
            Some(CameraChoice::Config(cfg)) => match camera::from_config(&cfg) {
                Ok(c) => self.camera = Some(c),
                Err(e) => {
                    self.camera_failed(e.to_string());
                    self.camera_choice = Some(CameraChoice::Config(cfg));
                    return false;
                }
            },
            Some(CameraChoice::Discover) => {
                self.camera_choice = Some(CameraChoice::Discover);
                let list = self.link.cameras().borrow().clone();
                let pick = list.into_iter().find(|c| c.snapshot_url.is_some() || c.stream_url.is_some());
                match pick {
                    None => {
                        self.camera = None;
                        self.camera_from = None;
                        self.camera_failed(
                            "the printer reports no camera; add one in the printer's webcam settings, or set `camera` for this printer in the printvigil config".into(),
                        );
                        return false;
                    }
                    Some(info) if self.camera.is_some() && self.camera_from.as_ref() == Some(&info) => {}
                    Some(info) => {
                        let cam = camera::from_info(&info, LINK_BASE).and_then(|cfg| camera::from_config(&cfg));
                        match cam {
                            Ok(c) => {
                                tracing::info!(printer = self.spec_name, "using the printer's camera {:?}", info.name);
                                self.camera = Some(c);
                                self.camera_from = Some(info);
                            }
                            Err(e) => {
                                self.camera_failed(e.to_string());
                                return false;
                            }
                        }
                    }
                }
            }
            None => {}
        }
        self.camera.is_some()
    }

    fn camera_failed(&mut self, message: String) {
        if self.camera_error.as_ref() != Some(&message) {
            tracing::warn!(printer = self.spec_name, "no frame: {message}; detection resumes when frames come back");
            self.emit(WatchEvent::CameraFailed { printer: self.spec_name.clone(), message: message.clone() });
        }
        self.camera_error = Some(message);
    }

    /// A frame from the camera, submitted to the scheduler (replacing one still waiting).
    /// When the frame submitted before is being scored, its answer is moments away and
    /// it is fresh: this turn is skipped rather than throw that work away.
    async fn grab_and_submit(&mut self) {
        // A build without inference follows the print and scores nothing.
        if self.record.not_watching || !crate::detector::runtime::INFERENCE {
            self.pending = None;
            return;
        }
        if self.pending.as_ref().is_some_and(|p| p.ticket.started()) {
            return;
        }
        if !self.ensure_camera() {
            return;
        }
        let Some(cam) = self.camera.as_mut() else { return };
        let frame = match cam.grab().await {
            Ok(f) => f,
            Err(e) => {
                let stream_blip = matches!(e, CameraError::StreamEnded { .. });
                if !stream_blip {
                    self.camera_failed(e.to_string());
                }
                self.emit(WatchEvent::FrameFailed { printer: self.spec_name.clone(), stage: "camera" });
                return;
            }
        };
        if self.camera_error.take().is_some() {
            tracing::info!(printer = self.spec_name, "the camera gives frames again; detection goes on");
            self.emit(WatchEvent::CameraBack { printer: self.spec_name.clone() });
        }
        let jpeg = Arc::new(frame.jpeg);
        let priority = if self.urgent { Priority::Urgent } else { Priority::Normal };
        let ticket = self.client.submit(jpeg.clone(), priority);
        self.pending = Some(Pending { ticket, jpeg, grabbed: Instant::now(), urgent: self.urgent });
    }

    /// A frame's score came back: smooth, decide, act; sinks after.
    fn on_scored(&mut self, scored: Result<Scored<FrameOutput>, Unscored>, pending: Pending) {
        let Pending { jpeg, grabbed, urgent, .. } = pending;
        if self.record.not_watching {
            // Detection was turned off while the frame waited.
            return;
        }
        let scored = match scored {
            Ok(s) => s,
            Err(Unscored::Superseded) => return,
            Err(Unscored::Stopped) => {
                tracing::debug!(printer = self.spec_name, "the detector stopped; frame dropped");
                return;
            }
            Err(e) => {
                tracing::error!(printer = self.spec_name, "the detector failed on a frame ({e}); the next one will be tried");
                self.emit(WatchEvent::FrameFailed { printer: self.spec_name.clone(), stage: "detector" });
                return;
            }
        };
        let found = match scored.output {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(printer = self.spec_name, "a frame could not be scored: {e}; the next one will be tried");
                self.emit(WatchEvent::FrameFailed { printer: self.spec_name.clone(), stage: "detector" });
                return;
            }
        };
        let started = scored.done - scored.took;
        let p = frame_p(&found.detections, 1.0);
        let verdict = self.record.smoothing.observe(p, self.shared.sensitivity);
        let decided = Instant::now();
        let timing = FrameTiming {
            grabbed,
            age: started.saturating_duration_since(grabbed),
            infer: scored.took,
            latency: decided.saturating_duration_since(grabbed),
            urgent,
        };
        self.last_p = Some(p);
        let s = self.record.smoothing;
        tracing::debug!(
            printer = self.spec_name,
            "frame {}: {} detections, p={p:.3}, ewm={:.3}, normalized_p={:.2}",
            s.current_frame_num,
            found.detections.len(),
            s.ewm_mean,
            verdict.normalized_p
        );
        self.emit(WatchEvent::Scored {
            printer: self.spec_name.clone(),
            frame_num: s.current_frame_num,
            p,
            ewm: s.ewm_mean,
            normalized_p: verdict.normalized_p,
            warn: verdict.warn,
            pause: verdict.pause,
            timing,
            frame: Arc::new(super::ScoredFrame { jpeg: jpeg.clone(), detections: found.detections.clone() }),
        });
        if self.retry.swap(false, Ordering::Relaxed) {
            self.record.acted = false;
        }
        let decision = if verdict.pause {
            Decision::Pause
        } else if verdict.warn {
            Decision::Warn
        } else {
            Decision::Ok
        };
        self.last_decision = Some(LastDecision { decision, at: std::time::SystemTime::now(), p });
        let act = verdict.pause && self.may_act();
        if act {
            self.record.acted = true;
            self.act(self.action, decided, p);
        }
        // A warning (or a pause decision not carried out: the cooldown, a refused action):
        // the next frame may be the one that pauses, so it goes first.
        self.urgent = verdict.warn || (verdict.pause && !self.record.acted);
        self.save();
        let warn = verdict.warn && self.last_warn.is_none_or(|t| t.elapsed() >= self.shared.cfg.cooldown());
        if warn {
            self.last_warn = Some(Instant::now());
            tracing::warn!(
                printer = self.spec_name,
                "the print may be failing (p={p:.2}, normalized {:.2}); watching closely",
                verdict.normalized_p
            );
        }
        if act || warn {
            self.keep_frame(jpeg.clone(), found.detections.clone(), if act { "pause" } else { "warn" }, p, warn && !act);
        }
        if let Some(m) = &self.shared.mirror {
            self.offer(m.clone(), jpeg, verdict);
        }
    }

    fn may_act(&self) -> bool {
        match self.act_blocker() {
            None => true,
            Some(CommandError::Cooldown(secs)) => {
                tracing::info!(printer = self.spec_name, "failure detected, but the print was resumed {secs} s ago: no automatic action during the cooldown");
                false
            }
            Some(_) => false,
        }
    }

    /// Why no action may be taken on this print now, if something stops it.
    fn act_blocker(&self) -> Option<CommandError> {
        if self.record.acted || self.acting.load(Ordering::Relaxed) {
            return Some(CommandError::AlreadyActed);
        }
        if let Some(t) = self.resumed_at
            && t.elapsed() < self.shared.cfg.cooldown()
        {
            return Some(CommandError::Cooldown(t.elapsed().as_secs()));
        }
        None
    }

    /// A command from outside (see [`super::control`]).
    fn on_command(&mut self, command: Command, reply: oneshot::Sender<Result<Outcome, CommandError>>) {
        tracing::info!(printer = self.spec_name, "command: {command:?}");
        let result = match command {
            Command::Pause => {
                if self.phase != Phase::Printing {
                    Err(CommandError::NotPrinting)
                } else if let Some(e) = self.act_blocker() {
                    Err(e)
                } else {
                    self.record.acted = true;
                    self.save();
                    self.act(Action::Pause, Instant::now(), self.last_p.unwrap_or(0.0));
                    Ok(Outcome::PauseRequested)
                }
            }
            Command::Watching(on) => {
                if on == self.record.not_watching {
                    tracing::info!(
                        printer = self.spec_name,
                        "{}",
                        if on { "detection on again for this print" } else { "detection off for this print (on again at the next print)" }
                    );
                }
                self.record.not_watching = !on;
                self.save();
                Ok(Outcome::Done)
            }
            Command::Snooze(d) if d > MAX_SNOOZE => Err(CommandError::SnoozeTooLong),
            Command::Snooze(d) => {
                self.snoozed_until = (!d.is_zero()).then(|| std::time::SystemTime::now() + d);
                Ok(Outcome::Done)
            }
        };
        if let Err(e) = &result {
            tracing::info!(printer = self.spec_name, "command refused: {e}");
        }
        let _ = reply.send(result);
        self.update_status_line();
        self.publish();
    }

    /// Publishes the watch's view when it changed (the saved-frame path is set by the task
    /// that writes the frame, and kept here).
    fn publish(&self) {
        let status = self.link.status().borrow().clone();
        let s = self.record.smoothing;
        let scored = self.last_p.is_some();
        let mut new = PrinterView {
            printer: self.spec_name.clone(),
            phase: match self.phase {
                Phase::Idle => WatchPhase::Idle,
                Phase::Printing => WatchPhase::Printing,
                Phase::Paused => WatchPhase::Paused,
                Phase::Offline => WatchPhase::Offline,
            },
            offline_reason: if self.phase == Phase::Offline { self.offline_reason.clone().or(status.message.clone()) } else { None },
            file: self.record.file.clone(),
            job: self.record.job.clone(),
            progress: status.progress.filter(|_| matches!(self.phase, Phase::Printing | Phase::Paused)),
            frame_num: s.current_frame_num,
            p: self.last_p,
            ewm: scored.then_some(s.ewm_mean),
            normalized_p: scored.then(|| s.normalized_p(self.shared.sensitivity)),
            last_decision: self.last_decision.clone(),
            acted: self.record.acted,
            watching: !self.record.not_watching,
            snoozed_until: self.snoozed_until.filter(|t| *t > std::time::SystemTime::now()),
            camera_error: self.camera_error.clone(),
            last_frame: None,
        };
        self.view.send_if_modified(|v| {
            new.last_frame = v.last_frame.take();
            let changed = *v != new;
            std::mem::swap(v, &mut new);
            changed
        });
    }

    /// Carries out the action in its own task; detection goes on meanwhile. A failed
    /// action is logged and may be tried again on a later frame.
    fn act(&self, action: Action, decided: Instant, p: f64) {
        let file = self.record.file.clone().unwrap_or_default();
        tracing::warn!(
            printer = self.spec_name,
            "FAILURE DETECTED in {file} (p={p:.2}): action `{}`",
            action.as_str()
        );
        let link = self.link.clone();
        let name = self.spec_name.clone();
        let events = self.shared.events.clone();
        let acting = self.acting.clone();
        let retry = self.retry.clone();
        acting.store(true, Ordering::Relaxed);
        tokio::spawn(async move {
            let requested = Instant::now();
            let _ = events.send(WatchEvent::Acting { printer: name.clone(), action, decided, requested });
            let result = match action {
                Action::Pause => link.pause().await,
                Action::Cancel => link.cancel().await,
                Action::Notify => Ok(()),
            };
            let done = Instant::now();
            let result = match result {
                Ok(()) => {
                    match action {
                        Action::Pause => tracing::warn!(printer = name, "print PAUSED by printvigil ({:.0} ms after the decision); check the print, then resume or cancel it", (done - decided).as_secs_f64() * 1000.0),
                        Action::Cancel => tracing::warn!(printer = name, "print CANCELLED by printvigil"),
                        Action::Notify => tracing::warn!(printer = name, "failure reported (action_on_failure = notify: the print goes on)"),
                    }
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(printer = name, "could not {} the failing print: {e}; trying again on the next failing frame", action.as_str());
                    retry.store(true, Ordering::Relaxed);
                    Err(e.to_string())
                }
            };
            acting.store(false, Ordering::Relaxed);
            let _ = events.send(WatchEvent::Acted { printer: name, action, result, decided, done });
        });
    }

    /// Draws the detections and saves the frame, off the loop.
    fn keep_frame(&self, jpeg: Arc<Vec<u8>>, detections: Vec<crate::detector::postprocess::Detection>, kind: &'static str, p: f64, warned: bool) {
        let store = self.frames.clone();
        let job = self.record.job.clone().unwrap_or_default();
        let name = format!(
            "{}-{}-{}-{kind}",
            time_stamp(),
            safe_name(&self.spec_name),
            safe_name(&job),
        );
        let printer = self.spec_name.clone();
        let events = self.shared.events.clone();
        let view = self.view.clone();
        tokio::task::spawn_blocking(move || {
            let drawn = preprocess::decode_jpeg(&jpeg).map_err(|e| e.to_string()).and_then(|mut img| {
                annotate::draw(&mut img, &detections);
                annotate::encode_jpeg(&img, 85).map_err(|e| e.to_string())
            });
            let bytes = drawn.unwrap_or_else(|e| {
                tracing::warn!(printer, "cannot draw the detections ({e}); saving the frame as it came");
                jpeg.to_vec()
            });
            match store.save(&name, &bytes) {
                Ok(path) => {
                    tracing::info!(printer, "{kind} frame saved: {}", path.display());
                    view.send_modify(|v| v.last_frame = Some(path.clone()));
                    let _ = if warned {
                        events.send(WatchEvent::Warned { printer, p, frame: Some(path) })
                    } else {
                        events.send(WatchEvent::FrameSaved { printer, path })
                    };
                }
                Err(e) => {
                    tracing::warn!(printer, "{e}");
                    if warned {
                        let _ = events.send(WatchEvent::Warned { printer, p, frame: None });
                    }
                }
            }
        });
    }

    fn offer(&self, mirror: Arc<Mirror>, jpeg: Arc<Vec<u8>>, v: Verdict) {
        let score = FrameScore { p: v.p, smoothed: self.record.smoothing.ewm_mean, warn: v.warn, pause: v.pause };
        let key = self.mirror_key.clone();
        let quality = mirror.upload_quality();
        // Shrinking a large frame is CPU work: off the loop.
        tokio::task::spawn_blocking(move || {
            let small = crate::server::upload::shrink_to_fit(&jpeg, quality).unwrap_or_else(|e| {
                tracing::debug!("frame not shrunk ({e}); offered as it is");
                jpeg.to_vec()
            });
            mirror.offer_frame(&key, small, &score);
        });
    }
}

/// `YYYYmmdd-HHMMSS` in UTC, for file names that sort by time.
fn time_stamp() -> String {
    let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    // 2026-11-29T14:55:00Z -> 20261129-145500
    t.trim_end_matches('Z').replace(['-', ':'], "").replace('T', "-")
}

#[cfg(test)]
mod tests {
    #[test]
    fn stamps_are_civil_utc() {
        let s = super::time_stamp();
        assert_eq!(s.len(), 15, "{s}");
        let year: i32 = s[..4].parse().unwrap();
        assert!((2024..2200).contains(&year), "{s}");
        assert_eq!(&s[8..9], "-");
    }
}
