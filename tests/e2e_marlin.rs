//! End to end with a Marlin printer: the real `printvigil run` binary, a simulated Marlin on
//! a pseudo-terminal (tests/peers/marlin/sim_marlin.py) printing from its SD card, a
//! snapshot camera served by the test (healthy, then failing frames), the demo model and
//! the fake Obico server. Failing frames pause the SD print exactly once (one `M25`); the
//! server gets one start, predicts, and one finish.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::daemon::{self, Daemon};
use support::fake_obico::{self, Settings, assert_one_print, printer_id, wait_finish};
use support::marlin::MarlinSim;
use support::snapcam::{Mode, SnapCam};

const LONG: Duration = Duration::from_secs(60);
const WARM_UP: u64 = 30;

/// The daemon's configuration: fast cadence, the fake server, the simulated Marlin, the camera.
fn write_config(fake: &fake_obico::FakeObico, cam: &SnapCam, sim: &MarlinSim) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("printvigil-e2e-marlin-").tempdir().unwrap();
    let printer = format!(
        "[[printers]]\nname = \"sim\"\nkind = \"marlin\"\nport = {:?}\nstatus_interval_secs = 1\n\
         camera = {{ kind = \"snapshot\", url = {:?}, timeout_secs = 2 }}\n",
        sim.port_str(),
        cam.url(),
    );
    let config = daemon::write_config(dir.path(), Some(fake), "cooldown_secs = 0.0", &printer);
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
    wait_finish(&fake, LONG).await;
    assert_one_print(&fake, "marlin:e2e-cube.gcode:100000", "e2e-cube.gcode", "success", true, &d.tail(200));
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
    let calls = wait_finish(&fake, LONG).await;
    let id = printer_id(&fake);
    let mine: Vec<_> = calls.iter().filter(|c| c.printer == id).collect();
    assert_eq!(mine.iter().filter(|c| c.kind == "start").count(), 1, "one start across the restart: {mine:#?}");
    assert_eq!(mine.iter().filter(|c| c.kind.starts_with("finish")).count(), 1, "{mine:#?}");
    assert_eq!(sim.status()["opens"], 2, "each daemon opened the port once");
    let status = d.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
}
