//! What the Bambu link knows about the print, and the events it derives from the reports.
//!
//! Each merged report is read as a [`View`]; the tracker compares it with what it reported
//! before:
//!
//! - **States.** `PREPARE`, `SLICING`, `RUNNING` are printing, `PAUSE` is paused; `IDLE`,
//!   `FINISH`, `FAILED` (and anything else) are no print. Pauses and resumes are edges of
//!   the reported [`PrinterState`].
//! - **Error pauses.** A `PAUSE` with a non-zero `print_error` (other than "paused by the
//!   user") is the printer's own: a runout, an error, its AI monitoring. It is still a
//!   pause (`Paused`), and the status message and the log say which error it was.
//! - **Identity.** A print is its name (`subtask_name`, else `gcode_file`) plus the job's
//!   ids (`task_id`/`subtask_id`/`job_id`: cloud prints have them, LAN prints say `"0"`)
//!   plus `gcode_start_time`: `bambu:<serial>:<name>[:<ids>][@<start>]`. All of it comes
//!   from the printer, so a new link (printvigil restarted mid-print) derives the same id
//!   and the watch goes on with the same print. A part that is still unknown (`0`, or not
//!   reported yet) matches anything: a print does not become another one when its start
//!   time arrives late. A LAN print on a printer that reports no start time is its name
//!   alone; a reprint of the same plate that starts while this link watches gets `#2`
//!   (`#3`, ...), one that started while printvigil was down is taken for the print
//!   before it.
//! - **First report** of a link: a running print is `Attached`, not started.
//! - **How it ended.** `FINISH` completed it; `FAILED` after printvigil's stop, or with the
//!   "cancelled" error, or with no error, was a cancel (a person's stop ends in `FAILED`);
//!   `FAILED` with another error failed with that error. A print that simply is no longer
//!   reported (the printer went `IDLE`, or another print runs) ended unseen.
//! - **The connection** lost keeps the print: it is followed again when reports come
//!   back (the `pushall` answer shows where it is).
//!
//! Pure state, no I/O: the session feeds it views and publishes what it returns.

use std::collections::HashMap;

use super::report::{ERROR_CANCELLED, GcodeState, View, error_text, is_error_pause};
use crate::printer::{JobId, JobOutcome, PrinterEvent, PrinterState, PrinterStatus};

/// Print names (ids without the `#n`) whose ended prints are counted, to tell a reprint
/// from the print before it; past this many names the counts start over.
const ENDED_KEPT: usize = 256;

/// What identifies a print; `None` parts are not known (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    name: String,
    ids: Option<String>,
    start: Option<i64>,
}

impl Key {
    fn of(v: &View) -> Key {
        let ids: Vec<&str> = [&v.task_id, &v.subtask_id, &v.job_id].iter().filter_map(|i| i.as_deref()).collect();
        Key { name: v.name(), ids: (!ids.is_empty()).then(|| ids.join("/")), start: v.start_time }
    }

    /// The same print: every part known on both sides is equal.
    fn matches(&self, other: &Key) -> bool {
        fn part<T: PartialEq>(a: &Option<T>, b: &Option<T>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
        }
        let names = self.name.is_empty() || other.name.is_empty() || self.name == other.name;
        names && part(&self.ids, &other.ids) && part(&self.start, &other.start)
    }

    fn id(&self, serial: &str) -> String {
        let mut s = format!("bambu:{serial}:{}", self.name);
        if let Some(ids) = &self.ids {
            s.push(':');
            s.push_str(ids);
        }
        if let Some(t) = self.start {
            s.push_str(&format!("@{t}"));
        }
        s
    }
}

#[derive(Debug, Clone)]
struct Current {
    id: JobId,
    /// The id without its `#n`.
    base: String,
    key: Key,
    file: String,
    percent: Option<f64>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Tracker {
    serial: String,
    current: Option<Current>,
    reported_state: Option<PrinterState>,
    online: bool,
    /// Whether the link has seen a report with a state yet (the first one attaches).
    seen_state: bool,
    /// Prints ended per id base (a reprint is `base#<count + 1>`).
    ended: HashMap<String, u32>,
    /// printvigil sent a stop: the print's end is a cancel.
    cancelling: bool,
    last_file: Option<String>,
    /// The error of the current error pause, told once.
    error_pause: Option<u32>,
    told_signed: bool,
    /// `Offline` was reported once (a link that never connects says so once).
    told_offline: bool,
    /// Lines for the log, taken by the session.
    notes: Vec<Note>,
}

/// Something the session should log (the tracker does no I/O).
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// The printer paused the print itself, with this error.
    ErrorPause(String),
    /// The printer requires signed commands: actions will be refused.
    SignedCommands,
}

impl Tracker {
    pub fn new(serial: &str) -> Tracker {
        Tracker { serial: serial.to_string(), ..Tracker::default() }
    }

    /// Notes for the log since the last call.
    pub fn take_notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }

    /// printvigil sent a stop: the end that follows is a cancel.
    pub fn on_cancel_sent(&mut self) {
        self.cancelling = true;
    }

    /// The state as last reported (`Offline` before any report).
    pub fn state(&self) -> PrinterState {
        if !self.online { PrinterState::Offline } else { self.reported_state.unwrap_or(PrinterState::Offline) }
    }

    /// The connection is down (or never came up); the print, if any, is kept.
    pub fn offline(&mut self, reason: &str, out: &mut Vec<PrinterEvent>, status: &mut PrinterStatus) {
        if self.online || !self.told_offline {
            out.push(PrinterEvent::Offline { reason: reason.to_string() });
        }
        self.online = false;
        self.told_offline = true;
        status.state = PrinterState::Offline;
        status.message = Some(reason.to_string());
    }

    /// Applies a view of the merged reports.
    pub fn observe(&mut self, v: &View, out: &mut Vec<PrinterEvent>, status: &mut PrinterStatus) {
        if !v.temperatures.is_empty() {
            status.temperatures = v.temperatures.clone();
        }
        if v.signed_commands_required == Some(true) && !self.told_signed {
            self.told_signed = true;
            self.notes.push(Note::SignedCommands);
        }
        let Some(state) = &v.state else { return };
        let first = !self.seen_state;
        self.seen_state = true;
        if !self.online {
            self.online = true;
            out.push(PrinterEvent::Online);
        }
        status.message = None;
        if state.active() {
            self.follow(v, state, first, out);
            let c = self.current.as_mut().expect("follow sets the print");
            c.percent = v.percent.or(c.percent);
            let paused = *state == GcodeState::Pause;
            self.report_state(if paused { PrinterState::Paused } else { PrinterState::Printing }, out);
            if paused && is_error_pause(v.print_error) {
                let text = format!("the printer paused the print itself: error {}", error_text(v.print_error));
                if self.error_pause != Some(v.print_error) {
                    self.error_pause = Some(v.print_error);
                    self.notes.push(Note::ErrorPause(text.clone()));
                }
                status.message = Some(text);
            } else {
                self.error_pause = None;
            }
        } else {
            if self.current.is_some() {
                let outcome = self.outcome(v, state);
                self.end(outcome, out);
            }
            self.error_pause = None;
            self.report_state(PrinterState::Idle, out);
        }
        let name = v.name();
        if !name.is_empty() {
            self.last_file = Some(name);
        }
        status.state = self.reported_state.unwrap_or_default();
        status.job = self.current.as_ref().map(|c| c.id.clone());
        status.file = self.current.as_ref().map(|c| c.file.clone()).or_else(|| self.last_file.clone());
        status.progress = self.current.as_ref().and_then(|c| c.percent).map(|p| p / 100.0);
    }

    /// An active print in the view: the same as before, or a new one.
    fn follow(&mut self, v: &View, state: &GcodeState, first: bool, out: &mut Vec<PrinterEvent>) {
        let key = Key::of(v);
        if let Some(c) = &mut self.current {
            if c.key.matches(&key) {
                // Learn what was unknown; the id stays as it was reported.
                if c.key.ids.is_none() {
                    c.key.ids = key.ids;
                }
                if c.key.start.is_none() {
                    c.key.start = key.start;
                }
                if c.key.name.is_empty() && !key.name.is_empty() {
                    c.key.name = key.name.clone();
                    c.file = key.name;
                }
                return;
            }
            // Another print runs now: the one reported ended while unseen.
            let outcome = if c.percent.is_some_and(|p| p >= 100.0) {
                JobOutcome::Completed
            } else {
                JobOutcome::Failed("another print started before printvigil saw this one end".into())
            };
            self.end(outcome, out);
        }
        let base = key.id(&self.serial);
        let id = match self.ended.get(&base) {
            Some(&n) => JobId(format!("{base}#{}", n + 1)),
            None => JobId(base.clone()),
        };
        let paused = *state == GcodeState::Pause;
        let file = key.name.clone();
        if first {
            out.push(PrinterEvent::Attached { job: id.clone(), file: file.clone(), paused });
            // The attached print's pause is its state, not news.
            self.reported_state = Some(if paused { PrinterState::Paused } else { PrinterState::Printing });
        } else {
            out.push(PrinterEvent::PrintStarted { job: id.clone(), file: file.clone() });
            if self.reported_state == Some(PrinterState::Paused) {
                self.reported_state = Some(PrinterState::Printing);
            }
        }
        self.cancelling = false;
        self.current = Some(Current { id, base, key, file, percent: v.percent });
    }

    fn outcome(&self, v: &View, state: &GcodeState) -> JobOutcome {
        match state {
            GcodeState::Finish => JobOutcome::Completed,
            GcodeState::Failed if self.cancelling || v.print_error == ERROR_CANCELLED || v.print_error == 0 => {
                JobOutcome::Cancelled
            }
            GcodeState::Failed => JobOutcome::Failed(format!("the printer reports the print failed: error {}", error_text(v.print_error))),
            _ if self.current.as_ref().and_then(|c| c.percent).is_some_and(|p| p >= 100.0) => JobOutcome::Completed,
            other => JobOutcome::Failed(format!(
                "the printer reports {} without saying how the print ended",
                match other {
                    GcodeState::Idle => "IDLE".to_string(),
                    GcodeState::Other(s) => s.clone(),
                    _ => format!("{other:?}"),
                }
            )),
        }
    }

    fn end(&mut self, outcome: JobOutcome, out: &mut Vec<PrinterEvent>) {
        if let Some(c) = self.current.take() {
            if self.ended.len() >= ENDED_KEPT && !self.ended.contains_key(&c.base) {
                self.ended.clear();
            }
            *self.ended.entry(c.base.clone()).or_insert(0) += 1;
            out.push(PrinterEvent::Finished { job: c.id, file: c.file, outcome });
        }
        self.cancelling = false;
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

    fn view(state: &str, name: &str, percent: f64, start: Option<i64>, error: u32) -> View {
        let mut r = super::super::report::Report::default();
        let mut m = serde_json::json!({"command": "push_status", "gcode_state": state, "subtask_name": name,
            "mc_percent": percent, "print_error": error, "task_id": "0"});
        if let Some(s) = start {
            m["gcode_start_time"] = serde_json::json!(s.to_string());
        }
        r.merge(m.as_object().unwrap().clone());
        r.view()
    }

    fn run(t: &mut Tracker, v: &View) -> Vec<PrinterEvent> {
        let (mut out, mut st) = (Vec::new(), PrinterStatus::default());
        t.observe(v, &mut out, &mut st);
        out.retain(|e| !matches!(e, PrinterEvent::Online));
        out
    }

    #[test]
    fn a_print_starts_pauses_resumes_and_finishes_once() {
        let mut t = Tracker::new("SN1");
        assert!(run(&mut t, &view("IDLE", "", 0.0, None, 0)).is_empty());
        let ev = run(&mut t, &view("PREPARE", "Benchy", 0.0, None, 0));
        let [PrinterEvent::PrintStarted { job, file }] = &ev[..] else { panic!("{ev:?}") };
        assert_eq!((job.0.as_str(), file.as_str()), ("bambu:SN1:Benchy", "Benchy"));
        // The start time arrives later: the same print, the same id.
        assert!(run(&mut t, &view("RUNNING", "Benchy", 5.0, Some(1_700_000_000), 0)).is_empty());
        let ev = run(&mut t, &view("PAUSE", "Benchy", 6.0, Some(1_700_000_000), 0));
        assert!(matches!(&ev[..], [PrinterEvent::Paused { job: Some(_) }]), "{ev:?}");
        let ev = run(&mut t, &view("RUNNING", "Benchy", 6.0, Some(1_700_000_000), 0));
        assert!(matches!(&ev[..], [PrinterEvent::Resumed { job: Some(_) }]), "{ev:?}");
        let ev = run(&mut t, &view("FINISH", "Benchy", 100.0, Some(1_700_000_000), 0));
        assert!(matches!(&ev[..], [PrinterEvent::Finished { outcome: JobOutcome::Completed, .. }]), "{ev:?}");
        assert!(run(&mut t, &view("FINISH", "Benchy", 100.0, Some(1_700_000_000), 0)).is_empty());
        // Reprints of the same plate, no start time reported: new ids, however many.
        for n in 2..40 {
            let ev = run(&mut t, &view("PREPARE", "Benchy", 100.0, None, 0));
            let [PrinterEvent::PrintStarted { job, .. }] = &ev[..] else { panic!("{ev:?}") };
            assert_eq!(job.0, format!("bambu:SN1:Benchy#{n}"));
            run(&mut t, &view("FINISH", "Benchy", 100.0, None, 0));
            run(&mut t, &view("PREPARE", &format!("other{n}"), 0.0, None, 0));
            run(&mut t, &view("FINISH", &format!("other{n}"), 100.0, None, 0));
        }
    }

    #[test]
    fn a_new_link_attaches_to_the_running_print_with_the_same_id() {
        let v = view("PAUSE", "Benchy", 40.0, Some(1_700_000_000), 0);
        let mut a = Tracker::new("SN1");
        let ev = run(&mut a, &v);
        let [PrinterEvent::Attached { job, paused: true, .. }] = &ev[..] else { panic!("{ev:?}") };
        assert_eq!(job.0, "bambu:SN1:Benchy@1700000000");
        let mut b = Tracker::new("SN1");
        let ev = run(&mut b, &view("RUNNING", "Benchy", 41.0, Some(1_700_000_000), 0));
        assert!(matches!(&ev[..], [PrinterEvent::Attached { job: j, paused: false, .. }] if j == job), "{ev:?}");
    }

    #[test]
    fn error_pauses_cancels_and_failures_are_told_apart() {
        let mut t = Tracker::new("SN1");
        run(&mut t, &view("IDLE", "", 0.0, None, 0));
        run(&mut t, &view("RUNNING", "A", 10.0, Some(1), 0));
        let (mut out, mut st) = (Vec::new(), PrinterStatus::default());
        t.observe(&view("PAUSE", "A", 10.0, Some(1), 50364419), &mut out, &mut st);
        assert!(matches!(&out[..], [PrinterEvent::Paused { .. }]), "{out:?}");
        assert!(st.message.as_deref().unwrap().contains("0300_8003"), "{st:?}");
        assert_eq!(t.take_notes().len(), 1);
        t.observe(&view("PAUSE", "A", 10.0, Some(1), 50364419), &mut out, &mut st);
        assert!(t.take_notes().is_empty(), "told once");
        let ev = run(&mut t, &view("FAILED", "A", 10.0, Some(1), ERROR_CANCELLED));
        assert!(matches!(&ev[..], [PrinterEvent::Finished { outcome: JobOutcome::Cancelled, .. }]), "{ev:?}");

        run(&mut t, &view("RUNNING", "B", 1.0, Some(2), 0));
        let ev = run(&mut t, &view("FAILED", "B", 1.0, Some(2), 0x0300_0002));
        assert!(matches!(&ev[..], [PrinterEvent::Finished { outcome: JobOutcome::Failed(m), .. }] if m.contains("0300_0002")), "{ev:?}");

        run(&mut t, &view("RUNNING", "C", 1.0, Some(3), 0));
        t.on_cancel_sent();
        let ev = run(&mut t, &view("FAILED", "C", 1.0, Some(3), 0x0300_0002));
        assert!(matches!(&ev[..], [PrinterEvent::Finished { outcome: JobOutcome::Cancelled, .. }]), "{ev:?}");

        // Another print seen without the end of the one before.
        run(&mut t, &view("RUNNING", "D", 50.0, Some(4), 0));
        let ev = run(&mut t, &view("RUNNING", "E", 1.0, Some(5), 0));
        assert!(
            matches!(&ev[..], [PrinterEvent::Finished { outcome: JobOutcome::Failed(_), .. }, PrinterEvent::PrintStarted { .. }]),
            "{ev:?}"
        );
    }

    #[test]
    fn offline_is_told_once_and_the_print_is_kept() {
        let mut t = Tracker::new("SN1");
        let (mut out, mut st) = (Vec::new(), PrinterStatus::default());
        t.offline("no route", &mut out, &mut st);
        t.offline("no route", &mut out, &mut st);
        assert_eq!(out.len(), 1);
        t.observe(&view("RUNNING", "A", 10.0, Some(1), 0), &mut out, &mut st);
        assert!(matches!(&out[1..], [PrinterEvent::Online, PrinterEvent::Attached { .. }]), "{out:?}");
        out.clear();
        t.offline("lost", &mut out, &mut st);
        assert_eq!(st.state, PrinterState::Offline);
        t.observe(&view("RUNNING", "A", 12.0, Some(1), 0), &mut out, &mut st);
        assert!(matches!(&out[..], [PrinterEvent::Offline { .. }, PrinterEvent::Online]), "{out:?}");
        assert_eq!((st.state, st.progress), (PrinterState::Printing, Some(0.12)));
        // A partial report before the full one changes nothing.
        out.clear();
        t.observe(&View::default(), &mut out, &mut st);
        assert!(out.is_empty());
    }
}
