//! The watch loop in process: a simulated printer (a real `PrinterLink`), a camera whose
//! frames the test chooses, the bundled demo model, and the fake Obico server. End-to-end
//! runs against real Moonraker and Klipper are in tests/e2e.rs.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use printvigil::camera::{Camera, CameraError, Frame, Grab};
use printvigil::config::Config;
use printvigil::detector::Detector;
use printvigil::detector::model::{Model, SessionSettings};
use printvigil::printer::sim::SimPrinter;
use printvigil::printer::{JobOutcome, PrinterLink};
use printvigil::server::config::{ServerConfig, UploadMode};
use printvigil::server::{DEFAULT_PRINTER, Mirror};
use printvigil::watch::state::{StateStore, state_file};
use printvigil::watch::control::{Command, CommandError, Outcome};
use printvigil::watch::supervisor::{Parts, supervise};
use printvigil::watch::view::{Board, Decision, PrinterView, WatchPhase};
use printvigil::watch::{Action, CameraChoice, WatchEvent, WatchSpec};
use support::fake_obico::{self, FakeObico, Settings};
use tokio::sync::broadcast;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn frame(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("models/frames").join(name)).unwrap()
}

/// A camera whose next frame the test sets; `None` makes it fail like a dead camera.
#[derive(Clone)]
struct TestCamera(Arc<Mutex<Option<Vec<u8>>>>);

impl TestCamera {
    fn new(jpeg: Vec<u8>) -> Self {
        Self(Arc::new(Mutex::new(Some(jpeg))))
    }
    fn set(&self, jpeg: Option<Vec<u8>>) {
        *self.0.lock().unwrap() = jpeg;
    }
}

impl Camera for TestCamera {
    fn name(&self) -> &str {
        "test camera"
    }
    fn grab(&mut self) -> Grab<'_> {
        let f = self.0.lock().unwrap().clone();
        Box::pin(async move {
            f.map(|jpeg| Frame { jpeg, taken: SystemTime::now() }).ok_or(CameraError::Connect {
                url: "http://camera.test/snap".into(),
                reason: "connection refused".into(),
            })
        })
    }
}

fn detector() -> Detector {
    support::init_onnxruntime();
    Detector::new(Model::load(&repo().join("models/demo.onnx"), None, SessionSettings::new(1)).unwrap())
}

fn config(state: &Path, action: Action) -> Config {
    let mut c = Config::from_toml_str(&format!(
        "state_dir = {:?}\n[watch]\ncadence_secs = 0.02\nallow_fast_cadence = true\ncooldown_secs = 60\n",
        state
    ))
    .unwrap();
    c.watch.action_on_failure = action;
    c
}

fn server_cfg(fake: &FakeObico) -> ServerConfig {
    ServerConfig {
        printer_name: Some("watch-test".into()),
        upload: UploadMode::Always,
        upload_min_interval_secs: 0.0,
        request_timeout_secs: 1.0,
        backoff_initial_ms: 10,
        backoff_cap_secs: 0.2,
        ..fake.server_config()
    }
}

/// A running supervisor over one simulated printer.
struct Rig {
    camera: TestCamera,
    board: Arc<Board>,
    seen: Vec<WatchEvent>,
    events: broadcast::Receiver<WatchEvent>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Rig {
    async fn start(config: &Config, printer: &Arc<SimPrinter>, mirror: Option<Arc<Mirror>>, first: Vec<u8>) -> Rig {
        let camera = TestCamera::new(first);
        Self::start_with(config, printer, mirror, camera.clone(), CameraChoice::Ready(Box::new(camera))).await
    }

    /// As `start`, watching through `choice` (`camera` stays the test's handle).
    async fn start_with(
        config: &Config,
        printer: &Arc<SimPrinter>,
        mirror: Option<Arc<Mirror>>,
        camera: TestCamera,
        choice: CameraChoice,
    ) -> Rig {
        let spec = WatchSpec {
            name: "sim".into(),
            mirror_key: DEFAULT_PRINTER.into(),
            link: printer.clone(),
            camera: choice,
            action: config.watch.action_on_failure,
        };
        let board = Board::new();
        let parts = Parts {
            scheduler: printvigil::watch::frame_scheduler(vec![detector()], config.watch.cadence()),
            mirror,
            store: Arc::new(StateStore::open(&state_file(&config.state_dir)).unwrap()),
            board: board.clone(),
        };
        let (tx, events) = broadcast::channel(4096);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = config.clone();
        let task = tokio::spawn(async move {
            supervise(&config, vec![spec], parts, tx, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Rig { camera, board, seen: Vec::new(), events, stop: Some(stop), task }
    }

    /// Waits for an event matching `want`, returning it; fails after `limit`.
    async fn wait(&mut self, what: &str, limit: Duration, want: impl Fn(&WatchEvent) -> bool) -> WatchEvent {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Ok(ev)) => {
                    self.seen.push(ev.clone());
                    if want(&ev) {
                        return ev;
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(e)) => panic!("waiting for {what}: {e}"),
                Err(_) => panic!("waiting for {what}: nothing within {limit:?}"),
            }
        }
    }

    /// Like `wait`, but an event already seen counts.
    async fn seen_or_wait(&mut self, what: &str, limit: Duration, want: impl Fn(&WatchEvent) -> bool) -> WatchEvent {
        if let Some(ev) = self.seen.iter().find(|e| want(e)) {
            return ev.clone();
        }
        self.wait(what, limit, want).await
    }

    async fn scored_until(&mut self, n: u64) -> u64 {
        match self.wait("scored frame", Duration::from_secs(60), |e| matches!(e, WatchEvent::Scored { frame_num, .. } if *frame_num >= n)).await {
            WatchEvent::Scored { frame_num, .. } => frame_num,
            _ => unreachable!(),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), self.task).await.expect("the supervisor stops").unwrap();
    }
}

/// A print of `file` started on a watched simulated printer whose camera shows `first`;
/// no server.
async fn printing(action: Action, file: &str, first: &str) -> (tempfile::TempDir, Arc<SimPrinter>, Rig) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), action);
    let printer = SimPrinter::new("sim");
    let rig = Rig::start(&cfg, &printer, None, frame(first)).await;
    printer.start_print(file);
    (dir, printer, rig)
}

/// A print under way past the detector's warm-up, on healthy frames: the next frames can
/// lead to a decision.
async fn past_warm_up(action: Action, file: &str) -> (tempfile::TempDir, Arc<SimPrinter>, Rig) {
    let (dir, printer, mut rig) = printing(action, file, "00-healthy.jpg").await;
    rig.scored_until(31).await;
    (dir, printer, rig)
}

/// A watched simulated printer (action: pause) whose camera shows a healthy frame, its
/// events mirrored to a fake server through a running outbox; no print yet.
async fn mirrored() -> (tempfile::TempDir, Arc<FakeObico>, Arc<Mirror>, Arc<SimPrinter>, Rig) {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_obico::start(Settings::default()).await;
    let mut cfg = config(dir.path(), Action::Pause);
    cfg.server = Some(server_cfg(&fake));
    let mirror = Arc::new(Mirror::open(cfg.server.as_ref().unwrap(), dir.path()).unwrap());
    mirror.spawn();
    let printer = SimPrinter::new("sim");
    let rig = Rig::start(&cfg, &printer, Some(mirror.clone()), frame("02-healthy.jpg")).await;
    (dir, fake, mirror, printer, rig)
}

fn pauses(p: &SimPrinter) -> usize {
    p.actions().iter().filter(|a| a.0 == "pause").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_print_is_paused_once_and_mirrored_in_order() {
    let (dir, fake, mirror, printer, mut rig) = mirrored().await;
    printer.start_print("benchy.gcode");
    rig.wait("print start", Duration::from_secs(10), |e| matches!(e, WatchEvent::PrintStarted { continued: false, .. })).await;
    // Warm-up on healthy frames: no decision is possible before frame 30.
    rig.scored_until(32).await;
    assert_eq!(pauses(&printer), 0, "healthy frames never pause");
    rig.camera.set(Some(frame("08-failing.jpg")));
    let acted = rig.wait("the pause", Duration::from_secs(30), |e| matches!(e, WatchEvent::Acted { .. })).await;
    let WatchEvent::Acted { action, result, decided, done, .. } = acted else { unreachable!() };
    assert_eq!((action, result), (Action::Pause, Ok(())));
    println!("decision -> printer confirmed paused: {:?}", done - decided);
    assert_eq!(printer.status().borrow().state, printvigil::printer::PrinterState::Paused);
    let saved = rig.seen_or_wait("the decision frame", Duration::from_secs(10), |e| matches!(e, WatchEvent::FrameSaved { .. })).await;
    let WatchEvent::FrameSaved { path, .. } = saved else { unreachable!() };
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..2], &[0xFF, 0xD8], "an annotated JPEG at {}", path.display());
    assert!(path.starts_with(dir.path().join("frames/sim")), "{}", path.display());

    // The user resumes; the frames keep failing: no second pause in this print.
    printer.user_resume();
    rig.wait("resumed scoring", Duration::from_secs(10), |e| matches!(e, WatchEvent::Scored { pause: true, .. })).await;
    let n = rig.scored_until(0).await;
    rig.scored_until(n + 20).await;
    assert_eq!(pauses(&printer), 1, "at most one pause per print");

    printer.finish(JobOutcome::Cancelled);
    rig.wait("print end", Duration::from_secs(10), |e| matches!(e, WatchEvent::PrintFinished { .. })).await;
    assert!(mirror.flush(Duration::from_secs(20)).await, "events delivered");
    let calls = fake.calls();
    let kinds: Vec<&str> = calls.iter().map(|c| c.kind.as_str()).filter(|k| *k != "predict" && *k != "create").collect();
    assert_eq!(kinds, ["start", "finish"], "one start then one finish: {calls:?}");
    assert_eq!(calls.iter().find(|c| c.kind == "start").unwrap().arg, "benchy.gcode");
    assert!(calls.iter().filter(|c| c.kind == "predict").count() > 0, "frames were uploaded");

    // The next print starts afresh and may be paused again.
    rig.camera.set(Some(frame("02-healthy.jpg")));
    printer.start_print("second.gcode");
    rig.wait("second print", Duration::from_secs(10), |e| matches!(e, WatchEvent::PrintStarted { continued: false, .. })).await;
    let first = rig.scored_until(1).await;
    assert!(first <= 2, "the per-print frame count restarted: {first}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_continues_the_same_print_and_state() {
    let (dir, printer, mut rig) = printing(Action::Pause, "long.gcode", "01-healthy.jpg").await;
    let cfg = config(dir.path(), Action::Pause);
    let before = rig.scored_until(12).await;
    rig.stop().await;
    let store = StateStore::open(&state_file(dir.path())).unwrap();
    let kept = store.load("sim").unwrap();
    assert!(kept.smoothing.current_frame_num >= before, "{kept:?}");
    drop(store);

    // The same printer (still printing the same job), a new daemon: the link reports the
    // running print; the watch continues its state.
    let mut rig = Rig::start(&cfg, &printer, None, frame("01-healthy.jpg")).await;
    let started = rig.wait("re-attach", Duration::from_secs(10), |e| matches!(e, WatchEvent::PrintStarted { .. })).await;
    assert!(matches!(started, WatchEvent::PrintStarted { continued: true, .. }), "{started:?}");
    let next = rig.scored_until(0).await;
    assert!(next > kept.smoothing.current_frame_num, "frame count continues: {next} after {}", kept.smoothing.current_frame_num);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_camera_is_reported_and_detection_resumes() {
    let (_dir, _printer, mut rig) = printing(Action::Pause, "cam.gcode", "03-healthy.jpg").await;
    let n = rig.scored_until(3).await;
    rig.camera.set(None);
    let failed = rig.wait("camera failure", Duration::from_secs(10), |e| matches!(e, WatchEvent::CameraFailed { .. })).await;
    let WatchEvent::CameraFailed { message, .. } = failed else { unreachable!() };
    assert!(message.contains("connection refused") && message.contains("check"), "{message}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.camera.set(Some(frame("03-healthy.jpg")));
    rig.wait("camera back", Duration::from_secs(10), |e| matches!(e, WatchEvent::CameraBack { .. })).await;
    let m = rig.scored_until(n + 3).await;
    assert!(m >= n + 3);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_notify_actions() {
    for action in [Action::Cancel, Action::Notify] {
        let (_dir, printer, mut rig) = past_warm_up(action, "farm.gcode").await;
        rig.camera.set(Some(frame("09-failing.jpg")));
        let acted = rig.wait("the action", Duration::from_secs(30), |e| matches!(e, WatchEvent::Acted { .. })).await;
        assert!(matches!(acted, WatchEvent::Acted { action: a, result: Ok(()), .. } if a == action), "{acted:?}");
        let asked: Vec<String> = printer.actions().into_iter().map(|a| a.0).collect();
        match action {
            Action::Cancel => {
                assert_eq!(asked, ["cancel"]);
                rig.wait("the end", Duration::from_secs(10), |e| matches!(e, WatchEvent::PrintFinished { outcome: JobOutcome::Cancelled, .. })).await;
            }
            _ => {
                assert!(asked.is_empty(), "notify leaves the print alone: {asked:?}");
                let n = rig.scored_until(0).await;
                rig.scored_until(n + 10).await;
                assert!(printer.actions().is_empty());
            }
        }
        rig.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_resume_starts_the_cooldown() {
    // The user paused and resumed the print themselves: a failure within the cooldown is
    // not acted on.
    let (_dir, printer, mut rig) = past_warm_up(Action::Pause, "cool.gcode").await;
    printer.user_pause();
    printer.user_resume();
    rig.camera.set(Some(frame("09-failing.jpg")));
    rig.wait("a pause verdict", Duration::from_secs(30), |e| matches!(e, WatchEvent::Scored { pause: true, .. })).await;
    let n = rig.scored_until(0).await;
    rig.scored_until(n + 5).await;
    assert!(
        printer.actions().iter().all(|a| a.0 != "pause"),
        "no automatic pause within the cooldown after a resume: {:?}",
        printer.actions()
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_pause_is_tried_again_on_a_later_failing_frame() {
    let (_dir, printer, mut rig) = past_warm_up(Action::Pause, "macro.gcode").await;
    printer.refuse_actions(Some("PAUSE macro failed"));
    rig.camera.set(Some(frame("09-failing.jpg")));
    let first = rig.wait("the refused pause", Duration::from_secs(30), |e| matches!(e, WatchEvent::Acted { .. })).await;
    assert!(matches!(&first, WatchEvent::Acted { result: Err(e), .. } if e.contains("PAUSE macro failed")), "{first:?}");
    printer.refuse_actions(None);
    let second = rig.wait("the retried pause", Duration::from_secs(30), |e| matches!(e, WatchEvent::Acted { .. })).await;
    assert!(matches!(second, WatchEvent::Acted { result: Ok(()), .. }), "{second:?}");
    assert_eq!(printer.status().borrow().state, printvigil::printer::PrinterState::Paused);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_print_without_a_file_name_is_still_watched_and_mirrored() {
    let (_dir, fake, mirror, printer, mut rig) = mirrored().await;
    printer.start_print("");
    let started = rig.wait("print start", Duration::from_secs(10), |e| matches!(e, WatchEvent::PrintStarted { .. })).await;
    assert!(matches!(&started, WatchEvent::PrintStarted { file, .. } if file == "unnamed-print.gcode"), "{started:?}");
    rig.scored_until(3).await;
    printer.finish(JobOutcome::Completed);
    rig.wait("print end", Duration::from_secs(10), |e| matches!(e, WatchEvent::PrintFinished { .. })).await;
    assert!(mirror.flush(Duration::from_secs(20)).await);
    let got = fake.received();
    assert_eq!((got.starts, got.finishes), (1, 1), "{:?}", fake.calls());
    rig.stop().await;
}

/// A frame bomb from a turned camera (a `files` camera with `rotation = 90`, so the frame
/// would take libjpeg-turbo's lossless transform), in a mirrored watch: refused with a
/// message naming its size, memory stays near idle, and the next good frame is scored and
/// offered to the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_bomb_is_refused_and_detection_resumes_on_the_next_frame() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_obico::start(Settings::default()).await;
    let mut cfg = config(dir.path(), Action::Pause);
    cfg.server = Some(server_cfg(&fake));
    let mirror = Arc::new(Mirror::open(cfg.server.as_ref().unwrap(), dir.path()).unwrap());
    mirror.spawn();
    let frames = dir.path().join("replay");
    std::fs::create_dir(&frames).unwrap();
    std::fs::write(frames.join("0001.jpg"), support::jpeg_bomb(65008, 65008)).unwrap();
    std::fs::write(frames.join("0002.jpg"), frame("02-healthy.jpg")).unwrap();
    let mut cam = printvigil::camera::CameraConfig::new(printvigil::camera::CameraKind::Files, frames.display().to_string());
    cam.rotation = 90;
    let printer = SimPrinter::new("sim");
    let watch = support::RssWatch::start("frame bomb in the watch", 1024);
    let unused = TestCamera::new(Vec::new());
    let mut rig = Rig::start_with(&cfg, &printer, Some(mirror.clone()), unused, CameraChoice::Config(cam)).await;
    printer.start_print("bomb.gcode");
    let failed = rig.wait("the refusal", Duration::from_secs(30), |e| matches!(e, WatchEvent::CameraFailed { .. })).await;
    let WatchEvent::CameraFailed { message, .. } = failed else { unreachable!() };
    assert!(message.contains("65008x65008") && message.contains("8192 px"), "{message}");
    rig.wait("the camera back", Duration::from_secs(30), |e| matches!(e, WatchEvent::CameraBack { .. })).await;
    rig.wait("a scored frame", Duration::from_secs(30), |e| matches!(e, WatchEvent::Scored { .. })).await;
    let n = rig.scored_until(0).await;
    rig.scored_until(n + 5).await;
    let peak = watch.peak_over_start_mib();
    println!("FIGURE frame bomb in a mirrored watch (rotation 90): peak RSS {peak:.1} MiB over the start; message: {message}");
    assert!(peak < 200.0, "peak RSS {peak:.1} MiB over the start");
    assert!(mirror.flush(Duration::from_secs(20)).await);
    assert!(fake.calls().iter().any(|c| c.kind == "predict"), "frames after the bomb were uploaded");
    rig.stop().await;
}

/// Waits until the printer's published view satisfies `want`.
async fn view_until(board: &Board, what: &str, want: impl Fn(&PrinterView) -> bool) -> PrinterView {
    let end = Instant::now() + Duration::from_secs(10);
    let mut rx = loop {
        match board.view("sim") {
            Some(rx) => break rx,
            None if Instant::now() < end => tokio::time::sleep(Duration::from_millis(10)).await,
            None => panic!("the watch never registered its view"),
        }
    };
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|v| want(v)))
        .await
        .unwrap_or_else(|_| panic!("view never showed {what}: {:?}", board.snapshot()))
        .expect("view open")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_follows_the_print_and_its_scores() {
    let (_dir, printer, mut rig) = printing(Action::Pause, "cube.gcode", "00-healthy.jpg").await;
    let board = rig.board.clone();
    let v = view_until(&board, "a scored frame", |v| v.phase == WatchPhase::Printing && v.frame_num >= 3).await;
    assert_eq!(board.printers(), ["sim"]);
    assert_eq!(v.file.as_deref(), Some("cube.gcode"));
    assert!(v.p.is_some() && v.ewm.is_some() && v.normalized_p.is_some(), "{v:?}");
    assert_eq!(v.last_decision.as_ref().map(|d| d.decision), Some(Decision::Ok), "{v:?}");
    assert!(v.watching && !v.acted && v.camera_error.is_none(), "{v:?}");
    rig.scored_until(31).await;
    rig.camera.set(Some(frame("08-failing.jpg")));
    let v = view_until(&board, "the pause decision and its frame", |v| v.acted && v.last_frame.is_some()).await;
    assert_eq!(v.last_decision.as_ref().map(|d| d.decision), Some(Decision::Pause), "{v:?}");
    assert!(v.last_frame.as_ref().unwrap().exists());
    view_until(&board, "paused", |v| v.phase == WatchPhase::Paused).await;
    rig.camera.set(None);
    printer.user_resume();
    view_until(&board, "the camera failure", |v| v.camera_error.is_some()).await;
    printer.finish(JobOutcome::Completed);
    let v = view_until(&board, "idle", |v| v.phase == WatchPhase::Idle).await;
    assert_eq!(v.p, None, "no score shown once the print ended: {v:?}");
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["phase"], "idle");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_command_takes_the_decisions_path_once() {
    let (_dir, printer, mut rig) = printing(Action::Notify, "cube.gcode", "00-healthy.jpg").await;
    let board = rig.board.clone();
    assert_eq!(board.command("nope", Command::Pause).await, Err(CommandError::UnknownPrinter("nope".into())));
    rig.scored_until(2).await;
    // The configured action is `notify`, but the button asks for a pause: the printer pauses.
    assert_eq!(board.command("sim", Command::Pause).await, Ok(Outcome::PauseRequested));
    let acted = rig.wait("the pause", Duration::from_secs(10), |e| matches!(e, WatchEvent::Acted { .. })).await;
    assert!(matches!(acted, WatchEvent::Acted { action: Action::Pause, result: Ok(()), .. }), "{acted:?}");
    assert_eq!(pauses(&printer), 1);
    assert_eq!(board.command("sim", Command::Pause).await, Err(CommandError::NotPrinting));
    printer.user_resume();
    view_until(&board, "printing again", |v| v.phase == WatchPhase::Printing).await;
    assert_eq!(board.command("sim", Command::Pause).await, Err(CommandError::AlreadyActed), "once per print");
    assert_eq!(pauses(&printer), 1);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detection_off_for_one_print_and_snoozed_alerts() {
    let (dir, printer, mut rig) = printing(Action::Pause, "odd.gcode", "00-healthy.jpg").await;
    let board = rig.board.clone();
    rig.scored_until(2).await;
    assert_eq!(board.command("sim", Command::Watching(false)).await, Ok(Outcome::Done));
    let v = view_until(&board, "watching off", |v| !v.watching).await;
    let n = v.frame_num;
    rig.camera.set(Some(frame("08-failing.jpg")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = board.snapshot().remove(0);
    assert!(v.frame_num <= n + 1, "no frames scored while detection is off: {n} -> {}", v.frame_num);
    assert_eq!(pauses(&printer), 0);
    // It survives a restart of the daemon (the same print goes on).
    rig.stop().await;
    let cfg = config(dir.path(), Action::Pause);
    let rig = Rig::start(&cfg, &printer, None, frame("08-failing.jpg")).await;
    let board = rig.board.clone();
    view_until(&board, "still off after a restart", |v| v.phase == WatchPhase::Printing && !v.watching).await;
    assert_eq!(board.command("sim", Command::Snooze(Duration::from_secs(25 * 3600))).await, Err(CommandError::SnoozeTooLong));
    assert_eq!(board.command("sim", Command::Snooze(Duration::from_secs(600))).await, Ok(Outcome::Done));
    let v = view_until(&board, "snoozed", |v| v.snoozed_until.is_some()).await;
    assert!(v.snoozed(SystemTime::now()) && !v.snoozed(SystemTime::now() + Duration::from_secs(601)));
    board.command("sim", Command::Snooze(Duration::ZERO)).await.unwrap();
    view_until(&board, "snooze over", |v| v.snoozed_until.is_none()).await;
    // The next print is watched again.
    printer.finish(JobOutcome::Completed);
    printer.start_print("next.gcode");
    let v = view_until(&board, "the next print watched", |v| v.file.as_deref() == Some("next.gcode") && v.watching && v.frame_num >= 1).await;
    assert!(v.p.is_some());
    rig.stop().await;
}
