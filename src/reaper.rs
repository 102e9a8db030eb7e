//! The reaper (H13): removes the files of sessions whose daemon is gone, so `~/.confab/sync`
//! does not fill up with states, inboxes and locks of crashed or killed daemons. Runs at every
//! `hook session-start` (for other sessions) and on request (`status --prune`).
//!
//! Invariants — a session's files (`<ID>.json`, `.inbox.jsonl`, `.lock`, `.hook.lock`) are
//! removed only when ALL of these hold:
//! - every one of them is older than [`MIN_AGE`] (a session being launched right now is young);
//! - nobody holds `<ID>.lock` or `<ID>.hook.lock` (probed through /proc/locks: the reaper never
//!   takes a lock, sync-engine §10);
//! - the daemon the state records is dead (pid and start token, H8);
//! - with [`Policy::require_parent_dead`], the Claude process the state records is dead too.
//!
//! Without a state, a group is removed only where locks can be probed (Linux): elsewhere a lock
//! file without a state cannot be told apart from a daemon that is just starting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::liveness;
use crate::paths::{self, Paths};
use crate::state::{self, State};

/// Files younger than this are never reaped (sync-engine §0).
pub const MIN_AGE: Duration = Duration::from_secs(5);

/// When a dead session's files may go.
#[derive(Clone, Debug)]
pub struct Policy {
    pub min_age: Duration,
    /// Keep a session whose Claude process (recorded `parent_pid` and token) still runs.
    pub require_parent_dead: bool,
}

impl Policy {
    /// The session-start reaper (H13).
    pub fn hook() -> Policy {
        Policy {
            min_age: MIN_AGE,
            require_parent_dead: true,
        }
    }

    /// `status --prune`: the user asked, so an open Claude session does not protect a dead daemon's
    /// files; the age still protects a launch in progress.
    pub fn prune() -> Policy {
        Policy {
            min_age: MIN_AGE,
            require_parent_dead: false,
        }
    }
}

/// What was removed for one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaped {
    pub session_id: String,
    pub files: Vec<PathBuf>,
}

/// The session files of one id, as found in the sync directory.
#[derive(Default, Debug)]
struct Group {
    files: Vec<PathBuf>,
    has_state: bool,
}

/// The suffixes of session files, longest first (`.hook.lock` before `.lock`).
const SUFFIXES: [&str; 4] = [".hook.lock", ".inbox.jsonl", ".lock", ".json"];

/// `(id, suffix)` when `name` is a session file with a valid id.
fn classify(name: &str) -> Option<(&str, &'static str)> {
    SUFFIXES.iter().find_map(|suffix| {
        let id = name.strip_suffix(suffix)?;
        paths::validate_session_id(id).ok()?;
        Some((id, *suffix))
    })
}

fn groups(dir: &Path) -> BTreeMap<String, Group> {
    let mut out: BTreeMap<String, Group> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if let Some((id, suffix)) = classify(&name) {
            let g = out.entry(id.to_string()).or_default();
            g.files.push(e.path());
            g.has_state |= suffix == ".json";
        }
    }
    out
}

/// Removes the files of every dead session except `skip`, under `policy`, as of `now`.
/// Also deletes leftover `*.tmp` files of writers that are gone.
pub fn reap(paths: &Paths, skip: Option<&str>, policy: &Policy, now: SystemTime) -> Vec<Reaped> {
    let dir = paths.sync_dir();
    state::remove_stale_tmp(&dir);
    let mut reaped = Vec::new();
    for (id, group) in groups(&dir) {
        if Some(id.as_str()) == skip || !is_dead(paths, &id, &group, policy, now) {
            continue;
        }
        let removed: Vec<PathBuf> = group
            .files
            .into_iter()
            .filter(|f| std::fs::remove_file(f).is_ok())
            .collect();
        if !removed.is_empty() {
            reaped.push(Reaped {
                session_id: id,
                files: removed,
            });
        }
    }
    reaped
}

/// Every condition of the module doc.
fn is_dead(paths: &Paths, id: &str, group: &Group, policy: &Policy, now: SystemTime) -> bool {
    let young = |f: &PathBuf| {
        std::fs::symlink_metadata(f)
            .and_then(|m| m.modified())
            .map_or(true, |t| {
                now.duration_since(t).unwrap_or_default() < policy.min_age
            })
    };
    if group.files.iter().any(young) {
        return false;
    }
    if liveness::lock_is_held(&paths.lock_file(id))
        || liveness::lock_is_held(&paths.hook_lock_file(id))
    {
        return false;
    }
    if !group.has_state {
        return cfg!(target_os = "linux");
    }
    // An unreadable state records nobody; with its locks free it is leftover.
    let Ok(Some(s)) = state::load(&paths.state_file(id)) else {
        return true;
    };
    let parent_protects = policy.require_parent_dead && parent_alive(&s);
    !(daemon_alive(&s) || parent_protects)
}

/// The recorded daemon runs. Without a token (the existing client's states) `kill` alone decides
/// (sync-engine §11).
fn daemon_alive(s: &State) -> bool {
    s.pid > 0 && liveness::alive(s.pid, s.confab_sync.pid_start.as_deref())
}

fn parent_alive(s: &State) -> bool {
    s.parent_pid > 0 && liveness::alive(s.parent_pid, s.confab_sync.parent_start.as_deref())
}

/// The session-start reaper: [`reap`] with [`Policy::hook`], plus (macOS) the plists of launchd
/// sessions that are not running. Returns one note per removed session.
pub fn reap_for_hook(paths: &Paths, own_id: &str) -> Vec<String> {
    let mut notes: Vec<String> = reap(paths, Some(own_id), &Policy::hook(), SystemTime::now())
        .into_iter()
        .map(|r| format!("removed the stale files of session {}", r.session_id))
        .collect();
    notes.extend(reap_launchd_plists(paths, own_id));
    notes
}

#[cfg(target_os = "macos")]
fn reap_launchd_plists(paths: &Paths, own_id: &str) -> Vec<String> {
    use crate::service::{launchd::LaunchdManager, ServiceContext, ServiceManager};
    let Ok(ctx) = ServiceContext::new(paths.clone()) else {
        return Vec::new();
    };
    let m = LaunchdManager::new(ctx);
    m.remove_stale(|id| {
        id == own_id || m.is_active(id) == Some(true) || paths.state_file(id).exists()
    })
    .into_iter()
    .map(|p| format!("removed the stale launchd agent {}", p.display()))
    .collect()
}

#[cfg(not(target_os = "macos"))]
fn reap_launchd_plists(_paths: &Paths, _own_id: &str) -> Vec<String> {
    Vec::new()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::lock::SessionLock;

    fn setup() -> (tempfile::TempDir, Paths) {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::for_home(tmp.path());
        state::ensure_sync_dir(&paths.sync_dir()).unwrap();
        (tmp, paths)
    }

    fn write_session(paths: &Paths, id: &str, pid: i64, parent: i64) {
        let mut s = State::new(paths, id, "/t/x.jsonl", "/", parent);
        s.pid = pid;
        s.confab_sync.pid_start = liveness::start_token(pid).or(Some("linux:dead:1".into()));
        s.confab_sync.parent_start = liveness::start_token(parent);
        state::save(&paths.state_file(id), &s).unwrap();
        std::fs::write(paths.inbox_file(id), "{}\n").unwrap();
        std::fs::write(paths.lock_file(id), "").unwrap();
    }

    fn later() -> SystemTime {
        SystemTime::now() + Duration::from_secs(6)
    }

    fn exists(paths: &Paths, id: &str) -> [bool; 3] {
        [
            paths.state_file(id).exists(),
            paths.inbox_file(id).exists(),
            paths.lock_file(id).exists(),
        ]
    }

    #[test]
    fn classify_names() {
        assert_eq!(classify("a.hook.lock"), Some(("a", ".hook.lock")));
        assert_eq!(classify("a.lock"), Some(("a", ".lock")));
        assert_eq!(
            classify("a-b_c.inbox.jsonl"),
            Some(("a-b_c", ".inbox.jsonl"))
        );
        assert_eq!(classify("a.json"), Some(("a", ".json")));
        assert_eq!(classify("a.json.123.tmp"), None);
        assert_eq!(classify("a.b.json"), None);
        assert_eq!(classify(".json"), None);
        assert_eq!(classify("a.fault"), None);
    }

    /// X21, the table: dead + old → removed; dead + young, lock held, parent alive → kept.
    #[test]
    fn x21_reaper_table() {
        let (_tmp, paths) = setup();
        let me = i64::from(std::process::id());
        write_session(&paths, "dead-old", 999_999_999, 0);
        write_session(&paths, "locked", 999_999_999, 0);
        write_session(&paths, "parent-alive", 999_999_999, me);
        write_session(&paths, "daemon-alive", me, 0);
        write_session(&paths, "own", 999_999_999, 0);
        let _held = SessionLock::try_acquire(&paths.lock_file("locked"))
            .unwrap()
            .unwrap();

        // Young files: nothing goes.
        assert!(reap(&paths, Some("own"), &Policy::hook(), SystemTime::now()).is_empty());
        assert_eq!(exists(&paths, "dead-old"), [true; 3]);

        let reaped = reap(&paths, Some("own"), &Policy::hook(), later());
        let ids: Vec<&str> = reaped.iter().map(|r| r.session_id.as_str()).collect();
        assert_eq!(ids, ["dead-old"]);
        assert_eq!(reaped[0].files.len(), 3);
        assert_eq!(exists(&paths, "dead-old"), [false; 3]);
        assert_eq!(exists(&paths, "locked"), [true; 3]);
        assert_eq!(exists(&paths, "parent-alive"), [true; 3]);
        assert_eq!(exists(&paths, "daemon-alive"), [true; 3]);
        assert_eq!(exists(&paths, "own"), [true; 3]);

        // On request, a live parent no longer protects a dead daemon's files.
        let pruned = reap(&paths, None, &Policy::prune(), later());
        let ids: Vec<&str> = pruned.iter().map(|r| r.session_id.as_str()).collect();
        assert_eq!(ids, ["own", "parent-alive"]);
        assert_eq!(exists(&paths, "locked"), [true; 3]);
        assert_eq!(exists(&paths, "daemon-alive"), [true; 3]);
    }

    #[test]
    fn held_hook_lock_protects_a_launch_in_progress() {
        let (_tmp, paths) = setup();
        write_session(&paths, "s", 0, 0);
        let _hook = SessionLock::try_acquire(&paths.hook_lock_file("s"))
            .unwrap()
            .unwrap();
        assert!(reap(&paths, None, &Policy::hook(), later()).is_empty());
        assert!(paths.state_file("s").exists());
    }

    #[test]
    fn orphans_without_state_and_unreadable_states_go() {
        let (_tmp, paths) = setup();
        std::fs::write(paths.inbox_file("orphan"), "{}\n").unwrap();
        std::fs::write(paths.hook_lock_file("orphan"), "").unwrap();
        std::fs::write(paths.state_file("broken"), "{not json").unwrap();
        std::fs::write(paths.sync_dir().join("unrelated.txt"), "x").unwrap();
        let mut reaped = reap(&paths, None, &Policy::hook(), later());
        reaped.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        assert_eq!(reaped.len(), 2);
        assert_eq!(reaped[0].session_id, "broken");
        assert_eq!(reaped[1].session_id, "orphan");
        assert_eq!(reaped[1].files.len(), 2);
        assert!(paths.sync_dir().join("unrelated.txt").exists());
    }

    #[test]
    fn token_less_state_of_a_live_pid_is_kept() {
        // The existing client's states have no token: `kill` alone decides.
        let (_tmp, paths) = setup();
        let mut s = State::new(&paths, "go", "/t/x.jsonl", "/", 0);
        s.confab_sync.pid_start = None;
        state::save(&paths.state_file("go"), &s).unwrap();
        assert!(reap(&paths, None, &Policy::hook(), later()).is_empty());
    }
}
