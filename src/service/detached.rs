//! The `none` manager: the daemon runs as a detached child of the hook, for machines without
//! systemd or launchd.
//!
//! Invariants:
//! - The child runs `<binary> run --session-id=<ID>` in its own process group (a Ctrl-C or a
//!   job-control signal aimed at Claude Code's group does not reach it), with stdin from
//!   /dev/null, stdout and stderr appended to the per-session log (directory 0700, file 0600),
//!   and `/` as its working directory (it pins no mount point; it uses absolute paths only).
//! - The hook never waits for the child: it exits right after starting it. Until then the child
//!   is the hook's; when the hook exits, the child is reparented to init (or the nearest
//!   subreaper), which reaps it. No zombie outlives the hook.
//! - `stop` sends SIGTERM only to the pid recorded in the session's state file, and only when
//!   that pid's start token still matches the recorded one (sync-engine §10/§11): a recycled pid
//!   is never signalled.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{check_id, run_args, ManagerKind, ServiceContext, ServiceManager};

/// How long a waiting stop gives the daemon: its 30 s shutdown budget plus margin.
pub const STOP_WAIT: Duration = Duration::from_secs(45);

/// Creates `dir` (and parents) with mode 0700 when missing.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Opens the session log for appending (0600, created with its directory when missing).
pub fn open_log(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// The command that starts the daemon detached; spawning it is all that is left to do.
pub fn detached_command(binary: &Path, id: &str, log: &File) -> std::io::Result<Command> {
    let mut cmd = Command::new(binary);
    cmd.args(run_args(id))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .process_group(0);
    // A hook that itself runs under a service manager must not hand its notify socket,
    // watchdog or socket-activation fds to a daemon that manager does not own.
    for var in NOT_INHERITED {
        cmd.env_remove(var);
    }
    Ok(cmd)
}

/// Variables of the hook's own service manager that the detached daemon must not see.
pub const NOT_INHERITED: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// The `none` manager.
pub struct DetachedManager {
    ctx: ServiceContext,
}

impl DetachedManager {
    pub fn new(ctx: ServiceContext) -> DetachedManager {
        DetachedManager { ctx }
    }

    /// Starts the daemon and returns its pid without waiting for it (see module doc).
    pub fn spawn(&self, id: &str) -> Result<u32, String> {
        check_id(id)?;
        let log_path = self.ctx.log_file(id);
        let log = open_log(&log_path)
            .map_err(|e| format!("cannot open log {}: {e}", log_path.display()))?;
        let child = detached_command(&self.ctx.binary, id, &log)
            .and_then(|mut c| c.spawn())
            .map_err(|e| format!("cannot start {}: {e}", self.ctx.binary.display()))?;
        // Dropping `Child` neither kills nor waits: the process lives on (module doc).
        Ok(child.id())
    }

    /// The daemon's pid and start token from the state file, when it recorded both.
    fn recorded_daemon(&self, id: &str) -> Result<Option<(i64, String)>, String> {
        let state = crate::state::load(&self.ctx.paths.state_file(id))?;
        Ok(state.and_then(|s| {
            let token = s.confab_sync.pid_start?;
            (s.pid > 0).then_some((s.pid, token))
        }))
    }
}

impl ServiceManager for DetachedManager {
    fn kind(&self) -> ManagerKind {
        ManagerKind::None
    }

    fn start(&self, id: &str) -> Result<(), String> {
        self.spawn(id).map(drop)
    }

    fn stop(&self, id: &str, wait: bool) -> Result<(), String> {
        check_id(id)?;
        let Some((pid, token)) = self.recorded_daemon(id)? else {
            return Ok(()); // no daemon recorded with a start token: nothing we may signal
        };
        if !crate::liveness::alive(pid, Some(&token)) {
            return Ok(());
        }
        let target = nix::unistd::Pid::from_raw(pid as i32);
        match nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(format!("cannot signal pid {pid}: {e}")),
        }
        if !wait {
            return Ok(());
        }
        let deadline = Instant::now() + STOP_WAIT;
        while crate::liveness::alive(pid, Some(&token)) {
            if Instant::now() >= deadline {
                return Err(format!(
                    "pid {pid} still running {}s after SIGTERM",
                    STOP_WAIT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn is_active(&self, id: &str) -> Option<bool> {
        check_id(id).ok()?;
        // The lock decides (§11); the pid and token cover a platform without /proc/locks.
        if crate::liveness::lock_is_held(&self.ctx.paths.lock_file(id)) {
            return Some(true);
        }
        match self.recorded_daemon(id) {
            Ok(Some((pid, token))) => Some(crate::liveness::alive(pid, Some(&token))),
            Ok(None) => Some(false),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::tests::ctx_in;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    /// A fake daemon: records its argv, pid and process group, then stays alive until killed.
    fn fake_binary(dir: &Path) -> std::path::PathBuf {
        let bin = dir.join("fake-confab-sync");
        std::fs::write(
            &bin,
            "#!/bin/sh\necho \"argv:$*\"\necho \"err line\" >&2\n\
             echo \"pgid:$(ps -o pgid= -p $$ | tr -d ' ') pid:$$ cwd:$(pwd)\"\n\
             read -r line || true\necho \"stdin:[$line]\"\nexec sleep 30\n",
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    #[test]
    fn spawn_detaches_into_its_own_group_with_stdio_to_the_log() {
        let home = tempfile::tempdir().unwrap();
        let mut ctx = ctx_in(home.path());
        ctx.binary = fake_binary(home.path());
        let log_path = ctx.log_file("-s1");
        let m = DetachedManager::new(ctx);
        let pid = m.spawn("-s1").unwrap();
        let kill = || {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        };
        // Await the fake's last line instead of sleeping a fixed time.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut text = String::new();
        while !text.contains("stdin:") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            text.clear();
            let _ = File::open(&log_path).and_then(|mut f| f.read_to_string(&mut text));
        }
        kill();
        // Reap it here: in the test process it is our child (the hook would have exited).
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
        assert!(text.contains("argv:run --session-id=-s1\n"), "{text}");
        assert!(text.contains("err line\n"), "{text}");
        assert!(
            text.contains(&format!("pgid:{pid} pid:{pid} cwd:/\n")),
            "{text}"
        );
        assert!(text.contains("stdin:[]"), "{text}");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&log_path), 0o600);
        assert_eq!(mode(log_path.parent().unwrap()), 0o700);
    }

    #[test]
    fn the_hooks_service_manager_variables_are_not_inherited() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(&dir.path().join("x.log")).unwrap();
        let cmd = detached_command(Path::new("/bin/true"), "x", &log).unwrap();
        let removed: Vec<_> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_str().unwrap().to_string())
            .collect();
        assert_eq!(removed.len(), NOT_INHERITED.len());
        for var in NOT_INHERITED {
            assert!(removed.iter().any(|r| r == var), "{var}");
        }
        assert_eq!(
            cmd.get_args().collect::<Vec<_>>(),
            ["run", "--session-id=x"]
        );
        assert_eq!(cmd.get_current_dir(), Some(Path::new("/")));
    }

    #[test]
    fn log_is_appended_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("logs/x.log");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "old\n").unwrap();
        use std::io::Write;
        open_log(&p).unwrap().write_all(b"new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old\nnew\n");
    }

    #[test]
    fn spawn_errors_are_one_line_and_ids_are_checked() {
        let home = tempfile::tempdir().unwrap();
        let mut ctx = ctx_in(home.path());
        ctx.binary = home.path().join("missing");
        let m = DetachedManager::new(ctx);
        let e = m.spawn("s").unwrap_err();
        assert!(e.starts_with("cannot start") && !e.contains('\n'), "{e}");
        assert!(m
            .spawn("../../x")
            .unwrap_err()
            .contains("invalid session id"));
        assert!(!home.path().join(".confab/logs/../../x.log").exists());
    }
}
