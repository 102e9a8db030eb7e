//! The running daemon: wait for the transcript, then cycles until a shutdown reason, with the
//! delays between them; and the single cycle of `--once`.
//!
//! Invariants:
//! - a transcript that never appears, or a shutdown before it does, is a clean end (H38);
//! - a shutdown reason during a cycle cancels its waits at once; the request in flight may
//!   finish within the shutdown budget, which starts at that moment (H11);
//! - a file change wakes the loop early, but never during a failure backoff, and at most once per
//!   `WAKE_MIN_GAP`, so a busy session cannot exceed the backend's rate limit;
//! - the watchdog is pinged during every wait.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::shutdown::Reason;
use super::{Daemon, Exit};
use crate::engine::Engine;
use crate::paths::Paths;
use crate::sdnotify;

/// After a file change, wait this long for the writer's burst to finish before syncing.
const WAKE_DEBOUNCE: Duration = Duration::from_millis(100);
/// At most one change-triggered cycle per this gap (about 3,600 requests per hour per busy session
/// at worst; idle sessions send nothing).
const WAKE_MIN_GAP: Duration = Duration::from_secs(1);

impl Daemon {
    pub(super) async fn run_loop(
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
}

pub(super) async fn run_once(mut engine: Engine) -> Exit {
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
