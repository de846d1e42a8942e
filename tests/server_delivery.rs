//! Delivery under faults that used to lose, reorder or wrongly confirm events: answers
//! that are not the API's, a full disk, a frame held across its print's end, a token
//! without a user. Each test prints a `FIGURE` line with what was lost or duplicated.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use printvigil::server::config::{ServerConfig, UploadMode};
use printvigil::server::upload::{FrameScore, solid_jpeg};
use printvigil::server::{DEFAULT_PRINTER, FinishStatus, Mirror};
use support::fake_obico::{self, FakeObico, Settings, audit};

fn cfg(fake: &FakeObico) -> ServerConfig {
    let s = Settings::default();
    ServerConfig {
        url: fake.url(),
        client_id: Some(s.client_id),
        client_secret: Some(s.client_secret),
        printer_name: Some("test-printer".into()),
        upload: UploadMode::Always,
        upload_min_interval_secs: 0.0,
        request_timeout_secs: 2.0,
        backoff_initial_ms: 10,
        backoff_cap_secs: 0.1,
        ..Default::default()
    }
}

/// Log lines of this test (thread-local subscriber: use the current-thread runtime).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let me = self.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || me.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_default(sub)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn wait_until(what: &str, limit: Duration, ok: impl Fn() -> bool) {
    let end = tokio::time::Instant::now() + limit;
    while !ok() {
        assert!(tokio::time::Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTML page in place of the API's JSON (captive portal, wrong base path, SPA fallback,
/// proxy error page), whatever its status, is not a delivery and not a refusal: the event
/// waits, the error names `server.url`, and it is sent once the API answers again.
#[tokio::test]
async fn html_answers_are_retried_not_confirmed_or_dropped() {
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let m = Mirror::open(&cfg(&fake), dir.path()).unwrap();
    let id = m.server_id(DEFAULT_PRINTER).await.unwrap();
    m.spawn();
    let mut jobs = Vec::new();
    let mut wrong = Vec::new();
    for status in [200u16, 400, 404, 403, 502] {
        fake.set_faults(|f| f.html = Some(status));
        let job = format!("job-{status}");
        m.start_print(DEFAULT_PRINTER, &job, &format!("{job}.gcode")).unwrap();
        m.finish_print(DEFAULT_PRINTER, &job, FinishStatus::Success).unwrap();
        jobs.push(job);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let h = m.outbox().history(DEFAULT_PRINTER).unwrap();
        let pending = h.iter().filter(|e| e.2 == "pending").count();
        if pending != 2 {
            wrong.push(format!("HTML {status}: {pending} pending, want 2: {h:?}"));
        }
        // A proxy's 502 says the server behind it is away: nothing to fix in the config.
        if let Some(err) = h.iter().rev().find_map(|e| e.3.clone())
            && status < 500
            && !err.contains("server.url")
        {
            wrong.push(format!("HTML {status}: the error does not point at server.url: {err}"));
        }
        fake.set_faults(|f| f.html = None);
        assert!(m.flush(Duration::from_secs(20)).await);
    }
    let calls = fake.calls();
    let (lost, dup, order) = audit(&calls, id, &jobs);
    let dropped = m.stats().events_dropped.load(std::sync::atomic::Ordering::Relaxed);
    println!("FIGURE html answers (200, 400, 404, 403, 502): events={} lost={lost} duplicated={dup} order_violations={order} dropped={dropped}", jobs.len() * 2);
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!((lost, dup, order, dropped), (0, 0, 0, 0), "{calls:#?}");
    assert_eq!(fake.printers().len(), 1, "an HTML 404 is not the API's 'no such printer'");
}

/// A frame held while the server was away is posted before its print's finish (or dropped
/// with a log line), never after it.
#[tokio::test]
async fn a_held_frame_goes_before_its_finish() {
    let logs = Logs::default();
    let _g = logs.install();
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let m = Mirror::open(&cfg(&fake), dir.path()).unwrap();
    m.spawn();
    m.start_print(DEFAULT_PRINTER, "a", "a.gcode").unwrap();
    assert!(m.flush(Duration::from_secs(20)).await);
    fake.set_down(true).await.unwrap();
    assert!(m.offer_frame(DEFAULT_PRINTER, solid_jpeg(64, 48, [90, 90, 90]), &FrameScore::default()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    m.finish_print(DEFAULT_PRINTER, "a", FinishStatus::Success).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.set_down(false).await.unwrap();
    assert!(m.flush(Duration::from_secs(20)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kinds: Vec<String> = fake.calls().into_iter().map(|c| c.kind).collect();
    let after_finish = logs.count("not currently printing") + logs.count("frame not scored");
    println!("FIGURE frame held over an outage: calls={kinds:?} frames_posted_after_finish={after_finish}");
    assert_eq!(kinds, ["create", "start", "predict", "finish"], "{}", logs.text());
}

/// A full disk mid-print: the events that could not be written are kept in memory, in
/// order, and written as soon as there is room again; nothing is lost or reordered.
#[tokio::test]
async fn a_full_disk_loses_no_event() {
    let logs = Logs::default();
    let _g = logs.install();
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let m = Mirror::open(&cfg(&fake), dir.path()).unwrap();
    let id = m.server_id(DEFAULT_PRINTER).await.unwrap();
    m.spawn();
    // The disk fills up: the database cannot grow by a single page. A long file name needs
    // new pages for sure (a short one might still fit in a half-empty page).
    let pages = m.outbox().set_page_limit(0).unwrap();
    let long = format!("{}.gcode", "x".repeat(20_000));
    m.start_print(DEFAULT_PRINTER, "a", &long).expect("held in memory, not an error");
    m.finish_print(DEFAULT_PRINTER, "a", FinishStatus::Success).expect("held in memory");
    m.start_print(DEFAULT_PRINTER, "a", &long).expect("a repeat is still a no-op");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stuck = m.health();
    assert!(stuck.as_deref().is_some_and(|s| s.contains("outbox") && s.contains("full")), "{stuck:?}");
    assert!(fake.calls().iter().all(|c| c.kind == "create"), "nothing sent out of order: {:?}", fake.calls());
    // Room again.
    m.outbox().set_page_limit(u32::MAX as u64).unwrap();
    assert!(m.flush(Duration::from_secs(20)).await);
    wait_until("the held events", Duration::from_secs(20), || fake.received().finishes == 1).await;
    let calls = fake.calls();
    let (lost, dup, order) = audit(&calls, id, &["a".to_string()]);
    println!("FIGURE disk full mid-print: events=2 lost={lost} duplicated={dup} order_violations={order} (database capped at {pages} pages)");
    assert_eq!((lost, dup, order), (0, 0, 0), "{calls:#?}\n{}", logs.text());
    assert_eq!(m.health(), None);
    assert_eq!(logs.count("cannot be written"), 1, "one line when it starts:\n{}", logs.text());
}

/// A token without a user (stock server, client credentials): found by a probe at start,
/// one ERROR with the fix per state change, events kept, none dropped, the health says so.
#[tokio::test]
async fn a_userless_token_is_found_at_start_and_reported_once() {
    let logs = Logs::default();
    let _g = logs.install();
    let fake = fake_obico::start(Settings { stock: true, ..Default::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let m = Mirror::open(&cfg(&fake), dir.path()).unwrap();
    m.spawn();
    wait_until("the probe's report", Duration::from_secs(10), || logs.count("permission") > 0).await;
    assert!(m.health().is_some_and(|h| h.contains("user")), "{:?}", m.health());
    for j in ["a", "b"] {
        m.start_print(DEFAULT_PRINTER, j, &format!("{j}.gcode")).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        m.finish_print(DEFAULT_PRINTER, j, FinishStatus::Success).unwrap();
        m.offer_frame(DEFAULT_PRINTER, solid_jpeg(64, 48, [90, 90, 90]), &FrameScore::default());
    }
    // Many backoff cycles (cap 0.1 s here; 5 min by default).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lines = logs.count("permission");
    let h = m.outbox().history(DEFAULT_PRINTER).unwrap();
    let dropped = h.iter().filter(|e| e.2 == "dropped").count();
    println!("FIGURE userless token: log lines naming it in 2.9 s with a 0.1 s backoff cap = {lines}; events pending={} dropped={dropped}", h.iter().filter(|e| e.2 == "pending").count());
    assert_eq!(lines, 1, "one ERROR per state change:\n{}", logs.text());
    assert_eq!((h.len(), dropped), (4, 0), "{h:?}");
    assert!(logs.text().contains("printvigil login"), "the fix is named");
}

/// A corrupt outbox does not stop the watches: they start without the mirror, and the file
/// is kept as it was for the user.
#[tokio::test]
async fn a_corrupt_outbox_does_not_stop_detection() {
    let logs = Logs::default();
    let _g = logs.install();
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = printvigil::server::outbox_file(dir.path());
    let junk = b"not a database".repeat(500);
    std::fs::write(&path, &junk).unwrap();
    let mut config = printvigil::config::Config {
        state_dir: dir.path().to_path_buf(),
        server: Some(cfg(&fake)),
        ..Default::default()
    };
    config.detector.model = Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo.onnx"));
    config.detector.intra_threads = 1;
    let parts = printvigil::watch::supervisor::Parts::from_config(&config)
        .await
        .expect("the watches start without the mirror");
    assert!(parts.mirror.is_none());
    assert_eq!(std::fs::read(&path).unwrap(), junk, "kept as it was");
    assert_eq!(logs.count("the server mirror is off"), 1, "{}", logs.text());
}

/// The mirror's log lines name the printer, not its key (`default` when one printer).
#[tokio::test]
async fn log_lines_name_the_printer() {
    let logs = Logs::default();
    let _g = logs.install();
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let m = Mirror::open(&cfg(&fake), dir.path()).unwrap();
    m.set_label(DEFAULT_PRINTER, "voron");
    m.spawn();
    m.start_print(DEFAULT_PRINTER, "a", "a.gcode").unwrap();
    assert!(m.flush(Duration::from_secs(20)).await);
    let text = logs.text();
    assert!(text.contains("printer=voron") && !text.contains("printer=default"), "{text}");
}
