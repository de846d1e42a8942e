//! The durable outbox: every `start_print` / `finish_print` is committed to SQLite (WAL,
//! `synchronous=FULL`) before anything is sent, and is marked sent only after the server's
//! 2xx. Per printer, only the oldest pending event is ever in flight, so a finish never
//! overtakes its start and the next start never overtakes the previous finish.
//!
//! The same database keeps the printer registration (intent first, then the id).

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(
        "outbox database {path}: {source}; check that state_dir is writable and the disk is not full"
    )]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("outbox database: {0}; check that state_dir is writable and the disk is not full")]
    Sql(#[from] rusqlite::Error),
    #[error(
        "the outbox cannot be written and {0} events already wait in memory; free space where state_dir is"
    )]
    Full(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Start,
    Finish,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Start => "start",
            EventKind::Finish => "finish",
        }
    }
}

/// One queued event. `arg` is the filename of a start, the status of a finish.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: i64,
    pub printer: String,
    pub kind: EventKind,
    pub job: String,
    pub arg: String,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    /// When it was queued (Unix ms): frames offered before a finish belong to its print.
    pub created_ms: i64,
    /// A send was started and its outcome is unknown (crash, timeout): the server's state
    /// must be checked before sending again.
    pub in_flight: bool,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

/// Exponential backoff with jitter: attempt 1 waits about `initial`, doubling up to `cap`;
/// the wait is drawn from [d/2, d].
pub fn backoff(attempts: u32, initial: Duration, cap: Duration) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let d = initial.saturating_mul(1u32 << exp).min(cap);
    let mut b = [0u8; 8];
    let r = if getrandom::fill(&mut b).is_ok() {
        u64::from_le_bytes(b)
    } else {
        0
    };
    let frac = (r >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    d.mul_f64(0.5 + 0.5 * frac)
}

pub struct Outbox {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outbox")
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  printer TEXT NOT NULL,
  kind TEXT NOT NULL,
  job TEXT NOT NULL,
  arg TEXT NOT NULL,
  created_ms INTEGER NOT NULL,
  state TEXT NOT NULL DEFAULT 'pending',
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_ms INTEGER NOT NULL DEFAULT 0,
  last_error TEXT,
  done_ms INTEGER,
  in_flight INTEGER NOT NULL DEFAULT 0,
  UNIQUE(printer, kind, job)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(state, printer, id);
CREATE TABLE IF NOT EXISTS printers(
  key TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  server_id INTEGER,
  intent_ms INTEGER NOT NULL
);
";

/// What `check` shows of an outbox: read without changing anything.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Events not sent yet.
    pub pending: u64,
    /// When the oldest of them was queued (Unix ms).
    pub oldest_ms: Option<i64>,
    /// The most attempts of any of them, and the last error of that one.
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// Sent and dropped events are kept this long (they make a repeated call for the same job
/// a no-op across restarts), then pruned.
const KEEP_DONE_MS: i64 = 14 * 24 * 3600 * 1000;

impl Outbox {
    pub fn open(path: &Path) -> Result<Self, OutboxError> {
        let open_err = |source| OutboxError::Open {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!("outbox database is in {mode} mode, not WAL");
        }
        conn.execute_batch("PRAGMA synchronous=FULL;")
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        conn.execute(
            "DELETE FROM outbox WHERE state != 'pending' AND done_ms < ?1",
            params![now_ms() - KEEP_DONE_MS],
        )
        .map_err(open_err)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// Reads an outbox without changing it (read-only; nothing is created): `None` when
    /// there is no outbox file. An unreadable or corrupt file is an error.
    pub fn inspect(path: &Path) -> Result<Option<Summary>, OutboxError> {
        if !path.exists() {
            return Ok(None);
        }
        let open_err = |source| OutboxError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(open_err)?;
        let has_table: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'outbox'",
                [],
                |r| r.get(0),
            )
            .map_err(open_err)?;
        if has_table == 0 {
            return Ok(Some(Summary { pending: 0, oldest_ms: None, attempts: 0, last_error: None }));
        }
        let (pending, oldest_ms): (i64, Option<i64>) = conn
            .query_row(
                "SELECT COUNT(*), MIN(created_ms) FROM outbox WHERE state = 'pending'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(open_err)?;
        let worst: Option<(i64, Option<String>)> = conn
            .query_row(
                "SELECT attempts, last_error FROM outbox WHERE state = 'pending' ORDER BY last_error IS NULL, attempts DESC, id LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(open_err)?;
        let (attempts, last_error) = worst.unwrap_or((0, None));
        Ok(Some(Summary {
            pending: pending.max(0) as u64,
            oldest_ms,
            attempts: attempts.clamp(0, u32::MAX as i64) as u32,
            last_error,
        }))
    }

    /// The server id recorded for a local printer, read without changing anything.
    pub fn open_read_only_registration(path: &Path, key: &str) -> Option<i64> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
        conn.query_row("SELECT server_id FROM printers WHERE key = ?1", params![key], |r| r.get::<_, Option<i64>>(0))
            .ok()
            .flatten()
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits an event. `None` when the same (printer, kind, job) was queued before (a
    /// repeated call, e.g. after a restart): nothing is added.
    pub fn enqueue(
        &self,
        printer: &str,
        kind: EventKind,
        job: &str,
        arg: &str,
    ) -> Result<Option<i64>, OutboxError> {
        let c = self.conn();
        let n = c.execute(
            "INSERT OR IGNORE INTO outbox(printer, kind, job, arg, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![printer, kind.as_str(), job, arg, now_ms()],
        )?;
        Ok(if n == 1 {
            Some(c.last_insert_rowid())
        } else {
            None
        })
    }

    /// The oldest pending event of each printer (only these may be sent).
    pub fn heads(&self) -> Result<Vec<Event>, OutboxError> {
        let c = self.conn();
        let mut st = c.prepare_cached(
            "SELECT id, printer, kind, job, arg, attempts, next_attempt_ms, in_flight, created_ms FROM outbox o
             WHERE state = 'pending' AND id = (SELECT MIN(id) FROM outbox WHERE state = 'pending' AND printer = o.printer)
             ORDER BY id",
        )?;
        let rows = st.query_map([], |r| {
            let kind: String = r.get(2)?;
            Ok((
                kind,
                Event {
                    id: r.get(0)?,
                    printer: r.get(1)?,
                    kind: EventKind::Start,
                    job: r.get(3)?,
                    arg: r.get(4)?,
                    attempts: r.get::<_, i64>(5)?.clamp(0, u32::MAX as i64) as u32,
                    next_attempt_ms: r.get(6)?,
                    in_flight: r.get::<_, i64>(7)? != 0,
                    created_ms: r.get(8)?,
                },
            ))
        })?;
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for row in rows {
            let (kind, mut ev) = row?;
            ev.kind = match kind.as_str() {
                "start" => EventKind::Start,
                "finish" => EventKind::Finish,
                _ => {
                    bad.push(ev.id);
                    continue;
                }
            };
            out.push(ev);
        }
        drop(st);
        drop(c);
        for id in bad {
            self.mark_dropped(id, "unknown event kind in the database")?;
        }
        Ok(out)
    }

    /// Commits "a send is starting" (cleared only by [`Outbox::mark_sent`] or
    /// [`Outbox::mark_dropped`]).
    pub fn mark_in_flight(&self, id: i64) -> Result<(), OutboxError> {
        self.conn().execute(
            "UPDATE outbox SET in_flight = 1 WHERE id = ?1 AND in_flight = 0",
            params![id],
        )?;
        Ok(())
    }

    pub fn mark_sent(&self, id: i64) -> Result<(), OutboxError> {
        self.conn().execute("UPDATE outbox SET state = 'sent', in_flight = 0, done_ms = ?2, last_error = NULL WHERE id = ?1", params![id, now_ms()])?;
        Ok(())
    }

    pub fn mark_dropped(&self, id: i64, reason: &str) -> Result<(), OutboxError> {
        self.conn().execute("UPDATE outbox SET state = 'dropped', in_flight = 0, done_ms = ?2, last_error = ?3 WHERE id = ?1", params![id, now_ms(), reason])?;
        Ok(())
    }

    pub fn mark_retry(
        &self,
        id: i64,
        attempts: u32,
        next_attempt_ms: i64,
        error: &str,
    ) -> Result<(), OutboxError> {
        self.conn().execute(
            "UPDATE outbox SET attempts = ?2, next_attempt_ms = ?3, last_error = ?4 WHERE id = ?1",
            params![id, attempts, next_attempt_ms, error],
        )?;
        Ok(())
    }

    /// Records why every pending event waits (shown by `check`), without counting an
    /// attempt: the server refuses the configuration, so none is tried.
    pub fn note_waiting(&self, reason: &str) -> Result<(), OutboxError> {
        self.conn().execute(
            "UPDATE outbox SET last_error = ?1 WHERE state = 'pending' AND last_error IS NOT ?1",
            params![reason],
        )?;
        Ok(())
    }

    /// Makes every pending event due now (e.g. after a config fix or for `check`).
    pub fn retry_now(&self) -> Result<(), OutboxError> {
        self.conn().execute(
            "UPDATE outbox SET next_attempt_ms = 0 WHERE state = 'pending'",
            [],
        )?;
        Ok(())
    }

    /// Caps the database at `pages` pages (SQLite's `max_page_count`; never below its
    /// current size, so 0 means "no growth at all"): a write that needs more fails with
    /// SQLITE_FULL, as on a full disk. Returns the cap now in force. Lets tests reproduce a
    /// full disk without filling one; `u32::MAX` lifts the cap.
    pub fn set_page_limit(&self, pages: u64) -> Result<u64, OutboxError> {
        let c = self.conn();
        let size: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let want = pages.clamp(size.max(1) as u64, u32::MAX as u64 - 1);
        let n: i64 = c.query_row(&format!("PRAGMA max_page_count = {want}"), [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// When the oldest event not sent yet was queued (Unix ms).
    pub fn oldest_pending_ms(&self) -> Result<Option<i64>, OutboxError> {
        Ok(self.conn().query_row("SELECT MIN(created_ms) FROM outbox WHERE state = 'pending'", [], |r| r.get(0))?)
    }

    pub fn pending(&self) -> Result<u64, OutboxError> {
        Ok(self.conn().query_row(
            "SELECT COUNT(*) FROM outbox WHERE state = 'pending'",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// (kind, job, state, last_error) of every event of a printer, oldest first.
    #[allow(clippy::type_complexity)]
    pub fn history(
        &self,
        printer: &str,
    ) -> Result<Vec<(String, String, String, Option<String>)>, OutboxError> {
        let c = self.conn();
        let mut st = c.prepare(
            "SELECT kind, job, state, last_error FROM outbox WHERE printer = ?1 ORDER BY id",
        )?;
        let rows = st.query_map(params![printer], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Registration record of a local printer: (name, server id if known).
    pub fn registration(&self, key: &str) -> Result<Option<(String, Option<i64>)>, OutboxError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT name, server_id FROM printers WHERE key = ?1",
                params![key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Records the intent to create a printer of this name (committed before the create call).
    pub fn record_intent(&self, key: &str, name: &str) -> Result<(), OutboxError> {
        self.conn().execute(
            "INSERT INTO printers(key, name, server_id, intent_ms) VALUES (?1, ?2, NULL, ?3)
             ON CONFLICT(key) DO UPDATE SET name = excluded.name WHERE server_id IS NULL",
            params![key, name, now_ms()],
        )?;
        Ok(())
    }

    pub fn set_server_id(&self, key: &str, name: &str, id: i64) -> Result<(), OutboxError> {
        self.conn().execute(
            "INSERT INTO printers(key, name, server_id, intent_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(key) DO UPDATE SET server_id = excluded.server_id, name = excluded.name",
            params![key, name, id, now_ms()],
        )?;
        Ok(())
    }

    pub fn forget_server_id(&self, key: &str) -> Result<(), OutboxError> {
        self.conn().execute(
            "UPDATE printers SET server_id = NULL WHERE key = ?1",
            params![key],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_per_printer_and_dedup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.sqlite3");
        let ob = Outbox::open(&path).unwrap();
        let s1 = ob
            .enqueue("a", EventKind::Start, "j1", "x.gcode")
            .unwrap()
            .unwrap();
        assert_eq!(
            ob.enqueue("a", EventKind::Start, "j1", "x.gcode").unwrap(),
            None,
            "same job again is ignored"
        );
        ob.enqueue("b", EventKind::Start, "k1", "y.gcode")
            .unwrap()
            .unwrap();
        let f1 = ob
            .enqueue("a", EventKind::Finish, "j1", "success")
            .unwrap()
            .unwrap();
        let heads = ob.heads().unwrap();
        assert_eq!(
            heads
                .iter()
                .map(|e| (e.printer.as_str(), e.kind))
                .collect::<Vec<_>>(),
            vec![("a", EventKind::Start), ("b", EventKind::Start)]
        );
        // A failed head blocks the printer's queue: the finish does not overtake it.
        ob.mark_in_flight(s1).unwrap();
        ob.mark_retry(s1, 1, now_ms() + 60_000, "down").unwrap();
        assert!(
            ob.heads()
                .unwrap()
                .iter()
                .find(|e| e.id == s1)
                .unwrap()
                .in_flight
        );
        let head_a = |ob: &Outbox| {
            ob.heads()
                .unwrap()
                .into_iter()
                .find(|e| e.printer == "a")
                .unwrap()
                .id
        };
        assert_eq!(head_a(&ob), s1);
        ob.mark_sent(s1).unwrap();
        assert_eq!(head_a(&ob), f1);
        drop(ob);
        // Survives reopening; sent events still dedup.
        let ob = Outbox::open(&path).unwrap();
        assert_eq!(ob.pending().unwrap(), 2);
        assert_eq!(
            ob.enqueue("a", EventKind::Start, "j1", "x.gcode").unwrap(),
            None
        );
        ob.mark_dropped(f1, "HTTP 400").unwrap();
        assert_eq!(ob.history("a").unwrap()[1].2, "dropped");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let i = Duration::from_millis(100);
        let cap = Duration::from_secs(300);
        for a in 1..40 {
            let d = backoff(a, i, cap);
            let full = i.saturating_mul(1 << (a - 1).min(30)).min(cap);
            assert!(d >= full / 2 && d <= full, "{a}: {d:?}");
        }
        assert!(backoff(u32::MAX, i, cap) <= cap);
    }

    #[test]
    fn registration_intent_then_id() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(&dir.path().join("o.sqlite3")).unwrap();
        assert_eq!(ob.registration("default").unwrap(), None);
        ob.record_intent("default", "host").unwrap();
        assert_eq!(
            ob.registration("default").unwrap(),
            Some(("host".into(), None))
        );
        ob.set_server_id("default", "host", 7).unwrap();
        ob.record_intent("default", "other").unwrap();
        assert_eq!(
            ob.registration("default").unwrap(),
            Some(("host".into(), Some(7)))
        );
    }
}
