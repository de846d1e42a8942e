//! JSON-RPC 2.0 over the websocket: requests out, answers matched back by id.
//!
//! Moonraker's websocket carries two kinds of text frame. An answer has the `id` of the
//! request it answers and a `result` or an `error`; a notification has a `method`
//! (`notify_status_update`, `notify_history_changed`, ...) and `params`, and no id.
//! [`parse_message`] tells them apart and is the one place raw text becomes structure, so
//! it is also what fuzzing feeds (with [`super::MessageReplay`] for the status merging
//! after it).
//!
//! A request registers a one-shot channel under a fresh id in [`Pending`], sends its frame
//! through the bounded outgoing queue and waits, with a timeout, for the reader to route
//! the answer back. [`PendingGuard`] removes the entry however the call ends, so a
//! timed-out or cancelled call leaves nothing behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use super::inbox::Inbox;
use crate::printer::PrinterError;

/// Frames waiting to be written; a full queue makes callers wait (the writer drains it as
/// fast as the socket takes frames). Only requests go here, one per waiting call.
pub(super) const OUTGOING_QUEUE: usize = 64;

/// How a request failed.
#[derive(Debug)]
pub(super) enum CallError {
    Timeout(Duration),
    Closed,
    Rpc { code: i64, message: String },
}

impl CallError {
    pub(super) fn into_printer_error(self, printer: &str, method: &str) -> PrinterError {
        match self {
            CallError::Timeout(timeout) => {
                PrinterError::Timeout { printer: printer.into(), method: method.into(), timeout }
            }
            CallError::Closed => PrinterError::Closed { printer: printer.into(), method: method.into() },
            CallError::Rpc { message, .. } => {
                PrinterError::Refused { printer: printer.into(), action: method.into(), message }
            }
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout(t) => write!(f, "no answer within {t:?}"),
            CallError::Closed => write!(f, "connection closed"),
            CallError::Rpc { code, message } => write!(f, "{message} (code {code})"),
        }
    }
}

/// One text frame from Moonraker, parsed (see [`parse_message`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The answer to request `id`: its `result`, or its `error` (code, message).
    Answer { id: u64, result: Result<Value, (i64, String)> },
    /// A notification: `method` (e.g. `notify_status_update`) and its `params`.
    Notification { method: String, params: Value },
}

/// Why a frame from Moonraker was ignored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MessageError {
    #[error("not JSON ({0})")]
    NotJson(String),
    #[error("not a JSON object")]
    NotObject,
    #[error("neither a notification nor an answer with a numeric id")]
    Unrecognised,
    #[error("an answer to request {0}, which is no longer waiting")]
    NotWaiting(u64),
}

/// Parses one websocket text message from Moonraker. Never panics, whatever the text.
pub fn parse_message(text: &str) -> Result<Incoming, MessageError> {
    let v: Value = serde_json::from_str(text).map_err(|e| MessageError::NotJson(e.to_string()))?;
    let Value::Object(mut obj) = v else { return Err(MessageError::NotObject) };
    if let Some(Value::String(method)) = obj.remove("method") {
        let params = obj.remove("params").unwrap_or(Value::Null);
        return Ok(Incoming::Notification { method, params });
    }
    let id = obj.get("id").and_then(Value::as_u64).ok_or(MessageError::Unrecognised)?;
    let result = match obj.remove("error") {
        Some(err) => {
            let msg = err.get("message").and_then(Value::as_str).unwrap_or("unknown error");
            let code = err.get("code").and_then(Value::as_i64).unwrap_or(0);
            Err((code, msg.to_string()))
        }
        None => Ok(obj.remove("result").unwrap_or(Value::Null)),
    };
    Ok(Incoming::Answer { id, result })
}

/// A request waiting for its answer. `snapshot`: the answer carries the full status (a
/// subscription), which makes older status deltas in the inbox obsolete.
pub(super) struct Waiting {
    tx: oneshot::Sender<Result<Value, CallError>>,
    snapshot: bool,
}

/// Requests waiting for their answer, by id.
pub(super) type Pending = Arc<Mutex<HashMap<u64, Waiting>>>;

/// Routes one text frame: an answer to its waiting request, a notification to the inbox
/// (which coalesces or queues it without ever blocking the reader).
pub(super) fn dispatch(text: &str, pending: &Pending, inbox: &Inbox) -> Result<(), MessageError> {
    match parse_message(text)? {
        Incoming::Notification { method, params } => {
            inbox.push(&method, params);
            Ok(())
        }
        Incoming::Answer { id, result } => {
            let result = result.map_err(|(code, message)| CallError::Rpc { code, message });
            match pending.lock().ok().and_then(|mut p| p.remove(&id)) {
                Some(w) => {
                    if w.snapshot {
                        inbox.snapshot_arrived();
                    }
                    let _ = w.tx.send(result);
                    Ok(())
                }
                None => Err(MessageError::NotWaiting(id)),
            }
        }
    }
}

/// A handle to make requests on one connection; cloned by whoever needs to call.
#[derive(Clone)]
pub(super) struct Rpc {
    pub(super) out: mpsc::Sender<Message>,
    pub(super) pending: Pending,
    next_id: Arc<AtomicU64>,
    pub(super) timeout: Duration,
}

/// Removes a request's pending entry however the call ends (answer, timeout, drop).
struct PendingGuard {
    pending: Pending,
    id: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&self.id);
        }
    }
}

impl Rpc {
    pub(super) fn new(out: mpsc::Sender<Message>, timeout: Duration) -> Rpc {
        Rpc { out, pending: Arc::new(Mutex::new(HashMap::new())), next_id: Arc::new(AtomicU64::new(1)), timeout }
    }

    pub(super) async fn call(&self, method: &str, params: Value) -> Result<Value, CallError> {
        self.call_timeout(method, params, self.timeout).await
    }

    /// A call whose answer is a full status snapshot (`printer.objects.subscribe`).
    pub(super) async fn call_snapshot(&self, method: &str, params: Value) -> Result<Value, CallError> {
        self.exchange(method, params, self.timeout, true).await
    }

    pub(super) async fn call_timeout(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        self.exchange(method, params, timeout, false).await
    }

    async fn exchange(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
        snapshot: bool,
    ) -> Result<Value, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().map_err(|_| CallError::Closed)?.insert(id, Waiting { tx, snapshot });
        let _guard = PendingGuard { pending: self.pending.clone(), id };
        let msg = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
        let exchange = async {
            self.out.send(Message::text(msg.to_string())).await.map_err(|_| CallError::Closed)?;
            rx.await.map_err(|_| CallError::Closed)?
        };
        tokio::time::timeout(timeout, exchange).await.unwrap_or(Err(CallError::Timeout(timeout)))
    }

    #[cfg(test)]
    fn pending_len(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_from_moonraker_is_rejected_not_fatal() {
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let inbox = Inbox::default();
        for text in [
            "",
            "nonsense",
            "[1,2]",
            "{\"id\": \"x\"}",
            "{\"id\": 99, \"result\": 1}",
            "{\"jsonrpc\":\"2.0\"}",
            "{\"method\": 3, \"id\": -1}",
        ] {
            assert!(dispatch(text, &pending, &inbox).is_err(), "{text}");
        }
        assert!(dispatch("{\"method\":\"notify_x\",\"params\":[]}", &pending, &inbox).is_ok());
    }

    #[test]
    fn answers_and_notifications_are_told_apart() {
        assert_eq!(
            parse_message(r#"{"jsonrpc":"2.0","id":7,"result":{"a":1}}"#),
            Ok(Incoming::Answer { id: 7, result: Ok(json!({"a": 1})) })
        );
        assert_eq!(
            parse_message(r#"{"id":8,"error":{"code":401,"message":"Unauthorized"}}"#),
            Ok(Incoming::Answer { id: 8, result: Err((401, "Unauthorized".into())) })
        );
        assert_eq!(
            parse_message(r#"{"method":"notify_klippy_ready"}"#),
            Ok(Incoming::Notification { method: "notify_klippy_ready".into(), params: Value::Null })
        );
    }

    #[tokio::test]
    async fn timed_out_requests_leave_no_pending_entry() {
        let (out, _keep) = mpsc::channel(OUTGOING_QUEUE);
        let rpc = Rpc::new(out, Duration::from_millis(20));
        let r = rpc.call("server.info", json!({})).await;
        assert!(matches!(r, Err(CallError::Timeout(_))));
        assert_eq!(rpc.pending_len(), 0);
        // A call dropped mid-way (its future cancelled) also leaves nothing behind.
        let fut = rpc.call_timeout("server.info", json!({}), Duration::from_secs(60));
        let _ = tokio::time::timeout(Duration::from_millis(10), fut).await;
        assert_eq!(rpc.pending_len(), 0);
    }

    #[tokio::test]
    async fn a_full_outgoing_queue_times_out_instead_of_growing() {
        let (out, _keep) = mpsc::channel(1);
        let rpc = Rpc::new(out, Duration::from_millis(20));
        // Nobody writes: the first frame fills the queue, the second waits and times out.
        let _ = rpc.call("a", json!({})).await;
        assert!(matches!(rpc.call("b", json!({})).await, Err(CallError::Timeout(_))));
        assert_eq!(rpc.pending_len(), 0);
    }
}
