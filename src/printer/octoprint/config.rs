//! `[[printers]]` entries with `kind = "octoprint"`: where OctoPrint is, the API key that
//! proves who we are (an application key from OctoPrint's Application Keys workflow,
//! `printvigil setup octoprint`, or a user's key), and how long to wait for answers and
//! actions.
//!
//! Validation happens when the configuration is loaded, so a link only ever starts with an
//! address it can parse and a key it can send. Every message names the key to fix.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, invalid};
use crate::secret::Secret;

/// `kind = "octoprint"`: a printer driven by OctoPrint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OctoPrintConfig {
    /// A short name, unique among the printers.
    pub name: String,
    /// OctoPrint's address (also the base of relative webcam URLs).
    #[serde(default = "default_url")]
    pub url: String,
    /// OctoPrint's API key (sent as `X-Api-Key`). Required: OctoPrint answers nothing
    /// useful without one.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Seconds between full state reads over REST while the push socket is down (and a
    /// slow cross-check while it is up: [`OctoPrintConfig::poll_secs`] x 6).
    #[serde(default = "default_poll")]
    pub poll_secs: u64,
    /// Seconds to wait for an answer to a request.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Seconds to wait for OctoPrint to confirm pause, resume or cancel.
    #[serde(default = "default_action_timeout")]
    pub action_timeout_secs: u64,
    /// The camera to watch; default: the first webcam OctoPrint knows (`/api/settings`).
    #[serde(default)]
    pub camera: Option<crate::camera::CameraConfig>,
    /// What to do with a failing print on this printer (default: `watch.action_on_failure`).
    #[serde(default)]
    pub action_on_failure: Option<crate::printer::Action>,
}

pub(super) fn default_url() -> String {
    "http://127.0.0.1:5000".into()
}
fn default_poll() -> u64 {
    5
}
fn default_request_timeout() -> u64 {
    10
}
fn default_action_timeout() -> u64 {
    60
}

impl OctoPrintConfig {
    /// A configuration with defaults for everything but the name, address and key.
    pub fn new(name: &str, url: &str, api_key: &str) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            api_key: Some(Secret::new(api_key)),
            poll_secs: default_poll(),
            request_timeout_secs: default_request_timeout(),
            action_timeout_secs: default_action_timeout(),
            camera: None,
            action_on_failure: None,
        }
    }

    pub(crate) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let url = url::Url::parse(&self.url).map_err(|e| {
            invalid(
                &format!("{key}.url"),
                &format!("{:?}", self.url),
                &format!("{e}; write OctoPrint's address like \"http://127.0.0.1:5000\""),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid(
                &format!("{key}.url"),
                &format!("{:?}", self.url),
                "use OctoPrint's http:// or https:// address, e.g. \"http://127.0.0.1:5000\"",
            ));
        }
        match &self.api_key {
            None => {
                return Err(invalid(
                    &format!("{key}.api_key"),
                    "(missing)",
                    "set api_key to an OctoPrint API key: run `printvigil setup octoprint` to request one (you approve it in OctoPrint), or copy a key from OctoPrint's Settings > Application Keys",
                ));
            }
            Some(k) if k.is_empty() || k.expose().chars().any(|c| c.is_control() || c == ' ') => {
                return Err(invalid(
                    &format!("{key}.api_key"),
                    "(blank or with spaces)",
                    "set api_key to the OctoPrint API key exactly as OctoPrint shows it",
                ));
            }
            Some(_) => {}
        }
        for (k, v) in [
            ("poll_secs", self.poll_secs),
            ("request_timeout_secs", self.request_timeout_secs),
            ("action_timeout_secs", self.action_timeout_secs),
        ] {
            if !(1..=3600).contains(&v) {
                return Err(invalid(&format!("{key}.{k}"), &v.to_string(), "use 1 to 3600 seconds"));
            }
        }
        Ok(())
    }

    /// The address, parsed (validated at load; the default if someone built a bad one).
    pub(super) fn base(&self) -> url::Url {
        let mut u =
            url::Url::parse(&self.url).unwrap_or_else(|_| url::Url::parse(&default_url()).expect("default url"));
        if !u.path().ends_with('/') {
            let p = format!("{}/", u.path());
            u.set_path(&p);
        }
        u
    }
}
