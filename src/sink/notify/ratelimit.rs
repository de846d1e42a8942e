//! The rate limit: a flapping printer must not send a hundred messages.
//!
//! A token bucket per (notification entry, printer): it holds `max_burst` tokens, each
//! message takes one, and one comes back every `refill_secs`. A message that finds the
//! bucket empty is held back (dropped) and counted; the next message that goes out says
//! how many were held back, so a person knows the picture is incomplete.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    held_back: u64,
}

/// Token buckets by key (a printer's name).
#[derive(Debug)]
pub struct RateLimit {
    burst: f64,
    refill: Duration,
    buckets: HashMap<String, Bucket>,
}

/// What the limit says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it; `held_back` earlier messages were dropped since the last one sent.
    Send { held_back: u64 },
    /// Hold it back.
    HeldBack,
}

impl RateLimit {
    pub fn new(burst: u32, refill: Duration) -> Self {
        Self { burst: burst.max(1) as f64, refill, buckets: HashMap::new() }
    }

    /// Takes a token for `key` at `now`, if there is one.
    pub fn check(&mut self, key: &str, now: Instant) -> Verdict {
        let burst = self.burst;
        let b = self.buckets.entry(key.to_string()).or_insert(Bucket { tokens: burst, at: now, held_back: 0 });
        if self.refill.is_zero() {
            b.tokens = burst;
        } else {
            let gained = now.saturating_duration_since(b.at).as_secs_f64() / self.refill.as_secs_f64();
            b.tokens = (b.tokens + gained).min(burst);
        }
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Verdict::Send { held_back: std::mem::take(&mut b.held_back) }
        } else {
            b.held_back += 1;
            Verdict::HeldBack
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_refill_and_the_held_back_are_counted() {
        let mut r = RateLimit::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let sent = (0..100).filter(|_| matches!(r.check("voron", t0), Verdict::Send { .. })).count();
        assert_eq!(sent, 3, "a flapping printer: 3 messages of 100");
        assert_eq!(r.check("ender", t0), Verdict::Send { held_back: 0 }, "each printer has its own bucket");
        assert_eq!(r.check("voron", t0 + Duration::from_secs(30)), Verdict::HeldBack);
        assert_eq!(r.check("voron", t0 + Duration::from_secs(61)), Verdict::Send { held_back: 98 });
        assert_eq!(r.check("voron", t0 + Duration::from_secs(62)), Verdict::HeldBack);
        let mut free = RateLimit::new(1, Duration::ZERO);
        assert!((0..10).all(|_| matches!(free.check("a", t0), Verdict::Send { .. })));
    }
}
