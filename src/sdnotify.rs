//! systemd notifications: readiness, status, watchdog pings and stopping (sync-engine §1.7–8).
//!
//! Everything here is a no-op when `NOTIFY_SOCKET` is unset, so the daemon behaves the same under
//! launchd, the detached fallback and tests. Watchdog pings come from the sync loop itself (between
//! chunks, inside waits, around requests), never from a separate timer task: a hung loop must stop
//! pinging so systemd restarts it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// The watchdog interval granted by systemd, if it is meant for us (`WATCHDOG_PID` unset or ours).
fn watchdog_interval() -> Option<Duration> {
    static WD: OnceLock<Option<Duration>> = OnceLock::new();
    *WD.get_or_init(|| {
        let mut usec = 0u64;
        sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
    })
}

fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(states: &[NotifyState<'_>]) {
    if enabled() {
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::debug!("sd_notify failed: {e}");
        }
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The `STATUS=` sent with `STOPPING=1`.
pub const STOPPING_STATUS: &str = "stopping: final sync";

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `STOPPING=1` plus time for the final sync (`EXTEND_TIMEOUT_USEC`), and a status saying so
/// (`systemctl status` during a slow final sync otherwise shows the last cycle's line).
pub fn stopping(extend: Duration) {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status(STOPPING_STATUS),
        NotifyState::ExtendTimeoutUsec(extend.as_micros().min(u32::MAX as u128) as u32),
    ]);
}

/// Sends `WATCHDOG=1` if a quarter of the interval passed since the last ping (cheap to call often).
pub fn watchdog_ping() {
    static START: OnceLock<Instant> = OnceLock::new();
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let Some(interval) = watchdog_interval() else {
        return;
    };
    let start = *START.get_or_init(Instant::now);
    let now_ms = start.elapsed().as_millis() as u64 + 1;
    let last = LAST_MS.load(Ordering::Relaxed);
    if last == 0 || now_ms.saturating_sub(last) >= (interval.as_millis() as u64 / 4).max(1) {
        LAST_MS.store(now_ms, Ordering::Relaxed);
        send(&[NotifyState::Watchdog]);
    }
}

/// How often a long wait must wake up to ping.
pub fn ping_every() -> Option<Duration> {
    watchdog_interval().map(|i| (i / 4).max(Duration::from_millis(10)))
}

/// Runs `fut` while pinging the watchdog, for requests and waits that may outlast the interval.
pub async fn keepalive<F: Future>(fut: F) -> F::Output {
    let Some(every) = ping_every() else {
        return fut.await;
    };
    tokio::pin!(fut);
    loop {
        watchdog_ping();
        tokio::select! {
            out = &mut fut => return out,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
