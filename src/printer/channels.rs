//! What every printer link publishes, and the one way its actions are confirmed.
//!
//! A link (whatever the firmware) hands the watch three channels: a broadcast of
//! [`PrinterEvent`]s (the first receiver sees every event since the link was created, so a
//! watch started a moment later misses nothing), a `watch` of the latest
//! [`PrinterStatus`], and a `watch` of the printer's cameras. [`LinkChannels`] holds the
//! sending ends; a link's task publishes through it and the link's handle answers
//! [`PrinterLink`](super::PrinterLink)'s `events` / `status` / `cameras` from it.
//!
//! Actions (pause, resume, cancel) are confirmed the same way on every firmware: the state
//! must allow the action, the request is sent, and the action counts as done only once
//! the printer's own reported state shows it ([`LinkChannels::act`]).

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tracing::{debug, info};

use super::{CameraInfo, PrinterError, PrinterEvent, PrinterState, PrinterStatus};

/// What a watch may ask of a printer; each is confirmed by the state the printer reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Pause,
    Resume,
    Cancel,
}

impl Act {
    pub fn as_str(self) -> &'static str {
        match self {
            Act::Pause => "pause",
            Act::Resume => "resume",
            Act::Cancel => "cancel",
        }
    }

    /// The states the action may be asked in.
    pub fn allowed(self) -> &'static [PrinterState] {
        match self {
            Act::Pause => &[PrinterState::Printing],
            Act::Resume => &[PrinterState::Paused],
            Act::Cancel => &[PrinterState::Printing, PrinterState::Paused],
        }
    }

    /// The reported state shows the action done.
    pub fn done(self, state: PrinterState) -> bool {
        match self {
            Act::Pause => state == PrinterState::Paused,
            Act::Resume => state == PrinterState::Printing,
            Act::Cancel => !matches!(state, PrinterState::Printing | PrinterState::Paused),
        }
    }
}

/// How far a slow event receiver may fall behind before it gets `Lagged`.
const EVENT_BUFFER: usize = 1024;

/// The sending ends of a link's channels.
pub struct LinkChannels {
    name: String,
    events: broadcast::Sender<PrinterEvent>,
    first: Mutex<Option<broadcast::Receiver<PrinterEvent>>>,
    status: watch::Sender<PrinterStatus>,
    cameras: watch::Sender<Vec<CameraInfo>>,
    /// The connection flaps: Online/Offline events are logged at debug only.
    quiet: AtomicBool,
}

impl LinkChannels {
    /// Channels for the printer `name` (used in log lines and errors).
    pub fn new(name: &str) -> Self {
        let (events, first) = broadcast::channel(EVENT_BUFFER);
        Self {
            name: name.to_string(),
            events,
            first: Mutex::new(Some(first)),
            status: watch::channel(PrinterStatus::default()).0,
            cameras: watch::channel(Vec::new()).0,
            quiet: AtomicBool::new(false),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Publishes an event (and logs it).
    pub fn emit(&self, ev: PrinterEvent) {
        let flapping = matches!(ev, PrinterEvent::Online | PrinterEvent::Offline { .. }) && self.quiet();
        if flapping {
            debug!(printer = %self.name, event = ?ev, "printer event");
        } else {
            info!(printer = %self.name, event = ?ev, "printer event");
        }
        let _ = self.events.send(ev);
    }

    /// Online/Offline events go to the debug log while `quiet` (a flapping connection is
    /// reported once by the link's reconnect loop, not at every turn).
    pub fn set_quiet(&self, quiet: bool) {
        self.quiet.store(quiet, Ordering::Relaxed);
    }

    pub fn quiet(&self) -> bool {
        self.quiet.load(Ordering::Relaxed)
    }

    /// Publishes a status; watchers wake only when it differs from the last one.
    pub fn publish_status(&self, status: PrinterStatus) -> bool {
        self.status.send_if_modified(|s| {
            if *s != status {
                *s = status;
                true
            } else {
                false
            }
        })
    }

    /// Changes part of the status in place (watchers wake).
    pub fn update_status(&self, f: impl FnOnce(&mut PrinterStatus)) {
        self.status.send_modify(f);
    }

    /// The status now.
    pub fn status_now(&self) -> PrinterStatus {
        self.status.borrow().clone()
    }

    /// The printer's state now.
    pub fn state(&self) -> PrinterState {
        self.status.borrow().state
    }

    /// Publishes the cameras; watchers wake only when the list changed.
    pub fn publish_cameras(&self, cameras: Vec<CameraInfo>) -> bool {
        self.cameras.send_if_modified(|c| {
            if *c != cameras {
                *c = cameras;
                true
            } else {
                false
            }
        })
    }

    /// [`PrinterLink::events`](super::PrinterLink::events): the first call gets every event
    /// since the link was created.
    pub fn events(&self) -> broadcast::Receiver<PrinterEvent> {
        match self.first.lock().ok().and_then(|mut g| g.take()) {
            Some(rx) => rx,
            None => self.events.subscribe(),
        }
    }

    /// A receiver of events from now on (a link's own bookkeeping, tests).
    pub fn subscribe_events(&self) -> broadcast::Receiver<PrinterEvent> {
        self.events.subscribe()
    }

    pub fn status(&self) -> watch::Receiver<PrinterStatus> {
        self.status.subscribe()
    }

    pub fn cameras(&self) -> watch::Receiver<Vec<CameraInfo>> {
        self.cameras.subscribe()
    }

    /// Carries out an action the way every link does: refused at once when the printer is
    /// offline or in a state that does not allow it; otherwise `send` asks the printer,
    /// and the action is done once the reported state shows it within `timeout`. `poke`
    /// runs before every look at the state (a link that polls reads the state now); the
    /// state is looked at on every change and at least once a second.
    pub async fn act<F>(&self, act: Act, timeout: Duration, poke: impl Fn(), send: F) -> Result<(), PrinterError>
    where
        F: Future<Output = Result<(), PrinterError>>,
    {
        let action = act.as_str();
        let state = self.state();
        if state == PrinterState::Offline {
            return Err(PrinterError::NotConnected { printer: self.name.clone() });
        }
        if !act.allowed().contains(&state) {
            return Err(PrinterError::WrongState { printer: self.name.clone(), action: action.into(), state });
        }
        let mut rx = self.status.subscribe();
        rx.mark_unchanged();
        send.await?;
        let confirmed = tokio::time::timeout(timeout, async {
            loop {
                poke();
                if act.done(rx.borrow_and_update().state) {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
            }
        })
        .await;
        confirmed.map_err(|_| PrinterError::NotConfirmed {
            printer: self.name.clone(),
            action: action.into(),
            timeout,
            state: self.state(),
        })
    }
}

/// A link's task and its stop signal: stopped gracefully by [`LinkTask::stop`], aborted
/// when dropped.
pub struct LinkTask {
    stop_tx: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl LinkTask {
    /// Spawns `run(stop)`; `stop` turns true when the link is stopped.
    pub fn spawn<F, Fut>(run: F) -> Self
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(stop_rx));
        Self { stop_tx, task: Mutex::new(Some(task)) }
    }

    /// Signals the stop and waits up to 5 s for the task to end.
    pub async fn stop(&self, printer: &str) {
        let _ = self.stop_tx.send(true);
        let task = self.task.lock().ok().and_then(|mut g| g.take());
        if let Some(task) = task
            && tokio::time::timeout(Duration::from_secs(5), task).await.is_err()
        {
            tracing::warn!(printer, "link task did not stop in 5 s");
        }
    }
}

impl Drop for LinkTask {
    fn drop(&mut self) {
        let _ = self.stop_tx.send(true);
        if let Ok(mut t) = self.task.lock()
            && let Some(t) = t.take()
        {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printing() -> PrinterStatus {
        PrinterStatus { state: PrinterState::Printing, ..Default::default() }
    }

    #[tokio::test]
    async fn the_first_receiver_sees_every_event_and_statuses_wake_only_on_change() {
        let c = LinkChannels::new("p");
        c.emit(PrinterEvent::Online);
        let mut first = c.events();
        let mut later = c.events();
        c.emit(PrinterEvent::Offline { reason: "x".into() });
        assert_eq!(first.recv().await.unwrap(), PrinterEvent::Online);
        assert_eq!(later.recv().await.unwrap(), PrinterEvent::Offline { reason: "x".into() });
        let mut rx = c.status();
        assert!(c.publish_status(printing()));
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        assert!(!c.publish_status(printing()));
        assert!(!rx.has_changed().unwrap());
        assert!(!c.publish_cameras(Vec::new()));
    }

    #[tokio::test(start_paused = true)]
    async fn actions_are_refused_sent_confirmed_or_not_confirmed() {
        let c = std::sync::Arc::new(LinkChannels::new("p"));
        let t = Duration::from_secs(5);
        let r = c.act(Act::Pause, t, || {}, async { Ok(()) }).await;
        assert!(matches!(r, Err(PrinterError::NotConnected { .. })), "{r:?}");
        c.publish_status(PrinterStatus { state: PrinterState::Idle, ..Default::default() });
        let r = c.act(Act::Pause, t, || {}, async { Ok(()) }).await;
        assert!(matches!(r, Err(PrinterError::WrongState { .. })), "{r:?}");
        assert!(matches!(c.act(Act::Cancel, t, || {}, async { Ok(()) }).await, Err(PrinterError::WrongState { .. })));
        c.publish_status(printing());
        let r = c.act(Act::Pause, t, || {}, async { Ok(()) }).await;
        assert!(matches!(r, Err(PrinterError::NotConfirmed { state: PrinterState::Printing, .. })), "{r:?}");
        let refused = PrinterError::Refused { printer: "p".into(), action: "pause".into(), message: "no".into() };
        let r = c.act(Act::Pause, t, || {}, async { Err(refused) }).await;
        assert!(matches!(r, Err(PrinterError::Refused { .. })), "{r:?}");
        let c2 = c.clone();
        let sent = async move {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                c2.update_status(|s| s.state = PrinterState::Paused);
            });
            Ok(())
        };
        c.act(Act::Pause, t, || {}, sent).await.unwrap();
        let r = c.act(Act::Resume, t, || {}, async { Ok(()) }).await;
        assert!(matches!(r, Err(PrinterError::NotConfirmed { state: PrinterState::Paused, .. })), "{r:?}");
    }
}
