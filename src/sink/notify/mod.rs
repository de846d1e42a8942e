//! Notifications people see: `[[notify]]` entries (a webhook, ntfy, Telegram, Discord),
//! each with the alerts it gets.
//!
//! The sink follows the watches' events and views and turns them into [`Alert`]s:
//!
//! | alert (`events`) | when |
//! |---|---|
//! | `warn` | a warning decision (its annotated frame attached) |
//! | `pause` | the action on a failing print was carried out (paused, cancelled, or reported with `notify`), or failed; also a pause asked by a person (Home Assistant's button) |
//! | `finished` | a print completed |
//! | `failed` | a print was cancelled or stopped on an error |
//! | `printer_offline` | the printer has been unreachable for `offline_after_secs`; and when it is back |
//! | `camera_offline` | the camera has given no frames for `offline_after_secs`; and when it is back |
//!
//! While a printer's alerts are snoozed (Home Assistant's "Snooze alerts", see
//! [`crate::watch::control::Command::Snooze`]) its failure alerts (`warn`, `pause`,
//! `camera_offline`) are held back; print ends and an offline printer still go out.
//! Each entry has its own rate limit per printer ([`ratelimit`]), its own queue and task
//! ([`deliver`]): a dead service never delays another, and nothing here waits on the
//! watches.
//!
//! - [`config`]: the `[[notify]]` settings.
//! - [`alert`]: the alert and its words.
//! - [`ratelimit`]: the token bucket per printer.
//! - [`deliver`]: tries, waits, how answers are judged.
//! - [`webhook`], [`ntfy`], [`telegram`], [`discord`]: each service's request.

pub mod alert;
pub mod config;
pub mod deliver;
pub mod discord;
pub mod ntfy;
pub mod ratelimit;
pub mod telegram;
pub mod webhook;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{broadcast, mpsc, watch};

pub use alert::Alert;
pub use config::{AlertKind, Kind, NotifyConfig};
use deliver::{Frame, Job, Service};
use ratelimit::{RateLimit, Verdict};

use crate::printer::JobOutcome;
use crate::watch::view::{Board, Decision, PrinterView, WatchPhase};
use crate::watch::{Action, WatchEvent};

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("the HTTP client for notifications cannot be built: {0}")]
    Http(String),
}

/// How long a pause alert waits for its annotated frame to be saved.
const FRAME_WAIT: Duration = Duration::from_secs(3);
/// The largest frame attached.
const MAX_FRAME_BYTES: u64 = 8 << 20;

/// The service for an entry.
pub fn service(cfg: &NotifyConfig) -> Box<dyn Service> {
    match cfg.kind {
        Kind::Webhook => Box::new(webhook::Webhook { cfg: cfg.clone() }),
        Kind::Ntfy => Box::new(ntfy::Ntfy { cfg: cfg.clone() }),
        Kind::Telegram => Box::new(telegram::Telegram { cfg: cfg.clone() }),
        Kind::Discord => Box::new(discord::Discord { cfg: cfg.clone() }),
    }
}

/// The HTTP client of the notifications (rustls; per-request timeouts come from each entry).
pub fn http_client() -> Result<reqwest::Client, NotifyError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("printvigil/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| NotifyError::Http(e.without_url().to_string()))
}

/// What the sink reads.
pub struct Inputs {
    pub board: Arc<Board>,
    pub events: broadcast::Receiver<WatchEvent>,
    pub printers: Vec<String>,
    pub host: String,
}

/// A running notification sink.
pub struct NotifySink {
    stop: watch::Sender<bool>,
    dispatcher: tokio::task::JoinHandle<()>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl NotifySink {
    pub fn start(entries: &[NotifyConfig], inputs: Inputs) -> Result<NotifySink, NotifyError> {
        let http = http_client()?;
        let (stop, stop_rx) = watch::channel(false);
        let mut outs = Vec::new();
        let mut workers = Vec::new();
        for cfg in entries {
            let (tx, rx) = mpsc::channel(deliver::QUEUE);
            workers.push(tokio::spawn(deliver::run(service(cfg), http.clone(), cfg.clone(), rx)));
            outs.push(Out {
                limit: RateLimit::new(cfg.max_burst, Duration::from_secs_f64(cfg.refill_secs)),
                cfg: cfg.clone(),
                tx,
                full_reported: false,
            });
        }
        let changed = crate::sink::views::follow(&inputs.board, &inputs.printers, &stop_rx);
        let d = Dispatcher {
            board: inputs.board,
            host: inputs.host,
            outs,
            pending: HashMap::new(),
            last_frame: HashMap::new(),
            printer_down: HashMap::new(),
            camera_down: HashMap::new(),
            reported: HashSet::new(),
            phases: HashMap::new(),
            pending_return: Vec::new(),
            snooze_said: HashSet::new(),
        };
        let dispatcher = tokio::spawn(d.run(inputs.events, changed, stop_rx));
        Ok(NotifySink { stop, dispatcher, workers })
    }

    /// Stops taking alerts; what is queued gets until `budget` to go out.
    pub async fn stop(self, budget: Duration) {
        let deadline = tokio::time::Instant::now() + budget;
        let _ = self.stop.send(true);
        let _ = self.dispatcher.await;
        for w in self.workers {
            let abort = w.abort_handle();
            if tokio::time::timeout_at(deadline, w).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// One entry as the dispatcher sees it.
struct Out {
    cfg: NotifyConfig,
    limit: RateLimit,
    tx: mpsc::Sender<Job>,
    full_reported: bool,
}

/// A pause alert waiting for its frame.
struct Pending {
    alert: Alert,
    until: Instant,
}

struct Dispatcher {
    board: Arc<Board>,
    host: String,
    outs: Vec<Out>,
    pending: HashMap<String, Pending>,
    /// Each printer's last saved decision frame, and when it came.
    last_frame: HashMap<String, (PathBuf, Instant)>,
    /// Since when a printer / its camera is out (and why).
    printer_down: HashMap<String, (Instant, String)>,
    camera_down: HashMap<String, (Instant, String)>,
    /// (entry, printer, kind) whose outage was reported: the return is reported too.
    reported: HashSet<(usize, String, AlertKind)>,
    phases: HashMap<String, WatchPhase>,
    /// Printers back online, announced at the next tick.
    pending_return: Vec<String>,
    /// Printers whose snooze was said in the log (once per snooze).
    snooze_said: HashSet<String>,
}

impl Dispatcher {
    async fn run(mut self, mut events: broadcast::Receiver<WatchEvent>, changed: Arc<crate::sink::views::Changed>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                ev = events.recv() => match ev {
                    Ok(ev) => self.on_event(ev).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => tracing::debug!("notify: {n} watch events missed"),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = changed.wait() => {
                    for name in changed.take() {
                        self.on_view(&name);
                    }
                }
                _ = tick.tick() => self.on_tick().await,
            }
        }
        // Pause alerts still waiting for a frame go without it.
        for (_, p) in std::mem::take(&mut self.pending) {
            self.dispatch(p.alert).await;
        }
    }

    fn view(&self, printer: &str) -> PrinterView {
        self.board.view(printer).map(|rx| rx.borrow().clone()).unwrap_or_else(|| PrinterView::new(printer))
    }

    fn alert(&self, kind: AlertKind, event: &'static str, printer: &str, title: String, text: String) -> Alert {
        let v = self.view(printer);
        Alert {
            kind,
            event,
            printer: printer.to_string(),
            file: v.file.clone(),
            title,
            text,
            p: None,
            score: None,
            frame: None,
            at: SystemTime::now(),
            host: self.host.clone(),
            held_back: 0,
        }
    }

    async fn on_event(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::Warned { printer, p, frame } => {
                let v = self.view(&printer);
                let file = alert::file_words(v.file.as_deref());
                let mut a = self.alert(
                    AlertKind::Warn,
                    "warning",
                    &printer,
                    format!("{printer}: the print may be failing"),
                    format!("{file} on {printer} may be failing: {}; watching closely", alert::seen(Some(p))),
                );
                a.p = Some(p);
                a.score = v.normalized_p;
                a.frame = frame;
                self.dispatch(a).await;
            }
            WatchEvent::Acting { printer, action: Action::Notify, .. } => {
                let v = self.view(&printer);
                let file = alert::file_words(v.file.as_deref());
                let p = v.last_decision.as_ref().map(|d| d.p).or(v.p);
                let mut a = self.alert(
                    AlertKind::Pause,
                    "failure_detected",
                    &printer,
                    format!("{printer}: print failing"),
                    format!("{file} on {printer} is failing: {}; the print goes on (action_on_failure = notify)", alert::seen(p)),
                );
                a.p = p;
                a.score = v.normalized_p;
                self.wait_for_frame(a).await;
            }
            WatchEvent::Acted { printer, action, result, .. } if action != Action::Notify => {
                let v = self.view(&printer);
                let file = alert::file_words(v.file.as_deref());
                let decided = v.last_decision.as_ref().is_some_and(|d| d.decision == Decision::Pause);
                let p = v.last_decision.as_ref().map(|d| d.p).or(v.p);
                let why = if decided { alert::seen(p) } else { "asked for by a person (not a detection)".into() };
                let (event, title, text) = match (&result, action) {
                    (Ok(()), Action::Cancel) => ("cancelled", format!("{printer}: print cancelled"), format!("cancelled {file} on {printer}: {why}")),
                    (Ok(()), _) => ("paused", format!("{printer}: print paused"), format!("paused {file} on {printer}: {why}")),
                    (Err(e), _) => (
                        "pause_failed",
                        format!("{printer}: could not {} the print", action.as_str()),
                        format!("could not {} {file} on {printer} ({e}): {why}; check the printer now", action.as_str()),
                    ),
                };
                let mut a = self.alert(AlertKind::Pause, event, &printer, title, text);
                a.p = p.filter(|_| decided);
                a.score = v.normalized_p.filter(|_| decided);
                if decided {
                    self.wait_for_frame(a).await;
                } else {
                    self.dispatch(a).await;
                }
            }
            WatchEvent::FrameSaved { printer, path } => {
                self.last_frame.insert(printer.clone(), (path.clone(), Instant::now()));
                if let Some(mut p) = self.pending.remove(&printer) {
                    p.alert.frame = Some(path);
                    self.dispatch(p.alert).await;
                }
            }
            WatchEvent::PrintFinished { printer, outcome, .. } => {
                let v = self.view(&printer);
                let file = alert::file_words(v.file.as_deref());
                let (kind, event, title, text) = match outcome {
                    JobOutcome::Completed => (AlertKind::Finished, "print_finished", format!("{printer}: print finished"), format!("{file} finished on {printer}")),
                    JobOutcome::Cancelled => (AlertKind::Failed, "print_failed", format!("{printer}: print cancelled"), format!("{file} on {printer} was cancelled")),
                    JobOutcome::Failed(why) => (AlertKind::Failed, "print_failed", format!("{printer}: print failed"), format!("{file} on {printer} stopped on an error: {why}")),
                };
                // A pause alert still waiting goes first.
                if let Some(p) = self.pending.remove(&printer) {
                    self.dispatch(p.alert).await;
                }
                let a = self.alert(kind, event, &printer, title, text);
                self.dispatch(a).await;
            }
            WatchEvent::CameraFailed { printer, message } => {
                self.camera_down.entry(printer).or_insert((Instant::now(), message));
            }
            WatchEvent::CameraBack { printer } => {
                self.camera_down.remove(&printer);
                let a = self.alert(
                    AlertKind::CameraOffline,
                    "camera_back",
                    &printer,
                    format!("{printer}: camera back"),
                    format!("{printer}'s camera gives frames again; detection goes on"),
                );
                self.dispatch_return(a).await;
            }
            _ => {}
        }
    }

    /// A pause alert goes with its frame: the one just saved, or the one saved within
    /// [`FRAME_WAIT`] (the frame is drawn and written off the watch loop).
    async fn wait_for_frame(&mut self, mut a: Alert) {
        if let Some((path, at)) = self.last_frame.get(&a.printer)
            && at.elapsed() < FRAME_WAIT
        {
            a.frame = Some(path.clone());
            self.last_frame.remove(&a.printer);
            return self.dispatch(a).await;
        }
        if let Some(old) = self.pending.insert(a.printer.clone(), Pending { alert: a, until: Instant::now() + FRAME_WAIT }) {
            self.dispatch(old.alert).await;
        }
    }

    fn on_view(&mut self, printer: &str) {
        let v = self.view(printer);
        let before = self.phases.insert(printer.to_string(), v.phase);
        if v.phase == WatchPhase::Offline {
            // A printer offline from the start counts too (it never came up).
            if before != Some(WatchPhase::Offline) {
                let why = v.offline_reason.clone().unwrap_or_else(|| "no answer".into());
                self.printer_down.insert(printer.to_string(), (Instant::now(), why));
            }
        } else if self.printer_down.remove(printer).is_some() {
            self.pending_return.push(printer.to_string());
        }
        if !v.snoozed(SystemTime::now()) {
            self.snooze_said.remove(printer);
        }
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self.pending.iter().filter(|(_, p)| p.until <= now).map(|(k, _)| k.clone()).collect();
        for k in due {
            if let Some(p) = self.pending.remove(&k) {
                self.dispatch(p.alert).await;
            }
        }
        for printer in std::mem::take(&mut self.pending_return) {
            let a = self.alert(
                AlertKind::PrinterOffline,
                "printer_online",
                &printer,
                format!("{printer}: back online"),
                format!("{printer} is back online"),
            );
            self.dispatch_return(a).await;
        }
        // Outages that have lasted long enough for an entry.
        let mut outages = Vec::new();
        for (printer, (since, why)) in &self.printer_down {
            outages.push((AlertKind::PrinterOffline, printer.clone(), *since, why.clone()));
        }
        for (printer, (since, why)) in &self.camera_down {
            outages.push((AlertKind::CameraOffline, printer.clone(), *since, why.clone()));
        }
        for (kind, printer, since, why) in outages {
            for i in 0..self.outs.len() {
                let key = (i, printer.clone(), kind);
                if self.reported.contains(&key) || since.elapsed() < self.outs[i].cfg.offline_after() || !self.outs[i].cfg.events.contains(&kind) {
                    continue;
                }
                // A snoozed camera outage is told when the snooze ends, if it still lasts.
                if kind.snoozable() && self.view(&printer).snoozed(SystemTime::now()) {
                    continue;
                }
                self.reported.insert(key);
                let mins = since.elapsed().as_secs_f64() / 60.0;
                let a = match kind {
                    AlertKind::PrinterOffline => self.alert(
                        kind,
                        "printer_offline",
                        &printer,
                        format!("{printer}: offline"),
                        format!("{printer} is offline ({why}) for {mins:.0} min; nothing is watched until it is back"),
                    ),
                    _ => self.alert(
                        kind,
                        "camera_offline",
                        &printer,
                        format!("{printer}: camera gives no frames"),
                        format!("{printer}'s camera gives no frames ({why}); the print is not watched until frames come back"),
                    ),
                };
                self.send_to(i, a).await;
            }
        }
    }

    /// "Back" alerts go only to the entries that reported the outage.
    async fn dispatch_return(&mut self, a: Alert) {
        for i in 0..self.outs.len() {
            if self.reported.remove(&(i, a.printer.clone(), a.kind)) {
                self.send_to(i, a.clone()).await;
            }
        }
    }

    /// Sends an alert to every entry that takes its kind.
    async fn dispatch(&mut self, a: Alert) {
        for i in 0..self.outs.len() {
            if self.outs[i].cfg.events.contains(&a.kind) {
                self.send_to(i, a.clone()).await;
            }
        }
    }

    async fn send_to(&mut self, i: usize, mut a: Alert) {
        if a.kind.snoozable() && self.view(&a.printer).snoozed(SystemTime::now()) {
            if self.snooze_said.insert(a.printer.clone()) {
                tracing::info!(printer = a.printer, "notify: alerts are snoozed; held back: {}", a.event);
            }
            return;
        }
        let out = &mut self.outs[i];
        match out.limit.check(&a.printer, Instant::now()) {
            Verdict::HeldBack => {
                tracing::debug!(printer = a.printer, "notify {}: {} held back by the rate limit", out.cfg.label(), a.event);
                return;
            }
            Verdict::Send { held_back } => a.held_back = held_back,
        }
        let frame = match (out.cfg.frame, &a.frame) {
            (config::FrameMode::Attach, Some(path)) => read_frame(path).await,
            _ => None,
        };
        let frame_url = match (out.cfg.frame, &a.frame, &out.cfg.frame_url_base) {
            (config::FrameMode::Url, Some(path), Some(base)) => frame_url(base, path),
            _ => None,
        };
        let job = Job { alert: a, frame, frame_url };
        match out.tx.try_send(job) {
            Ok(()) => out.full_reported = false,
            Err(mpsc::error::TrySendError::Full(job)) => {
                if !out.full_reported {
                    tracing::warn!("notify {}: too many messages waiting (the service is slow or down); dropping {}", out.cfg.label(), job.alert.event);
                    out.full_reported = true;
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// The frame's bytes (none when it is gone or too large).
async fn read_frame(path: &Path) -> Option<Arc<Frame>> {
    let meta = tokio::fs::metadata(path).await.ok()?;
    if meta.len() > MAX_FRAME_BYTES {
        return None;
    }
    let jpeg = tokio::fs::read(path).await.ok()?;
    let name = path.file_name()?.to_string_lossy().into_owned();
    Some(Arc::new(Frame { jpeg, name }))
}

/// `<base>/<printer folder>/<file name>` for a frame under `state_dir/frames/`.
pub fn frame_url(base: &str, path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let dir = path.parent()?.file_name()?.to_str()?;
    Some(format!("{}/{dir}/{name}", base.trim_end_matches('/')))
}
