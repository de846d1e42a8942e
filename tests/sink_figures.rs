//! Figures of the sinks (printed as `FIGURE` lines, never asserted on time):
//!
//! - decision -> MQTT message at the broker, and decision -> notification received, over
//!   several prints: the watch loop, the detector and both sinks in this process (so the
//!   decision's `Instant` and the arrival times share a clock), a real mosquitto, a local
//!   endpoint standing in for the webhook;
//! - the idle daemon's CPU and memory with MQTT and notifications on, beside one without
//!   them, over the same 30 s (both real `printvigil run` processes, a simulated printer
//!   that does not print).

mod support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use printvigil::camera::{Camera, Frame, Grab};
use printvigil::config::Config;
use printvigil::detector::Detector;
use printvigil::detector::model::{Model, SessionSettings};
use printvigil::printer::JobOutcome;
use printvigil::printer::sim::SimPrinter;
use printvigil::sink::Sinks;
use printvigil::watch::state::{StateStore, state_file};
use printvigil::watch::supervisor::{Parts, supervise};
use printvigil::watch::view::Board;
use printvigil::watch::{Action, CameraChoice, WatchEvent, WatchSpec};
use support::daemon::{Daemon, cpu_ticks, status_kib, ticks_per_sec};
use support::mosquitto::{Mosquitto, Options};
use support::mqtt_client::Client;
use support::recorder::Recorder;
use tokio::sync::broadcast;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn frame(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("models/frames").join(name)).unwrap()
}

#[derive(Clone)]
struct TestCamera(Arc<Mutex<Vec<u8>>>);

impl Camera for TestCamera {
    fn name(&self) -> &str {
        "test camera"
    }
    fn grab(&mut self) -> Grab<'_> {
        let jpeg = self.0.lock().unwrap().clone();
        Box::pin(async move { Ok(Frame { jpeg, taken: SystemTime::now() }) })
    }
}

fn stats(ms: &mut [f64]) -> String {
    ms.sort_by(f64::total_cmp);
    format!("median {:.1} ms, max {:.1} ms over {} prints", ms[ms.len() / 2], ms[ms.len() - 1], ms.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_decision_to_broker_and_to_notification() {
    support::init_onnxruntime();
    let broker = Mosquitto::start(Options::anonymous());
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml_str(&format!(
        "state_dir = {:?}\n[watch]\ncadence_secs = 0.02\nallow_fast_cadence = true\ncooldown_secs = 0\n\
         [mqtt]\nurl = {:?}\ntopic_prefix = \"fig\"\n\
         [[notify]]\nkind = \"webhook\"\nurl = {:?}\nevents = [\"pause\"]\nrefill_secs = 0\n",
        dir.path(),
        broker.url(),
        rec.url("/hook")
    ))
    .unwrap();
    let sub = Client::connect(&broker, None, &["fig/fig/event"]).await;
    let printer = SimPrinter::new("fig");
    let camera = TestCamera(Arc::new(Mutex::new(frame("02-healthy.jpg"))));
    let board = Board::new();
    let parts = Parts {
        scheduler: printvigil::watch::frame_scheduler(
            vec![Detector::new(Model::load(&repo().join("models/demo.onnx"), None, SessionSettings::new(1)).unwrap())],
            config.watch.cadence(),
        ),
        mirror: None,
        store: Arc::new(StateStore::open(&state_file(dir.path())).unwrap()),
        board: board.clone(),
    };
    let spec = WatchSpec { name: "fig".into(), mirror_key: "fig".into(), link: printer.clone(), camera: CameraChoice::Ready(Box::new(camera.clone())), action: Action::Pause };
    let (tx, mut events) = broadcast::channel(4096);
    let sinks = Sinks::start(&config, &board, &tx, &["fig".to_string()], None);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cfg = config.clone();
    let task = tokio::spawn(async move {
        supervise(&cfg, vec![spec], parts, tx, async {
            let _ = stopped.await;
        })
        .await
        .unwrap()
    });

    let prints = 5;
    let (mut to_broker, mut to_notification) = (Vec::new(), Vec::new());
    for i in 0..prints {
        *camera.0.lock().unwrap() = frame("02-healthy.jpg");
        printer.start_print(&format!("print-{i}.gcode"));
        let decided = loop {
            let ev = tokio::time::timeout(Duration::from_secs(60), events.recv()).await.expect("watch events").unwrap();
            match ev {
                WatchEvent::Scored { frame_num: 31, .. } => *camera.0.lock().unwrap() = frame("08-failing.jpg"),
                WatchEvent::Acting { decided, .. } => break decided,
                _ => {}
            }
        };
        let got = sub.wait_event("fig/fig/event", "pause_requested", Duration::from_secs(10)).await;
        to_broker.push((got.at - decided).as_secs_f64() * 1000.0);
        let hook = rec.wait("/hook", i + 1, Duration::from_secs(10)).await;
        assert!(hook[i].part("payload").unwrap().text().contains(&format!("paused `print-{i}.gcode` on fig")));
        to_notification.push((hook[i].at - decided).as_secs_f64() * 1000.0);
        sub.clear();
        printer.finish(JobOutcome::Cancelled);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("FIGURE decision -> MQTT pause_requested event at a subscriber of the broker: {}", stats(&mut to_broker));
    println!(
        "FIGURE decision -> webhook notification received (waits for the annotated frame, drawn off the loop): {}",
        stats(&mut to_notification)
    );
    let _ = stop.send(());
    task.await.unwrap();
    sinks.stop(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_idle_daemon_with_mqtt_and_notifications() {
    support::init_onnxruntime();
    let broker = Mosquitto::start(Options::anonymous());
    let rec = Recorder::start().await;
    let sub = Client::connect(&broker, None, &["idle/#"]).await;
    let model = repo().join("models/demo.onnx");
    let mut daemons = Vec::new();
    let mut dirs = Vec::new();
    for with_sinks in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let sinks = if with_sinks {
            format!(
                "[mqtt]\nurl = {:?}\ntopic_prefix = \"idle\"\n[[notify]]\nkind = \"webhook\"\nurl = {:?}\n[[notify]]\nkind = \"ntfy\"\nurl = {:?}\n",
                broker.url(),
                rec.url("/hook"),
                rec.url("/ntfy/t")
            )
        } else {
            String::new()
        };
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\n[detector]\nmodel = {model:?}\nintra_threads = 1\n{sinks}\
                 [[printers]]\nname = \"idle\"\nkind = \"simulated\"\nstart_after_secs = 86400\n",
                dir.path().join("state")
            ),
        )
        .unwrap();
        daemons.push((with_sinks, Daemon::spawn(&config, &dir.path().join("log"), &[])));
        dirs.push(dir);
    }
    sub.wait("the daemon online", Duration::from_secs(30), |g| g.topic == "idle/status" && g.text() == "online").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let window = Duration::from_secs(30);
    let start: Vec<u64> = daemons.iter().map(|(_, d)| cpu_ticks(d.pid())).collect();
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let secs = t0.elapsed().as_secs_f64();
    for ((with_sinks, d), s) in daemons.iter_mut().zip(start) {
        d.assert_alive();
        let cpu = (cpu_ticks(d.pid()) - s) as f64 / ticks_per_sec() as f64 / secs * 100.0;
        let rss = status_kib(d.pid(), "VmRSS").unwrap() as f64 / 1024.0;
        let hwm = status_kib(d.pid(), "VmHWM").unwrap() as f64 / 1024.0;
        let what = if *with_sinks { "with MQTT (1 printer) and 2 notification entries" } else { "without sinks" };
        println!("FIGURE idle printvigil run {what}: CPU {cpu:.2} % of one core over {secs:.0} s, RSS {rss:.0} MiB (peak {hwm:.0} MiB)");
    }
    assert!(rec.all().is_empty(), "nothing to notify while idle");
}
