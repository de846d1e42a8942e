//! The watch state that must survive a restart, in SQLite: per printer, the print being
//! watched, its smoothing state, and whether printvigil already acted on it.
//!
//! Written after every scored frame and every print start or end, so a daemon killed with
//! SIGKILL mid-print continues the same print with the same smoothing state.
//!
//! The state is disposable: a file that is not a sound SQLite database (garbage, cut short)
//! is moved aside as `watch-state.sqlite3.corrupt-<time>` with a WARN, and the watch starts
//! afresh; it must never stop detection. A file that cannot be opened for lack of
//! permission is left alone and reported with the fix.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::detector::smoothing::SmoothingState;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "cannot open the watch state {path}: {source}; check that the state directory is writable by printvigil"
    )]
    Open { path: String, source: rusqlite::Error },
    #[error("watch state database: {0}; if the disk is full, free space (detection goes on meanwhile)")]
    Db(#[from] rusqlite::Error),
    #[error(
        "the watch state {path} is corrupt ({reason}) and could not be moved aside ({source}); delete it (it only holds smoothing state) or make the state directory writable by printvigil"
    )]
    Unmovable { path: String, reason: String, source: std::io::Error },
    #[error("watch state of printer {printer} is unreadable ({reason}); it starts afresh")]
    Corrupt { printer: String, reason: String },
}

/// What is kept per printer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrinterRecord {
    /// The print being watched (the link's job identity), if any.
    pub job: Option<String>,
    /// The file of that print.
    pub file: Option<String>,
    pub smoothing: SmoothingState,
    /// printvigil already paused, cancelled or notified for this print.
    pub acted: bool,
    /// A person turned detection off for this print.
    #[serde(default)]
    pub not_watching: bool,
}

/// The state database.
#[derive(Debug)]
pub struct StateStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS printer_state(
  printer TEXT PRIMARY KEY,
  record TEXT NOT NULL,
  updated_ms INTEGER NOT NULL
);
";

pub fn state_file(state_dir: &Path) -> PathBuf {
    state_dir.join("watch-state.sqlite3")
}

impl StateStore {
    /// Opens (or creates) the state database; a corrupt one is moved aside and replaced by
    /// a fresh one (see the module doc).
    pub fn open(path: &Path) -> Result<Self, StateError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match Self::open_once(path) {
            Err(StateError::Open { source, .. }) if is_corrupt(&source) => {
                let aside = move_aside(path).map_err(|e| StateError::Unmovable {
                    path: path.display().to_string(),
                    reason: source.to_string(),
                    source: e,
                })?;
                tracing::warn!(
                    "the watch state {} was corrupt ({source}); moved it aside to {} and starting with a fresh one (smoothing starts over)",
                    path.display(),
                    aside.display()
                );
                Self::open_once(path)
            }
            other => other,
        }
    }

    fn open_once(path: &Path) -> Result<Self, StateError> {
        let open_err = |source| StateError::Open { path: path.display().to_string(), source };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(open_err)?;
        let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(open_err)?;
        // NORMAL in WAL mode: a power cut may lose the last frame's update, never corrupt.
        conn.execute_batch("PRAGMA synchronous=NORMAL;").map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        // A file cut short opens fine and fails on the first read of a lost page: look now.
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(open_err)?;
        if check != "ok" {
            return Err(open_err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(format!("integrity check: {check}")),
            )));
        }
        Ok(Self { conn: Mutex::new(conn), path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The printer's record; a fresh one when there is none. An unreadable record is
    /// reported and replaced by a fresh one (the error says so).
    pub fn load(&self, printer: &str) -> Result<PrinterRecord, StateError> {
        let text: Option<String> = self
            .conn()
            .query_row("SELECT record FROM printer_state WHERE printer = ?1", params![printer], |r| r.get(0))
            .optional()?;
        match text {
            None => Ok(PrinterRecord::default()),
            Some(t) => serde_json::from_str(&t)
                .map_err(|e| StateError::Corrupt { printer: printer.to_string(), reason: e.to_string() }),
        }
    }

    pub fn save(&self, printer: &str, record: &PrinterRecord) -> Result<(), StateError> {
        let text = serde_json::to_string(record).expect("a record always serialises");
        self.conn().execute(
            "INSERT INTO printer_state(printer, record, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(printer) DO UPDATE SET record = excluded.record, updated_ms = excluded.updated_ms",
            params![printer, text, crate::server::outbox::now_ms()],
        )?;
        Ok(())
    }
}

/// Not a database, or a damaged one (as opposed to one that cannot be opened or written).
fn is_corrupt(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, DatabaseCorrupt | NotADatabase))
}

/// Renames the database (and its WAL and shared-memory files) to `<name>.corrupt-<time>`;
/// returns the new path of the database.
fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "");
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut aside = path.with_file_name(format!("{name}.corrupt-{stamp}"));
    let mut n = 1;
    while aside.exists() {
        aside = path.with_file_name(format!("{name}.corrupt-{stamp}-{n}"));
        n += 1;
    }
    std::fs::rename(path, &aside)?;
    for ext in ["-wal", "-shm"] {
        let side = path.with_file_name(format!("{name}{ext}"));
        if side.exists() {
            let _ = std::fs::rename(&side, format!("{}{ext}", aside.display()));
        }
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_file(dir.path());
        let mut rec = PrinterRecord { job: Some("j1".into()), file: Some("a.gcode".into()), ..Default::default() };
        rec.smoothing.update(0.5);
        rec.acted = true;
        {
            let s = StateStore::open(&path).unwrap();
            assert_eq!(s.load("voron").unwrap(), PrinterRecord::default());
            s.save("voron", &rec).unwrap();
        }
        let s = StateStore::open(&path).unwrap();
        assert_eq!(s.load("voron").unwrap(), rec);
        assert_eq!(s.load("ender").unwrap(), PrinterRecord::default());
    }

    /// The files in `dir` whose name starts with `prefix`.
    fn named(dir: &Path, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(prefix))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_garbage_state_file_is_moved_aside_and_a_fresh_one_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_file(dir.path());
        let garbage: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        std::fs::write(&path, &garbage).unwrap();
        let s = StateStore::open(&path).expect("a corrupt state file does not stop the watch");
        assert_eq!(s.load("voron").unwrap(), PrinterRecord::default());
        s.save("voron", &PrinterRecord { acted: true, ..Default::default() }).unwrap();
        let aside = named(dir.path(), "watch-state.sqlite3.corrupt-");
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(std::fs::read(dir.path().join(&aside[0])).unwrap(), garbage, "the corrupt file is kept as it was");
    }

    #[test]
    fn a_truncated_state_database_is_moved_aside_and_a_fresh_one_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_file(dir.path());
        {
            let s = StateStore::open(&path).unwrap();
            // Enough records for several pages, so that cutting the file loses some.
            let mut rec = PrinterRecord { job: Some("j".repeat(500)), ..Default::default() };
            for i in 0..200 {
                rec.smoothing.update(i as f64 / 200.0);
                s.save(&format!("printer-{i}"), &rec).unwrap();
            }
            s.conn().execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
        }
        let full = std::fs::read(&path).unwrap();
        assert!(full.len() > 16 * 4096, "{} bytes", full.len());
        std::fs::write(&path, &full[..full.len() / 3]).unwrap();
        let s = StateStore::open(&path).expect("a truncated state file does not stop the watch");
        assert_eq!(s.load("printer-0").unwrap(), PrinterRecord::default(), "a fresh state");
        assert_eq!(named(dir.path(), "watch-state.sqlite3.corrupt-").len(), 1);
        drop(s);
        // Opened again: now sound, nothing more is moved.
        StateStore::open(&path).unwrap();
        assert_eq!(named(dir.path(), "watch-state.sqlite3.corrupt-").len(), 1);
    }

    #[test]
    fn an_unopenable_state_file_keeps_the_permission_hint() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the database should be: cannot be opened, is not "corrupt".
        let path = state_file(dir.path());
        std::fs::create_dir(&path).unwrap();
        let e = StateStore::open(&path).unwrap_err().to_string();
        assert!(e.contains("writable"), "{e}");
        assert!(named(dir.path(), "watch-state.sqlite3.corrupt-").is_empty());
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_the_printer() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(&state_file(dir.path())).unwrap();
        s.conn()
            .execute("INSERT INTO printer_state VALUES ('voron', '{not json', 0)", [])
            .unwrap();
        let e = s.load("voron").unwrap_err().to_string();
        assert!(e.contains("voron") && e.contains("afresh"), "{e}");
    }
}
