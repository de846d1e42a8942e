//! Marlin's side of the conversation: one line of its output, understood.
//!
//! Marlin answers every command with `ok` and prints everything else as plain text lines:
//! status reports (`SD printing byte 1200/50000`, `Not SD printing`, `Done printing file`),
//! temperatures (` T:210.0 /210.0 B:60.0 /60.0 @:64 B@:30`), the answer to `M115`
//! (`FIRMWARE_NAME:Marlin 2.1.2 ...` and `Cap:AUTOREPORT_TEMP:1` lines), host action
//! commands (`//action:pause`), keep-alives (`echo:busy: processing`), requests to send a
//! line again (`Resend: 12`) and errors (`Error:...`, `Error:Printer halted. kill() called!`).
//!
//! [`parse_line`] turns one raw line into a [`Line`]. It is pure (no I/O, no state), so it is
//! unit-tested here and fuzzed from outside (it is `pub`): whatever bytes arrive, it returns a
//! `Line` and never panics. Lines longer than [`MAX_LINE`] are cut off by the reader
//! ([`LineBuffer`]) and reported as [`Line::Garbage`]: no single line can make the link use
//! unbounded memory.

use crate::printer::Temperature;

/// The longest line kept; a longer one is garbage (Marlin's own lines are < 200 bytes).
pub const MAX_LINE: usize = 1024;

/// A host action command (`//action:<name> ...`) sent by the firmware.
#[derive(Debug, Clone, PartialEq)]
pub enum HostAction {
    /// The firmware asks the host to pause (or tells it a pause began).
    Pause,
    /// The firmware reports the print paused (e.g. from its screen).
    Paused,
    /// The firmware asks the host to resume / reports it resumed.
    Resume,
    /// The firmware reports the print resumed.
    Resumed,
    /// The firmware asks the host to cancel / reports it cancelled.
    Cancel,
    /// `//action:notification <text>`: a message for the user.
    Notification(String),
    /// Any other action (`prompt_begin`, `start`, ...), kept as text.
    Other(String),
}

/// One line of Marlin's output.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// `ok`, maybe with the line number it acknowledges (`ok N12 P15 B3`) and temperatures
    /// (the answer to `M105`: `ok T:20.0 /0.0 ...`).
    Ok { line: Option<u64>, temperatures: Vec<Temperature> },
    /// `Resend: N` (or `rs N`): send line `N` again.
    Resend(u64),
    /// `SD printing byte X/Y`.
    SdPrinting { pos: u64, size: u64 },
    /// `Not SD printing`.
    NotSdPrinting,
    /// `Done printing file`.
    DonePrinting,
    /// `Current file: NAME LONG NAME` (the answer to `M27 C`); `None` for `(no file)`.
    CurrentFile(Option<String>),
    /// `File opened: NAME Size: N` (after `M23`, or a print chosen on the printer's screen).
    FileOpened { name: String, size: Option<u64> },
    /// Progress in percent (`M73` echoes: `echo: M73 Progress: 42%`, Prusa's `Percent done: 42`).
    Progress(u8),
    /// `echo:busy: processing` / `busy: paused for user`: the firmware is alive but busy.
    Busy(String),
    /// `//action:...`.
    Action(HostAction),
    /// `FIRMWARE_NAME:...` from `M115`: the firmware name, up to `SOURCE_CODE_URL` etc.
    Firmware(String),
    /// `Cap:NAME:0|1` from `M115`.
    Cap { name: String, enabled: bool },
    /// A temperature report (`T:20.0 /0.0 B:...`, also auto-reported after `M155`).
    Temperatures(Vec<Temperature>),
    /// `start`: the boot banner's first line (the board was reset).
    Start,
    /// `echo:Unknown command: "M524"`: the firmware lacks the command.
    UnknownCommand(String),
    /// An `Error:` about the line protocol (checksum, line number); a `Resend` follows.
    LineError(String),
    /// `Error:Printer halted. kill() called!` or any `kill() called`: the firmware stopped.
    Halted(String),
    /// Any other `Error:` line.
    Error(String),
    /// Other text (`echo:...`, settings dumps, `wait`): nothing the link acts on.
    Other(String),
    /// Longer than [`MAX_LINE`], or not text: dropped.
    Garbage,
}

/// Parses one line (without its line ending). Never panics.
pub fn parse_line(raw: &[u8]) -> Line {
    if raw.len() > MAX_LINE {
        return Line::Garbage;
    }
    let text = String::from_utf8_lossy(raw);
    let controls = text.chars().filter(|c| c.is_control() && *c != '\t').count();
    if controls > 0 && controls * 4 >= text.chars().count().max(1) {
        return Line::Garbage;
    }
    let t = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    if t.is_empty() {
        return Line::Other(String::new());
    }
    if t == "ok" || t.starts_with("ok ") {
        return parse_ok(&t[2..]);
    }
    if let Some(rest) = strip_prefix_ci(t, "resend:").or_else(|| t.strip_prefix("rs ")) {
        let n = rest.trim().trim_start_matches('N');
        return match n.parse() {
            Ok(n) => Line::Resend(n),
            Err(_) => Line::Other(t.into()),
        };
    }
    if let Some(rest) = t.strip_prefix("//action:") {
        return Line::Action(parse_action(rest.trim()));
    }
    if t.contains("kill() called") || t.contains("Printer halted") {
        return Line::Halted(t.trim_start_matches("Error:").trim().into());
    }
    if let Some(rest) = strip_prefix_ci(t, "error:") {
        let rest = rest.trim();
        let lower = rest.to_ascii_lowercase();
        if lower.contains("checksum") || lower.contains("line number") || lower.contains("last line") {
            return Line::LineError(rest.into());
        }
        return Line::Error(rest.into());
    }
    // `echo:` prefixed lines carry several of the reports on some firmware.
    let body = t.strip_prefix("echo:").map(str::trim_start).unwrap_or(t);
    if let Some(rest) = body.strip_prefix("SD printing byte ") {
        if let Some((a, b)) = rest.trim().split_once('/')
            && let (Ok(pos), Ok(size)) = (a.trim().parse(), b.trim().parse())
        {
            return Line::SdPrinting { pos, size };
        }
        return Line::Other(t.into());
    }
    if body.starts_with("Not SD printing") {
        return Line::NotSdPrinting;
    }
    if body.starts_with("Done printing file") {
        return Line::DonePrinting;
    }
    if let Some(rest) = body.strip_prefix("Current file:") {
        let name = rest.trim();
        if name.is_empty() || name == "(no file)" {
            return Line::CurrentFile(None);
        }
        return Line::CurrentFile(Some(name.into()));
    }
    if let Some(rest) = body.strip_prefix("File opened:") {
        let (name, size) = match rest.rsplit_once(" Size:") {
            Some((n, s)) => (n.trim(), s.trim().parse().ok()),
            None => (rest.trim(), None),
        };
        return Line::FileOpened { name: name.into(), size };
    }
    if let Some(rest) = body.strip_prefix("busy:") {
        return Line::Busy(rest.trim().into());
    }
    if let Some(rest) = body.strip_prefix("Unknown command:") {
        return Line::UnknownCommand(rest.trim().trim_matches('"').into());
    }
    if let Some(rest) = t.strip_prefix("FIRMWARE_NAME:") {
        let name = rest.split(" SOURCE_CODE_URL:").next().unwrap_or(rest);
        let name = name.split(" PROTOCOL_VERSION:").next().unwrap_or(name);
        return Line::Firmware(name.trim().into());
    }
    if let Some(rest) = t.strip_prefix("Cap:") {
        if let Some((name, v)) = rest.rsplit_once(':') {
            return Line::Cap { name: name.trim().into(), enabled: v.trim() == "1" };
        }
        return Line::Other(t.into());
    }
    if t == "start" {
        return Line::Start;
    }
    if let Some(p) = parse_progress(body) {
        return Line::Progress(p);
    }
    let temps = parse_temperatures(t);
    if !temps.is_empty() {
        return Line::Temperatures(temps);
    }
    Line::Other(t.into())
}

fn strip_prefix_ci<'a>(t: &'a str, prefix: &str) -> Option<&'a str> {
    let head = t.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &t[prefix.len()..])
}

fn parse_ok(rest: &str) -> Line {
    let mut line = None;
    for tok in rest.split_whitespace() {
        if let Some(n) = tok.strip_prefix('N')
            && let Ok(n) = n.parse()
        {
            line = Some(n);
        }
    }
    Line::Ok { line, temperatures: parse_temperatures(rest) }
}

fn parse_action(rest: &str) -> HostAction {
    let (name, arg) = match rest.split_once(char::is_whitespace) {
        Some((n, a)) => (n, a.trim()),
        None => (rest, ""),
    };
    match name {
        "pause" => HostAction::Pause,
        "paused" => HostAction::Paused,
        "resume" => HostAction::Resume,
        "resumed" => HostAction::Resumed,
        "cancel" => HostAction::Cancel,
        "notification" => HostAction::Notification(arg.into()),
        _ => HostAction::Other(rest.into()),
    }
}

fn parse_progress(body: &str) -> Option<u8> {
    let digits = |s: &str| -> Option<u8> {
        let d: String = s.trim().chars().take_while(char::is_ascii_digit).collect();
        d.parse::<u32>().ok().filter(|p| *p <= 100).map(|p| p as u8)
    };
    if let Some(i) = body.find("Progress:") {
        return digits(&body[i + "Progress:".len()..]);
    }
    if let Some(i) = body.find("Percent done:") {
        return digits(&body[i + "Percent done:".len()..]);
    }
    None
}

/// Temperatures from a report: `T:210.0 /210.0 B:60.0 /60.0 T0:... @:64 B@:30`.
/// Pairs without a `/target` part and power figures (`@:`) are skipped.
pub fn parse_temperatures(s: &str) -> Vec<Temperature> {
    let mut out = Vec::new();
    let toks: Vec<&str> = s.split_whitespace().collect();
    let mut i = 0;
    while i < toks.len() {
        let tok = toks[i];
        i += 1;
        let Some((key, val)) = tok.split_once(':') else { continue };
        if key.is_empty() || key.contains('@') || key.len() > 4 {
            continue;
        }
        let name = match key {
            "T" | "T0" => "extruder".to_string(),
            "B" => "heater_bed".to_string(),
            "C" => "chamber".to_string(),
            k if k.starts_with('T') && k[1..].chars().all(|c| c.is_ascii_digit()) => format!("extruder{}", &k[1..]),
            _ => continue,
        };
        let Ok(actual) = val.parse::<f64>() else { continue };
        // The target: `/210.0` as the next token, or `210.0/210.0` glued.
        let target = if let Some(t) = toks.get(i).and_then(|t| t.strip_prefix('/')) {
            i += 1;
            t.parse::<f64>().ok()
        } else {
            None
        };
        let Some(target) = target else { continue };
        if !(actual.is_finite() && target.is_finite()) {
            continue;
        }
        if out.iter().any(|t: &Temperature| t.name == name) {
            continue; // T and T0 both name the first extruder
        }
        out.push(Temperature { name, actual, target });
    }
    out
}

/// Splits a byte stream into lines, each at most [`MAX_LINE`] bytes; the rest of a longer
/// line is skipped up to its end and reported once as garbage.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
    overflow: bool,
}

impl LineBuffer {
    /// Adds bytes; calls `f` for each complete line (without `\r`/`\n`).
    pub fn push(&mut self, bytes: &[u8], mut f: impl FnMut(Line)) {
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                if self.overflow {
                    self.overflow = false;
                    f(Line::Garbage);
                } else if !self.buf.is_empty() {
                    f(parse_line(&self.buf));
                }
                self.buf.clear();
            } else if !self.overflow {
                if self.buf.len() >= MAX_LINE {
                    self.overflow = true;
                    self.buf.clear();
                } else {
                    self.buf.push(b);
                }
            }
        }
    }

    /// Forgets a partial line (after a reconnect).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.overflow = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Line {
        parse_line(s.as_bytes())
    }

    #[test]
    fn oks() {
        assert_eq!(p("ok"), Line::Ok { line: None, temperatures: vec![] });
        assert_eq!(p("ok N12 P15 B3"), Line::Ok { line: Some(12), temperatures: vec![] });
        match p("ok T:20.5 /0.0 B:21.0 /60.0 @:0 B@:0") {
            Line::Ok { temperatures, .. } => {
                assert_eq!(temperatures.len(), 2);
                assert_eq!(temperatures[1].name, "heater_bed");
                assert_eq!(temperatures[1].target, 60.0);
            }
            other => panic!("{other:?}"),
        }
        // "okay" is not an ok.
        assert!(!matches!(p("okay"), Line::Ok { .. }));
    }

    #[test]
    fn protocol_lines() {
        assert_eq!(p("Resend: 7"), Line::Resend(7));
        assert_eq!(p("Resend:7"), Line::Resend(7));
        assert_eq!(p("rs N7"), Line::Resend(7));
        assert!(matches!(p("Error:checksum mismatch, Last Line: 6"), Line::LineError(_)));
        assert!(matches!(p("Error:Line Number is not Last Line Number+1, Last Line: 6"), Line::LineError(_)));
        assert_eq!(p("Error:Printer halted. kill() called!"), Line::Halted("Printer halted. kill() called!".into()));
        assert_eq!(p("Error:Heating failed, system stopped! Heater_ID: 0"), Line::Error("Heating failed, system stopped! Heater_ID: 0".into()));
        assert_eq!(p("echo:Unknown command: \"M524\""), Line::UnknownCommand("M524".into()));
        assert_eq!(p("start"), Line::Start);
        assert_eq!(p("echo:busy: processing"), Line::Busy("processing".into()));
        assert_eq!(p("busy: paused for user"), Line::Busy("paused for user".into()));
    }

    #[test]
    fn sd_status() {
        assert_eq!(p("SD printing byte 1200/50000"), Line::SdPrinting { pos: 1200, size: 50000 });
        assert_eq!(p("Not SD printing"), Line::NotSdPrinting);
        assert_eq!(p("Done printing file"), Line::DonePrinting);
        assert_eq!(p("Current file: CUBE~1.GCO cube big.gcode"), Line::CurrentFile(Some("CUBE~1.GCO cube big.gcode".into())));
        assert_eq!(p("Current file: (no file)"), Line::CurrentFile(None));
        assert_eq!(p("File opened: cube.gco Size: 5000"), Line::FileOpened { name: "cube.gco".into(), size: Some(5000) });
        assert_eq!(p("echo: M73 Progress: 42%"), Line::Progress(42));
        assert_eq!(p("NORMAL MODE: Percent done: 7; print time remaining in mins: 30"), Line::Progress(7));
        assert!(matches!(p("SD printing byte x/y"), Line::Other(_)));
    }

    #[test]
    fn m115_and_actions() {
        assert_eq!(
            p("FIRMWARE_NAME:Marlin 2.1.2.1 (Jun  1 2024) SOURCE_CODE_URL:github.com/MarlinFirmware/Marlin PROTOCOL_VERSION:1.0"),
            Line::Firmware("Marlin 2.1.2.1 (Jun  1 2024)".into())
        );
        assert_eq!(p("Cap:AUTOREPORT_SD_STATUS:1"), Line::Cap { name: "AUTOREPORT_SD_STATUS".into(), enabled: true });
        assert_eq!(p("Cap:EMERGENCY_PARSER:0"), Line::Cap { name: "EMERGENCY_PARSER".into(), enabled: false });
        assert_eq!(p("//action:pause"), Line::Action(HostAction::Pause));
        assert_eq!(p("//action:paused"), Line::Action(HostAction::Paused));
        assert_eq!(p("//action:resume"), Line::Action(HostAction::Resume));
        assert_eq!(p("//action:cancel"), Line::Action(HostAction::Cancel));
        assert_eq!(p("//action:notification Heating..."), Line::Action(HostAction::Notification("Heating...".into())));
        assert_eq!(p("//action:prompt_end"), Line::Action(HostAction::Other("prompt_end".into())));
    }

    #[test]
    fn temperatures() {
        let t = parse_temperatures(" T:210.0 /210.0 B:60.1 /60.0 T0:210.0 /210.0 T1:25.0 /0.0 @:64 B@:30");
        let names: Vec<_> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["extruder", "heater_bed", "extruder1"]);
        assert!(parse_temperatures("T:nan /0").is_empty());
        assert!(parse_temperatures("X:1 Y:2 Z:3 E:0 Count X:0").is_empty());
    }

    #[test]
    fn garbage_never_panics() {
        assert_eq!(parse_line(&[0xff, 0x00, 0x01, 0x02]), Line::Garbage);
        assert_eq!(parse_line(&vec![b'a'; MAX_LINE + 1]), Line::Garbage);
        // Every short byte string, and prefixes of real lines cut anywhere.
        for a in 0..=255u8 {
            for b in [0u8, b':', b'/', b' ', 0xc3, b'9'] {
                let _ = parse_line(&[a, b]);
                let _ = parse_line(&[b'S', a, b]);
            }
        }
        for real in ["SD printing byte 1200/50000", "ok N12 T:20.0 /0.0", "Resend: 7", "Cap:X:1", "File opened: a Size: 9"] {
            for i in 0..real.len() {
                let _ = parse_line(&real.as_bytes()[..i]);
                let _ = parse_line(&real.as_bytes()[i..]);
            }
        }
        assert_eq!(p("Resend: 99999999999999999999999"), Line::Other("Resend: 99999999999999999999999".into()));
    }

    #[test]
    fn line_buffer_caps_long_lines() {
        let mut lb = LineBuffer::default();
        let mut got = Vec::new();
        let mut long = vec![b'x'; MAX_LINE * 3];
        long.extend_from_slice(b"\nok\r\nSD printing byte 1/2\n");
        // Fed in odd chunks.
        for chunk in long.chunks(7) {
            lb.push(chunk, |l| got.push(l));
        }
        assert_eq!(got, vec![Line::Garbage, Line::Ok { line: None, temperatures: vec![] }, Line::SdPrinting { pos: 1, size: 2 }]);
        assert!(lb.buf.capacity() <= MAX_LINE * 2);
    }
}
