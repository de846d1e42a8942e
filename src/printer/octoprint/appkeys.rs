//! OctoPrint's Application Keys workflow: how printvigil gets an API key without anyone
//! copying one by hand (`printvigil setup octoprint`).
//!
//! 1. `GET /plugin/appkeys/probe` answers 204 when the workflow is available (the bundled
//!    Application Keys plugin, OctoPrint 1.3.10+).
//! 2. `POST /plugin/appkeys/request {"app": "printvigil"}` opens a request; the answer
//!    carries an `app_token` (ours, to poll with) and the address of an `auth_dialog`.
//!    OctoPrint shows every logged-in admin an "Access Request" dialog.
//! 3. `GET /plugin/appkeys/request/<app_token>` answers 202 while the request waits for a
//!    decision, 200 with `{"api_key": ...}` once a person clicked *Allow*, and 404 when it
//!    was denied or expired (OctoPrint drops a request that is not polled for a minute, so
//!    the poll runs every [`POLL`]).
//!
//! No key is sent on these requests; the key received is a [`Secret`] from the start.

use std::time::Duration;

use serde_json::{Value, json};

use super::rest::{Rest, RestError};
use crate::secret::Secret;

/// Between two polls of a pending request.
pub const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AppKeyError {
    #[error("OctoPrint at {url} does not offer the Application Keys workflow ({why}); create a key in OctoPrint under Settings > Application Keys and set it as api_key")]
    Unsupported { url: String, why: String },
    #[error("OctoPrint at {url} cannot be reached: {why}; check the address (--url) and that OctoPrint runs")]
    Unreachable { url: String, why: String },
    #[error("the request was denied in OctoPrint, or it expired; run the command again and click Allow")]
    Denied,
    #[error("no decision within {0:?}; run the command again and click Allow in OctoPrint's Access Request dialog")]
    NoDecision(Duration),
    #[error("OctoPrint refused the request: {0}")]
    Refused(String),
}

/// What OctoPrint said when the request was opened: where a person approves it.
pub struct Pending {
    rest: Rest,
    token: String,
    /// OctoPrint's page for the decision (also shown as a dialog in its web interface).
    pub auth_dialog: Option<String>,
}

/// Opens a request for a key for `app` at OctoPrint's address `base`.
pub async fn request(base: &url::Url, app: &str) -> Result<Pending, AppKeyError> {
    let rest = Rest::new(base.clone(), Secret::new(""), Duration::from_secs(15));
    let url = base.to_string();
    let map = |e: RestError| match e {
        RestError::Network(why) => AppKeyError::Unreachable { url: url.clone(), why },
        RestError::Status(404, why) => AppKeyError::Unsupported { url: url.clone(), why: format!("HTTP 404 {why}") },
        other => AppKeyError::Refused(other.to_string()),
    };
    rest.get("plugin/appkeys/probe").await.map_err(map)?;
    let v = rest.post("plugin/appkeys/request", &json!({"app": app})).await.map_err(map)?;
    let token = v
        .get("app_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.len() < 256)
        .ok_or_else(|| AppKeyError::Refused(format!("no app_token in the answer: {v}")))?
        .to_string();
    let auth_dialog = v.get("auth_dialog").and_then(Value::as_str).map(str::to_owned);
    Ok(Pending { rest, token, auth_dialog })
}

impl Pending {
    /// Polls until a person decides, at most `wait`.
    pub async fn key(&self, wait: Duration) -> Result<Secret, AppKeyError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.rest.get_file("plugin/appkeys/request", &self.token).await {
                Ok(v) => {
                    if let Some(k) = v.get("api_key").and_then(Value::as_str).filter(|k| !k.trim().is_empty()) {
                        return Ok(Secret::new(k));
                    }
                }
                Err(RestError::Status(404, _)) => return Err(AppKeyError::Denied),
                // A blip while a person decides: keep polling until the deadline.
                Err(RestError::Network(_)) => {}
                Err(e) => return Err(AppKeyError::Refused(e.to_string())),
            }
            if tokio::time::Instant::now() + POLL > deadline {
                return Err(AppKeyError::NoDecision(wait));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
