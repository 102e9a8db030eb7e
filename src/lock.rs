//! The per-session daemon lock `~/.confab/sync/<ID>.lock` (H9, sync-engine §1 step 2).
//!
//! Invariants: whoever holds the `flock` on the inode that the path names is the live daemon; the
//! lock is taken non-blocking and only by the daemon (hooks probe it through
//! [`crate::liveness::lock_is_held`]); after locking we check that the path still names the locked
//! inode, because a reaper or a finishing daemon may have unlinked it in between; the file stays
//! open (and locked) for the lifetime of [`SessionLock`].

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// How often to retry when the path keeps being replaced under us.
const MAX_ATTEMPTS: usize = 20;

/// A held session lock. Dropping it releases the lock (the file stays).
#[derive(Debug)]
pub struct SessionLock {
    pub path: PathBuf,
    _file: File,
}

impl SessionLock {
    /// Non-blocking exclusive flock; `Ok(None)` when another process holds it.
    pub fn try_acquire(path: &Path) -> std::io::Result<Option<SessionLock>> {
        for _ in 0..MAX_ATTEMPTS {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)?;
            // SAFETY: flock on a descriptor we own; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let err = std::io::Error::last_os_error();
                return match err.raw_os_error() {
                    Some(libc::EWOULDBLOCK) => Ok(None),
                    _ => Err(err),
                };
            }
            if names_same_file(path, &file) {
                return Ok(Some(SessionLock {
                    path: path.to_path_buf(),
                    _file: file,
                }));
            }
            // We locked an inode that was unlinked or replaced meanwhile: a daemon holding it would
            // not be found by anyone. Drop it and lock whatever the path names now.
        }
        Err(std::io::Error::other(format!(
            "lock file {} keeps being replaced",
            path.display()
        )))
    }

    /// Unlinks the lock file while still holding it, then releases it. The path is unlinked only if
    /// it still names our inode, so a lock file created by a successor is never removed.
    pub fn release_and_unlink(self) {
        if names_same_file(&self.path, &self._file) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether `path` currently names the same inode as the open `file`.
fn names_same_file(path: &Path, file: &File) -> bool {
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(p), Ok(f)) => p.dev() == f.dev() && p.ino() == f.ino(),
        _ => false,
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::liveness::{lock_holder_pid, lock_is_held};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn second_acquire_is_refused_until_release() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.lock");
        let first = SessionLock::try_acquire(&path)
            .unwrap()
            .expect("first acquire");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(lock_is_held(&path));
        assert_eq!(lock_holder_pid(&path), Some(i64::from(std::process::id())));
        // flock locks belong to the open file description, so a second open in the same process
        // conflicts exactly like another process would.
        assert!(SessionLock::try_acquire(&path).unwrap().is_none());
        assert!(lock_is_held(&path));
        first.release_and_unlink();
        assert!(!path.exists());
        assert!(!lock_is_held(&path));
        let again = SessionLock::try_acquire(&path)
            .unwrap()
            .expect("acquire after release");
        assert!(lock_is_held(&path));
        drop(again);
        assert!(path.exists(), "drop keeps the file");
        assert!(!lock_is_held(&path));
        assert!(SessionLock::try_acquire(&path).unwrap().is_some());
    }

    #[test]
    fn held_by_another_process_gives_none() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.lock");
        std::fs::File::create(&path).unwrap();
        let mut child = std::process::Command::new("flock")
            .args(["-x", "-o"])
            .arg(&path)
            .args(["sleep", "30"])
            .spawn()
            .expect("flock(1)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !lock_is_held(&path) {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let got = SessionLock::try_acquire(&path);
        let _ = child.kill();
        let _ = child.wait();
        assert!(got.unwrap().is_none());
        // flock(1)'s child may still hold the descriptor for a moment after its parent died
        // (between fork and its close-before-exec), so the lock is free soon, not at once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while SessionLock::try_acquire(&path).unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "lock never freed");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn replaced_file_is_not_unlinked_by_old_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.lock");
        let old = SessionLock::try_acquire(&path).unwrap().unwrap();
        // Someone unlinks the path; a new daemon creates and locks a fresh file.
        std::fs::remove_file(&path).unwrap();
        let new = SessionLock::try_acquire(&path)
            .unwrap()
            .expect("fresh inode is free");
        old.release_and_unlink();
        assert!(path.exists());
        assert!(lock_is_held(&path));
        drop(new);
    }

    #[test]
    fn same_file_check_detects_replacement() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.lock");
        let f = File::create(&path).unwrap();
        assert!(names_same_file(&path, &f));
        std::fs::remove_file(&path).unwrap();
        assert!(!names_same_file(&path, &f));
        File::create(&path).unwrap();
        assert!(!names_same_file(&path, &f));
    }

    #[test]
    fn missing_directory_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(SessionLock::try_acquire(&tmp.path().join("no/such/dir/s.lock")).is_err());
    }
}
