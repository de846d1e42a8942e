//! `printvigil setup bambu HOST`: trust a Bambu Lab printer's certificate and write the
//! printer's entry.
//!
//! The printer's certificate is self-signed, so nothing can vouch for it but you. The step
//! connects once to HOST's MQTT port, shows the certificate's SHA-256 fingerprint and its
//! name (a Bambu printer's certificate is named after its serial number, which the
//! printer's screen shows under Settings > Device), and asks you to confirm (`--yes` for
//! scripts). Then it logs in with the access code and waits for a report, so a wrong code
//! or serial is found now and not in the service's log; it looks at the camera port (A1/P1
//! printers send their camera there; X1/H2 do not) and writes `host`, `serial`,
//! `access_code`, `fingerprint` (and `camera = { kind = "bambu" }` when the camera port
//! answers) into the printer's entry, which is added when missing. Other keys and comments
//! stay as they were.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use super::SetupError;
use super::edit::ConfigFile;
use crate::printer::bambu::{BambuConfig, BambuLink};
use crate::printer::{PrinterLink, PrinterState};
use crate::tlspin::{self, Trust};

/// What the command line gives the step.
#[derive(Debug, Clone)]
pub struct Options {
    /// The printer's name in the config file.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub camera_port: u16,
    pub serial: Option<String>,
    pub access_code: Option<String>,
    /// Trust the certificate shown without asking.
    pub yes: bool,
    /// How long each network step may take.
    pub timeout: Duration,
}

fn step(s: impl Into<String>) -> SetupError {
    SetupError::Step(s.into())
}

fn ask(input: &mut dyn BufRead, out: &mut dyn Write, prompt: &str) -> Result<String, SetupError> {
    let _ = write!(out, "{prompt}");
    let _ = out.flush();
    let mut line = String::new();
    input.read_line(&mut line).map_err(|e| step(format!("cannot read the answer: {e}")))?;
    Ok(line.trim().to_string())
}

/// Runs the step; `input` answers the questions (stdin for the CLI), `out` gets what the
/// user should read.
pub async fn run(path: &Path, o: &Options, input: &mut dyn BufRead, out: &mut dyn Write) -> Result<(), SetupError> {
    let say = |out: &mut dyn Write, line: String| {
        let _ = writeln!(out, "{line}");
    };
    // Read (and refuse a broken file) before anything is asked.
    let mut file = ConfigFile::open(path)?;
    let existing = crate::config::Config::from_toml_str(&file.text()).ok().and_then(|c| {
        c.printers.into_iter().find_map(|p| match p {
            crate::printer::PrinterConfig::Bambu(b) if b.name == o.name => Some(b),
            _ => None,
        })
    });

    say(out, format!("Connecting to {}:{} ...", o.host, o.port));
    let probe = tlspin::probe(&o.host, o.port, o.timeout).await.map_err(|e| {
        step(format!(
            "{e}. Check that the printer is on and at this address (its screen shows the IP under Settings > Network), and that LAN-only mode is on"
        ))
    })?;
    let cn = probe.common_name.clone().unwrap_or_else(|| "(none)".into());
    say(out, format!("The printer shows a certificate named {cn}"));
    say(out, format!("SHA-256 fingerprint: {}", probe.fingerprint));
    say(out, "A Bambu printer's certificate is named after its serial number (Settings > Device on the printer's screen).".into());
    if !o.yes {
        let a = ask(input, out, "Is this your printer? Trust this certificate [y/N]: ")?;
        if !matches!(a.to_ascii_lowercase().as_str(), "y" | "yes") {
            return Err(step("not confirmed; nothing was written"));
        }
    }

    let cn_serial = probe.common_name.clone().filter(|c| !c.is_empty() && c.len() <= 32 && c.chars().all(|ch| ch.is_ascii_alphanumeric()));
    let serial = match (&o.serial, &cn_serial, existing.as_ref().map(|e| e.serial.clone())) {
        (Some(s), _, _) => s.trim().to_string(),
        (None, Some(c), _) => {
            say(out, format!("Serial number {c} (from the certificate)."));
            c.clone()
        }
        (None, None, Some(e)) if !e.is_empty() => e,
        _ if o.yes => return Err(step("give the printer's serial number with --serial (Settings > Device on its screen)")),
        _ => ask(input, out, "The printer's serial number (Settings > Device): ")?,
    };
    let code = match (&o.access_code, existing.as_ref().and_then(|e| e.access_code.clone())) {
        (Some(c), _) => c.trim().to_string(),
        (None, Some(c)) if !c.is_empty() => c.expose().to_string(),
        _ if o.yes => {
            return Err(step("give the printer's access code with --access-code (Settings > Network / WLAN on its screen, with LAN-only mode on)"));
        }
        _ => ask(input, out, "The access code (Settings > Network / WLAN on the printer's screen): ")?,
    };

    // Log in once with what will be written: a wrong code or serial shows now.
    let mut cfg = BambuConfig::new(&o.name, &o.host, &serial, &code, Trust::Pinned(probe.fingerprint));
    cfg.port = o.port;
    cfg.camera_port = o.camera_port;
    cfg.connect_timeout_secs = o.timeout.as_secs().clamp(1, 120);
    cfg.report_timeout_secs = o.timeout.as_secs().clamp(5, 3600);
    cfg.validate("the answers").map_err(|e| step(e.to_string()))?;
    say(out, format!("Logging in as bblp with the access code, waiting for a report from {serial} ..."));
    let link = BambuLink::start_concrete(cfg.clone(), "setup");
    let mut status = link.status();
    let outcome = tokio::time::timeout(o.timeout * 2 + Duration::from_secs(5), async {
        loop {
            {
                let s = status.borrow_and_update();
                if s.state != PrinterState::Offline {
                    return Ok(s.state);
                }
                if let Some(m) = &s.message {
                    return Err(m.clone());
                }
            }
            if status.changed().await.is_err() {
                return Err("the link stopped".to_string());
            }
        }
    })
    .await;
    link.stop().await;
    match outcome {
        Ok(Ok(state)) => say(out, format!("The printer answers ({state:?}).")),
        Ok(Err(why)) => return Err(step(format!("{why}. Nothing was written"))),
        Err(_) => return Err(step("the printer sent no report in time. Nothing was written")),
    }

    // The camera port: A1/P1 send their camera there, X1/H2 serve RTSPS on 322 instead.
    let camera = match tlspin::probe(&o.host, o.camera_port, o.timeout.min(Duration::from_secs(5))).await {
        Ok(c) if c.fingerprint == probe.fingerprint => Some(None),
        Ok(c) => {
            say(out, format!("The camera port {} shows another certificate: SHA-256 fingerprint {}", o.camera_port, c.fingerprint));
            Some(Some(c.fingerprint))
        }
        Err(e) => {
            say(out, format!(
                "No camera on port {} ({e}): X1, H2 and P2S printers serve their camera as RTSPS on port 322, which printvigil does not read; use a local bridge's snapshot URL as camera = {{ kind = \"snapshot\", url = \"...\" }}.",
                o.camera_port
            ));
            None
        }
    };

    let entry = file.printer(&o.name, "bambu")?;
    entry["host"] = toml_edit::value(o.host.as_str());
    entry["serial"] = toml_edit::value(serial.as_str());
    entry["access_code"] = toml_edit::value(code.as_str());
    entry["fingerprint"] = toml_edit::value(probe.fingerprint.to_string());
    entry.remove("insecure_skip_verify");
    if o.port != crate::printer::bambu::DEFAULT_PORT || entry.contains_key("port") {
        entry["port"] = toml_edit::value(o.port as i64);
    }
    if o.camera_port != crate::printer::bambu::DEFAULT_CAMERA_PORT || entry.contains_key("camera_port") {
        entry["camera_port"] = toml_edit::value(o.camera_port as i64);
    }
    if let Some(other) = camera {
        match other {
            Some(f) => entry["camera_fingerprint"] = toml_edit::value(f.to_string()),
            None => {
                entry.remove("camera_fingerprint");
            }
        }
        if !entry.contains_key("camera") {
            let mut t = toml_edit::InlineTable::new();
            t.insert("kind", "bambu".into());
            entry["camera"] = toml_edit::value(t);
        }
    }
    file.save()?;
    say(out, format!("Wrote printer `{}` to {}.", o.name, path.display()));
    say(out, "The config loads; `printvigil check` tests the printer and its camera.".into());
    Ok(())
}
