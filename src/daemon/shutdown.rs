//! Why the daemon stops ([`Reason`], the parent watch) and how: the bounded final sync, the
//! session_end event, and the removal of the session's files.
//!
//! Invariants:
//! - shutdown is a future: a signal, a stop request or the parent's exit cancels every wait at
//!   once, and the shutdown budget starts at that moment (H11);
//! - the final sync (also the one init attempt when none ever succeeded, H34) and the session_end
//!   event share that budget; what does not fit is abandoned, never waited for;
//! - a crash keeps the state file (H32); a clean end deletes the inbox, and the state only if it
//!   still names this process (H31).

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Daemon, Exit};
use crate::engine::Engine;
use crate::state::{self, State};
use crate::{inbox, liveness, sdnotify};

/// Why shutdown started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    Signal,
    Stop,
    ParentExited,
    SessionGone,
}

impl Reason {
    pub(super) fn describe(self) -> &'static str {
        match self {
            Reason::Signal => "shutdown requested by signal",
            Reason::Stop => "stop requested",
            Reason::ParentExited => "the Claude Code process exited",
            Reason::SessionGone => "the session was deleted on the backend",
        }
    }
}

impl Daemon {
    pub(super) async fn shutdown(
        &self,
        mut engine: Engine,
        cancel: CancellationToken,
        reason: Reason,
        deadline: Option<Instant>,
    ) -> Exit {
        let id = engine.session.external_id.clone();
        tracing::info!("{}; shutting down", reason.describe());
        cancel.cancel();
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.tuning.shutdown_budget);
        sdnotify::stopping(self.tuning.shutdown_budget + Duration::from_secs(5));
        let events = inbox::read_all(&self.paths.inbox_file(&id));
        let end_event = inbox::last_session_end(&events).cloned();
        if reason != Reason::SessionGone {
            let work = async {
                // Also the one init attempt when none ever succeeded (H34).
                let report = engine.cycle().await;
                engine.finish_cycle(&report);
                // A file resting after a timed-out chunk was skipped: if its rest ends within
                // the budget, wait for it and sync it too rather than leave its lines behind.
                let quiet = engine.quiet_until().map(Instant::from_std);
                if let Some(until) = quiet.filter(|t| *t < deadline) {
                    tracing::info!(
                        "waiting for a timed-out file's quiet period before its final sync"
                    );
                    sdnotify::keepalive(tokio::time::sleep_until(until)).await;
                    let report = engine.cycle().await;
                    engine.finish_cycle(&report);
                }
                if let Some(ev) = &end_event {
                    if engine.has_session() {
                        match engine.send_session_end(ev).await {
                            Ok(()) => tracing::info!("session_end event sent"),
                            Err(e) => tracing::warn!("session_end event not sent: {e}"),
                        }
                    }
                }
            };
            if tokio::time::timeout_at(deadline, work).await.is_err() {
                tracing::warn!(
                    "final sync did not finish within {:?}; abandoning the rest",
                    self.tuning.shutdown_budget
                );
            }
        }
        engine.log_pending();
        engine.flush_checkpoints();
        self.remove_session_files(&id, &engine.state);
        Exit::Clean(reason.describe().into())
    }

    /// Deletes the inbox, then the state only if it still names this process (H31).
    pub(super) fn remove_session_files(&self, id: &str, ours: &State) {
        let _ = std::fs::remove_file(self.paths.inbox_file(id));
        let path = self.paths.state_file(id);
        match state::load(&path) {
            Ok(Some(s))
                if s.pid == ours.pid && s.confab_sync.pid_start == ours.confab_sync.pid_start =>
            {
                let _ = state::delete(&path);
            }
            Ok(Some(s)) => tracing::info!("state file now belongs to pid {}; leaving it", s.pid),
            _ => {}
        }
    }
}

/// Resolves when the parent process is gone (H12). Never resolves without a parent.
pub(super) async fn watch_parent(pid: i64, token: Option<String>, every: Duration) {
    if pid <= 0 {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(every).await;
        if !liveness::alive(pid, token.as_deref()) {
            return;
        }
    }
}
