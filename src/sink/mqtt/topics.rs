//! The topic tree printvigil publishes, in one place.
//!
//! Everything lives under the host's prefix `P` (default `printvigil/<host>`), so one
//! broker serves a fleet: each host has its own subtree and its own availability.
//!
//! | topic | retained | payload |
//! |---|---|---|
//! | `P/status` | yes | `online` / `offline` (the last will: `offline` when the connection dies) |
//! | `P/outbox` | yes | events waiting for the Obico server (this host's outbox) |
//! | `P/<printer>/state` | yes | the whole view as JSON (phase, file, scores, decision, ...) |
//! | `P/<printer>/link` | yes | `online` / `offline`: the printer link |
//! | `P/<printer>/phase` | yes | `offline` / `idle` / `printing` / `paused` |
//! | `P/<printer>/file` | yes | the print's file name (empty: none yet) |
//! | `P/<printer>/p` | yes | the last frame's `p`, or `null` |
//! | `P/<printer>/ewm` | yes | the smoothed score (Obico's `ewm_mean`), or `null` |
//! | `P/<printer>/normalized_p` | yes | the score against the print's baseline, or `null` |
//! | `P/<printer>/decision` | yes | `{"decision":"ok"/"warn"/"pause"/"none","at":...,"p":...}` |
//! | `P/<printer>/failing` | yes | `ON` while the print's last decision is warn or pause |
//! | `P/<printer>/watching` | yes | `ON` / `OFF`: detection on for this print |
//! | `P/<printer>/snooze` | yes | minutes left of the alert snooze (`0`: none) |
//! | `P/<printer>/frame` | yes | the latest annotated decision frame (JPEG bytes) |
//! | `P/<printer>/event` | no | one JSON object per event (print started, warning, ...) |
//! | `P/<printer>/ha` | yes | the discovery topics published for the printer (for removal) |
//! | `P/<printer>/cmd/pause` | - | any payload: pause the print (as a pause decision would) |
//! | `P/<printer>/cmd/watching` | - | `ON` / `OFF`: detection on/off for this print |
//! | `P/<printer>/cmd/snooze` | - | minutes: hold alerts back that long (`0`: alerts again) |
//!
//! Printer names become one topic level through [`slug`] (`Voron 2.4` -> `voron-2-4`).

/// A name as one topic level and a Home Assistant id: lower-case ASCII letters, digits,
/// `-` and `_`; anything else becomes `-`.
pub fn slug(name: &str) -> String {
    let s: String = name
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c.to_ascii_lowercase() } else { '-' })
        .take(64)
        .collect();
    if s.is_empty() { "unnamed".into() } else { s }
}

/// The retained per-printer state topics (all cleared when a printer is removed).
pub const STATE_LEAVES: [&str; 13] =
    ["state", "link", "phase", "file", "p", "ewm", "normalized_p", "decision", "failing", "watching", "snooze", "frame", "ha"];

/// Command leaves under `P/<printer>/cmd/`.
pub const CMD_PAUSE: &str = "pause";
pub const CMD_WATCHING: &str = "watching";
pub const CMD_SNOOZE: &str = "snooze";

/// The topic names of one host.
#[derive(Debug, Clone)]
pub struct Topics {
    /// `P`, without a trailing `/`.
    pub prefix: String,
    /// Home Assistant's discovery prefix.
    pub discovery: String,
    /// This host's id in Home Assistant ids (`printvigil_<node>_...`).
    pub node: String,
}

impl Topics {
    pub fn new(prefix: &str, discovery: &str) -> Self {
        let short = prefix.strip_prefix("printvigil/").unwrap_or(prefix);
        let node = slug(&short.replace('/', "_"));
        Self { prefix: prefix.to_string(), discovery: discovery.to_string(), node }
    }

    pub fn status(&self) -> String {
        format!("{}/status", self.prefix)
    }

    pub fn outbox(&self) -> String {
        format!("{}/outbox", self.prefix)
    }

    /// `P/<printer slug>`.
    pub fn printer(&self, printer_slug: &str) -> String {
        format!("{}/{printer_slug}", self.prefix)
    }

    pub fn leaf(&self, printer_slug: &str, leaf: &str) -> String {
        format!("{}/{printer_slug}/{leaf}", self.prefix)
    }

    pub fn command(&self, printer_slug: &str, cmd: &str) -> String {
        format!("{}/{printer_slug}/cmd/{cmd}", self.prefix)
    }

    /// What the sink subscribes to: every printer's commands and discovery records.
    pub fn subscriptions(&self) -> Vec<String> {
        vec![format!("{}/+/cmd/+", self.prefix), format!("{}/+/ha", self.prefix)]
    }

    /// Home Assistant's status topic (its birth message `online` asks for discovery again).
    pub fn ha_status(&self) -> String {
        format!("{}/status", self.discovery)
    }

    /// `<discovery>/<component>/<unique_id>/config`.
    pub fn discovery_config(&self, component: &str, unique_id: &str) -> String {
        format!("{}/{component}/{unique_id}/config", self.discovery)
    }

    /// The Home Assistant unique id of a printer's entity, also its discovery object id.
    pub fn unique_id(&self, printer_slug: &str, entity: &str) -> String {
        format!("printvigil_{}_{}_{entity}", self.node, printer_slug.replace('-', "_"))
    }

    /// The Home Assistant device id of a printer.
    pub fn device_id(&self, printer_slug: &str) -> String {
        format!("printvigil_{}_{}", self.node, printer_slug.replace('-', "_"))
    }

    /// The Home Assistant device id of this host.
    pub fn host_device_id(&self) -> String {
        format!("printvigil_{}", self.node)
    }

    /// What an incoming topic is, if it is one of ours.
    pub fn parse<'a>(&self, topic: &'a str) -> Incoming<'a> {
        if topic == self.ha_status() {
            return Incoming::HaStatus;
        }
        let Some(rest) = topic.strip_prefix(&self.prefix).and_then(|r| r.strip_prefix('/')) else {
            return Incoming::Other;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match parts[..] {
            [printer, "cmd", cmd] => Incoming::Command { printer, cmd },
            [printer, "ha"] => Incoming::Record { printer },
            _ => Incoming::Other,
        }
    }
}

/// An incoming message's topic, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    HaStatus,
    Command { printer: &'a str, cmd: &'a str },
    /// A printer's record of its discovery topics.
    Record { printer: &'a str },
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_one_safe_level() {
        assert_eq!(slug("Voron 2.4"), "voron-2-4");
        assert_eq!(slug("ender_3-v2"), "ender_3-v2");
        assert_eq!(slug("a/b+#"), "a-b--");
        assert_eq!(slug(""), "unnamed");
        assert_eq!(slug("Ümlaut"), "-mlaut");
    }

    #[test]
    fn topics_parse_back() {
        let t = Topics::new("printvigil/pi", "homeassistant");
        assert_eq!(t.node, "pi");
        assert_eq!(t.unique_id("voron-2", "failing"), "printvigil_pi_voron_2_failing");
        assert_eq!(t.parse("printvigil/pi/voron/cmd/pause"), Incoming::Command { printer: "voron", cmd: "pause" });
        assert_eq!(t.parse("printvigil/pi/voron/ha"), Incoming::Record { printer: "voron" });
        assert_eq!(t.parse("homeassistant/status"), Incoming::HaStatus);
        assert_eq!(t.parse("printvigil/pix/voron/ha"), Incoming::Other);
        assert_eq!(t.parse("printvigil/pi/voron/cmd/pause/x"), Incoming::Other);
        assert_eq!(Topics::new("farm/hall-1", "ha").node, "farm_hall-1");
    }
}
