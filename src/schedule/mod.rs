//! The inference scheduler: one queue in front of the detector, shared by every watch.
//!
//! One host may watch a whole shelf of printers with one model in memory. Each watch
//! submits its printer's frames and awaits their scores; the scheduler decides which frame
//! the detector scores next, and runs one worker per inference session:
//!
//! - [`queue`]: at most one frame waiting per printer (a newer frame replaces it, so the
//!   detector scores the freshest frame and never one twice), printers served max-min
//!   fairly (least recently served first), urgent frames (a printer that has just warned)
//!   first.
//! - [`pool`]: the worker threads, the [`Client`] each watch holds and the [`Ticket`] each
//!   frame gets, a graceful stop.
//! - [`load`]: how well the host keeps up: per-frame cost, the load against the cadence,
//!   and the stretch of every printer's effective cadence when it cannot.
//!
//! The scheduler is generic over what it scores (any `FnMut(&I) -> O` per worker), so its
//! promises are tested without a model; the watch gives it detector sessions.

pub mod load;
pub mod pool;
pub mod queue;

pub use load::{Load, PrinterLoad, expected_load};
pub use pool::{Client, Priority, ScoreFn, Scheduler, Scored, Ticket, Unscored};

/// How many inference sessions, with how many threads each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub sessions: usize,
    pub threads: usize,
}

/// Most intra-op threads one session gets by default: a convolution network's run splits
/// well over a few threads, and past that more sessions side by side (each on its own
/// frame) use the cores better than more threads on one frame.
pub const MAX_DEFAULT_THREADS: usize = 4;

/// Sessions and threads per session for `cores` cores. `threads` and `sessions` are the
/// settings (0 = choose). One core is left to the printer host; a session gets up to
/// [`MAX_DEFAULT_THREADS`] threads, and the other cores hold more sessions, never more
/// than `printers` (a session no printer can keep busy only costs memory).
///
/// | cores | default |
/// |---|---|
/// | 1 or 2 | 1 session x 1 thread |
/// | 4 | 1 session x 3 threads |
/// | 8 | 1 session x 4 threads (7 spare: 4 + 3 would give a lopsided second session) |
/// | 16 | 3 sessions x 4 threads |
pub fn plan(cores: usize, threads: usize, sessions: usize, printers: usize) -> Plan {
    let spare = cores.saturating_sub(1).max(1);
    let threads = if threads > 0 { threads } else { spare.min(MAX_DEFAULT_THREADS) };
    let sessions = if sessions > 0 { sessions } else { (spare / threads).clamp(1, printers.max(1)) };
    Plan { sessions, threads }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plans_for_2_4_and_16_cores() {
        assert_eq!(plan(1, 0, 0, 4), Plan { sessions: 1, threads: 1 });
        assert_eq!(plan(2, 0, 0, 4), Plan { sessions: 1, threads: 1 });
        assert_eq!(plan(4, 0, 0, 4), Plan { sessions: 1, threads: 3 });
        assert_eq!(plan(8, 0, 0, 4), Plan { sessions: 1, threads: 4 });
        assert_eq!(plan(16, 0, 0, 32), Plan { sessions: 3, threads: 4 });
        assert_eq!(plan(16, 0, 0, 2), Plan { sessions: 2, threads: 4 }, "no more sessions than printers");
        assert_eq!(plan(16, 2, 0, 32), Plan { sessions: 7, threads: 2 });
        assert_eq!(plan(2, 0, 2, 1), Plan { sessions: 2, threads: 1 }, "explicit settings win");
    }
}
