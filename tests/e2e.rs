//! End to end: the real `printvigil run` binary watching real Moonraker + Klipper (a
//! simulated MCU), a snapshot camera served by the test (the bundled healthy and failing
//! frames, or failures on demand), the demo model, and the fake Obico server.
//!
//! One set of peers serves every case, one case after another (each case waits for its
//! print to end and stops its daemon; older prints are not news to a new daemon). Every
//! case runs even when an earlier one fails; the test fails at the end, naming them.
//! `PVTEST_E2E_CASES=b,c` runs only some cases; `PVTEST_KEEP=1` keeps every case's files
//! (config, daemon logs, state, saved frames), as a failing case always does.

mod support;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use support::daemon::{self, Daemon, frame_numbers};
use support::fake_obico::{self, Call, FakeObico, Settings, assert_one_print, wait_calls};
use support::klipper::{Options, Peers, dwell_gcode};
use support::snapcam::{Mode, SnapCam};

const LONG: Duration = Duration::from_secs(60);
/// Obico's warm-up: no decision before this frame.
const WARM_UP: u64 = 30;

/// One case's files: config, state directory, daemon logs.
/// Kept on disk when the case fails (the path is printed).
struct Case {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    name: &'static str,
    runs: usize,
}

impl Drop for Case {
    fn drop(&mut self) {
        if (std::thread::panicking() || std::env::var_os("PVTEST_KEEP").is_some())
            && let Some(d) = self.dir.take()
        {
            eprintln!("case {}: files kept in {}", self.name, d.keep().display());
        }
    }
}

struct Setup<'a> {
    peers: &'a Peers,
    cam: &'a SnapCam,
    server: Option<&'a FakeObico>,
    /// Extra lines for the `[watch]` table.
    watch: &'a str,
}

impl Case {
    fn new(name: &'static str, s: &Setup<'_>) -> Case {
        let dir = tempfile::Builder::new().prefix(&format!("printvigil-e2e-{name}-")).tempdir().unwrap();
        let printer = format!(
            "[[printers]]\nname = \"sim\"\nkind = \"moonraker\"\nurl = {:?}\n\
             camera = {{ kind = \"snapshot\", url = {:?}, timeout_secs = 2 }}\n",
            s.peers.url(),
            s.cam.url()
        );
        daemon::write_config(dir.path(), s.server, s.watch, &printer);
        Case { path: dir.path().to_path_buf(), dir: Some(dir), name, runs: 0 }
    }

    fn state_dir(&self) -> PathBuf {
        self.path.join("state")
    }

    /// Starts the daemon (a new log file per run) and waits until it watches the printer,
    /// online.
    async fn start(&mut self) -> Daemon {
        self.runs += 1;
        let log = self.path.join(format!("daemon-{}.log", self.runs));
        let mut d = Daemon::spawn(&self.path.join("printvigil.toml"), &log, &[]);
        d.wait_line("watching 1 printer(s): sim", LONG).await;
        d.wait_line("printer online", LONG).await;
        d
    }
}

/// Waits until Klipper's `print_stats.state` is `want`.
async fn wait_state(peers: &Peers, want: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let s = peers.print_state().await;
        if s == want {
            return;
        }
        assert!(Instant::now() < deadline, "Klipper is {s:?}, not {want:?}, after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Leaves the printer idle (a failed case may leave a print running).
async fn ensure_idle(peers: &Peers) {
    let s = peers.print_state().await;
    if s == "printing" || s == "paused" {
        peers.post("/printer/print/cancel").await;
        wait_state(peers, "cancelled", LONG).await;
    }
}

/// The newest job's identity as the Moonraker link names it (`job_id@start_time`).
async fn newest_job(peers: &Peers) -> (String, String) {
    let v = peers.get("/server/history/list?limit=1&order=desc").await;
    let j = &v["jobs"][0];
    if j.is_null() {
        return (String::new(), String::new());
    }
    let id = format!("{}@{:.0}", j["job_id"].as_str().unwrap(), j["start_time"].as_f64().unwrap());
    (id, j["filename"].as_str().unwrap().to_string())
}

fn count(calls: &[Call], kind: &str) -> usize {
    calls.iter().filter(|c| c.kind == kind).count()
}

fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

/// The frame number scored last before the first line containing `needle`.
fn frame_before(log: &str, needle: &str) -> Option<u64> {
    let head = &log[..log.find(needle)?];
    frame_numbers(head).last().copied()
}

/// Frame numbers rise one by one (no restart from 1, no gap).
fn assert_consecutive(frames: &[u64]) {
    for w in frames.windows(2) {
        assert_eq!(w[1], w[0] + 1, "frame numbers rise one by one: {frames:?}");
    }
}

/// The smoothing frame number kept in the state database for printer `sim`.
fn stored_frame(state_dir: &Path) -> (Option<String>, u64) {
    let db = rusqlite::Connection::open_with_flags(
        state_dir.join("watch-state.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let text: String =
        db.query_row("SELECT record FROM printer_state WHERE printer = 'sim'", [], |r| r.get(0)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    (v["job"].as_str().map(str::to_owned), v["smoothing"]["current_frame_num"].as_u64().unwrap())
}

fn pause_ms(line: &str) -> f64 {
    let i = line.find("PAUSED by printvigil (").unwrap() + "PAUSED by printvigil (".len();
    line[i..].split(" ms").next().unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------------------

/// a. Healthy frames for a whole short print: no pause; the server got one start,
/// predicts, one finish.
async fn healthy_print(peers: &Peers) {
    let fake = fake_obico::start(Settings::default()).await;
    let cam = SnapCam::start(Mode::Healthy).await;
    let mut case = Case::new("a", &Setup { peers, cam: &cam, server: Some(&fake), watch: "" });
    let mut d = case.start().await;
    let secs = 11.0;
    peers.write_gcode("a-healthy.gcode", &dwell_gcode(secs, 250));
    peers.start_print("a-healthy.gcode").await;
    d.wait_line("print started: a-healthy.gcode", LONG).await;
    let (job, _) = newest_job(peers).await;
    let deadline = Instant::now() + Duration::from_secs_f64(secs) + LONG;
    loop {
        let s = peers.print_state().await;
        assert_ne!(s, "paused", "a healthy print was paused\n{}", d.tail(40));
        if s == "complete" {
            break;
        }
        assert!(Instant::now() < deadline, "the print did not complete: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.wait_line("print finished", LONG).await;
    wait_calls(&fake, "the finish", LONG, |c| count(c, "finish") + count(c, "finish_not_printing") > 0).await;
    let log = d.log_text();
    let frames = frame_numbers(&log);
    assert!(
        frames.len() as u64 > WARM_UP,
        "the print was watched past the warm-up ({} frames)\n{}",
        frames.len(),
        d.tail(30)
    );
    assert_consecutive(&frames);
    assert!(lines_with(&log, "FAILURE DETECTED").is_empty() && lines_with(&log, "PAUSED").is_empty(), "{log}");
    assert!(lines_with(&log, "may be failing").is_empty(), "no warning on healthy frames");
    assert_one_print(&fake, &job, "a-healthy.gcode", "success", true, "");
    let status = d.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "SIGTERM: clean exit, got {status}\n{}", d.tail(20));
    eprintln!(
        "case a: {} frames, {} predicts, camera served {:?}",
        frames.len(),
        count(&fake.calls(), "predict"),
        cam.served()
    );
    drop(case);
}

/// b. Failing frames after the warm-up: Klipper really pauses, once; resumed with failing
/// frames going on (cooldown 0), no second pause; the cancel reaches the server.
async fn failing_print_pauses_once(peers: &Peers) {
    let fake = fake_obico::start(Settings::default()).await;
    let cam = SnapCam::start(Mode::Healthy).await;
    let mut case = Case::new("b", &Setup { peers, cam: &cam, server: Some(&fake), watch: "cooldown_secs = 0.0" });
    let mut d = case.start().await;
    peers.write_gcode("b-failing.gcode", &dwell_gcode(300.0, 250));
    peers.start_print("b-failing.gcode").await;
    d.wait_line("print started: b-failing.gcode", LONG).await;
    let (job, _) = newest_job(peers).await;
    d.wait_frame(WARM_UP + 1, LONG).await;
    assert_eq!(peers.print_state().await, "printing", "no pause on healthy frames");
    let switched = d.last_frame().unwrap();
    cam.set(Mode::Failing).await;

    wait_state(peers, "paused", Duration::from_secs(30)).await;
    let line = d.wait_line("print PAUSED by printvigil", LONG).await;
    let log = d.log_text();
    let decided = frame_before(&log, "FAILURE DETECTED").expect("the decision follows a scored frame");
    assert!(decided >= WARM_UP, "no decision in the warm-up (frame {decided})");
    assert!(
        decided <= switched + 10,
        "the pause came within a few failing frames: switched after frame {switched}, decided at {decided}"
    );
    let ms = pause_ms(&line);
    let frames_dir = case.state_dir().join("frames/sim");
    let saved: Vec<String> = std::fs::read_dir(&frames_dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(saved.iter().any(|n| n.ends_with("-pause.jpg")), "the decision frame was saved: {saved:?}");

    // While paused no frames are scored; then the user resumes, failing frames go on.
    peers.post("/printer/print/resume").await;
    wait_state(peers, "printing", LONG).await;
    d.wait_line("print resumed", LONG).await;
    let resumed_at = d.last_frame().unwrap_or(0);
    let until = Instant::now() + LONG;
    while d.last_frame().unwrap_or(0) < resumed_at + 15 {
        assert_eq!(peers.print_state().await, "printing", "a second pause within the print\n{}", d.tail(30));
        assert!(Instant::now() < until, "no frames after the resume\n{}", d.tail(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = d.log_text();
    assert_eq!(lines_with(&log, "print PAUSED by printvigil").len(), 1, "{log}");
    assert_eq!(lines_with(&log, "FAILURE DETECTED").len(), 1, "{log}");
    assert!(cam.served().1 >= 15, "failing frames were served: {:?}", cam.served());

    peers.post("/printer/print/cancel").await;
    wait_state(peers, "cancelled", LONG).await;
    d.wait_line("print cancelled", LONG).await;
    wait_calls(&fake, "the finish", LONG, |c| count(c, "finish") + count(c, "finish_not_printing") > 0).await;
    assert_one_print(&fake, &job, "b-failing.gcode", "cancelled", true, "");
    let status = d.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    eprintln!(
        "case b: failing frames from frame {}, decided at frame {decided}, paused {ms:.0} ms after the decision",
        switched + 1
    );
    drop(case);
}

/// c. SIGKILL mid-print, restart: the same print goes on (no second start on the server,
/// the log says so, the smoothing frame count continues).
async fn sigkill_and_restart_continue_the_print(peers: &Peers) {
    let fake = fake_obico::start(Settings::default()).await;
    let cam = SnapCam::start(Mode::Healthy).await;
    let mut case = Case::new("c", &Setup { peers, cam: &cam, server: Some(&fake), watch: "" });
    let mut d = case.start().await;
    peers.write_gcode("c-restart.gcode", &dwell_gcode(300.0, 250));
    peers.start_print("c-restart.gcode").await;
    d.wait_line("print started: c-restart.gcode", LONG).await;
    let (job, _) = newest_job(peers).await;
    d.wait_frame(15, LONG).await;
    wait_calls(&fake, "the start", LONG, |c| count(c, "start") == 1).await;
    d.kill();
    let before = frame_numbers(&d.log_text());
    let (stored_job, stored) = stored_frame(&case.state_dir());
    assert_eq!(stored_job.as_deref(), Some(job.as_str()), "the state names the print");
    // A frame is logged just before it is stored: the kill may fall in between.
    assert!(stored >= 15 && stored + 1 >= *before.last().unwrap(), "stored frame {stored}, logged {before:?}");
    assert_eq!(peers.print_state().await, "printing");

    let mut d2 = case.start().await;
    let again = d2.wait_line("watching c-restart.gcode again (frame ", LONG).await;
    let n: u64 = again.split("(frame ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
    assert_eq!(n, stored, "the restart goes on from the stored frame: {again}");
    d2.wait_frame(stored + 10, LONG).await;
    let log2 = d2.log_text();
    let after = frame_numbers(&log2);
    assert_eq!(after.first(), Some(&(stored + 1)), "the first frame after the restart follows the stored one");
    assert_consecutive(&after);
    assert!(lines_with(&log2, "print started:").is_empty(), "not a new print: {log2}");

    peers.post("/printer/print/cancel").await;
    wait_state(peers, "cancelled", LONG).await;
    d2.wait_line("print cancelled", LONG).await;
    wait_calls(&fake, "the finish", LONG, |c| count(c, "finish") + count(c, "finish_not_printing") > 0).await;
    assert_one_print(&fake, &job, "c-restart.gcode", "cancelled", true, "");
    assert!(d2.terminate(Duration::from_secs(20)).await.success());
    eprintln!(
        "case c: killed after frame {}, stored {stored}, restarted at frame {}",
        before.last().unwrap(),
        after[0]
    );
    drop(case);
}

/// d. The server down for the whole print: the pause still happens; once the server is
/// back, the start and the finish arrive, in order, once each.
async fn server_down_for_the_whole_print(peers: &Peers) {
    let fake = fake_obico::start(Settings::default()).await;
    fake.set_down(true).await.unwrap();
    let cam = SnapCam::start(Mode::Healthy).await;
    let mut case = Case::new("d", &Setup { peers, cam: &cam, server: Some(&fake), watch: "" });
    let mut d = case.start().await;
    peers.write_gcode("d-offline.gcode", &dwell_gcode(300.0, 250));
    peers.start_print("d-offline.gcode").await;
    d.wait_line("print started: d-offline.gcode", LONG).await;
    let (job, _) = newest_job(peers).await;
    d.wait_frame(WARM_UP + 1, LONG).await;
    cam.set(Mode::Failing).await;
    wait_state(peers, "paused", Duration::from_secs(30)).await;
    let line = d.wait_line("print PAUSED by printvigil", LONG).await;
    peers.post("/printer/print/cancel").await;
    wait_state(peers, "cancelled", LONG).await;
    d.wait_line("print cancelled", LONG).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls = fake.calls();
    assert!(calls.is_empty(), "the server was down: {calls:#?}");
    assert!(
        !lines_with(&d.log_text(), "start_print not sent, retrying").is_empty(),
        "the daemon tried the server while it was down\n{}",
        d.tail(30)
    );

    let back = Instant::now();
    fake.set_down(false).await.unwrap();
    wait_calls(&fake, "the finish after the server came back", LONG, |c| {
        count(c, "finish") + count(c, "finish_not_printing") > 0
    })
    .await;
    let delivered = back.elapsed();
    // Nothing more comes later (no repeat of an event).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_one_print(&fake, &job, "d-offline.gcode", "cancelled", false, "");
    assert!(d.terminate(Duration::from_secs(20)).await.success());
    eprintln!(
        "case d: paused {:.0} ms after the decision with the server down; queued events delivered {:.1} s after it came back",
        pause_ms(&line),
        delivered.as_secs_f64()
    );
    drop(case);
}

/// e. The camera fails mid-print (503, then refused connections): reported in the log,
/// not once per frame; detection resumes when it returns, the frame count going on.
async fn camera_dies_and_returns(peers: &Peers) {
    let cam = SnapCam::start(Mode::Healthy).await;
    let mut case = Case::new("e", &Setup { peers, cam: &cam, server: None, watch: "" });
    let mut d = case.start().await;
    peers.write_gcode("e-camera.gcode", &dwell_gcode(300.0, 250));
    peers.start_print("e-camera.gcode").await;
    d.wait_line("print started: e-camera.gcode", LONG).await;
    d.wait_frame(8, LONG).await;

    let requests = cam.requests();
    cam.set(Mode::Unavailable).await;
    let failed = d.wait_line("no frame:", LONG).await;
    assert!(failed.contains("503"), "the log says what the camera answered: {failed}");
    let frozen = d.last_frame().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cam.set(Mode::Refused).await;
    d.wait_log("the refused connection reported", LONG, |t| {
        lines_with(t, "no frame:").iter().any(|l| l.contains("could not reach"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tries = cam.requests() - requests;
    assert_eq!(d.last_frame(), Some(frozen), "no frame is scored without a camera");
    cam.set(Mode::Healthy).await;
    d.wait_line("the camera gives frames again", LONG).await;
    d.wait_frame(frozen + 5, LONG).await;

    let log = d.log_text();
    let frames = frame_numbers(&log);
    assert_consecutive(&frames);
    let reports = lines_with(&log, "no frame:");
    assert!(
        reports.len() <= 4,
        "the failure is reported when it starts or changes, not for each frame: {reports:#?}"
    );
    assert_eq!(peers.print_state().await, "printing");
    peers.post("/printer/print/cancel").await;
    wait_state(peers, "cancelled", LONG).await;
    d.wait_line("print cancelled", LONG).await;
    assert!(d.terminate(Duration::from_secs(20)).await.success());
    eprintln!(
        "case e: frames {}..{} around the outage, {} failure lines for {tries} answered 503s (plus refused tries)",
        frames[0],
        frames.last().unwrap(),
        reports.len()
    );
    drop(case);
}

/// A print started within about a second of Klippy reporting ready is misrecorded by
/// Moonraker: its history gets the job only at the end, without a file name, and (seen
/// here) so do the next prints. Give it two seconds, then check with a short print that
/// its history records prints properly.
async fn settle(peers: &Peers) {
    peers.write_gcode("settle.gcode", &dwell_gcode(1.5, 250));
    for attempt in 1..=3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = newest_job(peers).await;
        peers.start_print("settle.gcode").await;
        let deadline = Instant::now() + LONG;
        let job = loop {
            let v = peers.get("/server/history/list?limit=1&order=desc").await;
            let j = v["jobs"][0].clone();
            let done = j["status"].as_str().is_some_and(|s| s != "in_progress");
            if done && newest_job(peers).await != before {
                break j;
            }
            assert!(Instant::now() < deadline, "the settle print never ended: {v}\n{}", peers.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if job["filename"] == "settle.gcode" {
            return;
        }
        eprintln!("Moonraker missed the start of settle print {attempt}; again");
    }
    panic!("Moonraker never recorded a print properly\n{}", peers.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e() {
    let started = Instant::now();
    let only = std::env::var("PVTEST_E2E_CASES").ok();
    let wanted = |c: &str| only.as_deref().is_none_or(|o| o.split(',').any(|x| x.trim() == c));
    let peers = Arc::new(Peers::start(Options::default()).await);
    settle(&peers).await;
    eprintln!("peers ready in {:.1} s", started.elapsed().as_secs_f64());
    let mut failed = Vec::new();
    macro_rules! case {
        ($id:literal, $f:ident) => {
            if wanted($id) {
                ensure_idle(&peers).await;
                let t = Instant::now();
                let r = AssertUnwindSafe($f(&peers)).catch_unwind().await;
                eprintln!(
                    "CASE {} {}: {} in {:.1} s",
                    $id,
                    stringify!($f),
                    if r.is_ok() { "ok" } else { "FAILED" },
                    t.elapsed().as_secs_f64()
                );
                if r.is_err() {
                    failed.push(concat!($id, " ", stringify!($f)));
                    eprintln!("{}", peers.logs());
                }
            }
        };
    }
    case!("a", healthy_print);
    case!("b", failing_print_pauses_once);
    case!("c", sigkill_and_restart_continue_the_print);
    case!("d", server_down_for_the_whole_print);
    case!("e", camera_dies_and_returns);
    eprintln!("e2e: {:.1} s in all", started.elapsed().as_secs_f64());
    assert!(failed.is_empty(), "failed cases: {failed:?} (their panics are printed above)");
}
