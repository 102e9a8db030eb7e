//! Start-up: the options completed from the state file and validated, the session lock, the
//! launch state written, the engine built; then `--once` or the run loop, and the lock released.
//!
//! Invariants:
//! - one daemon per session: the `flock` decides, never a file's existence (H9);
//! - invalid options end the run (exit 78) before the lock is taken;
//! - the launch state is ours (pid, parent) but keeps the cursors and the backend session of an
//!   earlier run; `--once` only updates a state that already exists (sync-engine §1.9);
//! - the lock is unlinked while still held, after everything else is done.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::run_loop::run_once;
use super::shutdown::{watch_parent, Reason};
use super::{Daemon, Exit};
use crate::engine::{Engine, Session};
use crate::lock::SessionLock;
use crate::paths::{self, Paths};
use crate::state::{self, State};
use crate::{liveness, sdnotify};

impl Daemon {
    pub(super) async fn run_inner(self, shutdown: impl Future<Output = ()>) -> Exit {
        let id = self.opts.session_id.clone();
        if let Err(e) = paths::validate_session_id(&id) {
            return Exit::Invalid(format!("invalid session id: {e}"));
        }
        let sync_dir = self.paths.sync_dir();
        if let Err(e) = state::ensure_sync_dir(&sync_dir) {
            return Exit::Failed(format!("cannot create {}: {e}", sync_dir.display()));
        }
        // A crash between write and rename leaves a tmp file; it is never used, only deleted.
        state::remove_stale_tmp(&sync_dir);
        let state_path = self.paths.state_file(&id);
        let existing = match state::load(&state_path) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("ignoring unreadable state file: {e}");
                None
            }
        };
        let session = match self.session(&id, existing.as_ref()) {
            Ok(s) => s,
            Err(exit) => return exit,
        };
        let transcript = session.transcript.clone();
        let parent_pid = self
            .opts
            .parent_pid
            .or_else(|| existing.as_ref().map(|s| s.parent_pid))
            .unwrap_or(0);

        let lock = match acquire_lock(&self.paths, &id).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                let pid = liveness::lock_holder_pid(&self.paths.lock_file(&id))
                    .or_else(|| existing.as_ref().map(|s| s.pid))
                    .unwrap_or(0);
                return Exit::AlreadyRunning(format!(
                    "confab-sync: session {id} is already being synced (pid {pid}); exiting"
                ));
            }
            Err(e) => return Exit::Failed(format!("cannot lock session {id}: {e}")),
        };

        let (state, persist) = self.initial_state(existing, &session, parent_pid);
        if persist {
            if let Err(e) = state::save(&state_path, &state) {
                tracing::warn!("cannot write the state file {}: {e}", state_path.display());
            }
        }
        let parent_token = state.confab_sync.parent_start.clone();
        let cancel = CancellationToken::new();
        let engine = Engine::new(
            session,
            self.paths.clone(),
            self.tuning.clone(),
            state,
            persist,
            cancel.clone(),
            self.counters.clone(),
        );
        if self.opts.once {
            let exit = if transcript.is_file() {
                run_once(engine).await
            } else {
                Exit::Failed(format!(
                    "transcript {} does not exist",
                    transcript.display()
                ))
            };
            lock.release_and_unlink();
            return exit;
        }
        sdnotify::ready("starting");
        let stop = self.stop.clone();
        let tuning = self.tuning.clone();
        let reasons = async move {
            tokio::select! {
                _ = shutdown => Reason::Signal,
                _ = stop.cancelled() => Reason::Stop,
                _ = watch_parent(parent_pid, parent_token, tuning.parent_check) => Reason::ParentExited,
            }
        };
        let exit = self.run_loop(engine, cancel, reasons, &transcript).await;
        lock.release_and_unlink();
        exit
    }

    /// The session to sync: each option the command line lacks comes from the earlier run's state;
    /// the transcript path must be valid, and the cwd falls back to the transcript's directory.
    fn session(&self, id: &str, existing: Option<&State>) -> Result<Session, Exit> {
        let transcript = self
            .opts
            .transcript
            .clone()
            .or_else(|| {
                existing
                    .filter(|s| !s.transcript_path.is_empty())
                    .map(|s| PathBuf::from(&s.transcript_path))
            })
            .ok_or_else(|| {
                Exit::Invalid(format!(
                    "no transcript path for session {id} (no --transcript, no state)"
                ))
            })?;
        let transcript = paths::validate_transcript_path(&transcript, &self.paths)
            .map_err(|e| Exit::Invalid(format!("invalid transcript path: {e}")))?;
        let cwd = self
            .opts
            .cwd
            .clone()
            .or_else(|| existing.map(|s| s.cwd.clone()))
            .filter(|c| !c.is_empty());
        let cwd = cwd.unwrap_or_else(|| {
            transcript
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        });
        Ok(Session {
            external_id: id.to_string(),
            transcript,
            cwd,
        })
    }

    /// The launch state: ours, keeping cursors and the backend session of an earlier run.
    fn initial_state(
        &self,
        existing: Option<State>,
        session: &Session,
        parent_pid: i64,
    ) -> (State, bool) {
        if self.opts.once {
            // `--once` only updates cursors in a state that already exists (sync-engine §1.9).
            return match existing {
                Some(s) => (s, true),
                None => (State::default(), false),
            };
        }
        let transcript = session.transcript.display().to_string();
        let mut fresh = State::new(
            &self.paths,
            &session.external_id,
            &transcript,
            &session.cwd,
            parent_pid,
        );
        if let Some(old) = existing {
            fresh.confab_session_id = old.confab_session_id;
            fresh.confab_sync.files = old.confab_sync.files;
            fresh.confab_sync.backend_url = old.confab_sync.backend_url;
            fresh.confab_sync.launch_env = old.confab_sync.launch_env;
            fresh.confab_sync.service_manager = old.confab_sync.service_manager;
            if old.parent_pid == parent_pid {
                fresh.confab_sync.parent_start = old.confab_sync.parent_start;
            }
        }
        if fresh.confab_sync.parent_start.is_none() && parent_pid > 0 {
            fresh.confab_sync.parent_start = liveness::start_token(parent_pid);
        }
        if let Some(m) = &self.opts.service_manager {
            fresh.confab_sync.service_manager = m.clone();
        }
        (fresh, true)
    }
}

/// Takes the session lock, retrying for 1 s so a restart racing its predecessor's exit wins.
async fn acquire_lock(paths: &Paths, id: &str) -> std::io::Result<Option<SessionLock>> {
    let path = paths.lock_file(id);
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        if let Some(l) = SessionLock::try_acquire(&path)? {
            return Ok(Some(l));
        }
        if Instant::now() >= until {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
