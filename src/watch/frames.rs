//! Annotated frames of decisions (warn, pause), kept on local disk within a size budget:
//! the oldest files go first.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FramesError {
    #[error("cannot save the decision frame in {dir}: {source}; check free space and permissions of the state directory")]
    Write { dir: String, source: std::io::Error },
}

/// `name` with every character but ASCII letters, digits, `-` and `_` made `_`, and at most
/// 150 long: safe as a file or folder name (no separators, no `..`).
pub fn safe_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_".contains(c) { c } else { '_' }).take(150).collect()
}

/// A folder of saved frames with a byte budget.
#[derive(Debug, Clone)]
pub struct FrameStore {
    dir: PathBuf,
    max_bytes: u64,
}

impl FrameStore {
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        Self { dir, max_bytes }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Saves `jpeg` as `<name>.jpg` (the name is made safe for a file name) and prunes the
    /// oldest files until the folder fits the budget again. Returns the saved file's path.
    pub fn save(&self, name: &str, jpeg: &[u8]) -> Result<PathBuf, FramesError> {
        let err = |source| FramesError::Write { dir: self.dir.display().to_string(), source };
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let safe = safe_name(name);
        let path = self.dir.join(format!("{safe}.jpg"));
        let tmp = self.dir.join(format!(".{safe}.jpg.tmp"));
        std::fs::write(&tmp, jpeg).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        self.prune(&path);
        Ok(path)
    }

    /// Deletes the oldest frames (by modification time, then name) beyond the budget; the
    /// frame just saved (`keep`) is never deleted.
    fn prune(&self, keep: &Path) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return };
        let mut files: Vec<(std::time::SystemTime, PathBuf, u64)> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "jpg"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                m.is_file().then(|| (m.modified().unwrap_or(std::time::UNIX_EPOCH), e.path(), m.len()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.2).sum();
        files.sort();
        for (_, path, len) in files {
            if total <= self.max_bytes {
                break;
            }
            if path == keep {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => total -= len,
                Err(e) => tracing::warn!("cannot delete old frame {}: {e}", path.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_the_newest_frames() {
        let dir = tempfile::tempdir().unwrap();
        let store = FrameStore::new(dir.path().join("frames"), 2500);
        let mut saved = Vec::new();
        for i in 0..6 {
            saved.push(store.save(&format!("f{i} pause/../x"), &[i as u8; 1000]).unwrap());
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
        let left: Vec<_> = saved.iter().filter(|p| p.exists()).collect();
        assert_eq!(left, vec![&saved[4], &saved[5]], "the two newest fit 2500 bytes");
        assert!(saved[0].parent().unwrap().ends_with("frames"), "the name cannot leave the folder");
        // A single frame larger than the budget is still kept (it is the decision's evidence).
        let big = store.save("big", &[7; 4000]).unwrap();
        assert!(big.exists());
    }
}
