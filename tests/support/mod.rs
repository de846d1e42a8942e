//! Shared test support: real peers, fake servers and helpers. Included by test files with
//! `mod support;`.
#![allow(dead_code)]

pub mod bambu;
pub mod daemon;
pub mod fake_obico;
pub mod klipper;
pub mod marlin;
pub mod mosquitto;
pub mod mqtt_client;
pub mod notify;
pub mod octoprint;
pub mod proxy;
pub mod recorder;
pub mod snapcam;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use printvigil::printer::{PrinterEvent, PrinterLink};

/// The test-tools Python (numpy, onnx, OpenCV), set up by `scripts/test.sh`.
pub fn tools_python() -> PathBuf {
    let p = std::env::var_os("PVTEST_TOOLS_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".runtime/venv-tools/bin/python")
    });
    assert!(
        p.exists(),
        "test tools are not installed ({}): run scripts/test.sh, which sets them up",
        p.display()
    );
    p
}

/// Loads ONNX Runtime for tests, from ORT_DYLIB_PATH or the place scripts/test.sh puts it.
pub fn init_onnxruntime() {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".runtime/onnxruntime")
        .join(std::env::consts::ARCH)
        .join("libonnxruntime.so");
    let configured = std::env::var_os("ORT_DYLIB_PATH").is_none().then_some(local);
    printvigil::detector::runtime::init(configured.as_deref())
        .unwrap_or_else(|e| panic!("{e}\n(scripts/test.sh fetches ONNX Runtime before testing)"));
}

/// A small deterministic pseudo-random generator (xorshift), for test images.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn byte(&mut self) -> u8 {
        (self.next() >> 24) as u8
    }
}

/// A test image with smooth gradients plus noise, like a camera frame.
pub fn camera_like(w: usize, h: usize, seed: u64) -> printvigil::detector::preprocess::Rgb8 {
    let mut rng = Rng(seed | 1);
    let mut pixels = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let base = (x * (60 + 40 * c) / w.max(1) + y * 150 / h.max(1)) as i32;
                let noise = (rng.byte() as i32 % 64) - 32;
                pixels.push((base + noise).clamp(0, 255) as u8);
            }
        }
    }
    printvigil::detector::preprocess::Rgb8 { width: w, height: h, pixels }
}

/// Encodes an RGB image as a JPEG.
pub fn encode_jpeg(img: &printvigil::detector::preprocess::Rgb8, quality: u8) -> Vec<u8> {
    printvigil::detector::annotate::encode_jpeg(img, quality as i32).unwrap()
}

/// Every event a link reported, with the time it arrived.
#[derive(Clone)]
pub struct EventLog {
    events: Arc<Mutex<Vec<(Instant, std::time::SystemTime, PrinterEvent)>>>,
}

impl EventLog {
    pub fn record(link: &dyn PrinterLink) -> EventLog {
        let log = EventLog { events: Arc::new(Mutex::new(Vec::new())) };
        let mut rx = link.events();
        let events = log.events.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        events.lock().unwrap().push((Instant::now(), std::time::SystemTime::now(), ev))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        panic!("the event log lagged by {n} events")
                    }
                    Err(_) => break,
                }
            }
        });
        log
    }

    pub fn all(&self) -> Vec<PrinterEvent> {
        self.events.lock().unwrap().iter().map(|(_, _, e)| e.clone()).collect()
    }

    /// Waits for the `n`th (1-based) event matching `pred`; returns it and its arrival time.
    pub async fn wait_nth(
        &self,
        what: &str,
        n: usize,
        limit: Duration,
        pred: impl Fn(&PrinterEvent) -> bool,
    ) -> (PrinterEvent, std::time::SystemTime) {
        let deadline = Instant::now() + limit;
        loop {
            {
                let ev = self.events.lock().unwrap();
                if let Some((_, t, e)) = ev.iter().filter(|(_, _, e)| pred(e)).nth(n - 1) {
                    return (e.clone(), *t);
                }
            }
            if Instant::now() > deadline {
                panic!("timed out after {limit:?} waiting for {what}; events so far: {:#?}", self.all());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&PrinterEvent) -> bool,
    ) -> (PrinterEvent, std::time::SystemTime) {
        self.wait_nth(what, 1, limit, pred).await
    }

    pub fn count(&self, pred: impl Fn(&PrinterEvent) -> bool) -> usize {
        self.all().iter().filter(|e| pred(e)).count()
    }
}

/// A frame bomb, crafted here (not taken from the crate, so the test stands on its own): a
/// JPEG of a few hundred bytes whose frame header (SOF0) claims `width` x `height` pixels
/// (grey, 8x8 blocks), with valid tables and a tiny scan. libjpeg-turbo reads its header
/// like any other; a transform or decode then allocates what the header claims.
pub fn jpeg_bomb(width: u16, height: u16) -> Vec<u8> {
    let mut j = vec![0xFF, 0xD8];
    j.extend_from_slice(&[0xFF, 0xDB, 0x00, 0x43, 0x00]); // DQT, table 0
    j.extend_from_slice(&[1u8; 64]);
    j.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 0x08]); // SOF0, 8-bit
    j.extend_from_slice(&height.to_be_bytes());
    j.extend_from_slice(&width.to_be_bytes());
    j.extend_from_slice(&[0x01, 0x01, 0x11, 0x00]); // 1 component, 1x1, table 0
    for class in [0x00u8, 0x10] {
        // DHT: one 1-bit code, symbol 0 (DC: no difference; AC: end of block).
        j.extend_from_slice(&[0xFF, 0xC4, 0x00, 0x14, class, 1]);
        j.extend_from_slice(&[0u8; 15]);
        j.push(0x00);
    }
    j.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00]); // SOS
    j.extend_from_slice(&[0x00; 64]);
    j.extend_from_slice(&[0xFF, 0xD9]);
    j
}

/// The resident memory of this process, in KiB (`VmRSS`).
pub fn rss_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = text.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Samples this process's resident memory every few milliseconds and keeps the peak. A
/// watchdog too: past `limit_mib` over the start, it prints the figure and ends the test
/// process, so that a frame bomb that gets through cannot take the machine's memory.
pub struct RssWatch {
    pub start_kib: u64,
    peak: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    pub fn start(what: &'static str, limit_mib: u64) -> RssWatch {
        use std::sync::atomic::Ordering;
        let start_kib = rss_kib();
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(start_kib));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let began = Instant::now();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let now = rss_kib();
                p.fetch_max(now, Ordering::Relaxed);
                if now > start_kib + limit_mib * 1024 {
                    println!(
                        "FIGURE {what}: RSS {} MiB over the start after {:.1} s; over the {limit_mib} MiB watchdog: test process ended",
                        (now - start_kib) / 1024,
                        began.elapsed().as_secs_f64()
                    );
                    eprintln!("{what}: RSS grew past the watchdog's {limit_mib} MiB: the frame was not refused");
                    std::process::exit(3);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssWatch { start_kib, peak, stop, thread: Some(thread) }
    }

    /// The peak so far, in MiB over the start.
    pub fn peak_over_start_mib(&self) -> f64 {
        let peak = self.peak.load(std::sync::atomic::Ordering::Relaxed).max(rss_kib());
        peak.saturating_sub(self.start_kib) as f64 / 1024.0
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
