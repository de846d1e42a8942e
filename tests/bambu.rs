//! The Bambu link against a real MQTT broker (Debian's mosquitto with TLS, a CA and a
//! server certificate made per test, user `bblp`) and a simulated printer firmware that
//! publishes reports as P1/A1 printers do (tests/support/bambu.rs).
//!
//! Figures (report -> event latency, pause decision -> PAUSE reported) are printed; see
//! them with `cargo test --test bambu -- --nocapture`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use printvigil::printer::bambu::{BambuConfig, BambuLink};
use printvigil::printer::{JobOutcome, PrinterError, PrinterEvent, PrinterLink, PrinterState};
use printvigil::tlspin::{Fingerprint, Trust};
use support::EventLog;
use support::bambu::{CODE, Commands, SERIAL, SimPrinter, broker, fingerprint};
use support::mosquitto::Mosquitto;
use tracing_subscriber::layer::SubscriberExt;

const LONG: Duration = Duration::from_secs(30);
const HEARTBEAT: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_millis(100);

fn config(m: &Mosquitto, code: &str, trust: Trust) -> BambuConfig {
    let mut c = BambuConfig::new("bambu", "127.0.0.1", SERIAL, code, trust);
    c.port = m.port;
    c.action_timeout_secs = 10;
    c.report_timeout_secs = 5;
    c.connect_timeout_secs = 2;
    c
}

fn pinned(m: &Mosquitto) -> Trust {
    Trust::Pinned(Fingerprint::parse(&fingerprint(m)).unwrap())
}

fn link(m: &Mosquitto) -> Arc<BambuLink> {
    BambuLink::start_concrete(config(m, CODE, pinned(m)), "test")
}

async fn wait_status(link: &BambuLink, what: &str, ok: impl Fn(&printvigil::printer::PrinterStatus) -> bool) {
    let mut rx = link.status();
    let r = tokio::time::timeout(LONG, rx.wait_for(|s| ok(s))).await;
    assert!(r.is_ok(), "{what}: the link's status stayed {:?}", link.status().borrow());
}

fn is_start(e: &PrinterEvent) -> bool {
    matches!(e, PrinterEvent::PrintStarted { .. })
}
fn is_end(e: &PrinterEvent) -> bool {
    matches!(e, PrinterEvent::Finished { .. })
}

fn secs(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

// ---------------------------------------------------------------------------------------
// Log capture: the tests that count log lines run on a current-thread runtime, so the
// link's task logs through this thread's subscriber.

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

fn capture() -> (Capture, tracing::subscriber::DefaultGuard) {
    let _ = tracing_log::LogTracer::init();
    let cap = Capture::default();
    let writer = cap.clone();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(printvigil::logging::secrets_guard())
        .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(move || writer.clone()));
    (cap, tracing::subscriber::set_default(subscriber))
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_print_is_followed_from_start_through_progress_to_finish() {
    let m = broker(SERIAL, CODE);
    let sim = SimPrinter::start(&m, SERIAL, HEARTBEAT, TICK).await;
    let link = link(&m);
    let log = EventLog::record(link.as_ref());
    wait_status(&link, "idle", |s| s.state == PrinterState::Idle).await;
    assert!(sim.counters.pushalls.load(std::sync::atomic::Ordering::Relaxed) >= 1, "pushall after connecting");

    let sent = SystemTime::now();
    sim.start_print("Benchy");
    let (ev, at) = log.wait("PrintStarted", LONG, is_start).await;
    println!("FIGURE bambu report -> PrintStarted event: {:.1} ms", secs(sent, at) * 1000.0);
    let PrinterEvent::PrintStarted { job, file } = ev else { unreachable!() };
    let start = sim.state().start_time;
    assert_eq!(file, "Benchy");
    assert!(job.0 == format!("bambu:{SERIAL}:Benchy@{start}"), "{job}");
    // Progress comes from partial reports merged into the state.
    wait_status(&link, "progress", |s| s.state == PrinterState::Printing && s.progress.is_some_and(|p| p >= 0.3)).await;
    let st = link.status().borrow().clone();
    assert_eq!(st.job.as_ref(), Some(&job));
    assert!(st.temperatures.iter().any(|t| t.name == "nozzle"), "{st:?}");
    let (ev, _) = log.wait("Finished", LONG, is_end).await;
    assert!(matches!(&ev, PrinterEvent::Finished { job: j, outcome: JobOutcome::Completed, .. } if *j == job), "{ev:?}");
    wait_status(&link, "idle after the print", |s| s.state == PrinterState::Idle).await;
    // FINISH stays in the reports: no second end, no second start.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!((log.count(is_start), log.count(is_end)), (1, 1), "{:#?}", log.all());
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_stop_are_sent_with_sequence_ids_and_confirmed_by_the_reports() {
    let m = broker(SERIAL, CODE);
    let sim = SimPrinter::start(&m, SERIAL, HEARTBEAT, Duration::from_millis(500)).await;
    let link = link(&m);
    let log = EventLog::record(link.as_ref());
    wait_status(&link, "idle", |s| s.state == PrinterState::Idle).await;
    assert!(matches!(link.pause().await, Err(PrinterError::WrongState { .. })), "nothing to pause");
    sim.start_print("Cube");
    wait_status(&link, "printing", |s| s.state == PrinterState::Printing).await;

    let mut pauses = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        link.pause().await.expect("pause confirmed");
        pauses.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(sim.state().gcode_state, "PAUSE");
        let frozen = sim.state().percent;
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(sim.state().percent, frozen, "a paused print does not move on");
        link.resume().await.expect("resume confirmed");
        assert_eq!(sim.state().gcode_state, "RUNNING");
    }
    println!("FIGURE bambu pause decision -> printer reports PAUSE: median {:.1} ms of 5 ({pauses:.1?})", median(pauses.clone()));
    log.wait_nth("5 Resumed", 5, LONG, |e| matches!(e, PrinterEvent::Resumed { .. })).await;
    assert_eq!(log.count(|e| matches!(e, PrinterEvent::Paused { .. })), 5);

    link.cancel().await.expect("stop confirmed");
    let (ev, _) = log.wait("Finished", LONG, is_end).await;
    assert!(matches!(ev, PrinterEvent::Finished { outcome: JobOutcome::Cancelled, .. }), "{ev:?}");
    let cmds = sim.commands();
    assert_eq!(cmds.len(), 11);
    let seqs: std::collections::HashSet<String> =
        cmds.iter().map(|c| c["print"]["sequence_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(seqs.len(), 11, "a fresh sequence_id for every command: {cmds:?}");
    assert!(cmds.iter().all(|c| c["print"]["param"] == ""), "{cmds:?}");
    assert_eq!(cmds.last().unwrap()["print"]["command"], "stop");
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_pause_is_the_printers_own_and_says_which_error() {
    let m = broker(SERIAL, CODE);
    let sim = SimPrinter::start(&m, SERIAL, HEARTBEAT, Duration::from_millis(500)).await;
    let link = link(&m);
    let log = EventLog::record(link.as_ref());
    wait_status(&link, "idle", |s| s.state == PrinterState::Idle).await;
    sim.start_print("Vase");
    wait_status(&link, "printing", |s| s.state == PrinterState::Printing).await;

    let mut lat = Vec::new();
    for n in 1..=5 {
        // The printer's AI monitoring pauses the print (0300_8003), a person resumes.
        let t = SystemTime::now();
        sim.error_pause(50364419);
        let (_, at) = log.wait_nth("Paused", n, LONG, |e| matches!(e, PrinterEvent::Paused { .. })).await;
        lat.push(secs(t, at) * 1000.0);
        wait_status(&link, "error pause", |s| s.state == PrinterState::Paused && s.message.is_some()).await;
        let msg = link.status().borrow().message.clone().unwrap();
        assert!(msg.contains("0300_8003") && msg.contains("spaghetti"), "{msg}");
        let t = SystemTime::now();
        sim.set(|s| {
            s.gcode_state = "RUNNING".into();
            s.print_error = 0;
        });
        let (_, at) = log.wait_nth("Resumed", n, LONG, |e| matches!(e, PrinterEvent::Resumed { .. })).await;
        lat.push(secs(t, at) * 1000.0);
    }
    println!("FIGURE bambu report -> event latency (pause/resume edges): median {:.1} ms of {} ({lat:.1?})", median(lat.clone()), lat.len());
    assert!(link.status().borrow().message.is_none(), "the error is gone with the pause");
    // Still the same print.
    assert_eq!(log.count(is_start), 1);
    // A pause by the user (no error) is a plain pause.
    sim.set(|s| s.gcode_state = "PAUSE".into());
    wait_status(&link, "user pause", |s| s.state == PrinterState::Paused).await;
    assert!(link.status().borrow().message.is_none());
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_ignored_commands_are_clear_errors() {
    let m = broker(SERIAL, CODE);
    let sim = SimPrinter::start(&m, SERIAL, HEARTBEAT, Duration::from_millis(500)).await;
    let mut cfg = config(&m, CODE, pinned(&m));
    cfg.action_timeout_secs = 5;
    let link = BambuLink::start_concrete(cfg, "test");
    wait_status(&link, "idle", |s| s.state == PrinterState::Idle).await;
    sim.start_print("Cube");
    wait_status(&link, "printing", |s| s.state == PrinterState::Printing).await;

    sim.set(|s| s.commands = Commands::Refuse);
    let t = Instant::now();
    let e = link.pause().await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(4), "a refusal is an error at once");
    let msg = e.to_string();
    assert!(matches!(e, PrinterError::Refused { .. }) && msg.contains("Developer Mode") && msg.contains("0x05024007"), "{msg}");

    sim.set(|s| s.commands = Commands::Ignore);
    let t = Instant::now();
    let e = link.pause().await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, PrinterError::Ignored { .. }) && msg.contains("Developer Mode") && msg.contains("LAN-only"), "{msg}");
    assert!(t.elapsed() >= Duration::from_secs(5) && t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert_eq!(sim.state().gcode_state, "RUNNING");
    assert_eq!(link.status().borrow().state, PrinterState::Printing);
    link.stop().await;
}

#[tokio::test]
async fn a_wrong_access_code_is_told_once_and_retried_slowly() {
    let (logs, _guard) = capture();
    let m = broker(SERIAL, CODE);
    let link = BambuLink::start_concrete(config(&m, "wrong123", pinned(&m)), "test");
    let log = EventLog::record(link.as_ref());
    let mut rx = link.status();
    tokio::time::timeout(LONG, rx.wait_for(|s| s.message.as_deref().is_some_and(|m| m.contains("access code")))).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let text = logs.text();
    let lines = text.lines().filter(|l| l.contains("refused the access code") && l.contains("WARN")).count();
    assert_eq!(lines, 1, "{text}");
    assert!(text.contains("WARN") && text.contains("Settings > Network"), "{text}");
    assert!(!text.contains("wrong123"), "the code never reaches the log");
    let attempts = m.log().lines().filter(|l| l.contains("not authorised")).count();
    assert_eq!(attempts, 1, "one attempt in 4 s, not a hammering:\n{}", m.log());
    assert_eq!(log.count(|e| matches!(e, PrinterEvent::Offline { .. })), 1);
    assert_eq!(link.status().borrow().state, PrinterState::Offline);
    link.stop().await;
}

#[tokio::test]
async fn a_certificate_that_is_not_the_pinned_one_is_refused_and_insecure_must_be_asked_for() {
    let (logs, _guard) = capture();
    let m = broker(SERIAL, CODE);
    let _sim = SimPrinter::start(&m, SERIAL, HEARTBEAT, TICK).await;
    let other = Fingerprint::of(b"another printer's certificate");
    let link = BambuLink::start_concrete(config(&m, CODE, Trust::Pinned(other)), "pinned");
    let mut rx = link.status();
    tokio::time::timeout(LONG, rx.wait_for(|s| s.message.as_deref().is_some_and(|m| m.contains("fingerprint")))).await.unwrap().unwrap();
    let msg = link.status().borrow().message.clone().unwrap();
    assert!(msg.contains(&fingerprint(&m)) && msg.contains("printvigil setup bambu 127.0.0.1"), "{msg}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!m.log().contains("as printvigil-pinned"), "no MQTT login over a refused certificate:\n{}", m.log());
    assert_eq!(logs.text().lines().filter(|l| l.contains("not the one pinned") && l.contains("WARN")).count(), 1, "{}", logs.text());
    link.stop().await;

    // Any certificate only when asked for in so many words.
    let insecure = BambuLink::start_concrete(config(&m, CODE, Trust::Any), "insecure");
    wait_status(&insecure, "connected without a pin", |s| s.state == PrinterState::Idle).await;
    insecure.stop().await;
    let e = printvigil::config::Config::from_toml_str(&format!(
        "[[printers]]\nname = \"b\"\nkind = \"bambu\"\nhost = \"127.0.0.1\"\nserial = \"{SERIAL}\"\naccess_code = \"{CODE}\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("fingerprint") && e.contains("insecure_skip_verify"), "{e}");
}

#[tokio::test]
async fn a_closed_port_a_silent_host_and_a_wrong_serial_each_say_what_to_check() {
    let (logs, _guard) = capture();
    let m = broker(SERIAL, CODE);
    let _sim = SimPrinter::start(&m, SERIAL, HEARTBEAT, TICK).await;
    // Nothing listens: the printer is on, local MQTT is off (LAN-only mode).
    let closed = support::mosquitto::free_unusual_port();
    let mut cfg = config(&m, CODE, pinned(&m));
    cfg.port = closed;
    let a = BambuLink::start_concrete(cfg.clone(), "closed");
    // Accepts TCP and never answers: a printer that is off behind a forwarder, a hung host.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    cfg.port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut keep = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            keep.push(s);
        }
    });
    let b = BambuLink::start_concrete(cfg, "silent");
    // The broker answers, but nothing reports for this serial.
    let mut cfg = config(&m, CODE, pinned(&m));
    cfg.serial = "00M00A000000000".into();
    let c = BambuLink::start_concrete(cfg, "serial");
    for (link, says) in [(&a, "LAN-only mode"), (&b, "does not answer"), (&c, "check serial")] {
        let mut rx = link.status();
        let r = tokio::time::timeout(LONG, rx.wait_for(|s| s.message.as_deref().is_some_and(|m| m.contains(says)))).await;
        assert!(r.is_ok(), "{says}: {:?}", link.status().borrow());
    }
    let text = logs.text();
    for says in ["LAN-only mode", "does not answer", "check serial"] {
        assert_eq!(text.lines().filter(|l| l.contains(says) && l.contains("WARN")).count(), 1, "{says}:\n{text}");
    }
    held.abort();
    for l in [a, b, c] {
        l.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_print_continues_the_same_print() {
    let mut m = broker(SERIAL, CODE);
    let sim = SimPrinter::start(&m, SERIAL, HEARTBEAT, Duration::from_millis(250)).await;
    let link = link(&m);
    let log = EventLog::record(link.as_ref());
    wait_status(&link, "idle", |s| s.state == PrinterState::Idle).await;
    sim.start_print("Long");
    let (ev, _) = log.wait("PrintStarted", LONG, is_start).await;
    let PrinterEvent::PrintStarted { job, .. } = ev else { unreachable!() };
    wait_status(&link, "printing", |s| s.state == PrinterState::Printing).await;
    let pushalls = sim.counters.pushalls.load(std::sync::atomic::Ordering::Relaxed);

    let t = Instant::now();
    m.restart();
    log.wait("Offline", LONG, |e| matches!(e, PrinterEvent::Offline { .. })).await;
    log.wait_nth("Online again", 2, LONG, |e| matches!(e, PrinterEvent::Online)).await;
    wait_status(&link, "printing again", |s| s.state == PrinterState::Printing && s.job.as_ref() == Some(&job)).await;
    println!("FIGURE bambu broker restart -> printing again on the link: {:.2} s", t.elapsed().as_secs_f64());
    assert!(sim.counters.pushalls.load(std::sync::atomic::Ordering::Relaxed) > pushalls, "pushall after the reconnect");

    let (ev, _) = log.wait("Finished", Duration::from_secs(60), is_end).await;
    assert!(matches!(&ev, PrinterEvent::Finished { job: j, outcome: JobOutcome::Completed, .. } if *j == job), "{ev:?}");
    assert_eq!((log.count(is_start), log.count(is_end)), (1, 1), "{:#?}", log.all());
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_messages_on_the_report_topic_change_nothing() {
    let m = broker(SERIAL, CODE);
    let sim = SimPrinter::start(&m, SERIAL, HEARTBEAT, Duration::from_millis(500)).await;
    let link = link(&m);
    wait_status(&link, "idle", |s| s.state == PrinterState::Idle).await;
    sim.start_print("Cube");
    wait_status(&link, "printing", |s| s.state == PrinterState::Printing).await;
    let before = link.status().borrow().job.clone();
    for raw in [
        &b"not json"[..],
        b"[]",
        b"{\"print\": 5}",
        b"{\"print\": {\"command\": \"push_status\", \"gcode_state\": 17, \"mc_percent\": \"lots\"}}",
        b"{\"info\": {\"command\": \"get_version\", \"module\": []}}",
        b"{\"print\": {\"command\": \"pause\", \"sequence_id\": \"1\", \"result\": \"success\"}}",
    ] {
        sim.raw(raw);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let st = link.status().borrow().clone();
    assert_eq!((st.state, st.job), (PrinterState::Printing, before));
    link.stop().await;
}

// ---------------------------------------------------------------------------------------
// The printer's own camera (port 6000)

use printvigil::camera::{self, CameraError, CameraKind};
use support::bambu::{CamMode, SimCamera};

fn camera_for(m: &Mosquitto, cam_port: u16, code: &str, trust: Trust) -> Box<dyn printvigil::camera::Camera> {
    let mut cfg = config(m, code, trust);
    cfg.camera_port = cam_port;
    let mut c = printvigil::camera::CameraConfig::new(CameraKind::Bambu, "");
    c.timeout_secs = 3.0;
    c.frozen_after_secs = 0.0;
    cfg.camera = Some(c);
    let entry = printvigil::printer::PrinterConfig::Bambu(cfg);
    entry.validate("printers[0]").unwrap();
    camera::from_config(&entry.camera().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printers_camera_sends_frames_through_the_frame_guard_and_recovers() {
    let m = broker(SERIAL, CODE);
    let sim = SimCamera::start(&m, CODE, CamMode::Healthy, 0.0).await;
    let mut cam = camera_for(&m, sim.port, CODE, pinned(&m));
    let first = cam.grab().await.expect("a frame");
    let (w, h) = printvigil::detector::preprocess::jpeg_dimensions(&first.jpeg).unwrap();
    assert!(w > 0 && h > 0);
    assert!(support::bambu::frames("healthy").contains(&first.jpeg), "the frame arrives byte for byte");

    // As fast as the simulated camera sends (a real one sends about 1 a second).
    let sent0 = sim.frames_sent.load(std::sync::atomic::Ordering::Relaxed);
    let (t, mut grabs) = (Instant::now(), 0u32);
    while t.elapsed() < Duration::from_secs(3) {
        cam.grab().await.expect("a frame");
        grabs += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    let read = sim.frames_sent.load(std::sync::atomic::Ordering::Relaxed) - sent0;
    println!(
        "FIGURE bambu camera path ({} build): {:.0} frames/s read over TLS ({} KiB frames), {:.0} grabs/s through the frame guard",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        read as f64 / secs,
        first.jpeg.len() / 1024,
        grabs as f64 / secs
    );

    // An oversize header ends the connection before anything is allocated for it.
    sim.set(CamMode::Oversize);
    let e = loop {
        match cam.grab().await {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(matches!(e, CameraError::TooLarge { .. }), "{e}");
    sim.set(CamMode::NotJpeg);
    let e = loop {
        match cam.grab().await {
            Ok(_) => continue,
            Err(CameraError::TooLarge { .. }) => continue,
            Err(e) => break e,
        }
    };
    assert!(matches!(e, CameraError::BambuProtocol { .. }) && e.to_string().contains("RTSPS"), "{e}");
    // Back to frames after a reconnect.
    sim.set(CamMode::Failing);
    let failing = support::bambu::frames("failing");
    let deadline = Instant::now() + LONG;
    loop {
        if let Ok(f) = cam.grab().await
            && failing.contains(&f.jpeg)
        {
            break;
        }
        assert!(Instant::now() < deadline, "no frames after the reconnect");
    }
    assert!(sim.connections.load(std::sync::atomic::Ordering::Relaxed) >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_errors_say_what_to_do() {
    let m = broker(SERIAL, CODE);
    let sim = SimCamera::start(&m, CODE, CamMode::Healthy, 5.0).await;
    // A wrong access code: the printer hangs up after the access packet.
    let e = camera_for(&m, sim.port, "wrong123", pinned(&m)).grab().await.unwrap_err();
    assert!(matches!(e, CameraError::BambuAccess { .. }) && e.to_string().contains("access code"), "{e}");
    assert!(!e.to_string().contains("wrong123"), "{e}");
    assert!(sim.refused.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    // Nothing on the port: an X1/H2/P2S, whose camera is RTSPS on 322.
    let closed = support::mosquitto::free_unusual_port();
    let e = camera_for(&m, closed, CODE, pinned(&m)).grab().await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("RTSPS on port 322") && msg.contains("kind = \"snapshot\""), "{msg}");
    // A certificate that is not the pinned one.
    let e = camera_for(&m, sim.port, CODE, Trust::Pinned(Fingerprint([9; 32]))).grab().await.unwrap_err();
    assert!(matches!(&e, CameraError::BambuCertificate { shown, .. } if *shown == fingerprint(&m)), "{e}");
    // Any certificate when asked for.
    assert!(camera_for(&m, sim.port, CODE, Trust::Any).grab().await.is_ok());
}

// ---------------------------------------------------------------------------------------
// printvigil setup bambu HOST

fn setup_options(m: &Mosquitto, camera_port: u16) -> printvigil::setup::bambu::Options {
    printvigil::setup::bambu::Options {
        name: "p1s".into(),
        host: "127.0.0.1".into(),
        port: m.port,
        camera_port,
        serial: None,
        access_code: Some(CODE.into()),
        yes: false,
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_shows_the_fingerprint_and_writes_the_entry_once_confirmed() {
    let m = broker(SERIAL, CODE);
    let _sim = SimPrinter::start(&m, SERIAL, HEARTBEAT, TICK).await;
    let cam = SimCamera::start(&m, CODE, CamMode::Healthy, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let original = "# my printers\n[watch]\ncadence_secs = 10 # keep\n";
    std::fs::write(&path, original).unwrap();

    // Not confirmed: nothing written.
    let mut out = Vec::new();
    let e = printvigil::setup::bambu::run(&path, &setup_options(&m, cam.port), &mut &b"n\n"[..], &mut out).await.unwrap_err();
    assert!(e.to_string().contains("not confirmed"), "{e}");
    let shown = String::from_utf8_lossy(&out).to_string();
    assert!(shown.contains(&fingerprint(&m)) && shown.contains(SERIAL), "{shown}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);

    // A wrong access code is found before anything is written.
    let mut o = setup_options(&m, cam.port);
    o.access_code = Some("wrong123".into());
    let e = printvigil::setup::bambu::run(&path, &o, &mut &b"y\n"[..], &mut Vec::new()).await.unwrap_err();
    assert!(e.to_string().contains("refused the access code"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);

    // Confirmed: the serial comes from the certificate, the camera port answers.
    let mut out = Vec::new();
    printvigil::setup::bambu::run(&path, &setup_options(&m, cam.port), &mut &b"y\n"[..], &mut out).await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(original), "comments and settings kept:\n{text}");
    let config = printvigil::config::Config::from_toml_str(&text).unwrap();
    let printvigil::printer::PrinterConfig::Bambu(b) = &config.printers[0] else { panic!("{text}") };
    assert_eq!((b.host.as_str(), b.serial.as_str(), b.port, b.camera_port), ("127.0.0.1", SERIAL, m.port, cam.port));
    assert_eq!(b.access_code.as_ref().unwrap().expose(), CODE);
    assert_eq!(b.fingerprint.as_deref(), Some(fingerprint(&m).as_str()));
    assert_eq!(b.camera.as_ref().unwrap().kind, CameraKind::Bambu);
    // What was written works.
    let link = BambuLink::start_concrete(b.clone(), "written");
    wait_status(&link, "connected with the written entry", |s| s.state == PrinterState::Idle).await;
    link.stop().await;
    assert!(camera::from_config(&config.printers[0].camera().unwrap()).unwrap().grab().await.is_ok());
}

#[test]
fn setup_bambu_on_the_command_line_writes_the_entry_without_asking_when_told() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let m = broker(SERIAL, CODE);
    let _sim = rt.block_on(SimPrinter::start(&m, SERIAL, HEARTBEAT, TICK));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let closed = support::mosquitto::free_unusual_port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_printvigil"))
        .arg("--config")
        .arg(&path)
        .args(["setup", "bambu", "127.0.0.1", "--name", "x1c", "--yes", "--timeout", "5"])
        .args(["--port", &m.port.to_string(), "--camera-port", &closed.to_string(), "--serial", SERIAL])
        .env("PRINTVIGIL_BAMBU_ACCESS_CODE", CODE)
        .env("PRINTVIGIL_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&fingerprint(&m)) && stdout.contains("RTSPS on port 322"), "{stdout}");
    assert!(!stdout.contains(CODE), "{stdout}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("kind = \"bambu\"") && text.contains(&fingerprint(&m)) && !text.contains("camera = "), "{text}");
    drop(_sim);
    rt.shutdown_timeout(Duration::from_secs(1));
}
