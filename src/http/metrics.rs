//! `/metrics`: the daemon's figures for Prometheus (OpenMetrics text, `prometheus-client`).
//!
//! Two kinds of source. Events ([`Metrics::observe`], from the watches' broadcast) count
//! what happened: frames scored and failed, decisions, actions, and the latency
//! histograms. State is read when scraped ([`Metrics::render`]): each printer's view on
//! the board (`p`, score, phase, camera, watching), the scheduler (queue, load, stretch),
//! the server mirror (outbox depth and oldest event, request outcomes, token renewals)
//! and the process (resident memory, CPU time).
//!
//! Names and label sets are part of the interface (dashboards and alerts use them): the
//! test that parses `/metrics` lists them all, so a change is a deliberate one.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::Sources;
use crate::watch::WatchEvent;
use crate::watch::view::WatchPhase;

type Labels = Vec<(&'static str, String)>;
type FGauge = Gauge<f64, AtomicU64>;

fn printer(name: &str) -> Labels {
    vec![("printer", name.to_string())]
}

/// See the module documentation.
pub struct Metrics {
    registry: Mutex<Registry>,
    frames_scored: Family<Labels, Counter>,
    frames_failed: Family<Labels, Counter>,
    decisions: Family<Labels, Counter>,
    actions: Family<Labels, Counter>,
    inference: Histogram,
    latency: Histogram,
    age: Histogram,
    p: Family<Labels, FGauge>,
    score: Family<Labels, FGauge>,
    state: Family<Labels, Gauge>,
    camera_ok: Family<Labels, Gauge>,
    watching: Family<Labels, Gauge>,
    snoozed: Family<Labels, Gauge>,
    superseded: Family<Labels, Counter>,
    queue: Gauge,
    in_flight: Gauge,
    sessions: Gauge,
    load: FGauge,
    stretch: FGauge,
    frame_seconds: FGauge,
    outbox: Gauge,
    outbox_age: FGauge,
    server_events: Family<Labels, Counter>,
    server_frames: Family<Labels, Counter>,
    token_renewals: Family<Labels, Counter>,
    rss: Gauge,
    cpu: Counter<f64, AtomicU64>,
    /// Counters kept elsewhere as totals: what was already added here.
    seen: Mutex<std::collections::HashMap<String, f64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("printvigil")),
            frames_scored: Family::default(),
            frames_failed: Family::default(),
            decisions: Family::default(),
            actions: Family::default(),
            // 5 ms .. ~20 s
            inference: Histogram::new(exponential_buckets(0.005, 2.0, 13)),
            latency: Histogram::new(exponential_buckets(0.005, 2.0, 15)),
            age: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            p: Family::default(),
            score: Family::default(),
            state: Family::default(),
            camera_ok: Family::default(),
            watching: Family::default(),
            snoozed: Family::default(),
            superseded: Family::default(),
            queue: Gauge::default(),
            in_flight: Gauge::default(),
            sessions: Gauge::default(),
            load: FGauge::default(),
            stretch: FGauge::default(),
            frame_seconds: FGauge::default(),
            outbox: Gauge::default(),
            outbox_age: FGauge::default(),
            server_events: Family::default(),
            server_frames: Family::default(),
            token_renewals: Family::default(),
            rss: Gauge::default(),
            cpu: Counter::default(),
            seen: Default::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.register("frames_scored", "Frames scored, per printer", m.frames_scored.clone());
            r.register("frames_failed", "Frames that could not be had (stage camera) or scored (stage detector)", m.frames_failed.clone());
            r.register("decisions", "Decisions on scored frames: ok, warn, pause", m.decisions.clone());
            r.register("actions", "Actions carried out on failing prints, by action and result", m.actions.clone());
            r.register("inference_seconds", "Inference per frame: decode, resize, model, post-processing", m.inference.clone());
            r.register("frame_latency_seconds", "From the camera's frame to the decision", m.latency.clone());
            r.register("frame_age_seconds", "A frame's age when its inference starts", m.age.clone());
            r.register("printer_p", "The last frame's p (sum of detection confidences)", m.p.clone());
            r.register("printer_score", "The print's normalised failure score, 0..1", m.score.clone());
            r.register("printer_state", "1 for the printer's current state (offline, idle, printing, paused)", m.state.clone());
            r.register("camera_ok", "1 while the printer's camera gives frames", m.camera_ok.clone());
            r.register("printer_watching", "1 while detection is on for the current print", m.watching.clone());
            r.register("printer_snoozed", "1 while alerts are snoozed", m.snoozed.clone());
            r.register("frames_superseded", "Frames replaced by a fresher one while waiting for the detector", m.superseded.clone());
            r.register("scheduler_queue_depth", "Frames waiting for the detector", m.queue.clone());
            r.register("scheduler_in_flight", "Frames being scored", m.in_flight.clone());
            r.register("scheduler_sessions", "Inference sessions", m.sessions.clone());
            r.register("scheduler_load", "Detector time asked for over time there is (above 1: behind)", m.load.clone());
            r.register("scheduler_stretch", "Factor by which every printer's cadence is stretched", m.stretch.clone());
            r.register("scheduler_frame_seconds", "Moving average of the time to score a frame", m.frame_seconds.clone());
            r.register("outbox_depth", "Events for the server not sent yet", m.outbox.clone());
            r.register("outbox_oldest_event_age_seconds", "Age of the oldest event not sent yet (0: none)", m.outbox_age.clone());
            r.register("server_events", "Events for the server by outcome: sent, dropped (refused for good), failed (attempts to retry)", m.server_events.clone());
            r.register("server_frames", "Frames for the server by outcome: offered, replaced, uploaded, discarded", m.server_frames.clone());
            r.register("token_renewals", "Access tokens obtained from the server, by result", m.token_renewals.clone());
            r.register("process_resident_memory_bytes", "Resident memory of the daemon", m.rss.clone());
            r.register("process_cpu_seconds", "CPU time of the daemon (user + system)", m.cpu.clone());
        }
        m
    }

    /// Counts one watch event.
    pub fn observe(&self, ev: &WatchEvent) {
        match ev {
            WatchEvent::Scored { printer: name, warn, pause, timing, .. } => {
                self.frames_scored.get_or_create(&printer(name)).inc();
                let decision = if *pause {
                    "pause"
                } else if *warn {
                    "warn"
                } else {
                    "ok"
                };
                let mut l = printer(name);
                l.push(("decision", decision.into()));
                self.decisions.get_or_create(&l).inc();
                self.inference.observe(timing.infer.as_secs_f64());
                self.latency.observe(timing.latency.as_secs_f64());
                self.age.observe(timing.age.as_secs_f64());
            }
            WatchEvent::FrameFailed { printer: name, stage } => {
                let mut l = printer(name);
                l.push(("stage", stage.to_string()));
                self.frames_failed.get_or_create(&l).inc();
            }
            WatchEvent::Acted { printer: name, action, result, .. } => {
                let mut l = printer(name);
                l.push(("action", action.as_str().into()));
                l.push(("result", if result.is_ok() { "ok" } else { "error" }.into()));
                self.actions.get_or_create(&l).inc();
            }
            _ => {}
        }
    }

    /// Adds to a counter what a running total outside grew by since the last scrape.
    fn catch_up(&self, counter: &Counter<u64>, key: String, total: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let before = seen.insert(key, total as f64).unwrap_or(0.0) as u64;
        counter.inc_by(total.saturating_sub(before));
    }

    /// Reads the state sources and encodes every metric.
    pub fn render(&self, s: &Sources) -> String {
        for v in s.board.snapshot() {
            let l = printer(&v.printer);
            if let Some(p) = v.p {
                self.p.get_or_create(&l).set(p);
            }
            if let Some(n) = v.normalized_p {
                self.score.get_or_create(&l).set(n);
            }
            for (phase, name) in
                [(WatchPhase::Offline, "offline"), (WatchPhase::Idle, "idle"), (WatchPhase::Printing, "printing"), (WatchPhase::Paused, "paused")]
            {
                let mut ls = l.clone();
                ls.push(("state", name.into()));
                self.state.get_or_create(&ls).set((v.phase == phase) as i64);
            }
            self.camera_ok.get_or_create(&l).set(v.camera_error.is_none() as i64);
            self.watching.get_or_create(&l).set(v.watching as i64);
            self.snoozed.get_or_create(&l).set(v.snoozed(std::time::SystemTime::now()) as i64);
        }
        for p in s.scheduler.printers() {
            self.catch_up(&self.superseded.get_or_create(&printer(&p.name)), format!("superseded/{}", p.name), p.superseded);
        }
        let load = s.scheduler.load();
        self.queue.set(load.queued as i64);
        self.in_flight.set(load.in_flight as i64);
        self.sessions.set(load.workers as i64);
        self.load.set(load.load);
        self.stretch.set(load.stretch);
        self.frame_seconds.set(load.per_frame.unwrap_or_default().as_secs_f64());
        if let Some(m) = &s.mirror {
            self.outbox.set(m.outbox().pending().unwrap_or(0) as i64);
            let oldest = m.outbox().oldest_pending_ms().ok().flatten();
            let age = oldest.map_or(0.0, |t| ((crate::server::outbox::now_ms() - t).max(0) as f64) / 1000.0);
            self.outbox_age.set(age);
            let st = m.stats();
            let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            for (outcome, total) in [("sent", get(&st.events_sent)), ("dropped", get(&st.events_dropped)), ("failed", get(&st.send_failures))] {
                self.catch_up(&self.server_events.get_or_create(&vec![("outcome", outcome.into())]), format!("events/{outcome}"), total);
            }
            for (outcome, total) in [
                ("offered", get(&st.frames_offered)),
                ("replaced", get(&st.frames_replaced)),
                ("uploaded", get(&st.frames_uploaded)),
                ("discarded", get(&st.frames_discarded)),
            ] {
                self.catch_up(&self.server_frames.get_or_create(&vec![("outcome", outcome.into())]), format!("frames/{outcome}"), total);
            }
            let (ok, failed) = m.api().tokens().renewals();
            for (result, total) in [("ok", ok), ("error", failed)] {
                self.catch_up(&self.token_renewals.get_or_create(&vec![("result", result.into())]), format!("tokens/{result}"), total);
            }
        }
        let (rss, cpu) = process();
        self.rss.set(rss as i64);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let before = seen.insert("cpu".into(), cpu).unwrap_or(0.0);
            self.cpu.inc_by((cpu - before).max(0.0));
        }
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = encode(&mut out, &r) {
            tracing::warn!("metrics could not be encoded: {e}");
        }
        out
    }
}

/// This process's resident memory (bytes) and CPU time (seconds), from `/proc/self`.
fn process() -> (u64, f64) {
    let rss = crate::bench::Memory::now().rss_mib * 1024.0 * 1024.0;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: the 12th and 13th after the name.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (rss as u64, (ticks(11) + ticks(12)) / hz)
}
