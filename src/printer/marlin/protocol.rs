//! How commands go to Marlin: line numbers, checksums, one command in flight.
//!
//! Each command is framed as `N<n> <cmd>*<xor>\n`: `n` counts up by one per command and
//! `xor` is the XOR of every byte before the `*`. Marlin checks both; on a mismatch it
//! prints `Error:...`, `Resend: <n>` and an `ok` that acknowledges nothing, so the sender
//! writes line `n` again and ignores that one `ok`. A session starts with `M110 N0` framed
//! as line 0 (it sets Marlin's counter), so the next line is 1.
//!
//! [`Sender`] is the bookkeeping only (pure, unit-tested): it hands back the bytes to write
//! and, on `ok`, the command that completed. Only one command is in flight: Marlin's receive
//! buffer is small and a host that floods it loses lines. A command unanswered for the
//! timeout is given up ([`Sender::timed_out`]); `echo:busy` keep-alives extend the wait.

use std::time::{Duration, Instant};

/// The XOR checksum Marlin expects after `*`.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |a, b| a ^ b)
}

/// `N<n> <cmd>*<xor>\n`. Comments (`;...`) and line breaks in `cmd` are dropped.
pub fn frame(n: u64, cmd: &str) -> Vec<u8> {
    let cmd = cmd.split(';').next().unwrap_or("").replace(['\r', '\n', '*'], " ");
    let body = format!("N{n} {}", cmd.trim());
    let cs = checksum(body.as_bytes());
    format!("{body}*{cs}\n").into_bytes()
}

/// A command sent and not yet acknowledged.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub n: u64,
    pub cmd: String,
    bytes: Vec<u8>,
    deadline: Instant,
    /// The firmware said `Unknown command` for it.
    pub unknown: bool,
    /// Times it was written again after `Resend:`.
    pub resends: u32,
}

/// What an `ok` completed.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    pub cmd: String,
    /// The firmware said `Unknown command` before its `ok`.
    pub unknown: bool,
}

/// The sender's bookkeeping; see the module documentation.
#[derive(Debug)]
pub struct Sender {
    next: u64,
    in_flight: Option<InFlight>,
    /// `ok`s to ignore (the one after each `Resend:`).
    skip_ok: u32,
    timeout: Duration,
    /// Resends in a row without progress: past [`MAX_RESENDS`] the line is given up.
    pub resends_total: u64,
}

/// Resends of one line before it is given up (a line that never arrives intact).
pub const MAX_RESENDS: u32 = 5;

impl Sender {
    pub fn new(timeout: Duration) -> Sender {
        Sender { next: 0, in_flight: None, skip_ok: 0, timeout, resends_total: 0 }
    }

    /// Starts a session: `M110 N0` as line 0. Any command in flight is forgotten.
    pub fn reset(&mut self, now: Instant) -> Vec<u8> {
        self.next = 0;
        self.in_flight = None;
        self.skip_ok = 0;
        self.send(now, "M110 N0").unwrap_or_default()
    }

    /// Whether a command may be sent now.
    pub fn idle(&self) -> bool {
        self.in_flight.is_none()
    }

    pub fn in_flight(&self) -> Option<&InFlight> {
        self.in_flight.as_ref()
    }

    /// Frames `cmd` as the next line; `None` while another command is in flight.
    pub fn send(&mut self, now: Instant, cmd: &str) -> Option<Vec<u8>> {
        if self.in_flight.is_some() {
            return None;
        }
        let n = self.next;
        self.next += 1;
        let bytes = frame(n, cmd);
        self.in_flight = Some(InFlight {
            n,
            cmd: cmd.to_string(),
            bytes: bytes.clone(),
            deadline: now + self.timeout,
            unknown: false,
            resends: 0,
        });
        Some(bytes)
    }

    /// An `ok` arrived: the command in flight is done (unless this `ok` follows a resend).
    pub fn on_ok(&mut self) -> Option<Completed> {
        if self.skip_ok > 0 {
            self.skip_ok -= 1;
            return None;
        }
        self.in_flight.take().map(|f| Completed { cmd: f.cmd, unknown: f.unknown })
    }

    /// `echo:Unknown command`: remembered for the command in flight.
    pub fn on_unknown(&mut self) {
        if let Some(f) = &mut self.in_flight {
            f.unknown = true;
        }
    }

    /// `echo:busy`: the firmware works on the command; wait longer.
    pub fn on_busy(&mut self, now: Instant) {
        if let Some(f) = &mut self.in_flight {
            f.deadline = now + self.timeout;
        }
    }

    /// `Resend: n`: the bytes to write again, if `n` is the line in flight. A request for
    /// any other line (one already acknowledged) cannot be honoured with one line in flight
    /// and is `Err` (the session is redone).
    pub fn on_resend(&mut self, now: Instant, n: u64) -> Result<Option<Vec<u8>>, String> {
        self.skip_ok += 1;
        let Some(f) = &mut self.in_flight else {
            // Nothing in flight: the firmware wants the line we would send next.
            return if n == self.next {
                Ok(None)
            } else {
                Err(format!("the printer asked to resend line {n}, but line {} is next", self.next))
            };
        };
        if f.n != n {
            return Err(format!("the printer asked to resend line {n}, but line {} is in flight", f.n));
        }
        f.resends += 1;
        self.resends_total += 1;
        if f.resends > MAX_RESENDS {
            return Err(format!("line {n} (`{}`) did not arrive intact after {MAX_RESENDS} resends; check the USB cable", f.cmd));
        }
        f.deadline = now + self.timeout;
        Ok(Some(f.bytes.clone()))
    }

    /// The command in flight if its `ok` is overdue; it is given up (and the next `ok` is
    /// not taken for it).
    pub fn timed_out(&mut self, now: Instant) -> Option<InFlight> {
        if self.in_flight.as_ref().is_some_and(|f| now >= f.deadline) {
            return self.in_flight.take();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_matches_marlin() {
        // Checked by hand against Marlin's rule (XOR of every byte before '*').
        assert_eq!(frame(0, "M110 N0"), b"N0 M110 N0*125\n".to_vec());
        assert_eq!(checksum(b"N1 M115"), {
            let mut x = 0u8;
            for b in b"N1 M115" {
                x ^= b;
            }
            x
        });
        assert_eq!(frame(3, "M27 ; poll"), format!("N3 M27*{}\n", checksum(b"N3 M27")).into_bytes());
        assert!(!String::from_utf8(frame(4, "M117 a*b\nc")).unwrap().trim_end().contains('\n'));
    }

    #[test]
    fn one_in_flight_and_resend() {
        let now = Instant::now();
        let mut s = Sender::new(Duration::from_secs(5));
        let first = s.reset(now);
        assert!(first.starts_with(b"N0 M110 N0*"));
        assert!(s.send(now, "M115").is_none(), "one command in flight");
        assert_eq!(s.on_ok().unwrap().cmd, "M110 N0");
        let b = s.send(now, "M115").unwrap();
        assert!(b.starts_with(b"N1 M115*"));
        // A bad checksum on line 1: Resend: 1, then an ok that acknowledges nothing.
        assert_eq!(s.on_resend(now, 1).unwrap(), Some(b.clone()));
        assert!(s.on_ok().is_none());
        assert!(!s.idle());
        s.on_unknown();
        let done = s.on_ok().unwrap();
        assert_eq!(done, Completed { cmd: "M115".into(), unknown: true });
        assert!(s.send(now, "M27").unwrap().starts_with(b"N2 M27*"));
        assert!(s.on_resend(now, 1).is_err(), "an old line cannot be resent");
    }

    #[test]
    fn resends_are_bounded_and_timeouts_fire() {
        let now = Instant::now();
        let mut s = Sender::new(Duration::from_secs(2));
        s.reset(now);
        for _ in 0..MAX_RESENDS {
            assert!(s.on_resend(now, 0).unwrap().is_some());
        }
        assert!(s.on_resend(now, 0).is_err());

        let mut s = Sender::new(Duration::from_secs(2));
        s.reset(now);
        assert!(s.timed_out(now + Duration::from_secs(1)).is_none());
        s.on_busy(now + Duration::from_secs(1));
        assert!(s.timed_out(now + Duration::from_millis(2500)).is_none(), "busy extends the wait");
        assert_eq!(s.timed_out(now + Duration::from_secs(4)).unwrap().cmd, "M110 N0");
        assert!(s.idle());
    }
}
