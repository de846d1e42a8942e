//! What the Marlin link knows about the print, and the events it derives from the lines.
//!
//! Marlin has no notion of "a job": it reports the SD card's byte position
//! (`SD printing byte X/Y`, or `Not SD printing`) and, when asked (`M27 C`), the open file.
//! The tracker turns those reports into the link's events:
//!
//! - **Start.** A byte position while no print is known starts one; the file name comes from
//!   `File opened:` or from `M27 C` (the tracker asks for it, [`Tracker::wants_file`]). A print
//!   started from the printer's own screen is found the same way. The very first report of a
//!   new link that shows a print gives `Attached` (printvigil restarted mid-print), later ones
//!   `PrintStarted`.
//! - **Identity.** [`JobId`] is `marlin:<file>:<size>`: the same file and size, with the byte
//!   position moving on, is the same print after a daemon restart or a reconnect. (Marlin
//!   keeps no start time: a reprint of the same file that began while printvigil was down is
//!   taken for the print before it.)
//! - **Pause/resume.** `//action:paused`/`pause`, `busy: paused for user`, or our own `M25`
//!   acknowledged pause it; `//action:resume`/`resumed`, our `M24`, or the byte position
//!   moving on resume it.
//! - **End.** `Done printing file` completes it. `Not SD printing` is ambiguous (old Marlin
//!   says it while paused too), so the tracker asks `M27 C`: no open file ends the print
//!   (cancelled), an open file means paused. `kill() called` fails it, as does a board reset
//!   (`start`) mid-print.
//!
//! Pure state, no I/O: the session feeds it lines and sends what it asks for.

use std::collections::HashMap;

use super::line::{HostAction, Line};
use crate::printer::{JobId, JobOutcome, PrinterEvent, PrinterState, PrinterStatus, Temperature};

/// The print being reported.
#[derive(Debug, Clone, PartialEq)]
struct Print {
    job: JobId,
    file: String,
    size: u64,
    pos: u64,
    paused: bool,
    /// The first byte position reported after it paused: moving past it means resumed.
    /// (Not the position known when it paused: the print moved on since that report.)
    paused_at: Option<u64>,
    /// `Not SD printing` came while paused (old Marlin): any byte position means resumed.
    paused_quiet: bool,
}

/// A print seen in a report whose file name is not known yet.
#[derive(Debug, Clone, PartialEq)]
struct Pending {
    size: u64,
    pos: u64,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Tracker {
    /// `FIRMWARE_NAME` from `M115`.
    pub firmware: Option<String>,
    /// `Cap:` lines from `M115`.
    pub caps: HashMap<String, bool>,
    print: Option<Print>,
    pending: Option<Pending>,
    /// `Not SD printing` seen while a print is known: `M27 C` decides.
    confirm_end: bool,
    /// A cancel was sent or announced: the end is a cancel.
    cancelling: bool,
    /// The last `File opened:` (name, size).
    opened: Option<(String, Option<u64>)>,
    /// Whether any status report was handled since the link started.
    reported: bool,
    online: bool,
    halted: Option<String>,
    m73: Option<u8>,
    temperatures: Vec<Temperature>,
    last_file: Option<String>,
    message: Option<String>,
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::default()
    }

    pub fn cap(&self, name: &str) -> bool {
        self.caps.get(name).copied().unwrap_or(false)
    }

    /// Whether the tracker needs the open file's name (`M27 C`).
    pub fn wants_file(&self) -> bool {
        self.pending.is_some() || self.confirm_end
    }

    #[cfg(test)]
    fn printing(&self) -> bool {
        self.print.is_some()
    }

    pub fn halted(&self) -> bool {
        self.halted.is_some()
    }

    /// A session began (handshake done): the printer is online and not halted.
    pub fn on_online(&mut self) {
        self.online = true;
        self.halted = None;
        self.message = None;
        self.confirm_end = false;
        self.pending = None;
    }

    /// The connection is gone; what is known about the print is kept for the reconnect.
    pub fn on_offline(&mut self, reason: &str) {
        self.online = false;
        self.message = Some(reason.to_string());
    }

    /// New `M115` answer: forget the old capabilities.
    pub fn clear_caps(&mut self) {
        self.caps.clear();
        self.firmware = None;
    }

    /// Our pause command was acknowledged.
    pub fn on_paused_by_us(&mut self, out: &mut Vec<PrinterEvent>) {
        self.set_paused(true, out);
    }

    /// Our resume command was acknowledged.
    pub fn on_resumed_by_us(&mut self, out: &mut Vec<PrinterEvent>) {
        self.set_paused(false, out);
    }

    /// Our cancel was sent: the print's end is a cancel.
    pub fn on_cancel_sent(&mut self) {
        self.cancelling = true;
    }

    /// The cancel fallback (no `M524`) went through: the print is over.
    pub fn on_cancelled_by_fallback(&mut self, out: &mut Vec<PrinterEvent>) {
        self.finish(JobOutcome::Cancelled, out);
    }

    fn set_paused(&mut self, paused: bool, out: &mut Vec<PrinterEvent>) {
        let Some(p) = &mut self.print else { return };
        if p.paused == paused {
            return;
        }
        p.paused = paused;
        p.paused_at = None;
        p.paused_quiet = false;
        let job = Some(p.job.clone());
        out.push(if paused { PrinterEvent::Paused { job } } else { PrinterEvent::Resumed { job } });
    }

    fn finish(&mut self, outcome: JobOutcome, out: &mut Vec<PrinterEvent>) {
        self.confirm_end = false;
        self.cancelling = false;
        self.pending = None;
        self.opened = None;
        self.m73 = None;
        if let Some(p) = self.print.take() {
            out.push(PrinterEvent::Finished { job: p.job, file: p.file, outcome });
        }
    }

    fn begin(&mut self, file: String, size: u64, pos: u64, out: &mut Vec<PrinterEvent>) {
        let job = JobId(format!("marlin:{file}:{size}"));
        self.pending = None;
        self.cancelling = false;
        self.last_file = Some(file.clone());
        let attached = !self.reported;
        self.reported = true;
        out.push(if attached {
            PrinterEvent::Attached { job: job.clone(), file: file.clone(), paused: false }
        } else {
            PrinterEvent::PrintStarted { job: job.clone(), file: file.clone() }
        });
        self.print = Some(Print { job, file, size, pos, paused: false, paused_at: None, paused_quiet: false });
    }

    /// Handles one line; events it causes are appended to `out`.
    pub fn on_line(&mut self, line: &Line, out: &mut Vec<PrinterEvent>) {
        match line {
            Line::SdPrinting { pos, size } => self.on_position(*pos, *size, out),
            Line::NotSdPrinting => {
                match &mut self.print {
                    Some(p) if p.paused => p.paused_quiet = true,
                    Some(_) => self.confirm_end = true,
                    None => {}
                }
                self.pending = None;
                self.reported = true;
            }
            Line::DonePrinting => {
                if let Some(p) = self.pending.take() {
                    let file = self.opened.take().map(|o| o.0).unwrap_or_default();
                    self.begin(file, p.size, p.size, out);
                }
                self.finish(JobOutcome::Completed, out);
                self.reported = true;
            }
            Line::CurrentFile(name) => self.on_current_file(name.as_deref(), out),
            Line::FileOpened { name, size } => self.opened = Some((name.clone(), *size)),
            Line::Progress(p) => self.m73 = Some(*p),
            Line::Busy(what) if what.contains("paused for user") => self.set_paused(true, out),
            Line::Action(a) => match a {
                HostAction::Pause | HostAction::Paused => self.set_paused(true, out),
                HostAction::Resume | HostAction::Resumed => self.set_paused(false, out),
                HostAction::Cancel => self.cancelling = true,
                HostAction::Notification(t) => self.message = Some(t.clone()).filter(|t| !t.is_empty()),
                HostAction::Other(_) => {}
            },
            Line::Firmware(name) => self.firmware = Some(name.clone()),
            Line::Cap { name, enabled } if self.caps.len() < 256 => {
                self.caps.insert(name.clone(), *enabled);
            }
            Line::Temperatures(t) => self.temperatures = t.clone(),
            Line::Ok { temperatures, .. } if !temperatures.is_empty() => self.temperatures = temperatures.clone(),
            Line::Halted(msg) if self.halted.is_none() => {
                self.finish(JobOutcome::Failed(format!("the printer halted: {msg}")), out);
                self.halted = Some(msg.clone());
                out.push(PrinterEvent::Halted { message: msg.clone() });
            }
            Line::Start => {
                // The board was reset: a print it was running is gone.
                self.finish(JobOutcome::Failed("the printer restarted during the print".into()), out);
            }
            Line::Error(msg) => self.message = Some(msg.clone()),
            _ => {}
        }
    }

    fn on_position(&mut self, pos: u64, size: u64, out: &mut Vec<PrinterEvent>) {
        self.confirm_end = false;
        if let Some(p) = &mut self.print {
            if p.size == size && pos >= p.pos {
                p.pos = pos;
                let moved = p.paused && (p.paused_quiet || p.paused_at.is_some_and(|at| pos > at));
                if p.paused && p.paused_at.is_none() {
                    p.paused_at = Some(pos);
                }
                if moved {
                    self.set_paused(false, out);
                }
                self.reported = true;
                return;
            }
            // Another file, or the position went back: the print known ended unseen.
            self.finish(JobOutcome::Failed("the print stopped while printvigil was not looking".into()), out);
        }
        match &mut self.pending {
            Some(p) if p.size == size => p.pos = pos,
            _ => self.pending = Some(Pending { size, pos }),
        }
        // A `File opened:` with the same size names it right away.
        if let Some((name, osize)) = &self.opened
            && osize.is_none_or(|s| s == size)
        {
            let name = name.clone();
            self.begin(name, size, pos, out);
        }
    }

    fn on_current_file(&mut self, name: Option<&str>, out: &mut Vec<PrinterEvent>) {
        // `Current file: SHORT~1.GCO long name.gcode`: the long name when there is one.
        let file = name.map(|n| match n.split_once(' ') {
            Some((_, long)) if !long.trim().is_empty() => long.trim().to_string(),
            Some((short, _)) => short.to_string(),
            None => n.to_string(),
        });
        if self.confirm_end {
            self.confirm_end = false;
            match file {
                None => {
                    let outcome = match &self.print {
                        Some(p) if !self.cancelling && p.size > 0 && p.pos >= p.size => JobOutcome::Completed,
                        _ => JobOutcome::Cancelled,
                    };
                    self.finish(outcome, out);
                }
                // The file is still open: an old Marlin that says "Not SD printing" while paused.
                Some(_) => self.set_paused(true, out),
            }
            return;
        }
        if let Some(p) = self.pending.clone() {
            match file {
                Some(f) => self.begin(f, p.size, p.pos, out),
                None => self.pending = None,
            }
        }
    }

    /// The status to publish.
    pub fn status(&self) -> PrinterStatus {
        let state = if self.halted.is_some() {
            PrinterState::Error
        } else if !self.online {
            PrinterState::Offline
        } else if let Some(p) = &self.print {
            if p.paused { PrinterState::Paused } else { PrinterState::Printing }
        } else {
            // A print seen but not named yet (`M27 C` is on its way) is not reported as
            // printing: the status says Printing only with a job, as the events do.
            PrinterState::Idle
        };
        let progress = self.print.as_ref().map(|p| {
            match self.m73 {
                Some(m) => f64::from(m) / 100.0,
                None if p.size > 0 => (p.pos as f64 / p.size as f64).clamp(0.0, 1.0),
                None => 0.0,
            }
        });
        PrinterStatus {
            state,
            file: self.print.as_ref().map(|p| p.file.clone()).or_else(|| self.last_file.clone()),
            job: self.print.as_ref().map(|p| p.job.clone()),
            progress,
            temperatures: self.temperatures.clone(),
            message: self.halted.clone().or_else(|| self.message.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::printer::marlin::line::parse_line;

    fn feed(t: &mut Tracker, lines: &[&str]) -> Vec<PrinterEvent> {
        let mut out = Vec::new();
        for l in lines {
            t.on_line(&parse_line(l.as_bytes()), &mut out);
        }
        out
    }

    fn online() -> Tracker {
        let mut t = Tracker::new();
        t.on_online();
        t
    }

    #[test]
    fn a_print_from_the_screen_starts_and_completes() {
        let mut t = online();
        assert!(feed(&mut t, &["Not SD printing"]).is_empty());
        assert_eq!(t.status().state, PrinterState::Idle);
        assert!(feed(&mut t, &["SD printing byte 10/1000"]).is_empty());
        assert!(t.wants_file());
        let ev = feed(&mut t, &["Current file: CUBE~1.GCO cube.gcode"]);
        let job = JobId("marlin:cube.gcode:1000".into());
        assert_eq!(ev, vec![PrinterEvent::PrintStarted { job: job.clone(), file: "cube.gcode".into() }]);
        assert!(feed(&mut t, &["SD printing byte 500/1000"]).is_empty());
        assert_eq!(t.status().progress, Some(0.5));
        let ev = feed(&mut t, &["Done printing file", "Not SD printing"]);
        assert_eq!(ev, vec![PrinterEvent::Finished { job, file: "cube.gcode".into(), outcome: JobOutcome::Completed }]);
        assert_eq!(t.status().state, PrinterState::Idle);
    }

    #[test]
    fn the_first_report_attaches_and_the_same_print_continues_after_a_reconnect() {
        let mut t = online();
        feed(&mut t, &["SD printing byte 400/1000"]);
        let ev = feed(&mut t, &["Current file: cube.gco"]);
        assert!(matches!(&ev[..], [PrinterEvent::Attached { paused: false, .. }]), "{ev:?}");
        t.on_offline("unplugged");
        assert_eq!(t.status().state, PrinterState::Offline);
        t.on_online();
        assert!(feed(&mut t, &["SD printing byte 450/1000"]).is_empty(), "same print, no event");
        assert_eq!(t.status().state, PrinterState::Printing);
    }

    #[test]
    fn pause_resume_by_actions_and_position() {
        let mut t = online();
        feed(&mut t, &["Not SD printing", "File opened: a.gco Size: 100", "SD printing byte 1/100"]);
        assert!(t.printing());
        let ev = feed(&mut t, &["//action:paused"]);
        assert!(matches!(&ev[..], [PrinterEvent::Paused { .. }]));
        // The first report after the pause may be further on (it moved since the last one).
        assert!(feed(&mut t, &["SD printing byte 3/100", "//action:paused", "SD printing byte 3/100"]).is_empty());
        assert_eq!(t.status().state, PrinterState::Paused);
        let ev = feed(&mut t, &["SD printing byte 5/100"]);
        assert!(matches!(&ev[..], [PrinterEvent::Resumed { .. }]), "moving on = resumed");
    }

    #[test]
    fn not_sd_printing_is_confirmed_by_the_file() {
        let mut t = online();
        feed(&mut t, &["Not SD printing", "SD printing byte 1/100", "Current file: a.gco"]);
        // Old Marlin: "Not SD printing" while paused, the file still open.
        assert!(feed(&mut t, &["Not SD printing"]).is_empty());
        assert!(t.wants_file());
        let ev = feed(&mut t, &["Current file: a.gco"]);
        assert!(matches!(&ev[..], [PrinterEvent::Paused { .. }]));
        // Paused: "Not SD printing" again is no end.
        assert!(feed(&mut t, &["Not SD printing"]).is_empty());
        feed(&mut t, &["SD printing byte 3/100"]);
        feed(&mut t, &["Not SD printing"]);
        let ev = feed(&mut t, &["Current file: (no file)"]);
        assert!(
            matches!(&ev[..], [PrinterEvent::Finished { outcome: JobOutcome::Cancelled, .. }]),
            "{ev:?}"
        );
    }

    #[test]
    fn halt_fails_the_print_once() {
        let mut t = online();
        feed(&mut t, &["Not SD printing", "SD printing byte 1/100", "Current file: a.gco"]);
        let ev = feed(&mut t, &["Error:Printer halted. kill() called!", "Error:Printer halted. kill() called!"]);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(matches!(&ev[0], PrinterEvent::Finished { outcome: JobOutcome::Failed(_), .. }));
        assert!(matches!(&ev[1], PrinterEvent::Halted { .. }));
        assert_eq!(t.status().state, PrinterState::Error);
        t.on_online();
        assert_eq!(t.status().state, PrinterState::Idle);
    }

    #[test]
    fn another_file_ends_the_old_print() {
        let mut t = online();
        feed(&mut t, &["Not SD printing", "SD printing byte 50/100", "Current file: a.gco"]);
        let ev = feed(&mut t, &["SD printing byte 2/300", "Current file: b.gco"]);
        assert!(matches!(&ev[..], [PrinterEvent::Finished { .. }, PrinterEvent::PrintStarted { .. }]), "{ev:?}");
    }
}
