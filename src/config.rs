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

/// Obico's detective sensitivity: the range its UI offers (0.8 fewer alerts, 1.2 more).
pub const SENSITIVITY: std::ops::RangeInclusive<f64> = 0.8..=1.2;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} does not exist; fix the path given to --config")]
    Missing { path: PathBuf },
    #[error("config file {path} is a directory; give the path of a TOML file, e.g. {path}/config.toml")]
    NotAFile { path: PathBuf },
    #[error(
        "cannot read config file {path}: {source}; check that this user may read it (the service runs as user printvigil: e.g. chown root:printvigil and chmod 640)"
    )]
    Unreadable { path: PathBuf, source: std::io::Error },
    /// One or more errors found while reading the layers, each naming its file and key.
    #[error("{0}")]
    Invalid(String),
    /// A value that was read but is not allowed; `origin` names where it came from.
    #[error("config key `{key}`{origin} = {found} is not valid: {fix}")]
    Value { key: String, found: String, fix: String, origin: String },
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
    /// The status page and `/metrics`.
    pub http: crate::http::HttpConfig,
    /// The MQTT broker to publish to (state, events, Home Assistant discovery); absent: none.
    pub mqtt: Option<crate::sink::mqtt::MqttConfig>,
    /// Notifications (`[[notify]]` entries: webhook, ntfy, Telegram, Discord).
    pub notify: Vec<crate::sink::notify::NotifyConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/printvigil"),
            detector: DetectorConfig::default(),
            server: None,
            watch: crate::watch::WatchConfig::default(),
            printers: Vec::new(),
            http: crate::http::HttpConfig::default(),
            mqtt: None,
            notify: Vec::new(),
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
    /// ONNX Runtime intra-op threads per session; 0 = choose: all cores but one (the
    /// printer host keeps one), split among the sessions (see [`crate::schedule::plan`]).
    pub intra_threads: usize,
    /// Inference sessions side by side, each scoring its own frame (several printers);
    /// 0 = one. Each session holds its own weights (~270 MiB with Obico's model).
    pub sessions: usize,
    /// Obico's detective sensitivity, 0.8 (fewer alerts) .. 1.2 (more): [`SENSITIVITY`].
    pub sensitivity: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self { model: None, onnxruntime: None, intra_threads: 0, sessions: 0, sensitivity: 1.0 }
    }
}

impl DetectorConfig {
    /// The model file: `detector.model`, else Obico's production model in the state directory.
    pub fn model_path(&self, state_dir: &Path) -> PathBuf {
        self.model.clone().unwrap_or_else(|| {
            state_dir.join("models").join(crate::detector::fetch::MODEL_FILE)
        })
    }

    /// Intra-op thread count per session after resolving `0` (auto).
    pub fn threads(&self) -> usize {
        self.plan(1).threads
    }

    /// Sessions and threads per session for watching `printers` printers on this host.
    pub fn plan(&self, printers: usize) -> crate::schedule::Plan {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        crate::schedule::plan(cores, self.intra_threads, self.sessions, printers)
    }
}

impl Config {
    /// Loads the layered configuration and validates it.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if Path::new(SYSTEM_CONFIG).exists() {
            readable(Path::new(SYSTEM_CONFIG))?;
            fig = fig.merge(Toml::file_exact(SYSTEM_CONFIG));
        }
        if let Some(path) = explicit {
            if !path.exists() {
                return Err(ConfigError::Missing { path: path.to_path_buf() });
            }
            readable(path)?;
            fig = fig.merge(Toml::file_exact(path));
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
            let msgs: Vec<String> = e.into_iter().map(|e| describe(&refine(&fig, e))).collect();
            ConfigError::Invalid(msgs.join("\n"))
        })?;
        cfg.validate().map_err(|e| match e {
            ConfigError::Value { key, found, fix, .. } => {
                let origin = origin_of(&fig, &key);
                ConfigError::Value { key, found, fix, origin }
            }
            other => other,
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.detector;
        if !(d.sensitivity.is_finite() && SENSITIVITY.contains(&d.sensitivity)) {
            return Err(invalid(
                "detector.sensitivity",
                &d.sensitivity.to_string(),
                &format!(
                    "use a value between {} (fewer alerts) and {} (more alerts); 1.0 is Obico's default",
                    SENSITIVITY.start(),
                    SENSITIVITY.end()
                ),
            ));
        }
        if d.intra_threads > 256 {
            return Err(invalid(
                "detector.intra_threads",
                &d.intra_threads.to_string(),
                "use 0 (all cores but one) or a small thread count such as 2",
            ));
        }
        if d.sessions > 64 {
            return Err(invalid(
                "detector.sessions",
                &d.sessions.to_string(),
                "use 0 (as many as the cores hold) or a small count such as 2; each session adds memory",
            ));
        }
        if let Some(s) = &self.server {
            s.validate()?;
        }
        self.watch.validate()?;
        self.http.validate()?;
        if let Some(m) = &self.mqtt {
            m.validate()?;
        }
        for (i, n) in self.notify.iter().enumerate() {
            n.validate(&format!("notify[{i}]"))?;
        }
        let mut names = std::collections::HashSet::new();
        let mut slugs = std::collections::HashMap::new();
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
            if self.mqtt.is_some()
                && let Some(other) = slugs.insert(crate::sink::mqtt::topics::slug(p.name()), p.name().to_string())
            {
                return Err(invalid(
                    &format!("{key}.name"),
                    &format!("{:?}", p.name()),
                    &format!("on MQTT it would share a topic with printer {other:?} (names are cut to lower-case letters, digits, - and _); rename one of them"),
                ));
            }
        }
        Ok(())
    }
}

/// An error about one key (`printers[0].url`): what was found and how to fix it. The file
/// or variable the value came from is added when the whole configuration is checked.
pub fn invalid(key: &str, found: &str, fix: &str) -> ConfigError {
    ConfigError::Value { key: key.into(), found: found.into(), fix: fix.into(), origin: String::new() }
}

/// A config file must be a file this user may open (figment would skip a directory
/// silently and report a read error without the path).
fn readable(path: &Path) -> Result<(), ConfigError> {
    let unreadable = |source| ConfigError::Unreadable { path: path.to_path_buf(), source };
    if std::fs::metadata(path).map_err(unreadable)?.is_dir() {
        return Err(ConfigError::NotAFile { path: path.to_path_buf() });
    }
    std::fs::File::open(path).map(drop).map_err(unreadable)
}

/// A key path as the config file writes it: `printers[0].camera`.
fn key_path(path: &[String]) -> String {
    let mut key = String::new();
    for part in path {
        if part.parse::<usize>().is_ok() {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}

/// Where a setting came from, for a message: ` in FILE` or ` (from VARIABLE)`; nothing for
/// the built-in defaults.
fn origin(meta: Option<&figment::Metadata>, path: &[String]) -> String {
    let Some(m) = meta else { return String::new() };
    match &m.source {
        Some(figment::Source::File(p)) => format!(" in {}", p.display()),
        _ if m.name.contains("environment") => {
            let keys: Vec<String> = path.iter().map(|k| k.to_ascii_uppercase()).collect();
            format!(" (from environment variable PRINTVIGIL_{})", keys.join("__"))
        }
        _ => String::new(),
    }
}

/// The origin of the value at a key such as `printers[1].name`: that of the nearest
/// enclosing value figment can look up (it does not look into arrays).
fn origin_of(fig: &Figment, key: &str) -> String {
    let mut path: Vec<String> = key.split('[').next().unwrap_or("").split('.').map(str::to_owned).collect();
    while !path.is_empty() {
        if let Some(m) = fig.find_metadata(&path.join(".")) {
            return origin(Some(m), &path);
        }
        path.pop();
    }
    String::new()
}

/// serde reads a `[[printers]]` entry (tagged by its `kind`) out of a buffer, so an error
/// inside it, e.g. a typo in `camera = { ... }`, comes back at `printers.N` alone. Reading
/// that entry again as its kind's own settings finds the full key path.
fn refine(fig: &Figment, e: figment::Error) -> figment::Error {
    use crate::printer::{moonraker::MoonrakerConfig, sim::SimConfig};
    use figment::value::Value;
    let [first, index] = &e.path[..] else { return e };
    let Ok(index) = index.parse::<usize>() else { return e };
    if first != "printers" {
        return e;
    }
    let Some(Value::Dict(_, mut entry)) =
        fig.extract_inner::<Vec<Value>>("printers").ok().and_then(|mut v| (index < v.len()).then(|| v.swap_remove(index)))
    else {
        return e;
    };
    let kind = entry.remove("kind").and_then(|k| k.into_string());
    let entry = Figment::from(Serialized::defaults(entry));
    let inner = match kind.as_deref() {
        Some("moonraker") => entry.extract::<MoonrakerConfig>().err(),
        Some("octoprint") => entry.extract::<crate::printer::octoprint::OctoPrintConfig>().err(),
        Some("simulated") => entry.extract::<SimConfig>().err(),
        _ => None,
    };
    match inner {
        Some(inner) if !inner.path.is_empty() => {
            let mut better = e.clone();
            better.path.extend(inner.path.iter().cloned());
            better.kind = inner.kind.clone();
            better
        }
        _ => e,
    }
}

fn describe(e: &figment::Error) -> String {
    use figment::error::{Actual, Kind};
    let key = if e.path.is_empty() { "(top level)".to_string() } else { key_path(&e.path) };
    let from = origin(e.metadata.as_ref(), &e.path);
    let fix = match &e.kind {
        Kind::InvalidType(Actual::Map, _) if e.path == ["printers"] => {
            "write each printer as a `[[printers]]` entry (double brackets: one per printer), not `[printers]`".into()
        }
        Kind::UnknownField(_, expected) => {
            format!("remove it or use one of: {}", expected.join(", "))
        }
        Kind::InvalidType(..) => "give it a value of the expected type".into(),
        Kind::MissingField(_) => "add it".into(),
        _ => "see config/printvigil.toml for an annotated example".into(),
    };
    match &e.metadata {
        // A file that is not TOML at all: the parser's message says where.
        Some(figment::Metadata { source: Some(figment::Source::File(p)), .. }) if e.path.is_empty() => {
            format!("config file {}: {}; fix: {fix}", p.display(), e.kind)
        }
        _ => format!("config key `{key}`{from}: {}; fix: {fix}", e.kind),
    }
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
    fn mqtt_and_notify_sections_parse_and_their_secrets_stay_hidden() {
        let c = Config::from_toml_str(
            "[mqtt]\nurl = \"mqtts://bob:url-pass-1@broker.lan\"\nusername = \"pv\"\npassword = \"mqtt-pass-2\"\n\
             [[notify]]\nkind = \"telegram\"\ntoken = \"123:tg-token-3\"\nchat_id = \"42\"\n\
             [[notify]]\nkind = \"discord\"\nurl = \"https://discord.com/api/webhooks/1/dc-token-4\"\nevents = [\"pause\"]\n\
             [[notify]]\nkind = \"webhook\"\nurl = \"https://h/hook\"\nheaders = { Authorization = \"Bearer hdr-5\" }\n\
             [[printers]]\nname = \"a\"\nkind = \"simulated\"\n",
        )
        .unwrap();
        assert_eq!(c.mqtt.as_ref().unwrap().password.as_ref().unwrap().expose(), "mqtt-pass-2");
        assert_eq!(c.notify.len(), 3);
        assert_eq!(c.notify[1].events, [crate::sink::notify::AlertKind::Pause]);
        for shown in [format!("{c:?}"), serde_json::to_string(&c).unwrap()] {
            for secret in ["url-pass-1", "mqtt-pass-2", "tg-token-3", "dc-token-4", "hdr-5"] {
                assert!(!shown.contains(secret), "{secret} shown: {shown}");
            }
        }
        let e = Config::from_toml_str("[[notify]]\nkind = \"ntfy\"\nurl = \"https://ntfy.sh/t\"\nevnts = []\n").unwrap_err().to_string();
        assert!(e.contains("notify[0].evnts") && e.contains("events"), "{e}");
        let e = Config::from_toml_str("[[notify]]\nkind = \"sms\"\n").unwrap_err().to_string();
        assert!(e.contains("notify[0].kind"), "{e}");
        let e = Config::from_toml_str("[[notify]]\nkind = \"ntfy\"\nurl = \"https://ntfy.sh/t\"\nevents = [\"explode\"]\n").unwrap_err().to_string();
        assert!(e.contains("notify[0].events"), "{e}");
        let e = Config::from_toml_str("[mqtt]\nurl = \"http://x\"\n").unwrap_err().to_string();
        assert!(e.contains("mqtt.url"), "{e}");
        let twins = "[mqtt]\nurl = \"mqtt://h\"\n[[printers]]\nname = \"Voron 2\"\nkind = \"simulated\"\n[[printers]]\nname = \"voron-2\"\nkind = \"simulated\"\n";
        let e = Config::from_toml_str(twins).unwrap_err().to_string();
        assert!(e.contains("printers[1].name") && e.contains("MQTT"), "{e}");
    }

    #[test]
    fn out_of_range_sensitivity_is_refused() {
        let e = Config::from_toml_str("[detector]\nsensitivity = 7.0\n").unwrap_err().to_string();
        assert!(e.contains("detector.sensitivity") && e.contains("0.8"), "{e}");
        // The range the message states is the range accepted, both ends included.
        for (value, ok) in [(0.79, false), (0.8, true), (1.0, true), (1.2, true), (1.21, false), (0.5, false), (2.0, false)] {
            let r = Config::from_toml_str(&format!("[detector]\nsensitivity = {value}\n"));
            assert_eq!(r.is_ok(), ok, "{value}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("between 0.8 (fewer alerts) and 1.2 (more alerts)"), "{e}");
            }
        }
    }

    #[test]
    fn single_bracket_printers_says_to_write_double_brackets() {
        let e = Config::from_toml_str("[printers]\nname = \"a\"\nkind = \"moonraker\"\n").unwrap_err().to_string();
        assert!(e.contains("`printers`") && e.contains("[[printers]]"), "{e}");
    }

    #[test]
    fn a_typo_inside_a_printers_camera_names_the_full_key() {
        for kind in ["moonraker", "simulated", "octoprint"] {
            let key = if kind == "octoprint" { "\napi_key = \"k\"" } else { "" };
            let e = Config::from_toml_str(&format!(
                "[[printers]]\nname = \"a\"\nkind = \"simulated\"\n[[printers]]\nname = \"b\"\nkind = \"{kind}\"{key}\ncamera = {{ kind = \"snapshot\", url = \"http://x/\", rotaton = 90 }}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains("`printers[1].camera.rotaton`") && e.contains("rotation"), "{kind}: {e}");
        }
        let e = Config::from_toml_str("[[printers]]\nname = \"a\"\nkind = \"moonraker\"\ncamera = { kind = \"snapshot\", url = 5 }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`printers[0].camera.url`"), "{e}");
    }

    #[test]
    fn errors_from_a_file_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let e = Config::load(Some(dir.path())).unwrap_err().to_string();
        assert!(e.contains(&dir.path().display().to_string()) && e.contains("is a directory"), "{e}");

        let cases = [
            ("parse.toml", "[detector\nx = 1\n", None),
            ("utf8.toml", "\u{0}\u{0}", None),
            ("typo.toml", "[detector]\nsensitivty = 1.0\n", Some("detector.sensitivty")),
            ("type.toml", "[detector]\nintra_threads = \"two\"\n", Some("detector.intra_threads")),
            ("range.toml", "[detector]\nsensitivity = 1.9\n", Some("detector.sensitivity")),
            ("printer.toml", "[[printers]]\nname = \"a\"\nkind = \"moonraker\"\nurl = \"ftp://x\"\n", Some("printers[0].url")),
        ];
        for (name, text, key) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let e = Config::load(Some(&path)).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()), "{name}: the message names the file: {e}");
            if let Some(key) = key {
                assert!(e.contains(&format!("`{key}`")), "{name}: the message names the key: {e}");
            }
        }
        let bytes = dir.path().join("bytes.toml");
        std::fs::write(&bytes, [0xff, 0xfe, 0x00]).unwrap();
        let e = Config::load(Some(&bytes)).unwrap_err().to_string();
        assert!(e.contains(&bytes.display().to_string()), "{e}");
    }

    #[test]
    fn key_paths_read_like_the_file() {
        let p = |v: &[&str]| key_path(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(p(&["printers", "0", "camera", "url"]), "printers[0].camera.url");
        assert_eq!(p(&["detector", "sensitivity"]), "detector.sensitivity");
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
        assert_eq!(m.url.expose(), "http://127.0.0.1:7125");
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
            ("name = \"a\"\nkind = \"octoprint\"", "printers[0].api_key"),
            ("name = \"a\"\nkind = \"octoprint\"\napi_key = \" \"", "printers[0].api_key"),
            ("name = \"a\"\nkind = \"octoprint\"\napi_key = \"k\"\nurl = \"ftp://x\"", "printers[0].url"),
            ("name = \"a\"\nkind = \"octoprint\"\napi_key = \"k\"\npoll_secs = 0", "printers[0].poll_secs"),
            ("name = \"a\"\nkind = \"octoprint\"\napi_key = \"k\"\napikey = 1", "apikey"),
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
