//! `printvigil demo`: the whole loop on built-in defaults, nothing to configure.
//!
//! A simulated printer prints `demo-benchy.gcode`; the camera replays the bundled frames of
//! a print that goes wrong (embedded in the binary); the bundled demo model scores them; the
//! real watch loop and supervisor smooth, warn and pause; an in-process stand-in Obico
//! server receives start, predict and finish through the real outbox. Frames come every
//! fraction of a second instead of every 10 s so the demo takes seconds, not minutes.
//!
//! With a broker (`--mqtt URL`, the config's `[mqtt]`, or one answering on
//! 127.0.0.1:1883) the demo publishes too, under `<topic prefix>-demo` with its own
//! availability: Home Assistant shows a `demo` device whose failure score rises, whose
//! "Failing" turns on and whose last decision frame appears as the print is paused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::camera::files::FilesCamera;
use crate::config::Config;
use crate::detector::Detector;
use crate::detector::model::{Model, SessionSettings};
use crate::printer::sim::SimPrinter;
use crate::printer::{JobOutcome, PrinterLink, PrinterState};
use crate::server::config::{ServerConfig, UploadMode};
use crate::server::standin::StandIn;
use crate::server::{DEFAULT_PRINTER, Mirror};
use crate::watch::state::{StateStore, state_file};
use crate::watch::supervisor::{Parts, supervise};
use crate::watch::{Action, CameraChoice, WatchEvent, WatchSpec};

/// The demo model (see models/README.md: a hand-set filter for magenta strands, not Obico's).
const DEMO_MODEL: &[u8] = include_bytes!("../models/demo.onnx");

/// The bundled frames: a print growing (healthy), then strands spreading (failing).
const FRAMES: [(&str, &[u8]); 10] = [
    ("00-healthy.jpg", include_bytes!("../models/frames/00-healthy.jpg")),
    ("01-healthy.jpg", include_bytes!("../models/frames/01-healthy.jpg")),
    ("02-healthy.jpg", include_bytes!("../models/frames/02-healthy.jpg")),
    ("03-healthy.jpg", include_bytes!("../models/frames/03-healthy.jpg")),
    ("04-healthy.jpg", include_bytes!("../models/frames/04-healthy.jpg")),
    ("05-healthy.jpg", include_bytes!("../models/frames/05-healthy.jpg")),
    ("06-failing.jpg", include_bytes!("../models/frames/06-failing.jpg")),
    ("07-failing.jpg", include_bytes!("../models/frames/07-failing.jpg")),
    ("08-failing.jpg", include_bytes!("../models/frames/08-failing.jpg")),
    ("09-failing.jpg", include_bytes!("../models/frames/09-failing.jpg")),
];

/// Each healthy frame is shown this often: 36 frames, past the detector's 30-frame warm-up.
const HEALTHY_REPEAT: usize = 6;
/// The frames before the strands appear.
const HEALTHY_FRAMES: usize = 6 * HEALTHY_REPEAT;
/// Each failing frame is shown this often.
const FAILING_REPEAT: usize = 3;

const FILE: &str = "demo-benchy.gcode";
const PRINTER: &str = "demo";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot prepare the demo folder {path}: {source}; pass another with --dir")]
    Folder { path: String, source: std::io::Error },
    #[error("the demo model cannot be loaded: {0}")]
    Model(String),
    #[error("the stand-in server cannot start: {0}")]
    Server(String),
    #[error(transparent)]
    Run(#[from] crate::watch::supervisor::RunError),
    #[error(transparent)]
    Mirror(#[from] crate::server::MirrorError),
    #[error(transparent)]
    State(#[from] crate::watch::state::StateError),
    #[error("the demo did not finish within {0:?}; the log above shows how far it got")]
    TimedOut(Duration),
}

pub struct DemoOptions {
    /// Folder for the demo's state and saved frames: new, empty, or a previous demo's
    /// (which is emptied first); any other folder is refused.
    pub dir: PathBuf,
    /// Seconds between frames.
    pub cadence: Duration,
    /// `detector.onnxruntime` from the config, if set.
    pub onnxruntime: Option<PathBuf>,
    /// A broker to publish to as well (its prefix and client id get `-demo` added).
    pub mqtt: Option<crate::sink::mqtt::MqttConfig>,
}

/// The standard MQTT port on this host, when a broker answers there.
pub fn local_broker() -> Option<crate::sink::mqtt::MqttConfig> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1883));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300))
        .ok()
        .map(|_| crate::sink::mqtt::MqttConfig::new("mqtt://127.0.0.1:1883"))
}

/// What the demo saw, for the summary.
#[derive(Debug, Default)]
pub struct Summary {
    pub frames_scored: u64,
    pub max_healthy_p: f64,
    pub max_p: f64,
    pub first_warning: Option<(u64, f64)>,
    pub warning_frame: Option<PathBuf>,
    pub pause_frame_num: Option<u64>,
    pub decision_to_request: Option<Duration>,
    pub decision_to_paused: Option<Duration>,
    pub pause_frame: Option<PathBuf>,
    pub outcome: Option<JobOutcome>,
    pub server_starts: usize,
    pub server_predicts: usize,
    pub server_finishes: usize,
    pub frames_dir: PathBuf,
    pub elapsed: Duration,
}

/// Marks a folder as the demo's, so that only such a folder is emptied.
const MARKER: &str = ".printvigil-demo";

fn prepare(dir: &Path) -> Result<Vec<PathBuf>, DemoError> {
    let err = |source| DemoError::Folder { path: dir.display().to_string(), source };
    if dir.join(MARKER).exists() {
        std::fs::remove_dir_all(dir).map_err(err)?;
    } else if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(err(std::io::Error::other(
            "it is not empty and not a previous demo's folder, so it is left alone",
        )));
    }
    let frames_in = dir.join("camera");
    std::fs::create_dir_all(&frames_in).map_err(err)?;
    std::fs::write(dir.join(MARKER), b"made by printvigil demo; emptied by the next one\n").map_err(err)?;
    std::fs::write(dir.join("demo.onnx"), DEMO_MODEL).map_err(err)?;
    let mut seq = Vec::new();
    for (name, bytes) in FRAMES {
        let path = frames_in.join(name);
        std::fs::write(&path, bytes).map_err(err)?;
        let repeat = if name.contains("healthy") { HEALTHY_REPEAT } else { FAILING_REPEAT };
        seq.extend(std::iter::repeat_n(path, repeat));
    }
    Ok(seq)
}

/// Runs the demo, printing its story on stdout; returns the summary.
pub async fn run(opts: DemoOptions) -> Result<Summary, DemoError> {
    let started = Instant::now();
    let seq = prepare(&opts.dir)?;
    let state_dir = opts.dir.join("state");
    let model_path = opts.dir.join("demo.onnx");
    let ort = opts.onnxruntime.clone();
    let model = tokio::task::spawn_blocking(move || Model::load(&model_path, ort.as_deref(), SessionSettings::new(1)))
        .await
        .map_err(|e| DemoError::Model(e.to_string()))?
        .map_err(|e| DemoError::Model(e.to_string()))?;

    let server = StandIn::start_local().await.map_err(|e| DemoError::Server(e.to_string()))?;
    let mut config = Config { state_dir: state_dir.clone(), ..Config::default() };
    config.watch.cadence_secs = opts.cadence.as_secs_f64();
    config.watch.allow_fast_cadence = true;
    config.watch.action_on_failure = Action::Pause;
    let server_cfg = ServerConfig {
        printer_name: Some("printvigil demo".into()),
        upload: UploadMode::Always,
        upload_min_interval_secs: 0.0,
        request_timeout_secs: 5.0,
        backoff_initial_ms: 100,
        backoff_cap_secs: 1.0,
        ..server.server_config()
    };
    config.server = Some(server_cfg.clone());
    let mirror = Arc::new(Mirror::open(&server_cfg, &state_dir)?);
    mirror.spawn();

    let printer = SimPrinter::new(PRINTER);
    let camera = FilesCamera::from_list("bundled demo frames", seq.clone());
    let spec = WatchSpec {
        name: PRINTER.into(),
        mirror_key: DEFAULT_PRINTER.into(),
        link: printer.clone(),
        camera: CameraChoice::Ready(Box::new(camera)),
        action: Action::Pause,
    };
    let board = crate::watch::view::Board::new();
    let parts = Parts {
        scheduler: crate::watch::frame_scheduler(vec![Detector::new(model)], config.watch.cadence()),
        mirror: Some(mirror.clone()),
        store: Arc::new(StateStore::open(&state_file(&state_dir))?),
        board: board.clone(),
    };
    let (tx, mut events) = broadcast::channel(1024);
    if let Some(mut m) = opts.mqtt.clone() {
        let host = crate::server::hostname();
        m.topic_prefix = Some(format!("{}-demo", m.prefix(&host)));
        m.client_id = Some(format!("{}-demo", m.client_id_for(&host)));
        m.reconnect_max_secs = m.reconnect_max_secs.min(5.0);
        println!(
            "MQTT      publishing to {} under {}/{PRINTER}/ (Home Assistant: device `{PRINTER}`)",
            m.url,
            m.topic_prefix.as_deref().unwrap_or_default()
        );
        config.mqtt = Some(m);
    }
    let sinks = crate::sink::Sinks::start(&config, &board, &tx, &[PRINTER.to_string()], Some(mirror.clone()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = config.clone();
    let supervisor = tokio::spawn(async move {
        supervise(&cfg, vec![spec], parts, tx, async {
            let _ = stop_rx.await;
        })
        .await
    });

    println!("printvigil demo: a simulated printer, the bundled frames as its camera, the demo model,");
    println!("and a stand-in Obico server at {}. One frame every {:.2} s (a real print: every 10 s).", server.url(), opts.cadence.as_secs_f64());
    println!();
    let mut sum = Summary { frames_dir: state_dir.join("frames").join(PRINTER), ..Default::default() };
    printer.start_print(FILE);
    let limit = Duration::from_secs(50);
    let deadline = tokio::time::Instant::now() + limit;
    let mut cancel_at: Option<tokio::time::Instant> = None;
    let total = seq.len() as f64;
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = tokio::time::sleep_until(cancel_at.unwrap_or(deadline)) => {
                if cancel_at.take().is_some() {
                    println!("          the person at the printer looks at the saved frame and cancels the print");
                    printer.finish(JobOutcome::Cancelled);
                    continue;
                }
                let _ = stop_tx.send(());
                return Err(DemoError::TimedOut(limit));
            }
        };
        let Ok(ev) = ev else { continue };
        match ev {
            WatchEvent::PrintStarted { file, .. } => println!("print     {file} started on the simulated printer"),
            WatchEvent::Scored { frame_num, p, ewm, normalized_p, warn, pause, .. } => {
                sum.frames_scored = frame_num;
                sum.max_p = sum.max_p.max(p);
                if frame_num <= HEALTHY_FRAMES as u64 {
                    sum.max_healthy_p = sum.max_healthy_p.max(p);
                }
                printer.set_progress((frame_num as f64 / total).min(1.0));
                let verdict = if pause {
                    "PAUSE"
                } else if warn {
                    "warn"
                } else if frame_num < crate::detector::smoothing::INIT_SAFE_FRAME_NUM {
                    "ok (warm-up)"
                } else {
                    "ok"
                };
                if warn && sum.first_warning.is_none() {
                    sum.first_warning = Some((frame_num, p));
                }
                if pause && sum.pause_frame_num.is_none() {
                    sum.pause_frame_num = Some(frame_num);
                }
                println!("frame {frame_num:>3}  p={p:<5.2} ewm={ewm:<6.3} score={normalized_p:<5.2} {verdict}");
            }
            WatchEvent::Warned { frame, .. } => {
                if let Some(f) = &frame {
                    println!("          WARNING: the print may be failing; frame saved: {}", f.display());
                }
                if sum.warning_frame.is_none() {
                    sum.warning_frame = frame;
                }
            }
            WatchEvent::Acting { decided, requested, .. } => {
                sum.decision_to_request = Some(requested - decided);
                println!("          PAUSE requested from the printer");
            }
            WatchEvent::Acted { result, decided, done, .. } => match result {
                Ok(()) => {
                    sum.decision_to_paused = Some(done - decided);
                    let state = printer.status().borrow().state;
                    println!("          the printer reports {state:?} ({:.0} ms after the decision)", (done - decided).as_secs_f64() * 1000.0);
                    if state == PrinterState::Paused {
                        cancel_at = Some(tokio::time::Instant::now() + Duration::from_millis(1500));
                    }
                }
                Err(e) => println!("          the pause failed: {e}"),
            },
            WatchEvent::FrameSaved { path, .. } => {
                println!("          annotated frame of the decision saved: {}", path.display());
                sum.pause_frame = Some(path);
            }
            WatchEvent::PrintFinished { outcome, .. } => {
                println!("print     finished: {outcome:?}");
                sum.outcome = Some(outcome);
                break;
            }
            WatchEvent::CameraFailed { message, .. } => println!("camera    {message}"),
            WatchEvent::CameraBack { .. } => println!("camera    frames again"),
            WatchEvent::FrameFailed { .. } => {}
        }
    }
    let _ = mirror.flush(Duration::from_secs(10)).await;
    let _ = stop_tx.send(());
    supervisor.await.map_err(|e| DemoError::Server(e.to_string()))??;
    sinks.stop(Duration::from_secs(2)).await;
    let got = server.received();
    sum.server_starts = got.starts;
    sum.server_predicts = got.predicts;
    sum.server_finishes = got.finishes;
    server.stop().await;
    sum.elapsed = started.elapsed();
    Ok(sum)
}

impl Summary {
    /// The closing summary, as printed.
    pub fn render(&self) -> String {
        let mut s = String::from("\nSummary\n");
        let line = |s: &mut String, k: &str, v: String| s.push_str(&format!("  {k:<18}{v}\n"));
        line(&mut s, "print", format!("{FILE} on the simulated printer `{PRINTER}`"));
        line(&mut s, "frames scored", format!("{} ({} warm-up frames before any decision)", self.frames_scored, crate::detector::smoothing::INIT_SAFE_FRAME_NUM));
        line(&mut s, "p", format!("at most {:.2} on healthy frames, up to {:.2} once strands appear", self.max_healthy_p, self.max_p));
        match self.first_warning {
            Some((n, p)) => line(&mut s, "warning", format!("frame {n} (p={p:.2})")),
            None => line(&mut s, "warning", "none (the pause came first)".into()),
        }
        match (self.pause_frame_num, self.decision_to_request, self.decision_to_paused) {
            (Some(n), Some(r), Some(d)) => line(
                &mut s,
                "pause",
                format!("frame {n}: requested {:.1} ms after the decision, printer paused after {:.1} ms", r.as_secs_f64() * 1000.0, d.as_secs_f64() * 1000.0),
            ),
            _ => line(&mut s, "pause", "none".into()),
        }
        line(&mut s, "finish", match &self.outcome {
            Some(JobOutcome::Cancelled) => "cancelled by the person at the printer".into(),
            Some(o) => format!("{o:?}"),
            None => "not reached".into(),
        });
        line(&mut s, "stand-in server", format!("{} start_print, {} predict, {} finish_print", self.server_starts, self.server_predicts, self.server_finishes));
        line(&mut s, "annotated frames", self.frames_dir.display().to_string());
        line(&mut s, "took", format!("{:.1} s", self.elapsed.as_secs_f64()));
        s
    }

    /// The demo showed what it is meant to: a pause after a rise in `p`, the print ended, the
    /// server told, the decision frame on disk.
    pub fn complete(&self) -> bool {
        self.pause_frame_num.is_some()
            && self.outcome.is_some()
            && self.server_starts == 1
            && self.server_finishes == 1
            && self.server_predicts > 0
            && self.pause_frame.as_ref().is_some_and(|p| p.exists())
    }
}
