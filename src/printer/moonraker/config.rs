//! `[[printers]]` entries with `kind = "moonraker"`: where Moonraker is, how to prove who we
//! are (an API key sent in the websocket upgrade's `X-Api-Key` header, or traded for a
//! one-shot token first), and how long to wait for answers and actions.
//!
//! Validation happens when the configuration is loaded, so a link only ever starts with an
//! address it can parse.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, invalid};
use crate::secret::{Secret, SecretUrl};

/// `kind = "moonraker"`: a Klipper printer behind Moonraker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MoonrakerConfig {
    /// A short name, unique among the printers.
    pub name: String,
    /// Moonraker's address.
    #[serde(default = "default_url")]
    pub url: SecretUrl,
    /// Moonraker's API key, when Moonraker does not trust printvigil's address.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// How the API key is sent: `header` (`X-Api-Key` on the websocket upgrade) or
    /// `oneshot_token` (a one-shot token fetched over HTTP, then `?token=`).
    #[serde(default)]
    pub api_key_via: ApiKeyVia,
    /// Seconds to wait for an answer to a request; a connection is also checked every
    /// three times this long, and redone when it stalled.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Seconds to wait for the printer to confirm pause, resume or cancel.
    #[serde(default = "default_action_timeout")]
    pub action_timeout_secs: u64,
    /// The camera to watch; default: the first camera Moonraker lists (its webcam settings).
    #[serde(default)]
    pub camera: Option<crate::camera::CameraConfig>,
    /// What to do with a failing print on this printer (default: `watch.action_on_failure`).
    #[serde(default)]
    pub action_on_failure: Option<crate::printer::Action>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeyVia {
    #[default]
    Header,
    OneshotToken,
}

fn default_url() -> SecretUrl {
    "http://127.0.0.1:7125".into()
}
fn default_request_timeout() -> u64 {
    10
}
fn default_action_timeout() -> u64 {
    60
}

impl MoonrakerConfig {
    /// A configuration with defaults for everything but the name and address.
    pub fn new(name: &str, url: &str) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            api_key: None,
            api_key_via: ApiKeyVia::Header,
            request_timeout_secs: default_request_timeout(),
            action_timeout_secs: default_action_timeout(),
            camera: None,
            action_on_failure: None,
        }
    }

    pub(crate) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let url = url::Url::parse(self.url.expose()).map_err(|e| {
            invalid(
                &format!("{key}.url"),
                &format!("{:?}", self.url),
                &format!("{e}; write Moonraker's address like \"http://127.0.0.1:7125\""),
            )
        })?;
        if url.scheme() != "http" || url.host_str().is_none() {
            return Err(invalid(
                &format!("{key}.url"),
                &format!("{:?}", self.url),
                "use Moonraker's plain http:// address and port, e.g. \"http://127.0.0.1:7125\" (https is not supported yet)",
            ));
        }
        if !crate::printer::nonblank(&self.api_key) {
            return Err(invalid(
                &format!("{key}.api_key"),
                "(blank)",
                "remove api_key when Moonraker trusts this host, or set it to Moonraker's API key (a blank key makes Moonraker revoke trust)",
            ));
        }
        for (k, v) in [
            ("request_timeout_secs", self.request_timeout_secs),
            ("action_timeout_secs", self.action_timeout_secs),
        ] {
            if !(1..=3600).contains(&v) {
                return Err(invalid(&format!("{key}.{k}"), &v.to_string(), "use 1 to 3600 seconds"));
            }
        }
        Ok(())
    }

    pub(super) fn base(&self) -> url::Url {
        url::Url::parse(self.url.expose()).unwrap_or_else(|_| url::Url::parse(default_url().expose()).unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_moonrakers_address_never_shows() {
        let cfg = MoonrakerConfig::new("voron", "http://pi:hunter2@192.0.2.7:7125");
        cfg.validate("printers[0]").unwrap();
        let shown = format!("{} {:?} {}", cfg.url, cfg, serde_json::to_string(&cfg).unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(cfg.base().password(), Some("hunter2"), "the request still gets it");
    }
}
