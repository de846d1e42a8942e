//! The watch state that must survive a restart, in SQLite: per printer, the print being
//! watched, its smoothing state, and whether printvigil already acted on it.
//!
//! Written after every scored frame and every print start or end, so a daemon killed with
//! SIGKILL mid-print continues the same print with the same smoothing state.

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
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let open_err = |source| StateError::Open { path: path.display().to_string(), source };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(open_err)?;
        let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(open_err)?;
        // NORMAL in WAL mode: a power cut may lose the last frame's update, never corrupt.
        conn.execute_batch("PRAGMA synchronous=NORMAL;").map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
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
