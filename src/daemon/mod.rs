//! The `run` lifecycle (sync-engine §1): the options, the outcome ([`Exit`]) and the handle that
//! stops a running daemon.
//!
//! Layout: this module is the [`Daemon`] and its public types; `launch` resolves the options
//! against the state file, takes the lock and writes the launch state, `run_loop` waits for the
//! transcript and runs the cycle loop with its timers (or the one cycle of `--once`), and
//! `shutdown` says why the daemon stops and runs the bounded final sync and clean-up. Each
//! submodule states its own invariants.
//!
//! Invariants:
//! - exit codes tell a service manager the truth: 0 for a clean end, 78 for invalid options (no
//!   restart), 1 for a failure worth a restart;
//! - every log line of a run carries the session id, and the backend session id once known.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Tuning;
use crate::engine::ReadCounters;
use crate::paths::Paths;

mod launch;
mod run_loop;
mod shutdown;

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
}
