//! The `[[notify]]` entries: where alerts go, and which.
//!
//! ```toml
//! [[notify]]
//! kind = "ntfy"                          # webhook | ntfy | telegram | discord
//! url = "https://ntfy.sh/my-printers"    # the topic URL
//! events = ["warn", "pause", "failed", "printer_offline", "camera_offline"]
//!
//! [[notify]]
//! kind = "telegram"
//! token = "123456:ABC..."                # the bot token (BotFather)
//! chat_id = "-1001234567890"
//! ```
//!
//! Every URL and token is a secret: it never reaches a log line (a Discord webhook URL
//! and a Telegram request URL carry the credential in their path).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, invalid};
use crate::secret::Secret;

/// The services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A JSON POST to any URL (Home Assistant webhooks, Node-RED, n8n, a script).
    Webhook,
    /// ntfy.sh or a self-hosted ntfy: push notifications to phones.
    Ntfy,
    /// A Telegram bot writing to a chat.
    Telegram,
    /// A Discord channel's webhook.
    Discord,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Webhook => "webhook",
            Kind::Ntfy => "ntfy",
            Kind::Telegram => "telegram",
            Kind::Discord => "discord",
        }
    }
}

/// What an alert is about; `events` picks them per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The print may be failing (a warning decision).
    Warn,
    /// The failing print was paused (or cancelled, or reported: the printer's action).
    Pause,
    /// A print completed.
    Finished,
    /// A print was cancelled or stopped on an error.
    Failed,
    /// The printer has been unreachable for `offline_after_secs` (and when it is back).
    PrinterOffline,
    /// The camera has given no frames for `offline_after_secs` (and when it is back).
    CameraOffline,
}

impl AlertKind {
    pub const ALL: [AlertKind; 6] = [
        AlertKind::Warn,
        AlertKind::Pause,
        AlertKind::Finished,
        AlertKind::Failed,
        AlertKind::PrinterOffline,
        AlertKind::CameraOffline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Warn => "warn",
            AlertKind::Pause => "pause",
            AlertKind::Finished => "finished",
            AlertKind::Failed => "failed",
            AlertKind::PrinterOffline => "printer_offline",
            AlertKind::CameraOffline => "camera_offline",
        }
    }

    /// Failure alerts, the ones a snooze holds back.
    pub fn snoozable(self) -> bool {
        matches!(self, AlertKind::Warn | AlertKind::Pause | AlertKind::CameraOffline)
    }
}

/// How the frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FrameMode {
    /// Uploaded with the message (multipart; ntfy: the request body).
    #[default]
    Attach,
    /// As a link: `frame_url_base` + `<printer>/<file name>` (serve `state_dir/frames` there).
    Url,
    /// No frame.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    pub kind: Kind,
    /// A label for log lines (default: the kind and the URL's host).
    #[serde(default)]
    pub name: Option<String>,
    /// Which alerts this entry gets; default all of them.
    #[serde(default = "all_kinds")]
    pub events: Vec<AlertKind>,
    /// webhook: the URL posted to; ntfy: the topic URL; discord: the webhook URL;
    /// telegram: the Bot API's base URL (default `https://api.telegram.org`).
    #[serde(default)]
    pub url: Option<Secret>,
    /// ntfy: an access token (`tk_...`); telegram: the bot token.
    #[serde(default)]
    pub token: Option<Secret>,
    /// ntfy: user name and password (instead of a token).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// telegram: the chat to write to (a number, or `@channel`).
    #[serde(default)]
    pub chat_id: Option<String>,
    /// ntfy: 1 (min) .. 5 (max) for every message; default 5 for a pause, 4 for a
    /// warning or an offline printer, 3 otherwise.
    #[serde(default)]
    pub priority: Option<u8>,
    /// webhook: extra request headers (e.g. `Authorization`), kept secret.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    #[serde(default)]
    pub frame: FrameMode,
    /// With `frame = "url"`: where `state_dir/frames/` is served, e.g. `https://pi.lan/frames/`.
    #[serde(default)]
    pub frame_url_base: Option<String>,
    /// Rate limit per printer: at most this many messages at once ...
    #[serde(default = "default_burst")]
    pub max_burst: u32,
    /// ... then one more every this many seconds (held-back ones are counted and said).
    #[serde(default = "default_refill")]
    pub refill_secs: f64,
    /// Tries per message (5xx, 429, network errors are tried again with a growing wait).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// A printer or camera must be out this long before it is reported.
    #[serde(default = "default_offline_after")]
    pub offline_after_secs: f64,
}

fn all_kinds() -> Vec<AlertKind> {
    AlertKind::ALL.to_vec()
}
fn default_burst() -> u32 {
    5
}
fn default_refill() -> f64 {
    60.0
}
fn default_attempts() -> u32 {
    5
}
fn default_timeout() -> f64 {
    15.0
}
fn default_offline_after() -> f64 {
    60.0
}

/// Telegram's Bot API.
pub const TELEGRAM_API: &str = "https://api.telegram.org";

impl NotifyConfig {
    /// An entry of `kind` with defaults for everything else.
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            name: None,
            events: all_kinds(),
            url: None,
            token: None,
            username: None,
            password: None,
            chat_id: None,
            priority: None,
            headers: BTreeMap::new(),
            frame: FrameMode::Attach,
            frame_url_base: None,
            max_burst: default_burst(),
            refill_secs: default_refill(),
            attempts: default_attempts(),
            timeout_secs: default_timeout(),
            offline_after_secs: default_offline_after(),
        }
    }

    /// The URL requests go to (telegram: the API base).
    pub fn url(&self) -> String {
        match (&self.url, self.kind) {
            (Some(u), _) => u.expose().trim_end_matches('/').to_string(),
            (None, Kind::Telegram) => TELEGRAM_API.into(),
            (None, _) => String::new(),
        }
    }

    /// The label in log lines: never the URL's path or query, which may hold a token.
    pub fn label(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let host = url::Url::parse(&self.url()).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
        format!("{} ({host})", self.kind.as_str())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_secs)
    }

    pub fn offline_after(&self) -> Duration {
        Duration::from_secs_f64(self.offline_after_secs)
    }

    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let k = |s: &str| format!("{key}.{s}");
        let needs = |field: &str, what: &str| invalid(&k(field), "unset", &format!("kind = \"{}\" needs {what}", self.kind.as_str()));
        match self.kind {
            Kind::Webhook | Kind::Ntfy | Kind::Discord if self.url.is_none() => {
                let what = match self.kind {
                    Kind::Ntfy => "the topic URL, e.g. url = \"https://ntfy.sh/my-printers\"",
                    Kind::Discord => "the channel's webhook URL (channel settings > Integrations > Webhooks)",
                    _ => "the URL to post to",
                };
                return Err(needs("url", what));
            }
            Kind::Telegram if self.token.is_none() => return Err(needs("token", "the bot token from BotFather")),
            Kind::Telegram if self.chat_id.as_deref().is_none_or(|c| c.trim().is_empty()) => {
                return Err(needs("chat_id", "the chat id (a number such as -1001234567890, or @channel)"));
            }
            _ => {}
        }
        let url = self.url();
        match url::Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                if self.kind == Kind::Ntfy && u.path().trim_matches('/').is_empty() {
                    return Err(invalid(&k("url"), "(a URL without a topic)", "give the topic URL, e.g. https://ntfy.sh/my-printers"));
                }
            }
            _ => return Err(invalid(&k("url"), "(not shown: it may hold a token)", "give an http:// or https:// URL")),
        }
        if self.events.is_empty() {
            return Err(invalid(&k("events"), "[]", "list at least one of warn, pause, finished, failed, printer_offline, camera_offline (or remove the entry)"));
        }
        if let Some(p) = self.priority
            && !(1..=5).contains(&p)
        {
            return Err(invalid(&k("priority"), &p.to_string(), "use 1 (min) to 5 (max)"));
        }
        if self.password.is_some() != self.username.is_some() {
            return Err(invalid(&k("username"), "", "give both username and password, or a token"));
        }
        if self.frame == FrameMode::Url {
            match self.frame_url_base.as_deref().map(url::Url::parse) {
                Some(Ok(u)) if matches!(u.scheme(), "http" | "https") => {}
                _ => return Err(invalid(&k("frame_url_base"), "unset or not a URL", "frame = \"url\" needs the http(s) URL where state_dir/frames/ is served")),
            }
        }
        for name in self.headers.keys() {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(&k("headers"), &format!("{name:?}"), "use valid HTTP header names"));
            }
        }
        if !(1..=1000).contains(&self.max_burst) {
            return Err(invalid(&k("max_burst"), &self.max_burst.to_string(), "use 1 to 1000 messages, e.g. 5"));
        }
        let r = self.refill_secs;
        if !(r.is_finite() && (0.0..=86400.0).contains(&r)) {
            return Err(invalid(&k("refill_secs"), &r.to_string(), "use seconds from 0 to 86400, e.g. 60"));
        }
        if !(1..=20).contains(&self.attempts) {
            return Err(invalid(&k("attempts"), &self.attempts.to_string(), "use 1 to 20 tries, e.g. 5"));
        }
        let t = self.timeout_secs;
        if !(t.is_finite() && (0.5..=300.0).contains(&t)) {
            return Err(invalid(&k("timeout_secs"), &t.to_string(), "use seconds from 0.5 to 300, e.g. 15"));
        }
        let o = self.offline_after_secs;
        if !(o.is_finite() && (0.0..=86400.0).contains(&o)) {
            return Err(invalid(&k("offline_after_secs"), &o.to_string(), "use seconds from 0 to 86400, e.g. 60"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_names_what_it_needs() {
        let e = NotifyConfig::new(Kind::Ntfy).validate("notify[0]").unwrap_err().to_string();
        assert!(e.contains("notify[0].url") && e.contains("ntfy"), "{e}");
        let mut t = NotifyConfig::new(Kind::Telegram);
        assert!(t.validate("notify[1]").unwrap_err().to_string().contains("notify[1].token"));
        t.token = Some(Secret::new("123:abc"));
        assert!(t.validate("notify[1]").unwrap_err().to_string().contains("notify[1].chat_id"));
        t.chat_id = Some("42".into());
        t.validate("notify[1]").unwrap();
        assert_eq!(t.url(), TELEGRAM_API);
        assert_eq!(t.label(), "telegram (api.telegram.org)");
        let mut d = NotifyConfig::new(Kind::Discord);
        d.url = Some(Secret::new("https://discord.com/api/webhooks/1/SECRET-TOKEN"));
        d.validate("n").unwrap();
        assert!(!d.label().contains("SECRET") && !format!("{d:?}").contains("SECRET"));
        let mut n = NotifyConfig::new(Kind::Ntfy);
        n.url = Some(Secret::new("https://ntfy.sh/"));
        assert!(n.validate("n").unwrap_err().to_string().contains("topic"));
        n.url = Some(Secret::new("https://ntfy.sh/t"));
        n.priority = Some(9);
        assert!(n.validate("n").unwrap_err().to_string().contains("n.priority"));
        n.priority = None;
        n.frame = FrameMode::Url;
        assert!(n.validate("n").unwrap_err().to_string().contains("frame_url_base"));
    }
}
