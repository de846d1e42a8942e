//! End to end with a Bambu Lab printer: the real `printvigil run` binary watching a
//! simulated printer firmware on a real MQTT broker (mosquitto with TLS, certificate
//! pinned by fingerprint) and its simulated port-6000 camera, the demo model and the fake
//! Obico server. Failing frames from the printer's own camera pause the print exactly
//! once (its progress stops); the server gets exactly one start, predicts, and one finish.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::bambu::{CODE, CamMode, SERIAL, SimCamera, SimPrinter, broker, fingerprint};
use support::daemon::{self, Daemon, cpu_ticks, ticks_per_sec};
use support::fake_obico::{self, Settings, assert_one_print, wait_finish};
use support::mosquitto::Mosquitto;

const LONG: Duration = Duration::from_secs(60);
/// Obico's warm-up: no decision before this frame.
const WARM_UP: u64 = 30;

/// The daemon's configuration, in `dir`: the simulated printer on broker `m`, its camera `cam`, server `fake`.
fn write_config(dir: &std::path::Path, m: &Mosquitto, cam: &SimCamera, fake: &fake_obico::FakeObico) -> PathBuf {
    let printer = format!(
        "[[printers]]\nname = \"sim\"\nkind = \"bambu\"\nhost = \"127.0.0.1\"\nport = {}\nserial = {SERIAL:?}\n\
         access_code = {CODE:?}\nfingerprint = {:?}\ncamera_port = {}\n\
         camera = {{ kind = \"bambu\", timeout_secs = 2 }}\n",
        m.port,
        fingerprint(m),
        cam.port,
    );
    daemon::write_config(dir, Some(fake), "cooldown_secs = 0.0", &printer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_frames_from_the_printers_camera_pause_the_bambu_print_once() {
    let m = broker(SERIAL, CODE);
    let sim = SimPrinter::start(&m, SERIAL, Duration::from_secs(1), Duration::from_millis(500)).await;
    let cam = SimCamera::start(&m, CODE, CamMode::Healthy, 8.0).await;
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::Builder::new().prefix("printvigil-e2e-bambu-").tempdir().unwrap();
    let cfg = write_config(dir.path(), &m, &cam, &fake);
    let mut d = Daemon::spawn(&cfg, &dir.path().join("daemon.log"), &[]);
    d.wait_line("watching 1 printer(s): sim", LONG).await;
    d.wait_line("printer online", LONG).await;
    // The whole daemon, idle: one Bambu printer connected (a report a second), not printing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (c0, t0) = (cpu_ticks(d.pid()), Instant::now());
    tokio::time::sleep(Duration::from_secs(20)).await;
    let cpu = (cpu_ticks(d.pid()) - c0) as f64 / ticks_per_sec() as f64;
    println!(
        "FIGURE bambu e2e: idle daemon CPU, one Bambu printer connected and idle (a report a second): {:.2} % of a core ({cpu:.2} s in {:.1} s, goal <= 0.5 %)",
        100.0 * cpu / t0.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    sim.start_print("Benchy");
    d.wait_line("print started: Benchy", LONG).await;
    let job = format!("bambu:{SERIAL}:Benchy@{}", sim.state().start_time);
    d.wait_frame(WARM_UP + 1, LONG).await;
    assert_eq!(sim.state().gcode_state, "RUNNING", "no pause on healthy frames");
    cam.set(CamMode::Failing);

    sim.wait("paused by printvigil", LONG, |s| s.gcode_state == "PAUSE").await;
    let line = d.wait_line("print PAUSED by printvigil", LONG).await;
    let ms = line.split('(').nth(1).and_then(|r| r.split(" ms").next()).unwrap_or("?");
    println!("FIGURE bambu e2e: pause decision -> printer reports PAUSE (printvigil's own log): {ms} ms");
    // The print's progress stops.
    let at = sim.state().percent;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!((sim.state().gcode_state.as_str(), sim.state().percent), ("PAUSE", at), "progress stopped");

    // The user resumes on the printer's screen; failing frames go on; no second pause.
    sim.set(|s| s.gcode_state = "RUNNING".into());
    d.wait_line("print resumed", LONG).await;
    let resumed_at = d.last_frame().unwrap_or(0);
    let until = Instant::now() + LONG;
    while d.last_frame().unwrap_or(0) < resumed_at + 15 {
        assert_eq!(sim.state().gcode_state, "RUNNING", "a second pause within the print\n{}", d.tail(30));
        assert!(Instant::now() < until, "no frames after the resume\n{}", d.tail(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = d.log_text();
    assert_eq!(log.matches("print PAUSED by printvigil").count(), 1, "{log}");
    let pauses: Vec<_> = sim.commands().into_iter().filter(|c| c["print"]["command"] == "pause").collect();
    assert_eq!(pauses.len(), 1, "one pause command: {pauses:?}");

    // The rest of the print, quickly.
    sim.set(|s| s.percent_per_tick = 10);
    d.wait_line("print finished", LONG).await;
    wait_finish(&fake, LONG).await;
    assert_one_print(&fake, &job, "Benchy", "success", true, &d.tail(200));
    let status = d.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}\n{}", d.tail(30));
    assert!(!d.log_text().contains(CODE), "the access code must not be logged");
}

/// printvigil SIGKILLed mid-print and started again: the same Bambu print goes on (the
/// log says so, no second start on the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_print_continues_the_same_bambu_print() {
    let m = broker(SERIAL, CODE);
    let sim = SimPrinter::start(&m, SERIAL, Duration::from_secs(1), Duration::from_millis(500)).await;
    let cam = SimCamera::start(&m, CODE, CamMode::Healthy, 8.0).await;
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::Builder::new().prefix("printvigil-e2e-bambu-").tempdir().unwrap();
    let cfg = write_config(dir.path(), &m, &cam, &fake);
    let mut d = Daemon::spawn(&cfg, &dir.path().join("daemon-1.log"), &[]);
    d.wait_line("printer online", LONG).await;
    sim.start_print("Long");
    d.wait_line("print started: Long", LONG).await;
    let job = format!("bambu:{SERIAL}:Long@{}", sim.state().start_time);
    let before = d.wait_frame(10, LONG).await;
    d.kill();
    let mut d = Daemon::spawn(&cfg, &dir.path().join("daemon-2.log"), &[]);
    d.wait_line("the same print as before", LONG).await;
    let after = d.wait_frame(before + 5, LONG).await;
    assert!(after > before, "the frame count continues: {before} then {after}");
    assert!(!d.log_text().contains("print started"), "{}", d.tail(40));
    sim.set(|s| s.percent_per_tick = 10);
    d.wait_line("print finished", LONG).await;
    wait_finish(&fake, LONG).await;
    assert_one_print(&fake, &job, "Long", "success", true, &d.tail(200));
    let status = d.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}\n{}", d.tail(30));
}
