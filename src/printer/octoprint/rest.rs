//! OctoPrint's REST API: every request carries the `X-Api-Key` header, every answer is read
//! with a size cap ([`MAX_ANSWER`]) so a broken proxy or captive portal cannot make the link
//! hold unbounded memory, and HTTP statuses become the few cases the link acts on:
//!
//! - 401/403: the key is wrong or lacks a permission ([`RestError::Unauthorized`]): a
//!   configuration problem, logged once per state change with the fix.
//! - 409: OctoPrint refuses because of the printer's state: `/api/printer` answers 409
//!   when no printer is connected to OctoPrint, `POST /api/job` when there is nothing to
//!   pause or cancel ([`RestError::Conflict`], with OctoPrint's own reason).
//! - anything else unexpected: [`RestError::Status`]; no answer: [`RestError::Network`].
//!
//! The key never appears in an error or a log line: only [`Secret::expose`] at the header.

use std::time::Duration;

use serde_json::Value;

use crate::secret::Secret;

/// Largest answer read from OctoPrint (its `/api/settings` is ~20 KiB with many plugins).
pub const MAX_ANSWER: usize = 1 << 20;
/// Largest error body read for its message.
const MAX_ERROR_BODY: usize = 4096;

#[derive(Debug, Clone, thiserror::Error)]
pub(super) enum RestError {
    #[error("OctoPrint refused the API key (HTTP {0})")]
    Unauthorized(u16),
    #[error("{0}")]
    Conflict(String),
    #[error("OctoPrint answered HTTP {0}: {1}")]
    Status(u16, String),
    #[error("OctoPrint cannot be reached: {0}")]
    Network(String),
    #[error("OctoPrint sent an answer over the {} KiB limit", MAX_ANSWER >> 10)]
    TooLarge,
    #[error("OctoPrint sent an answer that is not the expected JSON: {0}")]
    Json(String),
}

/// The REST client of one link.
#[derive(Clone)]
pub(super) struct Rest {
    client: reqwest::Client,
    base: url::Url,
    key: Secret,
}

impl Rest {
    pub(super) fn new(base: url::Url, key: Secret, timeout: Duration) -> Rest {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Rest { client, base, key }
    }

    pub(super) fn base(&self) -> &url::Url {
        &self.base
    }

    /// `GET path` (relative to OctoPrint's address) as JSON.
    pub(super) async fn get(&self, path: &str) -> Result<Value, RestError> {
        let url = self.url(path)?;
        self.send(self.client.get(url)).await
    }

    /// `GET` of `prefix` (e.g. `api/files/local`) followed by `path`'s segments, each
    /// percent-encoded (file names may hold spaces, `#`, `?`).
    pub(super) async fn get_file(&self, prefix: &str, path: &str) -> Result<Value, RestError> {
        let mut url = self.url(prefix)?;
        url.path_segments_mut()
            .map_err(|_| RestError::Json("OctoPrint's address cannot take a path".into()))?
            .pop_if_empty()
            .extend(path.split('/').filter(|s| !s.is_empty()));
        self.send(self.client.get(url)).await
    }

    /// `POST path` with a JSON body; an empty answer (204) is `Null`.
    pub(super) async fn post(&self, path: &str, body: &Value) -> Result<Value, RestError> {
        let url = self.url(path)?;
        self.send(self.client.post(url).json(body)).await
    }

    fn url(&self, path: &str) -> Result<url::Url, RestError> {
        self.base.join(path).map_err(|e| RestError::Json(format!("bad path {path}: {e}")))
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, RestError> {
        // No key (the Application Keys workflow asks for one): no header.
        let req = if self.key.is_empty() { req } else { req.header("X-Api-Key", self.key.expose()) };
        let resp = req
            .send()
            .await
            .map_err(|e| RestError::Network(describe(&e)))?;
        let status = resp.status().as_u16();
        match status {
            200..=299 => {
                let body = read_capped(resp, MAX_ANSWER).await?;
                if body.iter().all(u8::is_ascii_whitespace) {
                    return Ok(Value::Null);
                }
                serde_json::from_slice(&body).map_err(|e| RestError::Json(e.to_string()))
            }
            401 | 403 => Err(RestError::Unauthorized(status)),
            409 => Err(RestError::Conflict(error_text(resp).await)),
            _ => Err(RestError::Status(status, error_text(resp).await)),
        }
    }
}

/// OctoPrint's reason in an error answer: `{"error": "..."}`, or the start of the text.
async fn error_text(resp: reqwest::Response) -> String {
    let body = match read_capped(resp, MAX_ERROR_BODY).await {
        Ok(b) => b,
        Err(e) => return e.to_string(),
    };
    if let Ok(v) = serde_json::from_slice::<Value>(&body)
        && let Some(e) = v.get("error").and_then(Value::as_str)
    {
        return e.chars().take(300).collect();
    }
    let text = String::from_utf8_lossy(&body);
    let text: String = text.chars().filter(|c| !c.is_control()).take(300).collect();
    text.trim().to_string()
}

/// Reads an answer's body, failing as soon as it would exceed `cap` bytes (by its declared
/// length or by what arrives).
pub(super) async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, RestError> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(RestError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| RestError::Network(describe(&e)))? {
        if body.len() + chunk.len() > cap {
            return Err(RestError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A reqwest error without its URL (which is fine) and with its cause (which says what).
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut src = e.source();
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    if cause.is_empty() { what.to_string() } else { format!("{what} ({cause})") }
}
