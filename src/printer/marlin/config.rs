//! `[[printers]]` entries with `kind = "marlin"`: a printer on a USB serial port, with
//! printvigil itself as the host (no OctoPrint or Klipper in between).
//!
//! `port` should be a stable `/dev/serial/by-id/usb-...` path: the kernel may give the
//! printer another `/dev/ttyUSB<n>` or `/dev/ttyACM<n>` after an unplug or a reboot, while the
//! by-id name (made from the adapter's vendor, model and serial number) stays the same. List
//! them with `ls -l /dev/serial/by-id/`. `baud` is the firmware's `BAUDRATE` (115200 on most
//! boards, 250000 on some); `"auto"` tries 115200, then 250000.
//!
//! Validation happens when the configuration is loaded; every message names its key.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, invalid};

/// `kind = "marlin"`: a Marlin printer over USB serial.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MarlinConfig {
    /// A short name, unique among the printers.
    pub name: String,
    /// The serial device, best a `/dev/serial/by-id/...` path.
    pub port: String,
    /// The baud rate, or `"auto"`.
    #[serde(default)]
    pub baud: Baud,
    /// Seconds between status reports (SD progress auto-report, or polling `M27`).
    #[serde(default = "default_status_interval")]
    pub status_interval_secs: u64,
    /// Seconds to wait for the `ok` of a command (`echo:busy` keep-alives extend it).
    #[serde(default = "default_command_timeout")]
    pub command_timeout_secs: u64,
    /// Seconds to wait for the printer to confirm pause, resume or cancel.
    #[serde(default = "default_action_timeout")]
    pub action_timeout_secs: u64,
    /// Seconds to wait for the board to boot after the port opens (opening resets most boards).
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_secs: u64,
    /// The camera to watch (a Marlin printer has no camera list of its own).
    #[serde(default)]
    pub camera: Option<crate::camera::CameraConfig>,
    /// What to do with a failing print on this printer (default: `watch.action_on_failure`).
    #[serde(default)]
    pub action_on_failure: Option<crate::printer::Action>,
}

/// `baud = 115200` or `baud = "auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baud {
    Rate(u32),
    /// 115200, then 250000.
    Auto,
}

/// The rates `"auto"` tries, in order.
pub const AUTO_RATES: [u32; 2] = [115_200, 250_000];

/// Rates a serial port can be set to (and Marlin uses).
const RATES: [u32; 10] = [9_600, 19_200, 38_400, 57_600, 115_200, 230_400, 250_000, 460_800, 500_000, 1_000_000];

impl Default for Baud {
    fn default() -> Self {
        Baud::Rate(115_200)
    }
}

impl Baud {
    /// The rates to try, in order.
    pub fn rates(self) -> Vec<u32> {
        match self {
            Baud::Rate(r) => vec![r],
            Baud::Auto => AUTO_RATES.to_vec(),
        }
    }
}

impl Serialize for Baud {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Baud::Rate(r) => s.serialize_u32(*r),
            Baud::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Baud {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        let bad = || {
            serde::de::Error::custom(format!(
                "baud: use one of {} or \"auto\" (tries 115200, then 250000)",
                RATES.map(|r| r.to_string()).join(", ")
            ))
        };
        match Raw::deserialize(d)? {
            Raw::Int(i) => u32::try_from(i).ok().filter(|r| RATES.contains(r)).map(Baud::Rate).ok_or_else(bad),
            Raw::Text(t) if t.trim().eq_ignore_ascii_case("auto") => Ok(Baud::Auto),
            Raw::Text(t) => t.trim().parse::<u32>().ok().filter(|r| RATES.contains(r)).map(Baud::Rate).ok_or_else(bad),
        }
    }
}

fn default_status_interval() -> u64 {
    2
}
fn default_command_timeout() -> u64 {
    10
}
fn default_action_timeout() -> u64 {
    60
}
fn default_boot_timeout() -> u64 {
    15
}

impl MarlinConfig {
    /// A configuration with defaults for everything but the name and port.
    pub fn new(name: &str, port: &str) -> Self {
        Self {
            name: name.into(),
            port: port.into(),
            baud: Baud::default(),
            status_interval_secs: default_status_interval(),
            command_timeout_secs: default_command_timeout(),
            action_timeout_secs: default_action_timeout(),
            boot_timeout_secs: default_boot_timeout(),
            camera: None,
            action_on_failure: None,
        }
    }

    pub(crate) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let port = self.port.trim();
        if port.is_empty() || !port.starts_with('/') || port.chars().any(char::is_control) || port.len() > 4096 {
            return Err(invalid(
                &format!("{key}.port"),
                &format!("{:?}", self.port),
                "give the printer's serial device as an absolute path, best the stable one from `ls -l /dev/serial/by-id/`, e.g. port = \"/dev/serial/by-id/usb-1a86_USB_Serial-if00-port0\"",
            ));
        }
        if let Baud::Rate(r) = self.baud
            && !RATES.contains(&r)
        {
            return Err(invalid(&format!("{key}.baud"), &r.to_string(), "use 115200, 250000 (or another standard rate), or \"auto\""));
        }
        for (k, v, hi) in [
            ("status_interval_secs", self.status_interval_secs, 60),
            ("command_timeout_secs", self.command_timeout_secs, 600),
            ("action_timeout_secs", self.action_timeout_secs, 3600),
            ("boot_timeout_secs", self.boot_timeout_secs, 600),
        ] {
            if !(1..=hi).contains(&v) {
                return Err(invalid(&format!("{key}.{k}"), &v.to_string(), &format!("use 1 to {hi} seconds")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<MarlinConfig, String> {
        use figment::Figment;
        use figment::providers::{Format, Toml};
        Figment::from(Toml::string(toml)).extract::<MarlinConfig>().map_err(|e| e.to_string())
    }

    #[test]
    fn baud_forms() {
        let c = parse("name = \"m\"\nport = \"/dev/ttyUSB0\"").unwrap();
        assert_eq!(c.baud, Baud::Rate(115_200));
        assert_eq!(parse("name = \"m\"\nport = \"/dev/x\"\nbaud = 250000").unwrap().baud, Baud::Rate(250_000));
        assert_eq!(parse("name = \"m\"\nport = \"/dev/x\"\nbaud = \"auto\"").unwrap().baud, Baud::Auto);
        assert_eq!(Baud::Auto.rates(), vec![115_200, 250_000]);
        let e = parse("name = \"m\"\nport = \"/dev/x\"\nbaud = 12345").unwrap_err();
        assert!(e.contains("baud") && e.contains("auto"), "{e}");
        assert!(parse("name = \"m\"\nport = \"/dev/x\"\nbaud = \"fast\"").is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = MarlinConfig::new("m", "ttyUSB0");
        let e = c.validate("printers[2]").unwrap_err().to_string();
        assert!(e.contains("printers[2].port") && e.contains("/dev/serial/by-id"), "{e}");
        c.port = "/dev/ttyUSB0".into();
        c.validate("printers[2]").unwrap();
        c.status_interval_secs = 0;
        let e = c.validate("printers[2]").unwrap_err().to_string();
        assert!(e.contains("printers[2].status_interval_secs"), "{e}");
    }
    #[test]
    fn the_example_entry_parses_and_validates() {
        let text = include_str!("../../../config/printvigil.toml");
        let start = text.find("# name = \"mk3\"").expect("the example has a Marlin entry");
        let block: String = std::iter::once("[[printers]]")
            .chain(text[start..].lines().take_while(|l| l.starts_with("# ") && !l.starts_with("# camera")).map(|l| &l[2..]))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = crate::config::Config::from_toml_str(&block).unwrap_or_else(|e| panic!("{e}\n{block}"));
        let crate::printer::PrinterConfig::Marlin(m) = &c.printers[0] else { panic!("{block}") };
        assert_eq!(m.baud, Baud::Rate(115_200));
        assert!(m.port.starts_with("/dev/serial/by-id/"));
        let e = crate::config::Config::from_toml_str("[[printers]]\nname = \"m\"\nkind = \"marlin\"\nport = \"COM3\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("printers[0].port"), "{e}");
    }
}
