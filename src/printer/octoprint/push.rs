//! OctoPrint's push socket: the raw-websocket endpoint of its SockJS server,
//! `/sockjs/websocket`, for fast events.
//!
//! The socket serves only an authenticated client: the link logs in *passively* over REST
//! (`POST /api/login {"passive": true}` with the `X-Api-Key` header; the answer carries a
//! user `name` and a `session`), then sends `{"auth": "name:session"}` on the socket. It
//! then subscribes to what it needs (state without logs and messages, events, no plugin
//! messages) and throttles `current` updates to one per [`THROTTLE`] x 500 ms, so an idle
//! printer costs little CPU.
//!
//! Messages are plain JSON objects with one key: `connected`, `current`/`history` (a
//! [`super::tracker::Snapshot`]'s fields), `event` (`{"type", "payload"}`), and others
//! that are ignored. A message over [`MAX_MESSAGE`] ends the connection; nothing is queued
//! beyond the one message being read.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};

use super::rest::{Rest, RestError};

/// Largest push message accepted (a `history` message with a long log is the biggest).
pub const MAX_MESSAGE: usize = 1 << 20;
/// `current` updates at most every THROTTLE x 500 ms.
pub const THROTTLE: u32 = 2;

pub(super) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a push message means to the link.
#[derive(Debug, PartialEq)]
pub(super) enum Push {
    /// A full state (`current` or `history`).
    State(Value),
    /// An event: its type and payload.
    Event(String, Value),
    Other,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum PushError {
    #[error("passive login failed: {0}")]
    Login(RestError),
    #[error("the login answer has no user name and session")]
    NoSession,
    #[error("the push socket needs plain http (OctoPrint behind https is followed by polling)")]
    Https,
    #[error("cannot open the push socket: {0}")]
    Connect(String),
}

/// Logs in passively and opens the socket, authenticated and subscribed.
pub(super) async fn open(rest: &Rest, timeout: Duration) -> Result<Ws, PushError> {
    let login = rest.post("api/login", &json!({"passive": true})).await.map_err(PushError::Login)?;
    let name = login.get("name").and_then(Value::as_str).ok_or(PushError::NoSession)?;
    let session = login.get("session").and_then(Value::as_str).ok_or(PushError::NoSession)?;
    let mut url = rest.base().join("sockjs/websocket").map_err(|e| PushError::Connect(e.to_string()))?;
    if url.scheme() != "http" {
        return Err(PushError::Https);
    }
    let _ = url.set_scheme("ws");
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
    let (mut ws, _) = tokio::time::timeout(
        timeout,
        tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true),
    )
    .await
    .map_err(|_| PushError::Connect(format!("no answer within {timeout:?}")))?
    .map_err(|e| PushError::Connect(e.to_string()))?;
    let hello = [
        json!({"auth": format!("{name}:{session}")}),
        json!({"subscribe": {"state": {"logs": false, "messages": false}, "events": true, "plugins": false}}),
        json!({"throttle": THROTTLE}),
    ];
    for m in hello {
        ws.send(Message::text(m.to_string())).await.map_err(|e| PushError::Connect(e.to_string()))?;
    }
    Ok(ws)
}

/// Reads the next message; `Err` with the reason when the socket ended.
pub(super) async fn next(ws: &mut Ws) -> Result<Push, String> {
    loop {
        match ws.next().await {
            None => return Err("OctoPrint closed the push socket".into()),
            Some(Err(e)) => return Err(format!("push socket: {e}")),
            Some(Ok(Message::Text(t))) => return Ok(parse(t.as_str())),
            Some(Ok(Message::Close(_))) => return Err("OctoPrint closed the push socket".into()),
            Some(Ok(_)) => {}
        }
    }
}

/// One push message; anything unexpected is [`Push::Other`].
pub(super) fn parse(text: &str) -> Push {
    let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(text) else { return Push::Other };
    if let Some(v) = m.remove("current").or_else(|| m.remove("history")) {
        return Push::State(v);
    }
    if let Some(Value::Object(mut e)) = m.remove("event") {
        let kind = e.get("type").and_then(Value::as_str).unwrap_or("").to_string();
        let payload = e.remove("payload").unwrap_or(Value::Null);
        return Push::Event(kind, payload);
    }
    Push::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_and_garbage_is_ignored() {
        assert!(matches!(parse(r#"{"current": {"state": {}}}"#), Push::State(_)));
        assert_eq!(
            parse(r#"{"event": {"type": "PrintDone", "payload": {"path": "a"}}}"#),
            Push::Event("PrintDone".into(), json!({"path": "a"}))
        );
        for g in ["", "[]", "{\"event\": 5}", "\u{0}", "{\"connected\": {}}"] {
            assert_eq!(parse(g), Push::Other);
        }
    }
}
