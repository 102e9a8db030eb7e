//! Process liveness by pid *and* start token (sync-engine §11, H8), lock probing without taking the
//! lock (§10), and Claude parent detection (§10 "Parent PID").
//!
//! Invariants: nothing here ever takes a lock or sends a real signal (`kill(pid, 0)` only); a reused
//! pid never looks alive when a start token was recorded; a zombie counts as dead (it has exited, it
//! just has not been reaped). Everything reads `/proc` on Linux; elsewhere start tokens and lock
//! probing are unavailable (`None` / `false`) and callers fall back to the state's pid.

use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;

/// `linux:<boot_id>:<starttime>` for a live pid (`None` when it does not exist or elsewhere than Linux).
pub fn start_token(pid: i64) -> Option<String> {
    if pid <= 0 {
        return None;
    }
    let start = proc_stat(pid)?.starttime;
    let boot_id = boot_id()?;
    Some(format!("linux:{boot_id}:{start}"))
}

/// `pid > 0`, `kill(pid,0)` ok or EPERM, and the token (when given) matches.
///
/// Without a token (states written by the existing client) `kill` alone decides and EPERM means dead:
/// a process of another user is not one of ours.
pub fn alive(pid: i64, token: Option<&str>) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    let exists = match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => token.is_some(),
        Err(_) => false,
    };
    if !exists || is_zombie(pid) {
        return false;
    }
    match token {
        Some(t) => start_token(pid).as_deref() == Some(t),
        None => true,
    }
}

/// True when some process holds a lock on `lock_path` (read from /proc/locks; never takes it).
pub fn lock_is_held(lock_path: &Path) -> bool {
    !lock_holders(lock_path).is_empty()
}

/// The pid recorded for a holder of the lock on `lock_path`, if any. OFD locks record no pid (-1)
/// and give `None` even though [`lock_is_held`] is true.
pub fn lock_holder_pid(lock_path: &Path) -> Option<i64> {
    lock_holders(lock_path).into_iter().find(|&p| p > 0)
}

#[cfg(not(target_os = "linux"))]
fn lock_holders(_lock_path: &Path) -> Vec<i64> {
    Vec::new()
}

/// Pids (as /proc/locks records them) of the granted locks on the file `lock_path` names now.
#[cfg(target_os = "linux")]
fn lock_holders(lock_path: &Path) -> Vec<i64> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(lock_path) else {
        return Vec::new();
    };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    let dev = meta.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let mut holders = Vec::new();
    for entry in locks.lines().filter_map(parse_lock_line) {
        if entry.ino != meta.ino() {
            continue;
        }
        // Some filesystems (btrfs subvolumes, overlayfs) report a different device in /proc/locks
        // than stat does; then the holder's open files decide, and an unreadable holder counts as
        // holding it (a false "held" never deletes a live daemon's files).
        let same_dev = (entry.major, entry.minor) == (major, minor);
        if same_dev || holder_has_open(entry.pid, dev, meta.ino()).unwrap_or(true) {
            holders.push(entry.pid);
        }
    }
    holders
}

/// One granted lock from /proc/locks.
#[cfg(target_os = "linux")]
#[derive(Debug, PartialEq, Eq)]
struct LockEntry {
    pid: i64,
    major: u64,
    minor: u64,
    ino: u64,
}

#[cfg(target_os = "linux")]
/// Parses `1: FLOCK  ADVISORY  WRITE 1234 08:02:131090 0 EOF`. Waiters (`1: -> FLOCK ...`) hold
/// nothing and give `None`.
fn parse_lock_line(line: &str) -> Option<LockEntry> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.get(1) == Some(&"->") {
        return None;
    }
    let pid = fields.get(4)?.parse().ok()?;
    let mut id = fields.get(5)?.split(':');
    let major = u64::from_str_radix(id.next()?, 16).ok()?;
    let minor = u64::from_str_radix(id.next()?, 16).ok()?;
    let ino = id.next()?.parse().ok()?;
    Some(LockEntry {
        pid,
        major,
        minor,
        ino,
    })
}

#[cfg(target_os = "linux")]
/// Whether `pid` has a descriptor open on the file (dev, ino); `None` when that cannot be read.
fn holder_has_open(pid: i64, dev: u64, ino: u64) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    if pid <= 0 {
        return None;
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        fds.flatten()
            .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino)),
    )
}

/// The fields of /proc/<pid>/stat that we use.
struct ProcStat {
    state: char,
    ppid: i64,
    starttime: u64,
}

/// Reads /proc/<pid>/stat. The command name (field 2) may contain spaces and `)`, so fields are
/// counted after the LAST `)`: field 3 (state) is the first one there.
fn proc_stat(pid: i64) -> Option<ProcStat> {
    if pid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        starttime: fields.get(22 - 3)?.parse().ok()?,
    })
}

fn boot_id() -> Option<String> {
    static BOOT_ID: LazyLock<Option<String>> = LazyLock::new(|| {
        let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let id = id.trim().to_string();
        (!id.is_empty()).then_some(id)
    });
    BOOT_ID.clone()
}

/// A zombie (`Z`) or dead (`X`) process has exited; `kill(pid, 0)` still succeeds on it.
fn is_zombie(pid: i64) -> bool {
    proc_stat(pid).is_some_and(|s| matches!(s.state, 'Z' | 'X' | 'x'))
}

/// The parent pid of `pid` (`None` when it is gone).
pub fn parent_of(pid: i64) -> Option<i64> {
    proc_stat(pid).map(|s| s.ppid).filter(|&p| p > 0)
}

/// The command line of `pid` with NULs turned into spaces (`None` when unreadable, e.g. a kernel
/// thread or a process that is gone).
pub fn cmdline(pid: i64) -> Option<String> {
    if pid <= 0 {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text = String::from_utf8_lossy(&raw);
    Some(text.trim_end_matches('\0').replace('\0', " "))
}

static CLAUDE_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)(?-u:\b)claude(?-u:\b)").expect("valid regex"));

/// Whether a command line looks like Claude Code (`acceptance.md` K6).
pub fn is_claude_command(cmdline: &str) -> bool {
    CLAUDE_RE.is_match(cmdline)
}

/// The Claude process to watch for this hook: our parent if its command line matches, else our
/// grandparent if it matches, else `(0, None)` (no monitoring). Also returns its start token.
pub fn detect_claude_parent() -> (i64, Option<String>) {
    detect_claude_parent_of(i64::from(std::process::id()))
}

/// [`detect_claude_parent`] for the process `pid` instead of ourselves.
pub fn detect_claude_parent_of(pid: i64) -> (i64, Option<String>) {
    let mut current = pid;
    for _ in 0..2 {
        let Some(parent) = parent_of(current) else {
            break;
        };
        if cmdline(parent).is_some_and(|c| is_claude_command(&c)) {
            return (parent, start_token(parent));
        }
        current = parent;
    }
    (0, None)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    fn own_pid() -> i64 {
        i64::from(std::process::id())
    }

    /// Kills and reaps the child even when an assertion fails.
    struct Reaped(Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn wait_until<T>(mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "condition not reached in 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Direct children of `pid`, found by scanning /proc.
    fn children_of(pid: i64) -> Vec<i64> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
            .filter(|&p| parent_of(p) == Some(pid))
            .collect()
    }

    #[test]
    fn k6_claude_regex() {
        for m in [
            "claude",
            "/usr/local/bin/claude",
            "/Applications/Claude.app/Contents/MacOS/Claude",
            "claude --help",
            "Claude",
            "claude-code",
        ] {
            assert!(is_claude_command(m), "{m:?} must match");
        }
        for n in [
            "claudette",
            "claudesmith",
            "preclaude",
            "myclaudeapp",
            "",
            "/bin/bash",
        ] {
            assert!(!is_claude_command(n), "{n:?} must not match");
        }
    }

    #[test]
    fn start_token_format() {
        let t = start_token(own_pid()).expect("own token");
        let parts: Vec<&str> = t.split(':').collect();
        assert_eq!(parts.len(), 3, "{t}");
        assert_eq!(parts[0], "linux");
        assert!(!parts[1].is_empty());
        assert!(parts[2].parse::<u64>().is_ok(), "{t}");
        assert_eq!(start_token(own_pid()), Some(t));
        assert_eq!(start_token(0), None);
        assert_eq!(start_token(-1), None);
        assert_eq!(start_token(999_999_999), None);
    }

    #[test]
    fn stat_parsing_uses_last_paren() {
        let mut line = String::from("42 (a) b) c) S 7");
        for i in 5..=21 {
            line.push_str(&format!(" {i}"));
        }
        line.push_str(" 123456 23 24");
        let s = parse_stat(&line).unwrap();
        assert_eq!((s.state, s.ppid, s.starttime), ('S', 7, 123456));
        assert!(parse_stat("42 (x) S").is_none());
    }

    #[test]
    fn c6_c7_alive() {
        let me = own_pid();
        let token = start_token(me).unwrap();
        assert!(alive(me, Some(&token)));
        assert!(alive(me, None));
        for bad in [999_999_999, 0, -1, i64::from(i32::MAX) + 1] {
            assert!(!alive(bad, None), "{bad}");
            assert!(!alive(bad, Some(&token)), "{bad}");
        }
        // Parent (C7): our parent is alive, with its own token.
        let ppid = i64::from(nix::unistd::getppid().as_raw());
        assert!(alive(ppid, start_token(ppid).as_deref()));
    }

    #[test]
    fn x15_wrong_token_is_dead() {
        let child = Reaped(Command::new("sleep").arg("30").spawn().unwrap());
        let pid = i64::from(child.0.id());
        let real = start_token(pid).unwrap();
        assert!(alive(pid, Some(&real)));
        let wrong = format!("{real}0");
        assert!(!alive(pid, Some(&wrong)));
        assert!(!alive(pid, Some("linux:other-boot:1")));
    }

    #[test]
    fn killed_unreaped_child_is_dead() {
        // A21: a killed parent that nobody has reaped yet is a zombie, which kill(0) still finds.
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = i64::from(child.id());
        let token = start_token(pid).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::SIGKILL,
        )
        .unwrap();
        wait_until(|| is_zombie(pid).then_some(()));
        assert!(!alive(pid, Some(&token)));
        assert!(!alive(pid, None));
        child.wait().unwrap();
        assert!(!alive(pid, Some(&token)));
    }

    #[test]
    fn lock_probe_sees_flock_and_never_takes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.lock");
        let f = std::fs::File::create(&path).unwrap();
        assert!(!lock_is_held(&path));
        assert_eq!(lock_holder_pid(&path), None);
        assert_eq!(
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        assert!(lock_is_held(&path));
        assert_eq!(lock_holder_pid(&path), Some(own_pid()));
        // Probing did not take it: another descriptor still cannot.
        let other = std::fs::File::open(&path).unwrap();
        assert_ne!(
            unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        // A different file in the same directory is not held.
        let path2 = tmp.path().join("t.lock");
        std::fs::File::create(&path2).unwrap();
        assert!(!lock_is_held(&path2));
        drop(f);
        assert!(!lock_is_held(&path));
        assert!(!lock_is_held(&tmp.path().join("missing.lock")));
    }

    #[test]
    fn lock_probe_sees_another_process() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.lock");
        std::fs::File::create(&path).unwrap();
        let child = Reaped(
            // `-o`: the command does not inherit the locked descriptor, so killing flock(1) frees it.
            Command::new("flock")
                .args(["-x", "-o"])
                .arg(&path)
                .args(["sleep", "30"])
                .spawn()
                .expect("flock(1) from util-linux"),
        );
        let holder = wait_until(|| lock_holder_pid(&path));
        assert_eq!(holder, i64::from(child.0.id()));
        assert!(lock_is_held(&path));
        drop(child);
        wait_until(|| (!lock_is_held(&path)).then_some(()));
    }

    #[test]
    fn lock_line_parsing() {
        assert_eq!(
            parse_lock_line("1: FLOCK  ADVISORY  WRITE 1234 08:02:131090 0 EOF"),
            Some(LockEntry {
                pid: 1234,
                major: 8,
                minor: 2,
                ino: 131090
            })
        );
        assert_eq!(
            parse_lock_line("2: OFDLCK ADVISORY  WRITE -1 00:2d:77 0 EOF")
                .map(|e| (e.pid, e.minor)),
            Some((-1, 0x2d))
        );
        assert_eq!(
            parse_lock_line("1: -> FLOCK  ADVISORY  WRITE 1235 08:02:131090 0 EOF"),
            None
        );
        assert_eq!(parse_lock_line("garbage"), None);
    }

    #[test]
    fn cmdline_and_parent_of_self() {
        let me = own_pid();
        let cl = cmdline(me).unwrap();
        assert!(!cl.contains('\0'));
        assert!(!cl.is_empty());
        assert_eq!(
            parent_of(me),
            Some(i64::from(nix::unistd::getppid().as_raw()))
        );
        assert_eq!(parent_of(999_999_999), None);
    }

    /// A shell started as `<tmp>/claude`, so its command line matches the Claude regex.
    fn claude_shell(tmp: &Path, script: &str) -> Reaped {
        let exe = tmp.join("claude");
        std::os::unix::fs::symlink("/bin/sh", &exe).unwrap();
        Reaped(Command::new(&exe).arg("-c").arg(script).spawn().unwrap())
    }

    fn sleeper_under(root: i64, depth: usize) -> i64 {
        wait_until(|| {
            let mut level = vec![root];
            for _ in 0..depth {
                level = level.iter().flat_map(|&p| children_of(p)).collect();
            }
            level
                .into_iter()
                .find(|&p| cmdline(p).is_some_and(|c| c.starts_with("sleep")))
        })
    }

    #[test]
    fn detects_claude_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let shell = claude_shell(tmp.path(), "sleep 30; true");
        let sh = i64::from(shell.0.id());
        let sleeper = sleeper_under(sh, 1);
        assert_eq!(detect_claude_parent_of(sleeper), (sh, start_token(sh)));
        assert!(start_token(sh).is_some());
    }

    #[test]
    fn detects_claude_grandparent_but_not_further() {
        let tmp = tempfile::tempdir().unwrap();
        let shell = claude_shell(tmp.path(), "/bin/sh -c 'sleep 30; true'; true");
        let sh = i64::from(shell.0.id());
        let sleeper = sleeper_under(sh, 2);
        assert_eq!(detect_claude_parent_of(sleeper).0, sh);

        let tmp2 = tempfile::tempdir().unwrap();
        let shell2 = claude_shell(
            tmp2.path(),
            "/bin/sh -c '/bin/sh -c \"sleep 30; true\"; true'; true",
        );
        let sleeper2 = sleeper_under(i64::from(shell2.0.id()), 3);
        assert_eq!(detect_claude_parent_of(sleeper2), (0, None));
    }

    #[test]
    fn test_runner_has_no_claude_parent_unless_named_so() {
        let (pid, token) = detect_claude_parent();
        if pid == 0 {
            assert_eq!(token, None);
        } else {
            assert!(is_claude_command(&cmdline(pid).unwrap()));
        }
    }
}
