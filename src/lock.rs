//! The per-session daemon lock `~/.confab/sync/<ID>.lock` (H9). STUB.

use std::path::{Path, PathBuf};

pub struct SessionLock {
    pub path: PathBuf,
    _file: std::fs::File,
}

impl SessionLock {
    /// Non-blocking exclusive flock; `Ok(None)` when another process holds it.
    pub fn try_acquire(path: &Path) -> std::io::Result<Option<SessionLock>> {
        todo!("{path:?}")
    }

    /// Unlinks the lock file while still holding it, then releases it.
    pub fn release_and_unlink(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
