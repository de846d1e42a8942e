//! End to end with OctoPrint: the real `printvigil run` binary watching real OctoPrint
//! 1.11.8 (its virtual printer), a snapshot camera served by the test, the demo model and
//! the fake Obico server. Failing frames pause the OctoPrint print exactly once; the server
//! gets exactly one start, predicts, and one finish for it.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::daemon::{self, Daemon, cpu_ticks, ticks_per_sec};
use support::fake_obico::{self, Settings, assert_one_print, wait_finish};
use support::octoprint::{API_KEY, OctoPrint, dwell_gcode};
use support::snapcam::{Mode, SnapCam};

const LONG: Duration = Duration::from_secs(60);
/// Obico's warm-up: no decision before this frame.
const WARM_UP: u64 = 30;

/// A daemon config for OctoPrint `op`, camera `cam`, server `fake`, in `dir`.
fn write_config(dir: &std::path::Path, op: &OctoPrint, cam: &SnapCam, fake: &fake_obico::FakeObico) -> std::path::PathBuf {
    let printer = format!(
        "[[printers]]\nname = \"sim\"\nkind = \"octoprint\"\nurl = {:?}\napi_key = {API_KEY:?}\n\
         camera = {{ kind = \"snapshot\", url = {:?}, timeout_secs = 2 }}\n",
        op.url(),
        cam.url(),
    );
    daemon::write_config(dir, Some(fake), "cooldown_secs = 0.0", &printer)
}

/// The link's identity of the running print, from OctoPrint's own record of the file.
async fn job_of(op: &OctoPrint, file: &str) -> String {
    let (_, meta) = op.api("GET", &format!("api/files/local/{file}"), None).await;
    let n = meta["prints"]["success"].as_u64().unwrap_or(0) + meta["prints"]["failure"].as_u64().unwrap_or(0);
    format!("local:{file}@{}#{n}", meta["date"].as_i64().expect("upload date"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_frames_pause_a_real_octoprint_print_once() {
    let op = OctoPrint::start().await;
    op.connect_printer().await;
    let fake = fake_obico::start(Settings::default()).await;
    let cam = SnapCam::start(Mode::Healthy).await;
    let dir = tempfile::Builder::new().prefix("printvigil-e2e-octoprint-").tempdir().unwrap();
    let cfg = write_config(dir.path(), &op, &cam, &fake);
    let mut d = Daemon::spawn(&cfg, &dir.path().join("daemon.log"), &[]);
    d.wait_line("watching 1 printer(s): sim", LONG).await;
    d.wait_line("printer online", LONG).await;
    // The whole daemon, idle: one OctoPrint printer connected, not printing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (c0, t0) = (cpu_ticks(d.pid()), Instant::now());
    tokio::time::sleep(Duration::from_secs(20)).await;
    let cpu = (cpu_ticks(d.pid()) - c0) as f64 / ticks_per_sec() as f64;
    println!(
        "FIGURE octoprint e2e: idle daemon CPU, one OctoPrint printer connected and not printing: {:.2} % of a core ({cpu:.2} s in {:.1} s, goal <= 0.5 %)",
        100.0 * cpu / t0.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    op.print("failing.gcode", &dwell_gcode(300)).await;
    d.wait_line("print started: failing.gcode", LONG).await;
    let job = job_of(&op, "failing.gcode").await;
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
    wait_finish(&fake, LONG).await;
    assert_one_print(&fake, &job, "failing.gcode", "cancelled", true, &d.tail(200));
    let status = d.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}\n{}", d.tail(30));
    assert!(!d.log_text().contains(API_KEY), "the key must not be logged");
}

/// printvigil SIGKILLed mid-print and started again: the same OctoPrint print goes on (the
/// log says so, no second start on the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_print_continues_the_same_octoprint_print() {
    let op = OctoPrint::start().await;
    op.connect_printer().await;
    let fake = fake_obico::start(Settings::default()).await;
    let cam = SnapCam::start(Mode::Healthy).await;
    let dir = tempfile::Builder::new().prefix("printvigil-e2e-octoprint-").tempdir().unwrap();
    let cfg = write_config(dir.path(), &op, &cam, &fake);
    let mut d = Daemon::spawn(&cfg, &dir.path().join("daemon-1.log"), &[]);
    d.wait_line("printer online", LONG).await;
    op.print("long.gcode", &dwell_gcode(300)).await;
    d.wait_line("print started: long.gcode", LONG).await;
    let job = job_of(&op, "long.gcode").await;
    let before = d.wait_frame(10, LONG).await;
    d.kill();
    let mut d = Daemon::spawn(&cfg, &dir.path().join("daemon-2.log"), &[]);
    d.wait_line("the same print as before", LONG).await;
    let after = d.wait_frame(before + 5, LONG).await;
    assert!(after > before, "the frame count continues: {before} then {after}");
    assert!(!d.log_text().contains("print started"), "{}", d.tail(40));
    let (s, _) = op.api("POST", "api/job", Some(json!({"command": "cancel"}))).await;
    assert_eq!(s, 204);
    d.wait_line("print cancelled", LONG).await;
    wait_finish(&fake, LONG).await;
    assert_one_print(&fake, &job, "long.gcode", "cancelled", true, &d.tail(200));
    let status = d.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}\n{}", d.tail(30));
}
