//! A simulated printer: a real [`PrinterLink`] with no hardware behind it.
//!
//! Used by `printvigil demo`, by tests of the watch loop, and selectable in the settings
//! file (`kind = "simulated"`) to try printvigil without a printer. Code drives it the way
//! a person at the printer would ([`SimPrinter::start_print`], [`SimPrinter::user_pause`],
//! [`SimPrinter::go_offline`], [`SimPrinter::halt`], ...); printvigil drives it through
//! the trait, and every action it receives is recorded with the time it arrived
//! ([`SimPrinter::actions`]).
//!
//! It behaves like a real link where the trait says how: the first call of
//! [`PrinterLink::events`] gets every event since creation; print events that happen
//! while the printer is offline are reported, in order, after the `Online` that ends it;
//! pause, resume and cancel are refused in the wrong state (`WrongState`) and while
//! offline (`NotConnected`). A new simulated printer is online and idle; it reports no
//! `Online` event for that (its status says so).
//!
//! From the settings file, [`SimConfig`] adds a small script: a print starts after
//! `start_after_secs`, its progress advances, and it completes after `print_secs` of
//! printing (the clock stops while paused) unless it is cancelled or fails; with `repeat`
//! the next print starts `start_after_secs` after each one ends.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use super::channels::{Act, LinkChannels};
use super::{
    CameraInfo, JobId, JobOutcome, PrinterError, PrinterEvent, PrinterLink, PrinterState, PrinterStatus,
    Temperature,
};
use crate::config::{ConfigError, invalid};

/// `kind = "simulated"`: a printer that prints a scripted job, for trying printvigil out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// A short name, unique among the printers.
    pub name: String,
    /// The file name the simulated prints report.
    #[serde(default = "default_file")]
    pub file: String,
    /// Seconds from the start (and, with `repeat`, from the end of a print) to the next print.
    #[serde(default = "default_start_after")]
    pub start_after_secs: f64,
    /// Seconds of printing until a print completes (time paused does not count).
    #[serde(default = "default_print_secs")]
    pub print_secs: f64,
    /// Start another print after each one ends (completed, cancelled or failed).
    #[serde(default)]
    pub repeat: bool,
    /// The camera to watch (e.g. `kind = "files"` over a folder of frames); default: the
    /// cameras given to the simulated printer, if any.
    #[serde(default)]
    pub camera: Option<crate::camera::CameraConfig>,
    /// What to do with a failing print on this printer (default: `watch.action_on_failure`).
    #[serde(default)]
    pub action_on_failure: Option<crate::printer::Action>,
}

fn default_file() -> String {
    "demo-print.gcode".into()
}
fn default_start_after() -> f64 {
    2.0
}
fn default_print_secs() -> f64 {
    600.0
}

/// Longest `start_after_secs` and `print_secs` accepted: one week.
const MAX_SECS: f64 = 7.0 * 86_400.0;

impl SimConfig {
    /// A configuration with defaults for everything but the name.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            file: default_file(),
            start_after_secs: default_start_after(),
            print_secs: default_print_secs(),
            repeat: false,
            camera: None,
            action_on_failure: None,
        }
    }

    pub(crate) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.file.trim().is_empty() || self.file.len() > 255 || self.file.chars().any(char::is_control) {
            return Err(invalid(
                &format!("{key}.file"),
                &format!("{:?}", self.file),
                "give a file name of 1 to 255 characters, e.g. file = \"demo-print.gcode\"",
            ));
        }
        if !(self.start_after_secs.is_finite() && (0.0..=MAX_SECS).contains(&self.start_after_secs)) {
            return Err(invalid(
                &format!("{key}.start_after_secs"),
                &self.start_after_secs.to_string(),
                "use a number of seconds from 0 to 604800 (one week); default 2",
            ));
        }
        if !(self.print_secs.is_finite() && self.print_secs > 0.0 && self.print_secs <= MAX_SECS) {
            return Err(invalid(
                &format!("{key}.print_secs"),
                &self.print_secs.to_string(),
                "use a number of seconds above 0 and at most 604800 (one week); default 600",
            ));
        }
        Ok(())
    }
}

/// The simulated printer; see the module documentation.
pub struct SimPrinter {
    name: String,
    inner: Mutex<Inner>,
    out: LinkChannels,
    action_delay: Mutex<Duration>,
    refusal: Mutex<Option<String>>,
    actions: Mutex<Vec<(String, Instant)>>,
    script: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The printer's own state; the status is computed from it.
#[derive(Debug)]
struct Inner {
    /// Idle, Printing, Paused or Error; never Offline (that is `offline`).
    state: PrinterState,
    /// Why it is offline, while it is.
    offline: Option<String>,
    job: Option<JobId>,
    file: Option<String>,
    progress: Option<f64>,
    /// The halt message, while halted.
    halt: Option<String>,
    /// Print events that happened while offline, reported when it is back.
    held: Vec<PrinterEvent>,
    prints: u64,
    stopped: bool,
}

impl SimPrinter {
    /// A simulated printer, online and idle, with no script: code drives it.
    pub fn new(name: &str) -> Arc<SimPrinter> {
        let sim = SimPrinter {
            name: name.into(),
            inner: Mutex::new(Inner {
                state: PrinterState::Idle,
                offline: None,
                job: None,
                file: None,
                progress: None,
                halt: None,
                held: Vec::new(),
                prints: 0,
                stopped: false,
            }),
            out: LinkChannels::new(name),
            action_delay: Mutex::new(Duration::ZERO),
            refusal: Mutex::new(None),
            actions: Mutex::new(Vec::new()),
            script: Mutex::new(None),
        };
        sim.publish(&sim.lock());
        Arc::new(sim)
    }

    /// A simulated printer running the script of `cfg` (needs a Tokio runtime).
    pub fn from_config(cfg: &SimConfig) -> Arc<SimPrinter> {
        let sim = SimPrinter::new(&cfg.name);
        let task = tokio::spawn(script(Arc::downgrade(&sim), cfg.clone(), sim.out.status()));
        *lock(&sim.script) = Some(task);
        sim
    }

    /// Like [`SimPrinter::from_config`], as the link the watch loop uses.
    pub fn start(cfg: &SimConfig) -> Arc<dyn PrinterLink> {
        SimPrinter::from_config(cfg)
    }

    /// Makes pause, resume and cancel take `delay` before the printer confirms them, as a
    /// real printer finishing a move first would.
    pub fn with_action_delay(self: Arc<Self>, delay: Duration) -> Arc<Self> {
        self.set_action_delay(delay);
        self
    }

    /// See [`SimPrinter::with_action_delay`].
    pub fn set_action_delay(&self, delay: Duration) {
        *lock(&self.action_delay) = delay;
    }

    /// Every action received through [`PrinterLink`] (`"pause"`, `"resume"`, `"cancel"`),
    /// refused ones too, with the time it arrived (Tokio's clock, so a paused test clock
    /// applies).
    /// Refuses every pause, resume and cancel with `message` (a printer whose pause macro
    /// fails), until called with `None`.
    pub fn refuse_actions(&self, message: Option<&str>) {
        *lock(&self.refusal) = message.map(str::to_string);
    }

    pub fn actions(&self) -> Vec<(String, Instant)> {
        lock(&self.actions).clone()
    }

    /// A print starts: `PrintStarted`, status Printing at progress 0, a fresh job id.
    /// While a print is running it stays the one (with a warning) and its id is returned.
    /// On a halted printer the halt is cleared first (`Online`), as after a restart.
    pub fn start_print(&self, file: &str) -> JobId {
        let mut g = self.lock();
        if let (PrinterState::Printing | PrinterState::Paused, Some(job)) = (g.state, &g.job) {
            warn!(printer = %self.name, job = %job, "simulated printer: start_print while a print is running; ignored");
            return job.clone();
        }
        if g.state == PrinterState::Error {
            g.state = PrinterState::Idle;
            g.halt = None;
            if g.offline.is_none() {
                self.emit(&mut g, PrinterEvent::Online);
            }
        }
        g.prints += 1;
        let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        let job = JobId(format!("sim-{started}-{}", g.prints));
        g.state = PrinterState::Printing;
        g.job = Some(job.clone());
        g.file = Some(file.to_string());
        g.progress = Some(0.0);
        self.emit(&mut g, PrinterEvent::PrintStarted { job: job.clone(), file: file.to_string() });
        self.publish(&g);
        job
    }

    /// The current print's progress, 0.0 ..= 1.0 (clamped); ignored when not printing.
    pub fn set_progress(&self, progress: f64) {
        let mut g = self.lock();
        if g.job.is_none() || !progress.is_finite() {
            return;
        }
        g.progress = Some(progress.clamp(0.0, 1.0));
        self.publish(&g);
    }

    /// The current print ends with `outcome`: `Finished`, status Idle. Without a print
    /// nothing happens (a warning is logged).
    pub fn finish(&self, outcome: JobOutcome) {
        let mut g = self.lock();
        if g.job.is_none() {
            warn!(printer = %self.name, ?outcome, "simulated printer: finish without a print; ignored");
            return;
        }
        if outcome == JobOutcome::Completed {
            g.progress = Some(1.0);
        }
        self.end_print(&mut g, outcome);
        self.publish(&g);
    }

    /// A person pauses the print at the printer: `Paused`, status Paused. Only while
    /// printing (else a warning).
    pub fn user_pause(&self) {
        let mut g = self.lock();
        if g.state != PrinterState::Printing {
            warn!(printer = %self.name, state = ?g.state, "simulated printer: user_pause while not printing; ignored");
            return;
        }
        self.set_paused(&mut g, true);
    }

    /// A person resumes the print at the printer: `Resumed`, status Printing. Only while
    /// paused (else a warning).
    pub fn user_resume(&self) {
        let mut g = self.lock();
        if g.state != PrinterState::Paused {
            warn!(printer = %self.name, state = ?g.state, "simulated printer: user_resume while not paused; ignored");
            return;
        }
        self.set_paused(&mut g, false);
    }

    /// The printer becomes unreachable: `Offline`, status Offline with `reason`. A print
    /// goes on; what happens to it is reported when the printer is back.
    pub fn go_offline(&self, reason: &str) {
        let mut g = self.lock();
        let was_online = g.offline.is_none();
        g.offline = Some(reason.to_string());
        if was_online {
            self.emit(&mut g, PrinterEvent::Offline { reason: reason.to_string() });
        }
        self.publish(&g);
    }

    /// The printer is reachable again: `Online`, then what happened while it was away;
    /// the status is what it was (or is now). On a halted printer this is the restart
    /// that clears the halt (status Idle). Otherwise nothing happens.
    pub fn go_online(&self) {
        let mut g = self.lock();
        let was_offline = g.offline.take().is_some();
        let halted = g.state == PrinterState::Error;
        if !was_offline && !halted {
            warn!(printer = %self.name, "simulated printer: go_online while online; ignored");
            return;
        }
        if halted {
            g.state = PrinterState::Idle;
            g.halt = None;
        }
        self.emit(&mut g, PrinterEvent::Online);
        for ev in std::mem::take(&mut g.held) {
            self.send(ev);
        }
        self.publish(&g);
    }

    /// The firmware halts (emergency stop, MCU error): `Halted`, and when a print was
    /// running `Finished` with `Failed(message)`; status Error until [`go_online`]
    /// (a restart). A halt while offline is found when the printer answers again: the
    /// events held while it was away come first, with no `Online`.
    ///
    /// [`go_online`]: SimPrinter::go_online
    pub fn halt(&self, message: &str) {
        let mut g = self.lock();
        if g.offline.take().is_some() {
            for ev in std::mem::take(&mut g.held) {
                self.send(ev);
            }
        }
        self.emit(&mut g, PrinterEvent::Halted { message: message.to_string() });
        if g.job.is_some() {
            self.end_print(&mut g, JobOutcome::Failed(message.to_string()));
        }
        g.state = PrinterState::Error;
        g.halt = Some(message.to_string());
        self.publish(&g);
    }

    /// The cameras the printer's host reports.
    pub fn set_cameras(&self, cameras: Vec<CameraInfo>) {
        self.out.publish_cameras(cameras);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    fn send(&self, ev: PrinterEvent) {
        self.out.emit(ev);
    }

    /// Reports an event now, or holds a print event until the printer is back online.
    fn emit(&self, g: &mut Inner, ev: PrinterEvent) {
        let link_event = matches!(ev, PrinterEvent::Offline { .. } | PrinterEvent::Online);
        if g.offline.is_some() && !link_event {
            g.held.push(ev);
        } else {
            self.send(ev);
        }
    }

    fn end_print(&self, g: &mut Inner, outcome: JobOutcome) {
        let Some(job) = g.job.take() else { return };
        let file = g.file.clone().unwrap_or_default();
        g.state = PrinterState::Idle;
        self.emit(g, PrinterEvent::Finished { job, file, outcome });
    }

    fn set_paused(&self, g: &mut Inner, paused: bool) {
        let job = g.job.clone();
        if paused {
            g.state = PrinterState::Paused;
            self.emit(g, PrinterEvent::Paused { job });
        } else {
            g.state = PrinterState::Printing;
            self.emit(g, PrinterEvent::Resumed { job });
        }
        self.publish(g);
    }

    fn publish(&self, g: &Inner) {
        let state = if g.offline.is_some() { PrinterState::Offline } else { g.state };
        let printing = matches!(g.state, PrinterState::Printing | PrinterState::Paused);
        let temperatures = if g.offline.is_some() {
            Vec::new()
        } else {
            let (hotend, bed): (f64, f64) = if printing { (210.0, 60.0) } else { (0.0, 0.0) };
            vec![
                Temperature { name: "extruder".into(), actual: hotend.max(24.0), target: hotend },
                Temperature { name: "heater_bed".into(), actual: bed.max(24.0), target: bed },
            ]
        };
        let status = PrinterStatus {
            state,
            file: g.file.clone(),
            job: g.job.clone(),
            progress: if g.job.is_some() { g.progress } else { None },
            temperatures,
            message: g.offline.clone().or_else(|| g.halt.clone()),
        };
        self.out.publish_status(status);
    }

    /// The checks before an action is carried out; also after its delay.
    fn check(&self, g: &Inner, action: &str, allowed: &[PrinterState]) -> Result<(), PrinterError> {
        if g.offline.is_some() || g.stopped {
            return Err(PrinterError::NotConnected { printer: self.name.clone() });
        }
        if !allowed.contains(&g.state) {
            return Err(PrinterError::WrongState { printer: self.name.clone(), action: action.into(), state: g.state });
        }
        Ok(())
    }

    /// An action as the simulated printer carries it out: recorded when it arrives (also
    /// when refused), checked, held for the action delay, checked again, applied.
    async fn action(&self, act: Act) -> Result<(), PrinterError> {
        let (action, allowed) = (act.as_str(), act.allowed());
        let apply: fn(&SimPrinter, &mut Inner) = match act {
            Act::Pause => |sim, g| sim.set_paused(g, true),
            Act::Resume => |sim, g| sim.set_paused(g, false),
            Act::Cancel => |sim, g| sim.end_print(g, JobOutcome::Cancelled),
        };
        lock(&self.actions).push((action.to_string(), tokio::time::Instant::now().into_std()));
        info!(printer = %self.name, action, "simulated printer: action received");
        self.check(&self.lock(), action, allowed)?;
        if let Some(message) = lock(&self.refusal).clone() {
            return Err(PrinterError::Refused { printer: self.name.clone(), action: action.into(), message });
        }
        let delay = *lock(&self.action_delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut g = self.lock();
        self.check(&g, action, allowed)?;
        apply(self, &mut g);
        self.publish(&g);
        Ok(())
    }

    /// One step of the script's print: adds `printed` to the printing time when the
    /// print `job` is printing. `None` when `job` is over, else whether it is complete.
    fn advance(&self, job: &JobId, printed: Duration, elapsed: &mut Duration, total: Duration) -> Option<()> {
        let mut g = self.lock();
        if g.job.as_ref() != Some(job) || g.stopped {
            return None;
        }
        if g.state == PrinterState::Printing {
            *elapsed += printed;
        }
        if *elapsed >= total {
            g.progress = Some(1.0);
            self.end_print(&mut g, JobOutcome::Completed);
            self.publish(&g);
            return None;
        }
        g.progress = Some(elapsed.as_secs_f64() / total.as_secs_f64());
        self.publish(&g);
        Some(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for SimPrinter {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.script).take() {
            task.abort();
        }
    }
}

/// The settings file's script; ends when the printer is dropped or stopped.
async fn script(sim: Weak<SimPrinter>, cfg: SimConfig, mut status: watch::Receiver<PrinterStatus>) {
    let start_after = Duration::from_secs_f64(cfg.start_after_secs.clamp(0.0, MAX_SECS));
    let total = Duration::from_secs_f64(cfg.print_secs.clamp(0.001, MAX_SECS));
    let tick = (total / 100).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        if status.wait_for(|s| s.state == PrinterState::Idle).await.is_err() {
            return;
        }
        tokio::time::sleep(start_after).await;
        let job = {
            let Some(sim) = sim.upgrade() else { return };
            let g = sim.lock();
            if g.stopped {
                return;
            }
            if g.state != PrinterState::Idle || g.offline.is_some() {
                // Busy or away meanwhile; wait for idle again.
                continue;
            }
            drop(g);
            sim.start_print(&cfg.file)
        };
        let mut elapsed = Duration::ZERO;
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(tick).await;
            let now = tokio::time::Instant::now();
            let Some(sim) = sim.upgrade() else { return };
            if sim.advance(&job, now - last, &mut elapsed, total).is_none() {
                break;
            }
            last = now;
        }
        if !cfg.repeat {
            return;
        }
    }
}

#[async_trait::async_trait]
impl PrinterLink for SimPrinter {
    fn channels(&self) -> &LinkChannels {
        &self.out
    }
    fn action_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
    async fn request(&self, act: Act) -> Result<(), PrinterError> {
        self.action(act).await
    }
    /// The simulated printer's own checks (it records refused actions too); its state
    /// changes as the action is applied, so the action is confirmed when this returns.
    async fn perform(&self, act: Act) -> Result<(), PrinterError> {
        self.action(act).await
    }
    /// Ends the script; later actions are refused as `NotConnected`.
    async fn stop(&self) {
        self.lock().stopped = true;
        let task = lock(&self.script).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::broadcast;
    use tokio::sync::broadcast::error::TryRecvError;

    fn drain(rx: &mut broadcast::Receiver<PrinterEvent>) -> Vec<PrinterEvent> {
        let mut out = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(ev) => out.push(ev),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return out,
                Err(TryRecvError::Lagged(n)) => panic!("lagged by {n}"),
            }
        }
    }

    fn state(sim: &SimPrinter) -> PrinterState {
        sim.out.state()
    }

    #[tokio::test]
    async fn events_in_order_and_the_first_subscriber_gets_the_backlog() {
        let sim = SimPrinter::new("sim");
        assert_eq!(state(&sim), PrinterState::Idle);
        let job = sim.start_print("cube.gcode");
        sim.set_progress(0.5);
        assert_eq!(sim.status().borrow().progress, Some(0.5));
        sim.user_pause();
        sim.user_resume();
        sim.finish(JobOutcome::Completed);
        sim.finish(JobOutcome::Completed); // no print: ignored

        let mut first = sim.events();
        let mut later = sim.events();
        let expected = vec![
            PrinterEvent::PrintStarted { job: job.clone(), file: "cube.gcode".into() },
            PrinterEvent::Paused { job: Some(job.clone()) },
            PrinterEvent::Resumed { job: Some(job.clone()) },
            PrinterEvent::Finished { job: job.clone(), file: "cube.gcode".into(), outcome: JobOutcome::Completed },
        ];
        assert_eq!(drain(&mut first), expected);
        assert!(drain(&mut later).is_empty(), "a later subscriber gets only new events");

        let next = sim.start_print("cube.gcode");
        assert_ne!(next, job, "every print gets a fresh id");
        assert_eq!(sim.start_print("other.gcode"), next, "a running print stays the one");
        let started = PrinterEvent::PrintStarted { job: next, file: "cube.gcode".into() };
        assert_eq!(drain(&mut first), vec![started.clone()]);
        assert_eq!(drain(&mut later), vec![started]);
        let s = sim.status().borrow().clone();
        assert_eq!((s.state, s.progress, s.file.as_deref()), (PrinterState::Printing, Some(0.0), Some("cube.gcode")));
    }

    #[tokio::test]
    async fn actions_change_state_or_are_refused_and_are_recorded() {
        let sim = SimPrinter::new("sim");
        let mut rx = sim.events();
        let e = sim.pause().await.unwrap_err();
        assert!(matches!(e, PrinterError::WrongState { state: PrinterState::Idle, .. }), "{e}");
        assert!(matches!(sim.cancel().await, Err(PrinterError::WrongState { .. })));

        let job = sim.start_print("a.gcode");
        assert!(matches!(sim.resume().await, Err(PrinterError::WrongState { state: PrinterState::Printing, .. })));
        sim.pause().await.unwrap();
        assert_eq!(state(&sim), PrinterState::Paused);
        assert!(matches!(sim.pause().await, Err(PrinterError::WrongState { state: PrinterState::Paused, .. })));
        sim.resume().await.unwrap();
        assert_eq!(state(&sim), PrinterState::Printing);
        sim.cancel().await.unwrap();
        assert_eq!(state(&sim), PrinterState::Idle);
        assert_eq!(sim.status().borrow().job, None);

        let events = drain(&mut rx);
        assert_eq!(
            events[1..],
            [
                PrinterEvent::Paused { job: Some(job.clone()) },
                PrinterEvent::Resumed { job: Some(job.clone()) },
                PrinterEvent::Finished { job, file: "a.gcode".into(), outcome: JobOutcome::Cancelled },
            ]
        );
        let names: Vec<String> = sim.actions().into_iter().map(|(a, _)| a).collect();
        assert_eq!(names, ["pause", "cancel", "resume", "pause", "pause", "resume", "cancel"]);
        let times: Vec<Instant> = sim.actions().into_iter().map(|(_, t)| t).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));

        sim.start_print("b.gcode");
        sim.go_offline("unplugged");
        assert!(matches!(sim.pause().await, Err(PrinterError::NotConnected { .. })));
        sim.stop().await;
        sim.go_online();
        assert!(matches!(sim.pause().await, Err(PrinterError::NotConnected { .. })), "stopped");
    }

    #[tokio::test(start_paused = true)]
    async fn action_delay_holds_the_confirmation() {
        let sim = SimPrinter::new("sim").with_action_delay(Duration::from_secs(3));
        let mut status = sim.status();
        sim.start_print("a.gcode");
        let t0 = tokio::time::Instant::now();
        sim.pause().await.unwrap();
        assert!(t0.elapsed() >= Duration::from_secs(3));
        assert_eq!(status.borrow_and_update().state, PrinterState::Paused);
        assert_eq!(sim.actions()[0].1, t0.into_std(), "recorded when it arrived");

        // The print ends during the delay: the action is refused then.
        let sim2 = sim.clone();
        let resume = tokio::spawn(async move { sim2.resume().await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        sim.finish(JobOutcome::Failed("nozzle clog".into()));
        assert!(matches!(resume.await.unwrap(), Err(PrinterError::WrongState { state: PrinterState::Idle, .. })));
    }

    #[tokio::test]
    async fn offline_holds_print_events_until_back_and_halt_fails_the_print() {
        let sim = SimPrinter::new("sim");
        let mut rx = sim.events();
        let job = sim.start_print("a.gcode");
        sim.go_offline("network down");
        let s = sim.status().borrow().clone();
        assert_eq!((s.state, s.message.as_deref()), (PrinterState::Offline, Some("network down")));
        sim.user_pause();
        sim.finish(JobOutcome::Cancelled);
        assert_eq!(state(&sim), PrinterState::Offline);
        sim.go_online();
        assert_eq!(state(&sim), PrinterState::Idle);
        assert_eq!(
            drain(&mut rx),
            [
                PrinterEvent::PrintStarted { job: job.clone(), file: "a.gcode".into() },
                PrinterEvent::Offline { reason: "network down".into() },
                PrinterEvent::Online,
                PrinterEvent::Paused { job: Some(job.clone()) },
                PrinterEvent::Finished { job, file: "a.gcode".into(), outcome: JobOutcome::Cancelled },
            ]
        );

        let job = sim.start_print("b.gcode");
        sim.go_offline("usb");
        sim.go_online();
        assert_eq!(state(&sim), PrinterState::Printing, "back to the state before");
        sim.halt("MCU 'mcu' shutdown: Timer too close");
        let s = sim.status().borrow().clone();
        assert_eq!(s.state, PrinterState::Error);
        assert!(s.message.unwrap().contains("Timer too close"));
        assert!(matches!(sim.cancel().await, Err(PrinterError::WrongState { state: PrinterState::Error, .. })));
        sim.go_online();
        assert_eq!(state(&sim), PrinterState::Idle);
        let failed = JobOutcome::Failed("MCU 'mcu' shutdown: Timer too close".into());
        assert_eq!(
            drain(&mut rx),
            [
                PrinterEvent::PrintStarted { job: job.clone(), file: "b.gcode".into() },
                PrinterEvent::Offline { reason: "usb".into() },
                PrinterEvent::Online,
                PrinterEvent::Halted { message: "MCU 'mcu' shutdown: Timer too close".into() },
                PrinterEvent::Finished { job, file: "b.gcode".into(), outcome: failed },
                PrinterEvent::Online,
            ]
        );
    }

    #[tokio::test]
    async fn cameras_are_published() {
        let sim = SimPrinter::new("sim");
        let mut rx = sim.cameras();
        assert!(rx.borrow_and_update().is_empty());
        let cam = CameraInfo {
            name: "bed".into(),
            snapshot_url: Some("http://127.0.0.1/snap".into()),
            stream_url: None,
            rotation: 0,
            flip_horizontal: false,
            flip_vertical: false,
            target_fps: None,
        };
        sim.set_cameras(vec![cam.clone()]);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow(), vec![cam]);
    }

    async fn next(rx: &mut broadcast::Receiver<PrinterEvent>) -> PrinterEvent {
        tokio::time::timeout(Duration::from_secs(3600), rx.recv()).await.expect("an event").expect("open")
    }

    #[tokio::test(start_paused = true)]
    async fn scripted_print_starts_pauses_its_clock_and_completes() {
        let cfg = SimConfig { start_after_secs: 2.0, print_secs: 100.0, ..SimConfig::new("sim") };
        let t0 = tokio::time::Instant::now();
        let link = SimPrinter::from_config(&cfg);
        let mut rx = link.events();
        let PrinterEvent::PrintStarted { job, file } = next(&mut rx).await else { panic!("not a start") };
        assert_eq!(file, "demo-print.gcode");
        assert_eq!(t0.elapsed().as_secs(), 2);

        tokio::time::sleep(Duration::from_secs(50)).await;
        let half = link.status().borrow().progress.unwrap();
        assert!((0.45..=0.55).contains(&half), "{half}");
        link.pause().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        let still = link.status().borrow().progress.unwrap();
        assert!((still - half).abs() < 0.02, "paused: the clock stops ({half} -> {still})");
        link.resume().await.unwrap();
        assert!(matches!(next(&mut rx).await, PrinterEvent::Paused { .. }));
        assert!(matches!(next(&mut rx).await, PrinterEvent::Resumed { .. }));

        let done = next(&mut rx).await;
        assert_eq!(done, PrinterEvent::Finished { job, file, outcome: JobOutcome::Completed });
        let took = t0.elapsed().as_secs_f64();
        assert!((131.0..=134.0).contains(&took), "2 s wait + 100 s printing + 30 s paused, took {took}");
        assert_eq!(state(&link), PrinterState::Idle);
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(drain(&mut rx).is_empty(), "no repeat: one print only");
        link.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn scripted_print_repeats_after_a_cancel() {
        let cfg = SimConfig { start_after_secs: 5.0, print_secs: 60.0, repeat: true, ..SimConfig::new("sim") };
        let link: Arc<dyn PrinterLink> = SimPrinter::start(&cfg);
        let mut rx = link.events();
        let PrinterEvent::PrintStarted { job: first, .. } = next(&mut rx).await else { panic!() };
        tokio::time::sleep(Duration::from_secs(10)).await;
        link.cancel().await.unwrap();
        assert!(matches!(next(&mut rx).await, PrinterEvent::Finished { outcome: JobOutcome::Cancelled, .. }));
        let t = tokio::time::Instant::now();
        let PrinterEvent::PrintStarted { job: second, .. } = next(&mut rx).await else { panic!() };
        assert_ne!(first, second);
        assert_eq!(t.elapsed().as_secs(), 5);
        link.stop().await;
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(drain(&mut rx).is_empty(), "stopped: the script ends");
        assert!(matches!(link.cancel().await, Err(PrinterError::NotConnected { .. })));
    }

    #[test]
    fn config_defaults_and_validation() {
        use figment::providers::{Format, Toml};
        let cfg: SimConfig = figment::Figment::from(Toml::string("name = \"sim\"")).extract().unwrap();
        assert_eq!(cfg, SimConfig::new("sim"));
        assert_eq!((cfg.file.as_str(), cfg.start_after_secs, cfg.print_secs, cfg.repeat), ("demo-print.gcode", 2.0, 600.0, false));
        assert!(cfg.validate("printers[0]").is_ok());
        for (f, key) in [
            (&(|c: &mut SimConfig| c.print_secs = 0.0) as &dyn Fn(&mut SimConfig), "printers[0].print_secs"),
            (&|c| c.print_secs = f64::INFINITY, "printers[0].print_secs"),
            (&|c| c.start_after_secs = -1.0, "printers[0].start_after_secs"),
            (&|c| c.file = " ".into(), "printers[0].file"),
        ] {
            let mut c = SimConfig::new("sim");
            f(&mut c);
            let e = c.validate("printers[0]").unwrap_err().to_string();
            assert!(e.contains(key) && (e.contains("use") || e.contains("give")), "{e}");
        }
    }
}
