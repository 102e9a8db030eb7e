//! The service-manager seam: how a hook starts and stops a session's daemon (`cli.md`, "Service
//! managers"). Three managers sit behind one [`ServiceManager`] trait: a systemd user unit
//! ([`systemd`]), a launchd agent ([`launchd`], macOS only) and a detached child process
//! ([`detached`], the `none` manager for machines without either).
//!
//! Invariants:
//! - The daemon is always launched as `<binary> run --session-id=<ID>`: the id travels in ONE
//!   argument so an id beginning with `-` can never be read as a flag, and nothing else is passed
//!   (the daemon reads the rest from the state file the hook wrote, H26).
//! - Every manager refuses an id outside `^[A-Za-z0-9_-]{1,128}$` before it builds a unit name,
//!   label or path from it, so an id can never escape `confab-sync@…`, `dev.confab.sync.…` or the
//!   session files.
//! - Nothing here blocks without a bound: every external command runs under a deadline.
//! - Argument vectors are built by pure functions so they are testable without a manager.

pub mod detached;
pub mod launchd;
pub mod systemd;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::paths::Paths;

/// Environment variable that selects the manager when `--service-manager` is not given.
pub const MANAGER_ENV: &str = "CONFAB_SERVICE_MANAGER";

/// The argument that carries the session id to `run`: one argv element (see module doc).
pub fn session_id_arg(id: &str) -> String {
    format!("--session-id={id}")
}

/// The daemon's arguments after the binary: `run --session-id=<ID>`.
pub fn run_args(id: &str) -> Vec<String> {
    vec!["run".to_string(), session_id_arg(id)]
}

/// Which service manager runs the daemons. `auto` is not a kind: it is resolved by
/// [`resolve_kind`] before anything is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ManagerKind {
    Systemd,
    Launchd,
    None,
}

impl ManagerKind {
    /// The name used on the command line, in `CONFAB_SERVICE_MANAGER` and in the state file
    /// (`confab_sync.service_manager`).
    pub fn as_str(self) -> &'static str {
        match self {
            ManagerKind::Systemd => "systemd",
            ManagerKind::Launchd => "launchd",
            ManagerKind::None => "none",
        }
    }
}

impl fmt::Display for ManagerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ManagerKind {
    type Err = String;

    /// Accepts `systemd`, `launchd` and `none` (case-insensitive). `auto` is rejected here:
    /// use [`resolve_kind`], which detects.
    fn from_str(s: &str) -> Result<ManagerKind, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "systemd" => Ok(ManagerKind::Systemd),
            "launchd" => Ok(ManagerKind::Launchd),
            "none" => Ok(ManagerKind::None),
            "auto" => Err("service manager `auto` must be resolved, not parsed".to_string()),
            other => Err(format!(
                "unknown service manager `{other}` (expected auto, systemd, launchd or none)"
            )),
        }
    }
}

/// A manager requested by the user: `auto` or a fixed kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagerChoice {
    Auto,
    Kind(ManagerKind),
}

impl FromStr for ManagerChoice {
    type Err = String;

    /// `auto` (or an empty string) → [`ManagerChoice::Auto`]; otherwise a [`ManagerKind`].
    fn from_str(s: &str) -> Result<ManagerChoice, String> {
        let t = s.trim();
        if t.is_empty() || t.eq_ignore_ascii_case("auto") {
            return Ok(ManagerChoice::Auto);
        }
        t.parse().map(ManagerChoice::Kind)
    }
}

impl fmt::Display for ManagerChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManagerChoice::Auto => f.write_str("auto"),
            ManagerChoice::Kind(k) => k.fmt(f),
        }
    }
}

/// The requested choice: the command-line value if given, else `$CONFAB_SERVICE_MANAGER`, else
/// `auto`. An invalid value is an error (one line), never silently `auto`.
pub fn requested_choice(
    cli: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<ManagerChoice, String> {
    match cli.map(str::to_string).or_else(|| env(MANAGER_ENV)) {
        Some(v) => v.parse(),
        None => Ok(ManagerChoice::Auto),
    }
}

/// Resolves `auto`: systemd when a user manager answers, launchd on macOS, otherwise `none`.
/// A fixed kind is returned as is (the user asked for it; failures show up when it is used).
pub fn resolve_kind(choice: ManagerChoice, ctx: &ServiceContext) -> ManagerKind {
    match choice {
        ManagerChoice::Kind(k) => k,
        ManagerChoice::Auto if systemd::user_manager_answers(ctx) => ManagerKind::Systemd,
        ManagerChoice::Auto if cfg!(target_os = "macos") => ManagerKind::Launchd,
        ManagerChoice::Auto => ManagerKind::None,
    }
}

/// What every manager needs to know. Cloned into the manager by [`for_kind`].
#[derive(Clone, Debug)]
pub struct ServiceContext {
    /// Absolute path of the `confab-sync` binary the service runs.
    pub binary: PathBuf,
    /// Home, session files and the log directory (`$CONFAB_LOG_DIR` or `~/.confab/logs`).
    pub paths: Paths,
    /// The user's uid: the launchd domain `gui/<uid>` and the `/run/user/<uid>` fallback.
    pub uid: u32,
    /// Extra environment for a launchd agent's `EnvironmentVariables` (launchd does not pass the
    /// hook's environment on). Usually empty: the daemon takes `launch_env` from the state file.
    pub env: BTreeMap<String, String>,
}

impl ServiceContext {
    /// The running binary, the real uid and no extra environment.
    pub fn new(paths: Paths) -> std::io::Result<ServiceContext> {
        Ok(ServiceContext {
            binary: running_binary()?,
            paths,
            uid: nix::unistd::getuid().as_raw(),
            env: BTreeMap::new(),
        })
    }

    pub fn home(&self) -> &Path {
        &self.paths.home
    }

    /// The per-session log file used by launchd and the detached manager.
    pub fn log_file(&self, id: &str) -> PathBuf {
        self.paths.log_file(id)
    }
}

/// The running executable. After a package upgrade replaced it, Linux reports
/// `<path> (deleted)`; the new binary at `<path>` is the one to run.
pub fn running_binary() -> std::io::Result<PathBuf> {
    Ok(undeleted(std::env::current_exe()?))
}

fn undeleted(exe: PathBuf) -> PathBuf {
    match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(orig) if Path::new(orig).is_file() => PathBuf::from(orig),
        _ => exe,
    }
}

/// Starts, stops and queries one session's daemon. Synchronous: hooks are short-lived
/// processes and every call is bounded in time.
pub trait ServiceManager: Send + Sync {
    fn kind(&self) -> ManagerKind;
    /// Starts the daemon for `id`. Returns once the manager has accepted it (systemd: after
    /// `READY=1` or a failure; the others: once the process is spawned or loaded).
    fn start(&self, id: &str) -> Result<(), String>;
    /// Asks the daemon to stop gracefully (final sync). With `wait`, returns once it is gone.
    fn stop(&self, id: &str, wait: bool) -> Result<(), String>;
    /// `Some(true)` running (or starting/stopping), `Some(false)` not running, `None` when the
    /// manager cannot tell (not reachable).
    fn is_active(&self, id: &str) -> Option<bool>;
}

/// The manager for `kind`.
pub fn for_kind(kind: ManagerKind, ctx: &ServiceContext) -> Box<dyn ServiceManager> {
    match kind {
        ManagerKind::Systemd => Box::new(systemd::SystemdManager::new(ctx.clone())),
        ManagerKind::Launchd => Box::new(launchd::LaunchdManager::new(ctx.clone())),
        ManagerKind::None => Box::new(detached::DetachedManager::new(ctx.clone())),
    }
}

/// `^[A-Za-z0-9_-]{1,128}$` (sync-engine §10). Repeated here, next to the code that turns ids into
/// unit names, labels and paths, so this module is safe even if a caller forgot to validate.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid session id {id:?}"))
    }
}

/// Output of a bounded command.
#[derive(Debug)]
pub(crate) struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// First non-empty line of stderr (or stdout), for one-line errors.
    pub fn first_line(&self) -> String {
        self.stderr
            .lines()
            .chain(self.stdout.lines())
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
            .to_string()
    }
}

/// Runs `argv` with stdin closed, collects its output, and kills it after `timeout`.
/// Output is read on helper threads so a chatty child cannot block on a full pipe.
pub(crate) fn run_bounded(
    argv: &[String],
    envs: &[(String, String)],
    timeout: Duration,
) -> Result<Ran, String> {
    let (prog, args) = argv.split_first().ok_or("empty command")?;
    let mut child = Command::new(prog)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} timed out after {}s",
                    argv.join(" "),
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for {prog}: {e}")),
        }
    };
    Ok(Ran {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// `tmp` → fsync → rename → fsync(dir), so a reader sees the old or the new file, never half.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // Exact mode whatever the umask (the file replaces one that had this mode).
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A context rooted in a temporary home; never touches the real one.
    pub(crate) fn ctx_in(home: &Path) -> ServiceContext {
        ServiceContext {
            binary: PathBuf::from("/usr/bin/confab-sync"),
            paths: Paths {
                home: home.to_path_buf(),
                config_json: home.join(".confab/config.json"),
                claude_dir_override: None,
                log_dir: home.join(".confab/logs"),
                data_home: home.join(".local/share"),
            },
            uid: 501,
            env: BTreeMap::new(),
        }
    }

    #[test]
    fn kinds_parse_and_display_round_trip() {
        for k in [
            ManagerKind::Systemd,
            ManagerKind::Launchd,
            ManagerKind::None,
        ] {
            assert_eq!(k.to_string().parse::<ManagerKind>(), Ok(k));
            assert_eq!(
                k.as_str().parse::<ManagerChoice>(),
                Ok(ManagerChoice::Kind(k))
            );
        }
        assert_eq!(" SystemD ".parse::<ManagerKind>(), Ok(ManagerKind::Systemd));
        assert!("auto".parse::<ManagerKind>().is_err());
        assert!("upstart"
            .parse::<ManagerKind>()
            .unwrap_err()
            .contains("upstart"));
        assert_eq!("auto".parse::<ManagerChoice>(), Ok(ManagerChoice::Auto));
        assert_eq!(ManagerChoice::Auto.to_string(), "auto");
    }

    #[test]
    fn cli_beats_env_and_env_beats_default() {
        let env = |k: &str| (k == MANAGER_ENV).then(|| "none".to_string());
        let none = |_: &str| None;
        assert_eq!(
            requested_choice(Some("systemd"), env),
            Ok(ManagerChoice::Kind(ManagerKind::Systemd))
        );
        assert_eq!(
            requested_choice(None, env),
            Ok(ManagerChoice::Kind(ManagerKind::None))
        );
        assert_eq!(requested_choice(None, none), Ok(ManagerChoice::Auto));
        assert!(requested_choice(None, |_: &str| Some("bogus".into())).is_err());
    }

    #[test]
    fn fixed_kinds_resolve_without_probing() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx_in(dir.path());
        for k in [
            ManagerKind::Systemd,
            ManagerKind::Launchd,
            ManagerKind::None,
        ] {
            assert_eq!(resolve_kind(ManagerChoice::Kind(k), &ctx), k);
            assert_eq!(for_kind(k, &ctx).kind(), k);
        }
    }

    #[test]
    fn id_check_matches_the_spec_pattern() {
        assert!(check_id("abc-DEF_123").is_ok());
        assert!(check_id("-leading-dash").is_ok());
        assert!(check_id(&"a".repeat(128)).is_ok());
        for bad in ["", "a/b", "..", "a b", "a.b", "é", "a\n"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_id(&"a".repeat(129)).is_err());
    }

    #[test]
    fn a_replaced_binary_is_found_at_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("confab-sync");
        let deleted = PathBuf::from(format!("{} (deleted)", bin.display()));
        assert_eq!(undeleted(deleted.clone()), deleted, "nothing there yet");
        std::fs::write(&bin, "").unwrap();
        assert_eq!(undeleted(deleted), bin);
        assert_eq!(undeleted(bin.clone()), bin);
        assert!(running_binary().unwrap().is_absolute());
    }

    #[test]
    fn the_id_travels_in_one_argument() {
        assert_eq!(run_args("-x"), ["run", "--session-id=-x"]);
    }

    #[test]
    fn bounded_commands_report_output_and_time_out() {
        let sh = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
        let r = run_bounded(
            &sh("echo out; echo err >&2; exit 3"),
            &[],
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(r.status.code(), Some(3));
        assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("out\n", "err\n"));
        assert_eq!(r.first_line(), "err");
        let started = Instant::now();
        let e = run_bounded(&sh("exec sleep 30"), &[], Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(run_bounded(&["/nonexistent/x".to_string()], &[], Duration::from_secs(1)).is_err());
    }
}
