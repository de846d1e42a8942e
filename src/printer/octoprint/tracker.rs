//! OctoPrint's state, turned into the link's events, exactly once each.
//!
//! A [`Snapshot`] is one full view of the printer: the state text and flags, the job's
//! file and origin, `progress.printTime`, temperatures. It comes from REST (`/api/job` +
//! `/api/printer`) or from the push socket's `current` message, which carries the same
//! fields. The [`Tracker`] lives as long as the link and compares each snapshot with what
//! it reported before:
//!
//! - **Identity.** OctoPrint has no job id. A print is its file (origin and path) plus an
//!   anchor that a new print of the same file changes and nothing else does:
//!   - for files in OctoPrint's storage (`local`), the file's upload date and the number
//!     of prints OctoPrint recorded for it (`prints.success + prints.failure` from
//!     `/api/files/local/<path>`; OctoPrint records every ended print, also cancelled
//!     ones): `local:path@<date>#<count>`. It does not move with time, pauses or
//!     restarts, so a new link (printvigil restarted) derives the same id.
//!   - otherwise (SD card, or the metadata cannot be read), the start time `now -
//!     printTime` rounded to [`START_ROUNDING`] seconds: `sdcard:path@<start>`. Weaker:
//!     `printTime` is whole seconds and leaves paused time out, so the derived start
//!     moves by the length of each pause and can fall either side of a rounding boundary.
//!
//!   The anchor is read once per print ([`Tracker::new_print`] says when); within the
//!   link's life the print is followed by file, origin and the run of `printTime` (it only
//!   drops at a resume or a new print), never re-derived. A print whose id equals that of
//!   one that ended before (e.g. OctoPrint crashed before recording the end) gets a `#2`
//!   (`#3`, ...) suffix.
//! - **Transitional states.** `Pausing` and `Finishing` are still printing, `Resuming` is
//!   still paused, `Cancelling` keeps what it was: pauses and resumes are edges of the
//!   reported [`PrinterState`], a print ends when OctoPrint no longer reports an active job.
//! - **First snapshot** of a link: a running print is `Attached`, not started.
//! - **How it ended** comes from the push socket's `PrintDone` / `PrintFailed` /
//!   `PrintCancelled` events ([`Tracker::hint`]); without them (REST only), from the
//!   last state seen (`Cancelling`, completion 100 %).
//! - **The printer** disconnected from OctoPrint (409, `Offline`, `Closed`) ends a
//!   running print (OctoPrint streamed it; it stopped). OctoPrint itself unreachable does
//!   not: the print is followed again when OctoPrint answers.

use serde_json::Value;

use crate::printer::{JobId, JobOutcome, PrinterEvent, PrinterState, PrinterStatus, Temperature};

/// The derived start time is rounded to this many seconds (`printTime` is whole seconds).
pub const START_ROUNDING: f64 = 30.0;
/// `printTime` may go back by this much (seconds) through jitter without meaning a new print.
const PRINT_TIME_SLACK: f64 = 5.0;
/// A print that started this many seconds before the last print ended is that print.
const TAIL_SLACK: f64 = 2.0;

/// OctoPrint's printer state, from its flags (the text is for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// No printer connected to OctoPrint (`Offline`, `Closed`, `/api/printer` 409).
    Disconnected,
    Error,
    Idle,
    Printing,
    Pausing,
    Paused,
    Resuming,
    Cancelling,
    Finishing,
}

impl Phase {
    fn active(self) -> bool {
        matches!(
            self,
            Phase::Printing | Phase::Pausing | Phase::Paused | Phase::Resuming | Phase::Cancelling | Phase::Finishing
        )
    }
}

/// One full view of the printer.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Snapshot {
    pub(super) phase: Phase,
    /// OctoPrint's state text (`Printing`, `Offline after error`, ...).
    pub(super) text: String,
    pub(super) error: Option<String>,
    pub(super) path: Option<String>,
    pub(super) origin: Option<String>,
    pub(super) print_time: Option<f64>,
    /// 0.0 ..= 1.0.
    pub(super) completion: Option<f64>,
    pub(super) temperatures: Vec<Temperature>,
}

fn flag(flags: &Value, name: &str) -> bool {
    flags.get(name).and_then(Value::as_bool).unwrap_or(false)
}

/// The phase from OctoPrint's state flags, or from its text when there are none.
pub(super) fn phase_of(text: &str, flags: Option<&Value>) -> Phase {
    if let Some(f) = flags.filter(|f| f.is_object()) {
        return if flag(f, "cancelling") {
            Phase::Cancelling
        } else if flag(f, "pausing") {
            Phase::Pausing
        } else if flag(f, "resuming") {
            Phase::Resuming
        } else if flag(f, "finishing") {
            Phase::Finishing
        } else if flag(f, "paused") {
            Phase::Paused
        } else if flag(f, "printing") {
            Phase::Printing
        } else if flag(f, "error") {
            Phase::Error
        } else if flag(f, "operational") {
            Phase::Idle
        } else {
            Phase::Disconnected
        };
    }
    let t = text.to_ascii_lowercase();
    match t.as_str() {
        "printing" | "printing from sd" | "starting" | "starting print from sd" | "sending file to sd" => {
            Phase::Printing
        }
        "pausing" => Phase::Pausing,
        "paused" => Phase::Paused,
        "resuming" => Phase::Resuming,
        "cancelling" => Phase::Cancelling,
        "finishing" => Phase::Finishing,
        "operational" => Phase::Idle,
        _ if t.contains("error") => Phase::Error,
        _ => Phase::Disconnected,
    }
}

impl Snapshot {
    /// From the `current` message of the push socket, or from `/api/job` with `state`
    /// (the `/api/printer` answer's `state` object: text and flags) and `temps` (its
    /// `temperature` object) merged in.
    pub(super) fn parse(job: &Value, state: Option<&Value>, temps: Option<&Value>) -> Snapshot {
        let text = state
            .and_then(|s| s.get("text"))
            .or_else(|| job.get("state"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let flags = state.and_then(|s| s.get("flags"));
        let phase = phase_of(&text, flags);
        let error = state
            .and_then(|s| s.get("error"))
            .or_else(|| job.get("error"))
            .and_then(Value::as_str)
            .filter(|e| !e.trim().is_empty())
            .map(|e| e.chars().take(300).collect());
        let file = job.get("job").and_then(|j| j.get("file"));
        let s = |k: &str| {
            file.and_then(|f| f.get(k)).and_then(Value::as_str).filter(|v| !v.is_empty()).map(str::to_owned)
        };
        let progress = job.get("progress");
        let num = |k: &str| progress.and_then(|p| p.get(k)).and_then(Value::as_f64);
        Snapshot {
            phase,
            text,
            error,
            path: s("path").or_else(|| s("name")),
            origin: s("origin"),
            print_time: num("printTime").filter(|t| t.is_finite() && *t >= 0.0),
            completion: num("completion").filter(|c| c.is_finite()).map(|c| (c / 100.0).clamp(0.0, 1.0)),
            temperatures: temps.map(parse_temps).unwrap_or_default(),
        }
    }
}

/// `{"tool0": {"actual": 200.1, "target": 200}, "bed": {...}}` (REST), or the last entry of
/// the push socket's `temps` list (which also carries `time`).
pub(super) fn parse_temps(v: &Value) -> Vec<Temperature> {
    let v = match v.as_array() {
        Some(a) => match a.last() {
            Some(last) => last,
            None => return Vec::new(),
        },
        None => v,
    };
    let Some(map) = v.as_object() else { return Vec::new() };
    map.iter()
        .take(16)
        .filter_map(|(name, t)| {
            let actual = t.get("actual")?.as_f64()?;
            let target = t.get("target").and_then(Value::as_f64).unwrap_or(0.0);
            let name = match name.as_str() {
                "tool0" => "extruder".to_string(),
                "bed" => "heater_bed".to_string(),
                other => other.to_string(),
            };
            Some(Temperature { name, actual, target })
        })
        .collect()
}

/// The print the link reported as started (or attached) and not yet as finished.
#[derive(Debug, Clone)]
struct Current {
    id: JobId,
    path: String,
    origin: String,
    last_print_time: f64,
    completion: Option<f64>,
    /// The last phase seen for it.
    phase: Phase,
    /// OctoPrint was seen cancelling it (views can arrive out of order: REST and push).
    cancelling: bool,
}

/// The last availability reported, to report each change once.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Availability {
    Online,
    Offline(String),
    Halted(String),
}

/// What the link remembers; see the module documentation.
#[derive(Default)]
pub(super) struct Tracker {
    current: Option<Current>,
    /// The first snapshot was handled (later prints are news, not attachments).
    synced: bool,
    reported_state: Option<PrinterState>,
    availability: Option<Availability>,
    /// How the print at this path ended, from a push event (path, outcome).
    hint: Option<(String, JobOutcome)>,
    last_file: Option<String>,
    /// The ids of the last prints that ended, so a print of the same file started within
    /// the rounding of the previous start still gets an id of its own.
    ended: std::collections::VecDeque<JobId>,
    /// The last print that ended: path, origin and when (Unix seconds), to tell a late
    /// snapshot of it from a new print of the same file.
    last_end: Option<(String, String, f64)>,
}

/// Ended ids remembered (a few are enough: they only matter within [`START_ROUNDING`]).
const ENDED_KEPT: usize = 8;

/// The id of a print of `path` from `origin`: with the file's `anchor` (upload date and
/// print count) when there is one, else from the start time derived from `print_time`
/// seconds printed at `now` (Unix seconds).
pub(super) fn job_id(origin: &str, path: &str, anchor: Option<&str>, print_time: f64, now: f64) -> JobId {
    if let Some(a) = anchor {
        return JobId(format!("{origin}:{path}@{a}"));
    }
    // printTime is truncated to whole seconds: the true start lies in the second before.
    let start = now - print_time - 0.5;
    let start = (start / START_ROUNDING).round() * START_ROUNDING;
    JobId(format!("{origin}:{path}@{start:.0}"))
}

impl Tracker {
    /// An event from the push socket (`{"event": {"type", "payload"}}`) that says how a
    /// print ended; the end itself is reported from the state.
    pub(super) fn hint(&mut self, kind: &str, payload: &Value) {
        let path = payload
            .get("path")
            .or_else(|| payload.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let outcome = match kind {
            "PrintDone" => JobOutcome::Completed,
            "PrintCancelled" => JobOutcome::Cancelled,
            "PrintFailed" => match payload.get("reason").and_then(Value::as_str) {
                Some("cancelled") => JobOutcome::Cancelled,
                _ => JobOutcome::Failed(
                    payload
                        .get("error")
                        .and_then(Value::as_str)
                        .map(|e| format!("OctoPrint reports the print failed: {}", e.chars().take(200).collect::<String>()))
                        .unwrap_or_else(|| "OctoPrint reports the print failed".into()),
                ),
            },
            _ => return,
        };
        // A `PrintCancelled` after a `PrintFailed` with reason "cancelled" says the same.
        self.hint = Some((path, outcome));
    }

    /// OctoPrint cannot be reached (or refuses the key): the print, if any, is kept.
    pub(super) fn unreachable(&mut self, reason: &str, out: &mut Vec<PrinterEvent>, status: &mut PrinterStatus) {
        self.set_availability(Availability::Offline(reason.to_string()), out);
        status.state = PrinterState::Offline;
        status.message = Some(reason.to_string());
        self.reported_state = Some(PrinterState::Offline);
    }

    fn set_availability(&mut self, a: Availability, out: &mut Vec<PrinterEvent>) {
        let same = match (&self.availability, &a) {
            (Some(Availability::Offline(_)), Availability::Offline(_)) => true,
            (Some(Availability::Halted(_)), Availability::Halted(_)) => true,
            (Some(x), y) => x == y,
            (None, _) => false,
        };
        if same {
            return;
        }
        match &a {
            Availability::Online => out.push(PrinterEvent::Online),
            Availability::Offline(r) => out.push(PrinterEvent::Offline { reason: r.clone() }),
            Availability::Halted(m) => out.push(PrinterEvent::Halted { message: m.clone() }),
        }
        self.availability = Some(a);
    }

    /// Handles one snapshot taken at `now` (Unix seconds): appends the events it means to
    /// `out` and updates `status`.
    /// `anchor`: the file's identity anchor when [`Tracker::new_print`] said one is needed
    /// (see the module documentation). `fresh`: read just now over REST; a push message
    /// may be older than the last REST read (OctoPrint throttles them), so a push view
    /// that would end the current print is not trusted: the answer is `true`, "read the
    /// state over REST now", and nothing changes.
    pub(super) fn observe(
        &mut self,
        snap: &Snapshot,
        now: f64,
        anchor: Option<&str>,
        fresh: bool,
        out: &mut Vec<PrinterEvent>,
        status: &mut PrinterStatus,
    ) -> bool {
        if !fresh && self.current.is_some() && !snap.phase.active() {
            return true;
        }
        let first = !self.synced;
        self.synced = true;
        match snap.phase {
            Phase::Disconnected => {
                let reason = format!(
                    "the printer is not connected to OctoPrint (OctoPrint reports `{}`); connect it in OctoPrint's Connection panel",
                    if snap.text.is_empty() { "Offline" } else { &snap.text }
                );
                self.end(
                    JobOutcome::Failed("the printer disconnected from OctoPrint during the print".into()),
                    now,
                    out,
                );
                self.set_availability(Availability::Offline(reason.clone()), out);
                self.report_state(PrinterState::Offline, out);
                status.message = Some(reason);
            }
            Phase::Error => {
                let msg = snap.error.clone().unwrap_or_else(|| format!("OctoPrint reports `{}`", snap.text));
                self.end(JobOutcome::Failed(format!("the printer stopped on an error: {msg}")), now, out);
                self.set_availability(Availability::Halted(msg.clone()), out);
                self.report_state(PrinterState::Error, out);
                status.message = Some(msg);
            }
            phase if phase.active() && self.is_tail(snap, now) => {
                // A late view of the print that just ended (OctoPrint sends its state a
                // little after the end event): it started before that end, so it is not
                // a new print.
                self.set_availability(Availability::Online, out);
                self.report_state(PrinterState::Idle, out);
                status.message = None;
            }
            phase if phase.active() => {
                self.set_availability(Availability::Online, out);
                self.follow(snap, now, anchor, first, out);
                let state = match phase {
                    Phase::Paused | Phase::Resuming => PrinterState::Paused,
                    Phase::Cancelling => match self.reported_state {
                        Some(PrinterState::Paused) => PrinterState::Paused,
                        _ => PrinterState::Printing,
                    },
                    _ => PrinterState::Printing,
                };
                self.report_state(state, out);
                status.message = None;
            }
            _ => {
                let outcome = self.guess_outcome();
                self.end(outcome, now, out);
                self.set_availability(Availability::Online, out);
                self.report_state(PrinterState::Idle, out);
                status.message = None;
            }
        }
        if let Some(p) = &snap.path {
            self.last_file = Some(p.clone());
        }
        status.state = self.reported_state.unwrap_or_default();
        status.file = self.current.as_ref().map(|c| c.path.clone()).or_else(|| self.last_file.clone());
        status.job = self.current.as_ref().map(|c| c.id.clone());
        status.progress = self.current.as_ref().and_then(|c| c.completion);
        if !snap.temperatures.is_empty() {
            status.temperatures = snap.temperatures.clone();
        }
        false
    }

    /// The snapshot shows the print that ended last: same file, started before it ended.
    /// A print being cancelled or finishing that is not the current one is such a late
    /// view too, however short the print was: a new print never starts in those states.
    fn is_tail(&self, snap: &Snapshot, now: f64) -> bool {
        let Some((path, origin, ended_at)) = &self.last_end else { return false };
        if self.current.is_none() && matches!(snap.phase, Phase::Cancelling | Phase::Finishing) {
            return true;
        }
        self.current.is_none()
            && snap.path.as_deref() == Some(path.as_str())
            && snap.origin.as_deref().unwrap_or("local") == origin
            && snap.print_time.is_some_and(|pt| now - pt < ended_at - TAIL_SLACK)
    }

    /// The snapshot shows a print not reported yet (its identity's anchor is needed).
    pub(super) fn new_print(&self, snap: &Snapshot, now: f64) -> bool {
        snap.phase.active() && !self.is_tail(snap, now) && !self.same_print(snap)
    }

    /// The snapshot shows the print reported as current.
    fn same_print(&self, snap: &Snapshot) -> bool {
        let Some(c) = &self.current else { return false };
        let was_paused = matches!(c.phase, Phase::Paused | Phase::Resuming | Phase::Pausing);
        // printTime dropping means a new print, except at a resume (paused time is taken
        // out then), while cancelling or finishing (no new print starts in those states),
        // or when OctoPrint sends none (it clears it while cancelling).
        let restarted = !was_paused
            && !matches!(snap.phase, Phase::Cancelling | Phase::Finishing)
            && snap.print_time.is_some_and(|pt| pt + PRINT_TIME_SLACK < c.last_print_time);
        snap.path.as_deref().unwrap_or("") == c.path
            && snap.origin.as_deref().unwrap_or("local") == c.origin
            && !restarted
    }

    /// An active job in the snapshot: the same print as before, or a new one.
    fn follow(&mut self, snap: &Snapshot, now: f64, anchor: Option<&str>, first: bool, out: &mut Vec<PrinterEvent>) {
        let path = snap.path.clone().unwrap_or_default();
        let origin = snap.origin.clone().unwrap_or_else(|| "local".into());
        let pt = snap.print_time.unwrap_or(0.0);
        let same = self.same_print(snap);
        if let Some(c) = &mut self.current {
            if same {
                if snap.print_time.is_some() {
                    c.last_print_time = pt;
                }
                c.phase = snap.phase;
                c.cancelling |= snap.phase == Phase::Cancelling;
                if snap.completion.is_some() {
                    c.completion = snap.completion;
                }
                return;
            }
            // Another print runs now: the one reported ended while unseen.
            let outcome = self.guess_outcome();
            self.end(outcome, now, out);
        }
        let mut id = job_id(&origin, &path, anchor, pt, now);
        let base = id.0.clone();
        let mut n = 1;
        while self.ended.contains(&id) {
            n += 1;
            id = JobId(format!("{base}#{n}"));
        }
        let paused = matches!(snap.phase, Phase::Paused | Phase::Resuming);
        out.push(if first {
            PrinterEvent::Attached { job: id.clone(), file: path.clone(), paused }
        } else {
            PrinterEvent::PrintStarted { job: id.clone(), file: path.clone() }
        });
        self.hint = None;
        // The attached print's pause is its state, not news.
        if first {
            self.reported_state = Some(if paused { PrinterState::Paused } else { PrinterState::Printing });
        } else if matches!(self.reported_state, Some(PrinterState::Paused)) {
            self.reported_state = Some(PrinterState::Printing);
        }
        self.current = Some(Current {
            id,
            path,
            origin,
            last_print_time: pt,
            completion: snap.completion,
            phase: snap.phase,
            cancelling: snap.phase == Phase::Cancelling,
        });
    }

    /// How the current print ended when OctoPrint no longer reports it.
    fn guess_outcome(&mut self) -> JobOutcome {
        let Some(c) = &self.current else { return JobOutcome::Completed };
        if let Some((path, outcome)) = self.hint.take()
            && (path.is_empty() || path == c.path || c.path.ends_with(&format!("/{path}")))
        {
            return outcome;
        }
        match c.phase {
            _ if c.cancelling => JobOutcome::Cancelled,
            Phase::Finishing => JobOutcome::Completed,
            _ if c.completion.is_some_and(|p| p >= 0.999) => JobOutcome::Completed,
            _ => JobOutcome::Failed(
                "OctoPrint no longer reports the print (it ended while printvigil could not see how, e.g. OctoPrint restarted)".into(),
            ),
        }
    }

    fn end(&mut self, outcome: JobOutcome, now: f64, out: &mut Vec<PrinterEvent>) {
        if let Some(c) = self.current.take() {
            self.last_end = Some((c.path.clone(), c.origin.clone(), now));
            let outcome = match self.hint.take() {
                Some((p, o)) if p.is_empty() || p == c.path || c.path.ends_with(&format!("/{p}")) => o,
                _ => outcome,
            };
            if self.ended.len() == ENDED_KEPT {
                self.ended.pop_front();
            }
            self.ended.push_back(c.id.clone());
            out.push(PrinterEvent::Finished { job: c.id, file: c.path, outcome });
        }
        self.hint = None;
    }

    fn report_state(&mut self, state: PrinterState, out: &mut Vec<PrinterEvent>) {
        let prev = self.reported_state.replace(state);
        let job = self.current.as_ref().map(|c| c.id.clone());
        out.extend(PrinterEvent::of_state_change(prev, state, job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snap(flags: Value, path: &str, pt: f64) -> Snapshot {
        let job = json!({"job": {"file": {"path": path, "name": path, "origin": "local"}}, "progress": {"printTime": pt, "completion": 10.0}});
        Snapshot::parse(&job, Some(&json!({"text": "x", "flags": flags})), None)
    }
    fn printing() -> Value {
        json!({"operational": true, "printing": true})
    }
    fn paused() -> Value {
        json!({"operational": true, "paused": true})
    }
    fn idle() -> Value {
        json!({"operational": true, "ready": true})
    }

    fn run(t: &mut Tracker, s: &Snapshot, now: f64) -> Vec<PrinterEvent> {
        let mut out = Vec::new();
        let mut st = PrinterStatus::default();
        t.observe(s, now, None, true, &mut out, &mut st);
        out.retain(|e| !matches!(e, PrinterEvent::Online));
        out
    }

    #[test]
    fn the_id_is_stable_across_polls_and_a_new_print_is_new() {
        let a = job_id("sdcard", "a.gcode", None, 100.0, 1_000_100.2);
        let b = job_id("sdcard", "a.gcode", None, 107.0, 1_000_107.9);
        assert_eq!(a, b);
        let later = job_id("sdcard", "a.gcode", None, 5.0, 1_003_000.0);
        assert_ne!(a, later);
        assert_eq!(job_id("local", "a.gcode", Some("1700000000#3"), 5.0, 9.0).0, "local:a.gcode@1700000000#3");
    }

    #[test]
    fn a_running_print_is_attached_then_paused_resumed_and_cancelled_once() {
        let mut t = Tracker::default();
        let ev = run(&mut t, &snap(printing(), "a.gcode", 50.0), 1000.0);
        assert!(matches!(&ev[..], [PrinterEvent::Attached { paused: false, .. }]), "{ev:?}");
        assert!(run(&mut t, &snap(printing(), "a.gcode", 55.0), 1005.0).is_empty());
        // Pausing is still printing.
        assert!(run(&mut t, &snap(json!({"operational": true, "pausing": true, "printing": true}), "a.gcode", 56.0), 1006.0).is_empty());
        let ev = run(&mut t, &snap(paused(), "a.gcode", 70.0), 1020.0);
        assert!(matches!(&ev[..], [PrinterEvent::Paused { job: Some(_) }]), "{ev:?}");
        // printTime drops back at the resume (OctoPrint does not count paused time).
        let ev = run(&mut t, &snap(printing(), "a.gcode", 57.0), 1021.0);
        assert!(matches!(&ev[..], [PrinterEvent::Resumed { job: Some(_) }]), "{ev:?}");
        assert!(run(&mut t, &snap(json!({"operational": true, "cancelling": true}), "a.gcode", 58.0), 1022.0).is_empty());
        let ev = run(&mut t, &snap(idle(), "a.gcode", 0.0), 1023.0);
        assert!(
            matches!(&ev[..], [PrinterEvent::Finished { outcome: JobOutcome::Cancelled, .. }]),
            "{ev:?}"
        );
    }

    #[test]
    fn a_new_print_of_the_same_file_seen_without_the_end_is_new() {
        let mut t = Tracker::default();
        run(&mut t, &snap(idle(), "", 0.0), 900.0);
        let ev = run(&mut t, &snap(printing(), "a.gcode", 500.0), 1000.0);
        assert!(matches!(&ev[..], [PrinterEvent::PrintStarted { .. }]), "{ev:?}");
        let ev = run(&mut t, &snap(printing(), "a.gcode", 3.0), 1010.0);
        assert!(
            matches!(&ev[..], [PrinterEvent::Finished { .. }, PrinterEvent::PrintStarted { .. }]),
            "{ev:?}"
        );
        // Cancelled after a few seconds and started again: the rounded start is the same.
        let end = run(&mut t, &snap(idle(), "a.gcode", 0.0), 1012.0);
        let ev = run(&mut t, &snap(printing(), "a.gcode", 1.0), 1014.0);
        let ([PrinterEvent::Finished { job: a, .. }], [PrinterEvent::PrintStarted { job: b, .. }]) =
            (&end[..], &ev[..])
        else {
            panic!("{end:?} {ev:?}")
        };
        assert_eq!(job_id("local", "a.gcode", None, 3.0, 1010.0), *a);
        assert_eq!(job_id("local", "a.gcode", None, 1.0, 1014.0), *a, "the same rounded start");
        assert_ne!(a, b);
    }

    #[test]
    fn a_push_view_that_would_end_the_print_asks_for_a_fresh_read() {
        let mut t = Tracker::default();
        run(&mut t, &snap(idle(), "", 0.0), 900.0);
        let ev = run(&mut t, &snap(printing(), "a.gcode", 0.0), 1000.0);
        assert!(matches!(&ev[..], [PrinterEvent::PrintStarted { .. }]), "{ev:?}");
        // A throttled push message from before the start arrives after it.
        let (mut out, mut st) = (Vec::new(), PrinterStatus::default());
        assert!(t.observe(&snap(idle(), "", 0.0), 1000.1, None, false, &mut out, &mut st));
        assert!(out.is_empty(), "{out:?}");
        // REST says it prints: the same print, nothing new.
        assert!(run(&mut t, &snap(printing(), "a.gcode", 1.0), 1000.3).is_empty());
    }

    #[test]
    fn a_cancel_without_print_time_is_the_same_print() {
        let mut t = Tracker::default();
        run(&mut t, &snap(idle(), "", 0.0), 900.0);
        run(&mut t, &snap(printing(), "a.gcode", 1.0), 1000.0);
        run(&mut t, &snap(printing(), "a.gcode", 30.0), 1029.0);
        let job = json!({"job": {"file": {"path": "a.gcode", "origin": "local"}}, "progress": {"printTime": null}});
        let cancelling = Snapshot::parse(&job, Some(&json!({"flags": {"operational": true, "cancelling": true}})), None);
        assert!(run(&mut t, &cancelling, 1030.0).is_empty());
        let printing_no_time = Snapshot::parse(&job, Some(&json!({"flags": {"operational": true, "printing": true}})), None);
        assert!(run(&mut t, &printing_no_time, 1030.2).is_empty());
        let ev = run(&mut t, &snap(idle(), "a.gcode", 0.0), 1031.0);
        assert!(matches!(&ev[..], [PrinterEvent::Finished { outcome: JobOutcome::Cancelled, .. }]), "{ev:?}");
    }

    #[test]
    fn a_late_view_of_the_print_that_ended_is_not_a_new_print() {
        let mut t = Tracker::default();
        run(&mut t, &snap(idle(), "", 0.0), 900.0);
        run(&mut t, &snap(printing(), "a.gcode", 1.0), 1000.0);
        let ev = run(&mut t, &snap(idle(), "a.gcode", 0.0), 1010.0);
        assert!(matches!(&ev[..], [PrinterEvent::Finished { .. }]), "{ev:?}");
        // OctoPrint's throttled push sends the cancelling state after the end.
        let ev = run(&mut t, &snap(json!({"operational": true, "cancelling": true}), "a.gcode", 10.0), 1010.5);
        assert!(ev.is_empty(), "{ev:?}");
        // Also for a print cancelled a second after it started.
        let ev = run(&mut t, &snap(printing(), "a.gcode", 0.0), 1012.0);
        assert!(matches!(&ev[..], [PrinterEvent::PrintStarted { .. }]), "{ev:?}");
        run(&mut t, &snap(idle(), "a.gcode", 0.0), 1013.0);
        let ev = run(&mut t, &snap(json!({"operational": true, "cancelling": true}), "a.gcode", 1.0), 1013.2);
        assert!(ev.is_empty(), "{ev:?}");
        let ev = run(&mut t, &snap(printing(), "a.gcode", 0.0), 1020.0);
        assert!(matches!(&ev[..], [PrinterEvent::PrintStarted { .. }]), "{ev:?}");
    }

    #[test]
    fn a_push_hint_says_how_it_ended_and_a_disconnect_fails_the_print() {
        let mut t = Tracker::default();
        run(&mut t, &snap(idle(), "", 0.0), 900.0);
        run(&mut t, &snap(printing(), "a.gcode", 1.0), 1000.0);
        t.hint("PrintDone", &json!({"path": "a.gcode", "origin": "local"}));
        let ev = run(&mut t, &snap(idle(), "a.gcode", 0.0), 1001.0);
        assert!(matches!(&ev[..], [PrinterEvent::Finished { outcome: JobOutcome::Completed, .. }]), "{ev:?}");
        run(&mut t, &snap(printing(), "a.gcode", 1.0), 1100.0);
        let ev = run(&mut t, &snap(json!({"closedOrError": true}), "", 0.0), 1101.0);
        assert!(
            matches!(&ev[..], [PrinterEvent::Finished { outcome: JobOutcome::Failed(_), .. }, PrinterEvent::Offline { .. }]),
            "{ev:?}"
        );
    }

    #[test]
    fn snapshots_parse_without_panicking_on_odd_input() {
        for v in [json!(null), json!([]), json!({"job": 5}), json!({"progress": {"printTime": -3}})] {
            let s = Snapshot::parse(&v, Some(&v), Some(&v));
            assert!(s.print_time.is_none_or(|t| t >= 0.0));
        }
    }
}
