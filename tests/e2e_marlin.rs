//! End to end with a Marlin printer: the real `printvigil run` binary, a simulated Marlin on
//! a pseudo-terminal (tests/peers/marlin/sim_marlin.py) printing from its SD card, a
//! snapshot camera served by the test (healthy, then failing frames), the demo model and
//! the fake Obico server. Failing frames pause the SD print exactly once (one `M25`); the
//! server gets one start, predicts, and one finish.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::fake_obico::{self, Settings, audit};
use support::marlin::MarlinSim;
use support::snapcam::{Mode, SnapCam};

const LONG: Duration = Duration::from_secs(60);
const WARM_UP: u64 = 30;

/// The daemon's configuration: fast cadence, the fake server, the simulated Marlin, the camera.
fn write_config(fake: &fake_obico::FakeObico, cam: &SnapCam, sim: &MarlinSim) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("printvigil-e2e-marlin-").tempdir().unwrap();
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/demo.onnx");
    let set = Settings::default();
    let text = format!(
        "state_dir = {:?}\n\
         [detector]\nmodel = {:?}\nintra_threads = 1\n\
         [watch]\ncadence_secs = 0.25\nallow_fast_cadence = true\ncooldown_secs = 0.0\n\
         [server]\nurl = {:?}\nclient_id = {:?}\nclient_secret = {:?}\nprinter_name = \"sim\"\n\
         upload = \"always\"\nupload_min_interval_secs = 0.0\nrequest_timeout_secs = 2.0\n\
         backoff_initial_ms = 100\nbackoff_cap_secs = 1.0\n\
         [[printers]]\nname = \"sim\"\nkind = \"marlin\"\nport = {:?}\nstatus_interval_secs = 1\n\
         camera = {{ kind = \"snapshot\", url = {:?}, timeout_secs = 2 }}\n",
        dir.path().join("state").display().to_string(),
        model.display().to_string(),
        fake.url(),
        set.client_id,
        set.client_secret.expose(),
        sim.port_str(),
        cam.url(),
    );
    let config = dir.path().join("printvigil.toml");
    std::fs::write(&config, text).unwrap();
    (dir, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_frames_pause_the_sd_print_once() {
    let fake = fake_obico::start(Settings::default()).await;
    let cam = SnapCam::start(Mode::Healthy).await;
    let mut sim = MarlinSim::start(&["--print-secs", "45"]);
    let (dir, config) = write_config(&fake, &cam, &sim);
    let mut d = Daemon::spawn(&config, &dir.path().join("daemon.log"), &[]);
    d.wait_line("watching 1 printer(s): sim", LONG).await;
    d.wait_line("connected on", LONG).await;

    sim.cmd("screen_start e2e-cube.gcode");
    let t0 = Instant::now();
    d.wait_line("print started: e2e-cube.gcode", LONG).await;
    println!("FIGURE e2e marlin print start on the printer -> daemon log: {} ms", t0.elapsed().as_millis());
    d.wait_frame(WARM_UP + 1, LONG).await;
    assert_eq!(sim.status()["printing"], true, "no pause on healthy frames");
    cam.set(Mode::Failing).await;

    let until = Instant::now() + Duration::from_secs(30);
    while sim.status()["paused"] != true {
        assert!(Instant::now() < until, "the SD print was not paused\n{}", d.tail(40));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = d.wait_line("print PAUSED by printvigil", LONG).await;
    println!("FIGURE e2e marlin: {}", line.trim());
    // Failing frames go on after a person resumes: no second pause for this print.
    sim.cmd("lcd_resume");
    d.wait_line("print resumed", LONG).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(sim.count("M25"), 1, "paused exactly once\n{}", d.tail(40));
    assert_eq!(sim.status()["printing"], true);

    // The print runs to its end.
    d.wait_line("print finished", Duration::from_secs(90)).await;
    let deadline = Instant::now() + LONG;
    let calls = loop {
        let c = fake.calls();
        if c.iter().any(|c| c.kind == "finish") {
            break c;
        }
        assert!(Instant::now() < deadline, "no finish reached the server: {c:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let printers = fake.printers();
    assert_eq!(printers.len(), 1);
    let id = printers[0].id;
    let job = "marlin:e2e-cube.gcode:100000".to_string();
    assert_eq!(audit(&calls, id, &[job]), (0, 0, 0), "lost, duplicated, out of order: {calls:#?}");
    let mine: Vec<_> = calls.iter().filter(|c| c.printer == id).collect();
    assert_eq!(mine.iter().filter(|c| c.kind == "start").count(), 1, "{mine:#?}");
    let finishes: Vec<_> = mine.iter().filter(|c| c.kind.starts_with("finish")).collect();
    assert_eq!(finishes.len(), 1, "{mine:#?}");
    assert_eq!(finishes[0].arg, "success");
    assert!(mine.iter().any(|c| c.kind == "predict"), "{mine:#?}");
    let status = d.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
}

/// SIGKILL of the daemon mid-print, then a restart: the new daemon attaches to the same SD
/// print (no second start on the server; the smoothing goes on), and its end is reported once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_print_attaches_to_the_same_print() {
    let fake = fake_obico::start(Settings::default()).await;
    let cam = SnapCam::start(Mode::Healthy).await;
    let mut sim = MarlinSim::start(&["--print-secs", "30"]);
    let (dir, config) = write_config(&fake, &cam, &sim);
    let mut d = Daemon::spawn(&config, &dir.path().join("daemon-1.log"), &[]);
    d.wait_line("watching 1 printer(s): sim", LONG).await;
    d.wait_line("connected on", LONG).await;
    sim.cmd("screen_start kill-cube.gcode");
    d.wait_line("print started: kill-cube.gcode", LONG).await;
    d.wait_frame(5, LONG).await;
    d.kill();

    let mut d = Daemon::spawn(&config, &dir.path().join("daemon-2.log"), &[]);
    d.wait_line("the same print as before", LONG).await;
    d.wait_line("print finished", Duration::from_secs(60)).await;
    let deadline = Instant::now() + LONG;
    let calls = loop {
        let c = fake.calls();
        if c.iter().any(|c| c.kind == "finish") {
            break c;
        }
        assert!(Instant::now() < deadline, "no finish reached the server: {c:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let id = fake.printers()[0].id;
    let mine: Vec<_> = calls.iter().filter(|c| c.printer == id).collect();
    assert_eq!(mine.iter().filter(|c| c.kind == "start").count(), 1, "one start across the restart: {mine:#?}");
    assert_eq!(mine.iter().filter(|c| c.kind.starts_with("finish")).count(), 1, "{mine:#?}");
    assert_eq!(sim.status()["opens"], 2, "each daemon opened the port once");
    let status = d.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
}
