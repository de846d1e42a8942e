//! Bambu Lab printers on the local network: their own MQTT broker, over TLS.
//!
//! The printer runs an MQTT broker (port 8883, user `bblp`, the LAN access code as the
//! password) with a self-signed certificate, trusted here by its pinned fingerprint
//! ([`crate::tlspin`]). The link subscribes to `device/<serial>/report`, asks for the
//! full state (`pushall`) after every (re)connect, merges the partial reports that follow
//! ([`report`]) and turns them into the link's events ([`tracker`]). Pause, resume and
//! stop are published on `device/<serial>/request` with a `sequence_id`, and confirmed by
//! the reports that follow; a refusal (the printer wants signed commands: Developer Mode
//! off) or no reaction at all within the timeout is a clear error.
//!
//! Errors are states, logged once per change, each retried: a wrong access code and a
//! certificate that is not the pinned one slowly (a person has to act), a printer that
//! refuses connections (LAN-only mode off) or does not answer (switched off) with a
//! growing pause ([`session`]).
//!
//! The files, one concept each:
//! - [`config`]: the `[[printers]]` entry (`kind = "bambu"`), the camera's URL.
//! - [`report`]: report messages parsed and merged field by field, command answers.
//! - [`tracker`]: states, print identity, error pauses, the events.
//! - [`session`]: the connection task: TLS, MQTT, reconnects, actions.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::channels::{Act, LinkChannels, LinkTask};
use super::{PrinterError, PrinterEvent, PrinterLink, PrinterStatus};

mod config;
pub mod report;
mod session;
pub mod tracker;

pub use config::{BambuConfig, DEFAULT_CAMERA_PORT, DEFAULT_PORT, USER, camera_url};
pub use session::{Trouble, classify};

/// The command a Bambu printer knows for an action.
fn command(act: Act) -> &'static str {
    match act {
        Act::Pause => "pause",
        Act::Resume => "resume",
        Act::Cancel => "stop",
    }
}

pub(crate) struct Request {
    act: Act,
    reply: oneshot::Sender<Result<(), PrinterError>>,
}

/// What the session task and the handle share.
pub(crate) struct Shared {
    cfg: BambuConfig,
    /// Part of the MQTT client id (tells printvigil instances apart in the printer's log).
    instance: String,
    out: LinkChannels,
}

impl Shared {
    /// Applies a change through the tracker; the status is published before the events
    /// that follow from it (a watcher reads it when an event arrives).
    fn apply(&self, f: impl FnOnce(&mut Vec<PrinterEvent>, &mut PrinterStatus)) {
        let mut events = Vec::new();
        let mut status = self.out.status_now();
        f(&mut events, &mut status);
        self.out.publish_status(status);
        for ev in events {
            self.out.emit(ev);
        }
    }
}

/// The Bambu link; see the module documentation.
pub struct BambuLink {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Request>,
    task: LinkTask,
}

impl BambuLink {
    /// Starts the link's task (needs a Tokio runtime).
    pub fn start(cfg: BambuConfig, instance: &str) -> Arc<dyn PrinterLink> {
        Self::start_concrete(cfg, instance)
    }

    /// Like [`BambuLink::start`], returning the concrete type.
    pub fn start_concrete(cfg: BambuConfig, instance: &str) -> Arc<BambuLink> {
        let out = LinkChannels::new(&cfg.name);
        let instance = instance.chars().filter(char::is_ascii_alphanumeric).take(24).collect();
        let shared = Arc::new(Shared { cfg, instance, out });
        let (tx, rx) = mpsc::channel(4);
        let task = LinkTask::spawn(|stop| session::run(shared.clone(), rx, stop));
        Arc::new(BambuLink { shared, requests: tx, task })
    }

    fn printer(&self) -> String {
        self.shared.cfg.name.clone()
    }
}

/// The printer's camera is configured (`camera = { kind = "bambu" }`), not discovered:
/// the camera list stays empty.
#[async_trait::async_trait]
impl PrinterLink for BambuLink {
    fn channels(&self) -> &LinkChannels {
        &self.shared.out
    }
    fn action_timeout(&self) -> Duration {
        Duration::from_secs(self.shared.cfg.action_timeout_secs)
    }
    /// Published, and answered by the printer (its echo, or already the state that shows
    /// it done), or refused (the printer's answer) or ignored (neither within the
    /// timeout). The common path then waits for the state that confirms it.
    async fn request(&self, act: Act) -> Result<(), PrinterError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { act, reply })
            .await
            .map_err(|_| PrinterError::NotConnected { printer: self.printer() })?;
        // The session answers by its own deadline; this one only guards against a session
        // that went away without answering.
        match tokio::time::timeout(self.action_timeout() + Duration::from_secs(5), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(PrinterError::NotConnected { printer: self.printer() }),
        }
    }
    async fn stop(&self) {
        self.task.stop(&self.shared.cfg.name).await;
    }
}
