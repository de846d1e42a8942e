//! What each watch shows the outside world, and the board where the sinks find it.
//!
//! A watch publishes one [`PrinterView`] per printer, a snapshot replaced whenever
//! something a person would look at changes: the print, the latest score, the last
//! decision, the camera, whether detection is on. Sinks that show state (MQTT retained
//! topics, Home Assistant entities, metrics, the status page) read these snapshots; sinks
//! that tell people what *happened* (notifications, MQTT events) follow the
//! [`WatchEvent`](super::WatchEvent) broadcast instead. Both flow one way, out of the
//! watch: a sink never reaches into a watch's state.
//!
//! The [`Board`] is the one place that knows every printer's view and the way to send
//! that printer's watch a [`Command`](super::control::Command). The supervisor registers
//! each watch on it; sinks get an `Arc<Board>` and nothing else of the watches.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use super::control::{Command, CommandError, Outcome};

/// Where a watch is in a printer's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WatchPhase {
    /// The link has not reported yet, or the printer is not reachable.
    #[default]
    Offline,
    Idle,
    Printing,
    Paused,
}

/// A decision taken on a scored frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Nothing wrong seen.
    Ok,
    /// A failure is suspected.
    Warn,
    /// A failure is certain enough to act on (the action may be off: `notify`, cooldown).
    Pause,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Ok => "ok",
            Decision::Warn => "warn",
            Decision::Pause => "pause",
        }
    }
}

/// The latest decision and when it was taken.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastDecision {
    pub decision: Decision,
    #[serde(with = "unix_secs")]
    pub at: SystemTime,
    /// The frame's `p` (Obico's per-frame failure score).
    pub p: f64,
}

/// One printer as its watch sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrinterView {
    pub printer: String,
    pub phase: WatchPhase,
    /// Why the printer is offline, when it is.
    pub offline_reason: Option<String>,
    /// The print being watched (or the last one, once it ended).
    pub file: Option<String>,
    pub job: Option<String>,
    /// 0.0 ..= 1.0, when the printer reports it.
    pub progress: Option<f64>,
    /// Frames scored in this print.
    pub frame_num: u64,
    /// The last frame's `p`.
    pub p: Option<f64>,
    /// The smoothed score (Obico's `ewm_mean`).
    pub ewm: Option<f64>,
    /// The score against this print's own baseline (`> 1`: worse than usual).
    pub normalized_p: Option<f64>,
    pub last_decision: Option<LastDecision>,
    /// printvigil already acted on this print.
    pub acted: bool,
    /// Detection is on for the current print (a person can turn it off for one print).
    pub watching: bool,
    /// Alerts to people are held back until then.
    #[serde(with = "unix_secs_opt")]
    pub snoozed_until: Option<SystemTime>,
    /// Why the camera gives no frames, while it does not.
    pub camera_error: Option<String>,
    /// The latest annotated decision frame on disk.
    pub last_frame: Option<PathBuf>,
}

impl PrinterView {
    pub fn new(printer: &str) -> Self {
        Self {
            printer: printer.to_string(),
            phase: WatchPhase::Offline,
            offline_reason: None,
            file: None,
            job: None,
            progress: None,
            frame_num: 0,
            p: None,
            ewm: None,
            normalized_p: None,
            last_decision: None,
            acted: false,
            watching: true,
            snoozed_until: None,
            camera_error: None,
            last_frame: None,
        }
    }

    /// Alerts are snoozed at `now`.
    pub fn snoozed(&self, now: SystemTime) -> bool {
        self.snoozed_until.is_some_and(|t| t > now)
    }
}

struct Entry {
    view: watch::Receiver<PrinterView>,
    commands: mpsc::Sender<(Command, oneshot::Sender<Result<Outcome, CommandError>>)>,
}

/// Every printer's view and command channel, by printer name.
#[derive(Default)]
pub struct Board {
    printers: Mutex<BTreeMap<String, Entry>>,
}

/// What a watch keeps of its registration.
pub struct Registration {
    pub view: watch::Sender<PrinterView>,
    pub commands: mpsc::Receiver<(Command, oneshot::Sender<Result<Outcome, CommandError>>)>,
}

impl Board {
    pub fn new() -> std::sync::Arc<Self> {
        Default::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.printers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a printer (the supervisor does, once per watch); a second registration of the
    /// same name replaces the first.
    pub fn register(&self, printer: &str) -> Registration {
        let (view_tx, view_rx) = watch::channel(PrinterView::new(printer));
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        self.lock().insert(printer.to_string(), Entry { view: view_rx, commands: cmd_tx });
        Registration { view: view_tx, commands: cmd_rx }
    }

    /// The printers' names, sorted.
    pub fn printers(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// A printer's view, to follow its changes.
    pub fn view(&self, printer: &str) -> Option<watch::Receiver<PrinterView>> {
        self.lock().get(printer).map(|e| e.view.clone())
    }

    /// Every printer's view now, sorted by name.
    pub fn snapshot(&self) -> Vec<PrinterView> {
        self.lock().values().map(|e| e.view.borrow().clone()).collect()
    }

    /// Sends a command to a printer's watch and waits for its answer. The watch carries it
    /// out through the same paths as its own decisions (a pause is confirmed by the printer,
    /// at most once per print, not within the cooldown).
    pub async fn command(&self, printer: &str, command: Command) -> Result<Outcome, CommandError> {
        let tx = self.lock().get(printer).map(|e| e.commands.clone()).ok_or_else(|| CommandError::UnknownPrinter(printer.to_string()))?;
        let (reply_tx, reply_rx) = oneshot::channel();
        tx.try_send((command, reply_tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => CommandError::Busy,
            mpsc::error::TrySendError::Closed(_) => CommandError::Stopped,
        })?;
        reply_rx.await.map_err(|_| CommandError::Stopped)?
    }
}

mod unix_secs {
    use std::time::{SystemTime, UNIX_EPOCH};
    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0))
    }
}

mod unix_secs_opt {
    use std::time::SystemTime;
    pub fn serialize<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::unix_secs::serialize(t, s),
            None => s.serialize_none(),
        }
    }
}
