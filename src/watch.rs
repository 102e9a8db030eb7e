//! File-change wake-ups (inotify on Linux, kqueue on macOS, through the `notify` crate), so a line
//! appended while the user works is uploaded within about a second instead of at the next 30 s
//! poll. The poll stays as the safety net: a lost or unsupported watch only costs latency.
//!
//! Invariants: watching never blocks or fails the daemon (any error just disables wake-ups); the
//! callback only sets a flag and pokes a `Notify`, so bursts of writes coalesce into one wake-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::Notify;

pub struct Watcher {
    inner: notify::RecommendedWatcher,
    wake: Arc<Notify>,
    watched: Vec<PathBuf>,
}

impl Watcher {
    /// Watches the transcript's directory entry and, once it exists, the subagents directory.
    pub fn new() -> Option<Watcher> {
        let wake = Arc::new(Notify::new());
        let w = wake.clone();
        let inner = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                if ev.kind.is_modify() || ev.kind.is_create() {
                    w.notify_one();
                }
            }
        })
        .map_err(|e| tracing::debug!("file watching unavailable: {e}"))
        .ok()?;
        Some(Watcher { inner, wake, watched: Vec::new() })
    }

    /// Adds a watch on `path` if it exists and is not watched yet (cheap to call every cycle).
    pub fn ensure(&mut self, path: &Path) {
        if self.watched.iter().any(|p| p == path) || !path.exists() {
            return;
        }
        match self.inner.watch(path, RecursiveMode::NonRecursive) {
            Ok(()) => self.watched.push(path.to_path_buf()),
            Err(e) => tracing::debug!("cannot watch {}: {e}", path.display()),
        }
    }

    /// Forgets watches, e.g. after the transcript was replaced (a new inode needs a new watch).
    pub fn reset(&mut self) {
        for p in self.watched.drain(..) {
            let _ = self.inner.unwatch(&p);
        }
    }

    /// Resolves at the next change (immediately if one happened since the last call).
    pub async fn changed(&self) {
        self.wake.notified().await
    }
}
