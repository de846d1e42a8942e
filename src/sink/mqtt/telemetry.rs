//! What a printer's view and its watch's events become on the broker.
//!
//! State ([`view_messages`]) is retained: a dashboard, a script or Home Assistant that
//! subscribes later gets the current picture at once. Each value has its own small topic
//! (for `mosquitto_sub`, Home Assistant sensors, Node-RED) and `P/<printer>/state` has
//! them all as one JSON object. Events ([`event_json`]) are not retained: a print that
//! started an hour ago is not news to a client that connects now.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::queue::Message;
use super::topics::Topics;
use crate::printer::JobOutcome;
use crate::watch::view::{Decision, PrinterView, WatchPhase};
use crate::watch::{Action, WatchEvent};

/// A time as RFC 3339 in UTC with milliseconds (what Home Assistant's timestamps take).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn phase_str(p: WatchPhase) -> &'static str {
    match p {
        WatchPhase::Offline => "offline",
        WatchPhase::Idle => "idle",
        WatchPhase::Printing => "printing",
        WatchPhase::Paused => "paused",
    }
}

/// The print's last decision is a warning or a pause, and the print is still on.
pub fn failing(v: &PrinterView) -> bool {
    matches!(v.phase, WatchPhase::Printing | WatchPhase::Paused)
        && v.last_decision.as_ref().is_some_and(|d| matches!(d.decision, Decision::Warn | Decision::Pause))
}

/// Whole minutes of snooze left at `now` (rounded up; 0: not snoozed).
pub fn snooze_minutes(v: &PrinterView, now: SystemTime) -> u64 {
    match v.snoozed_until.and_then(|t| t.duration_since(now).ok()) {
        Some(left) if !left.is_zero() => left.as_secs().div_ceil(60).max(1),
        _ => 0,
    }
}

fn num(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{:.4}", v),
        _ => "null".into(),
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "ON" } else { "OFF" }
}

/// The decision as `P/<printer>/decision` carries it.
pub fn decision_json(v: &PrinterView) -> Value {
    match &v.last_decision {
        Some(d) => json!({"decision": d.decision.as_str(), "at": rfc3339(d.at), "p": d.p}),
        None => json!({"decision": "none", "at": null, "p": null}),
    }
}

/// The whole view as `P/<printer>/state` carries it.
pub fn state_json(v: &PrinterView, outbox: Option<u64>, now: SystemTime) -> Value {
    json!({
        "printer": v.printer,
        "phase": phase_str(v.phase),
        "link": if v.phase == WatchPhase::Offline { "offline" } else { "online" },
        "offline_reason": v.offline_reason,
        "file": v.file,
        "job": v.job,
        "progress": v.progress,
        "frame": v.frame_num,
        "p": v.p,
        "ewm": v.ewm,
        "normalized_p": v.normalized_p,
        "decision": decision_json(v),
        "failing": failing(v),
        "acted": v.acted,
        "watching": v.watching,
        "snoozed_until": v.snoozed_until.map(rfc3339),
        "snooze_minutes": snooze_minutes(v, now),
        "camera_error": v.camera_error,
        "outbox": outbox,
    })
}

/// Every retained state message of one printer (the frame is published on its own).
pub fn view_messages(t: &Topics, slug: &str, v: &PrinterView, outbox: Option<u64>, now: SystemTime) -> Vec<Message> {
    let m = |leaf: &str, payload: String| Message::retained(t.leaf(slug, leaf), payload);
    vec![
        m("state", state_json(v, outbox, now).to_string()),
        m("link", if v.phase == WatchPhase::Offline { "offline" } else { "online" }.into()),
        m("phase", phase_str(v.phase).into()),
        m("file", v.file.clone().unwrap_or_default()),
        m("p", num(v.p)),
        m("ewm", num(v.ewm)),
        m("normalized_p", num(v.normalized_p)),
        m("decision", decision_json(v).to_string()),
        m("failing", on_off(failing(v)).into()),
        m("watching", on_off(v.watching).into()),
        m("snooze", snooze_minutes(v, now).to_string()),
    ]
}

fn action_word(a: Action) -> &'static str {
    a.as_str()
}

/// An event as the JSON of `P/<printer>/event`; `None` for events that are state, not news
/// (scores: see `P/<printer>/state`). Returns the printer's name with it.
pub fn event_json(ev: &WatchEvent, now: SystemTime, since: impl Fn(std::time::Instant) -> Duration) -> Option<(String, Value)> {
    let at = rfc3339(now);
    let (printer, body) = match ev {
        WatchEvent::PrintStarted { printer, job, file, continued } => (
            printer,
            json!({"event": "print_started", "file": file, "job": job, "continued": continued}),
        ),
        WatchEvent::PrintFinished { printer, job, outcome } => {
            let (result, reason) = match outcome {
                JobOutcome::Completed => ("completed", None),
                JobOutcome::Cancelled => ("cancelled", None),
                JobOutcome::Failed(why) => ("failed", Some(why.clone())),
            };
            (printer, json!({"event": "print_finished", "job": job, "outcome": result, "reason": reason}))
        }
        WatchEvent::Warned { printer, p, frame } => {
            (printer, json!({"event": "warning", "p": p, "frame": frame.is_some()}))
        }
        WatchEvent::Acting { printer, action, decided, .. } => {
            let event = match action {
                Action::Notify => "failure_reported".to_string(),
                a => format!("{}_requested", action_word(*a)),
            };
            (printer, json!({"event": event, "action": action_word(*action), "since_decision_ms": since(*decided).as_secs_f64() * 1000.0}))
        }
        WatchEvent::Acted { printer, action, result, decided, done } => {
            if *action == Action::Notify {
                return None;
            }
            let event = match result {
                Ok(()) => format!("{}_confirmed", action_word(*action)),
                Err(_) => format!("{}_failed", action_word(*action)),
            };
            (
                printer,
                json!({
                    "event": event,
                    "action": action_word(*action),
                    "error": result.as_ref().err(),
                    "decision_to_done_ms": done.saturating_duration_since(*decided).as_secs_f64() * 1000.0,
                }),
            )
        }
        WatchEvent::CameraFailed { printer, message } => (printer, json!({"event": "camera_lost", "message": message})),
        WatchEvent::CameraBack { printer } => (printer, json!({"event": "camera_back"})),
        WatchEvent::Scored { .. } | WatchEvent::FrameSaved { .. } | WatchEvent::FrameFailed { .. } => return None,
    };
    let mut body = body;
    body["printer"] = json!(printer);
    body["at"] = json!(at);
    Some((printer.clone(), body))
}

/// An event the sink derives from view changes (the printer link going or coming back) or
/// from a command's answer.
pub fn derived_event(printer: &str, event: &str, extra: Value, now: SystemTime) -> Value {
    let mut body = json!({"event": event, "printer": printer, "at": rfc3339(now)});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::view::LastDecision;

    #[test]
    fn a_view_becomes_retained_topics() {
        let t = Topics::new("printvigil/pi", "homeassistant");
        let now = SystemTime::now();
        let mut v = PrinterView::new("Voron");
        v.phase = WatchPhase::Printing;
        v.file = Some("benchy.gcode".into());
        v.p = Some(0.5);
        v.ewm = Some(0.25);
        v.normalized_p = Some(1.5);
        v.last_decision = Some(LastDecision { decision: Decision::Warn, at: now, p: 0.5 });
        v.snoozed_until = Some(now + Duration::from_secs(61));
        let msgs = view_messages(&t, "voron", &v, Some(3), now);
        let get = |leaf: &str| {
            let m = msgs.iter().find(|m| m.topic == format!("printvigil/pi/voron/{leaf}")).unwrap();
            assert!(m.retain);
            String::from_utf8(m.payload.clone()).unwrap()
        };
        assert_eq!(get("phase"), "printing");
        assert_eq!(get("failing"), "ON");
        assert_eq!(get("p"), "0.5000");
        assert_eq!(get("snooze"), "2");
        assert_eq!(get("link"), "online");
        let state: Value = serde_json::from_str(&get("state")).unwrap();
        assert_eq!(state["file"], "benchy.gcode");
        assert_eq!(state["outbox"], 3);
        assert_eq!(state["decision"]["decision"], "warn");
        v.phase = WatchPhase::Idle;
        v.p = None;
        let msgs = view_messages(&t, "voron", &v, None, now);
        let p = msgs.iter().find(|m| m.topic.ends_with("/p")).unwrap();
        assert_eq!(p.payload, b"null");
        let f = msgs.iter().find(|m| m.topic.ends_with("/failing")).unwrap();
        assert_eq!(f.payload, b"OFF", "no longer failing once the print ended");
    }

    #[test]
    fn events_name_what_happened() {
        let now = SystemTime::now();
        let i = std::time::Instant::now();
        let since = |_| Duration::from_millis(3);
        let (p, j) = event_json(&WatchEvent::Acting { printer: "v".into(), action: Action::Pause, decided: i, requested: i }, now, since).unwrap();
        assert_eq!((p.as_str(), j["event"].as_str()), ("v", Some("pause_requested")));
        let (_, j) = event_json(&WatchEvent::Acted { printer: "v".into(), action: Action::Pause, result: Err("no".into()), decided: i, done: i }, now, since).unwrap();
        assert_eq!(j["event"], "pause_failed");
        assert_eq!(j["error"], "no");
        assert!(event_json(&WatchEvent::CameraBack { printer: "v".into() }, now, since).is_some());
        let timing = crate::watch::FrameTiming { grabbed: i, age: Duration::ZERO, infer: Duration::ZERO, latency: Duration::ZERO, urgent: false };
        let frame = std::sync::Arc::new(crate::watch::ScoredFrame { jpeg: Default::default(), detections: vec![] });
        let s = WatchEvent::Scored { printer: "v".into(), frame_num: 1, p: 0.0, ewm: 0.0, normalized_p: 0.0, warn: false, pause: false, timing, frame };
        assert!(event_json(&s, now, since).is_none());
    }
}
