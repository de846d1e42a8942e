//! The `[mqtt]` settings: which broker, how to log in, how to trust it, and where to
//! publish.
//!
//! ```toml
//! [mqtt]
//! url = "mqtts://broker.lan:8883"   # mqtt:// (port 1883) or mqtts:// (TLS, port 8883)
//! username = "printvigil"
//! password = "..."                  # never logged
//! ca_file = "/etc/printvigil/mqtt-ca.pem"   # unset: the system's CAs
//! ```
//!
//! TLS is verified: the broker's certificate must chain to `ca_file` (or a system CA) and
//! name the host of `url`. A client certificate (`client_cert` + `client_key`, PEM) gives
//! mutual TLS. Topics start with `topic_prefix` (default `printvigil/<host>`), so any
//! number of hosts share one broker; Home Assistant discovery goes under
//! `discovery_prefix` (default `homeassistant`) unless `discovery = false`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, invalid};
use crate::secret::{Secret, SecretUrl};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: SecretUrl,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// CA certificate(s) (PEM) the broker's certificate must chain to; unset: system CAs.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS; needs `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Every topic starts with this; default `printvigil/<host name>`.
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// The MQTT client id; default `printvigil-<host name>` (one per host: a broker drops
    /// the older of two connections with the same id).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Publish Home Assistant discovery configs.
    #[serde(default = "yes")]
    pub discovery: bool,
    /// Home Assistant's discovery prefix (its MQTT integration's setting).
    #[serde(default = "default_discovery_prefix")]
    pub discovery_prefix: String,
    /// Publish the latest annotated decision frame (a JPEG) per printer.
    #[serde(default = "yes")]
    pub frames: bool,
    /// Messages waiting for the broker at most; past it the oldest telemetry is dropped.
    #[serde(default = "default_queue")]
    pub queue: usize,
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u64,
    /// The longest wait between two connection attempts (the wait doubles from 1 s).
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_secs: f64,
}

fn yes() -> bool {
    true
}
fn default_discovery_prefix() -> String {
    "homeassistant".into()
}
fn default_queue() -> usize {
    512
}
fn default_keepalive() -> u64 {
    30
}
fn default_reconnect_max() -> f64 {
    30.0
}

/// The largest frame published (bigger ones are skipped with a log line).
pub const MAX_FRAME_BYTES: usize = 4 << 20;

/// Where to connect, parsed from `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// User and password given in the URL (`mqtt://user:pass@host`).
    pub user: Option<String>,
    pub password: Option<Secret>,
}

impl MqttConfig {
    /// A configuration with defaults for everything but the URL.
    pub fn new(url: &str) -> Self {
        Self {
            url: SecretUrl::new(url),
            username: None,
            password: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            topic_prefix: None,
            client_id: None,
            discovery: true,
            discovery_prefix: default_discovery_prefix(),
            frames: true,
            queue: default_queue(),
            keepalive_secs: default_keepalive(),
            reconnect_max_secs: default_reconnect_max(),
        }
    }

    pub fn broker(&self) -> Result<Broker, ConfigError> {
        let bad = |fix: &str| invalid("mqtt.url", &format!("{:?}", self.url.redacted()), fix);
        let url = url::Url::parse(self.url.expose())
            .map_err(|e| bad(&format!("give the broker as mqtt://host:1883 or mqtts://host:8883 ({e})")))?;
        let tls = match url.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => return Err(bad(&format!("scheme {other:?} is not supported: use mqtt:// or mqtts:// (TLS)"))),
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => return Err(bad("the URL has no host: write mqtt://host:1883")),
        };
        if url.path() != "" && url.path() != "/" {
            return Err(bad("remove the path: topics are set with mqtt.topic_prefix"));
        }
        let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
        let decode = |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default();
        let user = (!url.username().is_empty()).then(|| decode(url.username()));
        let password = url.password().map(|p| Secret::new(decode(p)));
        Ok(Broker { host, port, tls, user, password })
    }

    /// The user name and password to log in with (the keys win over the URL's).
    pub fn credentials(&self, broker: &Broker) -> Option<(String, Secret)> {
        let user = self.username.clone().or_else(|| broker.user.clone())?;
        let pass = self.password.clone().or_else(|| broker.password.clone()).unwrap_or_default();
        Some((user, pass))
    }

    /// `topic_prefix`, or `printvigil/<host>`, without a trailing `/`.
    pub fn prefix(&self, host: &str) -> String {
        match &self.topic_prefix {
            Some(p) => p.trim_end_matches('/').to_string(),
            None => format!("printvigil/{}", super::topics::slug(host)),
        }
    }

    pub fn client_id_for(&self, host: &str) -> String {
        self.client_id.clone().unwrap_or_else(|| format!("printvigil-{}", super::topics::slug(host)))
    }

    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.keepalive_secs)
    }

    pub fn reconnect_max(&self) -> Duration {
        Duration::from_secs_f64(self.reconnect_max_secs)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let broker = self.broker()?;
        if !broker.tls {
            for (key, set) in [("ca_file", self.ca_file.is_some()), ("client_cert", self.client_cert.is_some())] {
                if set {
                    return Err(invalid(
                        &format!("mqtt.{key}"),
                        "set",
                        "TLS settings need a TLS broker: write the url as mqtts://host:8883",
                    ));
                }
            }
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            let key = if self.client_cert.is_some() { "mqtt.client_key" } else { "mqtt.client_cert" };
            return Err(invalid(key, "unset", "mutual TLS needs both client_cert and client_key (PEM files)"));
        }
        if self.password.is_some() && self.username.is_none() && broker.user.is_none() {
            return Err(invalid("mqtt.username", "unset", "a password needs a user name: set mqtt.username"));
        }
        if let Some(p) = &self.topic_prefix {
            let p = p.trim_end_matches('/');
            if p.is_empty() || p.contains(['+', '#', '\0']) || p.starts_with('$') || p.len() > 200 {
                return Err(invalid(
                    "mqtt.topic_prefix",
                    &format!("{p:?}"),
                    "use topic levels without wildcards (+, #), not starting with $, e.g. \"printvigil/garage-pi\"",
                ));
            }
        }
        let d = &self.discovery_prefix;
        if d.is_empty() || d.contains(['+', '#', '\0']) || d.ends_with('/') {
            return Err(invalid("mqtt.discovery_prefix", &format!("{d:?}"), "use Home Assistant's discovery prefix, \"homeassistant\" unless you changed it"));
        }
        if let Some(id) = &self.client_id
            && (id.is_empty() || id.len() > 128)
        {
            return Err(invalid("mqtt.client_id", &format!("{id:?}"), "use 1 to 128 characters, unique per host"));
        }
        if !(8..=100_000).contains(&self.queue) {
            return Err(invalid("mqtt.queue", &self.queue.to_string(), "use a number of messages from 8 to 100000, e.g. 512"));
        }
        if !(5..=3600).contains(&self.keepalive_secs) {
            return Err(invalid("mqtt.keepalive_secs", &self.keepalive_secs.to_string(), "use seconds from 5 to 3600, e.g. 30"));
        }
        let r = self.reconnect_max_secs;
        if !(r.is_finite() && (0.1..=3600.0).contains(&r)) {
            return Err(invalid("mqtt.reconnect_max_secs", &r.to_string(), "use seconds from 0.1 to 3600, e.g. 30"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_tls_and_credentials() {
        let c = MqttConfig::new("mqtts://bob:p%40ss@broker.lan");
        let b = c.broker().unwrap();
        assert_eq!((b.host.as_str(), b.port, b.tls), ("broker.lan", 8883, true));
        assert_eq!(b.user.as_deref(), Some("bob"));
        assert_eq!(b.password.as_ref().unwrap().expose(), "p@ss");
        let (u, p) = c.credentials(&b).unwrap();
        assert_eq!((u.as_str(), p.expose()), ("bob", "p@ss"));
        assert!(!format!("{c:?}").contains("p%40ss"), "{c:?}");
        let b = MqttConfig::new("mqtt://127.0.0.1:18883").broker().unwrap();
        assert_eq!((b.host.as_str(), b.port, b.tls), ("127.0.0.1", 18883, false));
        assert!(MqttConfig::new("mqtt://h").credentials(&b).is_none());
        for bad in ["http://h", "mqtt://", "nonsense", "mqtt://h/topic"] {
            let e = MqttConfig::new(bad).validate().unwrap_err().to_string();
            assert!(e.contains("mqtt.url"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_settings_name_the_key() {
        let mut c = MqttConfig::new("mqtt://h");
        c.ca_file = Some("/x".into());
        assert!(c.validate().unwrap_err().to_string().contains("mqtt.ca_file"));
        let mut c = MqttConfig::new("mqtts://h");
        c.client_cert = Some("/x".into());
        assert!(c.validate().unwrap_err().to_string().contains("mqtt.client_key"));
        let mut c = MqttConfig::new("mqtts://h");
        c.topic_prefix = Some("a/+/b".into());
        assert!(c.validate().unwrap_err().to_string().contains("mqtt.topic_prefix"));
        let mut c = MqttConfig::new("mqtts://h");
        c.password = Some(Secret::new("x"));
        assert!(c.validate().unwrap_err().to_string().contains("mqtt.username"));
        let mut c = MqttConfig::new("mqtts://h");
        c.queue = 1;
        assert!(c.validate().unwrap_err().to_string().contains("mqtt.queue"));
        assert_eq!(MqttConfig::new("mqtt://h").prefix("My Pi.lan"), "printvigil/my-pi-lan");
    }
}
