//! End to end with OctoPrint: the real `printvigil run` binary watching real OctoPrint
//! 1.11.8 (its virtual printer), a snapshot camera served by the test, the demo model and
//! the fake Obico server. Failing frames pause the OctoPrint print exactly once; the server
//! gets exactly one start, predicts, and one finish for it.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::daemon::Daemon;
use support::fake_obico::{self, Settings, audit};
use support::octoprint::{API_KEY, OctoPrint, dwell_gcode};
use support::snapcam::{Mode, SnapCam};

const LONG: Duration = Duration::from_secs(60);
const CADENCE: f64 = 0.25;
/// Obico's warm-up: no decision before this frame.
const WARM_UP: u64 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_frames_pause_a_real_octoprint_print_once() {
    let op = OctoPrint::start().await;
    op.connect_printer().await;
    let fake = fake_obico::start(Settings::default()).await;
    let cam = SnapCam::start(Mode::Healthy).await;
    let dir = tempfile::Builder::new().prefix("printvigil-e2e-octoprint-").tempdir().unwrap();
    let model = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/demo.onnx");
    let set = Settings::default();
    let config = format!(
        "state_dir = {:?}\n[detector]\nmodel = {:?}\nintra_threads = 1\n\
         [watch]\ncadence_secs = {CADENCE}\nallow_fast_cadence = true\ncooldown_secs = 0.0\n\
         [server]\nurl = {:?}\nclient_id = {:?}\nclient_secret = {:?}\nprinter_name = \"sim\"\n\
         upload = \"always\"\nupload_min_interval_secs = 0.0\nrequest_timeout_secs = 2.0\n\
         backoff_initial_ms = 100\nbackoff_cap_secs = 1.0\n\
         [[printers]]\nname = \"sim\"\nkind = \"octoprint\"\nurl = {:?}\napi_key = {API_KEY:?}\n\
         camera = {{ kind = \"snapshot\", url = {:?}, timeout_secs = 2 }}\n",
        dir.path().join("state").display().to_string(),
        model.display().to_string(),
        fake.url(),
        set.client_id,
        set.client_secret.expose(),
        op.url(),
        cam.url(),
    );
    let cfg = dir.path().join("printvigil.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut d = Daemon::spawn(&cfg, &dir.path().join("daemon.log"), &[]);
    d.wait_line("watching 1 printer(s): sim", LONG).await;
    d.wait_line("printer online", LONG).await;
    assert!(!d.log_text().contains(API_KEY), "the key must not be logged");

    op.print("failing.gcode", &dwell_gcode(300)).await;
    d.wait_line("print started: failing.gcode", LONG).await;
    // The link's identity for it, from OctoPrint's own record of the file.
    let (_, meta) = op.api("GET", "api/files/local/failing.gcode", None).await;
    let job = format!("local:failing.gcode@{}#0", meta["date"].as_i64().expect("upload date"));
    d.wait_frame(WARM_UP + 1, LONG).await;
    assert_eq!(op.state().await, "Printing", "no pause on healthy frames");
    cam.set(Mode::Failing).await;

    op.wait_state("paused by printvigil", |s| s == "Paused").await;
    let line = d.wait_line("print PAUSED by printvigil", LONG).await;
    let ms = line.split('(').nth(1).and_then(|r| r.split(" ms").next()).unwrap_or("?");
    println!("FIGURE octoprint e2e: pause decision -> OctoPrint reports Paused (printvigil's own log): {ms} ms");

    // The user resumes; failing frames go on; no second pause in this print.
    let (s, _) = op.api("POST", "api/job", Some(json!({"command": "pause", "action": "resume"}))).await;
    assert_eq!(s, 204);
    op.wait_state("resumed", |s| s == "Printing").await;
    d.wait_line("print resumed", LONG).await;
    let resumed_at = d.last_frame().unwrap_or(0);
    let until = Instant::now() + LONG;
    while d.last_frame().unwrap_or(0) < resumed_at + 15 {
        assert_eq!(op.state().await, "Printing", "a second pause within the print\n{}", d.tail(30));
        assert!(Instant::now() < until, "no frames after the resume\n{}", d.tail(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = d.log_text();
    assert_eq!(log.matches("print PAUSED by printvigil").count(), 1, "{log}");

    let (s, _) = op.api("POST", "api/job", Some(json!({"command": "cancel"}))).await;
    assert_eq!(s, 204);
    d.wait_line("print cancelled", LONG).await;
    let deadline = Instant::now() + LONG;
    while !fake.calls().iter().any(|c| c.kind.starts_with("finish")) {
        assert!(Instant::now() < deadline, "no finish on the server: {:#?}", fake.calls());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = fake.calls();
    let printer = fake.printers().into_iter().find(|p| p.name == "sim").expect("printer registered").id;
    assert_eq!(audit(&calls, printer, std::slice::from_ref(&job)), (0, 0, 0), "lost, duplicated, out of order ({job}): {calls:#?}\n{}", d.tail(200));
    let mine: Vec<_> = calls.iter().filter(|c| c.printer == printer && c.kind != "create").collect();
    let starts: Vec<usize> = (0..mine.len()).filter(|&i| mine[i].kind == "start").collect();
    let finishes: Vec<usize> = (0..mine.len()).filter(|&i| mine[i].kind.starts_with("finish")).collect();
    let predicts: Vec<usize> = (0..mine.len()).filter(|&i| mine[i].kind == "predict").collect();
    assert_eq!((starts.len(), finishes.len()), (1, 1), "{mine:#?}");
    assert_eq!(mine[starts[0]].arg, "failing.gcode");
    assert_eq!((mine[finishes[0]].kind.as_str(), mine[finishes[0]].arg.as_str()), ("finish", "cancelled"));
    assert!(!predicts.is_empty() && predicts.iter().all(|&i| i > starts[0] && i < finishes[0]), "{mine:#?}");
    let status = d.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}\n{}", d.tail(30));
}
