//! Opening the serial port: exclusively, or not at all.
//!
//! Two hosts writing G-code to one printer is dangerous (interleaved moves, a heater turned
//! on by one and forgotten by the other), so the port is never shared. printvigil refuses a
//! port that another program holds, and holds its own port so that no other program gets it:
//!
//! - `TIOCEXCL` (serialport's `exclusive(true)` and `set_exclusive(true)`): further opens
//!   of the device fail with `EBUSY` (except for root).
//! - An exclusive `flock` on the device (also serialport's exclusive mode): pyserial's
//!   `exclusive=True` (OctoPrint, Klipper) takes the same lock, so either side sees the other,
//!   also as root.
//! - A UUCP lock file (`/run/lock/LCK..ttyUSB0`) with a live process id, left by programs
//!   such as minicom or screen, is honoured too.
//!
//! A port that does not exist (printer unplugged or off, a typo) gets an error listing the
//! ports present, their stable `/dev/serial/by-id/` names first.

use std::path::Path;
use std::time::Duration;

use serialport::{SerialPort, TTYPort};

/// How long one read waits for bytes: the link's loop wakes this often when the line is quiet.
pub const READ_TIMEOUT: Duration = Duration::from_millis(100);

/// Why the port could not be opened.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpenError {
    #[error("the serial port {port} does not exist (is the printer plugged in and switched on?); ports present: {candidates}")]
    Missing { port: String, candidates: String },
    #[error(
        "the serial port {port} is in use by another program{holder}; printvigil never shares a printer's port (two hosts sending G-code to one printer is dangerous): if OctoPrint drives this printer use kind = \"octoprint\", if Klipper does use kind = \"moonraker\", or stop that program"
    )]
    Busy { port: String, holder: String },
    #[error("cannot open the serial port {port}: {message}; check that printvigil's user is in the `dialout` group")]
    Denied { port: String, message: String },
    #[error("cannot open the serial port {port}: {message}")]
    Other { port: String, message: String },
}

/// Opens `path` at `baud`, exclusively; see the module documentation.
pub fn open(path: &str, baud: u32) -> Result<TTYPort, OpenError> {
    if !Path::new(path).exists() {
        return Err(OpenError::Missing { port: path.into(), candidates: candidates_text() });
    }
    if let Some(pid) = uucp_lock_holder(path) {
        return Err(OpenError::Busy { port: path.into(), holder: format!(" (process {pid}, lock file)") });
    }
    let result = serialport::new(path, baud).timeout(READ_TIMEOUT).exclusive(true).open_native();
    let mut port = result.map_err(|e| classify(path, &e))?;
    port.set_exclusive(true).map_err(|e| classify(path, &e))?;
    // Whatever the board said before we listened is of no use (and may be half a line).
    let _ = port.clear(serialport::ClearBuffer::Input);
    Ok(port)
}

fn classify(path: &str, e: &serialport::Error) -> OpenError {
    let text = e.to_string();
    let busy = text.contains("exclusive lock")
        || text.contains("EBUSY")
        || text.to_ascii_lowercase().contains("resource busy")
        || text.contains("Device or resource busy");
    if busy {
        return OpenError::Busy { port: path.into(), holder: String::new() };
    }
    if text.contains("EACCES") || text.to_ascii_lowercase().contains("permission denied") {
        return OpenError::Denied { port: path.into(), message: text };
    }
    if matches!(e.kind(), serialport::ErrorKind::NoDevice) && !Path::new(path).exists() {
        return OpenError::Missing { port: path.into(), candidates: candidates_text() };
    }
    OpenError::Other { port: path.into(), message: text }
}

/// The process id in a UUCP lock file for the device, if that process lives.
fn uucp_lock_holder(path: &str) -> Option<u32> {
    let real = std::fs::canonicalize(path).ok()?;
    let base = real.file_name()?.to_str()?.to_string();
    for dir in ["/run/lock", "/var/lock"] {
        let Ok(text) = std::fs::read_to_string(Path::new(dir).join(format!("LCK..{base}"))) else { continue };
        let Ok(pid) = text.trim().parse::<u32>() else { continue };
        if pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists() {
            return Some(pid);
        }
    }
    None
}

/// Serial ports present: `/dev/serial/by-id/` names (with their device) first, then the
/// ports the kernel lists.
pub fn candidates() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/dev/serial/by-id") {
        let mut ids: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        ids.sort();
        for p in ids.into_iter().take(16) {
            let target = std::fs::canonicalize(&p).map(|t| format!(" -> {}", t.display())).unwrap_or_default();
            out.push(format!("{}{target}", p.display()));
        }
    }
    if let Ok(ports) = serialport::available_ports() {
        for p in ports.into_iter().take(16) {
            if !out.iter().any(|o| o.ends_with(&format!("-> {}", p.port_name))) {
                out.push(p.port_name);
            }
        }
    }
    out
}

fn candidates_text() -> String {
    let c = candidates();
    if c.is_empty() { "none found".into() } else { c.join(", ") }
}
