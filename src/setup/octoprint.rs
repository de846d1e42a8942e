//! `printvigil setup octoprint`: OctoPrint's Application Keys workflow (printvigil asks
//! for a key, the user clicks Allow in OctoPrint), then the key into the printer's entry
//! of the config file (the entry is added when missing).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::SetupError;
use super::edit::ConfigFile;
use crate::printer::octoprint::appkeys;

/// Runs the step; `out` gets what the user should read (stdout for the CLI).
pub async fn run(path: &Path, name: &str, url: &str, wait: Duration, out: &mut dyn Write) -> Result<(), SetupError> {
    let step = |e: String| SetupError::Step(e);
    let base = url::Url::parse(url).map_err(|e| step(format!("--url {url:?}: {e}; write it like http://octopi.local:5000")))?;
    let base = if base.path().ends_with('/') { base } else { url::Url::parse(&format!("{base}/")).map_err(|e| step(e.to_string()))? };
    // Read (and refuse a broken file) before the user is asked to click anything.
    let mut file = ConfigFile::open(path)?;
    let say = |out: &mut dyn Write, line: String| {
        let _ = writeln!(out, "{line}");
    };
    say(out, format!("Asking OctoPrint at {base} for an application key for printvigil ..."));
    let pending = appkeys::request(&base, "printvigil").await.map_err(|e| step(e.to_string()))?;
    say(out, format!("Now approve it in OctoPrint: open {base} in a browser, log in as an administrator;"));
    say(out, "a dialog \"Access Request\" asks whether \"printvigil\" may access OctoPrint: click \"Allow\".".into());
    if let Some(d) = &pending.auth_dialog {
        say(out, format!("(Or open {d} and click \"Allow\".)"));
    }
    say(out, format!("Waiting up to {} s ...", wait.as_secs()));
    let key = pending.key(wait).await.map_err(|e| step(e.to_string()))?;
    let entry = file.printer(name, "octoprint")?;
    if entry.get("url").is_none() {
        entry["url"] = toml_edit::value(base.as_str().trim_end_matches('/'));
    }
    entry["api_key"] = toml_edit::value(key.expose());
    file.save()?;
    say(out, format!("Wrote api_key of printer `{name}` to {}.", path.display()));
    say(out, "The config loads; `printvigil check` tests the connection.".into());
    Ok(())
}
