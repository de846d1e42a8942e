//! One websocket connection to Moonraker, from identify to its end.
//!
//! Three tasks share the connection:
//!
//! - the **writer** sends the frames queued by requests (a bounded queue);
//! - the **reader** reads every frame as it arrives, routes answers to their waiting
//!   request and hands notifications to the [`Inbox`] without ever waiting, so it keeps
//!   reading while the session waits for an answer, and a flood costs bounded memory;
//! - the **session** ([`Session::drive`]) follows Moonraker's sequence: identify as an agent,
//!   wait for Klippy `ready` (polling `server.info` every 2 s), list and subscribe the
//!   printer objects, read the cameras and the job history; then it applies what the inbox
//!   hands over, checks now and then that the connection still answers, and redoes the
//!   ready part after a Klippy disconnect or shutdown, or when the inbox overflowed.
//!
//! The session ends when the socket closes or stalls, when Moonraker refuses the key, or
//! when the link stops; [`super::reconnect`] decides when to try again.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::warn;

use super::connect::{MAX_MESSAGE, Ws};
use super::inbox::{Inbox, Next, Notice};
use super::reconnect::Reconnect;
use super::rpc::{CallError, OUTGOING_QUEUE, Rpc, dispatch};
use super::status::Subscription;
use super::tracker::{HistJob, Tracker};
use super::webcams::parse_webcams;
use super::{CLIENT_URL, Shared};

const READY_POLL: Duration = Duration::from_secs(2);
/// History entries read when catching up after a reconnect.
const HISTORY_LIMIT: u64 = 50;

/// How a session ended.
pub(super) struct SessionEnd {
    pub(super) reason: String,
    pub(super) unauthorized: bool,
    pub(super) stopped: bool,
}

/// Runs one connection until it ends.
pub(super) async fn session(
    shared: &Arc<Shared>,
    ws: Ws,
    tracker: &mut Tracker,
    reconnect: &mut Reconnect,
    stop: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(OUTGOING_QUEUE);
    let rpc = Rpc::new(out_tx, Duration::from_secs(shared.cfg.request_timeout_secs));
    let inbox = Arc::new(Inbox::default());
    let printer = shared.cfg.name.clone();
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let pending = rpc.pending.clone();
    let reader_inbox = inbox.clone();
    let reader = tokio::spawn(async move {
        let mut garbage = 0u64;
        let reason = loop {
            match stream.next().await {
                None => break "closed by Moonraker".to_string(),
                Some(Err(tungstenite::Error::Capacity(e))) => {
                    let why = format!(
                        "Moonraker sent a message over the {} MiB limit ({e}); reconnecting",
                        MAX_MESSAGE >> 20
                    );
                    warn!(printer = %printer, "{why}");
                    break why;
                }
                Some(Err(e)) => break e.to_string(),
                Some(Ok(Message::Text(t))) => {
                    if let Err(why) = dispatch(t.as_str(), &pending, &reader_inbox) {
                        garbage += 1;
                        if garbage <= 5 || garbage.is_power_of_two() {
                            warn!(printer = %printer, count = garbage, "ignored a message from Moonraker: {why}");
                        }
                    }
                }
                Some(Ok(Message::Close(_))) => break "closed by Moonraker".to_string(),
                Some(Ok(_)) => {}
            }
        };
        // Nobody will answer the requests still waiting: fail them now.
        if let Ok(mut p) = pending.lock() {
            p.clear();
        }
        reason
    });

    let mut s = Session { shared: shared.clone(), rpc: rpc.clone(), inbox, ready_since: None, resyncs: 0 };
    let (reason, stopped) = s.drive(tracker, reconnect, stop, reader).await;
    let _ = rpc.out.try_send(Message::Close(None));
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    SessionEnd { unauthorized: reason == UNAUTHORIZED, reason, stopped }
}

/// Moonraker answers a missing or wrong key with code 401, or (on identify) with
/// "Unauthorized" / "Invalid API Key" under a generic code.
fn is_auth_error(code: i64, message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    code == 401 || m.contains("unauthorized") || m.contains("api key")
}

/// The session end reason for a 401 from Moonraker.
const UNAUTHORIZED: &str = "unauthorized";

struct Session {
    shared: Arc<Shared>,
    rpc: Rpc,
    inbox: Arc<Inbox>,
    /// Since when Klippy is ready on this connection (`None`: not ready).
    ready_since: Option<Instant>,
    /// Resyncs after an inbox overflow on this connection.
    resyncs: u64,
}

impl Session {
    fn ready(&self) -> bool {
        self.ready_since.is_some()
    }

    /// Runs until the connection ends (reason, stopped?).
    async fn drive(
        &mut self,
        tracker: &mut Tracker,
        reconnect: &mut Reconnect,
        stop: &mut watch::Receiver<bool>,
        mut reader: tokio::task::JoinHandle<String>,
    ) -> (String, bool) {
        match self.identify().await {
            Ok(()) => {}
            Err(CallError::Rpc { code, message }) if is_auth_error(code, &message) => {
                return (UNAUTHORIZED.into(), false);
            }
            Err(CallError::Rpc { message, .. }) if message.contains("already registered") => {
                // Our previous connection still holds the agent name: it stalled and
                // Moonraker has not noticed yet (its pings time out after ~30 s). Watching
                // the printer matters more than the agent role: carry on without it.
                warn!(
                    printer = %self.shared.cfg.name,
                    client = %self.shared.client_name,
                    "Moonraker still holds this client name from an earlier connection ({message}); continuing without the agent role until the next reconnect. If this repeats, another printvigil instance uses the same instance name."
                );
            }
            Err(e) => return (format!("identify failed: {e}"), false),
        }
        self.shared.set_rpc(Some(self.rpc.clone()));
        let mut poll = tokio::time::interval(READY_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // While ready, a cheap request every three request timeouts notices a connection
        // that stalled without closing (a half-open TCP connection never ends on its own).
        let mut liveness = tokio::time::interval(self.rpc.timeout * 3);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        liveness.reset();
        let inbox = self.inbox.clone();
        loop {
            // Ready for long enough: the connection counts as healthy (resets the backoff).
            let healthy_at = self.ready_since.map(|t| t + reconnect.healthy_after());
            tokio::select! {
                r = &mut reader => {
                    return (r.unwrap_or_else(|e| e.to_string()), false);
                }
                _ = stop.changed() => return ("stopped".into(), true),
                next = inbox.next() => {
                    if let Err(e) = self.handle(tracker, next).await {
                        if matches!(e, CallError::Closed) {
                            return ("closed".into(), false);
                        }
                        warn!(printer = %self.shared.cfg.name, "handling a notification: {e}");
                    }
                }
                _ = tokio::time::sleep_until(healthy_at.unwrap_or_else(Instant::now)), if healthy_at.is_some() && !reconnect.is_healthy() => {
                    reconnect.healthy(&self.shared);
                    tracker.online(&self.shared);
                }
                _ = liveness.tick(), if self.ready() => {
                    if let Err(e @ (CallError::Timeout(_) | CallError::Closed)) =
                        self.rpc.call("server.info", json!({})).await
                    {
                        return (format!("Moonraker stopped answering ({e})"), false);
                    }
                }
                _ = poll.tick(), if !self.ready() => {
                    match self.check_ready(tracker).await {
                        Ok(()) => {}
                        Err(CallError::Closed) => return ("closed".into(), false),
                        Err(CallError::Rpc { code, message }) if is_auth_error(code, &message) => {
                            return (UNAUTHORIZED.into(), false);
                        }
                        Err(e) => warn!(printer = %self.shared.cfg.name, "waiting for Klipper: {e}"),
                    }
                }
            }
        }
    }

    /// Identifies as an agent. The API key is not sent here: the upgrade request carried
    /// it (header or one-shot token), and a JSON frame is what debug tooling shows.
    async fn identify(&self) -> Result<(), CallError> {
        let params = json!({
            "client_name": self.shared.client_name,
            "version": env!("CARGO_PKG_VERSION"),
            "type": "agent",
            "url": CLIENT_URL,
        });
        self.rpc.call("server.connection.identify", params).await.map(|_| ())
    }

    async fn check_ready(&mut self, tracker: &mut Tracker) -> Result<(), CallError> {
        let info = self.rpc.call("server.info", json!({})).await?;
        let state = info.get("klippy_state").and_then(Value::as_str).unwrap_or("unknown").to_string();
        match state.as_str() {
            "ready" => self.on_ready(tracker).await,
            "shutdown" | "error" => {
                self.ready_since = None;
                let msg =
                    self.state_message().await.unwrap_or_else(|| format!("Klipper is in {state} state"));
                tracker.halted(&self.shared, &msg);
                Ok(())
            }
            other => {
                self.ready_since = None;
                tracker.offline(
                    &self.shared,
                    &format!("Klipper is not ready (Moonraker reports `{other}`)"),
                );
                Ok(())
            }
        }
    }

    async fn state_message(&self) -> Option<String> {
        let info = self.rpc.call("printer.info", json!({})).await.ok()?;
        info.get("state_message").and_then(Value::as_str).map(|s| s.trim().to_string())
    }

    /// The part of the sequence after Klippy is ready: objects, subscription, cameras,
    /// history.
    async fn on_ready(&mut self, tracker: &mut Tracker) -> Result<(), CallError> {
        let list = self.rpc.call("printer.objects.list", json!({})).await?;
        let subscription = Arc::new(Subscription::from_list(&list));
        // Deltas are kept from now on; the snapshot in the answer supersedes older ones.
        self.inbox.subscribe(subscription.clone());
        tracker.subscribe(subscription.clone());
        let sub = self
            .rpc
            .call_snapshot("printer.objects.subscribe", json!({"objects": subscription.request()}))
            .await?;
        if self.ready_since.is_none() {
            self.ready_since = Some(Instant::now());
        }
        self.read_cameras().await;
        let status = sub.get("status").cloned().unwrap_or(Value::Null);
        tracker.replace_status(status);
        self.process_status(tracker, true).await;
        // Online once synced: a print started after `Online` is news to the history read
        // above, never mistaken for an old entry by the first sync.
        tracker.online(&self.shared);
        Ok(())
    }

    /// One thing from the inbox.
    async fn handle(&mut self, tracker: &mut Tracker, next: Next) -> Result<(), CallError> {
        match next {
            Next::Status(delta) => {
                if self.ready() {
                    tracker.merge_status(&Value::Object(delta));
                    self.process_status(tracker, false).await;
                }
            }
            Next::Resync(overflowed) => {
                self.resyncs += 1;
                if self.resyncs <= 3 || self.resyncs.is_power_of_two() {
                    warn!(
                        printer = %self.shared.cfg.name,
                        overflowed,
                        resyncs = self.resyncs,
                        "Moonraker sent notifications faster than they could be handled ({overflowed} beyond the queue of {}); re-reading the printer's whole state instead",
                        super::inbox::QUEUE_CAP
                    );
                }
                self.check_ready(tracker).await?;
            }
            Next::Notice(Notice::KlippyReady) => {
                if !self.ready() {
                    self.check_ready(tracker).await?;
                }
            }
            Next::Notice(Notice::KlippyDisconnected) => {
                self.ready_since = None;
                tracker.offline(&self.shared, "Klipper disconnected from Moonraker");
            }
            Next::Notice(Notice::KlippyShutdown) => {
                self.ready_since = None;
                let msg = self.state_message().await.unwrap_or_else(|| "Klipper shut down".into());
                tracker.halted(&self.shared, &msg);
            }
            Next::Notice(Notice::HistoryChanged(p)) => {
                if let Some(job) = p.get("job").and_then(HistJob::parse) {
                    tracker.history_job(&self.shared, &job, true);
                }
            }
            Next::Notice(Notice::WebcamsChanged) => self.read_cameras().await,
        }
        Ok(())
    }

    async fn read_cameras(&self) {
        match self.rpc.call("server.webcams.list", json!({})).await {
            Ok(v) => {
                let cams = parse_webcams(&v, &self.shared.cfg.base());
                self.shared.out.publish_cameras(cams);
            }
            Err(e) => warn!(printer = %self.shared.cfg.name, "cannot read the camera list: {e}"),
        }
    }

    async fn history(&self) -> Result<Vec<HistJob>, CallError> {
        let v = self
            .rpc
            .call("server.history.list", json!({"limit": HISTORY_LIMIT, "order": "desc"}))
            .await?;
        let mut jobs: Vec<HistJob> = v
            .get("jobs")
            .and_then(Value::as_array)
            .map(|a| a.iter().take(HISTORY_LIMIT as usize).filter_map(HistJob::parse).collect())
            .unwrap_or_default();
        jobs.sort_by(|a, b| a.start_time.total_cmp(&b.start_time));
        Ok(jobs)
    }

    /// Derives events from the merged status; `resync` after (re)subscribing.
    async fn process_status(&mut self, tracker: &mut Tracker, resync: bool) {
        let step = tracker.status_step(&self.shared);
        // Starts and ends come from the job history (it carries the job's identity); read
        // it when a print state change may mean one, and after every (re)subscription.
        if resync || step.job_edge {
            match self.history().await {
                Ok(jobs) => tracker.catch_up(&self.shared, &jobs, step.state.as_deref()),
                Err(e) => warn!(printer = %self.shared.cfg.name, "cannot read the job history: {e}"),
            }
        }
        tracker.finish_step(&self.shared, step);
    }
}
