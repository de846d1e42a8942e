//! The link's task: connect, run a session, wait, again, until the link stops.
//!
//! Two things keep a broken or hostile Moonraker from turning into a storm:
//!
//! - **Backoff that resets only on health.** Each failure (cannot connect, refused, or a
//!   connection lost before it was healthy) doubles the wait before the next attempt, from
//!   [`BACKOFF_START`] up to [`BACKOFF_CAP`], with ±25 % jitter. Reaching `ready` is not
//!   enough to reset it: only a connection that stayed ready for [`HEALTHY_AFTER`] does. A
//!   peer that accepts, gets ready and drops is retried ever more slowly, not 4 times a
//!   second.
//! - **One log line per state change, with a count.** The first failure of a kind is
//!   logged; a repeat is logged once as "again (N times since T)"; reaching the longest
//!   wait is logged once; after that failures are only counted, and the count is told when
//!   the connection is healthy again. While the link flaps (lost three connections without
//!   one staying healthy) it reports `Offline` once and withholds `Online` until a connection stays healthy, so
//!   the watch loop, which logs each, does not flap either. An SD card does not wear out on
//!   a printer that is switched off for the night.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{error, info, warn};

use super::Shared;
use super::connect::{ConnectError, connect};
use super::session::session;
use super::tracker::Tracker;

/// The first wait after a failure.
pub(super) const BACKOFF_START: Duration = Duration::from_millis(250);
/// The longest wait between attempts.
pub(super) const BACKOFF_CAP: Duration = Duration::from_secs(15);
/// How long a connection must stay ready to count as healthy (and reset the backoff).
pub(super) const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// Retry interval after a 401: a configuration problem, so no hurry.
const UNAUTHORIZED_RETRY: Duration = Duration::from_secs(60);

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trouble {
    /// The connection was made (maybe ready) and then lost.
    Lost,
    /// No connection could be made.
    Unreachable,
    /// Moonraker refused the API key.
    Unauthorized,
}

/// What to log about a failure (nothing, most of the time).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Say {
    /// The first failure of this kind in this run of failures; `earlier` failures of other
    /// kinds came before it.
    First { earlier: u32 },
    /// The same failure again: the second time.
    Again { count: u32 },
    /// The waits reached the longest: from now on every `BACKOFF_CAP`.
    AtCap { count: u32 },
}

/// A run of failures since the link was last healthy.
#[derive(Debug, Clone)]
struct Failing {
    kind: Trouble,
    since: SystemTime,
    count: u32,
    /// Connections lost (after they were made) in this run.
    lost: u32,
    logged: Vec<Trouble>,
    told_cap: bool,
}

/// Connections lost in one run of failures from which on the link counts as flapping (two
/// quick Moonraker restarts in a row are not flapping yet).
const FLAPPING_AFTER: u32 = 3;

/// The backoff and what has been told; see the module documentation.
#[derive(Debug)]
pub(super) struct Reconnect {
    /// Failures since the last healthy connection (the backoff's exponent).
    failures: u32,
    failing: Option<Failing>,
    /// The current connection has been healthy.
    healthy: bool,
}

impl Reconnect {
    pub(super) fn new() -> Reconnect {
        Reconnect { failures: 0, failing: None, healthy: false }
    }

    pub(super) fn healthy_after(&self) -> Duration {
        HEALTHY_AFTER
    }

    pub(super) fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// The wait before the next attempt after `failures` failures (without jitter).
    fn backoff(failures: u32) -> Duration {
        BACKOFF_START.saturating_mul(1u32 << failures.min(16)).min(BACKOFF_CAP)
    }

    /// The current connection stayed ready for [`HEALTHY_AFTER`]: the backoff starts over
    /// and a run of failures is over (told with its count when there were several).
    pub(super) fn healthy(&mut self, shared: &Shared) {
        self.healthy = true;
        self.failures = 0;
        if let Some(f) = self.failing.take()
            && f.count >= 2
        {
            info!(
                printer = %shared.cfg.name,
                "Moonraker at {}: connection stable again ({} failures since {})",
                shared.cfg.url,
                f.count,
                humantime::format_rfc3339_seconds(f.since)
            );
        }
        shared.out.set_quiet(false);
    }

    /// Counts a failure: the wait before the next attempt, and what to say about it.
    pub(super) fn failed(&mut self, kind: Trouble, now: SystemTime) -> (Duration, Option<Say>) {
        self.healthy = false;
        let wait = match kind {
            Trouble::Unauthorized => UNAUTHORIZED_RETRY,
            _ => Self::backoff(self.failures),
        };
        self.failures = self.failures.saturating_add(1);
        let f = self.failing.get_or_insert_with(|| Failing {
            kind,
            since: now,
            count: 0,
            lost: 0,
            logged: Vec::new(),
            told_cap: false,
        });
        f.count += 1;
        f.lost += u32::from(kind == Trouble::Lost);
        let repeat = f.kind == kind && f.count > 1;
        f.kind = kind;
        let say = if !f.logged.contains(&kind) {
            f.logged.push(kind);
            Some(Say::First { earlier: f.count - 1 })
        } else if repeat && f.count == 2 {
            Some(Say::Again { count: f.count })
        } else if wait >= BACKOFF_CAP && kind != Trouble::Unauthorized && !f.told_cap {
            f.told_cap = true;
            Some(Say::AtCap { count: f.count })
        } else {
            None
        };
        (wait, say)
    }

    fn since(&self) -> String {
        self.failing
            .as_ref()
            .map(|f| humantime::format_rfc3339_seconds(f.since).to_string())
            .unwrap_or_default()
    }

    /// Counts a failure and logs what is worth logging; returns the wait.
    fn fail(&mut self, shared: &Shared, kind: Trouble, reason: &str) -> Duration {
        let (wait, say) = self.failed(kind, SystemTime::now());
        let (printer, url) = (&shared.cfg.name, &shared.cfg.url);
        let retry = if wait >= BACKOFF_CAP {
            format!("retrying every {} s", wait.as_secs())
        } else {
            format!("retrying with a growing wait, up to every {} s", BACKOFF_CAP.as_secs())
        };
        let since = self.since();
        match (kind, say) {
            (_, None) => {}
            (Trouble::Unauthorized, Some(_)) => error!(
                printer = %printer,
                url = %url,
                "Moonraker refused printvigil (401 Unauthorized: {reason}). Fix: set `api_key` for this printer to Moonraker's API key (shown by Mainsail/Fluidd under the API key settings, or `GET /access/api_key` from a trusted host), or add printvigil's address to Moonraker's [authorization] trusted_clients. Retrying every {}s.",
                UNAUTHORIZED_RETRY.as_secs()
            ),
            (kind, Some(Say::First { earlier })) => {
                let what = match kind {
                    Trouble::Lost => "connection lost",
                    _ => "cannot connect",
                };
                let after = if earlier > 0 { format!(" ({earlier} failures since {since})") } else { String::new() };
                warn!(printer = %printer, "Moonraker at {url}: {what} ({reason}){after}; {retry}");
            }
            (kind, Some(Say::Again { count })) => {
                let what = match kind {
                    Trouble::Lost => "connection lost again",
                    _ => "still cannot connect",
                };
                warn!(
                    printer = %printer,
                    "Moonraker at {url}: {what} ({count} times since {since}); {retry}; further failures are counted, not logged"
                );
            }
            (_, Some(Say::AtCap { count })) => {
                warn!(printer = %printer, "Moonraker at {url}: still failing ({count} times since {since}); {retry}");
            }
        }
        if self.failing.as_ref().is_some_and(|f| f.lost >= FLAPPING_AFTER) {
            // Flapping: the Online/Offline events of each round go to debug.
            shared.out.set_quiet(true);
        }
        wait
    }
}

/// The link's task; see the module documentation.
pub(super) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tracker = Tracker::default();
    let mut reconnect = Reconnect::new();
    loop {
        if *stop.borrow() {
            break;
        }
        let wait = match connect(&shared).await {
            Ok(ws) => {
                let end = session(&shared, ws, &mut tracker, &mut reconnect, &mut stop).await;
                shared.set_rpc(None);
                if end.stopped {
                    break;
                }
                if end.unauthorized {
                    let wait = reconnect.fail(&shared, Trouble::Unauthorized, "JSON-RPC error 401 on the websocket");
                    tracker.offline(&shared, UNAUTHORIZED_OFFLINE);
                    wait
                } else {
                    let wait = reconnect.fail(&shared, Trouble::Lost, &end.reason);
                    tracker.offline(&shared, &format!("lost the connection to Moonraker: {}", end.reason));
                    wait
                }
            }
            Err(ConnectError::Unauthorized(detail)) => {
                let wait = reconnect.fail(&shared, Trouble::Unauthorized, &detail);
                tracker.offline(&shared, UNAUTHORIZED_OFFLINE);
                wait
            }
            Err(ConnectError::Other(reason)) => {
                let wait = reconnect.fail(&shared, Trouble::Unreachable, &reason);
                tracker.offline(&shared, &format!("cannot reach Moonraker at {}: {reason}", shared.cfg.url));
                wait
            }
        };
        let jitter = wait.mul_f64(0.75 + fastrand::f64() * 0.5);
        tokio::select! {
            _ = tokio::time::sleep(jitter) => {}
            _ = stop.changed() => {}
        }
    }
    shared.set_rpc(None);
}

const UNAUTHORIZED_OFFLINE: &str =
    "Moonraker refused the connection (401): the API key is missing or wrong; set `api_key` for this printer";

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn backoff_grows_and_resets_only_on_health() {
        let sh = Shared::new(super::super::MoonrakerConfig::new("t", "http://127.0.0.1:7125"), "x");
        let mut r = Reconnect::new();
        let waits: Vec<u64> = (0..8).map(|i| r.failed(Trouble::Lost, t(i)).0.as_millis() as u64).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 15000, 15000]);
        // Reaching ready is not health; a connection that stayed ready is.
        r.healthy(&sh);
        assert_eq!(r.failed(Trouble::Lost, t(100)).0, BACKOFF_START);
    }

    #[test]
    fn a_failure_is_told_once_per_state_change_not_per_attempt() {
        let mut r = Reconnect::new();
        let said: Vec<Option<Say>> = (0..100).map(|i| r.failed(Trouble::Lost, t(i)).1).collect();
        let told: Vec<&Say> = said.iter().flatten().collect();
        assert_eq!(
            told,
            [&Say::First { earlier: 0 }, &Say::Again { count: 2 }, &Say::AtCap { count: 7 }]
        );
        // A new kind of failure is told once, with the count so far.
        assert_eq!(r.failed(Trouble::Unreachable, t(200)).1, Some(Say::First { earlier: 100 }));
        assert_eq!(r.failed(Trouble::Unreachable, t(201)).1, None);
        assert_eq!(r.failed(Trouble::Lost, t(202)).1, None);
    }
}
