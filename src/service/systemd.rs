//! The systemd user-unit manager: one templated unit `confab-sync@.service`, one instance
//! `confab-sync@<ID>.service` per session, driven with `systemctl --user`.
//!
//! Invariants:
//! - The unit text comes from `systemd/confab-sync@.service` (compiled in); only the `@BINARY@`
//!   placeholder is replaced, with the binary path quoted and `%`-escaped for systemd. A path
//!   systemd cannot express (quotes, backslashes, control characters) is refused, never mangled.
//! - `start` is blocking: with `Type=notify` systemctl returns once the daemon sent `READY=1` or
//!   failed, and the unit's `TimeoutStartSec=` plus our own deadline bound the wait.
//! - Every `systemctl --user` call gets `XDG_RUNTIME_DIR` (`/run/user/<uid>` when unset and it
//!   exists), which is how systemctl finds the user manager when a hook runs without it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ManagerKind;
use super::{check_id, run_bounded, Ran, ServiceContext, ServiceManager};

/// The unit template as shipped; `@BINARY@` stands for the binary path.
pub const UNIT_TEMPLATE: &str = include_str!("../../systemd/confab-sync@.service");
/// What [`render_unit`] replaces with the binary path.
pub const BINARY_PLACEHOLDER: &str = "@BINARY@";
/// File name of the template unit.
pub const TEMPLATE_NAME: &str = "confab-sync@.service";

/// Directories a user manager reads units from, besides `~/.config/systemd/user`: if the template
/// is in any of them (a distribution package), we do not write our own copy.
const SHARED_UNIT_DIRS: &[&str] = &[
    "/etc/systemd/user",
    "/usr/local/lib/systemd/user",
    "/usr/local/share/systemd/user",
    "/usr/lib/systemd/user",
    "/usr/share/systemd/user",
    "/lib/systemd/user",
];

/// Start waits for `READY=1`; the unit gives up after `TimeoutStartSec=15s`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A waiting stop covers `TimeoutStopSec=45s` plus the daemon's `EXTEND_TIMEOUT_USEC` of 35 s.
const STOP_WAIT_TIMEOUT: Duration = Duration::from_secs(100);
const QUICK_TIMEOUT: Duration = Duration::from_secs(10);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// `confab-sync@<ID>.service`
pub fn unit_name(id: &str) -> String {
    format!("confab-sync@{id}.service")
}

/// `~/.config/systemd/user`
pub fn unit_dir(home: &Path) -> PathBuf {
    home.join(".config/systemd/user")
}

/// `~/.config/systemd/user/confab-sync@.service`
pub fn unit_path(home: &Path) -> PathBuf {
    unit_dir(home).join(TEMPLATE_NAME)
}

/// The unit template with `binary` substituted for `@BINARY@`.
pub fn render_unit(binary: &Path) -> Result<String, String> {
    Ok(UNIT_TEMPLATE.replace(BINARY_PLACEHOLDER, &exec_path(binary)?))
}

/// The binary path as the first word of `ExecStart=`. systemd expands `%` specifiers on the whole
/// line, so `%` is doubled; whitespace or `;` need double quotes; quotes, backslashes and control
/// characters are rejected by systemd in an executable name whatever the quoting ("Executable
/// name contains special characters"), so we refuse them here with a clear message. `$` is
/// not expanded in the executable name and stays as is.
pub fn exec_path(binary: &Path) -> Result<String, String> {
    let s = binary
        .to_str()
        .ok_or_else(|| format!("binary path {binary:?} is not UTF-8; systemd cannot run it"))?;
    if !binary.is_absolute() {
        return Err(format!("binary path {s:?} is not absolute"));
    }
    if s.chars()
        .any(|c| c.is_control() || matches!(c, '"' | '\'' | '\\'))
    {
        return Err(format!(
            "binary path {s:?} contains a quote, backslash or control character, which systemd \
             refuses in ExecStart=; install confab-sync elsewhere"
        ));
    }
    let escaped = s.replace('%', "%%");
    let plain = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:,@=~%".contains(&b));
    Ok(if plain {
        escaped
    } else {
        format!("\"{escaped}\"")
    })
}

/// Writes the rendered unit to [`unit_path`] (atomically, 0644) unless it already has exactly
/// that content. Returns whether the file changed.
pub fn install_unit(home: &Path, binary: &Path) -> Result<bool, String> {
    let text = render_unit(binary)?;
    let path = unit_path(home);
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(false);
    }
    let dir = unit_dir(home);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    super::write_atomic(&path, text.as_bytes(), 0o644)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(true)
}

/// Removes [`unit_path`] and its drop-in directory is left alone (it is the user's). Returns
/// whether a file was removed.
pub fn uninstall_unit(home: &Path) -> Result<bool, String> {
    let path = unit_path(home);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

/// True when the template is installed for this user or system-wide (package).
pub fn template_installed(home: &Path) -> bool {
    unit_path(home).is_file()
        || home
            .join(".local/share/systemd/user")
            .join(TEMPLATE_NAME)
            .is_file()
        || SHARED_UNIT_DIRS
            .iter()
            .any(|d| Path::new(d).join(TEMPLATE_NAME).is_file())
}

fn systemctl(args: &[&str]) -> Vec<String> {
    ["systemctl", "--user"]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect()
}

/// `systemctl --user start confab-sync@<ID>.service` (blocking: waits for `READY=1`).
pub fn start_argv(id: &str) -> Vec<String> {
    systemctl(&["start", &unit_name(id)])
}

/// `systemctl --user stop [--no-block] confab-sync@<ID>.service`
pub fn stop_argv(id: &str, wait: bool) -> Vec<String> {
    let unit = unit_name(id);
    if wait {
        systemctl(&["stop", &unit])
    } else {
        systemctl(&["stop", "--no-block", &unit])
    }
}

/// `systemctl --user is-active confab-sync@<ID>.service`
pub fn is_active_argv(id: &str) -> Vec<String> {
    systemctl(&["is-active", &unit_name(id)])
}

/// `systemctl --user daemon-reload`
pub fn daemon_reload_argv() -> Vec<String> {
    systemctl(&["daemon-reload"])
}

/// `systemctl --user is-system-running`
pub fn is_system_running_argv() -> Vec<String> {
    systemctl(&["is-system-running"])
}

/// States of `is-system-running` that mean a user manager answered. `offline` (printed when
/// systemctl cannot connect) and `unknown` do not.
pub fn manager_state_answers(state: &str) -> bool {
    matches!(
        state.trim(),
        "initializing" | "starting" | "running" | "degraded" | "maintenance" | "stopping"
    )
}

/// Maps `is-active` output to liveness: activating/active/reloading/deactivating are a live
/// daemon (deactivating = still doing its final sync); inactive/failed are not. Anything else
/// (no output: systemctl could not connect) is unknown.
pub fn parse_is_active(stdout: &str) -> Option<bool> {
    match stdout.lines().next().unwrap_or("").trim() {
        "active" | "activating" | "reloading" | "deactivating" | "refreshing" => Some(true),
        "inactive" | "failed" | "maintenance" => Some(false),
        _ => None,
    }
}

/// The environment for systemctl: `XDG_RUNTIME_DIR=/run/user/<uid>` when it is unset and that
/// directory exists (systemctl --user needs it to find the manager's private socket).
pub fn systemctl_env(uid: u32, current: Option<&str>) -> Vec<(String, String)> {
    if current.is_some_and(|v| !v.is_empty()) {
        return Vec::new();
    }
    let dir = format!("/run/user/{uid}");
    if Path::new(&dir).is_dir() {
        vec![("XDG_RUNTIME_DIR".to_string(), dir)]
    } else {
        Vec::new()
    }
}

fn run_systemctl(ctx: &ServiceContext, argv: &[String], timeout: Duration) -> Result<Ran, String> {
    let current = std::env::var("XDG_RUNTIME_DIR").ok();
    run_bounded(argv, &systemctl_env(ctx.uid, current.as_deref()), timeout)
}

/// True when `systemctl --user` reaches a user manager (for `auto`).
pub fn user_manager_answers(ctx: &ServiceContext) -> bool {
    run_systemctl(ctx, &is_system_running_argv(), PROBE_TIMEOUT)
        .map(|r| manager_state_answers(r.stdout.lines().next().unwrap_or("")))
        .unwrap_or(false)
}

/// `systemctl --user daemon-reload`, so a changed unit file is used by the next start.
pub fn daemon_reload(ctx: &ServiceContext) -> Result<(), String> {
    check(
        run_systemctl(ctx, &daemon_reload_argv(), START_TIMEOUT)?,
        &daemon_reload_argv(),
    )
}

fn check(r: Ran, argv: &[String]) -> Result<(), String> {
    if r.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed ({}): {}",
            argv.join(" "),
            r.status,
            r.first_line()
        ))
    }
}

/// The `systemd` manager.
pub struct SystemdManager {
    ctx: ServiceContext,
}

impl SystemdManager {
    pub fn new(ctx: ServiceContext) -> SystemdManager {
        SystemdManager { ctx }
    }

    /// A hook on a machine where `install` was never run still works: write the template and
    /// reload before the first start.
    fn ensure_template(&self) -> Result<(), String> {
        if template_installed(self.ctx.home()) {
            return Ok(());
        }
        install_unit(self.ctx.home(), &self.ctx.binary)?;
        daemon_reload(&self.ctx)
    }
}

impl ServiceManager for SystemdManager {
    fn kind(&self) -> ManagerKind {
        ManagerKind::Systemd
    }

    fn start(&self, id: &str) -> Result<(), String> {
        check_id(id)?;
        self.ensure_template()?;
        let argv = start_argv(id);
        check(run_systemctl(&self.ctx, &argv, START_TIMEOUT)?, &argv)
    }

    fn stop(&self, id: &str, wait: bool) -> Result<(), String> {
        check_id(id)?;
        let argv = stop_argv(id, wait);
        let timeout = if wait {
            STOP_WAIT_TIMEOUT
        } else {
            QUICK_TIMEOUT
        };
        let r = run_systemctl(&self.ctx, &argv, timeout)?;
        // Stopping a unit that is not loaded (already gone and collected) is success.
        if !r.status.success() && r.stderr.contains("not loaded") {
            return Ok(());
        }
        check(r, &argv)
    }

    fn is_active(&self, id: &str) -> Option<bool> {
        check_id(id).ok()?;
        let r = run_systemctl(&self.ctx, &is_active_argv(id), QUICK_TIMEOUT).ok()?;
        parse_is_active(&r.stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::tests::ctx_in;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn argv_builders() {
        assert_eq!(
            start_argv("-a_1"),
            ["systemctl", "--user", "start", "confab-sync@-a_1.service"]
        );
        assert_eq!(
            stop_argv("s", false),
            [
                "systemctl",
                "--user",
                "stop",
                "--no-block",
                "confab-sync@s.service"
            ]
        );
        assert_eq!(
            stop_argv("s", true),
            ["systemctl", "--user", "stop", "confab-sync@s.service"]
        );
        assert_eq!(
            is_active_argv("s"),
            ["systemctl", "--user", "is-active", "confab-sync@s.service"]
        );
        assert_eq!(
            daemon_reload_argv(),
            ["systemctl", "--user", "daemon-reload"]
        );
        assert_eq!(
            is_system_running_argv(),
            ["systemctl", "--user", "is-system-running"]
        );
    }

    #[test]
    fn manager_states_and_is_active_output() {
        for s in [
            "running\n",
            "degraded",
            "starting",
            "initializing",
            "maintenance",
            "stopping",
        ] {
            assert!(manager_state_answers(s), "{s}");
        }
        for s in ["offline\n", "unknown", "", "Failed to connect to bus"] {
            assert!(!manager_state_answers(s), "{s}");
        }
        assert_eq!(parse_is_active("active\n"), Some(true));
        assert_eq!(parse_is_active("deactivating\n"), Some(true));
        assert_eq!(parse_is_active("activating\n"), Some(true));
        assert_eq!(parse_is_active("inactive\n"), Some(false));
        assert_eq!(parse_is_active("failed\n"), Some(false));
        assert_eq!(parse_is_active(""), None);
    }

    #[test]
    fn runtime_dir_fallback_only_when_unset() {
        assert!(systemctl_env(0, Some("/run/user/0")).is_empty());
        // uid 4294967 has no /run/user dir anywhere we test.
        assert!(systemctl_env(4_294_967, None).is_empty());
    }

    #[test]
    fn exec_path_quoting() {
        assert_eq!(
            exec_path(Path::new("/usr/bin/confab-sync")).unwrap(),
            "/usr/bin/confab-sync"
        );
        assert_eq!(
            exec_path(Path::new("/opt/a b/x")).unwrap(),
            "\"/opt/a b/x\""
        );
        assert_eq!(exec_path(Path::new("/opt/100%/x")).unwrap(), "/opt/100%%/x");
        assert_eq!(exec_path(Path::new("/o;p/$x")).unwrap(), "\"/o;p/$x\"");
        for bad in ["relative/x", "/a\"b", "/a'b", "/a\\b", "/a\nb", "/a\tb"] {
            assert!(exec_path(Path::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rendered_unit_has_the_contract_settings() {
        let u = render_unit(Path::new("/usr/bin/confab-sync")).unwrap();
        assert!(!u.contains(BINARY_PLACEHOLDER));
        for line in [
            "ExecStart=/usr/bin/confab-sync run --session-id=%i",
            "Type=notify",
            "NotifyAccess=main",
            "WatchdogSec=90s",
            "TimeoutStopSec=45s",
            "Restart=on-failure",
            "RestartPreventExitStatus=78",
            "KillMode=mixed",
            "SyslogIdentifier=confab-sync",
            "CollectMode=inactive-or-failed",
        ] {
            assert!(u.lines().any(|l| l == line), "missing {line}");
        }
        assert!(!u.lines().any(|l| l.trim() == "[Install]"));
    }

    /// The pre-rendered copy that packages ship must not drift from the template.
    #[test]
    fn packaged_unit_is_the_template_rendered_for_usr_bin() {
        let packaged = include_str!("../../packaging/confab-sync@.service");
        assert_eq!(
            packaged,
            render_unit(Path::new("/usr/bin/confab-sync")).unwrap()
        );
    }

    #[test]
    fn install_is_idempotent_and_uninstall_removes_it() {
        let home = tempfile::tempdir().unwrap();
        let bin = Path::new("/usr/bin/confab-sync");
        assert!(!unit_path(home.path()).exists());
        assert!(install_unit(home.path(), bin).unwrap());
        assert!(!install_unit(home.path(), bin).unwrap());
        let meta = std::fs::metadata(unit_path(home.path())).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert!(install_unit(home.path(), Path::new("/opt/other/confab-sync")).unwrap());
        assert!(uninstall_unit(home.path()).unwrap());
        assert!(!uninstall_unit(home.path()).unwrap());
        // Only the unit went; nothing else was left behind in the directory.
        assert_eq!(std::fs::read_dir(unit_dir(home.path())).unwrap().count(), 0);
    }

    #[test]
    fn bad_ids_are_refused_before_systemctl_runs() {
        let home = tempfile::tempdir().unwrap();
        let m = SystemdManager::new(ctx_in(home.path()));
        assert!(m.start("../x").unwrap_err().contains("invalid session id"));
        assert!(m.stop("a b", false).is_err());
        assert_eq!(m.is_active("a/b"), None);
        assert!(!unit_path(home.path()).exists());
    }

    /// Runs `systemd-analyze --user verify` on the installed unit in a private HOME and runtime
    /// dir: works as root with no user manager running (verify only needs `XDG_RUNTIME_DIR` to
    /// exist). `--man=no`: the man page is not installed where tests run.
    fn verify(binary: &Path, instance: &str) -> (bool, String) {
        let home = tempfile::tempdir().unwrap();
        let runtime = tempfile::tempdir().unwrap();
        install_unit(home.path(), binary).unwrap();
        let instance_path = unit_dir(home.path()).join(unit_name(instance));
        let out = std::process::Command::new("systemd-analyze")
            .args(["--user", "verify", "--man=no"])
            .arg(&instance_path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("XDG_RUNTIME_DIR", runtime.path())
            .output()
            .expect("systemd-analyze is installed on build machines");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn installed_unit_passes_systemd_analyze_verify() {
        for id in ["test", "-starts-with-dash", "a_B-9"] {
            let (ok, stderr) = verify(Path::new("/bin/true"), id);
            assert!(ok && stderr.is_empty(), "{id}: {stderr}");
        }
    }

    #[test]
    fn verify_accepts_a_quoted_binary_path_and_catches_a_wrong_one() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("with space & 100%");
        std::fs::create_dir(&odd).unwrap();
        let bin = odd.join("confab-sync");
        std::fs::copy("/bin/true", &bin).unwrap();
        let (ok, stderr) = verify(&bin, "x");
        assert!(ok && stderr.is_empty(), "{stderr}");
        // The check is real: a missing binary is reported.
        let (ok, stderr) = verify(&odd.join("missing"), "x");
        assert!(!ok && stderr.contains("not executable"), "{stderr}");
    }
}

/// Against a real `systemd --user` (testing-systemd.md): the unit's hardening lets a notify
/// daemon run, start blocks until READY=1, a SIGKILLed daemon is restarted, exit 78 is not, and
/// stop is graceful. The test re-runs itself inside `systemd/user-manager-harness.sh`, which
/// provides private namespaces, journald and manager; the daemon is a small Python stand-in.
#[cfg(test)]
mod real_manager {
    use super::*;
    use crate::service::tests::ctx_in;
    use crate::service::{resolve_kind, ManagerChoice};
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    const FAKE_DAEMON: &str = r#"#!/usr/bin/python3
import os, signal, socket, sys, time
sid = sys.argv[2].split("=", 1)[1]
log = open(os.path.join(os.environ["HOME"], sid + ".events"), "a", buffering=1)
log.write("start %d %s\n" % (os.getpid(), " ".join(sys.argv[1:])))
if sid == "exit78":
    sys.exit(78)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
addr = os.environ["NOTIFY_SOCKET"]
def notify(msg):
    sock.sendto(msg.encode(), "\0" + addr[1:] if addr.startswith("@") else addr)
def stop(*_):
    notify("STOPPING=1")
    log.write("stopped\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
notify("READY=1\nSTATUS=fake daemon syncing")
while True:
    notify("WATCHDOG=1")
    time.sleep(0.2)
"#;

    fn events(home: &Path, id: &str) -> Vec<String> {
        std::fs::read_to_string(home.join(format!("{id}.events")))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn await_true(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn show(id: &str, prop: &str) -> String {
        let argv = systemctl(&["show", "-p", prop, "--value", &unit_name(id)]);
        run_bounded(&argv, &[], QUICK_TIMEOUT)
            .unwrap()
            .stdout
            .trim()
            .to_string()
    }

    #[test]
    fn units_run_under_a_real_user_manager() {
        if std::env::var_os("CONFAB_HARNESS_INSIDE").is_some() {
            return inside(Path::new(&std::env::var_os("HOME").unwrap()));
        }
        let home = tempfile::tempdir().unwrap();
        let bin = home.path().join("bin/fake-confab-sync");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::write(&bin, FAKE_DAEMON).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let harness = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/systemd/user-manager-harness.sh"
        );
        let out = std::process::Command::new(harness)
            .arg(home.path())
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "service::systemd::real_manager::units_run_under_a_real_user_manager",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("1 passed"),
            "the inner run must have run the test: {text}"
        );
    }

    fn inside(home: &Path) {
        let mut ctx = ctx_in(home);
        ctx.binary = home.join("bin/fake-confab-sync");
        ctx.uid = 0;
        assert_eq!(
            resolve_kind(ManagerChoice::Auto, &ctx),
            ManagerKind::Systemd
        );
        let m = SystemdManager::new(ctx);
        assert!(!unit_path(home).exists());

        // Start installs the missing template, blocks until READY=1, and passes one argument.
        let id = "-dash";
        m.start(id).unwrap();
        assert!(unit_path(home).is_file());
        assert_eq!(m.is_active(id), Some(true));
        let ev = events(home, id);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert!(ev[0].ends_with(" run --session-id=-dash"), "{ev:?}");
        assert_eq!(show(id, "StatusText"), "fake daemon syncing");
        assert_eq!(show(id, "WatchdogUSec"), "1min 30s");

        // A SIGKILLed daemon comes back (Restart=on-failure, RestartSec=2s).
        let kill = systemctl(&["kill", "--signal=SIGKILL", &unit_name(id)]);
        assert!(run_bounded(&kill, &[], QUICK_TIMEOUT)
            .unwrap()
            .status
            .success());
        await_true("restart", || {
            events(home, id).len() == 2 && m.is_active(id) == Some(true)
        });

        // Stop is graceful (SIGTERM, the daemon's own clean exit) and waits for it.
        m.stop(id, true).unwrap();
        assert_eq!(events(home, id).last().map(String::as_str), Some("stopped"));
        assert_eq!(m.is_active(id), Some(false));
        m.stop(id, false).unwrap(); // stopping a stopped (collected) unit is fine

        // Exit 78 fails the start and is not restarted.
        let e = m.start("exit78").unwrap_err();
        assert!(e.contains("confab-sync@exit78.service"), "{e}");
        std::thread::sleep(Duration::from_secs(4)); // two RestartSec periods: no second start
        assert_eq!(events(home, "exit78").len(), 1);
        assert_eq!(m.is_active("exit78"), Some(false));
    }
}
