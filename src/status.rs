//! Session status and control: whether a session's daemon is live, the `status` rows (table and
//! `--json`, cli.md), and asking a daemon to stop (`stop ID`, `hook session-end`).
//!
//! Invariants:
//! - Nothing here ever takes `<ID>.lock`, not even to test it (sync-engine §10 "Is the daemon
//!   live?"): a daemon is live when some process holds that lock (read from /proc/locks), or when
//!   the state records a pid whose start token still matches (macOS, or no /proc/locks).
//! - A signal goes only to a pid whose recorded start token matches the running process (H8);
//!   a state without a token (the existing client's) is never signalled.
//! - Status reads no credentials; every text it prints from a state file goes through [`scrub`],
//!   so a key, a bearer token or URL userinfo that found its way into an error is not shown (H16).

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::{json, Map, Value};

use crate::liveness;
use crate::paths::Paths;
use crate::service::{self, ManagerKind, ServiceContext};
use crate::state::{self, State};

/// How long to wait for a daemon that holds its lock to record its pid before giving up on
/// signalling it (it records the pid right after taking the lock).
pub const PID_RECORD_WAIT: Duration = Duration::from_secs(2);

/// Whether `id`'s daemon is running: its lock is held, or the state's pid and start token name a
/// running process. Never takes the lock.
pub fn daemon_is_live(paths: &Paths, id: &str, state: Option<&State>) -> bool {
    liveness::lock_is_held(&paths.lock_file(id)) || state.is_some_and(recorded_daemon_alive)
}

/// The state's daemon pid runs and its start token matches. A state without a token never
/// counts: the pid may have been reused (H8).
pub fn recorded_daemon_alive(state: &State) -> bool {
    match state.confab_sync.pid_start.as_deref() {
        Some(token) => state.pid > 0 && liveness::alive(state.pid, Some(token)),
        None => false,
    }
}

/// A session's condition as `status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// The daemon is live.
    Running,
    /// Not live, but the recorded pid still runs (starting or stopping).
    Stopped,
    /// Not live and the recorded pid is dead: leftover files (`status --prune` removes them).
    Stale,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Stopped => "stopped",
            RunState::Stale => "stale",
        }
    }
}

/// One file's progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRow {
    pub name: String,
    pub lines_synced: u64,
    pub status: String,
}

/// One `status` row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    pub session_id: String,
    pub state: RunState,
    pub pid: Option<i64>,
    pub service_manager: Option<String>,
    pub uptime_s: Option<u64>,
    pub backend: Option<String>,
    pub files: Vec<FileRow>,
    pub last_sync_at: Option<String>,
    pub last_error: Option<String>,
}

/// One row per state file in the sync directory, sorted by session id.
pub fn collect(paths: &Paths) -> Vec<SessionRow> {
    state::list(&paths.sync_dir())
        .into_iter()
        .map(|(id, path)| {
            let loaded = state::load(&path);
            let live = daemon_is_live(paths, &id, loaded.as_ref().ok().and_then(Option::as_ref));
            row(&id, loaded, live, chrono::Utc::now())
        })
        .collect()
}

/// The row for session `id`, given its loaded state and liveness, at time `now`.
pub fn row(
    id: &str,
    loaded: Result<Option<State>, String>,
    live: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> SessionRow {
    let s = match loaded {
        Ok(Some(s)) => s,
        Ok(None) => State::default(),
        Err(e) => {
            return SessionRow {
                session_id: id.to_string(),
                state: if live {
                    RunState::Running
                } else {
                    RunState::Stale
                },
                pid: None,
                service_manager: None,
                uptime_s: None,
                backend: None,
                files: Vec::new(),
                last_sync_at: None,
                last_error: Some(scrub(&e)),
            }
        }
    };
    let pid_alive = s.pid > 0 && liveness::alive(s.pid, s.confab_sync.pid_start.as_deref());
    let state = match (live, pid_alive) {
        (true, _) => RunState::Running,
        (false, true) => RunState::Stopped,
        (false, false) => RunState::Stale,
    };
    let uptime_s = (state == RunState::Running)
        .then(|| chrono::DateTime::parse_from_rfc3339(&s.started_at).ok())
        .flatten()
        .map(|t| (now - t.with_timezone(&chrono::Utc)).num_seconds().max(0) as u64);
    let files = s
        .confab_sync
        .files
        .iter()
        .map(|(name, f)| FileRow {
            name: name.clone(),
            lines_synced: f.acked_line,
            status: if f.status.is_empty() {
                "ok".to_string()
            } else {
                f.status.clone()
            },
        })
        .collect();
    let last_error = s
        .confab_sync
        .last_error
        .clone()
        .or_else(|| file_errors(&s))
        .map(|e| scrub(&e));
    SessionRow {
        session_id: id.to_string(),
        state,
        pid: (s.pid > 0).then_some(s.pid),
        service_manager: Some(s.confab_sync.service_manager.clone()).filter(|m| !m.is_empty()),
        uptime_s,
        backend: s.confab_sync.backend_url.as_deref().map(scrub),
        files,
        last_sync_at: s.confab_sync.last_success_at.clone(),
        last_error,
    }
}

/// A file's own error (parked, diverged, …) when the session has none.
fn file_errors(s: &State) -> Option<String> {
    s.confab_sync
        .files
        .iter()
        .find_map(|(name, f)| f.last_error.as_ref().map(|e| format!("{name}: {e}")))
}

/// `{"sessions":[…]}` exactly as cli.md names the keys; unknown values are `null`.
pub fn to_json(rows: &[SessionRow]) -> Value {
    let sessions: Vec<Value> = rows
        .iter()
        .map(|r| {
            let files: Map<String, Value> = r
                .files
                .iter()
                .map(|f| {
                    (
                        f.name.clone(),
                        json!({"lines_synced": f.lines_synced, "status": f.status}),
                    )
                })
                .collect();
            json!({
                "session_id": r.session_id,
                "state": r.state.as_str(),
                "pid": r.pid,
                "service_manager": r.service_manager,
                "uptime_s": r.uptime_s,
                "backend": r.backend,
                "files": files,
                "last_sync_at": r.last_sync_at,
                "last_error": r.last_error,
            })
        })
        .collect();
    json!({ "sessions": sessions })
}

/// The human table: one line per session, then one indented line per file.
pub fn render_table(rows: &[SessionRow]) -> String {
    if rows.is_empty() {
        return "no sessions\n".to_string();
    }
    let id_w = rows
        .iter()
        .map(|r| r.session_id.len())
        .max()
        .unwrap_or(0)
        .max("SESSION".len());
    let mut out = format!(
        "{:<id_w$}  {:<8}  {:>8}  {:<8}  {:>8}  {:<19}  LAST ERROR\n",
        "SESSION", "STATE", "PID", "MANAGER", "UPTIME", "LAST SYNC"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<id_w$}  {:<8}  {:>8}  {:<8}  {:>8}  {:<19}  {}\n",
            r.session_id,
            r.state.as_str(),
            r.pid.map_or("-".to_string(), |p| p.to_string()),
            r.service_manager.as_deref().unwrap_or("-"),
            r.uptime_s.map_or("-".to_string(), format_uptime),
            r.last_sync_at
                .as_deref()
                .map_or("-".to_string(), local_time),
            r.last_error.as_deref().map_or("-".to_string(), one_line),
        ));
        for f in &r.files {
            out.push_str(&format!(
                "  {}: {} lines synced ({})\n",
                f.name, f.lines_synced, f.status
            ));
        }
    }
    out
}

/// An RFC 3339 time as local `YYYY-MM-DD HH:MM:SS` for the table (as given if it does not parse).
pub fn local_time(t: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(t).map_or_else(
        |_| t.to_string(),
        |d| {
            d.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        },
    )
}

/// `3d04h`, `2h05m`, `4m07s`, `9s`.
pub fn format_uptime(s: u64) -> String {
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m{sec:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

static SECRETS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    let re = |p: &str| Regex::new(p).expect("valid regex");
    vec![
        // `Authorization: Bearer <token>` in any spelling: the word goes too.
        (re(r"(?i)bearer\s+\S+"), "[REDACTED]"),
        (re(r"cfb_[A-Za-z0-9_\-]+"), "[REDACTED]"),
        (
            re(r#"(?i)("?api_key"?\s*[:=]\s*)"?[^"\s,}]*"?"#),
            "${1}[REDACTED]",
        ),
        // https://user:token@host → https://[REDACTED]@host
        (
            re(r"(?i)([a-z][a-z0-9+.\-]*://)[^/@\s]+@"),
            "${1}[REDACTED]@",
        ),
    ]
});

/// Removes anything that looks like a credential from a text shown to the user.
pub fn scrub(text: &str) -> String {
    SECRETS.iter().fold(text.to_string(), |t, (re, with)| {
        re.replace_all(&t, *with).into_owned()
    })
}

/// The manager that owns `id`'s daemon: the state's, else `fallback`.
pub fn owning_manager(state: Option<&State>, fallback: ManagerKind) -> ManagerKind {
    state
        .and_then(|s| s.confab_sync.service_manager.parse().ok())
        .unwrap_or(fallback)
}

/// Asks `id`'s live daemon to stop without waiting for it: `systemctl --user stop --no-block`,
/// launchd's bootout, or (no manager) SIGTERM to the recorded pid when its start token matches.
/// Returns a one-line description of what was done.
pub fn request_stop(paths: &Paths, id: &str, kind: ManagerKind) -> Result<String, String> {
    match kind {
        ManagerKind::Systemd | ManagerKind::Launchd => {
            let ctx = ServiceContext::new(paths.clone())
                .map_err(|e| format!("cannot locate the confab-sync binary: {e}"))?;
            service::for_kind(kind, &ctx).stop(id, false)?;
            Ok(format!("asked {kind} to stop session {id}"))
        }
        ManagerKind::None => {
            signal_recorded_daemon(paths, id, PID_RECORD_WAIT).map(|pid| match pid {
                Some(pid) => format!("sent SIGTERM to session {id}'s daemon (pid {pid})"),
                None => format!("session {id}'s daemon has already exited"),
            })
        }
    }
}

/// SIGTERM to the pid the state records, only while its start token matches. A daemon that holds
/// the lock but has not yet recorded its pid is given `wait` to do so. `Ok(None)` when the daemon
/// is gone.
pub fn signal_recorded_daemon(
    paths: &Paths,
    id: &str,
    wait: Duration,
) -> Result<Option<i64>, String> {
    let deadline = Instant::now() + wait;
    loop {
        let st = state::load(&paths.state_file(id)).ok().flatten();
        if let Some(s) = st.as_ref().filter(|s| recorded_daemon_alive(s)) {
            let target = nix::unistd::Pid::from_raw(s.pid as i32);
            return match nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM) {
                Ok(()) => Ok(Some(s.pid)),
                Err(nix::errno::Errno::ESRCH) => Ok(None),
                Err(e) => Err(format!("cannot signal pid {}: {e}", s.pid)),
            };
        }
        if !liveness::lock_is_held(&paths.lock_file(id)) {
            return Ok(None);
        }
        if Instant::now() >= deadline {
            return signal_lock_holder(paths, id);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Last resort when the state names no daemon (deleted, or from another writer): the process that
/// holds `<ID>.lock` right now, if its command line is this session's `run`. A pid cannot be
/// reused while its process holds a lock, so this is as safe as a token check.
fn signal_lock_holder(paths: &Paths, id: &str) -> Result<Option<i64>, String> {
    let refuse = || {
        format!("session {id}'s daemon holds its lock but recorded no pid with a start token; not signalling it")
    };
    let pid = liveness::lock_holder_pid(&paths.lock_file(id)).ok_or_else(refuse)?;
    let ours = liveness::cmdline(pid).is_some_and(|c| {
        c.split(' ').any(|a| a == "run") && c.split(' ').any(|a| a == service::session_id_arg(id))
    });
    if !ours {
        return Err(refuse());
    }
    let target = nix::unistd::Pid::from_raw(pid as i32);
    match nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM) {
        Ok(()) => Ok(Some(pid)),
        Err(nix::errno::Errno::ESRCH) => Ok(None),
        Err(e) => Err(format!("cannot signal pid {pid}: {e}")),
    }
}

/// `journalctl _SYSTEMD_USER_UNIT=confab-sync@ID.service + CONFAB_SESSION=ID [-f]`: the unit's
/// own records or any record the daemon tagged with its session. A field match (not `--user`)
/// works for root, for the user and with a volatile journal (cli.md).
pub fn journal_argv(id: &str, follow: bool) -> Vec<String> {
    let mut argv = vec![
        "journalctl".to_string(),
        format!("_SYSTEMD_USER_UNIT={}", service::systemd::unit_name(id)),
        "+".to_string(),
        format!("CONFAB_SESSION={id}"),
    ];
    if follow {
        argv.push("-f".to_string());
    }
    argv
}

/// Waits (polling, at most `within`) until `id`'s daemon is no longer live.
pub fn wait_until_stopped(paths: &Paths, id: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let st = state::load(&paths.state_file(id)).ok().flatten();
        if !daemon_is_live(paths, id, st.as_ref()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::FileEntry;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2025-01-01T00:10:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    fn sample() -> State {
        let mut s = State {
            external_id: "abc".into(),
            pid: 0,
            started_at: "2025-01-01T00:00:00Z".into(),
            ..State::default()
        };
        s.confab_sync.service_manager = "none".into();
        s.confab_sync.backend_url = Some("https://user:cfb_secret123@example.com/".into());
        s.confab_sync.last_success_at = Some("2025-01-01T00:09:00Z".into());
        s.confab_sync.last_error =
            Some("401 Unauthorized: Authorization: Bearer cfb_abcdef".into());
        s.confab_sync.files.insert(
            "transcript.jsonl".into(),
            FileEntry {
                acked_line: 12,
                status: "ok".into(),
                ..FileEntry::default()
            },
        );
        s.confab_sync.files.insert(
            "agent-a1.jsonl".into(),
            FileEntry {
                acked_line: 3,
                status: "diverged".into(),
                ..FileEntry::default()
            },
        );
        s
    }

    #[test]
    fn running_row_has_uptime_and_files_in_json_shape() {
        let r = row("abc", Ok(Some(sample())), true, now());
        assert_eq!(r.state, RunState::Running);
        assert_eq!(r.uptime_s, Some(600));
        assert_eq!(r.pid, None);
        let v = to_json(&[r]);
        let s = &v["sessions"][0];
        let keys: Vec<&String> = s.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "session_id",
                "state",
                "pid",
                "service_manager",
                "uptime_s",
                "backend",
                "files",
                "last_sync_at",
                "last_error"
            ]
        );
        assert_eq!(s["session_id"], "abc");
        assert_eq!(s["state"], "running");
        assert!(s["pid"].is_null());
        assert_eq!(s["service_manager"], "none");
        assert_eq!(
            s["files"]["transcript.jsonl"],
            json!({"lines_synced": 12, "status": "ok"})
        );
        assert_eq!(s["files"]["agent-a1.jsonl"]["status"], "diverged");
        assert_eq!(s["last_sync_at"], "2025-01-01T00:09:00Z");
    }

    #[test]
    fn dead_pid_is_stale_without_uptime() {
        let mut s = sample();
        s.pid = 999_999_999;
        let r = row("abc", Ok(Some(s)), false, now());
        assert_eq!(r.state, RunState::Stale);
        assert_eq!(r.uptime_s, None);
        assert_eq!(r.pid, Some(999_999_999));
    }

    #[test]
    fn own_live_pid_not_holding_the_lock_is_stopped() {
        let mut s = sample();
        s.pid = i64::from(std::process::id());
        s.confab_sync.pid_start = liveness::start_token(s.pid);
        let r = row("abc", Ok(Some(s)), false, now());
        assert_eq!(r.state, RunState::Stopped);
    }

    #[test]
    fn unreadable_state_is_a_row_with_its_error() {
        let r = row(
            "x",
            Err("invalid state /p: expected value".into()),
            false,
            now(),
        );
        assert_eq!(r.state, RunState::Stale);
        assert!(r.last_error.unwrap().contains("invalid state"));
    }

    #[test]
    fn secrets_never_reach_the_output() {
        let r = row("abc", Ok(Some(sample())), true, now());
        let out = format!(
            "{}{}",
            render_table(std::slice::from_ref(&r)),
            to_json(&[r])
        );
        assert!(!out.contains("cfb_"), "{out}");
        assert!(!out.contains("Bearer "), "{out}");
        assert!(!out.contains("user:"), "{out}");
        assert!(out.contains("example.com"));
        assert_eq!(scrub(r#"{"api_key":"k-123"}"#), r#"{"api_key":[REDACTED]}"#);
        assert_eq!(scrub("api_key=abc def"), "api_key=[REDACTED] def");
        assert_eq!(scrub("plain error 503"), "plain error 503");
    }

    #[test]
    fn short_ids_render() {
        // H39: ids shorter than 8 characters.
        let rows = vec![
            row("a", Ok(Some(sample())), false, now()),
            row("abc", Ok(None), false, now()),
        ];
        let t = render_table(&rows);
        assert!(t.lines().nth(1).unwrap().starts_with("a "));
        assert!(t.contains("transcript.jsonl: 12 lines synced (ok)"));
        assert_eq!(render_table(&[]), "no sessions\n");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn lock_holder_is_signalled_only_when_it_is_this_sessions_daemon() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::for_home(tmp.path());
        state::ensure_sync_dir(&paths.sync_dir()).unwrap();
        assert_eq!(
            signal_recorded_daemon(&paths, "s", Duration::ZERO),
            Ok(None)
        );
        // We hold the lock, but we are not `run --session-id=s`: never signalled.
        let _held = crate::lock::SessionLock::try_acquire(&paths.lock_file("s"))
            .unwrap()
            .unwrap();
        let t0 = Instant::now();
        let err = signal_recorded_daemon(&paths, "s", Duration::from_millis(100)).unwrap_err();
        assert!(t0.elapsed() >= Duration::from_millis(100));
        assert!(err.contains("not signalling"), "{err}");
    }

    #[test]
    fn journal_match() {
        assert_eq!(
            journal_argv("-s1", false),
            [
                "journalctl",
                "_SYSTEMD_USER_UNIT=confab-sync@-s1.service",
                "+",
                "CONFAB_SESSION=-s1"
            ]
        );
        assert_eq!(journal_argv("s", true).last().unwrap(), "-f");
    }

    #[test]
    fn table_times_are_local_seconds() {
        let t = local_time("2025-01-01T00:09:00.123456Z");
        assert_eq!(t.len(), 19, "{t}");
        assert!(t.ends_with(":09:00"), "{t}");
        assert_eq!(local_time("garbage"), "garbage");
    }

    #[test]
    fn uptime_format() {
        assert_eq!(format_uptime(9), "9s");
        assert_eq!(format_uptime(247), "4m07s");
        assert_eq!(format_uptime(7500), "2h05m");
        assert_eq!(format_uptime(3 * 86_400 + 4 * 3600), "3d04h");
    }

    #[test]
    fn token_less_state_is_never_live() {
        let s = State {
            pid: i64::from(std::process::id()),
            ..State::default()
        };
        assert!(!recorded_daemon_alive(&s));
        let mut t = s.clone();
        t.confab_sync.pid_start = Some("linux:wrong:1".into());
        assert!(!recorded_daemon_alive(&t));
        let mut u = s;
        u.confab_sync.pid_start = liveness::start_token(u.pid);
        assert_eq!(recorded_daemon_alive(&u), u.confab_sync.pid_start.is_some());
    }

    #[test]
    fn owning_manager_prefers_the_state() {
        let mut s = State::default();
        assert_eq!(
            owning_manager(Some(&s), ManagerKind::None),
            ManagerKind::None
        );
        s.confab_sync.service_manager = "systemd".into();
        assert_eq!(
            owning_manager(Some(&s), ManagerKind::None),
            ManagerKind::Systemd
        );
        assert_eq!(
            owning_manager(None, ManagerKind::Launchd),
            ManagerKind::Launchd
        );
    }
}
