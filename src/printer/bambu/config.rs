//! `[[printers]]` entries with `kind = "bambu"`: a Bambu Lab printer on the local network.
//!
//! The printer is its own MQTT broker (TLS on `port`, 8883), user `bblp`, password the
//! **access code** shown on the printer's screen; its reports and commands are on topics
//! named after its **serial number**. Its certificate is self-signed, so printvigil trusts
//! it by its SHA-256 `fingerprint` (written by `printvigil setup bambu HOST` after you
//! confirm it), or, only when you say so, any certificate (`insecure_skip_verify = true`).
//! `port` and `camera_port` differ from 8883 and 6000 only for a printer behind a
//! forwarder.
//!
//! `camera = { kind = "bambu" }` is the printer's own camera (A1 and P1 series, port
//! 6000): it takes host, access code and certificate from this entry
//! ([`BambuConfig::camera_config`]). `camera_fingerprint` pins the camera port's
//! certificate when it is not the one MQTT shows (default: the same).
//!
//! Validation happens when the configuration is loaded; every message names the key.

use serde::{Deserialize, Serialize};

use crate::camera::{CameraConfig, CameraKind};
use crate::config::{ConfigError, invalid};
use crate::secret::{Secret, SecretUrl};
use crate::tlspin::{Fingerprint, Trust};

/// `kind = "bambu"`: a Bambu Lab printer over MQTT on the local network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BambuConfig {
    /// A short name, unique among the printers.
    pub name: String,
    /// The printer's address on the network (IP address or host name, no port).
    #[serde(default)]
    pub host: String,
    /// The printer's serial number (Settings > Device on its screen; also on the label).
    #[serde(default)]
    pub serial: String,
    /// The LAN access code (Settings > Network / WLAN on the printer's screen).
    #[serde(default)]
    pub access_code: Option<Secret>,
    /// MQTT over TLS port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The camera's port (A1/P1: JPEG frames over TLS).
    #[serde(default = "default_camera_port")]
    pub camera_port: u16,
    /// SHA-256 fingerprint of the printer's certificate (`AB:CD:...`).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// The camera port's certificate fingerprint, when it differs from `fingerprint`.
    #[serde(default)]
    pub camera_fingerprint: Option<String>,
    /// Accept any certificate (no pin). Encrypted, but anyone on the network who answers
    /// at `host` is believed to be the printer.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Seconds to wait for the printer to confirm pause, resume or stop.
    #[serde(default = "default_action_timeout")]
    pub action_timeout_secs: u64,
    /// Seconds without any report after which the connection is taken as stalled and
    /// opened again (the printer reports about once a second).
    #[serde(default = "default_report_timeout")]
    pub report_timeout_secs: u64,
    /// Seconds a connection attempt (TCP, TLS, MQTT) may take.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// The camera to watch (`{ kind = "bambu" }` for the built-in one on A1/P1 printers).
    #[serde(default)]
    pub camera: Option<CameraConfig>,
    /// What to do with a failing print on this printer (default: `watch.action_on_failure`).
    #[serde(default)]
    pub action_on_failure: Option<crate::printer::Action>,
}

/// The MQTT user of every Bambu printer.
pub const USER: &str = "bblp";

/// The printer's MQTT port.
pub const DEFAULT_PORT: u16 = 8883;
/// The A1/P1 camera port.
pub const DEFAULT_CAMERA_PORT: u16 = 6000;

fn default_port() -> u16 {
    DEFAULT_PORT
}
fn default_camera_port() -> u16 {
    DEFAULT_CAMERA_PORT
}
fn default_action_timeout() -> u64 {
    20
}
fn default_report_timeout() -> u64 {
    30
}
fn default_connect_timeout() -> u64 {
    10
}

impl BambuConfig {
    /// A configuration with defaults for everything but these.
    pub fn new(name: &str, host: &str, serial: &str, access_code: &str, trust: Trust) -> Self {
        let (fingerprint, insecure_skip_verify) = match trust {
            Trust::Pinned(f) => (Some(f.to_string()), false),
            Trust::Any => (None, true),
        };
        Self {
            name: name.into(),
            host: host.into(),
            serial: serial.into(),
            access_code: Some(Secret::new(access_code)),
            port: default_port(),
            camera_port: default_camera_port(),
            fingerprint,
            camera_fingerprint: None,
            insecure_skip_verify,
            action_timeout_secs: default_action_timeout(),
            report_timeout_secs: default_report_timeout(),
            connect_timeout_secs: default_connect_timeout(),
            camera: None,
            action_on_failure: None,
        }
    }

    /// How the MQTT connection trusts the printer (validated at load; a config built in
    /// code with a bad fingerprint trusts nothing it could show: an all-zero pin).
    pub fn trust(&self) -> Trust {
        trust_of(self.fingerprint.as_deref(), self.insecure_skip_verify)
    }

    /// How the camera connection trusts the printer.
    pub fn camera_trust(&self) -> Trust {
        trust_of(self.camera_fingerprint.as_deref().or(self.fingerprint.as_deref()), self.insecure_skip_verify)
    }

    pub(crate) fn code(&self) -> &str {
        self.access_code.as_ref().map(Secret::expose).unwrap_or("")
    }

    /// The camera entry with what a `kind = "bambu"` camera needs filled in from this
    /// printer: `bambu://bblp:<access code>@<host>:<camera_port>/?fingerprint=...` (the
    /// access code shows as `***` wherever the URL is printed).
    pub fn camera_config(&self) -> Option<CameraConfig> {
        let mut cam = self.camera.clone()?;
        if cam.kind == CameraKind::Bambu && cam.url.expose().is_empty() {
            cam.url = SecretUrl::new(camera_url(&self.host, self.camera_port, self.code(), self.camera_trust()));
            if cam.name.is_none() {
                cam.name = Some(format!("{} camera", self.name));
            }
        }
        Some(cam)
    }

    pub(crate) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let k = |s: &str| format!("{key}.{s}");
        let host = self.host.trim();
        if host.is_empty() || host.contains("://") || host.contains('/') || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                &k("host"),
                &format!("{:?}", self.host),
                "set host to the printer's IP address or host name alone (no http://, no port), e.g. host = \"192.168.1.50\"; the printer shows its IP under Settings > Network",
            ));
        }
        if url::Host::parse(host.trim_start_matches('[').trim_end_matches(']')).is_err() && host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(invalid(&k("host"), &format!("{:?}", self.host), "not an IP address or host name; e.g. host = \"192.168.1.50\""));
        }
        if self.serial.is_empty() || self.serial.len() > 32 || !self.serial.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(invalid(
                &k("serial"),
                &format!("{:?}", self.serial),
                "set serial to the printer's serial number (letters and digits, e.g. \"01S00A123456789\"): Settings > Device on the printer's screen, or the label on the printer; `printvigil setup bambu HOST` reads it from the printer",
            ));
        }
        match &self.access_code {
            None => {
                return Err(invalid(
                    &k("access_code"),
                    "(missing)",
                    "set access_code to the printer's LAN access code: on the printer's screen under Settings > Network (WLAN), with LAN-only mode on",
                ));
            }
            Some(c) if c.is_empty() || c.expose().len() > 32 || c.expose().chars().any(|ch| !ch.is_ascii_graphic()) => {
                return Err(invalid(
                    &k("access_code"),
                    "(blank, too long or with spaces)",
                    "set access_code exactly as the printer's screen shows it (8 characters)",
                ));
            }
            Some(_) => {}
        }
        for (name, fp) in [("fingerprint", &self.fingerprint), ("camera_fingerprint", &self.camera_fingerprint)] {
            if let Some(f) = fp {
                Fingerprint::parse(f).map_err(|why| invalid(&k(name), &format!("{f:?}"), &format!("{why}; `printvigil setup bambu HOST` writes it for you")))?;
            }
        }
        match (&self.fingerprint, self.insecure_skip_verify) {
            (None, false) => {
                return Err(invalid(
                    &k("fingerprint"),
                    "(missing)",
                    "the printer's certificate is self-signed, so printvigil needs its fingerprint: run `printvigil setup bambu HOST` (it shows the fingerprint and writes it once you confirm), or set insecure_skip_verify = true to accept any certificate",
                ));
            }
            (Some(_), true) => {
                return Err(invalid(
                    &k("insecure_skip_verify"),
                    "true",
                    "a fingerprint is set as well: remove insecure_skip_verify (the fingerprint is the safer choice) or the fingerprint",
                ));
            }
            _ => {}
        }
        for (name, port) in [("port", self.port), ("camera_port", self.camera_port)] {
            if port == 0 {
                return Err(invalid(&k(name), "0", "use the port number the printer (or its forwarder) listens on"));
            }
        }
        for (name, v) in [("action_timeout_secs", self.action_timeout_secs), ("report_timeout_secs", self.report_timeout_secs)] {
            if !(5..=3600).contains(&v) {
                return Err(invalid(&k(name), &v.to_string(), "use 5 to 3600 seconds"));
            }
        }
        if !(1..=120).contains(&self.connect_timeout_secs) {
            return Err(invalid(&k("connect_timeout_secs"), &self.connect_timeout_secs.to_string(), "use 1 to 120 seconds"));
        }
        Ok(())
    }
}

fn trust_of(fingerprint: Option<&str>, insecure: bool) -> Trust {
    match fingerprint {
        Some(f) => Trust::Pinned(Fingerprint::parse(f).unwrap_or(Fingerprint([0; 32]))),
        None if insecure => Trust::Any,
        None => Trust::Pinned(Fingerprint([0; 32])),
    }
}

/// The URL a `kind = "bambu"` camera reads (see [`crate::camera::bambu`]).
pub fn camera_url(host: &str, port: u16, code: &str, trust: Trust) -> String {
    let mut u = url::Url::parse("bambu://printer/").expect("a valid URL");
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
    if u.set_host(Some(&host)).is_err() {
        return String::new();
    }
    let _ = u.set_port(Some(port));
    let _ = u.set_username(USER);
    let _ = u.set_password(Some(code));
    match trust {
        Trust::Pinned(f) => u.query_pairs_mut().append_pair("fingerprint", &hex::encode(f.0)),
        Trust::Any => u.query_pairs_mut().append_pair("insecure_skip_verify", "true"),
    };
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const FP: &str = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";

    fn entry(extra: &str) -> String {
        format!("[[printers]]\nname = \"p1s\"\nkind = \"bambu\"\nhost = \"192.168.1.50\"\nserial = \"01P00A123456789\"\naccess_code = \"ac9Zq7xK\"\n{extra}")
    }

    #[test]
    fn an_entry_parses_with_defaults_and_keeps_the_code_secret() {
        let c = Config::from_toml_str(&entry(&format!("fingerprint = \"{FP}\"\ncamera = {{ kind = \"bambu\" }}\n"))).unwrap();
        let crate::printer::PrinterConfig::Bambu(b) = &c.printers[0] else { panic!("{:?}", c.printers[0]) };
        assert_eq!((b.port, b.camera_port, b.action_timeout_secs), (8883, 6000, 20));
        assert_eq!(b.trust(), Trust::Pinned(Fingerprint::parse(FP).unwrap()));
        assert!(!format!("{b:?}").contains("ac9Zq7xK"));
        let cam = c.printers[0].camera().unwrap();
        assert_eq!(cam.kind, CameraKind::Bambu);
        assert!(cam.url.expose().starts_with("bambu://bblp:ac9Zq7xK@192.168.1.50:6000/?fingerprint=abcdef"), "{}", cam.url.expose());
        assert!(!cam.url.to_string().contains("ac9Zq7xK"), "{}", cam.url);
        cam.validate().unwrap();
    }

    #[test]
    fn each_mistake_names_its_key() {
        let cases = [
            (entry("").replace("host = \"192.168.1.50\"", "host = \"http://192.168.1.50\""), "printers[0].host"),
            (entry("insecure_skip_verify = true\n").replace("serial = \"01P00A123456789\"\n", ""), "printers[0].serial"),
            (entry("insecure_skip_verify = true\n").replace("access_code = \"ac9Zq7xK\"\n", ""), "printers[0].access_code"),
            (entry("insecure_skip_verify = true\n").replace("\"ac9Zq7xK\"", "\"ac9Z q7xK\""), "printers[0].access_code"),
            (entry(""), "printers[0].fingerprint"),
            (entry("fingerprint = \"AB:CD\"\n"), "printers[0].fingerprint"),
            (entry(&format!("fingerprint = \"{FP}\"\ninsecure_skip_verify = true\n")), "printers[0].insecure_skip_verify"),
            (entry(&format!("fingerprint = \"{FP}\"\ncamera_fingerprint = \"zz\"\n")), "printers[0].camera_fingerprint"),
            (entry("insecure_skip_verify = true\nport = 0\n"), "printers[0].port"),
            (entry("insecure_skip_verify = true\naction_timeout_secs = 1\n"), "printers[0].action_timeout_secs"),
        ];
        for (text, key) in cases {
            let e = Config::from_toml_str(&text).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let ok = Config::from_toml_str(&entry("insecure_skip_verify = true\n")).unwrap();
        let crate::printer::PrinterConfig::Bambu(b) = &ok.printers[0] else { panic!() };
        assert_eq!(b.trust(), Trust::Any);
    }

    #[test]
    fn a_bambu_camera_outside_a_bambu_entry_says_where_it_belongs() {
        let e = Config::from_toml_str("[[printers]]\nname = \"a\"\nkind = \"moonraker\"\ncamera = { kind = \"bambu\" }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kind = \\\"bambu\\\" printer") || e.contains("kind = \"bambu\" printer"), "{e}");
    }

    #[test]
    fn camera_urls_carry_the_pin_or_the_explicit_insecure_choice() {
        let f = Fingerprint([7; 32]);
        let u = camera_url("printer.lan", 6001, "a@b:c", Trust::Pinned(f));
        assert_eq!(u, format!("bambu://bblp:a%40b%3Ac@printer.lan:6001/?fingerprint={}", "07".repeat(32)));
        assert!(camera_url("fe80::1", 6000, "x", Trust::Any).starts_with("bambu://bblp:x@[fe80::1]:6000/?insecure_skip_verify=true"));
    }
}
