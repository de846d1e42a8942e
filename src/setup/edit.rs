//! Editing the config file the way a person would: only the keys a setup step sets
//! change; comments, order, blank lines and every other setting stay as they were.
//!
//! `toml_edit` keeps the document's formatting while it is changed, so a file a user wrote
//! by hand (with comments explaining each choice) survives any number of setup runs. A
//! setup step opens the file ([`ConfigFile::open`]; a missing file is an empty one), finds
//! or adds a printer entry ([`ConfigFile::printer`]) or a section ([`ConfigFile::section`]),
//! sets values, and saves ([`ConfigFile::save`]): the new text is checked to load as a
//! config *before* it replaces the old file, the write is atomic (a new file renamed over
//! the old), and the file keeps its owner, group and mode (the service's group reads it); a
//! new file is owner-only, since it may hold keys and passwords.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid TOML, so setup will not change it: {message}. Fix the file (or move it aside) and run setup again")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}` is not a table as printvigil's config has it; fix that part of the file and run setup again")]
    Shape { path: PathBuf, key: String },
    #[error("the changed {path} would not load, so it was left as it was: {source}")]
    Invalid { path: PathBuf, source: crate::config::ConfigError },
    #[error("cannot write {path}: {source} (run as a user who may edit the config, e.g. with sudo)")]
    Write { path: PathBuf, source: std::io::Error },
}

/// A config file being edited.
pub struct ConfigFile {
    path: PathBuf,
    doc: DocumentMut,
}

impl ConfigFile {
    /// Reads `path`; a file that does not exist yet is an empty config.
    pub fn open(path: &Path) -> Result<Self, EditError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(EditError::Read { path: path.into(), source }),
        };
        Self::parse(path, &text)
    }

    /// The text of a file at `path` (no disk access).
    pub fn parse(path: &Path, text: &str) -> Result<Self, EditError> {
        let doc = text
            .parse::<DocumentMut>()
            .map_err(|e| EditError::Parse { path: path.into(), message: e.message().to_string() })?;
        Ok(Self { path: path.into(), doc })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `[[printers]]` entry named `name`; when there is none, a new one is appended
    /// with `name` and `kind` set. The kind of an existing entry is left as it is.
    pub fn printer(&mut self, name: &str, kind: &str) -> Result<&mut Table, EditError> {
        let path = self.path.clone();
        // Comments at the end of the file stay where they are: before what is added.
        let trailing = if self.printer_names().iter().any(|n| n == name) { String::new() } else { self.take_trailing() };
        let empty = self.text_is_empty();
        let item = self.doc.entry("printers").or_insert(Item::ArrayOfTables(ArrayOfTables::new()));
        // `printers = [{...}]` (an inline array) becomes `[[printers]]` tables.
        if let Some(array) = item.as_array() {
            let mut tables = ArrayOfTables::new();
            for v in array.iter() {
                let Some(t) = v.as_inline_table() else {
                    return Err(EditError::Shape { path, key: "printers".into() });
                };
                tables.push(t.clone().into_table());
            }
            *item = Item::ArrayOfTables(tables);
        }
        let Some(tables) = item.as_array_of_tables_mut() else {
            return Err(EditError::Shape { path, key: "printers".into() });
        };
        let found = tables.iter().position(|t| t.get("name").and_then(Item::as_str) == Some(name));
        let index = match found {
            Some(i) => i,
            None => {
                let mut t = Table::new();
                // A blank line before a new entry, unless the file ends with one.
                let prefix = if trailing.is_empty() && !empty { "\n".to_string() } else { trailing.clone() };
                t.decor_mut().set_prefix(prefix);
                t["name"] = toml_edit::value(name);
                t["kind"] = toml_edit::value(kind);
                tables.push(t);
                tables.len() - 1
            }
        };
        Ok(tables.get_mut(index).expect("index found or pushed above"))
    }

    fn text_is_empty(&self) -> bool {
        self.doc.to_string().trim().is_empty()
    }

    /// The comments and blank lines at the end of the file, taken off the document.
    fn take_trailing(&mut self) -> String {
        let t = self.doc.trailing().as_str().unwrap_or("").to_string();
        self.doc.set_trailing("");
        t
    }

    /// The names of the `[[printers]]` entries.
    pub fn printer_names(&self) -> Vec<String> {
        let Some(item) = self.doc.get("printers") else { return Vec::new() };
        if let Some(t) = item.as_array_of_tables() {
            return t.iter().filter_map(|t| t.get("name").and_then(Item::as_str).map(String::from)).collect();
        }
        item.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_inline_table()?.get("name")?.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The top-level `[key]` section (e.g. `server`), created when missing.
    pub fn section(&mut self, key: &str) -> Result<&mut Table, EditError> {
        let path = self.path.clone();
        if !self.doc.contains_key(key) {
            let trailing = self.take_trailing();
            let mut t = Table::new();
            // A blank line before a new section, unless the file ends with one.
            let trailing = if trailing.is_empty() && !self.doc.is_empty() { "\n".to_string() } else { trailing };
            t.decor_mut().set_prefix(trailing);
            self.doc.insert(key, Item::Table(t));
        }
        let item = self.doc.entry(key).or_insert(Item::Table(Table::new()));
        if let Some(t) = item.as_inline_table() {
            *item = Item::Table(t.clone().into_table());
        }
        item.as_table_mut().ok_or(EditError::Shape { path, key: key.into() })
    }

    /// Removes the top-level `[key]` section; true when there was one.
    pub fn remove_section(&mut self, key: &str) -> bool {
        self.doc.remove(key).is_some()
    }

    /// Merges the settings of another config text (a first-boot file) into this one: a
    /// `[[printers]]` entry replaces the keys of the entry of the same name (added when
    /// missing), a section's keys replace the same keys of that section, a top-level value
    /// replaces the same value. Comments of both texts are kept. Returns what was merged
    /// (printer names and section names; never a value).
    pub fn merge(&mut self, other: &str, other_path: &Path) -> Result<Merged, EditError> {
        let parse_err = |message: String| EditError::Parse { path: other_path.into(), message };
        let fragment = other.parse::<DocumentMut>().map_err(|e| parse_err(e.message().to_string()))?;
        let mut merged = Merged::default();
        for (key, item) in fragment.iter() {
            if key == "printers" {
                let entries: Vec<Table> = match item {
                    Item::ArrayOfTables(a) => a.iter().cloned().collect(),
                    Item::Value(toml_edit::Value::Array(a)) => a
                        .iter()
                        .map(|v| v.as_inline_table().map(|t| t.clone().into_table()))
                        .collect::<Option<_>>()
                        .ok_or_else(|| parse_err("`printers` must be [[printers]] tables".into()))?,
                    _ => return Err(parse_err("`printers` must be [[printers]] tables".into())),
                };
                for entry in entries {
                    let Some(name) = entry.get("name").and_then(Item::as_str).map(String::from) else {
                        return Err(parse_err("every [[printers]] entry needs a `name` (entries are matched by name)".into()));
                    };
                    let kind = entry.get("kind").and_then(Item::as_str).unwrap_or("moonraker").to_string();
                    let target = self.printer(&name, &kind)?;
                    for (k, v) in entry.iter() {
                        set_keeping_comment(target, k, v);
                    }
                    merged.printers.push(name);
                }
            } else if let Some(table) = item.as_table_like() {
                let target = self.section(key)?;
                for (k, v) in table.iter() {
                    set_keeping_comment(target, k, v);
                }
                merged.sections.push(key.to_string());
            } else {
                self.doc[key] = item.clone();
                merged.values.push(key.to_string());
            }
        }
        Ok(merged)
    }

    /// The edited text.
    pub fn text(&self) -> String {
        self.doc.to_string()
    }

    /// Checks that the edited text loads as a config, then replaces the file atomically
    /// (owner, group and mode kept; a new file is 0600). Returns the loaded config.
    pub fn save(&self) -> Result<crate::config::Config, EditError> {
        let text = self.text();
        let config = crate::config::Config::from_toml_str(&text)
            .map_err(|source| EditError::Invalid { path: self.path.clone(), source })?;
        write_atomically(&self.path, text.as_bytes()).map_err(|source| EditError::Write { path: self.path.clone(), source })?;
        Ok(config)
    }
}

/// Sets `table[key]` to `item`; a value replacing a value keeps the old one's comment.
fn set_keeping_comment(table: &mut Table, key: &str, item: &Item) {
    let mut item = item.clone();
    if let (Some(old), Some(new)) = (table.get(key).and_then(Item::as_value), item.as_value_mut()) {
        *new.decor_mut() = old.decor().clone();
    }
    table[key] = item;
}

/// What [`ConfigFile::merge`] changed, by name only (values may be secrets).
#[derive(Debug, Default, PartialEq)]
pub struct Merged {
    pub printers: Vec<String>,
    pub sections: Vec<String>,
    pub values: Vec<String>,
}

impl std::fmt::Display for Merged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.printers.is_empty() {
            parts.push(format!("printers {}", self.printers.join(", ")));
        }
        if !self.sections.is_empty() {
            parts.push(format!("sections {}", self.sections.join(", ")));
        }
        if !self.values.is_empty() {
            parts.push(format!("keys {}", self.values.join(", ")));
        }
        if parts.is_empty() {
            return f.write_str("nothing");
        }
        f.write_str(&parts.join("; "))
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory, renamed over
/// the old file once synced. An existing file's owner, group and mode are kept.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        if let Ok(meta) = std::fs::metadata(path) {
            // Best effort: only root may give a file away.
            let _ = std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()));
            f.set_permissions(meta.permissions())?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(text: &str) -> ConfigFile {
        ConfigFile::parse(Path::new("config.toml"), text).unwrap()
    }

    #[test]
    fn a_key_is_set_in_the_named_entry_and_everything_else_stays() {
        let text = "# mine\n[[printers]]\nname = \"voron\"\nkind = \"moonraker\"\n\n[[printers]]\n# the shelf one\nname = \"ender\"\nkind = \"octoprint\"\napi_key = \"OLD\" # old\n\n[server]\nurl = \"x\" # keep\n";
        let mut c = edit(text);
        c.printer("ender", "octoprint").unwrap()["api_key"] = toml_edit::value("NEW");
        let t = c.text();
        assert!(t.starts_with("# mine\n[[printers]]\nname = \"voron\""), "{t}");
        assert!(t.contains("# the shelf one\nname = \"ender\"") && t.contains("api_key = \"NEW\"") && !t.contains("OLD"), "{t}");
        assert!(t.contains("[server]\nurl = \"x\" # keep\n"), "{t}");
        assert_eq!(c.printer_names(), ["voron", "ender"]);
    }

    #[test]
    fn a_missing_entry_is_appended_and_the_result_loads() {
        let mut c = edit("state_dir = \"/x\" # where\n");
        let p = c.printer("new", "octoprint").unwrap();
        p["url"] = toml_edit::value("http://h:5000");
        p["api_key"] = toml_edit::value("K\"");
        let t = c.text();
        assert!(t.starts_with("state_dir = \"/x\" # where\n"), "{t}");
        let config = crate::config::Config::from_toml_str(&t).unwrap();
        assert_eq!(config.printers.len(), 1);
        assert_eq!(config.printers[0].name(), "new");
    }

    #[test]
    fn inline_printer_arrays_are_found_and_sections_created() {
        let mut c = edit("printers = [{ name = \"a\", kind = \"simulated\" }]\n");
        c.printer("a", "octoprint").unwrap()["action_on_failure"] = toml_edit::value("notify");
        c.section("server").unwrap()["url"] = toml_edit::value("https://obico.example");
        let t = c.text();
        assert_eq!(c.printer_names(), ["a"]);
        assert!(t.contains("kind = \"simulated\"") && t.contains("[server]"), "{t}");
        assert!(c.remove_section("server") && !c.text().contains("[server]"));
    }

    #[test]
    fn garbage_and_wrong_shapes_are_errors_that_name_the_file() {
        let e = ConfigFile::parse(Path::new("/etc/p.toml"), "[[printers]\n").err().unwrap();
        assert!(e.to_string().contains("/etc/p.toml is not valid TOML"), "{e}");
        let mut c = edit("printers = 3\n");
        assert!(matches!(c.printer("a", "x"), Err(EditError::Shape { .. })));
        let mut c = edit("server = \"x\"\n");
        assert!(matches!(c.section("server"), Err(EditError::Shape { .. })));
    }

    #[test]
    fn merge_matches_printers_by_name_and_sections_by_key_keeping_comments() {
        let mut c = edit("# mine\n[[printers]]\nname = \"voron\" # the big one\nkind = \"moonraker\"\nurl = \"http://old:7125\"\n\n[watch]\ncadence_secs = 10.0 # keep\naction_on_failure = \"pause\"\n");
        let boot = "[[printers]]\nname = \"voron\"\nurl = \"http://127.0.0.1:7125\"\n\n[[printers]]\nname = \"ender\"\nkind = \"octoprint\"\napi_key = \"K\"\n\n[watch]\naction_on_failure = \"cancel\"\n\n[server]\nurl = \"https://s.example\"\ntoken = \"T\"\n";
        let boot = format!("state_dir = \"/srv/pv\"\n{boot}");
        let boot = boot.as_str();
        let merged = c.merge(boot, Path::new("/boot/firmware/printvigil.toml")).unwrap();
        assert_eq!(merged.printers, ["voron", "ender"]);
        assert_eq!(merged.sections, ["watch", "server"]);
        assert_eq!(merged.values, ["state_dir"]);
        assert_eq!(merged.to_string(), "printers voron, ender; sections watch, server; keys state_dir");
        let t = c.text();
        // Top-level keys go before the first table (TOML has them nowhere else).
        assert!(t.starts_with("state_dir = \"/srv/pv\"\n# mine\n[[printers]]\nname = \"voron\" # the big one"), "{t}");
        assert!(t.contains("cadence_secs = 10.0 # keep") && !t.contains("http://old"), "{t}");
        let config = crate::config::Config::from_toml_str(&t).unwrap();
        assert_eq!(config.printers.len(), 2);
        assert_eq!(config.state_dir, Path::new("/srv/pv"));
        assert_eq!(config.watch.action_on_failure, crate::printer::Action::Cancel);
        assert!(config.server.is_some());
        // An entry without a name cannot be matched: refused, naming the file.
        let e = c.merge("[[printers]]\nkind = \"moonraker\"\n", Path::new("/boot/x.toml")).unwrap_err();
        assert!(e.to_string().contains("/boot/x.toml") && e.to_string().contains("needs a `name`"), "{e}");
        assert!(matches!(c.merge("[[printers]\n", Path::new("/b")), Err(EditError::Parse { .. })));
    }

    #[test]
    fn save_refuses_a_config_that_would_not_load_and_keeps_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "# hand written\n").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        let mut c = ConfigFile::open(&path).unwrap();
        c.printer("p", "octoprint").unwrap()["no_such_key"] = toml_edit::value(1);
        assert!(matches!(c.save(), Err(EditError::Invalid { .. })));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# hand written\n");
        let mut c = ConfigFile::open(&path).unwrap();
        c.printer("p", "simulated").unwrap();
        c.save().unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().starts_with("# hand written\n"));
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let fresh = dir.path().join("sub/new.toml");
        let mut c = ConfigFile::open(&fresh).unwrap();
        c.printer("p", "simulated").unwrap();
        c.save().unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o600);
        assert!(!dir.path().join("sub/new.toml.new").exists());
    }
}
