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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::channels::{Act, LinkChannels, LinkTask};
use super::{PrinterError, PrinterEvent, PrinterLink};
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
    task: LinkTask,
}

/// What the link's task and its handle share.
struct Shared {
    cfg: MoonrakerConfig,
    client_name: String,
    /// The link's channels; `quiet` while the link flaps (see [`reconnect`]).
    out: LinkChannels,
    rpc: Mutex<Option<Rpc>>,
}

impl Shared {
    fn new(cfg: MoonrakerConfig, instance: &str) -> Shared {
        let client_name = format!("printvigil-{instance}-{}", cfg.name);
        let out = LinkChannels::new(&cfg.name);
        Shared { cfg, client_name, out, rpc: Mutex::new(None) }
    }

    fn emit(&self, ev: PrinterEvent) {
        self.out.emit(ev);
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
        let task = LinkTask::spawn(|stop| reconnect::run(shared.clone(), stop));
        Arc::new(MoonrakerLink { shared, task })
    }

    fn printer(&self) -> String {
        self.shared.cfg.name.clone()
    }

}

#[async_trait::async_trait]
impl PrinterLink for MoonrakerLink {
    fn channels(&self) -> &LinkChannels {
        &self.shared.out
    }
    fn action_timeout(&self) -> Duration {
        Duration::from_secs(self.shared.cfg.action_timeout_secs)
    }
    async fn request(&self, act: Act) -> Result<(), PrinterError> {
        let method = match act {
            Act::Pause => "printer.print.pause",
            Act::Resume => "printer.print.resume",
            Act::Cancel => "printer.print.cancel",
        };
        let rpc = self.shared.current_rpc().ok_or_else(|| PrinterError::NotConnected { printer: self.printer() })?;
        rpc.call_timeout(method, json!({}), self.action_timeout()).await.map_err(|e| match e {
            CallError::Rpc { message, .. } => {
                PrinterError::Refused { printer: self.printer(), action: act.as_str().into(), message }
            }
            other => other.into_printer_error(&self.shared.cfg.name, method),
        })?;
        Ok(())
    }
    async fn stop(&self) {
        self.task.stop(&self.shared.cfg.name).await;
    }
}
