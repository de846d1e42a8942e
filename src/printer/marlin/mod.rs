//! Marlin over USB serial: printvigil itself is the printer's host.
//!
//! Many printers run stock Marlin and print from their SD card, with only a USB cable to
//! the computer next to them. This link opens that serial port (exclusively: never shared
//! with OctoPrint or Klipper), follows the SD print from Marlin's status lines, and pauses,
//! resumes or cancels it when asked, each action confirmed by the printer's own state.
//!
//! The serial port is blocking I/O: each printer gets a plain thread ([`session`]), which
//! publishes to the same event broadcast and status watch as every other link, and takes
//! actions from the async side through a channel. The watch loop sees only
//! [`PrinterLink`].
//!
//! The files, one concept each:
//! - [`config`]: the `[[printers]]` entry (`kind = "marlin"`): port, baud, intervals.
//! - [`port`]: opening the port exclusively; the busy-port refusal; candidate ports.
//! - [`line`]: Marlin's output lines, parsed ([`parse_line`], pure, for fuzzing too).
//! - [`protocol`]: line numbers, checksums, `Resend:`, one command in flight.
//! - [`tracker`]: the print as Marlin reports it, and the events derived from it.
//! - [`session`]: the thread: boot wait, handshake, auto-reports or polls, actions,
//!   faults and reconnects.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use tracing::warn;

use super::channels::{Act, LinkChannels};
use super::{PrinterError, PrinterEvent, PrinterLink};

mod config;
pub mod line;
mod port;
pub mod protocol;
mod session;
mod tracker;

pub use config::{Baud, MarlinConfig};
pub use line::{HostAction, Line, LineBuffer, MAX_LINE, parse_line};
pub use port::{OpenError, candidates};

/// An action the async side asks the thread for.
pub(crate) struct Request {
    act: Act,
    reply: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Counts for tests and figures.
#[derive(Debug, Default)]
pub struct Counters {
    /// `Resend:` requests honoured or refused.
    pub resends: AtomicU64,
    /// Garbled lines dropped.
    pub garbage: AtomicU64,
    /// Commands that got no `ok` in time.
    pub timeouts: AtomicU64,
}

/// What the thread and the handle share.
pub(crate) struct Shared {
    cfg: MarlinConfig,
    out: LinkChannels,
    stop: AtomicBool,
    counters: Counters,
}

impl Shared {
    fn emit(&self, ev: PrinterEvent) {
        self.out.emit(ev);
    }

    fn publish(&self, tracker: &tracker::Tracker) {
        self.out.publish_status(tracker.status());
    }
}

/// The Marlin link; see the module documentation.
pub struct MarlinLink {
    shared: Arc<Shared>,
    requests: Mutex<mpsc::Sender<Request>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl MarlinLink {
    /// Starts the link's thread.
    pub fn start(cfg: MarlinConfig) -> Arc<dyn PrinterLink> {
        Self::start_concrete(cfg)
    }

    /// Like [`MarlinLink::start`], returning the concrete type.
    pub fn start_concrete(cfg: MarlinConfig) -> Arc<MarlinLink> {
        let out = LinkChannels::new(&cfg.name);
        let shared = Arc::new(Shared {
            cfg,
            out,
            stop: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let (tx, rx) = mpsc::channel();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("marlin-{}", shared.cfg.name.chars().take(8).collect::<String>()))
            .spawn(move || session::run(s, rx))
            .map_err(|e| warn!("cannot start the serial thread: {e}"))
            .ok();
        Arc::new(MarlinLink {
            shared,
            requests: Mutex::new(tx),
            thread: Mutex::new(thread),
        })
    }

    /// Counts of resends, garbled lines and timeouts so far.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    fn printer(&self) -> String {
        self.shared.cfg.name.clone()
    }

}

impl Drop for MarlinLink {
    fn drop(&mut self) {
        // The thread sees the flag within one read timeout and closes the port.
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl PrinterLink for MarlinLink {
    fn channels(&self) -> &LinkChannels {
        &self.shared.out
    }
    fn action_timeout(&self) -> Duration {
        Duration::from_secs(self.shared.cfg.action_timeout_secs)
    }
    async fn request(&self, act: Act) -> Result<(), PrinterError> {
        let action = act.as_str();
        let timeout = self.action_timeout();
        let (tx, reply) = tokio::sync::oneshot::channel();
        let sent = self.requests.lock().map(|r| r.send(Request { act, reply: tx }).is_ok()).unwrap_or(false);
        if !sent {
            return Err(PrinterError::NotConnected { printer: self.printer() });
        }
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(message))) => Err(PrinterError::Refused { printer: self.printer(), action: action.into(), message }),
            Ok(Err(_)) => Err(PrinterError::Closed { printer: self.printer(), method: action.into() }),
            Err(_) => Err(PrinterError::Timeout { printer: self.printer(), method: action.into(), timeout }),
        }
    }
    async fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.lock().ok().and_then(|mut g| g.take());
        if let Some(t) = thread {
            let joined = tokio::task::spawn_blocking(move || t.join());
            if tokio::time::timeout(Duration::from_secs(5), joined).await.is_err() {
                warn!(printer = %self.shared.cfg.name, "serial thread did not stop in 5 s");
            }
        }
    }
}
