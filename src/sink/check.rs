//! The sinks' part of `printvigil check`, and `printvigil notify test`.
//!
//! `check` connects to the MQTT broker once as the daemon would (same credentials and TLS,
//! its own client id and no last will, so a running daemon is not disturbed) and says
//! whether the broker took it, with the fix when not. Notification entries are listed,
//! not used: `printvigil notify test` sends each one a test message (with a frame) and
//! says what its service answered.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::mqtt::client::{self, Link};
use super::notify::deliver::{self, Delivery, Frame, Job};
use super::notify::{Alert, AlertKind, NotifyConfig};
use crate::config::Config;
use crate::server::check::Line;

/// How long the broker gets to answer.
const BROKER_WAIT: Duration = Duration::from_secs(12);

/// A frame for test messages (one of the demo's).
const TEST_FRAME: &[u8] = include_bytes!("../../models/frames/08-failing.jpg");

pub async fn run(config: &Config) -> Vec<Line> {
    let mut out = Vec::new();
    if let Some(cfg) = &config.mqtt {
        out.push(broker_line(cfg).await);
    }
    for (i, n) in config.notify.iter().enumerate() {
        let events: Vec<&str> = n.events.iter().map(|e| e.as_str()).collect();
        out.push(Line::ok(&format!("notify[{i}] {}", n.label()), format!("gets {}; `printvigil notify test` sends it a test message", events.join(", "))));
    }
    out
}

async fn broker_line(cfg: &super::mqtt::MqttConfig) -> Line {
    let host = crate::server::hostname();
    let what = "MQTT broker";
    let where_ = cfg.broker().map(|b| format!("{}:{}", b.host, b.port)).unwrap_or_default();
    let (stop_tx, stop) = watch::channel(false);
    let id = format!("{}-check", cfg.client_id_for(&host));
    let conn = match client::connect(cfg, &id, None, stop) {
        Ok(c) => c,
        Err(e) => return Line::fail(what, e.to_string(), "fix the key named above"),
    };
    let mut link = conn.link.clone();
    let result = tokio::time::timeout(BROKER_WAIT, link.wait_for(|l| *l != Link::Connecting)).await;
    let line = match result.ok().and_then(|r| r.ok()).map(|l| l.clone()) {
        Some(Link::Up(_)) => {
            let tls = if cfg.broker().is_ok_and(|b| b.tls) { ", TLS verified" } else { "" };
            let _ = conn.client.try_disconnect();
            Line::ok(what, format!("{where_} accepted printvigil{tls}; topics under {}", cfg.prefix(&host)))
        }
        Some(Link::Down(why)) => Line::fail(what, why, "see the reason: the broker's address (mqtt.url), its credentials, its CA (mqtt.ca_file)"),
        _ => Line::fail(what, format!("no answer from {where_} within {} s", BROKER_WAIT.as_secs()), "check mqtt.url and that the broker runs and is reachable from this host"),
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = stop_tx.send(true);
    conn.driver.abort();
    line
}

/// Sends every entry a test message with a frame; one line per entry.
pub async fn test_notifications(entries: &[NotifyConfig]) -> Vec<Line> {
    let host = crate::server::hostname();
    let http = match super::notify::http_client() {
        Ok(h) => h,
        Err(e) => return vec![Line::fail("notify", e.to_string(), "")],
    };
    let mut out = Vec::new();
    for (i, cfg) in entries.iter().enumerate() {
        let alert = Alert {
            kind: AlertKind::Finished,
            event: "test",
            printer: "test".into(),
            file: None,
            title: "printvigil: test message".into(),
            text: format!("a test message from printvigil on {host}: this entry works"),
            p: None,
            score: None,
            frame: None,
            at: SystemTime::now(),
            host: host.clone(),
            held_back: 0,
        };
        let frame = (cfg.frame == super::notify::config::FrameMode::Attach)
            .then(|| Arc::new(Frame { jpeg: TEST_FRAME.to_vec(), name: "printvigil-test.jpg".into() }));
        let job = Job { alert, frame, frame_url: None };
        let what = format!("notify[{i}] {}", cfg.label());
        let mut one = cfg.clone();
        one.attempts = one.attempts.min(2);
        out.push(match deliver::deliver(super::notify::service(cfg).as_ref(), &http, &one, &job).await {
            Delivery::Sent { .. } => Line::ok(&what, "test message sent"),
            Delivery::Failed(why) | Delivery::Gone(why) => Line::fail(&what, why, "check this entry's url, token and chat_id"),
        });
    }
    out
}
