//! Configuration: built-in defaults < `/etc/printvigil/config.toml` < `--config FILE` <
//! environment `PRINTVIGIL_*` (nested keys joined by `__`, e.g.
//! `PRINTVIGIL_DETECTOR__INTRA_THREADS=2`).
//!
//! Every value is validated up front; an error names the key and says how to fix it.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The system-wide config file, read when it exists.
pub const SYSTEM_CONFIG: &str = "/etc/printvigil/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} does not exist; fix the path given to --config")]
    Missing { path: PathBuf },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where printvigil keeps its state (SQLite, tokens, saved frames).
    pub state_dir: PathBuf,
    pub detector: DetectorConfig,
    /// The Obico-compatible server to mirror prints to; absent: no mirroring.
    pub server: Option<crate::server::ServerConfig>,
    /// How the printers are watched: cadence, action on failure, saved frames.
    pub watch: crate::watch::WatchConfig,
    /// The printers to watch (`[[printers]]` entries).
    pub printers: Vec<crate::printer::PrinterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/printvigil"),
            detector: DetectorConfig::default(),
            server: None,
            watch: crate::watch::WatchConfig::default(),
            printers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// The ONNX model file. Default: the bundled demo model when run from a checkout,
    /// else Obico's production model in the state directory (see `printvigil model fetch`).
    pub model: Option<PathBuf>,
    /// Path of `libonnxruntime.so`; tried before `ORT_DYLIB_PATH`, the executable's folder
    /// and `/usr/lib/printvigil/`.
    pub onnxruntime: Option<PathBuf>,
    /// ONNX Runtime intra-op threads; 0 = all cores but one (the printer host keeps one).
    pub intra_threads: usize,
    /// Obico's detective sensitivity, 0.8 (fewer alerts) .. 1.2 (more).
    pub sensitivity: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self { model: None, onnxruntime: None, intra_threads: 0, sensitivity: 1.0 }
    }
}

impl DetectorConfig {
    /// The model file: `detector.model`, else Obico's production model in the state directory.
    pub fn model_path(&self, state_dir: &Path) -> PathBuf {
        self.model.clone().unwrap_or_else(|| {
            state_dir.join("models").join(crate::detector::fetch::MODEL_FILE)
        })
    }

    /// Intra-op thread count after resolving `0` (auto): all cores but one, at least one.
    pub fn threads(&self) -> usize {
        if self.intra_threads > 0 {
            return self.intra_threads;
        }
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        cores.saturating_sub(1).max(1)
    }
}

impl Config {
    /// Loads the layered configuration and validates it.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if Path::new(SYSTEM_CONFIG).exists() {
            fig = fig.merge(Toml::file(SYSTEM_CONFIG));
        }
        if let Some(path) = explicit {
            if !path.exists() {
                return Err(ConfigError::Missing { path: path.to_path_buf() });
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(Self::env());
        Self::from_figment(fig)
    }

    /// Parses a TOML string on top of the defaults (no files, no environment).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)),
        )
    }

    /// `PRINTVIGIL_*` variables, less the two that are not settings (`PRINTVIGIL_LOG`, the
    /// log filter, and `PRINTVIGIL_CONFIG`, the config file). Any other `PRINTVIGIL_*`
    /// variable must be a setting: a typo is an error, not silently ignored.
    fn env() -> Env {
        Env::prefixed("PRINTVIGIL_").split("__").filter(|k| k != "log" && k != "config")
    }

    fn from_figment(fig: Figment) -> Result<Self, ConfigError> {
        let cfg: Config = fig.extract().map_err(|e| {
            let msgs: Vec<String> = e.into_iter().map(|e| describe(&e)).collect();
            ConfigError::Invalid(msgs.join("\n"))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.detector;
        if !(d.sensitivity.is_finite() && (0.5..=2.0).contains(&d.sensitivity)) {
            return Err(invalid(
                "detector.sensitivity",
                &d.sensitivity.to_string(),
                "use a value between 0.8 (fewer alerts) and 1.2 (more alerts); 1.0 is Obico's default",
            ));
        }
        if d.intra_threads > 256 {
            return Err(invalid(
                "detector.intra_threads",
                &d.intra_threads.to_string(),
                "use 0 (all cores but one) or a small thread count such as 2",
            ));
        }
        if let Some(s) = &self.server {
            s.validate()?;
        }
        self.watch.validate()?;
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.printers.iter().enumerate() {
            let key = format!("printers[{i}]");
            p.validate(&key)?;
            if !names.insert(p.name().to_string()) {
                return Err(invalid(
                    &format!("{key}.name"),
                    &format!("{:?}", p.name()),
                    "another printer already has this name; give each printer its own name",
                ));
            }
        }
        Ok(())
    }
}

/// An error about one key: what was found and how to fix it.
pub fn invalid(key: &str, found: &str, fix: &str) -> ConfigError {
    ConfigError::Invalid(format!("config key `{key}` = {found} is not valid: {fix}"))
}

fn describe(e: &figment::Error) -> String {
    let key = if e.path.is_empty() { "(top level)".to_string() } else { e.path.join(".") };
    let origin = e.metadata.as_ref().map(|m| format!(" (from {})", m.name)).unwrap_or_default();
    let fix = match &e.kind {
        figment::error::Kind::UnknownField(_, expected) => {
            format!("remove it or use one of: {}", expected.join(", "))
        }
        figment::error::Kind::InvalidType(..) => "give it a value of the expected type".into(),
        figment::error::Kind::MissingField(_) => "add it".into(),
        _ => "see config/printvigil.toml for an annotated example".into(),
    };
    format!("config key `{key}`{origin}: {}; fix: {fix}", e.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_toml_str("").unwrap();
        assert_eq!(c, Config::default());
        assert!(c.detector.threads() >= 1);
    }

    #[test]
    fn the_example_config_parses_and_shows_the_defaults() {
        let text = include_str!("../config/printvigil.toml");
        assert_eq!(Config::from_toml_str(text).unwrap(), Config::default());
        let e = Config::from_toml_str("[watch]\ncadence_secs = 2\n").unwrap_err().to_string();
        assert!(e.contains("watch.cadence_secs") && e.contains("allow_fast_cadence"), "{e}");
        let c = Config::from_toml_str("[watch]\ncadence_secs = 2\nallow_fast_cadence = true\n").unwrap();
        assert_eq!(c.watch.cadence_secs, 2.0);
        let e = Config::from_toml_str("[watch]\naction_on_failure = \"explode\"\n").unwrap_err().to_string();
        assert!(e.contains("watch.action_on_failure"), "{e}");
        let e = Config::from_toml_str(
            "[[printers]]\nname = \"a\"\nkind = \"moonraker\"\ncamera = { kind = \"snapshot\", url = \"x\", rotation = 45 }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("printers[0].camera"), "{e}");
    }

    #[test]
    fn unknown_key_is_named_with_fix() {
        let e = Config::from_toml_str("[detector]\nsensitivty = 1.1\n").unwrap_err().to_string();
        assert!(e.contains("sensitivty"), "{e}");
        assert!(e.contains("sensitivity"), "should list the valid keys: {e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = Config::from_toml_str("[detector]\nintra_threads = \"two\"\n").unwrap_err().to_string();
        assert!(e.contains("detector.intra_threads"), "{e}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn env_overrides_nested_keys_but_not_log_or_config() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PRINTVIGIL_DETECTOR__INTRA_THREADS", "3");
            jail.set_env("PRINTVIGIL_LOG", "debug");
            jail.set_env("PRINTVIGIL_CONFIG", "/nowhere.toml");
            let fig = Figment::from(Serialized::defaults(Config::default())).merge(Config::env());
            let c = Config::from_figment(fig).map_err(|e| e.to_string())?;
            assert_eq!(c.detector.intra_threads, 3);
            Ok(())
        });
    }

    #[test]
    fn server_section_is_validated_and_secrets_stay_hidden() {
        let c = Config::from_toml_str(
            "[server]\nurl = \"https://obico.example\"\nclient_id = \"cid\"\nclient_secret = \"very-secret-value\"\ntoken = \"tok-value-123\"\n",
        )
        .unwrap();
        let s = c.server.as_ref().unwrap();
        assert_eq!(s.client_secret.as_ref().unwrap().expose(), "very-secret-value");
        for shown in [format!("{c:?}"), serde_json::to_string(&c).unwrap()] {
            assert!(!shown.contains("very-secret-value") && !shown.contains("tok-value-123"), "{shown}");
        }
        let e = Config::from_toml_str("[server]\nurl = \"http://obico.lan\"\n").unwrap_err().to_string();
        assert!(e.contains("server.url") && e.contains("allow_insecure_http"), "{e}");
        let e = Config::from_toml_str("[server]\nurl = \"https://x\"\nclient_auth = \"digest\"\n").unwrap_err().to_string();
        assert!(e.contains("server.client_auth"), "{e}");
        let e = Config::from_toml_str("[server]\nurl = \"https://x\"\nuplod = \"always\"\n").unwrap_err().to_string();
        assert!(e.contains("uplod") && e.contains("upload"), "{e}");
    }

    #[test]
    fn out_of_range_sensitivity_is_refused() {
        let e = Config::from_toml_str("[detector]\nsensitivity = 7.0\n").unwrap_err().to_string();
        assert!(e.contains("detector.sensitivity") && e.contains("0.8"), "{e}");
    }

    #[test]
    fn printers_parse_with_defaults_and_redacted_key() {
        let c = Config::from_toml_str(
            "[[printers]]\nname = \"voron\"\nkind = \"moonraker\"\napi_key = \"abc123\"\n\n[[printers]]\nname = \"ender\"\nkind = \"moonraker\"\nurl = \"http://192.168.1.20:7125\"\napi_key_via = \"oneshot_token\"\n",
        )
        .unwrap();
        assert_eq!(c.printers.len(), 2);
        let crate::printer::PrinterConfig::Moonraker(m) = &c.printers[0] else {
            panic!("not a moonraker entry: {:?}", c.printers[0]);
        };
        assert_eq!(m.url, "http://127.0.0.1:7125");
        assert_eq!(m.api_key.as_ref().unwrap().expose(), "abc123");
        assert!(!format!("{c:?}").contains("abc123"), "the key must not show in Debug output");
        let crate::printer::PrinterConfig::Moonraker(m) = &c.printers[1] else {
            panic!("not a moonraker entry: {:?}", c.printers[1]);
        };
        assert_eq!(m.api_key_via, crate::printer::moonraker::ApiKeyVia::OneshotToken);
    }

    #[test]
    fn simulated_printer_parses_with_defaults() {
        let c = Config::from_toml_str(
            "[[printers]]\nname = \"sim\"\nkind = \"simulated\"\n\n[[printers]]\nname = \"sim2\"\nkind = \"simulated\"\nfile = \"benchy.gcode\"\nstart_after_secs = 0\nprint_secs = 30.5\nrepeat = true\n",
        )
        .unwrap();
        match &c.printers[..] {
            [crate::printer::PrinterConfig::Simulated(a), crate::printer::PrinterConfig::Simulated(b)] => {
                assert_eq!(*a, crate::printer::sim::SimConfig::new("sim"));
                assert_eq!(
                    (b.file.as_str(), b.start_after_secs, b.print_secs, b.repeat),
                    ("benchy.gcode", 0.0, 30.5, true)
                );
            }
            other => panic!("two simulated printers expected: {other:?}"),
        }
        assert_eq!(c.printers[1].name(), "sim2");
    }

    #[test]
    fn bad_printer_entries_name_the_key_and_the_fix() {
        let cases = [
            ("name = \"a\"\nkind = \"moonraker\"\napi_key = \"  \"", "printers[0].api_key"),
            ("name = \"a\"\nkind = \"moonraker\"\nurl = \"ftp://x\"", "printers[0].url"),
            ("name = \"a\"\nkind = \"moonraker\"\nurl = \"not a url\"", "printers[0].url"),
            ("name = \"\"\nkind = \"moonraker\"", "printers[0].name"),
            ("name = \"a\"\nkind = \"moonraker\"\nportt = 1", "portt"),
            ("name = \"a\"\nkind = \"octoprint\"", "octoprint"),
            ("name = \"a\"\nkind = \"moonraker\"\nrequest_timeout_secs = 0", "request_timeout_secs"),
            ("name = \"a\"\nkind = \"simulated\"\nprint_secs = 0", "printers[0].print_secs"),
            ("name = \"a\"\nkind = \"simulated\"\nstart_after_secs = -2", "printers[0].start_after_secs"),
            ("name = \"a\"\nkind = \"simulated\"\nfile = \"\"", "printers[0].file"),
            ("name = \"a\"\nkind = \"simulated\"\nurl = \"http://x\"", "url"),
            ("name = \"\"\nkind = \"simulated\"", "printers[0].name"),
        ];
        for (entry, key) in cases {
            let err =
                Config::from_toml_str(&format!("[[printers]]\n{entry}\n")).unwrap_err().to_string();
            assert!(err.contains(key), "{entry:?}: {err}");
        }
        let dup = "[[printers]]\nname = \"a\"\nkind = \"moonraker\"\n[[printers]]\nname = \"a\"\nkind = \"moonraker\"\n";
        let err = Config::from_toml_str(dup).unwrap_err().to_string();
        assert!(err.contains("printers[1].name") && err.contains("own name"), "{err}");
    }
}
