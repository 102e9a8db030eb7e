//! The `run` lifecycle (sync-engine §1): options, lock, state, transcript wait, the cycle loop with
//! its timers, and shutdown with a bounded final sync.
//!
//! Invariants:
//! - one daemon per session: the `flock` decides, never a file's existence (H9);
//! - shutdown is a future: a signal, a stop request or the parent's exit cancels every wait at
//!   once, and the 30 s budget starts at that moment; a request in flight may finish inside it (H11);
//! - a crash keeps the state file (H32); a clean end deletes inbox and state only if the state
//!   still names us (H31), then unlinks the lock while holding it;
//! - exit codes tell a service manager the truth: 0 for a clean end, 78 for invalid options (no
//!   restart), 1 for a failure worth a restart.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Tuning;
use crate::engine::{Engine, ReadCounters, Session};
use crate::lock::SessionLock;
use crate::paths::{self, Paths};
use crate::state::{self, State};
use crate::{inbox, liveness, sdnotify};

/// Options of `confab-sync run`; what is missing comes from the state file.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub session_id: String,
    pub transcript: Option<PathBuf>,
    pub cwd: Option<String>,
    pub parent_pid: Option<i64>,
    pub once: bool,
    pub service_manager: Option<String>,
}

/// How `run` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// A clean end; the string says why.
    Clean(String),
    /// Another daemon holds the lock.
    AlreadyRunning(String),
    /// Invalid options (exit 78, no restart).
    Invalid(String),
    /// A failure worth a restart (exit 1).
    Failed(String),
}

impl Exit {
    pub fn code(&self) -> i32 {
        match self {
            Exit::Clean(_) | Exit::AlreadyRunning(_) => 0,
            Exit::Invalid(_) => 78,
            Exit::Failed(_) => 1,
        }
    }
}

/// After a file change, wait this long for the writer's burst to finish before syncing.
const WAKE_DEBOUNCE: Duration = Duration::from_millis(100);
/// At most one change-triggered cycle per this gap (about 3,600 requests per hour per busy session
/// at worst; idle sessions send nothing).
const WAKE_MIN_GAP: Duration = Duration::from_secs(1);

/// Why shutdown started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Signal,
    Stop,
    ParentExited,
    SessionGone,
}

impl Reason {
    fn describe(self) -> &'static str {
        match self {
            Reason::Signal => "shutdown requested by signal",
            Reason::Stop => "stop requested",
            Reason::ParentExited => "the Claude Code process exited",
            Reason::SessionGone => "the session was deleted on the backend",
        }
    }
}

/// Stops a running daemon (idempotent).
#[derive(Clone, Debug)]
pub struct StopHandle(CancellationToken);

impl StopHandle {
    pub fn stop(&self) {
        self.0.cancel();
    }
}

pub struct Daemon {
    opts: RunOptions,
    paths: Paths,
    tuning: Tuning,
    stop: CancellationToken,
    counters: Arc<ReadCounters>,
}

impl Daemon {
    pub fn new(opts: RunOptions, paths: Paths, tuning: Tuning) -> Daemon {
        Daemon {
            opts,
            paths,
            tuning,
            stop: CancellationToken::new(),
            counters: Arc::default(),
        }
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.stop.clone())
    }

    /// Bytes read per file, shared with the running engine.
    pub fn read_counters(&self) -> Arc<ReadCounters> {
        self.counters.clone()
    }

    /// Runs until shutdown. `shutdown` resolving is a signal (SIGTERM/SIGINT in the binary).
    /// Every log line inside carries the session id, and the backend session id once known.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Exit {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "session",
            id = %self.opts.session_id,
            backend_session = tracing::field::Empty
        );
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(self, shutdown: impl Future<Output = ()>) -> Exit {
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
        let transcript = match self.opts.transcript.clone().or_else(|| {
            existing
                .as_ref()
                .filter(|s| !s.transcript_path.is_empty())
                .map(|s| PathBuf::from(&s.transcript_path))
        }) {
            Some(t) => t,
            None => {
                return Exit::Invalid(format!(
                    "no transcript path for session {id} (no --transcript, no state)"
                ))
            }
        };
        let transcript = match paths::validate_transcript_path(&transcript, &self.paths) {
            Ok(t) => t,
            Err(e) => return Exit::Invalid(format!("invalid transcript path: {e}")),
        };
        let cwd = self
            .opts
            .cwd
            .clone()
            .or_else(|| existing.as_ref().map(|s| s.cwd.clone()))
            .filter(|c| !c.is_empty());
        let cwd = cwd.unwrap_or_else(|| {
            transcript
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        });
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

        let session = Session {
            external_id: id.clone(),
            transcript: transcript.clone(),
            cwd: cwd.clone(),
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

    async fn run_loop(
        &self,
        mut engine: Engine,
        cancel: CancellationToken,
        reasons: impl Future<Output = Reason>,
        transcript: &std::path::Path,
    ) -> Exit {
        tokio::pin!(reasons);
        let id = engine.session.external_id.clone();
        // Wait for the transcript (H38): a shutdown or a timeout here is a clean end.
        let wait_end = Instant::now() + self.tuning.transcript_wait;
        while !transcript.is_file() {
            if Instant::now() >= wait_end {
                tracing::info!(
                    "the transcript did not appear within {:?}; exiting",
                    self.tuning.transcript_wait
                );
                self.remove_session_files(&id, &engine.state);
                return Exit::Clean("transcript never appeared".into());
            }
            tokio::select! {
                r = &mut reasons => {
                    tracing::info!("{}: ended before the transcript appeared", r.describe());
                    self.remove_session_files(&id, &engine.state);
                    return Exit::Clean("ended before the transcript appeared".into());
                }
                _ = sleep_with_watchdog(self.tuning.transcript_poll.min(wait_end - Instant::now())) => {}
            }
        }
        sdnotify::status("syncing");
        let subagents = crate::discovery::subagents_dir(transcript);
        let mut watcher = crate::watch::Watcher::new(transcript);
        if let Some(w) = watcher.as_mut() {
            w.ensure(&subagents);
        }
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
        let mut failures = 0u32;
        let mut gone = 0u32;
        let mut deadline = None;
        let reason = 'run: loop {
            let cycle_start = Instant::now();
            let report = {
                let cycle = engine.cycle();
                tokio::pin!(cycle);
                tokio::select! {
                    report = &mut cycle => report,
                    r = &mut reasons => {
                        // Cancel waits now; the request in flight may finish within the budget.
                        cancel.cancel();
                        let d = Instant::now() + self.tuning.shutdown_budget;
                        deadline = Some(d);
                        let _ = tokio::time::timeout_at(d, cycle).await;
                        break 'run r;
                    }
                }
            };
            engine.finish_cycle(&report);
            sdnotify::status(&engine.status_line(Some(&report)));
            if report.acked_chunks > 0 {
                gone = 0;
            }
            if report.session_gone {
                gone += 1;
                tracing::warn!(
                    "session not found on the backend ({gone}/{})",
                    self.tuning.session_gone_cycles
                );
                if gone >= self.tuning.session_gone_cycles {
                    break Reason::SessionGone;
                }
            }
            let delay = if report.failed && !report.auth_failed {
                failures += 1;
                self.tuning.failure_backoff(failures)
            } else {
                failures = 0;
                self.tuning.cycle_delay(&mut rng)
            };
            fault_hang(&self.paths, &id);
            if let Some(w) = watcher.as_mut() {
                w.ensure(&subagents);
            }
            // A file change wakes the loop early, but never during a failure backoff, and at most
            // once per WAKE_MIN_GAP, so a busy session cannot exceed the backend's rate limit.
            let woken = async {
                match (&watcher, failures) {
                    (Some(w), 0) => {
                        w.changed().await;
                        tokio::time::sleep(WAKE_DEBOUNCE).await;
                        tokio::time::sleep_until(cycle_start + WAKE_MIN_GAP).await;
                    }
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep_with_watchdog(delay) => {}
                _ = woken => {}
                r = &mut reasons => break r,
            }
        };
        self.shutdown(engine, cancel, reason, deadline).await
    }

    async fn shutdown(
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
        self.remove_session_files(&id, &engine.state);
        Exit::Clean(reason.describe().into())
    }

    /// Deletes the inbox, then the state only if it still names this process (H31).
    fn remove_session_files(&self, id: &str, ours: &State) {
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

async fn run_once(mut engine: Engine) -> Exit {
    let progress = crate::progress::wanted().then(|| {
        crate::progress::Progress::start(engine.counters(), engine.session.transcript.clone())
    });
    let report = engine.cycle().await;
    if let Some(p) = progress {
        p.finish().await;
    }
    engine.finish_cycle(&report);
    engine.log_pending();
    match report.error {
        Some(e) if report.failed => Exit::Failed(e),
        _ => Exit::Clean(engine.status_line(None)),
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

/// Resolves when the parent process is gone (H12). Never resolves without a parent.
async fn watch_parent(pid: i64, token: Option<String>, every: Duration) {
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

/// Sleeps, waking to ping the watchdog when systemd asked for one.
async fn sleep_with_watchdog(d: Duration) {
    sdnotify::keepalive(tokio::time::sleep(d)).await
}

/// Test-only fault: a `<ID>.fault` file saying `hang` blocks the loop (the watchdog must fire).
fn fault_hang(paths: &Paths, id: &str) {
    #[cfg(feature = "test-faults")]
    {
        let f = paths.sync_dir().join(format!("{id}.fault"));
        if std::fs::read_to_string(&f).is_ok_and(|s| s.trim() == "hang") {
            let _ = std::fs::remove_file(&f);
            tracing::warn!("injected fault: hanging the sync loop");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
    let _ = (paths, id);
}
