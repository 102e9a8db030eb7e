//! `confab-sync hook session-start | session-end | user-prompt-submit` (sync-engine §10, cli.md).
//!
//! Invariants:
//! - A hook never fails the user's editor session: whatever happens, the caller prints exactly one
//!   stdout line, [`HookKind::response`], and exits 0. Everything human goes to stderr (the notes
//!   [`run`] returns).
//! - Input is at most [`MAX_INPUT_BYTES`]; anything larger, non-JSON, or with an invalid session
//!   id or transcript path (H25) starts nothing and writes nothing.
//! - The daemon is started with argv `run --session-id=<ID>` only (H26): the prompt and every
//!   other hook field stay out of `ps`. What the daemon needs travels in the launch state.
//! - Racing hooks of one session run one at a time under `<ID>.hook.lock` (bounded wait), so a
//!   session gets one daemon. The hook never takes `<ID>.lock` and never writes a daemon's pid
//!   (pid 0 in the launch state): the daemon records its own.
//! - A signal goes only to a pid whose start token matches ([`crate::status::request_stop`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::inbox::{self, HookInput, InboxEvent};
use crate::lock::SessionLock;
use crate::paths::{self, Paths};
use crate::service::{self, ManagerChoice, ManagerKind, ServiceContext};
use crate::state::{self, State};
use crate::status::{self, daemon_is_live};
use crate::{liveness, reaper};

/// Largest hook input accepted on stdin (sync-engine §10).
pub const MAX_INPUT_BYTES: u64 = 10 * 1024 * 1024;
/// How long a hook waits for another hook of the same session (`<ID>.hook.lock`).
pub const HOOK_LOCK_WAIT: Duration = Duration::from_secs(5);
/// How long a hook waits for a daemon it started to hold `<ID>.lock`.
pub const START_WAIT: Duration = Duration::from_secs(3);

/// The three hook events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    SessionStart,
    SessionEnd,
    UserPromptSubmit,
}

impl HookKind {
    /// The one stdout line (without `\n`) this hook answers with.
    pub fn response(self) -> &'static str {
        match self {
            HookKind::UserPromptSubmit => {
                r#"{"continue":true,"stopReason":"","suppressOutput":true}"#
            }
            _ => r#"{"continue":true,"stopReason":"","suppressOutput":false}"#,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HookKind::SessionStart => "session-start",
            HookKind::SessionEnd => "session-end",
            HookKind::UserPromptSubmit => "user-prompt-submit",
        }
    }
}

/// What a hook takes from its process environment.
#[derive(Clone, Debug)]
pub struct HookEnv {
    pub paths: Paths,
    /// `CONFAB_*` and `XDG_DATA_HOME`: saved in the launch state for a daemon that a service
    /// manager starts without the hook's environment (sync-engine §9).
    pub launch_env: BTreeMap<String, String>,
    /// `$CONFAB_SERVICE_MANAGER` or `auto`; an invalid value is kept as its error.
    pub manager: Result<ManagerChoice, String>,
}

impl HookEnv {
    pub fn from_env() -> HookEnv {
        HookEnv::from_vars(std::env::vars().collect(), Paths::from_env())
    }

    /// From an explicit variable set (tests).
    pub fn from_vars(vars: BTreeMap<String, String>, paths: Paths) -> HookEnv {
        let manager = service::requested_choice(None, |k| vars.get(k).cloned());
        HookEnv {
            paths,
            launch_env: launch_env(&vars),
            manager,
        }
    }
}

/// The variables a daemon needs from the hook's environment.
pub fn launch_env(vars: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    vars.iter()
        .filter(|(k, _)| k.starts_with("CONFAB_") || *k == "XDG_DATA_HOME")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Reads at most [`MAX_INPUT_BYTES`]; more is an error (the rest is not read).
pub fn read_input(mut r: impl Read) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    r.by_ref()
        .take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the hook input: {e}"))?;
    if buf.len() as u64 > MAX_INPUT_BYTES {
        return Err("hook input larger than 10 MiB; ignored".to_string());
    }
    Ok(buf)
}

/// Runs one hook on its stdin. Returns the notes for stderr; never fails (see module doc).
pub fn run(kind: HookKind, stdin: impl Read, env: &HookEnv) -> Vec<String> {
    let mut notes = Vec::new();
    let result = read_input(stdin).and_then(|b| handle(kind, &b, env, &mut notes));
    if let Err(e) = result {
        notes.push(e);
    }
    notes
}

/// [`run`] on input already read.
pub fn handle(
    kind: HookKind,
    input: &[u8],
    env: &HookEnv,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let hook_input = HookInput::from_json(input)?;
    let id = hook_input.session_id.clone();
    paths::validate_session_id(&id).map_err(|e| format!("{}: {e}; nothing done", kind.name()))?;
    match kind {
        HookKind::SessionEnd => session_end(&id, hook_input, env, notes),
        HookKind::SessionStart | HookKind::UserPromptSubmit => {
            let transcript =
                paths::validate_transcript_path(Path::new(&hook_input.transcript_path), &env.paths)
                    .map_err(|e| format!("{}: {e}; nothing started", kind.name()))?;
            if kind == HookKind::SessionStart {
                notes.extend(reaper::reap_for_hook(&env.paths, &id));
            } else if live(&env.paths, &id) {
                return Ok(()); // the common case: one cheap check per prompt
            }
            ensure_daemon(&id, &transcript, &hook_input.cwd, env, notes)
        }
    }
}

fn live(paths: &Paths, id: &str) -> bool {
    let st = state::load(&paths.state_file(id)).ok().flatten();
    daemon_is_live(paths, id, st.as_ref())
}

/// Takes `<ID>.hook.lock`: try-lock polled for at most `wait`.
pub fn hook_lock(paths: &Paths, id: &str, wait: Duration) -> Result<SessionLock, String> {
    let dir = paths.sync_dir();
    state::ensure_sync_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = paths.hook_lock_file(id);
    let deadline = Instant::now() + wait;
    loop {
        match SessionLock::try_acquire(&path) {
            Ok(Some(l)) => return Ok(l),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                return Err(format!(
                    "another hook of session {id} held {} for {}s; giving up",
                    path.display(),
                    wait.as_secs()
                ))
            }
            Err(e) => return Err(format!("cannot lock {}: {e}", path.display())),
        }
    }
}

/// Starts the session's daemon unless one is live (session-start, user-prompt-submit).
fn ensure_daemon(
    id: &str,
    transcript: &Path,
    cwd: &str,
    env: &HookEnv,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let lock = hook_lock(&env.paths, id, HOOK_LOCK_WAIT)?;
    let result = start_locked(id, transcript, cwd, env, notes);
    lock.release_and_unlink();
    result
}

fn start_locked(
    id: &str,
    transcript: &Path,
    cwd: &str,
    env: &HookEnv,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let paths = &env.paths;
    let state_path = paths.state_file(id);
    let existing = state::load(&state_path).unwrap_or_else(|e| {
        notes.push(format!("{e}; replacing it"));
        None
    });
    if daemon_is_live(paths, id, existing.as_ref()) {
        return Ok(());
    }
    let choice = env.manager.clone()?;
    let ctx = ServiceContext::new(paths.clone())
        .map_err(|e| format!("cannot locate the confab-sync binary: {e}"))?;
    let kind = service::resolve_kind(choice, &ctx);
    let (parent_pid, parent_start) = liveness::detect_claude_parent();
    let launch = launch_state(
        paths,
        id,
        transcript,
        cwd,
        existing,
        kind,
        parent_pid,
        parent_start,
        &env.launch_env,
    );
    state::save(&state_path, &launch)
        .map_err(|e| format!("cannot write {}: {e}", state_path.display()))?;
    service::for_kind(kind, &ctx)
        .start(id)
        .map_err(|e| format!("cannot start the daemon of session {id} ({kind}): {e}"))?;
    if wait_for_lock(paths, id, START_WAIT) {
        notes.push(format!("started the daemon of session {id} ({kind})"));
    } else {
        notes.push(format!(
            "the daemon of session {id} ({kind}) did not take its lock within {}s; see `confab-sync logs {id}`",
            START_WAIT.as_secs()
        ));
    }
    Ok(())
}

/// The state a hook writes before starting the daemon: pid 0 (the daemon records its own), the
/// existing backend session and cursors kept, the parent and the environment to apply.
#[allow(clippy::too_many_arguments)]
pub fn launch_state(
    paths: &Paths,
    id: &str,
    transcript: &Path,
    cwd: &str,
    existing: Option<State>,
    kind: ManagerKind,
    parent_pid: i64,
    parent_start: Option<String>,
    launch_env: &BTreeMap<String, String>,
) -> State {
    let mut s = State::new(paths, id, &transcript.to_string_lossy(), cwd, parent_pid);
    s.pid = 0;
    s.confab_sync.pid_start = None;
    s.confab_sync.parent_start = parent_start.filter(|_| parent_pid > 0);
    s.confab_sync.service_manager = kind.as_str().to_string();
    s.confab_sync.launch_env = launch_env.clone();
    if let Some(old) = existing {
        // Cursors only cache the backend's positions; they stay valid for the same session and
        // backend, which the daemon checks against `confab_session_id` and `backend_url`.
        s.confab_session_id = old.confab_session_id;
        s.confab_sync.backend_url = old.confab_sync.backend_url;
        s.confab_sync.files = old.confab_sync.files;
    }
    s
}

/// Polls (at most `within`) until `<ID>.lock` is held.
fn wait_for_lock(paths: &Paths, id: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if live(paths, id) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// session-end: live daemon → inbox event, then a stop request (no wait); not live → remove the
/// leftovers.
fn session_end(
    id: &str,
    mut input: HookInput,
    env: &HookEnv,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let paths = &env.paths;
    // Serialised with a session-start still launching this session's daemon.
    let lock = hook_lock(paths, id, HOOK_LOCK_WAIT)?;
    let result = end_locked(id, &mut input, env, notes);
    lock.release_and_unlink();
    result
}

fn end_locked(
    id: &str,
    input: &mut HookInput,
    env: &HookEnv,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let paths = &env.paths;
    let loaded = state::load(&paths.state_file(id)).unwrap_or_else(|e| {
        notes.push(e);
        None
    });
    if daemon_is_live(paths, id, loaded.as_ref()) {
        if let Some(p) = loaded.as_ref().map(|s| s.parent_pid).filter(|&p| p > 0) {
            input.parent_pid = Some(p);
        }
        let event = InboxEvent::session_end(Some(input.clone()));
        let inbox = paths.inbox_file(id);
        inbox::append(&inbox, &event)
            .map_err(|e| format!("cannot append to {}: {e}", inbox.display()))?;
        let fallback = match env.manager {
            Ok(ManagerChoice::Kind(k)) => k,
            _ => ManagerKind::None,
        };
        let kind = status::owning_manager(loaded.as_ref(), fallback);
        notes.push(status::request_stop(paths, id, kind)?);
        return Ok(());
    }
    let leftovers = remove_leftovers(paths, id);
    if loaded.is_none() && leftovers.iter().all(|p| *p != paths.state_file(id)) {
        notes.push(format!(
            "session-end: no state for session {id}; nothing to stop"
        ));
    } else {
        notes.push(format!(
            "session-end: the daemon of session {id} is not running; removed its stale files"
        ));
    }
    Ok(())
}

/// Deletes a dead session's state, inbox and (free) lock file. Returns what was removed.
fn remove_leftovers(paths: &Paths, id: &str) -> Vec<PathBuf> {
    let mut files = vec![paths.inbox_file(id), paths.state_file(id)];
    if !liveness::lock_is_held(&paths.lock_file(id)) {
        files.push(paths.lock_file(id));
    }
    files
        .into_iter()
        .filter(|f| std::fs::remove_file(f).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_in(tmp: &Path) -> HookEnv {
        let home = tmp.join("home");
        let claude = tmp.join("claude");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&claude).unwrap();
        let vars: BTreeMap<String, String> = [
            ("HOME", home.to_str().unwrap()),
            ("CONFAB_CLAUDE_DIR", claude.to_str().unwrap()),
            ("CONFAB_SERVICE_MANAGER", "none"),
            ("XDG_DATA_HOME", "/xdg"),
            ("PATH", "/bin"),
            ("SECRET_THING", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let paths = Paths::from_lookup(|k| vars.get(k).map(PathBuf::from));
        HookEnv::from_vars(vars, paths)
    }

    #[test]
    fn responses() {
        assert_eq!(
            HookKind::SessionStart.response(),
            r#"{"continue":true,"stopReason":"","suppressOutput":false}"#
        );
        assert_eq!(
            HookKind::SessionEnd.response(),
            HookKind::SessionStart.response()
        );
        assert_eq!(
            HookKind::UserPromptSubmit.response(),
            r#"{"continue":true,"stopReason":"","suppressOutput":true}"#
        );
        for k in [
            HookKind::SessionStart,
            HookKind::SessionEnd,
            HookKind::UserPromptSubmit,
        ] {
            let v: serde_json::Value = serde_json::from_str(k.response()).unwrap();
            assert_eq!(v["continue"], true);
        }
    }

    #[test]
    fn launch_env_takes_confab_and_xdg_only() {
        let tmp = tempfile::tempdir().unwrap();
        let env = env_in(tmp.path());
        let keys: Vec<&str> = env.launch_env.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "CONFAB_CLAUDE_DIR",
                "CONFAB_SERVICE_MANAGER",
                "XDG_DATA_HOME"
            ]
        );
        assert_eq!(env.manager, Ok(ManagerChoice::Kind(ManagerKind::None)));
    }

    #[test]
    fn input_limit_is_10_mib() {
        let exact = vec![b' '; MAX_INPUT_BYTES as usize];
        assert_eq!(read_input(&exact[..]).unwrap().len(), exact.len());
        let over = vec![b' '; MAX_INPUT_BYTES as usize + 1];
        assert!(read_input(&over[..]).unwrap_err().contains("10 MiB"));
    }

    #[test]
    fn invalid_inputs_write_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let env = env_in(tmp.path());
        let t = env.paths.transcript_root().join("s/t.jsonl");
        let cases = [
            "not json".to_string(),
            "[1,2]".to_string(),
            r#"{"transcript_path":"/x"}"#.to_string(),
            serde_json::json!({"session_id": "../x", "transcript_path": t}).to_string(),
            serde_json::json!({"session_id": "a b", "transcript_path": t}).to_string(),
            serde_json::json!({"session_id": "ok", "transcript_path": "rel/t.jsonl"}).to_string(),
            serde_json::json!({"session_id": "ok", "transcript_path": "/etc/passwd"}).to_string(),
            serde_json::json!({"session_id": "ok", "transcript_path": format!("{}/../../x.jsonl", t.display())})
                .to_string(),
        ];
        for kind in [HookKind::SessionStart, HookKind::UserPromptSubmit] {
            for c in &cases {
                let notes = run(kind, c.as_bytes(), &env);
                assert_eq!(notes.len(), 1, "{c}: {notes:?}");
                assert!(!env.paths.sync_dir().exists(), "{c} wrote files");
            }
        }
    }

    #[test]
    fn launch_state_keeps_cursors_and_records_no_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let env = env_in(tmp.path());
        let mut old = State::new(&env.paths, "s", "/old", "/", 0);
        old.confab_session_id = Some("cs-1".into());
        old.confab_sync.backend_url = Some("https://b".into());
        old.confab_sync
            .files
            .insert("t.jsonl".into(), Default::default());
        old.confab_sync.last_error = Some("old error".into());
        let s = launch_state(
            &env.paths,
            "s",
            Path::new("/new/t.jsonl"),
            "/cwd",
            Some(old),
            ManagerKind::Systemd,
            0,
            Some("tok".into()),
            &env.launch_env,
        );
        assert_eq!(s.pid, 0);
        assert_eq!(s.confab_sync.pid_start, None);
        assert_eq!(
            s.confab_sync.parent_start, None,
            "no parent, no parent token"
        );
        assert_eq!(s.transcript_path, "/new/t.jsonl");
        assert_eq!(s.cwd, "/cwd");
        assert_eq!(s.confab_session_id.as_deref(), Some("cs-1"));
        assert_eq!(s.confab_sync.backend_url.as_deref(), Some("https://b"));
        assert!(s.confab_sync.files.contains_key("t.jsonl"));
        assert_eq!(s.confab_sync.last_error, None);
        assert_eq!(s.confab_sync.service_manager, "systemd");
        assert_eq!(s.confab_sync.launch_env, env.launch_env);
        assert_eq!(s.inbox_path, env.paths.inbox_file("s").to_string_lossy());
    }

    #[test]
    fn session_end_without_state_notes_and_cleans() {
        let tmp = tempfile::tempdir().unwrap();
        let env = env_in(tmp.path());
        let input = r#"{"session_id":"gone","reason":"exit"}"#;
        let notes = run(HookKind::SessionEnd, input.as_bytes(), &env);
        assert!(notes.iter().any(|n| n.contains("no state")), "{notes:?}");
        // A leftover inbox of a dead session goes too.
        std::fs::write(env.paths.inbox_file("gone"), "{}\n").unwrap();
        run(HookKind::SessionEnd, input.as_bytes(), &env);
        assert!(!env.paths.inbox_file("gone").exists());
        assert!(!env.paths.hook_lock_file("gone").exists());
    }

    #[test]
    fn invalid_service_manager_starts_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut env = env_in(tmp.path());
        env.manager = service::requested_choice(None, |_| Some("bogus".into()));
        let t = env.paths.transcript_root().join("s/t.jsonl");
        let input = serde_json::json!({"session_id": "s1", "transcript_path": t});
        let notes = run(
            HookKind::UserPromptSubmit,
            input.to_string().as_bytes(),
            &env,
        );
        assert!(
            notes.iter().any(|n| n.contains("unknown service manager")),
            "{notes:?}"
        );
        assert!(!env.paths.state_file("s1").exists());
        assert!(!env.paths.hook_lock_file("s1").exists());
    }

    #[test]
    fn hook_lock_waits_then_gives_up() {
        let tmp = tempfile::tempdir().unwrap();
        let env = env_in(tmp.path());
        let held = hook_lock(&env.paths, "s", Duration::ZERO).unwrap();
        let t0 = Instant::now();
        let err = hook_lock(&env.paths, "s", Duration::from_millis(200)).unwrap_err();
        assert!(t0.elapsed() >= Duration::from_millis(200));
        assert!(err.contains("giving up"));
        held.release_and_unlink();
        hook_lock(&env.paths, "s", Duration::ZERO)
            .unwrap()
            .release_and_unlink();
        assert!(!env.paths.hook_lock_file("s").exists());
    }
}
