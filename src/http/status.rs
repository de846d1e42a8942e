//! The status page: one static page (`page/`, plain HTML, CSS and JavaScript embedded in
//! the binary, no build step, no outside resources) and the JSON it polls.
//!
//! `/api/status` gives each printer's view (from the board) with its recent `p` and score
//! (kept here from the scored-frame events, a few hundred points per printer), the recent
//! warnings and pauses with their saved frames, the scheduler's load and the server
//! mirror's state. `/api/printers/<name>/frame.jpg` is the printer's latest scored frame
//! with its detections drawn (drawn when asked, not per frame). The two controls go to the
//! watch through the board as commands: detection on again for the current print, and
//! snoozing alerts.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::App;
use crate::watch::control::Command;
use crate::watch::{ScoredFrame, WatchEvent};

/// Points kept per printer for the chart.
const HISTORY: usize = 360;
/// Warnings and pauses kept for the list.
const RECENT: usize = 50;

const PAGE: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

/// One scored frame on the chart.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Unix seconds.
    pub t: f64,
    pub p: f64,
    pub score: f64,
    pub frame: u64,
}

/// A warning, a pause decision or an action, for the list.
#[derive(Debug, Clone, Serialize)]
pub struct Happening {
    pub t: f64,
    pub printer: String,
    /// `warn`, `pause`, `paused`, `cancelled`, `notified`, `action failed`.
    pub what: String,
    pub p: Option<f64>,
    /// The saved frame's file name (under the printer's frames).
    pub frame: Option<String>,
}

#[derive(Default)]
struct Kept {
    history: BTreeMap<String, VecDeque<Point>>,
    latest: BTreeMap<String, Arc<ScoredFrame>>,
    recent: VecDeque<Happening>,
}

/// What the page shows that the board does not keep.
#[derive(Default)]
pub struct Status {
    kept: Mutex<Kept>,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn file_name(p: &std::path::Path) -> Option<String> {
    p.file_name().map(|n| n.to_string_lossy().into_owned())
}

impl Status {
    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps what the page needs of a watch event.
    pub fn observe(&self, ev: &WatchEvent) {
        let now = unix(SystemTime::now());
        let mut k = self.lock();
        let note = |k: &mut Kept, h: Happening| {
            if k.recent.len() >= RECENT {
                k.recent.pop_front();
            }
            k.recent.push_back(h);
        };
        match ev {
            WatchEvent::PrintStarted { printer, continued: false, .. } => {
                k.history.remove(printer);
            }
            WatchEvent::Scored { printer, frame_num, p, normalized_p, frame, .. } => {
                let h = k.history.entry(printer.clone()).or_default();
                if h.len() >= HISTORY {
                    h.pop_front();
                }
                h.push_back(Point { t: now, p: *p, score: *normalized_p, frame: *frame_num });
                k.latest.insert(printer.clone(), frame.clone());
            }
            WatchEvent::Warned { printer, p, frame } => {
                note(&mut k, Happening { t: now, printer: printer.clone(), what: "warn".into(), p: Some(*p), frame: frame.as_deref().and_then(file_name) });
            }
            WatchEvent::FrameSaved { printer, path } => {
                note(&mut k, Happening { t: now, printer: printer.clone(), what: "pause".into(), p: None, frame: file_name(path) });
            }
            WatchEvent::Acted { printer, action, result, .. } => {
                let what = match (result, action) {
                    (Err(_), _) => "action failed",
                    (Ok(()), crate::printer::Action::Pause) => "paused",
                    (Ok(()), crate::printer::Action::Cancel) => "cancelled",
                    (Ok(()), crate::printer::Action::Notify) => "notified",
                };
                note(&mut k, Happening { t: now, printer: printer.clone(), what: what.into(), p: None, frame: None });
            }
            _ => {}
        }
    }
}

/// The JSON the page polls.
#[derive(Serialize)]
struct StatusJson {
    now: f64,
    cadence_secs: f64,
    printers: Vec<PrinterJson>,
    recent: Vec<Happening>,
    scheduler: SchedulerJson,
    mirror: Option<MirrorJson>,
}

#[derive(Serialize)]
struct PrinterJson {
    #[serde(flatten)]
    view: crate::watch::view::PrinterView,
    /// The saved decision frame's file name, if any.
    last_frame_name: Option<String>,
    /// A scored frame can be fetched (`frame.jpg`).
    has_frame: bool,
    history: Vec<Point>,
}

#[derive(Serialize)]
struct SchedulerJson {
    sessions: usize,
    queued: usize,
    load: f64,
    stretch: f64,
    frame_ms: Option<f64>,
    behind: Option<String>,
}

#[derive(Serialize)]
struct MirrorJson {
    outbox_pending: Option<u64>,
    oldest_event_age_secs: Option<f64>,
    events_sent: u64,
    send_failures: u64,
    health: Option<String>,
}

pub(super) async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

pub(super) async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response()
}

pub(super) async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

pub(super) async fn api_status(State(app): State<Arc<App>>) -> Response {
    let s = &app.sources;
    let kept = app.status.lock();
    let printers = s
        .board
        .snapshot()
        .into_iter()
        .map(|view| PrinterJson {
            last_frame_name: view.last_frame.as_deref().and_then(file_name),
            has_frame: kept.latest.contains_key(&view.printer),
            history: kept.history.get(&view.printer).map(|h| h.iter().cloned().collect()).unwrap_or_default(),
            view,
        })
        .collect();
    let recent = kept.recent.iter().rev().cloned().collect();
    drop(kept);
    let load = s.scheduler.load();
    let mirror = s.mirror.as_ref().map(|m| {
        let st = m.stats();
        MirrorJson {
            outbox_pending: m.outbox().pending().ok(),
            oldest_event_age_secs: m
                .outbox()
                .oldest_pending_ms()
                .ok()
                .flatten()
                .map(|t| ((crate::server::outbox::now_ms() - t).max(0) as f64) / 1000.0),
            events_sent: st.events_sent.load(std::sync::atomic::Ordering::Relaxed),
            send_failures: st.send_failures.load(std::sync::atomic::Ordering::Relaxed),
            health: m.health(),
        }
    });
    Json(StatusJson {
        now: unix(SystemTime::now()),
        cadence_secs: s.cadence.as_secs_f64(),
        printers,
        recent,
        scheduler: SchedulerJson {
            sessions: load.workers,
            queued: load.queued,
            load: load.load,
            stretch: load.stretch,
            frame_ms: load.per_frame.map(|d| d.as_secs_f64() * 1000.0),
            behind: load.describe(),
        },
        mirror,
    })
    .into_response()
}

fn jpeg(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "image/jpeg")], bytes).into_response()
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("{what}\n")).into_response()
}

/// The printer's latest scored frame with its detections drawn.
pub(super) async fn latest_frame(State(app): State<Arc<App>>, Path(printer): Path<String>) -> Response {
    let Some(frame) = app.status.lock().latest.get(&printer).cloned() else {
        return not_found("no scored frame for this printer yet");
    };
    let drawn = tokio::task::spawn_blocking(move || {
        let mut img = crate::detector::preprocess::decode_jpeg(&frame.jpeg).map_err(|e| e.to_string())?;
        crate::detector::annotate::draw(&mut img, &frame.detections);
        crate::detector::annotate::encode_jpeg(&img, 80).map_err(|e| e.to_string())
    })
    .await;
    match drawn {
        Ok(Ok(bytes)) => jpeg(bytes),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("the frame could not be drawn: {e}\n")).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "the frame could not be drawn\n").into_response(),
    }
}

/// A saved decision frame: only a plain file name in the printer's frames folder.
pub(super) async fn saved_frame(State(app): State<Arc<App>>, Path((printer, file)): Path<(String, String)>) -> Response {
    let plain = !file.is_empty()
        && file.len() <= 255
        && file.ends_with(".jpg")
        && !file.starts_with('.')
        && file.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !plain || !app.sources.board.printers().contains(&printer) {
        return not_found("no such frame");
    }
    let path = app.sources.frames_root.join(crate::watch::frames::safe_name(&printer)).join(&file);
    match tokio::fs::read(&path).await {
        Ok(bytes) => jpeg(bytes),
        Err(_) => not_found("no such frame (frames are removed when the disk budget is used up)"),
    }
}

/// The page's controls must carry this header (see the module documentation of `http`).
fn from_page(headers: &HeaderMap) -> Option<Response> {
    headers.get("x-printvigil").is_none_or(|v| v != "1")
        .then(|| (StatusCode::FORBIDDEN, "controls need the X-Printvigil: 1 header\n").into_response())
}

async fn send(app: &App, printer: &str, command: Command) -> Response {
    match app.sources.board.command(printer, command).await {
        Ok(_) => Json(serde_json::json!({ "ok": true })).into_response(),
        Err(e) => {
            let code = match e {
                crate::watch::control::CommandError::UnknownPrinter(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::CONFLICT,
            };
            (code, Json(serde_json::json!({ "ok": false, "error": e.to_string() }))).into_response()
        }
    }
}

/// Detection on again for the current print (turning it off is not offered here).
pub(super) async fn resume_watching(State(app): State<Arc<App>>, headers: HeaderMap, Path(printer): Path<String>) -> Response {
    if let Some(refused) = from_page(&headers) {
        return refused;
    }
    send(&app, &printer, Command::Watching(true)).await
}

#[derive(Deserialize)]
pub(super) struct SnoozeBody {
    /// Seconds; 0 ends a snooze.
    secs: u64,
}

pub(super) async fn snooze(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(printer): Path<String>,
    body: Result<Json<SnoozeBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(refused) = from_page(&headers) {
        return refused;
    }
    let Ok(Json(body)) = body else {
        return (StatusCode::BAD_REQUEST, "send {\"secs\": N}\n").into_response();
    };
    send(&app, &printer, Command::Snooze(Duration::from_secs(body.secs))).await
}
