//! OctoPrint: REST for the full state and the actions, its push socket for fast events.
//!
//! The link runs one task per printer ([`run`]). Each round reads the full state over REST
//! (`/api/job` + `/api/printer`: [`rest`]) and hands it to the [`tracker`], which derives
//! the events; on the first good round after a (re)connect it also reads the cameras
//! ([`webcams`]) and opens the push socket ([`push`]). While the socket is up, its
//! `current` messages feed the tracker directly and its print events (`PrintStarted`,
//! `PrintDone`, ...) trigger an immediate REST read; REST then only cross-checks every
//! `poll_secs` x 6. Without the socket (refused, https, dropped) REST polling every
//! `poll_secs` is the whole link: slower, not different.
//!
//! Errors are states, logged once per change: OctoPrint unreachable (the print, if any, is
//! kept: it is followed again when OctoPrint answers), the API key refused (401/403: a
//! configuration error, with the fix), no printer connected to OctoPrint (409: `Offline`).
//!
//! Actions (`POST /api/job`) are confirmed by the state OctoPrint reports afterwards; a
//! 409 (nothing to pause, printer not connected) becomes [`PrinterError::Refused`] with
//! OctoPrint's reason. What a pause does (park, heaters) is OctoPrint's own pause script.
//!
//! The files, one concept each:
//! - [`config`]: the `[[printers]]` entry (`kind = "octoprint"`).
//! - [`rest`]: the REST client, capped answers, statuses that matter.
//! - [`push`]: passive login and the `/sockjs/websocket` socket.
//! - [`tracker`]: snapshots, print identity, the events.
//! - [`webcams`]: the cameras from `/api/settings`.
//! - [`appkeys`]: the Application Keys workflow (`printvigil setup octoprint`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::channels::{Act, LinkChannels, LinkTask};
use super::{PrinterError, PrinterEvent, PrinterLink, PrinterStatus};
use push::Push;
use rest::{Rest, RestError};
use tracker::{Snapshot, Tracker};

pub mod appkeys;
mod config;
mod push;
mod rest;
mod tracker;
mod webcams;

pub use config::OctoPrintConfig;
pub use push::MAX_MESSAGE;
pub use tracker::START_ROUNDING;

/// Wait before retrying the push socket after it failed to open.
const PUSH_RETRY: Duration = Duration::from_secs(30);

/// The OctoPrint link; see the module documentation.
pub struct OctoPrintLink {
    shared: Arc<Shared>,
    task: LinkTask,
}

/// What the link's task and its handle share.
struct Shared {
    cfg: OctoPrintConfig,
    rest: Rest,
    out: LinkChannels,
    /// Read the full state now (an action was sent).
    kick: Notify,
}

impl Shared {
    /// Applies a snapshot (or an unreachable OctoPrint) through the tracker.
    fn apply(&self, tracker: &mut Tracker, f: impl FnOnce(&mut Tracker, &mut Vec<PrinterEvent>, &mut PrinterStatus)) {
        let mut events = Vec::new();
        let mut status = self.out.status_now();
        f(tracker, &mut events, &mut status);
        // The status first: a watcher reads it when an event arrives (`Online`: is a
        // print running?).
        self.out.publish_status(status);
        for ev in events {
            self.out.emit(ev);
        }
    }
}

fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl OctoPrintLink {
    /// Starts the link's task (needs a Tokio runtime).
    pub fn start(cfg: OctoPrintConfig) -> Arc<dyn PrinterLink> {
        Self::start_concrete(cfg)
    }

    /// Like [`OctoPrintLink::start`], returning the concrete type.
    pub fn start_concrete(cfg: OctoPrintConfig) -> Arc<OctoPrintLink> {
        let key = cfg.api_key.clone().unwrap_or_default();
        let rest = Rest::new(cfg.base(), key, Duration::from_secs(cfg.request_timeout_secs));
        let out = LinkChannels::new(&cfg.name);
        let shared = Arc::new(Shared { cfg, rest, out, kick: Notify::new() });
        let task = LinkTask::spawn(|stop| run(shared.clone(), stop));
        Arc::new(OctoPrintLink { shared, task })
    }

    fn printer(&self) -> String {
        self.shared.cfg.name.clone()
    }

}

#[async_trait::async_trait]
impl PrinterLink for OctoPrintLink {
    fn channels(&self) -> &LinkChannels {
        &self.shared.out
    }
    fn action_timeout(&self) -> Duration {
        Duration::from_secs(self.shared.cfg.action_timeout_secs)
    }
    /// Confirmed by the state, read now and every second (the push socket, when up, is
    /// faster still).
    fn poke(&self) {
        self.shared.kick.notify_one();
    }
    async fn request(&self, act: Act) -> Result<(), PrinterError> {
        let body = match act {
            Act::Pause => json!({"command": "pause", "action": "pause"}),
            Act::Resume => json!({"command": "pause", "action": "resume"}),
            Act::Cancel => json!({"command": "cancel"}),
        };
        let refused = |message: String| PrinterError::Refused { printer: self.printer(), action: act.as_str().into(), message };
        match self.shared.rest.post("api/job", &body).await {
            Ok(_) => Ok(()),
            Err(RestError::Conflict(why)) => Err(refused(format!(
                "OctoPrint answered 409 ({why}): the printer is not printing or not connected"
            ))),
            Err(RestError::Unauthorized(code)) => Err(refused(format!(
                "OctoPrint refused the API key (HTTP {code}); set a valid api_key for this printer (printvigil setup octoprint)"
            ))),
            Err(RestError::Network(_)) => Err(PrinterError::NotConnected { printer: self.printer() }),
            Err(e) => Err(refused(e.to_string())),
        }
    }
    async fn stop(&self) {
        self.task.stop(&self.shared.cfg.name).await;
    }
}

/// What a REST round found.
#[derive(Debug, Clone, PartialEq)]
enum Reach {
    Ok,
    Unreachable(String),
    Unauthorized(u16),
}

/// One full state read over REST, applied through the tracker.
async fn refresh(shared: &Shared, tracker: &mut Tracker) -> Reach {
    let (job, printer) =
        tokio::join!(shared.rest.get("api/job"), shared.rest.get("api/printer?exclude=sd"));
    let printer = match printer {
        Ok(p) => Some(p),
        // No printer connected to OctoPrint.
        Err(RestError::Conflict(_)) => None,
        Err(e) => return failure(shared, tracker, e),
    };
    let job = match job {
        Ok(j) => j,
        Err(e) => return failure(shared, tracker, e),
    };
    let snap = match &printer {
        Some(p) => Snapshot::parse(&job, p.get("state"), p.get("temperature")),
        None => Snapshot::parse(&json!({"state": "Offline"}), None, None),
    };
    observe(shared, tracker, &snap, true).await;
    Reach::Ok
}

/// Applies a snapshot, with the identity anchor of a print not reported yet; `fresh`: read
/// over REST just now. `true`: a push view needs confirming by a fresh read.
async fn observe(shared: &Shared, tracker: &mut Tracker, snap: &Snapshot, fresh: bool) -> bool {
    let anchor = anchor(shared, tracker, snap).await;
    let now = now_unix();
    let mut recheck = false;
    shared.apply(tracker, |t, ev, st| recheck = t.observe(snap, now, anchor.as_deref(), fresh, ev, st));
    recheck
}

/// The identity anchor of a new print of a file in OctoPrint's storage: the file's upload
/// date and how many prints OctoPrint recorded for it (see [`tracker`]).
async fn anchor(shared: &Shared, tracker: &Tracker, snap: &Snapshot) -> Option<String> {
    if !tracker.new_print(snap, now_unix()) || snap.origin.as_deref().unwrap_or("local") != "local" {
        return None;
    }
    let path = snap.path.as_deref()?;
    match shared.rest.get_file("api/files/local", path).await {
        Ok(v) => {
            let date = v.get("date").and_then(Value::as_i64)?;
            let prints = v.get("prints");
            let count = |k: &str| prints.and_then(|p| p.get(k)).and_then(Value::as_u64).unwrap_or(0);
            Some(format!("{date}#{}", count("success") + count("failure")))
        }
        Err(e) => {
            warn!(printer = %shared.cfg.name, "cannot read the metadata of {path:?} ({e}); the print's identity falls back to its start time");
            None
        }
    }
}

fn failure(shared: &Shared, tracker: &mut Tracker, e: RestError) -> Reach {
    let reach = match &e {
        RestError::Unauthorized(code) => Reach::Unauthorized(*code),
        other => Reach::Unreachable(other.to_string()),
    };
    let reason = match &reach {
        Reach::Unauthorized(code) => format!(
            "OctoPrint refused the API key (HTTP {code}); set printers.api_key for `{}` to a valid key (run `printvigil setup octoprint`, or copy one from OctoPrint's Settings > Application Keys)",
            shared.cfg.name
        ),
        _ => e.to_string(),
    };
    shared.apply(tracker, |t, ev, st| t.unreachable(&reason, ev, st));
    reach
}

async fn read_cameras(shared: &Shared) {
    match shared.rest.get("api/settings").await {
        Ok(v) => {
            let cams = webcams::parse_settings(&v, shared.rest.base());
            shared.out.publish_cameras(cams);
        }
        Err(e) => warn!(printer = %shared.cfg.name, "cannot read OctoPrint's webcam settings: {e}"),
    }
}

/// Logs each change of the REST reachability once.
fn log_change(name: &str, before: &Reach, now: &Reach) {
    if before == now {
        return;
    }
    match (before, now) {
        (_, Reach::Unauthorized(_)) => warn!(
            printer = %name,
            "OctoPrint refuses printvigil's API key: a configuration error. Set api_key of printer `{name}` to a valid key: run `printvigil setup octoprint` (you approve the request in OctoPrint), or create one under OctoPrint's Settings > Application Keys. Retrying every poll."
        ),
        (Reach::Unreachable(a), Reach::Unreachable(b)) if !a.is_empty() => {
            debug!(printer = %name, "still unreachable: {b} (was: {a})")
        }
        (_, Reach::Unreachable(why)) => warn!(printer = %name, "OctoPrint is not reachable: {why}; retrying"),
        (Reach::Unauthorized(_), Reach::Ok) => info!(printer = %name, "OctoPrint accepts the API key now"),
        (Reach::Unreachable(first), Reach::Ok) if first.is_empty() => info!(printer = %name, "connected to OctoPrint"),
        (_, Reach::Ok) => info!(printer = %name, "OctoPrint answers again"),
    }
}

/// The link's task: see the module documentation.
async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let name = shared.cfg.name.clone();
    let poll = Duration::from_secs(shared.cfg.poll_secs);
    let timeout = Duration::from_secs(shared.cfg.request_timeout_secs);
    let mut tracker = Tracker::default();
    let mut ws: Option<push::Ws> = None;
    let mut push_retry_at = Instant::now();
    let mut push_failures = 0u32;
    // Empty: not tried yet (the first answer is "connected", not "answers again").
    let mut reach = Reach::Unreachable(String::new());
    let mut cameras_read = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let now = refresh(&shared, &mut tracker).await;
        log_change(&name, &reach, &now);
        reach = now;
        if reach == Reach::Ok {
            if !cameras_read {
                read_cameras(&shared).await;
                cameras_read = true;
            }
            if ws.is_none() && Instant::now() >= push_retry_at {
                match push::open(&shared.rest, timeout).await {
                    Ok(w) => {
                        debug!(printer = %name, "push socket open");
                        push_failures = 0;
                        ws = Some(w);
                    }
                    Err(e) => {
                        push_failures += 1;
                        if push_failures == 1 {
                            warn!(printer = %name, "{e}; following OctoPrint by polling every {poll:?} meanwhile");
                        } else {
                            debug!(printer = %name, "push socket: {e}");
                        }
                        push_retry_at = Instant::now() + PUSH_RETRY;
                    }
                }
            }
        } else {
            cameras_read = false;
            ws = None;
        }
        let wait = if ws.is_some() { poll * 6 } else { poll };
        let deadline = Instant::now() + wait;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shared.kick.notified() => break,
                m = async { push::next(ws.as_mut().expect("guarded")).await }, if ws.is_some() => match m {
                    Ok(Push::State(v)) => {
                        let snap = Snapshot::parse(&v, v.get("state"), v.get("temps"));
                        if observe(&shared, &mut tracker, &snap, false).await {
                            break;
                        }
                    }
                    Ok(Push::Event(kind, payload)) => {
                        tracker.hint(&kind, &payload);
                        if kind.starts_with("Print") || matches!(kind.as_str(), "Connected" | "Disconnected" | "Error" | "SettingsUpdated") {
                            if kind == "SettingsUpdated" {
                                cameras_read = false;
                            }
                            break;
                        }
                    }
                    Ok(Push::Other) => {}
                    Err(why) => {
                        debug!(printer = %name, "{why}; reading the state over REST");
                        ws = None;
                        push_retry_at = Instant::now();
                        break;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! What real OctoPrint cannot be made to do on cue (tests/octoprint.rs covers the rest):
    //! refuse an action the link believed possible (the print ended between the link's
    //! last view and the request), and send an answer over the size cap.
    use super::*;
    use crate::printer::PrinterState;
    use axum::http::StatusCode;
    use axum::routing::get;

    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn printing() -> axum::Router {
        axum::Router::new()
            .route(
                "/api/job",
                get(|| async {
                    axum::Json(json!({"job": {"file": {"path": "a.gcode", "origin": "sdcard"}},
                        "progress": {"printTime": 5, "completion": 1.0}, "state": "Printing"}))
                })
                .post(|| async {
                    (StatusCode::CONFLICT, axum::Json(json!({"error": "Printer is neither printing nor paused"})))
                }),
            )
            .route(
                "/api/printer",
                get(|| async {
                    axum::Json(json!({"state": {"text": "Printing", "flags": {"operational": true, "printing": true}}}))
                }),
            )
            // No push socket: the link polls.
            .route("/api/login", axum::routing::post(|| async { StatusCode::FORBIDDEN }))
    }

    #[tokio::test]
    async fn a_409_refusal_is_a_clear_refused_error() {
        let url = serve(printing()).await;
        let link = OctoPrintLink::start_concrete(OctoPrintConfig::new("o", &url, "k"));
        let mut st = link.status();
        tokio::time::timeout(Duration::from_secs(10), st.wait_for(|s| s.state == PrinterState::Printing))
            .await
            .unwrap()
            .unwrap();
        match link.pause().await {
            Err(PrinterError::Refused { message, .. }) => {
                assert!(message.contains("409") && message.contains("neither printing nor paused"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        link.stop().await;
    }

    #[tokio::test]
    async fn an_answer_over_the_cap_is_refused_not_read() {
        let huge = "x".repeat(rest::MAX_ANSWER + 10);
        let app = printing().route("/api/settings", get(move || async move { huge.clone() }));
        let app = app.route("/api/version", get(|| async { "{}" }));
        let url = serve(app).await;
        let rest = Rest::new(url::Url::parse(&format!("{url}/")).unwrap(), crate::secret::Secret::new("k"), Duration::from_secs(5));
        assert!(matches!(rest.get("api/settings").await, Err(RestError::TooLarge)));
        assert!(rest.get("api/version").await.is_ok());
    }
}
