//! Per-printer temporal smoothing and the warn/pause decision, exactly as the Obico server
//! (`FD_1ST_GEN_PARAMS`, float64 throughout). The constants assume one scored frame every
//! 10 s.

use serde::{Deserialize, Serialize};

use super::postprocess::Detection;

pub const EWM_SPAN: f64 = 12.0;
pub const ROLLING_WIN_SHORT: u64 = 310;
pub const ROLLING_WIN_LONG: u64 = 7200;
pub const THRESHOLD_LOW: f64 = 0.38;
pub const THRESHOLD_HIGH: f64 = 0.78;
pub const INIT_SAFE_FRAME_NUM: u64 = 30;
pub const ROLLING_MEAN_SHORT_MULTIPLE: f64 = 3.8;
pub const ESCALATING_FACTOR: f64 = 1.75;
/// Detections above this confidence are drawn on annotated frames.
pub const VISUALIZATION_THRESH: f64 = 0.2;
/// The seconds between scored frames the constants were tuned for.
pub const CADENCE_SECS: u64 = 10;

/// A printer's smoothing state. `rolling_mean_long` and `lifetime_frame_num` live as long
/// as the printer; the rest resets at print start and end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SmoothingState {
    pub current_frame_num: u64,
    pub lifetime_frame_num: u64,
    pub current_p: f64,
    pub ewm_mean: f64,
    pub rolling_mean_short: f64,
    pub rolling_mean_long: f64,
}

/// What one frame led to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub p: f64,
    pub warn: bool,
    pub pause: bool,
    pub normalized_p: f64,
}

/// `p`: the sum of the detections' confidences, each multiplied by the bending factor.
pub fn frame_p(detections: &[Detection], bending_factor: f64) -> f64 {
    // A fold from +0.0: `Iterator::sum` of floats starts at -0.0.
    detections.iter().fold(0.0, |acc, d| acc + d.confidence * bending_factor)
}

impl SmoothingState {
    /// Print start or print end: restart the per-print means, keep the long ones.
    pub fn reset_for_print(&mut self) {
        self.current_frame_num = 0;
        self.current_p = 0.0;
        self.ewm_mean = 0.0;
        self.rolling_mean_short = 0.0;
    }

    /// Adds one frame's `p`.
    pub fn update(&mut self, p: f64) {
        let alpha = 2.0 / (EWM_SPAN + 1.0);
        self.current_p = p;
        self.current_frame_num += 1;
        self.lifetime_frame_num += 1;
        self.ewm_mean = p * alpha + self.ewm_mean * (1.0 - alpha);
        self.rolling_mean_short =
            next_rolling_mean(p, self.rolling_mean_short, self.current_frame_num, ROLLING_WIN_SHORT);
        self.rolling_mean_long =
            next_rolling_mean(p, self.rolling_mean_long, self.lifetime_frame_num, ROLLING_WIN_LONG);
    }

    /// The server's `is_failing`.
    pub fn is_failing(&self, sensitivity: f64, escalating_factor: f64) -> bool {
        if self.current_frame_num < INIT_SAFE_FRAME_NUM {
            return false;
        }
        let adjusted = (self.ewm_mean - self.rolling_mean_long) * sensitivity / escalating_factor;
        if adjusted < THRESHOLD_LOW {
            return false;
        }
        if adjusted > THRESHOLD_HIGH {
            return true;
        }
        adjusted > (self.rolling_mean_short - self.rolling_mean_long) * ROLLING_MEAN_SHORT_MULTIPLE
    }

    pub fn should_pause(&self, sensitivity: f64) -> bool {
        self.is_failing(sensitivity, ESCALATING_FACTOR)
    }

    pub fn should_warn(&self, sensitivity: f64) -> bool {
        !self.should_pause(sensitivity) && self.is_failing(sensitivity, 1.0)
    }

    /// A 0..1 display score: < 0.33 low, 0.33-0.66 medium, > 0.66 high.
    pub fn normalized_p(&self, sensitivity: f64) -> f64 {
        let rml = self.rolling_mean_long;
        let tw = ((self.rolling_mean_short - rml) * ROLLING_MEAN_SHORT_MULTIPLE).clamp(THRESHOLD_LOW, THRESHOLD_HIGH);
        let tf = tw * ESCALATING_FACTOR;
        let x = (self.ewm_mean - rml) * sensitivity;
        if x > tf {
            scale(x, tf, tf * 1.5, 2.0 / 3.0, 1.0)
        } else if x > tw {
            scale(x, tw, tf, 1.0 / 3.0, 2.0 / 3.0)
        } else {
            scale(x, 0.0, tw, 0.0, 1.0 / 3.0)
        }
    }

    /// Adds a frame and returns what it means.
    pub fn observe(&mut self, p: f64, sensitivity: f64) -> Verdict {
        self.update(p);
        Verdict {
            p,
            warn: self.should_warn(sensitivity),
            pause: self.should_pause(sensitivity),
            normalized_p: self.normalized_p(sensitivity),
        }
    }
}

fn next_rolling_mean(p: f64, mean: f64, count: u64, window: u64) -> f64 {
    let divisor = if count >= window { window } else { count + 1 };
    mean + (p - mean) / divisor as f64
}

fn scale(v: f64, a: f64, b: f64, c: f64, d: f64) -> f64 {
    ((v - a) * (d - c) / (b - a) + c).clamp(c, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(ps: &[f64]) -> (SmoothingState, Vec<(SmoothingState, Verdict)>) {
        let mut s = SmoothingState::default();
        let mut seen = Vec::new();
        for &p in ps {
            let v = s.observe(p, 1.0);
            seen.push((s, v));
        }
        (s, seen)
    }

    #[test]
    fn golden_vectors() {
        let ps: Vec<f64> = (1..=45).map(|f| if f < 30 { 0.0 } else { 1.0 }).collect();
        let (_, seen) = run(&ps);
        let golden = [
            (30, 0.15384615384615385, 0.03225806451612903, 0.03225806451612903, false, false, 0.10665621871054809),
            (33, 0.48737789293091976, 0.11764705882352941, 0.11764705882352941, false, false, 0.3243252930766582),
            (34, 0.5662428324800091, 0.14285714285714285, 0.14285714285714285, true, false, 0.38407682996826453),
            (45, 0.9309459228557927, 0.3478260869565218, 0.3478260869565218, true, false, 0.5709003928646442),
        ];
        for (frame, ewm, rms, rml, warn, pause, np) in golden {
            let (s, v) = seen[frame - 1];
            assert_eq!(s.current_frame_num, frame as u64);
            assert_eq!(s.ewm_mean, ewm, "frame {frame} ewm");
            assert_eq!(s.rolling_mean_short, rms, "frame {frame} rms");
            assert_eq!(s.rolling_mean_long, rml, "frame {frame} rml");
            assert_eq!((v.warn, v.pause), (warn, pause), "frame {frame} decision");
            assert_eq!(v.normalized_p, np, "frame {frame} normalized_p");
        }
    }

    #[test]
    fn golden_single_half() {
        let (s, _) = run(&[0.5]);
        assert_eq!((s.ewm_mean, s.rolling_mean_short, s.rolling_mean_long), (0.07692307692307693, 0.25, 0.25));
        let (s, _) = run(&[0.5, 0.5]);
        assert_eq!(
            (s.ewm_mean, s.rolling_mean_short, s.rolling_mean_long),
            (0.14201183431952663, 0.3333333333333333, 0.3333333333333333)
        );
    }

    #[test]
    fn p_sums_bent_confidences_and_is_plus_zero_when_empty() {
        let d = |c| Detection { confidence: c, bbox: [0.0; 4] };
        assert_eq!(frame_p(&[d(0.5), d(0.25)], 2.0), 1.5);
        assert!(frame_p(&[], 1.0).is_sign_positive());
    }

    #[test]
    fn print_reset_keeps_the_long_mean_and_lifetime() {
        let (mut s, _) = run(&[0.3; 50]);
        let (rml, life) = (s.rolling_mean_long, s.lifetime_frame_num);
        s.reset_for_print();
        assert_eq!(s.current_frame_num, 0);
        assert_eq!((s.ewm_mean, s.rolling_mean_short, s.current_p), (0.0, 0.0, 0.0));
        assert_eq!((s.rolling_mean_long, s.lifetime_frame_num), (rml, life));
    }

    #[test]
    fn sustained_failure_pauses_after_warmup() {
        let ps: Vec<f64> = (1..=60).map(|f| if f < 31 { 0.0 } else { 2.0 }).collect();
        let (_, seen) = run(&ps);
        let first_pause = seen.iter().position(|(_, v)| v.pause).map(|i| i + 1);
        let first_warn = seen.iter().position(|(_, v)| v.warn).map(|i| i + 1);
        assert!(first_warn.unwrap() < first_pause.unwrap(), "warn before pause: {first_warn:?} {first_pause:?}");
        assert!(seen[..29].iter().all(|(_, v)| !v.warn && !v.pause), "warm-up");
    }

    #[test]
    fn state_serialises_losslessly() {
        let (s, _) = run(&[0.1, 0.7, 1.3, 0.0]);
        let text = serde_json::to_string(&s).unwrap();
        let back: SmoothingState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
    }

    proptest! {
        #[test]
        fn means_stay_within_the_range_of_p(ps in proptest::collection::vec(0.0f64..20.0, 1..400)) {
            let (s, seen) = run(&ps);
            let max = ps.iter().cloned().fold(0.0, f64::max);
            for (st, v) in &seen {
                prop_assert!(st.ewm_mean >= 0.0 && st.ewm_mean <= max + 1e-9);
                prop_assert!(st.rolling_mean_short >= 0.0 && st.rolling_mean_short <= max + 1e-9);
                prop_assert!(st.rolling_mean_long >= 0.0 && st.rolling_mean_long <= max + 1e-9);
                prop_assert!((0.0..=1.0).contains(&v.normalized_p));
                prop_assert!(!(v.warn && v.pause));
            }
            prop_assert_eq!(s.lifetime_frame_num, ps.len() as u64);
        }

        #[test]
        fn nothing_is_decided_during_warmup(ps in proptest::collection::vec(0.0f64..50.0, 1..30)) {
            let (_, seen) = run(&ps);
            for (_, v) in seen.iter().take(29) {
                prop_assert!(!v.warn && !v.pause);
            }
        }

        #[test]
        fn higher_sensitivity_never_removes_a_pause(ps in proptest::collection::vec(0.0f64..5.0, 30..120), k in 1.0f64..1.2) {
            let (s, _) = run(&ps);
            if s.should_pause(1.0) && s.ewm_mean > s.rolling_mean_long {
                // Above THRESHOLD_HIGH scaling up keeps it above; in the middle band the
                // comparison with the short mean only gets easier as adj grows.
                prop_assert!(s.should_pause(k));
            }
        }

        #[test]
        fn constant_p_never_alerts(p in 0.0f64..10.0, n in 30usize..500) {
            let (_, seen) = run(&vec![p; n]);
            // ewm converges from below towards the long mean; never by 0.38 above it.
            for (_, v) in &seen {
                prop_assert!(!v.pause, "constant p={} paused", p);
            }
        }
    }
}
