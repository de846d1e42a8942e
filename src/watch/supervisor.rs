//! The supervisor: one watch per printer, the service manager's view of them (sd-notify
//! READY, STATUS, WATCHDOG, STOPPING), and a graceful stop.
//!
//! WATCHDOG pings are sent only while every watch loop has turned recently: a loop that is
//! stuck (a hung camera, a wedged detector) stops the pings and systemd restarts the
//! service. Outside systemd (no `NOTIFY_SOCKET`) the notifications are no-ops.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};

use super::state::{StateStore, state_file};
use super::watcher::{self, Shared, Vitals};
use super::view::Board;
use super::{CameraChoice, WatchEvent, WatchSpec};
use crate::config::Config;
use crate::detector::Detector;
use crate::detector::model::{Model, SessionSettings};
use crate::printer::PrinterLink;
use crate::server::Mirror;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "no printers are configured; add a [[printers]] entry to the config (see config/printvigil.toml), or try `printvigil demo`"
    )]
    NoPrinters,
    #[error("the detector cannot start: {0}")]
    Detector(String),
    #[error(transparent)]
    State(#[from] super::state::StateError),
    #[error(transparent)]
    Mirror(#[from] crate::server::MirrorError),
}

/// How long a whole stop may take, from the signal to the end of [`supervise`]: the
/// watches, sending what is queued for the server, the printer links. systemd's default
/// stop timeout is 90 s, but a stop that takes longer than a few seconds looks hung.
pub const STOP_BUDGET: Duration = Duration::from_secs(8);
/// How long a stop waits for the watches to end (they drop a frame in flight at once).
const WATCH_STOP_WAIT: Duration = Duration::from_secs(2);
/// After [`supervise`] returns, how long the process waits for blocking work still running
/// (a frame being decoded, a file read stuck in the kernel) before it exits anyway: with
/// [`STOP_BUDGET`], a stop ends within 10 s whatever such work is doing.
pub const EXIT_WAIT: Duration = Duration::from_secs(1);

/// Loads the detector the config names (on a blocking thread: a large model takes seconds).
pub async fn load_detector(config: &Config) -> Result<Detector, RunError> {
    let mut d = load_detectors(config, 1, 1).await?;
    Ok(d.remove(0))
}

/// Loads `sessions` sessions of the model, with the configured threads each. The first
/// load makes the optimised copy if needed; every session maps the same weights file.
pub async fn load_detectors(config: &Config, sessions: usize, threads: usize) -> Result<Vec<Detector>, RunError> {
    let path = config.detector.model_path(&config.state_dir);
    let ort = config.detector.onnxruntime.clone();
    let settings = SessionSettings::new(threads);
    tokio::task::spawn_blocking(move || {
        (0..sessions.max(1)).map(|_| Model::load(&path, ort.as_deref(), settings).map(Detector::new)).collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| RunError::Detector(e.to_string()))?
    .map_err(|e: crate::detector::model::ModelError| RunError::Detector(e.to_string()))
}

/// The watch specs for the configured printers; `instance` tells this printvigil apart on
/// printers that several instances watch.
pub fn specs_from_config(config: &Config, instance: &str) -> Vec<WatchSpec> {
    let single = config.printers.len() == 1;
    config
        .printers
        .iter()
        .map(|p| WatchSpec {
            name: p.name().to_string(),
            // One printer: the server's `printer_id` setting applies to it.
            mirror_key: if single { crate::server::DEFAULT_PRINTER.to_string() } else { p.name().to_string() },
            link: p.connect(instance),
            camera: p.camera().map(CameraChoice::Config).unwrap_or(CameraChoice::Discover),
            action: p.action_on_failure().unwrap_or(config.watch.action_on_failure),
        })
        .collect()
}

/// Everything a supervisor needs besides the printers.
pub struct Parts {
    /// The inference scheduler over the detector sessions (see [`super::frame_scheduler`]);
    /// the supervisor stops it when the watches have stopped.
    pub scheduler: Arc<super::FrameScheduler>,
    pub mirror: Option<Arc<Mirror>>,
    pub store: Arc<StateStore>,
    /// Where the watches publish their views and take commands (the sinks read it).
    pub board: Arc<Board>,
}

impl Parts {
    /// The detector, the state database and the server mirror (when configured) from the config.
    pub async fn from_config(config: &Config) -> Result<Self, RunError> {
        let plan = config.detector.plan(config.printers.len());
        // A build without inference (32-bit ARM) has no detector: the scheduler gets no
        // session and the watches submit no frame (see the watcher).
        let detectors = if crate::detector::runtime::INFERENCE {
            let d = load_detectors(config, plan.sessions, plan.threads).await?;
            tracing::info!("{} inference session(s), {} thread(s) each", plan.sessions, plan.threads);
            d
        } else {
            tracing::warn!("{}", crate::detector::runtime::NO_INFERENCE);
            Vec::new()
        };
        let store = Arc::new(StateStore::open(&state_file(&config.state_dir))?);
        let mirror = match &config.server {
            Some(s) => open_mirror(s, &config.state_dir)?,
            None => None,
        };
        let scheduler = super::frame_scheduler(detectors, config.watch.cadence());
        Ok(Self { scheduler, mirror, store, board: Board::new() })
    }
}

/// Opens and starts the server mirror. An outbox that cannot be opened (a corrupt file,
/// a disk error) does not stop the watches: they run without the mirror, the file is left
/// as it is for the user, and one ERROR says what to do (`check` shows it too). Settings
/// the server section cannot work with are still an error.
pub fn open_mirror(cfg: &crate::server::ServerConfig, state_dir: &std::path::Path) -> Result<Option<Arc<Mirror>>, RunError> {
    match Mirror::open(cfg, state_dir) {
        Ok(m) => {
            let m = Arc::new(m);
            m.spawn();
            Ok(Some(m))
        }
        Err(crate::server::MirrorError::Outbox(e)) => {
            let path = crate::server::outbox_file(state_dir);
            tracing::error!(
                "the server mirror is off: {e}. Prints are watched and acted on as usual, but \
                 nothing is sent to the server. The file is kept for you: move it aside (mv {0} \
                 {0}.broken) and restart printvigil to start a new, empty outbox",
                path.display()
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The service's STATUS line: each watch's, whether the detector keeps up, then what is
/// wrong with the server mirror.
fn status_line(watches: &[String], config: &Config, load: &crate::schedule::Load, mirror: Option<&Mirror>) -> String {
    let mut parts = watches.to_vec();
    parts.extend(load.describe());
    match mirror {
        Some(m) => parts.extend(m.health()),
        None if config.server.is_some() => parts.push("server mirror off (outbox unusable, see the log)".into()),
        None => {}
    }
    parts.join("; ")
}

/// Runs the watches until `stop` completes, then stops them gracefully.
pub async fn supervise(
    config: &Config,
    specs: Vec<WatchSpec>,
    parts: Parts,
    events: broadcast::Sender<WatchEvent>,
    stop: impl Future<Output = ()>,
) -> Result<(), RunError> {
    if specs.is_empty() {
        return Err(RunError::NoPrinters);
    }
    if config.watch.cadence_secs < crate::detector::smoothing::CADENCE_SECS as f64 {
        tracing::warn!(
            "frames are scored every {} s, faster than the 10 s Obico's thresholds assume: warnings and pauses come sooner",
            config.watch.cadence_secs
        );
    }
    let scheduler = parts.scheduler.clone();
    let shared = Shared {
        scheduler: scheduler.clone(),
        sensitivity: config.detector.sensitivity,
        mirror: parts.mirror.clone(),
        store: parts.store,
        cfg: config.watch.clone(),
        frames_root: config.state_dir.join("frames"),
        events,
        board: parts.board.clone(),
    };
    let epoch = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut loops = Vec::new();
    let mut links: Vec<Arc<dyn PrinterLink>> = Vec::new();
    let count = specs.len() as u32;
    for (i, spec) in specs.into_iter().enumerate() {
        // The watches' frames spread over the cadence.
        let phase = config.watch.cadence() * i as u32 / count.max(1);
        if let Some(m) = &parts.mirror {
            // The mirror's log lines name the printer, not its key (`default` for one printer).
            m.set_label(&spec.mirror_key, &spec.name);
        }
        let vitals = Arc::new(Vitals::default());
        links.push(spec.link.clone());
        let name = spec.name.clone();
        let registration = parts.board.register(&spec.name);
        let handle = tokio::spawn(watcher::run(spec, shared.clone(), registration, vitals.clone(), epoch, phase, stop_rx.clone()));
        loops.push((name, vitals, handle));
    }
    let names: Vec<&str> = loops.iter().map(|l| l.0.as_str()).collect();
    tracing::info!("watching {} printer(s): {}", loops.len(), names.join(", "));
    notify(&[sd_notify::NotifyState::Ready]);

    let watchdog = sd_notify::watchdog_enabled();
    if let Some(wd) = watchdog {
        tracing::debug!("systemd watchdog every {wd:?}");
    }
    let mut last_status = String::new();
    let mut last_ping = Instant::now();
    let mut stuck_reported = false;
    let mut behind = false;
    // Checked often enough that a ping is never late: with a 2 s watchdog, every 0.5 s.
    let period = watchdog
        .map(|wd| (wd / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)))
        .unwrap_or(Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let status: Vec<String> =
            loops.iter().map(|l| l.1.status.lock().unwrap_or_else(|p| p.into_inner()).clone()).collect();
        let load = scheduler.load();
        if load.saturated() != behind {
            behind = load.saturated();
            match load.describe() {
                Some(line) => tracing::warn!("{line}; fewer printers, more cores or sessions, or a longer cadence catch up"),
                None => tracing::info!("the detector keeps up again: every printer is scored at the cadence"),
            }
        }
        let status = status_line(&status, config, &load, parts.mirror.as_deref());
        if status != last_status {
            notify(&[sd_notify::NotifyState::Status(&status)]);
            last_status = status;
        }
        // A ping every half interval (systemd's advice); a tick that comes a little early
        // must not push it to the next tick.
        if let Some(wd) = watchdog
            && last_ping.elapsed() + period / 2 >= wd / 2
        {
            let now_ms = epoch.elapsed().as_millis() as i64;
            let limit = (wd.as_millis() as i64 * 3 / 4).max(1000);
            let stuck: Vec<&str> = loops
                .iter()
                .filter(|l| l.2.is_finished() || now_ms - l.1.heartbeat_ms.load(Ordering::Relaxed) > limit)
                .map(|l| l.0.as_str())
                .collect();
            if stuck.is_empty() {
                notify(&[sd_notify::NotifyState::Watchdog]);
                last_ping = Instant::now();
                stuck_reported = false;
            } else if !stuck_reported {
                tracing::error!(
                    "the watch of {} has not turned for {:.1} s: no longer telling systemd all is well (it will restart printvigil)",
                    stuck.join(", "),
                    limit as f64 / 1000.0
                );
                stuck_reported = true;
            }
        }
    }

    tracing::info!("stopping: finishing the watches and sending what is queued");
    notify(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    let began = Instant::now();
    let deadline = began + STOP_BUDGET;
    let watches_by = began + WATCH_STOP_WAIT;
    for (name, _, handle) in loops {
        let left = watches_by.saturating_duration_since(Instant::now());
        let abort = handle.abort_handle();
        if tokio::time::timeout(left, handle).await.is_err() {
            abort.abort();
            tracing::warn!(printer = name, "the watch did not stop in time; its state was saved at its last frame");
        }
    }
    // Frames still queued are dropped (the watches that sent them are gone); a frame being
    // scored is finished.
    if !scheduler.shutdown(Duration::from_millis(500)).await {
        tracing::debug!("a frame was still being scored at the stop");
    }
    // The links get a moment at the end, the server what is left before it.
    let link_share = Duration::from_secs(1);
    if let Some(m) = &parts.mirror {
        let left = deadline.saturating_duration_since(Instant::now()).saturating_sub(link_share);
        if !m.flush(left).await {
            let n = m.outbox().pending().unwrap_or(0);
            tracing::info!("{n} event(s) for the server stay queued on disk; they are sent after the next start");
            let held = m.pending().unwrap_or(n).saturating_sub(n);
            if held > 0 {
                tracing::error!("{held} event(s) for the server could not be written to the outbox (no room on the disk) and are lost with this stop");
            }
        }
    }
    for link in links {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        if tokio::time::timeout(left, link.stop()).await.is_err() {
            tracing::warn!("a printer link did not close in time; stopping without it");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Waits for SIGTERM or SIGINT.
pub async fn signals() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT; stop printvigil with SIGKILL (its state is kept on disk)");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// `printvigil run`: every configured printer, until SIGTERM or SIGINT.
pub async fn run(config: &Config) -> Result<(), RunError> {
    if config.printers.is_empty() {
        return Err(RunError::NoPrinters);
    }
    let started = Instant::now();
    let parts = Parts::from_config(config).await?;
    if crate::detector::runtime::INFERENCE {
        tracing::info!("detector ready in {:.0} ms", started.elapsed().as_secs_f64() * 1000.0);
    }
    let specs = specs_from_config(config, &crate::server::hostname());
    let (events, _) = broadcast::channel(256);
    // The status page and metrics: a sink; the watches run without it if it cannot start.
    let http = if config.http.enabled {
        let sources = crate::http::Sources {
            board: parts.board.clone(),
            scheduler: parts.scheduler.clone(),
            mirror: parts.mirror.clone(),
            frames_root: config.state_dir.join("frames"),
            cadence: config.watch.cadence(),
        };
        match crate::http::Server::start(&config.http, sources, events.subscribe()).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("{e}; printers are watched as usual");
                None
            }
        }
    } else {
        None
    };
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let sinks = crate::sink::Sinks::start(config, &parts.board, &events, &names, parts.mirror.clone());
    let result = supervise(config, specs, parts, events, signals()).await;
    sinks.stop(SINK_STOP).await;
    drop(http);
    result
}

/// How long the sinks get to say goodbye after the watches stopped (MQTT's `offline`,
/// notifications still queued).
const SINK_STOP: Duration = Duration::from_secs(1);
