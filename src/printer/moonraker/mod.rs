//! Klipper through Moonraker: websocket JSON-RPC.
//!
//! The link runs one task per printer ([`reconnect`]): connect ([`connect`]), run a session
//! ([`session`]) until the connection ends, wait (a backoff that resets only once a
//! connection stayed healthy), again. A session does Moonraker's whole sequence: identify
//! as an agent, wait for Klippy `ready`, list and subscribe the printer objects, read the
//! cameras and the job history; it redoes the ready part after every Klippy disconnect or
//! shutdown. What the link remembers (the print it reported, the newest history entry it
//! has seen) lives outside the connection, in the [`tracker`], so a reconnect re-attaches
//! to the same print and reports what happened while it was away, in order.
//!
//! Nothing a peer sends can make the link use unbounded memory or time: messages are capped
//! at [`MAX_MESSAGE`], status deltas coalesce and other notifications queue in bounds
//! ([`inbox`]), merged status keeps only subscribed fields ([`status`]), and the socket is
//! read all the time, also while a request waits for its answer.
//!
//! The files, one concept each:
//! - [`config`]: the `[[printers]]` entry (`kind = "moonraker"`).
//! - [`connect`]: the websocket and the API key.
//! - [`rpc`]: JSON-RPC requests and answers; [`parse_message`].
//! - [`inbox`]: notifications from the reader to the session, bounded.
//! - [`status`]: the subscription and bounded status merging.
//! - [`session`]: one connection's sequence.
//! - [`tracker`]: what the link remembers and the events it derives; [`MessageReplay`].
//! - [`reconnect`]: the task, backoff and failure logging.
//! - [`webcams`]: the cameras from Moonraker's webcam settings.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};

use super::{CameraInfo, PrinterError, PrinterEvent, PrinterLink, PrinterState, PrinterStatus};
use rpc::{CallError, Rpc};

mod config;
mod connect;
mod inbox;
mod reconnect;
mod rpc;
mod session;
mod status;
mod tracker;
mod webcams;

pub use config::{ApiKeyVia, MoonrakerConfig};
pub use connect::MAX_MESSAGE;
pub use rpc::{Incoming, MessageError, parse_message};
pub use tracker::MessageReplay;
pub use webcams::parse_webcams;

/// Sent to Moonraker when identifying.
const CLIENT_URL: &str = "https://github.com/printvigil/printvigil";

/// The Moonraker link; see the module documentation.
pub struct MoonrakerLink {
    shared: Arc<Shared>,
    first_events: Mutex<Option<broadcast::Receiver<PrinterEvent>>>,
    stop_tx: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What the link's task and its handle share.
struct Shared {
    cfg: MoonrakerConfig,
    client_name: String,
    events: broadcast::Sender<PrinterEvent>,
    status: watch::Sender<PrinterStatus>,
    cameras: watch::Sender<Vec<CameraInfo>>,
    rpc: Mutex<Option<Rpc>>,
    /// The link flaps (see [`reconnect`]): Online/Offline events are logged at debug.
    quiet: AtomicBool,
}

impl Shared {
    fn new(cfg: MoonrakerConfig, instance: &str) -> Shared {
        let client_name = format!("printvigil-{instance}-{}", cfg.name);
        Shared {
            cfg,
            client_name,
            events: broadcast::channel(1024).0,
            status: watch::channel(PrinterStatus::default()).0,
            cameras: watch::channel(Vec::new()).0,
            rpc: Mutex::new(None),
            quiet: AtomicBool::new(false),
        }
    }

    fn emit(&self, ev: PrinterEvent) {
        let flapping = matches!(ev, PrinterEvent::Online | PrinterEvent::Offline { .. })
            && self.quiet.load(Ordering::Relaxed);
        if flapping {
            debug!(printer = %self.cfg.name, event = ?ev, "printer event");
        } else {
            info!(printer = %self.cfg.name, event = ?ev, "printer event");
        }
        let _ = self.events.send(ev);
    }
    fn current_rpc(&self) -> Option<Rpc> {
        self.rpc.lock().ok().and_then(|g| g.clone())
    }
    fn set_rpc(&self, rpc: Option<Rpc>) {
        if let Ok(mut g) = self.rpc.lock() {
            *g = rpc;
        }
    }
}

impl MoonrakerLink {
    /// Starts the link's task (needs a Tokio runtime). `instance` makes the client name
    /// unique per printvigil instance: Moonraker allows one agent per client name.
    pub fn start(cfg: MoonrakerConfig, instance: &str) -> Arc<dyn PrinterLink> {
        Self::start_concrete(cfg, instance)
    }

    /// Like [`MoonrakerLink::start`], returning the concrete type.
    pub fn start_concrete(cfg: MoonrakerConfig, instance: &str) -> Arc<MoonrakerLink> {
        let shared = Arc::new(Shared::new(cfg, instance));
        let first = shared.events.subscribe();
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(reconnect::run(shared.clone(), stop_rx));
        Arc::new(MoonrakerLink {
            shared,
            first_events: Mutex::new(Some(first)),
            stop_tx,
            task: Mutex::new(Some(task)),
        })
    }

    fn printer(&self) -> String {
        self.shared.cfg.name.clone()
    }

    async fn action(
        &self,
        action: &str,
        method: &str,
        allowed: &[PrinterState],
        done: fn(PrinterState) -> bool,
    ) -> Result<(), PrinterError> {
        let state = self.shared.status.borrow().state;
        if !allowed.contains(&state) {
            return Err(PrinterError::WrongState {
                printer: self.printer(),
                action: action.into(),
                state,
            });
        }
        let rpc = self
            .shared
            .current_rpc()
            .ok_or_else(|| PrinterError::NotConnected { printer: self.printer() })?;
        let timeout = Duration::from_secs(self.shared.cfg.action_timeout_secs);
        let mut rx = self.shared.status.subscribe();
        rpc.call_timeout(method, json!({}), timeout).await.map_err(|e| match e {
            CallError::Rpc { message, .. } => {
                PrinterError::Refused { printer: self.printer(), action: action.into(), message }
            }
            other => other.into_printer_error(&self.shared.cfg.name, method),
        })?;
        match tokio::time::timeout(timeout, rx.wait_for(|s| done(s.state))).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(PrinterError::NotConfirmed {
                printer: self.printer(),
                action: action.into(),
                timeout,
                state: self.shared.status.borrow().state,
            }),
        }
    }
}

impl Drop for MoonrakerLink {
    fn drop(&mut self) {
        let _ = self.stop_tx.send(true);
        if let Ok(mut t) = self.task.lock()
            && let Some(t) = t.take()
        {
            t.abort();
        }
    }
}

#[async_trait::async_trait]
impl PrinterLink for MoonrakerLink {
    fn name(&self) -> &str {
        &self.shared.cfg.name
    }
    fn events(&self) -> broadcast::Receiver<PrinterEvent> {
        match self.first_events.lock().ok().and_then(|mut g| g.take()) {
            Some(rx) => rx,
            None => self.shared.events.subscribe(),
        }
    }
    fn status(&self) -> watch::Receiver<PrinterStatus> {
        self.shared.status.subscribe()
    }
    fn cameras(&self) -> watch::Receiver<Vec<CameraInfo>> {
        self.shared.cameras.subscribe()
    }
    async fn pause(&self) -> Result<(), PrinterError> {
        self.action("pause", "printer.print.pause", &[PrinterState::Printing], |s| {
            s == PrinterState::Paused
        })
        .await
    }
    async fn resume(&self) -> Result<(), PrinterError> {
        self.action("resume", "printer.print.resume", &[PrinterState::Paused], |s| {
            s == PrinterState::Printing
        })
        .await
    }
    async fn cancel(&self) -> Result<(), PrinterError> {
        self.action(
            "cancel",
            "printer.print.cancel",
            &[PrinterState::Printing, PrinterState::Paused],
            |s| !matches!(s, PrinterState::Printing | PrinterState::Paused),
        )
        .await
    }
    async fn stop(&self) {
        let _ = self.stop_tx.send(true);
        let task = self.task.lock().ok().and_then(|mut g| g.take());
        if let Some(task) = task
            && tokio::time::timeout(Duration::from_secs(5), task).await.is_err()
        {
            warn!(printer = %self.shared.cfg.name, "link task did not stop in 5 s");
        }
    }
}
