//! The launchd manager (macOS): one agent per session, label `dev.confab.sync.<ID>`, plist
//! `~/Library/LaunchAgents/dev.confab.sync.<ID>.plist`, loaded with `launchctl bootstrap
//! gui/<uid>` and removed with `launchctl bootout gui/<uid>/<label>`.
//!
//! Invariants:
//! - `ProgramArguments` is `[binary, "run", "--session-id=<ID>"]`: the id is one argument, as
//!   under systemd, so an id beginning with `-` is never a flag.
//! - Every string in the plist is XML-escaped; a value XML cannot carry (control characters) is
//!   refused instead of written.
//! - `KeepAlive.SuccessfulExit=false` restarts the daemon after a crash but not after a clean
//!   exit (shutdown, session end). launchd has no equivalent of `RestartPreventExitStatus=78`;
//!   `ThrottleInterval` keeps a daemon that exits 78 from spinning (see launchd/README.md).
//! - `ExitTimeOut` is above the daemon's 30 s shutdown budget so launchd does not SIGKILL a
//!   final sync (its default is 20 s).
//! - The plist is removed when the session's daemon is stopped through us; plists left behind
//!   by a crash or a reboot are found by [`stale_plists`].
//! - `launchctl` is only ever run on macOS; elsewhere the manager returns an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{check_id, run_args, ManagerKind, ServiceContext, ServiceManager};

/// Prefix of every label (and plist file name).
pub const LABEL_PREFIX: &str = "dev.confab.sync.";
/// Seconds launchd waits after SIGTERM before SIGKILL (daemon budget 30 s + margin).
pub const EXIT_TIMEOUT_S: u32 = 45;
/// Minimum seconds between two launches of one agent.
pub const THROTTLE_INTERVAL_S: u32 = 10;

/// `dev.confab.sync.<ID>`
pub fn label(id: &str) -> String {
    format!("{LABEL_PREFIX}{id}")
}

/// `~/Library/LaunchAgents`
pub fn agents_dir(home: &Path) -> PathBuf {
    home.join("Library/LaunchAgents")
}

/// `~/Library/LaunchAgents/dev.confab.sync.<ID>.plist`
pub fn plist_path(home: &Path, id: &str) -> PathBuf {
    agents_dir(home).join(format!("{}.plist", label(id)))
}

/// `gui/<uid>`: the per-user GUI domain the agents live in.
pub fn domain(uid: u32) -> String {
    format!("gui/{uid}")
}

/// `gui/<uid>/<label>`: a loaded agent.
pub fn service_target(uid: u32, id: &str) -> String {
    format!("gui/{uid}/{}", label(id))
}

/// `launchctl bootstrap gui/<uid> <plist>`
pub fn bootstrap_argv(uid: u32, plist: &Path) -> Vec<String> {
    vec![
        "launchctl".into(),
        "bootstrap".into(),
        domain(uid),
        plist.to_string_lossy().into_owned(),
    ]
}

/// `launchctl bootout gui/<uid>/<label>`
pub fn bootout_argv(uid: u32, id: &str) -> Vec<String> {
    vec![
        "launchctl".into(),
        "bootout".into(),
        service_target(uid, id),
    ]
}

/// `launchctl print gui/<uid>/<label>`
pub fn print_argv(uid: u32, id: &str) -> Vec<String> {
    vec!["launchctl".into(), "print".into(), service_target(uid, id)]
}

/// Whether `launchctl print` output shows a running process (`state = running`).
pub fn print_says_running(stdout: &str) -> bool {
    stdout.lines().any(|l| {
        let l = l.trim();
        l.strip_prefix("state")
            .map(|r| r.trim_start().strip_prefix('=').map(str::trim) == Some("running"))
            .unwrap_or(false)
    })
}

/// Escapes text for an XML element. Refuses characters XML 1.0 cannot represent at all.
fn xml_text(s: &str) -> Result<String, String> {
    if let Some(c) = s
        .chars()
        .find(|&c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(format!("{s:?} contains {c:?}, which a plist cannot hold"));
    }
    Ok(html_escape::encode_text(s).into_owned())
}

fn path_text(p: &Path) -> Result<String, String> {
    xml_text(
        p.to_str()
            .ok_or_else(|| format!("path {p:?} is not UTF-8"))?,
    )
}

/// Like [`render_plist`] but reports values that cannot go in a plist.
pub fn try_render_plist(
    id: &str,
    binary: &Path,
    log_path: &Path,
    env: &BTreeMap<String, String>,
) -> Result<String, String> {
    check_id(id)?;
    let log = path_text(log_path)?;
    let mut args = vec![path_text(binary)?];
    for a in run_args(id) {
        args.push(xml_text(&a)?);
    }
    let mut x = String::from(concat!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
        "<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" ",
        "\"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n",
        "<plist version=\"1.0\">\n<dict>\n",
    ));
    let kv = |x: &mut String, k: &str, v: &str| {
        x.push_str(&format!("\t<key>{k}</key>\n\t{v}\n"));
    };
    kv(
        &mut x,
        "Label",
        &format!("<string>{}</string>", xml_text(&label(id))?),
    );
    x.push_str("\t<key>ProgramArguments</key>\n\t<array>\n");
    for a in &args {
        x.push_str(&format!("\t\t<string>{a}</string>\n"));
    }
    x.push_str("\t</array>\n");
    kv(&mut x, "RunAtLoad", "<true/>");
    kv(
        &mut x,
        "KeepAlive",
        "<dict>\n\t\t<key>SuccessfulExit</key>\n\t\t<false/>\n\t</dict>",
    );
    kv(&mut x, "ProcessType", "<string>Background</string>");
    kv(
        &mut x,
        "ExitTimeOut",
        &format!("<integer>{EXIT_TIMEOUT_S}</integer>"),
    );
    kv(
        &mut x,
        "ThrottleInterval",
        &format!("<integer>{THROTTLE_INTERVAL_S}</integer>"),
    );
    // 0077 as launchd wants it: a decimal integer.
    kv(&mut x, "Umask", &format!("<integer>{}</integer>", 0o077));
    kv(
        &mut x,
        "StandardOutPath",
        &format!("<string>{log}</string>"),
    );
    kv(
        &mut x,
        "StandardErrorPath",
        &format!("<string>{log}</string>"),
    );
    if !env.is_empty() {
        x.push_str("\t<key>EnvironmentVariables</key>\n\t<dict>\n");
        for (k, v) in env {
            x.push_str(&format!(
                "\t\t<key>{}</key>\n\t\t<string>{}</string>\n",
                xml_text(k)?,
                xml_text(v)?
            ));
        }
        x.push_str("\t</dict>\n");
    }
    x.push_str("</dict>\n</plist>\n");
    Ok(x)
}

/// The agent's plist. Panics only if a value cannot be represented in XML (an invalid id, or a
/// control character in a path or variable); callers that take such values from outside use
/// [`try_render_plist`].
pub fn render_plist(
    id: &str,
    binary: &Path,
    log_path: &Path,
    env: &BTreeMap<String, String>,
) -> String {
    try_render_plist(id, binary, log_path, env).unwrap_or_else(|e| panic!("render_plist: {e}"))
}

/// Plists in `dir` named `dev.confab.sync.<ID>.plist` (valid id) whose session is not live,
/// sorted. Other files are never returned.
pub fn stale_plists(dir: &Path, is_live: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_prefix(LABEL_PREFIX)?.strip_suffix(".plist")?;
            (check_id(id).is_ok() && !is_live(id)).then(|| e.path())
        })
        .collect();
    out.sort();
    out
}

/// The `launchd` manager.
pub struct LaunchdManager {
    ctx: ServiceContext,
}

impl LaunchdManager {
    pub fn new(ctx: ServiceContext) -> LaunchdManager {
        LaunchdManager { ctx }
    }

    /// Writes the session's plist (0600) and creates its log directory (0700).
    pub fn write_plist(&self, id: &str) -> Result<PathBuf, String> {
        let log = self.ctx.log_file(id);
        let text = try_render_plist(id, &self.ctx.binary, &log, &self.ctx.env)?;
        if let Some(d) = log.parent() {
            super::detached::create_private_dir(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        let path = plist_path(self.ctx.home(), id);
        let dir = agents_dir(self.ctx.home());
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        super::write_atomic(&path, text.as_bytes(), 0o600)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }

    /// Boots out and deletes the plists of sessions that are not running. Returns what was
    /// removed.
    pub fn remove_stale(&self, is_live: impl Fn(&str) -> bool) -> Vec<PathBuf> {
        let stale = stale_plists(&agents_dir(self.ctx.home()), is_live);
        for p in &stale {
            if let Some(id) = id_of(p) {
                let _ = self.launchctl(&bootout_argv(self.ctx.uid, &id), false);
            }
            let _ = std::fs::remove_file(p);
        }
        stale
    }

    #[cfg(target_os = "macos")]
    fn launchctl(&self, argv: &[String], wait: bool) -> Result<Option<super::Ran>, String> {
        use std::time::Duration;
        if !wait {
            // bootout waits for the job to exit (up to ExitTimeOut); a hook must not. The
            // child is not waited for: it is reparented to launchd when the hook exits.
            use std::os::unix::process::CommandExt;
            let (prog, args) = argv.split_first().ok_or("empty command")?;
            std::process::Command::new(prog)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|e| format!("cannot run launchctl: {e}"))?;
            return Ok(None);
        }
        let timeout = Duration::from_secs(u64::from(EXIT_TIMEOUT_S) + 15);
        super::run_bounded(argv, &[], timeout).map(Some)
    }

    #[cfg(not(target_os = "macos"))]
    fn launchctl(&self, _argv: &[String], _wait: bool) -> Result<Option<super::Ran>, String> {
        Err(NOT_MACOS.to_string())
    }
}

#[cfg(not(target_os = "macos"))]
const NOT_MACOS: &str = "launchd is only available on macOS";

fn id_of(plist: &Path) -> Option<String> {
    let name = plist.file_name()?.to_str()?;
    Some(
        name.strip_prefix(LABEL_PREFIX)?
            .strip_suffix(".plist")?
            .to_string(),
    )
}

impl ServiceManager for LaunchdManager {
    fn kind(&self) -> ManagerKind {
        ManagerKind::Launchd
    }

    #[cfg(target_os = "macos")]
    fn start(&self, id: &str) -> Result<(), String> {
        check_id(id)?;
        let plist = self.write_plist(id)?;
        let argv = bootstrap_argv(self.ctx.uid, &plist);
        let r = self
            .launchctl(&argv, true)?
            .ok_or("launchctl did not run")?;
        // Already loaded (error 5/37 depending on the macOS version): fine if it runs.
        if r.status.success() || self.is_active(id) == Some(true) {
            return Ok(());
        }
        Err(format!(
            "{} failed ({}): {}",
            argv.join(" "),
            r.status,
            r.first_line()
        ))
    }

    #[cfg(not(target_os = "macos"))]
    fn start(&self, id: &str) -> Result<(), String> {
        check_id(id)?;
        Err(NOT_MACOS.to_string())
    }

    fn stop(&self, id: &str, wait: bool) -> Result<(), String> {
        check_id(id)?;
        let argv = bootout_argv(self.ctx.uid, id);
        let result = self.launchctl(&argv, wait);
        if cfg!(not(target_os = "macos")) {
            return result.map(drop);
        }
        // bootout reads nothing from the file: the plist can go now, so a login does not
        // start a daemon for a session that ended.
        let _ = std::fs::remove_file(plist_path(self.ctx.home(), id));
        match result? {
            None => Ok(()), // requested without waiting
            Some(r) if r.status.success() => Ok(()),
            // Exit 3 / 113: no such service, already gone.
            Some(r) if matches!(r.status.code(), Some(3) | Some(113)) => Ok(()),
            Some(r) => Err(format!(
                "{} failed ({}): {}",
                argv.join(" "),
                r.status,
                r.first_line()
            )),
        }
    }

    fn is_active(&self, id: &str) -> Option<bool> {
        check_id(id).ok()?;
        let r = self.launchctl(&print_argv(self.ctx.uid, id), true).ok()??;
        match r.status.code() {
            Some(0) => Some(print_says_running(&r.stdout)),
            Some(113) => Some(false), // "Could not find service"
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::tests::ctx_in;

    /// Parses `plist` with Python's plistlib and returns the dict as JSON.
    fn parse_with_python(plist: &str) -> serde_json::Value {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.plist");
        std::fs::write(&file, plist).unwrap();
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg("import json,plistlib,sys; print(json.dumps(plistlib.load(open(sys.argv[1],'rb'))))")
            .arg(&file)
            .output()
            .expect("python3 is installed on build machines");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    #[test]
    fn plist_parses_with_the_expected_fields() {
        let env = BTreeMap::from([
            ("CONFAB_SYNC_INTERVAL_MS".to_string(), "2000".to_string()),
            (
                "CONFAB_CLAUDE_DIR".to_string(),
                "/Users/me/a&b <c>".to_string(),
            ),
        ]);
        let text = render_plist(
            "-abc_1",
            Path::new("/Applications/My & <Tools>/confab-sync"),
            Path::new("/Users/me/.confab/logs/-abc_1.log"),
            &env,
        );
        let d = parse_with_python(&text);
        assert_eq!(d["Label"], "dev.confab.sync.-abc_1");
        assert_eq!(
            d["ProgramArguments"],
            serde_json::json!([
                "/Applications/My & <Tools>/confab-sync",
                "run",
                "--session-id=-abc_1"
            ])
        );
        assert_eq!(d["KeepAlive"], serde_json::json!({"SuccessfulExit": false}));
        assert_eq!(d["RunAtLoad"], true);
        assert_eq!(d["ProcessType"], "Background");
        assert_eq!(d["ExitTimeOut"], 45);
        assert_eq!(d["Umask"], 63);
        assert_eq!(d["StandardOutPath"], "/Users/me/.confab/logs/-abc_1.log");
        assert_eq!(d["StandardErrorPath"], "/Users/me/.confab/logs/-abc_1.log");
        assert_eq!(
            d["EnvironmentVariables"],
            serde_json::json!({"CONFAB_CLAUDE_DIR": "/Users/me/a&b <c>",
                               "CONFAB_SYNC_INTERVAL_MS": "2000"})
        );
    }

    #[test]
    fn plist_without_env_has_no_environment_dict() {
        let text = render_plist("s", Path::new("/b"), Path::new("/l"), &BTreeMap::new());
        let d = parse_with_python(&text);
        assert!(d.get("EnvironmentVariables").is_none());
        assert!(!text.contains("EnvironmentVariables"));
    }

    #[test]
    fn unrepresentable_values_are_refused() {
        let none = BTreeMap::new();
        assert!(try_render_plist("a/b", Path::new("/b"), Path::new("/l"), &none).is_err());
        assert!(try_render_plist("s", Path::new("/b\u{1}"), Path::new("/l"), &none).is_err());
        let env = BTreeMap::from([("K".to_string(), "v\u{7}".to_string())]);
        assert!(try_render_plist("s", Path::new("/b"), Path::new("/l"), &env).is_err());
    }

    #[test]
    fn argv_builders_and_names() {
        let home = Path::new("/Users/me");
        assert_eq!(label("x"), "dev.confab.sync.x");
        assert_eq!(
            plist_path(home, "x"),
            Path::new("/Users/me/Library/LaunchAgents/dev.confab.sync.x.plist")
        );
        assert_eq!(
            bootstrap_argv(501, &plist_path(home, "x")),
            [
                "launchctl",
                "bootstrap",
                "gui/501",
                "/Users/me/Library/LaunchAgents/dev.confab.sync.x.plist"
            ]
        );
        assert_eq!(
            bootout_argv(501, "x"),
            ["launchctl", "bootout", "gui/501/dev.confab.sync.x"]
        );
        assert_eq!(
            print_argv(501, "x"),
            ["launchctl", "print", "gui/501/dev.confab.sync.x"]
        );
    }

    #[test]
    fn print_output_state() {
        let running = "gui/501/dev.confab.sync.x = {\n\tactive count = 1\n\tstate = running\n}";
        assert!(print_says_running(running));
        assert!(!print_says_running(
            "gui/501/x = {\n\tstate = not running\n}"
        ));
        assert!(!print_says_running(""));
    }

    #[test]
    fn stale_plists_are_ours_and_not_live() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "dev.confab.sync.live.plist",
            "dev.confab.sync.dead.plist",
            "dev.confab.sync.-dead2.plist",
            "dev.confab.sync.bad id.plist",
            "com.other.agent.plist",
            "dev.confab.sync.dead.plist.tmp",
        ] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let stale = stale_plists(dir.path(), |id| id == "live");
        let names: Vec<_> = stale
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["dev.confab.sync.-dead2.plist", "dev.confab.sync.dead.plist"]
        );
        assert!(stale_plists(&dir.path().join("missing"), |_| false).is_empty());
    }

    #[test]
    fn write_plist_creates_private_files() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let m = LaunchdManager::new(ctx_in(home.path()));
        let p = m.write_plist("s1").unwrap();
        assert_eq!(p, plist_path(home.path(), "s1"));
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let d = parse_with_python(&std::fs::read_to_string(&p).unwrap());
        assert_eq!(
            d["StandardOutPath"],
            home.path().join(".confab/logs/s1.log").to_str().unwrap()
        );
        let logs = std::fs::metadata(home.path().join(".confab/logs")).unwrap();
        assert_eq!(logs.permissions().mode() & 0o777, 0o700);
    }

    #[cfg(not(target_os = "macos"))]
    #[test]
    fn launchctl_is_never_run_off_macos() {
        let home = tempfile::tempdir().unwrap();
        let m = LaunchdManager::new(ctx_in(home.path()));
        assert_eq!(
            m.start("s").unwrap_err(),
            "launchd is only available on macOS"
        );
        assert_eq!(
            m.stop("s", true).unwrap_err(),
            "launchd is only available on macOS"
        );
        assert_eq!(m.is_active("s"), None);
        assert!(!plist_path(home.path(), "s").exists());
    }
}
