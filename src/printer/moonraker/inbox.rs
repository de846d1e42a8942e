//! Between the socket reader and the session: notifications, bounded.
//!
//! The reader must never stop reading (answers to the session's own requests arrive on the
//! same socket) and must never buffer without limit (a peer can send faster than the
//! session handles). So it hands notifications over without waiting, in three ways:
//!
//! - **Status deltas coalesce.** `notify_status_update` merges into one pending status
//!   (see [`super::status`]): a million deltas while the session waits for an answer cost
//!   one small map, and the session then applies the newest value of every field.
//! - **Edges queue, in order.** What the session must see one by one (Klippy ready /
//!   disconnected / shutdown, a history change, a camera change, and a status delta that
//!   changes `print_stats.state`) goes into a queue of at most [`QUEUE_CAP`] items. The
//!   pending status is moved into the queue before each edge, so the session sees status and
//!   edges in the order Moonraker sent them.
//! - **Overflow means resync, never loss.** When an edge finds the queue full, the queue is
//!   emptied and the session is told to re-read the whole state (Klippy's state, the
//!   subscription's full status, the job history) instead; the overflowed notifications
//!   are counted. A print's start or end is never lost this way: the history read finds it.
//!
//! Other notifications (G-code responses, process stats, ...) are not used by the link and
//! are dropped at once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::Notify;

use super::status::Subscription;

/// Edges waiting for the session, at most.
pub(super) const QUEUE_CAP: usize = 256;

/// A notification the session handles one by one.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Notice {
    KlippyReady,
    KlippyDisconnected,
    KlippyShutdown,
    /// `notify_history_changed`'s first parameter (`{"action": ..., "job": {...}}`).
    HistoryChanged(Value),
    WebcamsChanged,
}

/// What the session gets next.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Next {
    /// Merged status deltas (subscribed fields only).
    Status(Map<String, Value>),
    Notice(Notice),
    /// The queue overflowed: re-read everything. Carries how many notifications overflowed.
    Resync(u64),
}

#[derive(Default)]
struct State {
    queue: VecDeque<Next>,
    status: Option<Map<String, Value>>,
    /// What status deltas may set; `None` until subscribed (deltas are ignored until then).
    subscription: Option<Arc<Subscription>>,
    /// Notifications that overflowed since the last resync.
    overflowed: u64,
}

/// The hand-over point; shared by the reader (push) and the session (next).
#[derive(Default)]
pub(super) struct Inbox {
    state: Mutex<State>,
    wake: Notify,
}

impl Inbox {
    /// Sets what status deltas may set (before subscribing, so no delta after the
    /// subscription's answer is missed).
    pub(super) fn subscribe(&self, subscription: Arc<Subscription>) {
        if let Ok(mut s) = self.state.lock() {
            s.subscription = Some(subscription);
        }
    }

    /// A full status snapshot just arrived (the reader calls this before handing the answer
    /// over): status deltas received before it are older than the snapshot, forget them.
    /// Queued edges stay.
    pub(super) fn snapshot_arrived(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.status = None;
            s.queue.retain(|n| !matches!(n, Next::Status(_)));
        }
    }

    /// Takes one notification from the reader; never blocks, never grows past its bounds.
    pub(super) fn push(&self, method: &str, params: Value) {
        let notice = match method {
            "notify_status_update" => None,
            "notify_klippy_ready" => Some(Notice::KlippyReady),
            "notify_klippy_disconnected" => Some(Notice::KlippyDisconnected),
            "notify_klippy_shutdown" => Some(Notice::KlippyShutdown),
            "notify_history_changed" => {
                Some(Notice::HistoryChanged(params.get(0).cloned().unwrap_or(Value::Null)))
            }
            "notify_webcams_changed" => Some(Notice::WebcamsChanged),
            _ => return,
        };
        let Ok(mut s) = self.state.lock() else { return };
        let s = &mut *s;
        match notice {
            None => {
                let Some(sub) = s.subscription.clone() else { return };
                let Some(delta) = params.get(0) else { return };
                let pending = s.status.get_or_insert_with(Map::new);
                if sub.merge(pending, delta) {
                    // A print state change is an edge: keep it apart from later deltas.
                    s.edge(None);
                }
            }
            Some(n) => s.edge(Some(n)),
        }
        self.wake.notify_one();
    }

    /// The next thing for the session, waiting until there is one.
    pub(super) async fn next(&self) -> Next {
        loop {
            if let Some(n) = self.try_next() {
                return n;
            }
            self.wake.notified().await;
        }
    }

    /// The next thing for the session, if any: queued edges first (they are older), then
    /// the pending status.
    pub(super) fn try_next(&self) -> Option<Next> {
        let mut s = self.state.lock().ok()?;
        if let Some(n) = s.queue.pop_front() {
            return Some(n);
        }
        s.status.take().filter(|m| !m.is_empty()).map(Next::Status)
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let s = self.state.lock().unwrap();
        (s.queue.len(), s.status.as_ref().map_or(0, Map::len))
    }
}

impl State {
    /// Queues the pending status, then `notice`; on overflow, a resync instead.
    fn edge(&mut self, notice: Option<Notice>) {
        let resync_queued = matches!(self.queue.back(), Some(Next::Resync(_)));
        let needed = usize::from(self.status.is_some()) + usize::from(notice.is_some());
        if resync_queued || self.queue.len() + needed > QUEUE_CAP {
            // Everything queued and pending is superseded by re-reading the whole state.
            let superseded = if resync_queued { 0 } else { self.queue.len() };
            self.overflowed += (superseded + needed) as u64;
            self.queue.clear();
            self.status = None;
            self.queue.push_back(Next::Resync(self.overflowed));
            return;
        }
        self.overflowed = 0;
        if let Some(m) = self.status.take().filter(|m| !m.is_empty()) {
            self.queue.push_back(Next::Status(m));
        }
        if let Some(n) = notice {
            self.queue.push_back(Next::Notice(n));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn subscribed() -> Inbox {
        let inbox = Inbox::default();
        inbox.subscribe(Arc::new(Subscription::default()));
        inbox
    }

    #[test]
    fn status_deltas_coalesce_into_one_pending_status() {
        let inbox = subscribed();
        for i in 0..100_000 {
            inbox.push("notify_status_update", json!([{"extruder": {"temperature": i}}, 1.0]));
            inbox.push("notify_proc_stat_update", json!([{"cpu": i}]));
        }
        assert_eq!(inbox.held(), (0, 1));
        assert_eq!(
            inbox.try_next(),
            Some(Next::Status(json!({"extruder": {"temperature": 99_999}}).as_object().unwrap().clone()))
        );
        assert_eq!(inbox.try_next(), None);
    }

    #[test]
    fn edges_keep_their_order_with_the_status_around_them() {
        let inbox = subscribed();
        inbox.push("notify_status_update", json!([{"extruder": {"temperature": 1}}]));
        inbox.push("notify_status_update", json!([{"print_stats": {"state": "printing"}}]));
        inbox.push("notify_status_update", json!([{"print_stats": {"state": "complete"}}]));
        inbox.push("notify_history_changed", json!([{"action": "finished", "job": {}}]));
        inbox.push("notify_status_update", json!([{"extruder": {"temperature": 2}}]));
        let got: Vec<Next> = std::iter::from_fn(|| inbox.try_next()).collect();
        let status = |v: Value| Next::Status(v.as_object().unwrap().clone());
        assert_eq!(
            got,
            [
                status(json!({"extruder": {"temperature": 1}, "print_stats": {"state": "printing"}})),
                status(json!({"print_stats": {"state": "complete"}})),
                Next::Notice(Notice::HistoryChanged(json!({"action": "finished", "job": {}}))),
                status(json!({"extruder": {"temperature": 2}})),
            ]
        );
    }

    #[test]
    fn an_edge_flood_becomes_one_resync_not_a_loss() {
        let inbox = subscribed();
        for _ in 0..10_000 {
            inbox.push("notify_klippy_disconnected", json!([]));
            inbox.push("notify_status_update", json!([{"print_stats": {"state": "printing"}}]));
        }
        let (queued, _) = inbox.held();
        assert!(queued <= QUEUE_CAP, "{queued}");
        let got: Vec<Next> = std::iter::from_fn(|| inbox.try_next()).collect();
        assert!(matches!(got.first(), Some(Next::Resync(n)) if *n > 0), "{:?}", got.first());
        // After the resync, new edges queue normally again.
        inbox.push("notify_klippy_ready", json!([]));
        assert_eq!(inbox.try_next(), Some(Next::Notice(Notice::KlippyReady)));
    }

    #[test]
    fn deltas_before_the_subscription_are_ignored() {
        let inbox = Inbox::default();
        inbox.push("notify_status_update", json!([{"extruder": {"temperature": 1}}]));
        assert_eq!(inbox.try_next(), None);
    }
}
