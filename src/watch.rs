//! File-change wake-ups (inotify on Linux, kqueue on macOS, through the `notify` crate), so a line
//! appended while the user works is uploaded within about a second instead of at the next 30 s
//! poll. The poll stays as the safety net: a lost or unsupported watch only costs latency.
//!
//! What is watched: the transcript's directory (it sees appends to the transcript, its replacement
//! by rename, and the creation of the session's `<uuid>/` directory) and, once it exists, the
//! subagents directory. Events for other files in those directories (other sessions of the same
//! project) are filtered out.
//!
//! Invariants: watching never blocks or fails the daemon (any error just disables wake-ups); the
//! callback only pokes a `Notify`, so bursts of writes coalesce into one wake-up.

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
    /// Starts watching for changes that concern `transcript` and its sub-agent files.
    pub fn new(transcript: &Path) -> Option<Watcher> {
        let wake = Arc::new(Notify::new());
        let w = wake.clone();
        let file = transcript.to_path_buf();
        let session_dir = transcript.with_extension("");
        let inner = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            if !(ev.kind.is_modify() || ev.kind.is_create()) {
                return;
            }
            if ev
                .paths
                .iter()
                .any(|p| *p == file || p.starts_with(&session_dir))
            {
                w.notify_one();
            }
        })
        .map_err(|e| tracing::debug!("file watching unavailable: {e}"))
        .ok()?;
        let mut me = Watcher {
            inner,
            wake,
            watched: Vec::new(),
        };
        if let Some(dir) = transcript.parent() {
            me.ensure(dir);
        }
        Some(me)
    }

    /// Adds a watch on the directory `path` if it exists and is not watched yet (cheap to call
    /// every cycle).
    pub fn ensure(&mut self, path: &Path) {
        if self.watched.iter().any(|p| p == path) || !path.is_dir() {
            return;
        }
        match self.inner.watch(path, RecursiveMode::NonRecursive) {
            Ok(()) => self.watched.push(path.to_path_buf()),
            Err(e) => tracing::debug!("cannot watch {}: {e}", path.display()),
        }
    }

    /// Resolves at the next change (immediately if one happened since the last call).
    pub async fn changed(&self) {
        self.wake.notified().await
    }
}
