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

/// Sessions and threads per session for `cores` cores. `threads` and `sessions` are the
/// settings (0 = choose); `printers` caps the sessions (a session no printer keeps busy
/// only costs memory).
///
/// By default one session gets every core but one (the printer host keeps one): 1 thread
/// on 2 cores, 3 on 4, 15 on 16. One session, because sessions do not share their
/// weights: measured with the full-size model, a second session adds ~270 MiB (555 MiB for
/// two against 299 for one), past the farm's memory goal (one model in memory, 300 MiB +
/// 2 MiB per printer). A host with memory to spare sets `detector.sessions` (and
/// `intra_threads`, e.g. 4 x 4 threads on 16 cores) for more frames per second.
pub fn plan(cores: usize, threads: usize, sessions: usize, printers: usize) -> Plan {
    let spare = cores.saturating_sub(1).max(1);
    let sessions = if sessions > 0 { sessions.min(printers.max(1)) } else { 1 };
    let threads = if threads > 0 { threads } else { (spare / sessions).max(1) };
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
        assert_eq!(plan(16, 0, 0, 32), Plan { sessions: 1, threads: 15 });
        assert_eq!(plan(16, 0, 3, 32), Plan { sessions: 3, threads: 5 }, "sessions split the spare cores");
        assert_eq!(plan(16, 4, 4, 32), Plan { sessions: 4, threads: 4 });
        assert_eq!(plan(16, 0, 8, 2), Plan { sessions: 2, threads: 7 }, "no more sessions than printers");
        assert_eq!(plan(2, 2, 2, 4), Plan { sessions: 2, threads: 2 }, "explicit settings win");
    }
}
