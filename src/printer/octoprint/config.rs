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

/// A TOML basic string (JSON's escapes are TOML's).
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The text of a config file with `api_key` of the `[[printers]]` entry named `name` set to
/// `key` (the line replaced, or added after `name`); without such an entry, a new
/// `kind = "octoprint"` entry at `url` is appended. Everything else, comments included,
/// stays as it was. Entries written as inline tables are not found (a new entry is added,
/// and loading then reports the duplicate name).
pub fn set_api_key(text: &str, name: &str, url: &str, key: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let is_key = |l: &str, k: &str| {
        let t = l.trim_start();
        t.strip_prefix(k).is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    let value = |l: &str| l.split_once('=').map(|(_, v)| v.trim().to_string()).unwrap_or_default();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() == "[[printers]]" {
            let end = (i + 1..lines.len()).find(|&j| lines[j].trim_start().starts_with('[')).unwrap_or(lines.len());
            let block = i + 1..end;
            let named = block.clone().find(|&j| is_key(lines[j], "name") && value(lines[j]) == toml_string(name));
            if let Some(name_line) = named {
                let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                let new = format!("api_key = {}", toml_string(key));
                match block.clone().find(|&j| is_key(lines[j], "api_key")) {
                    Some(j) => out[j] = new,
                    None => out.insert(name_line + 1, new),
                }
                return out.join("\n") + "\n";
            }
            i = end;
        } else {
            i += 1;
        }
    }
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&format!(
        "[[printers]]\nname = {}\nkind = \"octoprint\"\nurl = {}\napi_key = {}\n",
        toml_string(name),
        toml_string(url),
        toml_string(key)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_set_in_the_named_entry_or_a_new_entry_is_added() {
        let text = "# mine\n[[printers]]\nname = \"voron\"\nkind = \"moonraker\"\n\n[[printers]]\nname = \"ender\"\nkind = \"octoprint\"\napi_key = \"OLD\" # old\n\n[server]\nurl = \"x\"\n";
        let t = set_api_key(text, "ender", "http://o:5000", "NEW");
        assert!(t.contains("name = \"ender\"\nkind = \"octoprint\"\napi_key = \"NEW\"\n") && !t.contains("OLD"), "{t}");
        assert!(t.starts_with("# mine\n") && t.contains("[server]\nurl = \"x\""), "{t}");
        let t = set_api_key("[[printers]]\nname = \"ender\"\nkind = \"octoprint\"\n[server]\n", "ender", "u", "K");
        assert_eq!(t, "[[printers]]\nname = \"ender\"\napi_key = \"K\"\nkind = \"octoprint\"\n[server]\n");
        let t = set_api_key("state_dir = \"/x\"", "new", "http://h:5000", "K\"");
        assert_eq!(
            t,
            "state_dir = \"/x\"\n\n[[printers]]\nname = \"new\"\nkind = \"octoprint\"\nurl = \"http://h:5000\"\napi_key = \"K\\\"\"\n"
        );
        let c = crate::config::Config::from_toml_str(&set_api_key("", "p", "http://127.0.0.1:5000", "abc")).unwrap();
        assert_eq!(c.printers.len(), 1);
    }
}
