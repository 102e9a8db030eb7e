//! What a cycle did, and where that goes: the [`CycleReport`], the cycle's end recorded in the
//! state file (sync-engine §1.6e), the one-line `STATUS=` text and the shutdown note about
//! unterminated lines.
//!
//! Invariants:
//! - `last_success_at` only moves on a cycle that did not fail; `last_error` is the last cycle's;
//! - idle memory is given back only after a cycle that initialised or sent something, so idle
//!   cycles stay cheap;
//! - the bytes after a file's last complete line are only reported here: they are never sent (H2).

use super::Engine;
use crate::filesync::Status;
use crate::sink::SinkError;

/// What one cycle did.
#[derive(Debug, Default, Clone)]
pub struct CycleReport {
    pub acked_chunks: usize,
    pub failed: bool,
    pub auth_failed: bool,
    pub session_gone: bool,
    pub error: Option<String>,
}

impl CycleReport {
    pub(super) fn fail(&mut self, e: &SinkError) {
        self.failed = true;
        self.auth_failed |= e.is_auth();
        self.session_gone |= *e == SinkError::SessionGone;
        self.error = Some(e.to_string());
    }
}

impl Engine {
    /// Records the cycle's outcome in the state file (sync-engine §1.6e).
    pub fn finish_cycle(&mut self, report: &CycleReport) {
        let now = chrono::Local::now().to_rfc3339();
        self.state.confab_sync.last_loop_at = Some(now.clone());
        if !report.failed {
            self.state.confab_sync.last_success_at = Some(now);
        }
        self.state.confab_sync.last_error = report.error.clone();
        self.save_state();
        if std::mem::take(&mut self.release_pending) || report.acked_chunks > 0 {
            crate::memory::release_idle_memory();
        }
    }

    /// Logs the bytes left after the last complete line of each file (H2: never sent).
    pub fn log_pending(&self) {
        for t in self.files.values().filter(|t| t.pending_bytes > 0) {
            tracing::info!(file = %t.name, "{} bytes after the last complete line were not sent (unterminated line)", t.pending_bytes);
        }
    }

    /// One line for `STATUS=`.
    pub fn status_line(&self, report: Option<&CycleReport>) -> String {
        let lines: u64 = self.files.values().map(|t| t.acked).sum();
        let waiting = self
            .files
            .values()
            .filter(|t| t.status != Status::Ok)
            .count();
        let mut s = format!("{} files, {} lines synced", self.files.len(), lines);
        if waiting > 0 {
            s.push_str(&format!(", {waiting} not ok"));
        }
        if let Some(e) = report.and_then(|r| r.error.as_ref()) {
            s.push_str(&format!("; last error: {e}"));
        }
        s
    }
}
