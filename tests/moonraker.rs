//! The Moonraker link against real Moonraker and Klipper (klippy with a simulated MCU).
//! Peers come from the venvs `scripts/test.sh` builds; see tests/support/klipper.rs.
//!
//! Figures (start latency, pause latency) are printed; see them with
//! `cargo test --test moonraker -- --nocapture`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use printvigil::printer::moonraker::{ApiKeyVia, MoonrakerConfig, MoonrakerLink};
use printvigil::printer::{JobId, JobOutcome, PrinterEvent, PrinterLink, PrinterState};
use printvigil::secret::Secret;
use support::EventLog;
use support::klipper::{Options, Peers, dwell_gcode};
use support::proxy::Proxy;

const LONG: Duration = Duration::from_secs(90);

fn link_to(url: &str, instance: &str) -> Arc<MoonrakerLink> {
    MoonrakerLink::start_concrete(MoonrakerConfig::new("sim", url), instance)
}

fn is_online(e: &PrinterEvent) -> bool {
    matches!(e, PrinterEvent::Online)
}
fn is_start(e: &PrinterEvent) -> bool {
    matches!(e, PrinterEvent::PrintStarted { .. })
}
fn is_end(e: &PrinterEvent) -> bool {
    matches!(e, PrinterEvent::Finished { .. })
}
fn started_file(e: &PrinterEvent) -> Option<(&JobId, &str)> {
    match e {
        PrinterEvent::PrintStarted { job, file } => Some((job, file)),
        _ => None,
    }
}
fn finished(e: &PrinterEvent) -> Option<(&JobId, &str, &JobOutcome)> {
    match e {
        PrinterEvent::Finished { job, file, outcome } => Some((job, file, outcome)),
        _ => None,
    }
}

fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a).map(|d| d.as_secs_f64()).unwrap_or_else(|e| -e.duration().as_secs_f64())
}

/// Klipper's own start time of the newest job, from Moonraker's history.
async fn history_start_time(peers: &Peers) -> SystemTime {
    let v = peers.get("/server/history/list?limit=1&order=desc").await;
    let t = v["jobs"][0]["start_time"].as_f64().expect("a history entry");
    SystemTime::UNIX_EPOCH + Duration::from_secs_f64(t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_complete_and_cancel_are_each_reported_once() {
    let peers = Peers::start(Options::default()).await;
    let link = link_to(&peers.url(), "start-complete-cancel");
    let log = EventLog::record(link.as_ref());
    log.wait("Online", LONG, is_online).await;

    // A short print that completes.
    peers.write_gcode("short.gcode", &dwell_gcode(2.0, 250));
    let requested = peers.start_print("short.gcode").await;
    let (ev, seen) = log.wait("the print start", LONG, is_start).await;
    assert_eq!(started_file(&ev).unwrap().1, "short.gcode");
    let klipper_start = history_start_time(&peers).await;
    eprintln!(
        "FIGURE start latency: {:.3} s from Klipper's print start (history start_time), {:.3} s from the start request",
        secs_between(klipper_start, seen),
        secs_between(requested, seen)
    );
    let (ev, _) = log.wait("the print end", LONG, is_end).await;
    let (job, file, outcome) = finished(&ev).unwrap();
    assert_eq!((file, outcome), ("short.gcode", &JobOutcome::Completed));
    assert_eq!(job, started_file(&log.all().into_iter().find(is_start).unwrap()).unwrap().0);
    assert_eq!(peers.print_state().await, "complete");

    // A long print cancelled by printvigil.
    peers.write_gcode("long.gcode", &dwell_gcode(120.0, 250));
    peers.start_print("long.gcode").await;
    log.wait_nth("the second print start", 2, LONG, is_start).await;
    link.cancel().await.expect("cancel is confirmed");
    assert_eq!(peers.print_state().await, "cancelled");
    let (ev, _) = log.wait_nth("the second print end", 2, LONG, is_end).await;
    assert_eq!(finished(&ev).unwrap().2, &JobOutcome::Cancelled);

    // Let late notifications arrive, then check nothing was reported twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kinds: Vec<String> = log
        .all()
        .iter()
        .filter_map(|e| match e {
            PrinterEvent::PrintStarted { file, .. } => Some(format!("start {file}")),
            PrinterEvent::Finished { file, outcome, .. } => Some(format!("end {file} {outcome:?}")),
            PrinterEvent::Paused { .. } | PrinterEvent::Resumed { .. } => Some(format!("{e:?}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "start short.gcode",
            "end short.gcode Completed",
            "start long.gcode",
            "end long.gcode Cancelled"
        ]
    );
    // An action in the wrong state is refused without touching the printer.
    assert!(link.pause().await.is_err());
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_prints_in_a_row_each_start_and_end_once() {
    let peers = Peers::start(Options::default()).await;
    let link = link_to(&peers.url(), "five-prints");
    let log = EventLog::record(link.as_ref());
    log.wait("Online", LONG, is_online).await;
    let mut from_klipper = Vec::new();
    let mut from_request = Vec::new();
    for n in 1..=5 {
        let name = format!("p{n}.gcode");
        peers.write_gcode(&name, &dwell_gcode(1.5, 250));
        let requested = peers.start_print(&name).await;
        let (ev, seen) = log.wait_nth("a print start", n, LONG, is_start).await;
        assert_eq!(started_file(&ev).unwrap().1, name);
        from_klipper.push(secs_between(history_start_time(&peers).await, seen));
        from_request.push(secs_between(requested, seen));
        let (ev, _) = log.wait_nth("a print end", n, LONG, is_end).await;
        assert_eq!(finished(&ev).unwrap().1, name);
        assert_eq!(finished(&ev).unwrap().2, &JobOutcome::Completed);
    }
    eprintln!(
        "FIGURE start latency from Klipper's print start (history start_time), 5 prints: {from_klipper:.3?} s"
    );
    eprintln!("FIGURE start latency from the start request, 5 prints: {from_request:.3?} s");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(log.count(is_start), 5, "{:#?}", log.all());
    assert_eq!(log.count(is_end), 5, "{:#?}", log.all());
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_by_printvigil_really_pause_klipper() {
    let peers = Peers::start(Options::default()).await;
    let link = link_to(&peers.url(), "pause-resume");
    let log = EventLog::record(link.as_ref());
    log.wait("Online", LONG, is_online).await;
    peers.write_gcode("long.gcode", &dwell_gcode(120.0, 250));
    peers.start_print("long.gcode").await;
    log.wait("the print start", LONG, is_start).await;
    let mut pause_figures = Vec::new();
    for round in 1..=5 {
        let t = Instant::now();
        link.pause().await.expect("pause is confirmed");
        pause_figures.push(t.elapsed().as_secs_f64());
        assert_eq!(peers.print_state().await, "paused", "Klipper itself must be paused");
        assert_eq!(link.status().borrow().state, PrinterState::Paused);
        log.wait_nth("Paused", round, LONG, |e| matches!(e, PrinterEvent::Paused { job: Some(_) }))
            .await;
        link.resume().await.expect("resume is confirmed");
        assert_eq!(peers.print_state().await, "printing");
        log.wait_nth("Resumed", round, LONG, |e| matches!(e, PrinterEvent::Resumed { job: Some(_) }))
            .await;
    }
    eprintln!("FIGURE pause request -> Klipper paused (confirmed by the link): {pause_figures:.3?} s");
    link.cancel().await.expect("cancel is confirmed");
    log.wait("the print end", LONG, is_end).await;
    assert_eq!(log.count(is_start), 1);
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timelapse_park_is_not_reported_as_a_pause() {
    let peers = Peers::start(Options::default()).await;
    let link = link_to(&peers.url(), "timelapse");
    let log = EventLog::record(link.as_ref());
    log.wait("Online", LONG, is_online).await;
    // Record every state the link publishes, to prove Klipper really paused for the frame.
    let mut status = link.status();
    let seen_paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sp = seen_paused.clone();
    tokio::spawn(async move {
        while status.changed().await.is_ok() {
            if status.borrow().state == PrinterState::Paused {
                sp.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let mut g = dwell_gcode(1.0, 250);
    g.push_str("TIMELAPSE_TAKE_FRAME PARK_MS=1500\n");
    g.push_str(&dwell_gcode(1.0, 250));
    g.push_str("TIMELAPSE_TAKE_FRAME PARK_MS=1500\n");
    g.push_str(&dwell_gcode(1.0, 250));
    peers.write_gcode("timelapse.gcode", &g);
    peers.start_print("timelapse.gcode").await;
    let (ev, _) = log.wait("the print end", LONG, is_end).await;
    assert_eq!(finished(&ev).unwrap().2, &JobOutcome::Completed);
    assert!(
        seen_paused.load(std::sync::atomic::Ordering::SeqCst),
        "Klipper never reported `paused` during the timelapse parks: the test proves nothing"
    );
    let pauses = log.count(|e| matches!(e, PrinterEvent::Paused { .. } | PrinterEvent::Resumed { .. }));
    assert_eq!(pauses, 0, "timelapse parks were reported: {:#?}", log.all());
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moonraker_restarted_mid_print_reattaches_without_a_second_start() {
    let mut peers = Peers::start(Options::default()).await;
    let link = link_to(&peers.url(), "moonraker-restart");
    let log = EventLog::record(link.as_ref());
    log.wait("Online", LONG, is_online).await;
    peers.write_gcode("print.gcode", &dwell_gcode(30.0, 250));
    peers.start_print("print.gcode").await;
    let (ev, _) = log.wait("the print start", LONG, is_start).await;
    let job = started_file(&ev).unwrap().0.clone();
    // First a clean stop and start (history entry closed as `server_exit`), then a crash
    // (the entry is left `in_progress` and marked `interrupted` at the next start).
    for (round, graceful) in [(1, true), (2, false)] {
        if graceful {
            peers.stop_moonraker();
        } else {
            peers.kill_moonraker();
        }
        log.wait_nth("Offline", round, LONG, |e| matches!(e, PrinterEvent::Offline { .. })).await;
        peers.start_moonraker().await;
        log.wait_nth("Online again", round + 1, LONG, is_online).await;
        assert_eq!(peers.print_state().await, "printing", "the print must survive Moonraker's restart");
        assert_eq!(log.count(is_end), 0, "round {round}: {:#?}", log.all());
    }
    let (ev, _) = log.wait("the print end", LONG, is_end).await;
    let (end_job, _, outcome) = finished(&ev).unwrap();
    eprintln!("moonraker restart: events {:#?}", log.all());
    assert_eq!(outcome, &JobOutcome::Completed);
    assert_eq!(end_job, &job, "the end must belong to the print that started");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(log.count(is_start), 1, "{:#?}", log.all());
    assert_eq!(log.count(is_end), 1, "{:#?}", log.all());
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_restart_mid_print_ends_the_print_as_failed() {
    let peers = Peers::start(Options::default()).await;
    let link = link_to(&peers.url(), "firmware-restart");
    let log = EventLog::record(link.as_ref());
    log.wait("Online", LONG, is_online).await;
    peers.write_gcode("print.gcode", &dwell_gcode(120.0, 250));
    peers.start_print("print.gcode").await;
    log.wait("the print start", LONG, is_start).await;
    peers.post("/printer/firmware_restart").await;
    let (ev, _) = log.wait("the print end", LONG, is_end).await;
    assert!(matches!(finished(&ev).unwrap().2, JobOutcome::Failed(_)), "{ev:?}");
    log.wait_nth("Online after the restart", 2, LONG, is_online).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!("firmware restart: events {:#?}", log.all());
    assert!(log.count(|e| matches!(e, PrinterEvent::Offline { .. })) >= 1);
    assert_eq!(log.count(is_start), 1);
    assert_eq!(log.count(is_end), 1);
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_stop_mid_print_is_a_halt_not_a_finished_print() {
    let peers = Peers::start(Options::default()).await;
    let link = link_to(&peers.url(), "estop");
    let log = EventLog::record(link.as_ref());
    log.wait("Online", LONG, is_online).await;
    peers.write_gcode("print.gcode", &dwell_gcode(120.0, 250));
    peers.start_print("print.gcode").await;
    log.wait("the print start", LONG, is_start).await;
    peers.post("/printer/emergency_stop").await;
    let (ev, _) = log.wait("Halted", LONG, |e| matches!(e, PrinterEvent::Halted { .. })).await;
    eprintln!("emergency stop: {ev:?}");
    let (ev, _) = log.wait("the print end", LONG, is_end).await;
    assert!(matches!(finished(&ev).unwrap().2, JobOutcome::Failed(_)), "{ev:?}");
    assert_eq!(link.status().borrow().state, PrinterState::Error);
    // Recover as a user would.
    peers.post("/printer/firmware_restart").await;
    log.wait_nth("Online after the restart", 2, LONG, is_online).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!("emergency stop: events {:#?}", log.all());
    assert_eq!(log.count(is_start), 1);
    assert_eq!(log.count(is_end), 1);
    assert_eq!(
        log.count(|e| matches!(e, PrinterEvent::Finished { outcome: JobOutcome::Completed, .. })),
        0
    );
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_recreated_mid_print_attaches_to_the_same_print() {
    let peers = Peers::start(Options::default()).await;
    let link = link_to(&peers.url(), "recreated");
    let log = EventLog::record(link.as_ref());
    log.wait("Online", LONG, is_online).await;
    peers.write_gcode("print.gcode", &dwell_gcode(12.0, 250));
    peers.start_print("print.gcode").await;
    let (ev, _) = log.wait("the print start", LONG, is_start).await;
    let job = started_file(&ev).unwrap().0.clone();
    link.pause().await.expect("pause is confirmed");
    link.stop().await;
    drop(link);

    // printvigil restarted: a new link, same instance name, finds the print paused.
    let link = link_to(&peers.url(), "recreated");
    let log2 = EventLog::record(link.as_ref());
    let (ev, _) = log2.wait("Attached", LONG, |e| matches!(e, PrinterEvent::Attached { .. })).await;
    assert!(
        matches!(&ev, PrinterEvent::Attached { job: j, file, paused: true } if *j == job && file == "print.gcode"),
        "{ev:?}"
    );
    assert_eq!(link.status().borrow().job.as_ref(), Some(&job));
    link.resume().await.expect("the new link resumes the print");
    assert_eq!(peers.print_state().await, "printing");
    log2.wait("Resumed", LONG, |e| matches!(e, PrinterEvent::Resumed { job: Some(j) } if *j == job))
        .await;
    let (ev, _) = log2.wait("the print end", LONG, is_end).await;
    assert_eq!(finished(&ev).unwrap().0, &job);
    assert_eq!(log2.count(is_start), 0, "{:#?}", log2.all());
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_dropped_mid_print_reports_what_happened_meanwhile_in_order() {
    let peers = Peers::start(Options::default()).await;
    let proxy = Proxy::start(peers.port).await;
    let link = link_to(&format!("http://127.0.0.1:{}", proxy.port), "dropped");
    let log = EventLog::record(link.as_ref());
    log.wait("Online", LONG, is_online).await;
    peers.write_gcode("a.gcode", &dwell_gcode(3.0, 250));
    peers.write_gcode("b.gcode", &dwell_gcode(1.0, 250));
    peers.write_gcode("c.gcode", &dwell_gcode(120.0, 250));
    peers.start_print("a.gcode").await;
    log.wait("the start of a", LONG, is_start).await;

    proxy.cut();
    log.wait("Offline", LONG, |e| matches!(e, PrinterEvent::Offline { .. })).await;
    // While the link is down: a completes, b runs whole, c starts.
    wait_state(&peers, "complete").await;
    peers.start_print("b.gcode").await;
    wait_state(&peers, "complete").await;
    peers.start_print("c.gcode").await;
    wait_state(&peers, "printing").await;
    proxy.restore();

    log.wait_nth("Online again", 2, LONG, is_online).await;
    log.wait_nth("the start of c", 3, LONG, is_start).await;
    let seq: Vec<String> = log
        .all()
        .iter()
        .filter_map(|e| match e {
            PrinterEvent::PrintStarted { file, .. } => Some(format!("start {file}")),
            PrinterEvent::Finished { file, outcome, .. } => Some(format!("end {file} {outcome:?}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        seq,
        [
            "start a.gcode",
            "end a.gcode Completed",
            "start b.gcode",
            "end b.gcode Completed",
            "start c.gcode"
        ]
    );
    // The re-attached link still acts on the running print.
    link.cancel().await.expect("cancel is confirmed");
    log.wait_nth("the end of c", 3, LONG, is_end).await;
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_connection_is_noticed_and_redone() {
    let peers = Peers::start(Options::default()).await;
    let proxy = Proxy::start(peers.port).await;
    let mut cfg = MoonrakerConfig::new("sim", &format!("http://127.0.0.1:{}", proxy.port));
    cfg.request_timeout_secs = 2;
    let link = MoonrakerLink::start_concrete(cfg, "stalled");
    let log = EventLog::record(link.as_ref());
    log.wait("Online", LONG, is_online).await;
    proxy.freeze();
    let (ev, _) = log.wait("Offline", LONG, |e| matches!(e, PrinterEvent::Offline { .. })).await;
    assert!(
        matches!(&ev, PrinterEvent::Offline { reason } if reason.contains("stopped answering")),
        "{ev:?}"
    );
    log.wait_nth("Online on a new connection", 2, LONG, is_online).await;
    // The new connection works: a print is seen.
    peers.write_gcode("s.gcode", &dwell_gcode(1.0, 250));
    peers.start_print("s.gcode").await;
    log.wait("the print start", LONG, is_start).await;
    link.stop().await;
}

async fn wait_state(peers: &Peers, want: &str) {
    let deadline = Instant::now() + LONG;
    while peers.print_state().await != want {
        assert!(Instant::now() < deadline, "Klipper never reached `{want}`\n{}", peers.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn api_key_link(
    peers: &Peers,
    key: Option<&str>,
    via: ApiKeyVia,
    instance: &str,
) -> (Arc<MoonrakerLink>, EventLog) {
    let mut cfg = MoonrakerConfig::new("sim", &peers.url());
    cfg.api_key = key.map(Secret::new);
    cfg.api_key_via = via;
    let link = MoonrakerLink::start_concrete(cfg, instance);
    let log = EventLog::record(link.as_ref());
    (link, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_mode_right_key_connects_wrong_or_no_key_is_refused() {
    let peers = Peers::start(Options { api_key_mode: true }).await;
    let key = peers.api_key.clone().expect("the API key");
    // Moonraker really refuses a client without the key.
    let resp = reqwest::get(format!("{}/server/info", peers.url())).await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    let (good, good_log) = api_key_link(&peers, Some(&key), ApiKeyVia::Header, "key-header").await;
    let (token, token_log) =
        api_key_link(&peers, Some(&key), ApiKeyVia::OneshotToken, "key-token").await;
    let (wrong, wrong_log) =
        api_key_link(&peers, Some("0123456789abcdef0123456789abcdef"), ApiKeyVia::Header, "key-wrong")
            .await;
    let (wrong_t, wrong_t_log) = api_key_link(
        &peers,
        Some("0123456789abcdef0123456789abcdef"),
        ApiKeyVia::OneshotToken,
        "key-wrong-token",
    )
    .await;
    let (none, none_log) = api_key_link(&peers, None, ApiKeyVia::Header, "key-none").await;

    good_log.wait("Online with the key in a header", LONG, is_online).await;
    token_log.wait("Online with a one-shot token", LONG, is_online).await;
    for (name, log) in
        [("wrong key", &wrong_log), ("wrong key, token", &wrong_t_log), ("no key", &none_log)]
    {
        let (ev, _) = log.wait(name, LONG, |e| matches!(e, PrinterEvent::Offline { .. })).await;
        let PrinterEvent::Offline { reason } = ev else { unreachable!() };
        assert!(reason.contains("API key"), "{name}: the reason must say to set the API key: {reason}");
    }
    // The refused links never come online, and report the refusal once, not in a loop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (name, log) in
        [("wrong key", &wrong_log), ("wrong key, token", &wrong_t_log), ("no key", &none_log)]
    {
        assert_eq!(log.count(is_online), 0, "{name}: {:#?}", log.all());
        assert_eq!(
            log.count(|e| matches!(e, PrinterEvent::Offline { .. })),
            1,
            "{name}: {:#?}",
            log.all()
        );
    }
    // The key never shows in what the link publishes.
    let shown = format!("{:?}{:?}", good.status().borrow().clone(), good_log.all());
    assert!(!shown.contains(&key));
    // The keyed link works for real: start a print and see it.
    peers.write_gcode("k.gcode", &dwell_gcode(1.0, 250));
    peers.start_print("k.gcode").await;
    good_log.wait("the print start", LONG, is_start).await;
    for l in [good, token, wrong, wrong_t, none] {
        l.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cameras_and_status_come_from_moonraker() {
    let peers = Peers::start(Options::default()).await;
    let link = link_to(&peers.url(), "cameras");
    let log = EventLog::record(link.as_ref());
    log.wait("Online", LONG, is_online).await;
    let mut cams = link.cameras();
    let cams =
        tokio::time::timeout(LONG, cams.wait_for(|c| !c.is_empty())).await.unwrap().unwrap().clone();
    assert_eq!(cams.len(), 1);
    assert_eq!(cams[0].name, "test_cam");
    assert_eq!(cams[0].snapshot_url.as_deref(), Some("http://127.0.0.1/webcam/?action=snapshot"));
    assert_eq!((cams[0].rotation, cams[0].flip_horizontal, cams[0].flip_vertical), (90, true, false));

    // A camera added in Moonraker reaches the link through notify_webcams_changed.
    peers
        .post("/server/webcams/item?name=nozzle&service=mjpegstreamer&snapshot_url=http://10.0.0.9/snap&stream_url=/nozzle/stream&rotation=180&flip_vertical=true")
        .await;
    let mut cams_rx = link.cameras();
    let cams = tokio::time::timeout(LONG, cams_rx.wait_for(|c| c.len() == 2))
        .await
        .expect("the new camera")
        .unwrap()
        .clone();
    let nozzle = cams.iter().find(|c| c.name == "nozzle").expect("the nozzle camera");
    assert_eq!(nozzle.snapshot_url.as_deref(), Some("http://10.0.0.9/snap"));
    assert_eq!(nozzle.stream_url.as_deref(), Some("http://127.0.0.1/nozzle/stream"));
    assert_eq!((nozzle.rotation, nozzle.flip_horizontal, nozzle.flip_vertical), (180, false, true));

    // Heat the bed and watch the temperature the simulated MCU's heater model produces.
    peers.post("/printer/gcode/script?script=M140%20S60").await;
    let mut status = link.status();
    let s = tokio::time::timeout(
        LONG,
        status.wait_for(|s| {
            s.temperatures.iter().any(|t| t.name == "heater_bed" && t.target == 60.0 && t.actual > 30.0)
        }),
    )
    .await
    .expect("the bed heats up")
    .unwrap()
    .clone();
    assert_eq!(s.state, PrinterState::Idle);
    assert!(s.temperatures.iter().any(|t| t.name == "extruder"));
    link.stop().await;
}
