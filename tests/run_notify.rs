//! `printvigil run` under a service manager's eyes: a Unix datagram socket stands in for
//! systemd's `NOTIFY_SOCKET`, with `WATCHDOG_USEC=2000000`. Real Moonraker + Klipper, the
//! test's snapshot camera, the demo model.
//!
//! - READY=1 arrives; STATUS= lines name the printer and follow the print; WATCHDOG=1 keeps
//!   coming while all is well; SIGTERM brings STOPPING=1 and exit code 0.
//! - A watch loop stuck on a camera that accepts the connection and never answers stops
//!   the WATCHDOG=1 pings; they come back when the camera does.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::klipper::{Options, Peers, dwell_gcode};
use support::notify::Notifications;
use support::snapcam::{Mode, SnapCam};

const LONG: Duration = Duration::from_secs(60);
const WATCHDOG: Duration = Duration::from_secs(2);
/// Pings are due every half interval (systemd's advice); a gap this long means one was
/// skipped, and the next delay would let the watchdog fire.
const MAX_GAP: Duration = Duration::from_millis(1700);

fn config(dir: &Path, peers: &Peers, cam: &SnapCam, camera_timeout: f64) -> PathBuf {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/demo.onnx");
    let text = format!(
        "state_dir = {:?}\n[detector]\nmodel = {:?}\nintra_threads = 1\n\
         [watch]\ncadence_secs = 0.25\nallow_fast_cadence = true\n\
         [[printers]]\nname = \"sim\"\nkind = \"moonraker\"\nurl = {:?}\n\
         camera = {{ kind = \"snapshot\", url = {:?}, timeout_secs = {camera_timeout} }}\n",
        dir.join("state").display().to_string(),
        model.display().to_string(),
        peers.url(),
        cam.url()
    );
    let path = dir.join("printvigil.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn(config: &Path, dir: &Path, notify: &Notifications) -> Daemon {
    let sock = notify.path.to_string_lossy().into_owned();
    let usec = WATCHDOG.as_micros().to_string();
    Daemon::spawn(config, &dir.join("daemon.log"), &[("NOTIFY_SOCKET", &sock), ("WATCHDOG_USEC", &usec)])
}

/// Longest gap between consecutive pings, and from the window's edges to the nearest ping.
fn longest_gap(pings: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut edges = vec![from];
    edges.extend_from_slice(pings);
    edges.push(to);
    edges.windows(2).map(|w| w[1].saturating_duration_since(w[0])).max().unwrap()
}

async fn wait_state(peers: &Peers, want: &str) {
    let deadline = Instant::now() + LONG;
    while peers.print_state().await != want {
        assert!(Instant::now() < deadline, "Klipper never reached {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The peers take seconds to start: both cases share them, one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_under_a_stand_in_service_manager() {
    let peers = Peers::start(Options::default()).await;
    // Moonraker misrecords a print started within about a second of Klippy's ready.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ready_status_watchdog_and_stop(&peers).await;
    watchdog_stops_while_a_watch_loop_is_stuck(&peers).await;
}

async fn ready_status_watchdog_and_stop(peers: &Peers) {
    let dir = tempfile::tempdir().unwrap();
    let cam = SnapCam::start(Mode::Healthy).await;
    let cfg = config(dir.path(), peers, &cam, 2.0);
    let notify = Notifications::bind(dir.path());
    let mut d = spawn(&cfg, dir.path(), &notify);

    let ready = notify.wait("READY=1", LONG, |l| l == "READY=1", &mut d).await;
    eprintln!("READY=1 {:.0} ms after the spawn", (ready - d.spawned).as_secs_f64() * 1000.0);
    notify.wait("an idle STATUS naming the printer", LONG, |l| l == "STATUS=sim: idle", &mut d).await;

    // Idle: the pings come at least every half watchdog interval (systemd's advice), so
    // never a full interval without one.
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let to = Instant::now();
    let pings = notify.pings_between(from, to);
    let gap = longest_gap(&pings, from, to);
    eprintln!("idle: {} pings in {:.1} s, longest gap {gap:?}", pings.len(), (to - from).as_secs_f64());
    assert!(pings.len() >= 3, "WATCHDOG=1 keeps coming while idle: {pings:?}\n{}", d.tail(20));
    assert!(gap < MAX_GAP, "a gap of {gap:?} between pings: one at every half interval is due\n{}", d.tail(20));

    // Printing: the status line follows the print, the pings go on.
    peers.write_gcode("notify.gcode", &dwell_gcode(300.0, 250));
    peers.start_print("notify.gcode").await;
    let t = notify
        .wait("a printing STATUS with p", LONG, |l| l.starts_with("STATUS=sim: printing notify.gcode, p="), &mut d)
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let now = Instant::now();
    let pings = notify.pings_between(t, now);
    let gap = longest_gap(&pings, t, now);
    eprintln!("printing: {} pings in {:.1} s, longest gap {gap:?}", pings.len(), (now - t).as_secs_f64());
    assert!(pings.len() >= 2 && gap < MAX_GAP, "pings while printing: {pings:?}, longest gap {gap:?}\n{}", d.tail(20));

    let log = d.log_text();
    assert!(!log.contains("has not turned"), "a healthy watch loop was taken for stuck\n{}", d.tail(30));

    // SIGTERM: STOPPING=1, then a clean exit.
    let term = Instant::now();
    let status = d.terminate(Duration::from_secs(20)).await;
    let stopping = notify.since(term).into_iter().find(|(_, l)| l == "STOPPING=1");
    assert!(stopping.is_some(), "STOPPING=1 after SIGTERM: {:#?}\n{}", notify.since(term), d.tail(20));
    assert!(status.success(), "exit code 0 after SIGTERM, got {status}\n{}", d.tail(20));
    let lines: Vec<String> = notify.all().into_iter().map(|x| x.1).collect();
    let first_ready = lines.iter().position(|l| l == "READY=1").unwrap();
    let first_ping = lines.iter().position(|l| l == "WATCHDOG=1").unwrap();
    assert!(first_ready < first_ping, "READY=1 comes before the first ping: {lines:?}");
    assert_eq!(lines.iter().filter(|l| *l == "READY=1").count(), 1);
    assert_eq!(lines.last().map(String::as_str), Some("STOPPING=1"), "nothing after STOPPING=1: {lines:?}");
    eprintln!("SIGTERM to exit: {:.0} ms", term.elapsed().as_secs_f64() * 1000.0);

    peers.post("/printer/print/cancel").await;
    wait_state(peers, "cancelled").await;
}

async fn watchdog_stops_while_a_watch_loop_is_stuck(peers: &Peers) {
    let dir = tempfile::tempdir().unwrap();
    let cam = SnapCam::start(Mode::Healthy).await;
    // A camera timeout far longer than the watchdog: a hung camera holds the loop.
    let cfg = config(dir.path(), peers, &cam, 60.0);
    let notify = Notifications::bind(dir.path());
    let mut d = spawn(&cfg, dir.path(), &notify);
    notify.wait("READY=1", LONG, |l| l == "READY=1", &mut d).await;
    peers.write_gcode("stall.gcode", &dwell_gcode(300.0, 250));
    peers.start_print("stall.gcode").await;
    notify.wait("a printing STATUS", LONG, |l| l.starts_with("STATUS=sim: printing stall.gcode, p="), &mut d).await;

    // The camera now accepts and never answers: the next grab hangs.
    let requests = cam.requests();
    cam.set(Mode::Hang).await;
    let deadline = Instant::now() + LONG;
    while cam.requests() == requests {
        assert!(Instant::now() < deadline, "the daemon never asked the camera again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hung = Instant::now();
    let line = d.wait_line("has not turned for", Duration::from_secs(10)).await;
    assert!(line.contains("sim"), "the log names the stuck printer: {line}");
    // After the stall is seen (3/4 of the interval), no more pings.
    let quiet_from = hung + WATCHDOG + Duration::from_millis(500);
    tokio::time::sleep_until((quiet_from + Duration::from_secs(4)).into()).await;
    let late = notify.pings_between(quiet_from, Instant::now());
    assert!(late.is_empty(), "{} WATCHDOG=1 pings while the watch loop was stuck\n{}", late.len(), d.tail(20));
    let last = notify.pings_between(hung - Duration::from_secs(10), hung + Duration::from_secs(10));
    let silent = last.last().map(|t| t.saturating_duration_since(hung));
    eprintln!("stuck loop: last ping {silent:?} after the camera hung, none for the next 4 s");

    // The camera comes back (the hung connection is closed): the loop turns, pings resume.
    let back = Instant::now();
    cam.set(Mode::Healthy).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let p = notify.pings_between(back, Instant::now());
        if p.len() >= 2 {
            eprintln!("pings resumed {:.0} ms after the camera came back", (p[0] - back).as_secs_f64() * 1000.0);
            break;
        }
        d.assert_alive();
        assert!(Instant::now() < deadline, "the pings did not resume\n{}", d.tail(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(d.terminate(Duration::from_secs(20)).await.success());
    peers.post("/printer/print/cancel").await;
    wait_state(peers, "cancelled").await;
}
