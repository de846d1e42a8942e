//! What the link remembers across connections, and the events it derives.
//!
//! Connections come and go; the [`Tracker`] stays for the link's lifetime. It holds the
//! merged status of the printer objects, the print it reported as started and not yet as
//! finished, every job id already reported as started or finished, and the newest history
//! entry it accounted for (the horizon). From these it derives each [`PrinterEvent`]
//! exactly once:
//!
//! - A print's start and end come from Moonraker's job history, which carries the job's
//!   identity. After a (re)connect the history is read and everything beyond the horizon
//!   is reported in order ([`Tracker::catch_up`]); the very first read only attaches to a
//!   running print, older prints are not news.
//! - Pauses and resumes come from `print_stats.state` edges, except a timelapse camera park
//!   (the `TIMELAPSE_TAKE_FRAME` macro's `is_paused`).
//! - A print that outlives a Moonraker restart has its history entry closed early
//!   (`interrupted`); its end then comes from `print_stats` (an "orphan").
//!
//! [`MessageReplay`] runs raw websocket messages through the same parsing, merging and
//! derivation without a network: for fuzzing and for tests.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::broadcast;
use tracing::debug;

use super::Shared;
use super::inbox::{Inbox, Next, Notice};
use super::rpc::{Incoming, MessageError, parse_message};
use super::status::{Subscription, TIMELAPSE_MACRO};
use crate::printer::{JobId, JobOutcome, PrinterEvent, PrinterState, PrinterStatus, Temperature};

/// A status change being handled; see [`Tracker::status_step`].
pub(super) struct Step {
    prev: Option<String>,
    pub(super) state: Option<String>,
    /// The change may be a print's start or end: read the job history.
    pub(super) job_edge: bool,
}

/// One entry of Moonraker's job history (`server.history.list`, `notify_history_changed`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct HistJob {
    job_id: String,
    filename: String,
    status: String,
    pub(super) start_time: f64,
}

impl HistJob {
    pub(super) fn parse(v: &Value) -> Option<HistJob> {
        Some(HistJob {
            job_id: v.get("job_id")?.as_str()?.to_string(),
            filename: v.get("filename").and_then(Value::as_str).unwrap_or("").to_string(),
            status: v.get("status").and_then(Value::as_str).unwrap_or("").to_string(),
            start_time: v.get("start_time").and_then(Value::as_f64).unwrap_or(0.0),
        })
    }
    fn id(&self) -> JobId {
        JobId(format!("{}@{:.0}", self.job_id, self.start_time))
    }
    fn outcome(&self) -> Option<JobOutcome> {
        match self.status.as_str() {
            "in_progress" | "" => None,
            "completed" => Some(JobOutcome::Completed),
            "cancelled" => Some(JobOutcome::Cancelled),
            "klippy_shutdown" => Some(JobOutcome::Failed(
                "the printer halted during the print (emergency stop or firmware error; Moonraker: klippy_shutdown)".into(),
            )),
            "klippy_disconnect" => Some(JobOutcome::Failed(
                "the printer's firmware restarted or disconnected during the print (Moonraker: klippy_disconnect)".into(),
            )),
            "interrupted" | "server_exit" => Some(JobOutcome::Failed(format!(
                "the printer's host software stopped during the print (Moonraker: {})",
                self.status
            ))),
            "error" => Some(JobOutcome::Failed("the print stopped on an error (Moonraker: error)".into())),
            other => Some(JobOutcome::Failed(format!("the print ended as `{other}`"))),
        }
    }
}

/// What the link remembers across connections; see the module documentation.
#[derive(Default)]
pub(super) struct Tracker {
    /// What status merging keeps (the subscription of the current connection).
    subscription: Arc<Subscription>,
    /// Merged subscription status: object -> field -> value.
    status: Map<String, Value>,
    last_state: Option<String>,
    /// The print reported as started and not yet as finished.
    current: Option<(JobId, String)>,
    started: HashSet<JobId>,
    finished: HashSet<JobId>,
    /// Newest history start time already accounted for; `None` until the first sync.
    horizon: Option<f64>,
    /// The printer paused for a timelapse frame: neither the pause nor its resume count.
    parked: bool,
    /// The current print goes on although the history closed its entry (Moonraker
    /// restarted during the print: `interrupted`, `server_exit`); its end comes from
    /// `print_stats`.
    orphan: bool,
    /// Last online/offline/halted report, to report each change once.
    reported: Option<Availability>,
}

/// The last availability reported, to report each change once.
#[derive(Debug, Clone, PartialEq)]
enum Availability {
    Online,
    Offline,
    Halted,
}

impl Tracker {
    /// Klippy is ready (and synced). While the link flaps (see [`super::reconnect`]) the
    /// `Online` event is withheld until the connection has stayed healthy, so a watcher
    /// sees one `Offline`, not an `Online`/`Offline` pair per round.
    pub(super) fn online(&mut self, shared: &Shared) {
        if shared.out.quiet() {
            debug!(printer = %shared.cfg.name, "ready again, but the connection flaps: Online waits until it stays up");
        } else if self.reported != Some(Availability::Online) {
            self.reported = Some(Availability::Online);
            shared.emit(PrinterEvent::Online);
        }
        shared.out.update_status(|s| s.message = None);
    }

    pub(super) fn offline(&mut self, shared: &Shared, reason: &str) {
        if !matches!(self.reported, Some(Availability::Offline)) {
            self.reported = Some(Availability::Offline);
            shared.emit(PrinterEvent::Offline { reason: reason.into() });
        }
        shared.out.update_status(|s| {
            s.state = PrinterState::Offline;
            s.message = Some(reason.into());
        });
    }

    pub(super) fn halted(&mut self, shared: &Shared, message: &str) {
        if self.reported != Some(Availability::Halted) {
            self.reported = Some(Availability::Halted);
            shared.emit(PrinterEvent::Halted { message: message.into() });
        }
        shared.out.update_status(|s| {
            s.state = PrinterState::Error;
            s.message = Some(message.into());
        });
    }

    /// Sets what status merging keeps from now on.
    pub(super) fn subscribe(&mut self, subscription: Arc<Subscription>) {
        self.subscription = subscription;
    }

    /// The full status from a (re)subscription replaces what was merged so far.
    pub(super) fn replace_status(&mut self, status: Value) {
        self.status = Map::new();
        self.merge_status(&status);
    }

    /// Merges a status delta (subscribed fields only; see [`super::status`]).
    pub(super) fn merge_status(&mut self, delta: &Value) {
        let subscription = self.subscription.clone();
        subscription.merge(&mut self.status, delta);
    }

    /// Compares the merged status with the last one handled: the print state before and
    /// now, and whether the change may be a print's start or end (then the job history
    /// says which). Reports the end of a print whose history entry was closed early.
    pub(super) fn status_step(&mut self, shared: &Shared) -> Step {
        let state = self.print_state();
        let prev = self.last_state.clone();
        let changed = prev.as_deref() != state.as_deref();
        let job_edge = changed
            && (matches!(state.as_deref(), Some("printing"))
                || matches!(prev.as_deref(), Some("printing" | "paused")));
        if job_edge {
            self.orphan_end(shared, prev.as_deref(), state.as_deref());
        }
        Step { prev, state, job_edge }
    }

    /// Finishes a [`Step`] (after the history was read, when it needed to be): pauses and
    /// resumes, then publishes the status.
    pub(super) fn finish_step(&mut self, shared: &Shared, step: Step) {
        self.pause_edges(shared, step.prev.as_deref(), step.state.as_deref());
        self.last_state = step.state;
        self.publish(shared);
    }

    fn field(&self, obj: &str, field: &str) -> Option<&Value> {
        self.status.get(obj)?.get(field)
    }

    pub(super) fn print_state(&self) -> Option<String> {
        self.field("print_stats", "state").and_then(Value::as_str).map(str::to_owned)
    }

    fn timelapse_parked(&self) -> bool {
        self.field(TIMELAPSE_MACRO, "is_paused").and_then(Value::as_bool).unwrap_or(false)
    }

    pub(super) fn pause_edges(&mut self, shared: &Shared, prev: Option<&str>, now: Option<&str>) {
        let job = self.current.as_ref().map(|(j, _)| j.clone());
        match (prev, now) {
            (Some("printing"), Some("paused")) => {
                if self.timelapse_parked() {
                    debug!(printer = %shared.cfg.name, "timelapse park, not a pause");
                    self.parked = true;
                } else {
                    shared.emit(PrinterEvent::Paused { job });
                }
            }
            (Some("paused"), Some("printing")) => {
                if std::mem::take(&mut self.parked) {
                    debug!(printer = %shared.cfg.name, "timelapse park over");
                } else {
                    shared.emit(PrinterEvent::Resumed { job });
                }
            }
            (_, Some("printing" | "paused")) => {}
            _ => self.parked = false,
        }
    }

    /// Reports, in order, what the history shows beyond what was already reported.
    pub(super) fn catch_up(&mut self, shared: &Shared, jobs: &[HistJob], state: Option<&str>) {
        let Some(horizon) = self.horizon else {
            // First sync of this link: older prints are not news; a print still running is
            // attached to, not started.
            let attach = jobs.last().filter(|last| {
                (last.outcome().is_none() || self.lost_track(last))
                    && matches!(state, Some("printing" | "paused"))
            });
            let attach_id = attach.map(HistJob::id);
            for j in jobs {
                self.started.insert(j.id());
                // Older entries, even one still marked in progress, are not news: only the
                // print attached to will have its end reported.
                if Some(j.id()) != attach_id {
                    self.finished.insert(j.id());
                }
            }
            self.horizon = Some(jobs.last().map(|j| j.start_time).unwrap_or(0.0));
            if let Some(last) = attach {
                self.orphan = self.lost_track(last);
                let file = self.job_file(last);
                self.current = Some((last.id(), file.clone()));
                shared.emit(PrinterEvent::Attached {
                    job: last.id(),
                    file,
                    paused: state == Some("paused"),
                });
            }
            return;
        };
        for (i, j) in jobs.iter().enumerate() {
            let known = self.started.contains(&j.id());
            if j.start_time >= horizon || known {
                self.history_job(shared, j, i + 1 == jobs.len());
            }
        }
    }

    /// One history entry, from a notification or a history read.
    /// `latest`: the newest entry of the history.
    pub(super) fn history_job(&mut self, shared: &Shared, job: &HistJob, latest: bool) {
        if self.horizon.is_none() {
            // Not synced yet: the first history read will account for it.
            return;
        }
        let id = job.id();
        let running_on = latest && self.lost_track(job);
        let file = self.job_file(job);
        if self.started.insert(id.clone()) {
            shared.emit(PrinterEvent::PrintStarted { job: id.clone(), file: file.clone() });
            if job.outcome().is_none() || running_on {
                self.current = Some((id.clone(), file.clone()));
            }
        }
        if running_on && self.current.as_ref().is_some_and(|(c, _)| *c == id) {
            // Moonraker lost track of the print, Klipper did not: it goes on.
            self.orphan = true;
            self.horizon = Some(self.horizon.unwrap_or(0.0).max(job.start_time));
            return;
        }
        if let Some(outcome) = job.outcome()
            && self.finished.insert(id.clone())
        {
            if self.current.as_ref().is_some_and(|(c, _)| *c == id) {
                self.current = None;
            }
            shared.emit(PrinterEvent::Finished { job: id, file, outcome });
        }
        self.horizon = Some(self.horizon.unwrap_or(0.0).max(job.start_time));
    }

    /// The job's file name. Moonraker can record a print that starts right after Klipper
    /// becomes ready without its file name; Klipper's `print_stats` still has it then.
    fn job_file(&self, job: &HistJob) -> String {
        if !job.filename.is_empty() {
            return job.filename.clone();
        }
        self.field("print_stats", "filename")
            .and_then(Value::as_str)
            .filter(|f| !f.is_empty())
            .unwrap_or("")
            .to_string()
    }

    /// The history entry was closed because Moonraker stopped (not the print), and Klipper
    /// is still printing that file.
    fn lost_track(&self, job: &HistJob) -> bool {
        matches!(job.status.as_str(), "interrupted" | "server_exit")
            && matches!(self.print_state().as_deref(), Some("printing" | "paused"))
            && self.field("print_stats", "filename").and_then(Value::as_str)
                == Some(job.filename.as_str())
    }

    /// The end of a print whose history entry was closed early, from `print_stats`.
    pub(super) fn orphan_end(&mut self, shared: &Shared, prev: Option<&str>, now: Option<&str>) {
        if !self.orphan
            || !matches!(prev, Some("printing" | "paused"))
            || matches!(now, Some("printing" | "paused"))
        {
            return;
        }
        self.orphan = false;
        let Some((job, file)) = self.current.take() else { return };
        let outcome = match now {
            Some("complete") => JobOutcome::Completed,
            Some("error") => JobOutcome::Failed(
                self.field("print_stats", "message")
                    .and_then(Value::as_str)
                    .filter(|m| !m.is_empty())
                    .unwrap_or("error")
                    .to_string(),
            ),
            _ => JobOutcome::Cancelled,
        };
        if self.finished.insert(job.clone()) {
            shared.emit(PrinterEvent::Finished { job, file, outcome });
        }
    }

    pub(super) fn publish(&self, shared: &Shared) {
        let state = match self.print_state().as_deref() {
            Some("printing") => PrinterState::Printing,
            Some("paused") => PrinterState::Paused,
            Some("error") => PrinterState::Error,
            _ => PrinterState::Idle,
        };
        let file = self
            .field("print_stats", "filename")
            .and_then(Value::as_str)
            .filter(|f| !f.is_empty())
            .map(str::to_owned);
        let progress = self.field("virtual_sdcard", "progress").and_then(Value::as_f64);
        let mut temperatures: Vec<Temperature> = self
            .status
            .iter()
            .filter_map(|(name, v)| {
                let actual = v.get("temperature")?.as_f64()?;
                let target = v.get("target").and_then(Value::as_f64).unwrap_or(0.0);
                Some(Temperature { name: name.clone(), actual, target })
            })
            .collect();
        temperatures.sort_by(|a, b| a.name.cmp(&b.name));
        let job = self.current.as_ref().map(|(j, _)| j.clone());
        let message = self
            .field("print_stats", "message")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .map(str::to_owned);
        let new = PrinterStatus { state, file, job, progress, temperatures, message };
        shared.out.publish_status(new);
    }
}

/// Feeds raw websocket text messages from Moonraker through the link's parsing, bounded
/// status merging and event derivation, without a network (answers are not expected:
/// there are no requests). What a fuzz target calls; also handy in tests.
///
/// ```
/// use printvigil::printer::moonraker::MessageReplay;
/// let mut replay = MessageReplay::new();
/// replay.apply(r#"{"method": "notify_status_update", "params": [{"print_stats": {"state": "printing"}}, 1.0]}"#).unwrap();
/// assert!(replay.apply("not json").is_err());
/// assert_eq!(replay.status().state, printvigil::printer::PrinterState::Printing);
/// ```
pub struct MessageReplay {
    shared: Shared,
    events: broadcast::Receiver<PrinterEvent>,
    inbox: Inbox,
    tracker: Tracker,
}

impl Default for MessageReplay {
    fn default() -> Self {
        Self::new()
    }
}

impl MessageReplay {
    /// A replay of a printer subscribed like a link subscribes a printer with one extruder
    /// and a bed, synced with an empty job history, idle.
    pub fn new() -> MessageReplay {
        let shared = Shared::new(super::MoonrakerConfig::new("replay", "http://127.0.0.1:7125"), "replay");
        let events = shared.out.subscribe_events();
        let subscription = Arc::new(Subscription::default());
        let inbox = Inbox::default();
        inbox.subscribe(subscription.clone());
        let mut tracker = Tracker::default();
        tracker.subscribe(subscription);
        tracker.catch_up(&shared, &[], Some("standby"));
        tracker.online(&shared);
        let mut replay = MessageReplay { shared, events, inbox, tracker };
        replay.events();
        replay
    }

    /// Parses one websocket text message and applies it as the link would (no requests:
    /// where the link would read the job history, the replay goes without).
    pub fn apply(&mut self, text: &str) -> Result<(), MessageError> {
        match parse_message(text)? {
            Incoming::Answer { id, .. } => return Err(MessageError::NotWaiting(id)),
            Incoming::Notification { method, params } => self.inbox.push(&method, params),
        }
        while let Some(next) = self.inbox.try_next() {
            let t = &mut self.tracker;
            match next {
                Next::Status(delta) => {
                    t.merge_status(&Value::Object(delta));
                    let step = t.status_step(&self.shared);
                    t.finish_step(&self.shared, step);
                }
                Next::Notice(Notice::HistoryChanged(p)) => {
                    if let Some(job) = p.get("job").and_then(HistJob::parse) {
                        t.history_job(&self.shared, &job, true);
                    }
                }
                Next::Notice(Notice::KlippyDisconnected) => t.offline(&self.shared, "Klipper disconnected"),
                Next::Notice(Notice::KlippyShutdown) => t.halted(&self.shared, "Klipper shut down"),
                Next::Notice(Notice::KlippyReady) => t.online(&self.shared),
                Next::Notice(Notice::WebcamsChanged) | Next::Resync(_) => {}
            }
        }
        Ok(())
    }

    /// The status the link would publish now.
    pub fn status(&self) -> PrinterStatus {
        self.shared.out.status_now()
    }

    /// The events derived since the last call.
    pub fn events(&mut self) -> Vec<PrinterEvent> {
        std::iter::from_fn(|| self.events.try_recv().ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::printer::moonraker::MoonrakerConfig;

    fn shared() -> Shared {
        Shared::new(MoonrakerConfig::new("t", "http://127.0.0.1:7125"), "x")
    }

    fn job(id: &str, status: &str, t: f64) -> HistJob {
        HistJob {
            job_id: id.into(),
            filename: format!("{id}.gcode"),
            status: status.into(),
            start_time: t,
        }
    }

    fn drain(rx: &mut broadcast::Receiver<PrinterEvent>) -> Vec<PrinterEvent> {
        let mut v = Vec::new();
        while let Ok(e) = rx.try_recv() {
            v.push(e);
        }
        v
    }

    #[test]
    fn first_sync_attaches_and_catch_up_reports_missed_prints_in_order() {
        let sh = shared();
        let mut rx = sh.out.subscribe_events();
        let mut t = Tracker::default();
        t.catch_up(&sh, &[job("1", "completed", 1.0), job("2", "in_progress", 2.0)], Some("printing"));
        let ev = drain(&mut rx);
        assert!(matches!(&ev[..], [PrinterEvent::Attached { paused: false, .. }]), "{ev:?}");
        // Link down: job 2 finished, job 3 ran and finished, job 4 running.
        let jobs = [
            job("1", "completed", 1.0),
            job("2", "completed", 2.0),
            job("3", "cancelled", 3.0),
            job("4", "in_progress", 4.0),
        ];
        t.catch_up(&sh, &jobs, Some("printing"));
        let ev = drain(&mut rx);
        let names: Vec<String> = ev
            .iter()
            .map(|e| match e {
                PrinterEvent::PrintStarted { file, .. } => format!("start {file}"),
                PrinterEvent::Finished { file, outcome, .. } => format!("end {file} {outcome:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            ["end 2.gcode Completed", "start 3.gcode", "end 3.gcode Cancelled", "start 4.gcode"]
        );
        // The same history again reports nothing.
        t.catch_up(&sh, &jobs, Some("printing"));
        t.history_job(&sh, &jobs[3], false);
        assert!(drain(&mut rx).is_empty());
    }

    #[test]
    fn a_history_entry_without_a_file_name_takes_print_stats_one() {
        let sh = shared();
        let mut rx = sh.out.subscribe_events();
        let mut t = Tracker::default();
        t.catch_up(&sh, &[job("1", "completed", 1.0)], Some("standby"));
        t.replace_status(json!({"print_stats": {"state": "complete", "filename": "benchy.gcode"}}));
        let nameless = HistJob { filename: String::new(), ..job("2", "completed", 2.0) };
        t.history_job(&sh, &nameless, true);
        let files: Vec<String> = drain(&mut rx)
            .into_iter()
            .filter_map(|e| match e {
                PrinterEvent::PrintStarted { file, .. } | PrinterEvent::Finished { file, .. } => Some(file),
                _ => None,
            })
            .collect();
        assert_eq!(files, ["benchy.gcode", "benchy.gcode"]);
    }

    #[test]
    fn print_that_outlives_a_moonraker_restart_ends_from_print_stats() {
        let sh = shared();
        let mut rx = sh.out.subscribe_events();
        let mut t = Tracker::default();
        t.replace_status(json!({"print_stats": {"state": "printing", "filename": "1.gcode"}}));
        t.catch_up(&sh, &[job("1", "in_progress", 1.0)], Some("printing"));
        assert!(matches!(&drain(&mut rx)[..], [PrinterEvent::Attached { .. }]));
        // Moonraker restarted: it marked the job interrupted; Klipper still prints it.
        t.catch_up(&sh, &[job("1", "interrupted", 1.0)], Some("printing"));
        assert!(drain(&mut rx).is_empty(), "an interrupted entry of a running print is not an end");
        t.merge_status(&json!({"print_stats": {"state": "complete"}}));
        t.orphan_end(&sh, Some("printing"), Some("complete"));
        t.catch_up(&sh, &[job("1", "interrupted", 1.0)], Some("complete"));
        let ev = drain(&mut rx);
        assert!(
            matches!(&ev[..], [PrinterEvent::Finished { outcome: JobOutcome::Completed, .. }]),
            "{ev:?}"
        );
        // An interrupted entry for a print that is over is a failed print.
        t.catch_up(&sh, &[job("1", "interrupted", 1.0), job("2", "interrupted", 2.0)], Some("standby"));
        let ev = drain(&mut rx);
        assert!(
            matches!(
                &ev[..],
                [
                    PrinterEvent::PrintStarted { .. },
                    PrinterEvent::Finished { outcome: JobOutcome::Failed(_), .. }
                ]
            ),
            "{ev:?}"
        );
    }

    #[test]
    fn a_stale_entry_seen_at_first_sync_is_never_reported() {
        let sh = shared();
        let mut rx = sh.out.subscribe_events();
        let mut t = Tracker::default();
        // History still says in progress but Klipper is idle: nothing to attach to.
        t.catch_up(&sh, &[job("1", "in_progress", 1.0)], Some("standby"));
        t.history_job(&sh, &job("1", "cancelled", 1.0), true);
        assert!(drain(&mut rx).is_empty());
        assert!(t.current.is_none());
    }

    proptest::proptest! {
        /// Nothing Moonraker sends can panic the link.
        #[test]
        fn arbitrary_input_never_panics(text in ".{0,200}", a in 0u8..6, b in 0u8..6) {
            let sh = shared();
            let mut replay = MessageReplay::new();
            let _ = replay.apply(&text);
            let values = [
                json!(null), json!(text), json!({"print_stats": text}),
                json!({"print_stats": {"state": text, "filename": 3}}),
                json!({"extruder": {"temperature": "hot", "target": []}}),
                json!({TIMELAPSE_MACRO: {"is_paused": text}}),
            ];
            for v in &values {
                let _ = replay.apply(&json!({"method": "notify_status_update", "params": [v]}).to_string());
                let _ = replay.apply(&json!({"method": "notify_history_changed", "params": [{"job": v}]}).to_string());
            }
            let mut t = Tracker::default();
            t.replace_status(values[a as usize].clone());
            t.merge_status(&values[b as usize]);
            let states = ["printing", "paused", "complete", "standby", "error", ""];
            t.orphan = true;
            t.orphan_end(&sh, Some(states[a as usize]), Some(states[b as usize]));
            t.pause_edges(&sh, Some(states[a as usize]), t.print_state().as_deref());
            t.publish(&sh);
            let _ = HistJob::parse(&values[a as usize]);
        }
    }

    #[test]
    fn timelapse_park_is_not_a_pause() {
        let sh = shared();
        let mut rx = sh.out.subscribe_events();
        let mut t = Tracker::default();
        t.merge_status(&json!({TIMELAPSE_MACRO: {"is_paused": true}}));
        t.pause_edges(&sh, Some("printing"), Some("paused"));
        t.merge_status(&json!({TIMELAPSE_MACRO: {"is_paused": false}}));
        t.pause_edges(&sh, Some("paused"), Some("printing"));
        assert!(drain(&mut rx).is_empty());
        t.pause_edges(&sh, Some("printing"), Some("paused"));
        t.pause_edges(&sh, Some("paused"), Some("printing"));
        let ev = drain(&mut rx);
        assert!(
            matches!(&ev[..], [PrinterEvent::Paused { .. }, PrinterEvent::Resumed { .. }]),
            "{ev:?}"
        );
    }

    #[test]
    fn a_replayed_print_starts_pauses_and_ends_once() {
        let mut r = MessageReplay::new();
        let job = |status: &str| json!({"job_id": "1", "filename": "a.gcode", "status": status, "start_time": 5.0});
        for m in [
            json!({"method": "notify_status_update", "params": [{"print_stats": {"state": "printing", "filename": "a.gcode"}}, 1.0]}),
            json!({"method": "notify_history_changed", "params": [{"action": "added", "job": job("in_progress")}]}),
            json!({"method": "notify_status_update", "params": [{"print_stats": {"state": "paused"}}, 2.0]}),
            json!({"method": "notify_status_update", "params": [{"print_stats": {"state": "printing"}}, 3.0]}),
            json!({"method": "notify_status_update", "params": [{"extruder": {"temperature": 210.0, "target": 210.0}}, 3.5]}),
            json!({"method": "notify_status_update", "params": [{"print_stats": {"state": "complete"}}, 4.0]}),
            json!({"method": "notify_history_changed", "params": [{"action": "finished", "job": job("completed")}]}),
        ] {
            r.apply(&m.to_string()).unwrap();
        }
        let kinds: Vec<String> = r.events().iter().map(|e| format!("{e:?}").split([' ', '{']).next().unwrap().to_string()).collect();
        assert_eq!(kinds, ["PrintStarted", "Paused", "Resumed", "Finished"]);
        let s = r.status();
        assert_eq!((s.state, s.temperatures.len()), (PrinterState::Idle, 1));
        assert!(r.apply(r#"{"id": 1, "result": {}}"#).is_err());
    }
}
