//! Daemon benchmarks: the real `printvigil run` against real Moonraker + Klipper. They print
//! figures (lines starting with `BENCH`) and never assert on time. Ignored by default; run
//! them with `scripts/bench-daemon.sh` (release build, one at a time).
//!
//! - `idle_cpu`: CPU of the daemon watching one printer that is not printing, over 60 s.
//! - `pause_latency`: from the pause decision to the pause request reaching Moonraker (seen
//!   by a proxy in front of it), to Klipper `paused` (polled every 10 ms) and to the link's
//!   confirmation, over a few prints.
//! - `start_to_ready`: from the spawn to READY=1 on the notify socket, first start (no ORT
//!   cache) and later starts, with the demo model and, when `PVBENCH_FULL_MODEL` names it,
//!   the full-size model.
//! - `peak_rss_full_model`: VmHWM of the daemon with the full-size model after scored
//!   frames (needs `PVBENCH_FULL_MODEL`).

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use support::daemon::{Daemon, cpu_ticks, frame_numbers, status_kib, ticks_per_sec};
use support::klipper::{Options, Peers, dwell_gcode};
use support::notify::Notifications;
use support::snapcam::{Mode, SnapCam};

const LONG: Duration = Duration::from_secs(90);

fn demo_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/demo.onnx")
}

fn full_model() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("PVBENCH_FULL_MODEL")?);
    assert!(p.is_file(), "PVBENCH_FULL_MODEL={} does not exist", p.display());
    Some(p)
}

/// A config for one printer; `watch` is the `[watch]` table's body.
fn config(dir: &Path, model: &Path, peers: &Peers, cam: &SnapCam, watch: &str) -> PathBuf {
    config_at(dir, model, &peers.url(), cam, watch)
}

fn config_at(dir: &Path, model: &Path, moonraker: &str, cam: &SnapCam, watch: &str) -> PathBuf {
    let text = format!(
        "state_dir = {:?}\n[detector]\nmodel = {:?}\n[watch]\n{watch}\n\
         [[printers]]\nname = \"sim\"\nkind = \"moonraker\"\nurl = {:?}\n\
         camera = {{ kind = \"snapshot\", url = {:?} }}\n",
        dir.join("state").display().to_string(),
        model.display().to_string(),
        moonraker,
        cam.url()
    );
    let path = dir.join("printvigil.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Peers, given the two seconds Moonraker needs after Klippy's ready to record prints
/// properly.
async fn peers() -> Arc<Peers> {
    let p = Peers::start(Options::default()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Arc::new(p)
}

/// The model copied into `dir`, so its first load has no ORT cache beside it.
fn fresh_copy(model: &Path, dir: &Path) -> PathBuf {
    let to = dir.join(model.file_name().unwrap());
    std::fs::copy(model, &to).unwrap();
    to
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The wall-clock time at the start of a log line (`2026-01-01T00:00:00.123456Z ...`).
fn stamp(line: &str) -> SystemTime {
    let t = line.split_whitespace().next().unwrap();
    humantime::parse_rfc3339(t).unwrap_or_else(|e| panic!("no time stamp in {line:?}: {e}"))
}

fn ms(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a).map(|d| d.as_secs_f64() * 1000.0).unwrap_or_else(|e| -e.duration().as_secs_f64() * 1000.0)
}

async fn wait_state(peers: &Peers, want: &str) {
    let deadline = Instant::now() + LONG;
    while peers.print_state().await != want {
        assert!(Instant::now() < deadline, "Klipper never reached {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The log after the last line containing `marker` (a print's start), for per-print frames.
fn after_last<'a>(log: &'a str, marker: &str) -> &'a str {
    log.rfind(marker).map(|i| &log[i..]).unwrap_or("")
}

/// A TCP proxy in front of Moonraker that notes when a client's websocket message holding
/// `needle` passes (client frames unmasked; no compression is negotiated).
struct Spy {
    port: u16,
    seen: Arc<std::sync::Mutex<Vec<SystemTime>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Spy {
    async fn start(target: u16, needle: &'static str) -> Spy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<std::sync::Mutex<Vec<SystemTime>>> = Arc::default();
        let s = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let seen = s.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { return };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (mut ci, mut co) = inbound.into_split();
                    let (mut si, mut so) = outbound.into_split();
                    let down = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut si, &mut co).await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut pending: Vec<u8> = Vec::new();
                    let mut upgraded = false;
                    loop {
                        let n = match ci.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let now = SystemTime::now();
                        if so.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        pending.extend_from_slice(&buf[..n]);
                        if !upgraded {
                            // An HTTP request, or the websocket upgrade request.
                            match pending.windows(4).position(|w| w == b"\r\n\r\n") {
                                Some(i) => {
                                    upgraded = pending.starts_with(b"GET ") && String::from_utf8_lossy(&pending[..i]).to_ascii_lowercase().contains("upgrade: websocket");
                                    pending.drain(..i + 4);
                                    if !upgraded {
                                        pending.clear();
                                        continue;
                                    }
                                }
                                None => continue,
                            }
                        }
                        for payload in ws_frames(&mut pending) {
                            if String::from_utf8_lossy(&payload).contains(needle) {
                                seen.lock().unwrap().push(now);
                            }
                        }
                    }
                    down.abort();
                });
            }
        });
        Spy { port, seen, task }
    }

    fn seen(&self) -> Vec<SystemTime> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Spy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Takes the complete websocket frames off the front of `buf`; their unmasked payloads.
fn ws_frames(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        if buf.len() < 2 {
            return out;
        }
        let masked = buf[1] & 0x80 != 0;
        let mut len = (buf[1] & 0x7f) as usize;
        let mut at = 2;
        if len == 126 {
            if buf.len() < 4 {
                return out;
            }
            len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
            at = 4;
        } else if len == 127 {
            if buf.len() < 10 {
                return out;
            }
            len = u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize;
            at = 10;
        }
        let mask = if masked {
            if buf.len() < at + 4 {
                return out;
            }
            at += 4;
            Some([buf[at - 4], buf[at - 3], buf[at - 2], buf[at - 1]])
        } else {
            None
        };
        if buf.len() < at + len {
            return out;
        }
        let mut payload = buf[at..at + len].to_vec();
        if let Some(m) = mask {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= m[i % 4];
            }
        }
        buf.drain(..at + len);
        out.push(payload);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench-daemon.sh"]
async fn idle_cpu() {
    let peers = peers().await;
    let cam = SnapCam::start(Mode::Healthy).await;
    let dir = tempfile::tempdir().unwrap();
    // The defaults: 10 s cadence, inference threads for 2 cores.
    let cfg = config(dir.path(), &demo_model(), &peers, &cam, "");
    let mut d = Daemon::spawn(&cfg, &dir.path().join("daemon.log"), &[]);
    d.wait_line("printer online", LONG).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let secs = std::env::var("PVBENCH_IDLE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60.0);
    let t0 = Instant::now();
    let c0 = cpu_ticks(d.pid());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let c1 = cpu_ticks(d.pid());
    let wall = t0.elapsed().as_secs_f64();
    d.assert_alive();
    let cpu = (c1 - c0) as f64 / ticks_per_sec() as f64;
    let rss = status_kib(d.pid(), "VmRSS").unwrap_or(0) as f64 / 1024.0;
    println!(
        "BENCH idle CPU: {:.3} % of one core ({cpu:.2} s CPU in {wall:.1} s; one printer online, not printing; \
         Klipper status updates flowing), RSS {rss:.1} MiB with the demo model (goal <= 0.5 %)",
        cpu / wall * 100.0
    );
    assert_eq!(cam.requests(), 0, "no frames are taken while the printer is idle");
    assert!(d.terminate(Duration::from_secs(20)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench-daemon.sh"]
async fn pause_latency() {
    let rounds: usize = std::env::var("PVBENCH_PAUSE_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let peers = peers().await;
    let cam = SnapCam::start(Mode::Healthy).await;
    let dir = tempfile::tempdir().unwrap();
    // The daemon reaches Moonraker through a proxy that notes when the pause request passes.
    let spy = Spy::start(peers.port, "printer.print.pause").await;
    let through = format!("http://127.0.0.1:{}", spy.port);
    let cfg = config_at(
        dir.path(),
        &demo_model(),
        &through,
        &cam,
        "cadence_secs = 0.1\nallow_fast_cadence = true\ncooldown_secs = 0.0",
    );
    let mut d = Daemon::spawn(&cfg, &dir.path().join("daemon.log"), &[]);
    d.wait_line("printer online", LONG).await;
    let (mut to_request, mut to_klipper, mut to_confirmed) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let file = format!("pause-{round}.gcode");
        cam.set(Mode::Healthy).await;
        peers.write_gcode(&file, &dwell_gcode(300.0, 250));
        peers.start_print(&file).await;
        let marker = format!("print started: {file}");
        d.wait_line(&marker, LONG).await;
        d.wait_log("the warm-up frames", LONG, |t| frame_numbers(after_last(t, &marker)).len() >= 31).await;

        // Klipper's state, polled every 10 ms from here on.
        let paused_at: Arc<std::sync::Mutex<Option<SystemTime>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (peers, paused_at, stop) = (peers.clone(), paused_at.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if peers.print_state().await == "paused" {
                        *paused_at.lock().unwrap() = Some(SystemTime::now());
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        cam.set(Mode::Failing).await;
        let text = d
            .wait_log("the pause confirmed", LONG, |t| after_last(t, &marker).contains("print PAUSED by printvigil"))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(10), poller).await;
        stop.store(true, Ordering::Relaxed);
        let part = after_last(&text, &marker);
        let decided = stamp(part.lines().find(|l| l.contains("FAILURE DETECTED")).unwrap());
        let confirmed = part.lines().find(|l| l.contains("print PAUSED by printvigil")).unwrap();
        let n: f64 = confirmed.split("PAUSED by printvigil (").nth(1).unwrap().split(" ms").next().unwrap().parse().unwrap();
        let klipper = paused_at.lock().unwrap().map(|t| ms(decided, t));
        let request = spy.seen().into_iter().find(|t| *t >= decided).map(|t| ms(decided, t));
        let show = |v: Option<f64>| v.map(|k| format!("{k:.1}")).unwrap_or("?".into());
        println!(
            "BENCH pause {round}: decision -> pause request at Moonraker {} ms, -> Klipper paused {} ms (polled every 10 ms), \
             -> pause confirmed to the daemon {n:.0} ms",
            show(request),
            show(klipper)
        );
        to_request.extend(request);
        to_klipper.extend(klipper);
        to_confirmed.push(n);
        peers.post("/printer/print/cancel").await;
        wait_state(&peers, "cancelled").await;
        d.wait_log("the print end", LONG, |t| after_last(t, &marker).contains("print cancelled")).await;
    }
    let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
    println!(
        "BENCH pause latency over {rounds} prints: decision -> pause request at Moonraker median {:.1} ms, max {:.1} ms; \
         -> Klipper paused median {:.0} ms, max {:.0} ms; -> confirmed (log `print PAUSED by printvigil (N ms ...)`) \
         median {:.0} ms, max {:.0} ms",
        median(&mut to_request.clone()),
        max(&to_request),
        median(&mut to_klipper.clone()),
        max(&to_klipper),
        median(&mut to_confirmed.clone()),
        max(&to_confirmed)
    );
    assert!(d.terminate(Duration::from_secs(20)).await.success());
}

/// Starts the daemon `n` times on a fresh copy of `model`; the times from spawn to READY=1.
async fn ready_times(label: &str, model: &Path, peers: &Peers, cam: &SnapCam, n: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_copy(model, dir.path());
    let cfg = config(dir.path(), &model, peers, cam, "");
    let mut out = Vec::new();
    for i in 1..=n {
        let run = dir.path().join(format!("run-{i}"));
        std::fs::create_dir_all(&run).unwrap();
        let notify = Notifications::bind(&run);
        let sock = notify.path.to_string_lossy().into_owned();
        let mut d = Daemon::spawn(&cfg, &run.join("daemon.log"), &[("NOTIFY_SOCKET", &sock)]);
        let ready = notify.wait("READY=1", Duration::from_secs(300), |l| l == "READY=1", &mut d).await;
        let t = (ready - d.spawned).as_secs_f64() * 1000.0;
        let hwm = status_kib(d.pid(), "VmHWM").unwrap_or(0) as f64 / 1024.0;
        let what = if i == 1 { "first start, writes the ORT cache" } else { "ORT cache present" };
        println!("BENCH start to READY, {label}, start {i} ({what}): {t:.0} ms, VmHWM at READY {hwm:.0} MiB");
        out.push(t);
        assert!(d.terminate(Duration::from_secs(30)).await.success());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench-daemon.sh"]
async fn start_to_ready() {
    let peers = peers().await;
    let cam = SnapCam::start(Mode::Healthy).await;
    ready_times("demo model", &demo_model(), &peers, &cam, 3).await;
    match full_model() {
        Some(m) => {
            ready_times("full-size model", &m, &peers, &cam, 3).await;
        }
        None => println!("BENCH start to READY, full-size model: skipped (set PVBENCH_FULL_MODEL)"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench-daemon.sh"]
async fn peak_rss_full_model() {
    let Some(model) = full_model() else {
        println!("BENCH peak RSS, full-size model: skipped (set PVBENCH_FULL_MODEL)");
        return;
    };
    let frames: usize = std::env::var("PVBENCH_RSS_FRAMES").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let peers = peers().await;
    let cam = SnapCam::start(Mode::Healthy).await;
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_copy(&model, dir.path());
    let cfg = config(dir.path(), &model, &peers, &cam, "cadence_secs = 0.25\nallow_fast_cadence = true");
    for start in 1..=2 {
        let mut d = Daemon::spawn(&cfg, &dir.path().join(format!("daemon-{start}.log")), &[]);
        d.wait_line("printer online", Duration::from_secs(300)).await;
        let at_ready = status_kib(d.pid(), "VmHWM").unwrap_or(0) as f64 / 1024.0;
        let file = format!("rss-{start}.gcode");
        peers.write_gcode(&file, &dwell_gcode(600.0, 250));
        peers.start_print(&file).await;
        let marker = format!("print started: {file}");
        d.wait_line(&marker, LONG).await;
        let t0 = Instant::now();
        let text =
            d.wait_log("scored frames", Duration::from_secs(300), |t| frame_numbers(after_last(t, &marker)).len() >= frames).await;
        let per_frame = t0.elapsed().as_secs_f64() * 1000.0 / frames as f64;
        let n = frame_numbers(after_last(&text, &marker)).len();
        let hwm = status_kib(d.pid(), "VmHWM").unwrap_or(0) as f64 / 1024.0;
        let rss = status_kib(d.pid(), "VmRSS").unwrap_or(0) as f64 / 1024.0;
        let what = if start == 1 { "first start, writes the ORT cache" } else { "ORT cache present" };
        println!(
            "BENCH peak RSS, full-size model, start {start} ({what}): VmHWM {hwm:.0} MiB after {n} scored frames \
             (VmHWM {at_ready:.0} MiB when online, VmRSS now {rss:.0} MiB; one frame every {per_frame:.0} ms at a 250 ms cadence)"
        );
        peers.post("/printer/print/cancel").await;
        wait_state(&peers, "cancelled").await;
        assert!(d.terminate(Duration::from_secs(30)).await.success());
    }
}
