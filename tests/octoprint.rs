//! The OctoPrint link against real OctoPrint 1.11.8 and its virtual printer (see
//! tests/support/octoprint.rs; the venv comes from `scripts/test.sh`). The virtual printer
//! finishes moves instantly: prints that last are made of `G4` dwells.
//!
//! Figures (print start -> event, pause -> Paused, idle CPU) are printed; see them with
//! `cargo test --test octoprint -- --nocapture`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use printvigil::printer::octoprint::{OctoPrintConfig, OctoPrintLink};
use printvigil::printer::{JobId, JobOutcome, PrinterError, PrinterEvent, PrinterLink, PrinterState};
use serde_json::json;
use support::EventLog;
use support::octoprint::{API_KEY, OctoPrint, dwell_gcode};
use support::proxy::Proxy;

const LONG: Duration = Duration::from_secs(60);

fn config(url: &str, key: &str, poll_secs: u64) -> OctoPrintConfig {
    let mut c = OctoPrintConfig::new("octo", url, key);
    c.poll_secs = poll_secs;
    c.action_timeout_secs = 20;
    c
}

fn link(url: &str, poll_secs: u64) -> Arc<OctoPrintLink> {
    OctoPrintLink::start_concrete(config(url, API_KEY, poll_secs))
}

fn started(e: &PrinterEvent) -> Option<JobId> {
    match e {
        PrinterEvent::PrintStarted { job, .. } => Some(job.clone()),
        _ => None,
    }
}
fn is_start(e: &PrinterEvent) -> bool {
    matches!(e, PrinterEvent::PrintStarted { .. })
}
fn is_attach(e: &PrinterEvent) -> bool {
    matches!(e, PrinterEvent::Attached { .. })
}
fn is_end(e: &PrinterEvent) -> bool {
    matches!(e, PrinterEvent::Finished { .. })
}

fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a).map(|d| d.as_secs_f64()).unwrap_or_else(|e| -e.duration().as_secs_f64())
}

async fn wait_status(link: &OctoPrintLink, what: &str, ok: impl Fn(PrinterState) -> bool) {
    let mut rx = link.status();
    let r = tokio::time::timeout(LONG, rx.wait_for(|s| ok(s.state))).await;
    assert!(r.is_ok(), "{what}: the link's status stayed {:?}", link.status().borrow());
}

/// The REST poll is set to 10 minutes here: every event must come through the push socket
/// (and each action's own confirmation read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_print_is_followed_paused_resumed_and_cancelled_through_the_push_socket() {
    let op = OctoPrint::start().await;
    op.connect_printer().await;
    let link = link(&op.url(), 600);
    let log = EventLog::record(link.as_ref());
    wait_status(&link, "idle", |s| s == PrinterState::Idle).await;
    // Nothing to pause: refused before anything is sent.
    assert!(matches!(link.pause().await, Err(PrinterError::WrongState { .. })));

    let sent = op.print("dwell.gcode", &dwell_gcode(300)).await;
    let (ev, at) = log.wait("PrintStarted", LONG, is_start).await;
    println!("FIGURE octoprint print start -> PrintStarted event: {:.3} s", secs_between(sent, at));
    let job = started(&ev).unwrap();
    assert!(job.0.starts_with("local:dwell.gcode@"), "{job}");
    wait_status(&link, "printing", |s| s == PrinterState::Printing).await;

    let t = Instant::now();
    link.pause().await.expect("pause confirmed");
    println!("FIGURE octoprint pause decision -> OctoPrint reports Paused: {:.3} s", t.elapsed().as_secs_f64());
    assert_eq!(op.state().await, "Paused");
    log.wait("Paused", LONG, |e| matches!(e, PrinterEvent::Paused { job: Some(j) } if *j == job)).await;

    link.resume().await.expect("resume confirmed");
    assert_eq!(op.state().await, "Printing");
    log.wait("Resumed", LONG, |e| matches!(e, PrinterEvent::Resumed { job: Some(j) } if *j == job)).await;

    link.cancel().await.expect("cancel confirmed");
    let (ev, _) = log.wait("Finished", LONG, is_end).await;
    assert_eq!(
        ev,
        PrinterEvent::Finished { job: job.clone(), file: "dwell.gcode".into(), outcome: JobOutcome::Cancelled }
    );
    op.wait_state("cancelled", |s| s == "Operational").await;

    // The same file again is a new print; cancelled in OctoPrint itself this time.
    tokio::time::sleep(Duration::from_secs(1)).await;
    op.print_again("dwell.gcode").await;
    let (ev, _) = log.wait_nth("the second PrintStarted", 2, LONG, is_start).await;
    let second = started(&ev).unwrap();
    assert_ne!(second, job, "a new print of the same file must be a new print");
    let (s, v) = op.api("POST", "api/job", Some(json!({"command": "cancel"}))).await;
    assert_eq!(s, 204, "{v}");
    let (ev, _) = log.wait_nth("the second Finished", 2, LONG, is_end).await;
    assert!(matches!(ev, PrinterEvent::Finished { ref job, outcome: JobOutcome::Cancelled, .. } if *job == second), "{ev:?}");

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(log.count(is_start), 2, "{:#?}", log.all());
    assert_eq!(log.count(is_end), 2, "{:#?}", log.all());
    assert_eq!(log.count(|e| matches!(e, PrinterEvent::Paused { .. })), 1, "{:#?}", log.all());
    assert_eq!(log.count(|e| matches!(e, PrinterEvent::Resumed { .. })), 1, "{:#?}", log.all());
    link.stop().await;
}

/// printvigil restarted (or SIGKILLed) mid-print: the new link attaches to the print with
/// the same identity, it does not start it again; also after a pause (which OctoPrint
/// leaves out of `printTime`) and some time later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_link_attaches_to_the_running_print_with_the_same_identity() {
    let op = OctoPrint::start().await;
    op.connect_printer().await;
    let first = link(&op.url(), 2);
    let log1 = EventLog::record(first.as_ref());
    op.print("long.gcode", &dwell_gcode(300)).await;
    let (ev, _) = log1.wait("PrintStarted", LONG, is_start).await;
    let job = started(&ev).unwrap();
    assert!(job.0.starts_with("local:long.gcode@") && job.0.ends_with("#0"), "{job}");
    drop(first);
    for round in 0..3 {
        if round == 1 {
            let (s, _) = op.api("POST", "api/job", Some(json!({"command": "pause", "action": "pause"}))).await;
            assert_eq!(s, 204);
            op.wait_state("paused", |s| s == "Paused").await;
            tokio::time::sleep(Duration::from_secs(4)).await;
            let (s, _) = op.api("POST", "api/job", Some(json!({"command": "pause", "action": "resume"}))).await;
            assert_eq!(s, 204);
            op.wait_state("resumed", |s| s == "Printing").await;
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let again = link(&op.url(), 2);
        let log = EventLog::record(again.as_ref());
        let (ev, _) = log.wait("Attached", LONG, is_attach).await;
        assert_eq!(ev, PrinterEvent::Attached { job: job.clone(), file: "long.gcode".into(), paused: false }, "round {round}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(log.count(is_start), 0, "{:#?}", log.all());
        assert_eq!(log.count(is_end), 0, "{:#?}", log.all());
        again.stop().await;
    }
}

/// The link's connection drops mid-print (the TCP connection to OctoPrint is cut for a
/// while): the same print goes on, nothing starts or ends twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_mid_print_continues_the_same_print() {
    let op = OctoPrint::start().await;
    op.connect_printer().await;
    let proxy = Proxy::start(op.port).await;
    let link = link(&format!("http://127.0.0.1:{}", proxy.port), 1);
    let log = EventLog::record(link.as_ref());
    op.print("drop.gcode", &dwell_gcode(300)).await;
    let (ev, _) = log.wait("PrintStarted", LONG, is_start).await;
    let job = started(&ev).unwrap();
    // Whoever gets `Online` reads the status then (the watch loop does): it must already
    // show the print going on.
    let mut events = link.events();
    let (status_tx, status_rx) = tokio::sync::oneshot::channel();
    let watcher = link.clone();
    tokio::spawn(async move {
        while let Ok(ev) = events.recv().await {
            if ev == PrinterEvent::Online {
                let _ = status_tx.send(watcher.status().borrow().clone());
                return;
            }
        }
    });
    proxy.cut();
    log.wait("Offline", LONG, |e| matches!(e, PrinterEvent::Offline { .. })).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.restore();
    log.wait("Online", LONG, |e| matches!(e, PrinterEvent::Online)).await;
    let at_online = status_rx.await.unwrap();
    assert_eq!((at_online.state, at_online.job.as_ref()), (PrinterState::Printing, Some(&job)), "{at_online:?}");
    wait_status(&link, "printing again", |s| s == PrinterState::Printing).await;
    assert_eq!(link.status().borrow().job.as_ref(), Some(&job));
    let (s, _) = op.api("POST", "api/job", Some(json!({"command": "cancel"}))).await;
    assert_eq!(s, 204);
    let (ev, _) = log.wait("Finished", LONG, is_end).await;
    assert!(matches!(ev, PrinterEvent::Finished { job: ref j, outcome: JobOutcome::Cancelled, .. } if *j == job), "{ev:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(log.count(is_start), 1, "{:#?}", log.all());
    assert_eq!(log.count(is_attach), 0, "{:#?}", log.all());
    assert_eq!(log.count(is_end), 1, "{:#?}", log.all());
    link.stop().await;
}

/// OctoPrint itself restarted mid-print. Its virtual printer runs inside OctoPrint's
/// process, and OctoPrint streams local files itself, so the print does not survive: the
/// link reports it ended (failed) exactly once, the printer not connected, and after the
/// printer is connected again a print of the same file is a new print.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn octoprint_restarted_mid_print_ends_that_print_once() {
    let mut op = OctoPrint::start().await;
    op.connect_printer().await;
    let link = link(&op.url(), 1);
    let log = EventLog::record(link.as_ref());
    op.print("restart.gcode", &dwell_gcode(300)).await;
    let (ev, _) = log.wait("PrintStarted", LONG, is_start).await;
    let job = started(&ev).unwrap();
    op.restart().await;
    let (ev, _) = log.wait("Finished", LONG, is_end).await;
    assert!(matches!(ev, PrinterEvent::Finished { job: ref j, outcome: JobOutcome::Failed(_), .. } if *j == job), "{ev:?}");
    wait_status(&link, "printer not connected", |s| s == PrinterState::Offline).await;
    op.connect_printer().await;
    wait_status(&link, "idle", |s| s == PrinterState::Idle).await;
    op.print_again("restart.gcode").await;
    let (ev, _) = log.wait_nth("the second PrintStarted", 2, LONG, is_start).await;
    assert_ne!(started(&ev).unwrap(), job);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(log.count(is_end), 1, "{:#?}", log.all());
    link.stop().await;
}

/// The printer disconnected from OctoPrint (409 on `/api/printer`) mid-print, then
/// connected again; also the cameras OctoPrint knows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printer_disconnected_and_reconnected_and_cameras_discovered() {
    let op = OctoPrint::start().await;
    let (s, v) = op
        .api(
            "POST",
            "api/settings",
            Some(json!({"plugins": {"classicwebcam": {
                "snapshot": "/webcam/?action=snapshot",
                "stream": "http://127.0.0.1:8080/?action=stream",
                "flipH": true, "rotate90": true}}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    op.connect_printer().await;
    let link = link(&op.url(), 1);
    let log = EventLog::record(link.as_ref());
    let mut cams = link.cameras();
    tokio::time::timeout(LONG, cams.wait_for(|c| !c.is_empty())).await.expect("cameras").unwrap();
    let cam = link.cameras().borrow()[0].clone();
    assert_eq!(cam.snapshot_url.as_deref(), Some(format!("{}/webcam/?action=snapshot", op.url()).as_str()), "{cam:?}");
    assert_eq!(cam.stream_url.as_deref(), Some("http://127.0.0.1:8080/?action=stream"));
    assert_eq!((cam.rotation, cam.flip_horizontal, cam.flip_vertical), (270, true, false));

    op.print("unplug.gcode", &dwell_gcode(300)).await;
    let (ev, _) = log.wait("PrintStarted", LONG, is_start).await;
    let job = started(&ev).unwrap();
    op.disconnect_printer().await;
    let (ev, _) = log.wait("Finished", LONG, is_end).await;
    assert!(matches!(ev, PrinterEvent::Finished { job: ref j, outcome: JobOutcome::Failed(_), .. } if *j == job), "{ev:?}");
    let (ev, _) = log.wait("Offline", LONG, |e| matches!(e, PrinterEvent::Offline { .. })).await;
    assert!(format!("{ev:?}").contains("not connected to OctoPrint"), "{ev:?}");
    assert!(matches!(link.pause().await, Err(PrinterError::NotConnected { .. })));
    op.connect_printer().await;
    log.wait_nth("Online again", 2, LONG, |e| matches!(e, PrinterEvent::Online)).await;
    wait_status(&link, "idle", |s| s == PrinterState::Idle).await;
    assert_eq!(log.count(is_end), 1, "{:#?}", log.all());
    link.stop().await;
}

/// A wrong key: a configuration error, reported once (not once per poll), with the fix;
/// the key itself never in the status or the events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_api_key_is_a_configuration_error_reported_once() {
    let op = OctoPrint::start().await;
    let wrong = "WRONGKEY-not-this-one-42";
    let cfg = config(&op.url(), wrong, 1);
    assert!(!format!("{cfg:?}").contains(wrong));
    let link = OctoPrintLink::start_concrete(cfg);
    let log = EventLog::record(link.as_ref());
    let (ev, _) = log.wait("Offline", LONG, |e| matches!(e, PrinterEvent::Offline { .. })).await;
    let text = format!("{ev:?}");
    assert!(text.contains("API key") && text.contains("setup octoprint"), "{text}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(log.count(|e| matches!(e, PrinterEvent::Offline { .. })), 1, "{:#?}", log.all());
    let status = link.status().borrow().clone();
    assert_eq!(status.state, PrinterState::Offline);
    assert!(!format!("{status:?}{:?}", log.all()).contains(wrong));
    assert!(matches!(link.pause().await, Err(PrinterError::NotConnected { .. })));
    link.stop().await;
}

/// CPU time of the link with one OctoPrint printer connected and not printing, on a
/// current-thread runtime (the link's task, the push socket, the REST cross-checks).
#[tokio::test(flavor = "current_thread")]
async fn idle_cpu_figure() {
    fn thread_cpu() -> f64 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes into the struct we own.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    }
    let op = OctoPrint::start().await;
    op.connect_printer().await;
    let link = link(&op.url(), 5);
    wait_status(&link, "idle", |s| s == PrinterState::Idle).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (c0, t0) = (thread_cpu(), Instant::now());
    tokio::time::sleep(Duration::from_secs(30)).await;
    let cpu = thread_cpu() - c0;
    let wall = t0.elapsed().as_secs_f64();
    println!(
        "FIGURE octoprint idle link CPU: {:.3} % of a core ({cpu:.3} s CPU in {wall:.1} s, goal <= 0.5 %)",
        100.0 * cpu / wall
    );
    assert_eq!(link.status().borrow().state, PrinterState::Idle);
    link.stop().await;
}

/// `printvigil setup octoprint`: the Application Keys workflow against real OctoPrint, an
/// admin clicks Allow (here: the same decision through OctoPrint's API), the key lands in
/// the config file, comments and other entries kept, and OctoPrint accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_octoprint_writes_the_approved_key_into_the_config() {
    use std::io::Read as _;
    let op = OctoPrint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "# my settings\n[[printers]]\nname = \"octo\"\nkind = \"octoprint\"\n").unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_printvigil"))
        .arg("--config")
        .arg(&cfg)
        .args(["setup", "octoprint", "--name", "octo", "--url", &op.url(), "--wait", "60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The admin sees the request (OctoPrint lists it as pending) and allows it.
    let deadline = Instant::now() + LONG;
    let user_token = loop {
        let (_, v) = op.api("GET", "api/plugin/appkeys", None).await;
        if let Some(t) = v["pending"].as_object().and_then(|p| p.keys().next().cloned()) {
            break t;
        }
        assert!(Instant::now() < deadline, "no pending request: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (s, v) = op.api("POST", &format!("plugin/appkeys/decision/{user_token}"), Some(json!({"decision": true}))).await;
    assert_eq!(s, 204, "{v}");
    let status = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    let (out, err) = (String::from_utf8_lossy(&status.stdout), String::from_utf8_lossy(&status.stderr));
    assert!(status.status.success(), "{out}\n{err}");
    assert!(out.contains("Allow"), "{out}");
    let mut text = String::new();
    std::fs::File::open(&cfg).unwrap().read_to_string(&mut text).unwrap();
    assert!(text.starts_with("# my settings\n"), "{text}");
    let key = text.lines().find_map(|l| l.strip_prefix("api_key = ")).expect("api_key written").trim_matches('"').to_string();
    assert!(!out.contains(&key) && !err.contains(&key), "the key must not be printed");
    let ok = reqwest::Client::new()
        .get(format!("{}/api/job", op.url()))
        .header("X-Api-Key", &key)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(ok.as_u16(), 200);
}
