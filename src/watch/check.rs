//! `printvigil check`, the local part: the detector (ONNX Runtime and the model), the state
//! directory, and for each printer its link and its camera. One line each, with a fix for
//! each failure. Read-only towards the printers: nothing is paused or started.

use std::time::Duration;

use crate::camera;
use crate::config::Config;
use crate::printer::{PrinterLink, PrinterState};
use crate::server::check::Line;

/// How long a printer link gets to come online.
const LINK_WAIT: Duration = Duration::from_secs(15);

pub async fn run(config: &Config) -> Vec<Line> {
    let mut out = Vec::new();
    out.push(state_dir(config));
    out.extend(detector(config).await);
    if config.printers.is_empty() {
        out.push(Line::fail(
            "printers",
            "none configured",
            "add a [[printers]] entry (see config/printvigil.toml); `printvigil demo` shows the loop without one",
        ));
    }
    for p in &config.printers {
        let link = p.connect(&format!("{}-check", crate::server::hostname()));
        let online = printer_line(p.name(), link.as_ref(), offline_fix(p)).await;
        let ok = online.ok;
        out.push(online);
        let camera = p.camera();
        if ok || camera.is_some() {
            out.push(camera_line(p.name(), camera.as_ref(), link.as_ref()).await);
        }
        link.stop().await;
    }
    out
}

/// The state directory, looked at without changing anything: `check` creates nothing (a
/// directory made by root here would be root's, 755, and the service could not write it).
fn state_dir(config: &Config) -> Line {
    let dir = &config.state_dir;
    let what = "state directory";
    let fix = "create it, owned by the user printvigil runs as (the systemd unit's StateDirectory does this), or set `state_dir`";
    match std::fs::metadata(dir) {
        Ok(md) if !md.is_dir() => Line::fail(what, format!("{} is not a directory", dir.display()), fix),
        Ok(_) if writable(dir) => Line::ok(what, format!("{} is writable", dir.display())),
        Ok(_) => Line::fail(what, format!("{} is not writable by this user", dir.display()), fix),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match dir.ancestors().skip(1).find(|a| a.is_dir()) {
                Some(parent) if writable(parent) => Line::ok(
                    what,
                    format!(
                        "{} does not exist yet; `printvigil run` creates it (for the service, the systemd unit's StateDirectory does)",
                        dir.display()
                    ),
                ),
                parent => Line::fail(
                    what,
                    format!(
                        "{} does not exist and {} is not writable by this user",
                        dir.display(),
                        parent.map(|p| p.display().to_string()).unwrap_or_default()
                    ),
                    fix,
                ),
            }
        }
        Err(e) => Line::fail(what, format!("{}: {e}", dir.display()), fix),
    }
}

/// Whether this process may create files in `dir` (access(2): asks, writes nothing).
fn writable(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

async fn detector(config: &Config) -> Vec<Line> {
    if !crate::detector::runtime::INFERENCE {
        return vec![Line::fail(
            "detector",
            format!("none: {}", crate::detector::runtime::NO_INFERENCE),
            "the printers, cameras and the server below still work; detection needs a 64-bit OS",
        )];
    }
    let plan = config.detector.plan(config.printers.len());
    let mut d = match super::supervisor::load_detectors(config, 1, plan.threads).await {
        Ok(mut d) => d.remove(0),
        Err(e) => {
            return vec![Line::fail("detector", e.to_string(), "see above; `printvigil model fetch` installs Obico's model")];
        }
    };
    let (w, h) = d.model().input_size();
    let shown = d.model().path().display().to_string();
    let mut out = vec![Line::ok(
        "detector",
        format!("{shown} loaded ({w}x{h} input, {} session(s) x {} thread(s))", plan.sessions, plan.threads),
    )];
    if !config.printers.is_empty() {
        out.push(capacity(config, &mut d, plan).await);
    }
    out
}

/// Whether the detector keeps up with the printers at the cadence: one camera-sized frame
/// is timed (after a first one that warms the session up).
async fn capacity(config: &Config, d: &mut crate::detector::Detector, plan: crate::schedule::Plan) -> Line {
    let what = "detector capacity";
    let timed = tokio::task::block_in_place(|| {
        let frame = crate::bench::synthetic_frames(1, 1280, 720).remove(0);
        d.detect(&frame)?;
        let t = std::time::Instant::now();
        d.detect(&frame)?;
        Ok::<_, crate::detector::DetectError>(t.elapsed())
    });
    let per_frame = match timed {
        Ok(t) => t,
        Err(e) => return Line::fail(what, format!("a test frame could not be scored: {e}"), "see above"),
    };
    let n = config.printers.len();
    let cadence = config.watch.cadence();
    let load = crate::schedule::expected_load(n, per_frame, cadence, plan.sessions);
    let detail = format!(
        "{n} printer(s) x {:.0} ms a frame over {} session(s) = {:.0} % of the detector at a {:.0} s cadence",
        per_frame.as_secs_f64() * 1000.0,
        plan.sessions,
        load * 100.0,
        cadence.as_secs_f64()
    );
    if load <= 1.0 {
        Line::ok(what, detail)
    } else {
        Line::fail(
            what,
            format!("{detail}: each printer would be scored every {:.1} s, not every {:.0} s", cadence.as_secs_f64() * load, cadence.as_secs_f64()),
            "watch fewer printers on this host, give it more cores (and `detector.sessions`), or lengthen `watch.cadence_secs`; the daemon still watches every printer, each at the stretched cadence",
        )
    }
}

/// What to check when a printer's link does not come online.
fn offline_fix(p: &crate::printer::PrinterConfig) -> &'static str {
    match p {
        crate::printer::PrinterConfig::Marlin(_) => {
            "check the printer's `port` (`ls -l /dev/serial/by-id/`) and `baud`, that it is switched on, and that no other program (OctoPrint, Klipper, a running printvigil) holds the port"
        }
        crate::printer::PrinterConfig::OctoPrint(_) => {
            "check the printer's `url` and `api_key`, and that OctoPrint is running and connected to the printer"
        }
        crate::printer::PrinterConfig::Bambu(_) => {
            "check the printer's `host`, `serial`, `access_code` and `fingerprint` (the log line above says which), that it is switched on, and that LAN-only mode is on"
        }
        _ => "check the printer's `url` and API key, and that Moonraker and Klipper are running",
    }
}

async fn printer_line(name: &str, link: &dyn PrinterLink, fix: &str) -> Line {
    let what = format!("printer {name}");
    let mut status = link.status();
    let reached = tokio::time::timeout(LINK_WAIT, async {
        loop {
            if status.borrow_and_update().state != PrinterState::Offline {
                return;
            }
            if status.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    let s = link.status().borrow().clone();
    match (reached, s.state) {
        (Ok(()), PrinterState::Offline) | (Err(_), _) => Line::fail(
            &what,
            format!(
                "not reachable or not ready within {LINK_WAIT:?}{}",
                s.message.map(|m| format!(": {m}")).unwrap_or_default()
            ),
            fix,
        ),
        (Ok(()), state) => Line::ok(
            &what,
            format!("{state:?}{}", s.file.filter(|_| state != PrinterState::Idle).map(|f| format!(", {f}")).unwrap_or_default()),
        ),
    }
}

async fn camera_line(name: &str, configured: Option<&camera::CameraConfig>, link: &dyn PrinterLink) -> Line {
    let what = format!("camera of {name}");
    let cfg = match configured {
        Some(c) => c.clone(),
        None => {
            // The link reads its camera list right after connecting.
            let mut cams = link.cameras();
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                while cams.borrow_and_update().is_empty() {
                    if cams.changed().await.is_err() {
                        break;
                    }
                }
            })
            .await;
            let list = link.cameras().borrow().clone();
            let Some(info) = list.into_iter().find(|c| c.snapshot_url.is_some() || c.stream_url.is_some()) else {
                return Line::fail(
                    &what,
                    "the printer lists no camera",
                    "add the webcam in Mainsail/Fluidd (Moonraker's [webcam] settings), or set `camera` for this printer",
                );
            };
            match camera::from_info(&info, "http://127.0.0.1/") {
                Ok(c) => c,
                Err(e) => return Line::fail(&what, e.to_string(), "fix the printer's webcam settings or set `camera`"),
            }
        }
    };
    let mut cam = match camera::from_config(&cfg) {
        Ok(c) => c,
        Err(e) => return Line::fail(&what, e.to_string(), "fix the camera settings named above"),
    };
    match cam.grab().await {
        Ok(f) => match crate::detector::preprocess::jpeg_dimensions(&f.jpeg) {
            Ok((w, h)) => Line::ok(&what, format!("{}: a {w}x{h} frame", cfg.url)),
            Err(e) => Line::fail(&what, e.to_string(), "point the camera at a JPEG snapshot or MJPEG stream"),
        },
        Err(e) => Line::fail(&what, e.to_string(), "see above"),
    }
}
