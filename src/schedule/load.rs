//! How well the detector keeps up: each printer's figures and the load.
//!
//! The **load** is the detector time the printers ask for over the time there is:
//! `active printers x time per frame / (cadence x sessions)`, with the time per frame a
//! moving average of recent frames and a printer active while it submitted a frame within
//! the last two cadences. Below 1 every printer gets a frame scored at the cadence. Above
//! 1 the host cannot keep up, and since the queue serves printers in turn every printer's
//! effective cadence stretches by the same factor, the **stretch** (`max(1, load)`): at
//! 1.6 and a 10 s cadence, each printer is scored every 16 s.

use std::time::{Duration, Instant};

use super::queue::SlotId;

/// Weight of the newest frame in the moving averages.
const ALPHA: f64 = 0.2;

/// One printer's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterLoad {
    pub name: String,
    /// Frames submitted, scored, replaced by a newer one while waiting, withdrawn.
    pub submitted: u64,
    pub scored: u64,
    pub superseded: u64,
    pub withdrawn: u64,
    /// Frames submitted as urgent.
    pub urgent: u64,
    /// Whether a frame of this printer is being scored now.
    pub scoring: bool,
    /// The last frame's wait in the queue.
    pub last_waited: Option<Duration>,
    /// Moving average of the time between two scored frames.
    pub interval: Option<Duration>,
    last_submit: Option<Instant>,
    last_done: Option<Instant>,
}

/// The scheduler as a whole, at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    pub cadence: Duration,
    /// Sessions (workers).
    pub workers: usize,
    /// Frames waiting, frames being scored.
    pub queued: usize,
    pub in_flight: usize,
    /// How long the oldest waiting frame has waited.
    pub oldest_wait: Option<Duration>,
    /// Printers that submitted a frame within the last two cadences.
    pub active: usize,
    /// Moving average of the time to score one frame.
    pub per_frame: Option<Duration>,
    /// See the module documentation.
    pub load: f64,
    pub stretch: f64,
    pub scored: u64,
    pub superseded: u64,
}

impl Load {
    /// More frames are asked for than the detector can score.
    pub fn saturated(&self) -> bool {
        self.load > 1.0
    }

    /// Each printer's effective cadence.
    pub fn effective_cadence(&self) -> Duration {
        self.cadence.mul_f64(self.stretch)
    }

    /// One line when the host cannot keep up (for the service status and the log).
    pub fn describe(&self) -> Option<String> {
        if !self.saturated() {
            return None;
        }
        Some(format!(
            "detector behind: each printer scored every {:.1} s instead of {:.1} s ({} printers, {} session(s), {:.0} ms a frame)",
            self.effective_cadence().as_secs_f64(),
            self.cadence.as_secs_f64(),
            self.active,
            self.workers,
            self.per_frame.unwrap_or_default().as_secs_f64() * 1000.0
        ))
    }
}

/// The load a number of printers would put on the detector: what `check` reports before
/// the daemon runs.
pub fn expected_load(printers: usize, per_frame: Duration, cadence: Duration, workers: usize) -> f64 {
    let have = cadence.as_secs_f64() * workers.max(1) as f64;
    if have > 0.0 { printers as f64 * per_frame.as_secs_f64() / have } else { f64::INFINITY }
}

/// Kept by the scheduler under its lock.
#[derive(Debug)]
pub(super) struct Tracker {
    cadence: Duration,
    printers: Vec<Option<PrinterLoad>>,
    per_frame: Option<f64>,
    in_flight: usize,
    scored: u64,
    superseded: u64,
}

fn ewma(old: Option<f64>, new: f64) -> f64 {
    old.map_or(new, |o| o + ALPHA * (new - o))
}

impl Tracker {
    pub(super) fn new(cadence: Duration) -> Self {
        Tracker { cadence, printers: Vec::new(), per_frame: None, in_flight: 0, scored: 0, superseded: 0 }
    }

    fn get(&mut self, id: SlotId) -> Option<&mut PrinterLoad> {
        self.printers.get_mut(id).and_then(Option::as_mut)
    }

    pub(super) fn join(&mut self, id: SlotId, name: &str) {
        if self.printers.len() <= id {
            self.printers.resize_with(id + 1, || None);
        }
        self.printers[id] = Some(PrinterLoad {
            name: name.to_string(),
            submitted: 0,
            scored: 0,
            superseded: 0,
            withdrawn: 0,
            urgent: 0,
            scoring: false,
            last_waited: None,
            interval: None,
            last_submit: None,
            last_done: None,
        });
    }

    pub(super) fn leave(&mut self, id: SlotId) {
        if let Some(p) = self.printers.get_mut(id) {
            *p = None;
        }
    }

    pub(super) fn submitted(&mut self, id: SlotId, now: Instant, replaced: bool, urgent: bool) {
        if replaced {
            self.superseded += 1;
        }
        if let Some(p) = self.get(id) {
            p.submitted += 1;
            p.superseded += replaced as u64;
            p.urgent += urgent as u64;
            p.last_submit = Some(now);
        }
    }

    pub(super) fn withdrawn(&mut self, id: SlotId) {
        if let Some(p) = self.get(id) {
            p.withdrawn += 1;
        }
    }

    pub(super) fn started(&mut self, id: SlotId, _now: Instant, waited: Duration) {
        self.in_flight += 1;
        if let Some(p) = self.get(id) {
            p.scoring = true;
            p.last_waited = Some(waited);
        }
    }

    pub(super) fn done(&mut self, id: SlotId, now: Instant, took: Duration) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.scored += 1;
        self.per_frame = Some(ewma(self.per_frame, took.as_secs_f64()));
        if let Some(p) = self.get(id) {
            p.scoring = false;
            p.scored += 1;
            if let Some(last) = p.last_done {
                let gap = now.saturating_duration_since(last).as_secs_f64();
                p.interval = Some(Duration::from_secs_f64(ewma(p.interval.map(|d| d.as_secs_f64()), gap)));
            }
            p.last_done = Some(now);
        }
    }

    pub(super) fn printers(&self) -> Vec<PrinterLoad> {
        self.printers.iter().flatten().cloned().collect()
    }

    pub(super) fn load(&self, now: Instant, workers: usize, queued: usize, oldest: Option<Instant>) -> Load {
        let window = self.cadence * 2;
        let active = self
            .printers
            .iter()
            .flatten()
            .filter(|p| p.last_submit.is_some_and(|t| now.saturating_duration_since(t) <= window))
            .count();
        let per_frame = self.per_frame.map(Duration::from_secs_f64);
        let load = per_frame.map_or(0.0, |f| expected_load(active, f, self.cadence, workers));
        Load {
            cadence: self.cadence,
            workers,
            queued,
            in_flight: self.in_flight,
            oldest_wait: oldest.map(|t| now.saturating_duration_since(t)),
            active,
            per_frame,
            load,
            stretch: load.max(1.0),
            scored: self.scored,
            superseded: self.superseded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_and_stretch_follow_printers_and_frame_cost() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Duration::from_secs(10));
        for id in 0..16 {
            t.join(id, &format!("p{id}"));
            t.submitted(id, t0, false, false);
        }
        t.started(0, t0, Duration::ZERO);
        t.done(0, t0, Duration::from_millis(1000));
        let l = t.load(t0, 1, 15, Some(t0));
        assert_eq!(l.active, 16);
        assert!((l.load - 1.6).abs() < 1e-9, "{l:?}");
        assert!(l.saturated());
        assert_eq!(l.effective_cadence(), Duration::from_secs(16));
        assert!(l.describe().unwrap().contains("every 16.0 s instead of 10.0 s"), "{:?}", l.describe());
        // Two sessions halve it; printers quiet for over two cadences do not count.
        let l = t.load(t0, 2, 0, None);
        assert!((l.load - 0.8).abs() < 1e-9 && l.stretch == 1.0 && l.describe().is_none(), "{l:?}");
        let l = t.load(t0 + Duration::from_secs(21), 1, 0, None);
        assert_eq!((l.active, l.load), (0, 0.0));
        assert_eq!(expected_load(4, Duration::from_millis(300), Duration::from_secs(10), 1), 0.12);
    }
}
