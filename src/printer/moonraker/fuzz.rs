//! The fuzzing entry of the Moonraker link (see `crate::fuzzing`): websocket text frames
//! routed as a session routes them ([`dispatch`]), and what they carry applied to the
//! link's memory ([`Tracker`]) as the session applies it, without a connection: answers
//! to the requests the session makes, notifications of status, history and Klippy state.
//!
//! TODO(lead): replace the session steps copied below with the Moonraker module's own
//! parse/apply entry points when they land (issue 10, item 3).

use super::*;

/// The request each pending id stands for (id 1 is the first request of the harness).
const ASKED: [&str; 5] = [
    "server.info",
    "printer.objects.subscribe",
    "server.history.list",
    "server.webcams.list",
    "printer.info",
];

/// Feeds the frames in order; panics if the link reports a print twice or ends one it
/// never reported.
pub fn messages(frames: &[&str]) {
    let shared = Shared {
        cfg: MoonrakerConfig::new("fuzz", "http://127.0.0.1:7125"),
        client_name: "fuzz".into(),
        events: broadcast::channel(1024).0,
        status: watch::channel(PrinterStatus::default()).0,
        cameras: watch::channel(Vec::new()).0,
        rpc: Mutex::new(None),
    };
    let mut events = shared.events.subscribe();
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let (notif_tx, mut notif_rx) = mpsc::unbounded_channel();
    let mut answers = Vec::new();
    let mut next_id = 1u64;
    let mut ask = |pending: &Pending, answers: &mut Vec<(u64, oneshot::Receiver<_>)>| {
        let (tx, rx) = oneshot::channel();
        pending.lock().expect("pending").insert(next_id, tx);
        answers.push((next_id, rx));
        next_id += 1;
    };
    for _ in 0..2 * ASKED.len() {
        ask(&pending, &mut answers);
    }
    let mut tracker = Tracker::default();
    let mut ready = false;
    let mut started = HashSet::new();
    let mut finished = HashSet::new();
    let mut lost = false;
    for text in frames {
        let _ = dispatch(text, &pending, &notif_tx);
        let mut i = 0;
        while i < answers.len() {
            let Ok(answer) = answers[i].1.try_recv() else {
                i += 1;
                continue;
            };
            let asked = ASKED[(answers.swap_remove(i).0 as usize - 1) % ASKED.len()];
            ask(&pending, &mut answers);
            let Ok(v) = answer else { continue };
            match asked {
                "server.info" => match v.get("klippy_state").and_then(Value::as_str).unwrap_or("unknown") {
                    "ready" => {
                        ready = true;
                        tracker.online(&shared);
                    }
                    "shutdown" | "error" => tracker.halted(&shared, "halted"),
                    other => tracker.offline(&shared, other),
                },
                "printer.objects.subscribe" => {
                    tracker.replace_status(v.get("status").cloned().unwrap_or(Value::Null));
                    status_changed(&mut tracker, &shared, None);
                }
                "server.history.list" => {
                    let mut jobs: Vec<HistJob> = v
                        .get("jobs")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(HistJob::parse).collect())
                        .unwrap_or_default();
                    jobs.sort_by(|a, b| a.start_time.total_cmp(&b.start_time));
                    status_changed(&mut tracker, &shared, Some(&jobs));
                }
                "server.webcams.list" => drop(parse_webcams(&v, &shared.cfg.base())),
                _ => drop(v.get("state_message").and_then(Value::as_str).map(|s| s.trim().to_string())),
            }
        }
        while let Ok((method, params)) = notif_rx.try_recv() {
            match method.as_str() {
                "notify_status_update" if ready => {
                    if let Some(delta) = params.get(0) {
                        tracker.merge_status(delta);
                        status_changed(&mut tracker, &shared, None);
                    }
                }
                "notify_klippy_disconnected" => {
                    ready = false;
                    tracker.offline(&shared, "Klipper disconnected from Moonraker");
                }
                "notify_klippy_shutdown" => {
                    ready = false;
                    tracker.halted(&shared, "Klipper shut down");
                }
                "notify_history_changed" => {
                    let p = params.get(0).cloned().unwrap_or(Value::Null);
                    if let Some(job) = p.get("job").and_then(HistJob::parse) {
                        tracker.history_job(&shared, &job, true);
                    }
                }
                _ => {}
            }
        }
        loop {
            let ev = match events.try_recv() {
                Ok(ev) => ev,
                // Events were lost (a history of thousands of jobs): nothing to check from
                // here on.
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    lost = true;
                    continue;
                }
                Err(_) => break,
            };
            if lost {
                continue;
            }
            match ev {
                PrinterEvent::PrintStarted { job, .. } | PrinterEvent::Attached { job, .. } => {
                    assert!(started.insert(job.clone()), "{job:?} reported as started twice");
                }
                PrinterEvent::Finished { job, .. } => {
                    assert!(started.contains(&job), "{job:?} finished but never started");
                    assert!(finished.insert(job.clone()), "{job:?} reported as finished twice");
                }
                _ => {}
            }
        }
    }
}

/// `Session::process_status` without its history request: `jobs` is the history's
/// answer, when one came.
fn status_changed(tracker: &mut Tracker, shared: &Shared, jobs: Option<&[HistJob]>) {
    let state = tracker.print_state();
    let prev = tracker.last_state.clone();
    let changed = prev.as_deref() != state.as_deref();
    let job_edge = changed
        && (matches!(state.as_deref(), Some("printing"))
            || matches!(prev.as_deref(), Some("printing" | "paused")));
    if job_edge {
        tracker.orphan_end(shared, prev.as_deref(), state.as_deref());
    }
    if let Some(jobs) = jobs {
        tracker.catch_up(shared, jobs, state.as_deref());
    }
    tracker.pause_edges(shared, prev.as_deref(), state.as_deref());
    tracker.last_state = state;
    tracker.publish(shared);
}
