//! Issue 6, "Real systemd, in CI": the real `confab-sync` binary as the real
//! `confab-sync@<ID>.service` under a private `systemd --user` and journald
//! (/work/shared/spec/testing-systemd.md), syncing to the fake backend.
//!
//! The test re-runs itself inside `systemd/user-manager-harness.sh`, which gives it new mount and
//! PID namespaces (nothing outlives the run, even after a `kill -9`), a tmpfs `/run`, a volatile
//! journald and a user manager in a cgroup of its own. The outer half only checks that the inner
//! half ran and passed: when the harness cannot start (not root, no systemd) the test FAILS, it
//! never skips, so CI (root, systemd 252) always runs it.
//!
//! The inner half shows, with the unit's own settings plus a drop-in that shortens the watchdog:
//! (e) `systemd-analyze --user verify` accepts the installed unit and drop-in;
//! (a) start → active, `StatusText` follows progress, appended lines reach the backend;
//! (b) the daemon honours `WATCHDOG_USEC` while idle, and a hung loop is killed by the watchdog
//!     and restarted, with the lines appended meanwhile arriving exactly once;
//! (c) stop → final sync and one `session_end` event, unit inactive, state/inbox/lock gone;
//! (d) the journal files the daemon's records under the user unit with `CONFAB_SESSION=<ID>` and
//!     `SYSLOG_IDENTIFIER=confab-sync`, and never the API key;
//! (f) `hook session-start` (`CONFAB_SERVICE_MANAGER=systemd`) starts the unit, a second one does
//!     not start another, `hook session-end` stops it with a final sync and one event, and
//!     `confab-sync logs <ID>` reads the daemon's lines back from the journal.
//!
//! The hang comes from the `test-faults` fault file (proving that pings come from the loop
//! itself); a build without that feature freezes the daemon with SIGSTOP instead, so the watchdog
//! part runs either way (systemd follows its watchdog signal with SIGCONT).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use confab_sync::inbox::{self, HookInput, InboxEvent};
use confab_sync::paths::Paths;
use confab_sync::sdnotify::STOPPING_STATUS;
use confab_sync::service::systemd::{install_unit, unit_dir, unit_name};
use confab_sync::state::{self, State};

use crate::harness::{append, complete_lines, lines, write_lines, BIN};
use crate::support::fake::{Fake, Route, Times, API_KEY};

const HARNESS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/systemd/user-manager-harness.sh"
);
/// This test's name as libtest filters it (`--exact`).
const TEST_PATH: &str = "systemd::real_unit_under_a_private_user_manager";
/// The whole inner run, harness start-up included, must end within this.
const OUTER_TIMEOUT: Duration = Duration::from_secs(120);
/// Short watchdog from the drop-in; the daemon must ping at least this often.
const WATCHDOG: Duration = Duration::from_secs(2);
const T: Duration = Duration::from_secs(10);
/// How long the fake holds back its answer to the session_end event at stop.
const EVENT_HOLD: Duration = Duration::from_millis(1500);

#[test]
fn real_unit_under_a_private_user_manager() {
    if std::env::var_os("CONFAB_HARNESS_INSIDE").is_some() {
        let home = PathBuf::from(std::env::var_os("HOME").expect("the harness sets HOME"));
        return inside(&home);
    }
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(HARNESS)
        .arg(home.path())
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", TEST_PATH, "--nocapture", "--test-threads=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run systemd/user-manager-harness.sh");
    // Drain both pipes in threads so a chatty inner run cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(&mut out).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(&mut err).unwrap_or_default());
    let deadline = Instant::now() + OUTER_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            // unshare --kill-child: killing it takes the whole PID namespace down.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = out.join().unwrap() + &err.join().unwrap();
    let status =
        status.unwrap_or_else(|| panic!("the harness run took over {OUTER_TIMEOUT:?}:\n{text}"));
    assert!(
        status.success(),
        "the harness or the inner test failed ({status}):\n{text}"
    );
    assert!(
        text.contains("test result: ok. 1 passed"),
        "the inner run must have run the test:\n{text}"
    );
}

/// One session's files, all under the manager's HOME.
struct World {
    home: PathBuf,
    id: String,
    unit: String,
    transcript: PathBuf,
    claude: PathBuf,
    config: PathBuf,
    paths: Paths,
}

impl World {
    /// A session (unique id starting with `tag`) whose transcript holds `n` lines.
    fn new(home: &Path, tag: &str, n: usize) -> World {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        // Unique, so a host journal the namespace might also see cannot answer for us.
        let id = format!("{tag}-{nanos}");
        let claude = home.join("claude");
        let config = home.join("config.json");
        let transcript = claude.join("projects/-work-p").join(format!("{id}.jsonl"));
        write_lines(&transcript, &lines(0..n));
        let paths = Paths::from_lookup({
            let (home, claude, config) = (home.to_path_buf(), claude.clone(), config.clone());
            move |k| match k {
                "HOME" => Some(home.clone()),
                "CONFAB_CLAUDE_DIR" => Some(claude.clone()),
                "CONFAB_CONFIG_PATH" => Some(config.clone()),
                _ => None,
            }
        });
        World {
            home: home.to_path_buf(),
            unit: unit_name(&id),
            id,
            transcript,
            claude,
            config,
            paths,
        }
    }

    /// What a hook passes on to the daemon (and what our hook invocations get).
    fn launch_env(&self) -> Vec<(String, String)> {
        [
            ("CONFAB_CONFIG_PATH", self.config.display().to_string()),
            ("CONFAB_CLAUDE_DIR", self.claude.display().to_string()),
            ("CONFAB_SYNC_INTERVAL_MS", "100".to_string()),
            ("CONFAB_SYNC_JITTER_MS", "0".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The state file as `hook session-start` writes it before starting the unit.
    fn write_launch_state(&self) {
        state::ensure_sync_dir(&self.paths.sync_dir()).unwrap();
        let transcript = self.transcript.display().to_string();
        let cwd = self.home.display().to_string();
        let mut st = State::new(&self.paths, &self.id, &transcript, &cwd, 0);
        st.pid = 0; // no daemon yet
        st.confab_sync.pid_start = None;
        st.confab_sync.launch_env = self.launch_env().into_iter().collect();
        state::save(&self.paths.state_file(&self.id), &st).unwrap();
    }

    /// The hook input Claude Code would send.
    fn hook_input(&self, event: &str, reason: &str) -> HookInput {
        HookInput {
            session_id: self.id.clone(),
            transcript_path: self.transcript.display().to_string(),
            cwd: self.home.display().to_string(),
            permission_mode: "default".into(),
            hook_event_name: event.into(),
            reason: reason.into(),
            ..HookInput::default()
        }
    }

    /// The session's own files (state, inbox, lock) that exist.
    fn leftovers(&self) -> Vec<PathBuf> {
        [
            self.paths.state_file(&self.id),
            self.paths.inbox_file(&self.id),
            self.paths.lock_file(&self.id),
        ]
        .into_iter()
        .filter(|f| f.exists())
        .collect()
    }

    /// Events the backend received for this session.
    fn events(&self, fake: &Fake) -> Vec<Value> {
        let sid = fake.session_id(&self.id);
        fake.events()
            .into_iter()
            .filter(|e| e["session_id"].as_str() == sid.as_deref())
            .collect()
    }

    fn file_name(&self) -> String {
        self.transcript
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    fn fault_file(&self) -> PathBuf {
        self.paths.sync_dir().join(format!("{}.fault", self.id))
    }

    fn append_lines(&self, range: std::ops::Range<usize>) {
        append(
            &self.transcript,
            &lines(range)
                .iter()
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        );
    }

    /// The backend holds exactly the transcript's complete lines, each accepted once.
    fn assert_exactly_once(&self, fake: &Fake) {
        let want = complete_lines(&self.transcript);
        assert_eq!(
            fake.lines(&self.id, &self.file_name()),
            want,
            "backend copy differs from the transcript"
        );
        let sid = fake.session_id(&self.id);
        let accepted: usize = fake
            .requests_to(Route::Chunk)
            .iter()
            .filter(|r| r.status == 200 && r.file_name() == Some(&self.file_name()))
            .filter(|r| {
                r.body
                    .as_ref()
                    .map(|b| &b["session_id"])
                    .and_then(Value::as_str)
                    == sid.as_deref()
            })
            .map(|r| r.line_count().unwrap_or(0))
            .sum();
        assert_eq!(
            accepted,
            want.len(),
            "some line was uploaded more than once"
        );
        fake.assert_no_violations();
    }
}

fn inside(home: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _rt = rt.enter();
    let fake = rt.block_on(Fake::start());
    install(home, &fake);
    let w = World::new(home, "sdtest", 3);
    w.write_launch_state();
    verify_unit(&w);
    let pid = start_and_sync(&w, &fake);
    watchdog_restarts_a_hung_loop(&w, &fake, pid);
    stop_syncs_and_cleans_up(&w, &fake);
    journal_has_the_daemons_records(&w);
    hooks_start_and_stop_the_unit(home, &fake);
    logs_command_reads_the_journal(&w);
}

/// config.json for the fake; the unit template (the real binary) with a drop-in that shortens
/// the watchdog, loaded by the manager.
fn install(home: &Path, fake: &Fake) {
    let config = serde_json::json!({"backend_url": fake.url(), "api_key": API_KEY});
    std::fs::write(home.join("config.json"), config.to_string()).unwrap();
    install_unit(home, Path::new(BIN)).unwrap();
    let dropin = unit_dir(home).join("confab-sync@.service.d");
    std::fs::create_dir_all(&dropin).unwrap();
    // LimitCORE=0: the watchdog's SIGABRT must not leave core files behind.
    let wd = format!(
        "[Service]\nWatchdogSec={}s\nLimitCORE=0\n",
        WATCHDOG.as_secs()
    );
    std::fs::write(dropin.join("wd.conf"), wd).unwrap();
    systemctl_ok(&["daemon-reload"]);
}

/// (e) The installed unit with its drop-in, instantiated for this session, passes verify.
fn verify_unit(w: &World) {
    let path = unit_dir(&w.home).join(&w.unit);
    let out = run(Command::new("systemd-analyze")
        .args(["--user", "verify", "--man=no"])
        .arg(&path));
    assert!(
        out.ok && out.stderr.trim().is_empty(),
        "systemd-analyze verify: {}",
        out.stderr
    );
}

/// (a) Start blocks until READY=1; the status line follows progress; appends reach the backend.
/// Then, idle for over twice `WatchdogSec=`, the daemon keeps pinging (it honours
/// `WATCHDOG_USEC`): `WatchdogTimestamp` advances and nothing restarts. Returns the main pid.
fn start_and_sync(w: &World, fake: &Fake) -> u32 {
    let started = Instant::now();
    systemctl_ok(&["start", &w.unit]);
    assert_eq!(is_active(&w.unit), "active");
    assert_eq!(show(&w.unit, "WatchdogUSec"), "2s", "the drop-in applies");
    assert!(
        !show(&w.unit, "StatusText").is_empty(),
        "READY=1 comes with a STATUS="
    );
    let name = w.file_name();
    wait_for("3 lines on the backend", || {
        fake.position(&w.id, &name) == 3
    });
    wait_for("StatusText with 3 lines", || {
        show(&w.unit, "StatusText").contains(" 3 lines synced")
    });
    w.append_lines(3..5);
    wait_for("5 lines on the backend", || {
        fake.position(&w.id, &name) == 5
    });
    wait_for("StatusText with 5 lines", || {
        show(&w.unit, "StatusText").contains(" 5 lines synced")
    });
    w.assert_exactly_once(fake);

    let pid = main_pid(&w.unit);
    let mut pings = std::collections::BTreeSet::new();
    // The watchdog fires on time alone, so only a wall-clock window past two periods shows it did
    // not; the pings seen advancing anchor it, the 100 ms below is just the sampling interval.
    while started.elapsed() < WATCHDOG * 2 + Duration::from_millis(500) || pings.len() < 3 {
        assert!(
            started.elapsed() < T,
            "WatchdogTimestamp advanced only {} times",
            pings.len()
        );
        pings.insert(show(&w.unit, "WatchdogTimestampMonotonic"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        show(&w.unit, "NRestarts"),
        "0",
        "an idle daemon must not be killed by the watchdog"
    );
    assert_eq!(main_pid(&w.unit), pid);
    pid
}

/// (b) A hung loop stops pinging: systemd kills and restarts the unit; the new daemon sends what
/// was appended during the hang, exactly once.
fn watchdog_restarts_a_hung_loop(w: &World, fake: &Fake, pid: u32) {
    hang_the_loop(w);
    w.append_lines(5..8);
    wait_for("the watchdog restart", || show(&w.unit, "NRestarts") == "1");
    wait_for("the restarted daemon", || is_active(&w.unit) == "active");
    let new_pid = main_pid(&w.unit);
    assert!(
        new_pid != pid && new_pid != 0,
        "a new main process (was {pid}, now {new_pid})"
    );
    let name = w.file_name();
    wait_for("8 lines on the backend", || {
        fake.position(&w.id, &name) == 8
    });
    w.assert_exactly_once(fake);
    // The manager's record of why: the unit failed with result "watchdog".
    wait_for("UNIT_RESULT=watchdog in the journal", || {
        journal(&[&format!("USER_UNIT={}", w.unit)])
            .iter()
            .any(|r| r["UNIT_RESULT"] == "watchdog")
    });
}

/// The fault file (read once per cycle, deleted, then the loop blocks for good).
#[cfg(feature = "test-faults")]
fn hang_the_loop(w: &World) {
    std::fs::write(w.fault_file(), "hang").unwrap();
    wait_for("the daemon to take the fault", || !w.fault_file().exists());
}

/// Without the fault switch, freeze the process: it stops pinging all the same.
#[cfg(not(feature = "test-faults"))]
fn hang_the_loop(w: &World) {
    assert!(!w.fault_file().exists());
    systemctl_ok(&["kill", "--signal=SIGSTOP", &w.unit]);
}

/// (c) Stop: a line appended just before and a session_end in the inbox both arrive, once; the
/// unit is inactive (and collected) and the session's files are gone.
fn stop_syncs_and_cleans_up(w: &World, fake: &Fake) {
    let ev = InboxEvent::session_end(Some(w.hook_input("SessionEnd", "exit")));
    w.append_lines(8..9);
    inbox::append(&w.paths.inbox_file(&w.id), &ev).unwrap();
    // The event's answer is held back: the stop must wait for it, the unit meanwhile
    // deactivating with the daemon's STOPPING=1 status.
    fake.hold(Route::Event, EVENT_HOLD, Times::Next(1));
    let stop = Instant::now();
    let stopper = std::thread::spawn({
        let unit = w.unit.clone();
        move || systemctl_ok(&["stop", &unit])
    });
    wait_for("the daemon's stopping status", || {
        show(&w.unit, "StatusText") == STOPPING_STATUS
            && show(&w.unit, "ActiveState") == "deactivating"
    });
    stopper.join().expect("systemctl --user stop");
    assert!(
        stop.elapsed() >= EVENT_HOLD && stop.elapsed() < T,
        "stop returned after {:?}, the final sync took {EVENT_HOLD:?}",
        stop.elapsed()
    );
    assert_eq!(is_active(&w.unit), "inactive");
    assert_eq!(
        fake.position(&w.id, &w.file_name()),
        9,
        "the final sync sent the last line"
    );
    w.assert_exactly_once(fake);
    let events = w.events(fake);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(fake.events().len(), 1, "{:?}", fake.events());
    assert_eq!(events[0]["event_type"], "session_end");
    assert_eq!(events[0]["timestamp"], ev.timestamp.as_str());
    assert_eq!(events[0]["payload"]["session_id"], w.id.as_str());
    assert_eq!(w.leftovers(), Vec::<PathBuf>::new(), "survived the stop");
    // A clean exit: after the manager's "Stopping" record, no failure (UNIT_RESULT=, EXIT_CODE=)
    // and a stop job that completed.
    wait_for("the manager's record of a clean stop", || {
        let records = journal(&[&format!("USER_UNIT={}", w.unit)]);
        let Some(at) = records.iter().rposition(|r| {
            r["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.starts_with("Stopping "))
        }) else {
            return false;
        };
        let after = &records[at..];
        assert!(
            !after
                .iter()
                .any(|r| r.get("UNIT_RESULT").is_some() || r.get("EXIT_CODE").is_some()),
            "{after:#?}"
        );
        after
            .iter()
            .any(|r| r["JOB_TYPE"] == "stop" && r["JOB_RESULT"] == "done")
    });
}

/// (d) The daemon's own records: filed under the user unit, with its session field and
/// identifier, from both processes (before and after the watchdog restart), without secrets.
fn journal_has_the_daemons_records(w: &World) {
    let by_unit = journal(&[&format!("_SYSTEMD_USER_UNIT={}", w.unit)]);
    let by_session = journal(&[&format!("CONFAB_SESSION={}", w.id)]);
    assert!(
        !by_session.is_empty(),
        "no record with CONFAB_SESSION={}",
        w.id
    );
    for r in &by_session {
        assert_eq!(r["_SYSTEMD_USER_UNIT"], w.unit.as_str(), "{r}");
        assert_eq!(r["SYSLOG_IDENTIFIER"], "confab-sync", "{r}");
    }
    // Everything the daemon wrote went through the native protocol with its session field (no
    // stray stderr lines), under the unit's identifier.
    for r in &by_unit {
        assert_eq!(r["SYSLOG_IDENTIFIER"], "confab-sync", "{r}");
        assert_eq!(r["CONFAB_SESSION"], w.id.as_str(), "{r}");
    }
    assert_eq!(by_unit.len(), by_session.len());
    let pids: std::collections::BTreeSet<&str> = by_session
        .iter()
        .filter_map(|r| r["_PID"].as_str())
        .collect();
    assert!(
        pids.len() >= 2,
        "records from the first daemon and its restart, got pids {pids:?}"
    );
    let initialised = by_session
        .iter()
        .filter(|r| {
            r["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.contains("session initialised"))
        })
        .count();
    assert!(
        initialised >= 2,
        "each daemon logs its init: {by_session:#?}"
    );
    // After init every record carries the backend session id, and per-file events their file.
    assert!(
        by_session.iter().any(|r| r["CONFAB_BACKEND_SESSION"]
            .as_str()
            .is_some_and(|b| !b.is_empty())),
        "records carry CONFAB_BACKEND_SESSION: {by_session:#?}"
    );
    // Levels map to journal priorities: info 6, warn 4 (the injected hang).
    let priority = |needle: &str| {
        by_session
            .iter()
            .find(|r| r["MESSAGE"].as_str().is_some_and(|m| m.contains(needle)))
            .map(|r| r["PRIORITY"].clone())
    };
    assert_eq!(priority("session initialised"), Some(Value::from("6")));
    if cfg!(feature = "test-faults") {
        assert_eq!(priority("injected fault"), Some(Value::from("4")));
    }
    let everything = run(Command::new("journalctl").args(["--no-pager", "-o", "json"]));
    assert!(
        !everything.stdout.contains(API_KEY),
        "the API key reached the journal"
    );
}

/// (f) The hooks drive the unit: `session-start` (CONFAB_SERVICE_MANAGER=systemd) writes the
/// launch state and starts the unit, which is active when the hook returns; a second
/// `session-start` starts nothing; `session-end` queues the event and stops the unit without
/// waiting, and the daemon's final sync sends the last line and the event once.
fn hooks_start_and_stop_the_unit(home: &Path, fake: &Fake) {
    let w = World::new(home, "sdhook", 2);
    hook(
        &w,
        "session-start",
        &w.hook_input("SessionStart", "startup"),
    );
    assert_eq!(
        is_active(&w.unit),
        "active",
        "the hook's start waits for READY=1"
    );
    let pid = main_pid(&w.unit);
    let st: Value =
        serde_json::from_slice(&std::fs::read(w.paths.state_file(&w.id)).unwrap()).unwrap();
    assert_eq!(st["confab_sync"]["service_manager"], "systemd", "{st:#}");
    assert_eq!(st["pid"], pid, "the daemon recorded its own pid: {st:#}");
    for (k, v) in w.launch_env() {
        assert_eq!(st["confab_sync"]["launch_env"][&k], v.as_str(), "{st:#}");
    }
    let name = w.file_name();
    wait_for("2 lines of the hook's session", || {
        fake.position(&w.id, &name) == 2
    });

    hook(&w, "session-start", &w.hook_input("SessionStart", "resume"));
    assert_eq!(main_pid(&w.unit), pid, "a live daemon is not started twice");
    assert_eq!(show(&w.unit, "NRestarts"), "0");

    w.append_lines(2..3);
    let end = Instant::now();
    hook(&w, "session-end", &w.hook_input("SessionEnd", "exit"));
    assert!(
        end.elapsed() < Duration::from_secs(5),
        "session-end does not wait for the final sync"
    );
    wait_for("the unit to stop", || is_active(&w.unit) == "inactive");
    assert_eq!(
        fake.position(&w.id, &name),
        3,
        "the final sync sent the last line"
    );
    w.assert_exactly_once(fake);
    let events = w.events(fake);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event_type"], "session_end");
    assert_eq!(events[0]["payload"]["reason"], "exit");
    assert_eq!(w.leftovers(), Vec::<PathBuf>::new(), "survived session-end");
}

/// `confab-sync logs <ID>` of an ended systemd session reads the journal (cli.md): the daemon's
/// lines of both runs, the watchdog's victim and its successor.
fn logs_command_reads_the_journal(w: &World) {
    let mut cmd = Command::new(BIN);
    cmd.args(["logs", &w.id])
        .env("CONFAB_SERVICE_MANAGER", "systemd");
    let out = run(&mut cmd);
    assert!(out.ok, "confab-sync logs: {}", out.stderr);
    assert_eq!(
        out.stdout.matches("session initialised").count(),
        2,
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("session_end event sent"),
        "{}",
        out.stdout
    );
}

/// Runs `confab-sync hook <sub>` as Claude Code would: hook JSON on stdin, the user's environment
/// (here: the test's CONFAB_* settings), one JSON answer on stdout, exit 0.
fn hook(w: &World, sub: &str, input: &HookInput) {
    let mut cmd = Command::new(BIN);
    cmd.args(["hook", sub])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &w.home)
        .env("XDG_RUNTIME_DIR", "/run/user/0")
        .env("CONFAB_SERVICE_MANAGER", "systemd")
        .envs(w.launch_env());
    let out = run_with_stdin(&mut cmd, serde_json::to_vec(input).unwrap());
    assert!(out.ok, "hook {sub}: {}", out.stderr);
    let answer: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("hook {sub} answered {:?}: {e}", out.stdout));
    assert_eq!(answer["continue"], true, "{answer}");
}

// ---------------------------------------------------------------------------------------------
// Helpers: systemctl and journalctl against the private manager (XDG_RUNTIME_DIR comes from the
// harness), all bounded.

struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command) -> Ran {
    run_with_stdin(cmd, Vec::new())
}

fn run_with_stdin(cmd: &mut Command, stdin: Vec<u8>) -> Ran {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    std::thread::spawn(move || std::io::Write::write_all(&mut input, &stdin));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(&mut out).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(&mut err).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ran {
        ok: status.success(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn systemctl(args: &[&str]) -> Ran {
    run(Command::new("systemctl").arg("--user").args(args))
}

fn systemctl_ok(args: &[&str]) {
    let r = systemctl(args);
    assert!(
        r.ok,
        "systemctl --user {}: {}{}",
        args.join(" "),
        r.stdout,
        r.stderr
    );
}

fn show(unit: &str, prop: &str) -> String {
    systemctl(&["show", "-p", prop, "--value", unit])
        .stdout
        .trim()
        .to_string()
}

fn is_active(unit: &str) -> String {
    systemctl(&["is-active", unit]).stdout.trim().to_string()
}

fn main_pid(unit: &str) -> u32 {
    show(unit, "MainPID").parse().unwrap_or(0)
}

/// Journal records matching `matches`, parsed.
fn journal(matches: &[&str]) -> Vec<Value> {
    let r = run(Command::new("journalctl")
        .args(["--no-pager", "-o", "json"])
        .args(matches));
    r.stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Polls `cond` every 50 ms for at most [`T`].
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
