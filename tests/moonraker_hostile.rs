//! The Moonraker link against peers that misbehave on purpose, written here: a websocket
//! server on 127.0.0.1 (tokio-tungstenite's server side) that answers like Moonraker and
//! then floods notifications, drops the connection as soon as the link is ready, or insists
//! on an API key. No Python peers needed.
//!
//! Figures (RSS under a flood, reconnects and log lines in a storm) are printed; see them
//! with `cargo test --test moonraker_hostile -- --nocapture`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use printvigil::printer::moonraker::{MoonrakerConfig, MoonrakerLink};
use printvigil::printer::{JobOutcome, PrinterEvent, PrinterLink, PrinterState};
use printvigil::secret::Secret;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tracing_subscriber::layer::SubscriberExt;

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// One test at a time: RSS is the whole process's, and tracing's per-thread log capture
/// misses events when another thread registers the same call sites at the same moment.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------
// The peer

/// A websocket server posing as Moonraker; `serve` runs one connection.
struct Peer {
    url: String,
    /// When each connection was accepted.
    connects: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Peer {
    // The handshake callback's error type is tungstenite's.
    #[allow(clippy::result_large_err)]
    async fn start<F, Fut>(api_key: Option<String>, serve: F) -> Peer
    where
        F: Fn(Ws) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connects = Arc::new(Mutex::new(Vec::new()));
        let seen = connects.clone();
        let serve = Arc::new(serve);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                seen.lock().unwrap().push(Instant::now());
                let key = api_key.clone();
                let serve = serve.clone();
                tokio::spawn(async move {
                    let check = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                        let given = req.headers().get("x-api-key").and_then(|v| v.to_str().ok());
                        match &key {
                            Some(k) if given != Some(k.as_str()) => {
                                let mut e = ErrorResponse::new(Some("Unauthorized".into()));
                                *e.status_mut() = StatusCode::UNAUTHORIZED;
                                Err(e)
                            }
                            _ => Ok(resp),
                        }
                    };
                    if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, check).await {
                        serve(ws).await;
                    }
                });
            }
        });
        Peer { url, connects, task }
    }

    fn connects(&self) -> Vec<Instant> {
        self.connects.lock().unwrap().clone()
    }
}

/// The next request from the link: (id, method). `None` when the connection ended.
async fn request(ws: &mut Ws) -> Option<(u64, String)> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).ok()?;
                return Some((v["id"].as_u64()?, v["method"].as_str()?.to_string()));
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Moonraker's answer to `method` on a ready printer with the given job history.
fn answer(method: &str, jobs: &Value) -> Value {
    match method {
        "server.connection.identify" => json!({"connection_id": 1}),
        "server.info" => json!({"klippy_state": "ready", "klippy_connected": true}),
        "printer.info" => json!({"state": "ready", "state_message": "Printer is ready"}),
        "printer.objects.list" => json!({"objects": [
            "webhooks", "print_stats", "virtual_sdcard", "pause_resume", "extruder", "heater_bed"
        ]}),
        "printer.objects.subscribe" => json!({"eventtime": 1.0, "status": {
            "print_stats": {"state": "standby", "filename": "", "message": ""},
            "virtual_sdcard": {"progress": 0.0, "is_active": false, "file_position": 0},
            "extruder": {"temperature": 20.0, "target": 0.0},
            "heater_bed": {"temperature": 20.0, "target": 0.0},
            "webhooks": {"state": "ready", "state_message": "Printer is ready"}
        }}),
        "server.webcams.list" => json!({"webcams": []}),
        "server.history.list" => json!({"count": jobs.as_array().map_or(0, Vec::len), "jobs": jobs}),
        _ => json!({}),
    }
}

async fn reply(ws: &mut Ws, id: u64, result: Value) -> bool {
    ws.send(Message::text(json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())).await.is_ok()
}

fn notification(method: &str, params: Value) -> Message {
    Message::text(json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string())
}

/// Answers requests like a ready Moonraker until `stop_after` is asked (returns its id)
/// or the connection ends (`None`).
async fn answer_until(ws: &mut Ws, stop_after: &str, jobs: &Value) -> Option<u64> {
    loop {
        let (id, method) = request(ws).await?;
        if method == stop_after {
            return Some(id);
        }
        if !reply(ws, id, answer(&method, jobs)).await {
            return None;
        }
    }
}

fn job(status: &str) -> Value {
    json!({"job_id": "00000A", "filename": "flood.gcode", "status": status, "start_time": 1000.0})
}

// ---------------------------------------------------------------------------------------
// Memory

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn link(url: &str, name: &str) -> Arc<MoonrakerLink> {
    MoonrakerLink::start_concrete(MoonrakerConfig::new(name, url), "hostile")
}

async fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn record(link: &dyn PrinterLink) -> Arc<Mutex<Vec<PrinterEvent>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut rx = link.events();
    let l = log.clone();
    tokio::spawn(async move {
        while let Ok(e) = rx.recv().await {
            l.lock().unwrap().push(e);
        }
    });
    log
}

// ---------------------------------------------------------------------------------------
// A flood of status updates while the link waits for an answer

const FLOOD: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_flood_while_a_request_waits_keeps_memory_bounded_and_the_status_right() {
    let _serial = SERIAL.lock().await;
    let sent = Arc::new(AtomicU64::new(0));
    let flooding = Arc::new(AtomicBool::new(false));
    // The print ends when the test has checked the status during it.
    let end_print = Arc::new(tokio::sync::Notify::new());
    let (s, f, e) = (sent.clone(), flooding.clone(), end_print.clone());
    let peer = Peer::start(None, move |mut ws| {
        let (sent, flooding, end_print) = (s.clone(), f.clone(), e.clone());
        async move {
            // The whole Moonraker sequence; the first history read finds no jobs.
            let none = json!([]);
            let Some(id) = answer_until(&mut ws, "server.history.list", &none).await else { return };
            reply(&mut ws, id, answer("server.history.list", &none)).await;
            // A print starts: the link reads the history again, and that answer waits
            // while the peer floods status updates as fast as the socket takes them.
            let printing = json!([{"print_stats": {"state": "printing", "filename": "flood.gcode"}}, 1.0]);
            ws.send(notification("notify_status_update", printing)).await.ok();
            let Some(held) = answer_until(&mut ws, "server.history.list", &none).await else { return };
            flooding.store(true, Ordering::SeqCst);
            let start = Instant::now();
            let mut n = 0u64;
            let mut added = false;
            while start.elapsed() < FLOOD {
                for _ in 0..64 {
                    n += 1;
                    let delta = json!([{
                        "extruder": {"temperature": 200.0 + (n % 100) as f64 / 10.0, "target": 210.0},
                        "heater_bed": {"temperature": 60.0 + (n % 10) as f64 / 10.0, "target": 60.0},
                        "virtual_sdcard": {"progress": (n % 1000) as f64 / 1000.0, "file_position": n},
                        "print_stats": {"print_duration": n as f64 / 10.0,
                                        "info": {"current_layer": n % 500, "total_layer": 500}},
                    }, n as f64]);
                    if ws.feed(notification("notify_status_update", delta)).await.is_err() {
                        return;
                    }
                }
                if !added && start.elapsed() > FLOOD / 2 {
                    added = true;
                    let p = json!([{"action": "added", "job": job("in_progress")}]);
                    ws.feed(notification("notify_history_changed", p)).await.ok();
                }
                if ws.flush().await.is_err() {
                    return;
                }
                sent.store(n, Ordering::SeqCst);
            }
            // The last word: these values must be what the link shows in the end.
            let last = json!([{
                "extruder": {"temperature": 215.5, "target": 215.0},
                "virtual_sdcard": {"progress": 0.4242},
            }, 9.0]);
            ws.send(notification("notify_status_update", last)).await.ok();
            flooding.store(false, Ordering::SeqCst);
            let running = json!([job("in_progress")]);
            reply(&mut ws, held, answer("server.history.list", &running)).await;
            // The print ends.
            end_print.notified().await;
            let complete = json!([{"print_stats": {"state": "complete"}}, 10.0]);
            ws.send(notification("notify_status_update", complete)).await.ok();
            let p = json!([{"action": "finished", "job": job("completed")}]);
            ws.send(notification("notify_history_changed", p)).await.ok();
            let done = json!([job("completed")]);
            while let Some(id) = answer_until(&mut ws, "server.history.list", &done).await {
                reply(&mut ws, id, answer("server.history.list", &done)).await;
            }
        }
    })
    .await;

    let idle = rss_kib();
    let link = link(&peer.url, "flood");
    let events = record(link.as_ref());
    wait_for("the flood", Duration::from_secs(30), || flooding.load(Ordering::SeqCst)).await;
    let mut peak = idle;
    while flooding.load(Ordering::SeqCst) {
        peak = peak.max(rss_kib());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown_mib = (peak.saturating_sub(idle)) as f64 / 1024.0;
    let n = sent.load(Ordering::SeqCst);
    eprintln!(
        "FIGURE moonraker flood: {n} notify_status_update in {:.0} s while a request waited: RSS {:.1} MiB -> peak {:.1} MiB (+{grown_mib:.1} MiB)",
        FLOOD.as_secs_f64(),
        idle as f64 / 1024.0,
        peak as f64 / 1024.0
    );

    // The merged status ends up as the peer's last word.
    let mut status = link.status();
    let s = tokio::time::timeout(
        Duration::from_secs(60),
        status.wait_for(|s| {
            s.progress == Some(0.4242)
                && s.temperatures.iter().any(|t| t.name == "extruder" && t.actual == 215.5)
        }),
    )
    .await
    .expect("the last status values reach the link")
    .unwrap()
    .clone();
    assert_eq!(s.state, PrinterState::Printing);
    assert_eq!(s.file.as_deref(), Some("flood.gcode"));
    end_print.notify_one();
    // The print's start and end are each reported once, flood or not.
    wait_for("the print's end", Duration::from_secs(60), || {
        events.lock().unwrap().iter().any(|e| matches!(e, PrinterEvent::Finished { .. }))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ev = events.lock().unwrap().clone();
    let edges: Vec<String> = ev
        .iter()
        .filter_map(|e| match e {
            PrinterEvent::PrintStarted { file, .. } => Some(format!("start {file}")),
            PrinterEvent::Finished { file, outcome, .. } => Some(format!("end {file} {outcome:?}")),
            _ => None,
        })
        .collect();
    assert_eq!(edges, ["start flood.gcode", format!("end flood.gcode {:?}", JobOutcome::Completed).as_str()]);
    assert!(n > 10_000, "the peer flooded only {n} messages: no flood, nothing shown");
    assert!(grown_mib < 50.0, "RSS grew {grown_mib:.1} MiB under the flood");
    link.stop().await;
}

// ---------------------------------------------------------------------------------------
// Log capture (what a subscriber at `PRINTVIGIL_LOG=trace` would write)

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A subscriber for this thread only (the tests run on a current-thread runtime, so the
/// link's tasks log through it), filtered as `logging::init` filters with
/// `PRINTVIGIL_LOG=<filter>`.
fn capture(filter: &str) -> (Capture, tracing::subscriber::DefaultGuard) {
    // Dependencies log through the `log` crate: forward it to tracing as `logging::init` does.
    let _ = tracing_log::LogTracer::init();
    let cap = Capture::default();
    let writer = cap.clone();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new(filter))
        .with(printvigil::logging::secrets_guard())
        .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(move || writer.clone()));
    (cap, tracing::subscriber::set_default(subscriber))
}

// ---------------------------------------------------------------------------------------
// A Moonraker that reaches ready and drops, again and again

const STORM: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_peer_that_drops_once_ready_gets_growing_backoff_and_few_log_lines() {
    let _serial = SERIAL.lock().await;
    let (logs, _guard) = capture("info");
    let peer = Peer::start(None, |mut ws| async move {
        let none = json!([]);
        if let Some(id) = answer_until(&mut ws, "server.history.list", &none).await {
            reply(&mut ws, id, answer("server.history.list", &none)).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Dropping `ws` drops the connection.
    })
    .await;
    let link = link(&peer.url, "storm");
    let events = record(link.as_ref());
    tokio::time::sleep(STORM).await;
    link.stop().await;

    let connects = peer.connects();
    let gaps: Vec<f64> = connects.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    let text = logs.text();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let onlines = events.lock().unwrap().iter().filter(|e| matches!(e, PrinterEvent::Online)).count();
    let offlines =
        events.lock().unwrap().iter().filter(|e| matches!(e, PrinterEvent::Offline { .. })).count();
    eprintln!(
        "FIGURE moonraker ready-then-drop peer, {} s: {} connections, {} log lines at info, {onlines} Online and {offlines} Offline events; gaps between connections (s): {:.2?}",
        STORM.as_secs(),
        connects.len(),
        lines.len(),
        gaps
    );
    eprintln!("{text}");
    assert!(onlines >= 2, "the link must really have reached ready more than once");
    assert!(connects.len() <= 12, "{} connections in {} s", connects.len(), STORM.as_secs());
    assert!(gaps.first().is_some_and(|g| *g < 2.0), "the first retry comes soon: {gaps:?}");
    assert!(gaps.last().is_some_and(|g| *g >= 4.0), "the backoff grows: {gaps:?}");
    assert!(lines.len() <= 10, "{} log lines:\n{text}", lines.len());
    // A watcher (which logs each Online/Offline) sees the flapping once, not per round.
    assert!(onlines + offlines <= 6, "{onlines} Online and {offlines} Offline events");
}

// ---------------------------------------------------------------------------------------
// The API key at `PRINTVIGIL_LOG=trace`

#[tokio::test]
async fn the_api_key_never_reaches_a_log_line_even_at_trace() {
    let _serial = SERIAL.lock().await;
    let key = "5e3b1f0c9a7d4e2b8c6a0f1d3e5b7c9a".to_string();
    let (logs, _guard) = capture("trace");
    let peer = Peer::start(Some(key.clone()), |mut ws| async move {
        let none = json!([]);
        while let Some(id) = answer_until(&mut ws, "server.history.list", &none).await {
            reply(&mut ws, id, answer("server.history.list", &none)).await;
        }
    })
    .await;
    let mut cfg = MoonrakerConfig::new("keyed", &peer.url);
    cfg.api_key = Some(Secret::new(&key));
    let link = MoonrakerLink::start_concrete(cfg, "hostile");
    let mut status = link.status();
    tokio::time::timeout(Duration::from_secs(30), status.wait_for(|s| s.state == PrinterState::Idle))
        .await
        .expect("the link gets in with the key")
        .unwrap();
    link.stop().await;
    drop(peer);
    let text = logs.text();
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    eprintln!("FIGURE moonraker at trace: {} log lines captured", text.lines().count());
    assert!(text.contains("event=Online"), "the capture works: {text}");
    for (form, needle) in [("plain", key.as_str()), ("hex", hex.as_str()), ("half", &key[..16])] {
        let hits: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
        assert!(hits.is_empty(), "the API key ({form}) is in {} log lines, e.g.:\n{}", hits.len(), hits[0]);
    }
}

// ---------------------------------------------------------------------------------------
// One message over the size cap

#[tokio::test]
async fn a_message_over_the_cap_ends_the_connection_and_the_link_reconnects() {
    let _serial = SERIAL.lock().await;
    let (logs, _guard) = capture("info");
    let peer = Peer::start(None, |mut ws| async move {
        let none = json!([]);
        let Some(id) = answer_until(&mut ws, "server.history.list", &none).await else { return };
        reply(&mut ws, id, answer("server.history.list", &none)).await;
        // A status update with a message just over the cap.
        let huge = "x".repeat(printvigil::printer::moonraker::MAX_MESSAGE);
        ws.send(notification("notify_status_update", json!([{"print_stats": {"message": huge}}]))).await.ok();
        while answer_until(&mut ws, "never asked", &none).await.is_some() {}
    })
    .await;
    let link = link(&peer.url, "huge");
    wait_for("a reconnect", Duration::from_secs(30), || peer.connects().len() >= 2).await;
    link.stop().await;
    let text = logs.text();
    assert!(text.contains("over the 4 MiB limit"), "{text}");
}
