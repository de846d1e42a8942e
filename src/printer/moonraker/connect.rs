//! Opening the websocket to Moonraker, with the API key when there is one.
//!
//! The key travels in the upgrade request's `X-Api-Key` header (marked sensitive, so the
//! `http` crate's Debug output redacts it), or is first traded over HTTP for a one-shot
//! token that goes in the URL (`?token=`, valid once, for seconds). It is never put in a
//! JSON-RPC frame: Moonraker authenticates the connection from the upgrade request. The
//! websocket library logs the raw upgrade request at `trace`; [`crate::logging`] caps its
//! targets so no filter can show that.
//!
//! One message may be at most [`MAX_MESSAGE`] bytes: Moonraker's largest answers the link
//! asks for (50 history entries, the object list) are far smaller, and a bigger one ends
//! the connection with a clear reason instead of an unbounded buffer.

use std::time::Duration;

use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, protocol::WebSocketConfig};

use super::{ApiKeyVia, Shared};
use crate::secret::Secret;

/// The largest websocket message (and frame) accepted from Moonraker.
pub const MAX_MESSAGE: usize = 4 << 20;
/// The largest one-shot token answer read.
const MAX_TOKEN_ANSWER: usize = 64 * 1024;

/// Why a connection could not be made.
pub(super) enum ConnectError {
    /// Moonraker refused the key (or its absence).
    Unauthorized(String),
    Other(String),
}

pub(super) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The websocket settings: message and frame size capped at [`MAX_MESSAGE`].
pub(super) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE))
}

pub(super) async fn connect(shared: &Shared) -> Result<Ws, ConnectError> {
    let cfg = &shared.cfg;
    let base = cfg.base();
    let mut ws_url = base.clone();
    let _ = ws_url.set_scheme(if base.scheme() == "https" { "wss" } else { "ws" });
    ws_url.set_path("/websocket");
    let key = cfg.api_key.as_ref().filter(|k| !k.is_empty());
    if let (Some(key), ApiKeyVia::OneshotToken) = (key, cfg.api_key_via) {
        let token = oneshot_token(&base, key, Duration::from_secs(cfg.request_timeout_secs)).await?;
        ws_url.query_pairs_mut().append_pair("token", &token);
    }
    let mut request = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Other(format!("bad websocket address: {e}")))?;
    if let (Some(key), ApiKeyVia::Header) = (key, cfg.api_key_via) {
        let mut value: tungstenite::http::HeaderValue = key.expose().parse().map_err(|_| {
            ConnectError::Other("the API key contains characters a header cannot carry".into())
        })?;
        value.set_sensitive(true);
        request.headers_mut().insert("X-Api-Key", value);
    }
    let timeout = Duration::from_secs(cfg.request_timeout_secs);
    let handshake = tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true);
    match tokio::time::timeout(timeout, handshake).await {
        Err(_) => Err(ConnectError::Other(format!("no websocket handshake within {timeout:?}"))),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(resp))) if matches!(resp.status().as_u16(), 401 | 403) => {
            Err(ConnectError::Unauthorized(format!("HTTP {}", resp.status())))
        }
        Ok(Err(tungstenite::Error::Http(resp))) => {
            Err(ConnectError::Other(format!("HTTP {} instead of a websocket", resp.status())))
        }
        Ok(Err(e)) => Err(ConnectError::Other(e.to_string())),
    }
}

async fn oneshot_token(base: &url::Url, key: &Secret, timeout: Duration) -> Result<String, ConnectError> {
    let mut url = base.clone();
    url.set_path("/access/oneshot_token");
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| ConnectError::Other(e.to_string()))?;
    let mut key_header: reqwest::header::HeaderValue = key
        .expose()
        .parse()
        .map_err(|_| ConnectError::Other("the API key contains characters a header cannot carry".into()))?;
    key_header.set_sensitive(true);
    let mut resp = client.get(url).header("X-Api-Key", key_header).send().await.map_err(|e| {
        ConnectError::Other(format!("one-shot token request failed: {}", e.without_url()))
    })?;
    let status = resp.status();
    if matches!(status.as_u16(), 401 | 403) {
        return Err(ConnectError::Unauthorized(format!("HTTP {status} on /access/oneshot_token")));
    }
    if !status.is_success() {
        return Err(ConnectError::Other(format!("one-shot token request: HTTP {status}")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ConnectError::Other(format!("one-shot token answer unreadable: {}", e.without_url())))?
    {
        if body.len() + chunk.len() > MAX_TOKEN_ANSWER {
            return Err(ConnectError::Other(format!(
                "one-shot token answer over {} KiB: not Moonraker's",
                MAX_TOKEN_ANSWER / 1024
            )));
        }
        body.extend_from_slice(&chunk);
    }
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| ConnectError::Other(format!("one-shot token answer unreadable: {e}")))?;
    body.get("result")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ConnectError::Other("one-shot token answer has no `result`".into()))
}
