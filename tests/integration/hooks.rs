//! The real binary's hook and session commands (acceptance K2–K5, K7, X15, X21, X24, X25, X34,
//! X39, D8): `hook session-start|session-end|user-prompt-submit`, `status`, `stop`, `logs`, with
//! `CONFAB_SERVICE_MANAGER=none` (detached daemons) against the fake backend.
//!
//! Every test that may start a daemon holds a [`Reaper`], which kills the daemons started with its
//! HOME when the test ends, pass or fail.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use confab_sync::liveness;
use confab_sync::state::{self, State};
use serde_json::{json, Value};

use crate::harness::*;
use crate::support::fake::{Fake, API_KEY};

const T: Duration = Duration::from_secs(10);
const NAME: &str = TRANSCRIPT_NAME;
const RESPONSE: &str = "{\"continue\":true,\"stopReason\":\"\",\"suppressOutput\":false}\n";
const RESPONSE_UPS: &str = "{\"continue\":true,\"stopReason\":\"\",\"suppressOutput\":true}\n";

/// Kills every `confab-sync run` whose HOME is this test's, when dropped.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let pids = daemons_of(&self.0);
        for &pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let end = Instant::now() + Duration::from_secs(5);
        while pids.iter().any(|&p| liveness::alive(p, None)) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn reaper(env: &Env) -> Reaper {
    Reaper(env.home.clone())
}

/// Pids of the running `confab-sync run` processes started with HOME=`home` (zombies excluded:
/// their cmdline is empty).
fn daemons_of(home: &Path) -> Vec<i64> {
    let want_env = format!("HOME={}", home.display()).into_bytes();
    let mut pids: Vec<i64> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
        .filter(|pid| {
            let Some(args) = cmdline_args(*pid) else {
                return false;
            };
            let is_daemon = args.first().map(String::as_str) == Some(BIN)
                && args.get(1).map(String::as_str) == Some("run");
            is_daemon
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == want_env.as_slice()))
        })
        .collect();
    pids.sort();
    pids
}

fn cmdline_args(pid: i64) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// The hook input Claude Code would send for this env.
fn input(env: &Env, event: &str) -> Value {
    json!({"session_id": env.id, "transcript_path": env.transcript, "cwd": env.tmp.path(),
           "permission_mode": "default", "hook_event_name": event, "reason": "exit"})
}

/// Runs `confab-sync hook <sub>` with `stdin`, off the async workers (a hook may wait seconds).
async fn hook(env: &Env, sub: &str, stdin: Vec<u8>) -> Output {
    let mut cmd = env.command();
    cmd.args(["hook", sub])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().unwrap();
        let mut pipe = child.stdin.take().unwrap();
        // The hook stops reading after 10 MiB: a broken pipe here is expected.
        let writer = std::thread::spawn(move || {
            let _ = pipe.write_all(&stdin);
        });
        let out = wait_output(child, Duration::from_secs(20));
        let _ = writer.join();
        out
    })
    .await
    .unwrap()
}

async fn hook_json(env: &Env, sub: &str, v: &Value) -> Output {
    hook(env, sub, v.to_string().into_bytes()).await
}

/// `wait_with_output` with a bound: a hook that hangs fails the test instead of blocking it.
fn wait_output(mut child: std::process::Child, within: Duration) -> Output {
    use std::io::Read;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let e = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let end = Instant::now() + within;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            panic!("command did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

/// Runs a non-hook command (`status`, `stop`, `logs` …) off the async workers.
async fn cli(env: &Env, args: &[&str]) -> Output {
    let mut cmd = env.command();
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || wait_output(cmd.spawn().unwrap(), Duration::from_secs(60)))
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Exit 0 and exactly the one response line on stdout.
fn assert_answered(out: &Output, response: &str) {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), response, "stderr: {}", text(&out.stderr));
}

fn lock_held(env: &Env) -> bool {
    liveness::lock_is_held(&env.paths().lock_file(&env.id))
}

fn state_pid(env: &Env) -> Option<i64> {
    env.state()
        .and_then(|s| s["pid"].as_i64())
        .filter(|&p| p > 0)
}

/// Waits until the session's daemon is gone: lock free, no process, state removed.
async fn await_daemon_gone(env: &Env, within: Duration) -> bool {
    eventually(within, || {
        !lock_held(env) && daemons_of(&env.home).is_empty() && env.state().is_none()
    })
    .await
}

/// Writes a state for `id` whose daemon and parent are given, with an inbox and a lock file.
fn plant_session(env: &Env, id: &str, pid: i64, pid_start: Option<&str>, parent: i64) {
    let paths = env.paths();
    state::ensure_sync_dir(&paths.sync_dir()).unwrap();
    let mut s = State::new(&paths, id, &env.transcript.to_string_lossy(), "/w", parent);
    s.pid = pid;
    s.confab_sync.pid_start = pid_start.map(str::to_string);
    s.confab_sync.parent_start = liveness::start_token(parent);
    s.confab_sync.service_manager = "none".into();
    state::save(&paths.state_file(id), &s).unwrap();
    std::fs::write(paths.inbox_file(id), "{\"type\":\"other\"}\n").unwrap();
    std::fs::write(paths.lock_file(id), "").unwrap();
}

/// `cmd` with every signal blocked (SIGKILL and SIGSTOP cannot be): a signal sent to the process
/// stays pending, visible in /proc, instead of acting at some moment after the sender returned.
fn blocking_every_signal(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
    use std::os::unix::process::CommandExt;
    // SAFETY: sigprocmask is async-signal-safe and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            sigprocmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None)?;
            Ok(())
        })
    }
}

/// The signals pending for `pid` (its threads' and the process's, as bits); None if unreadable.
fn pending_signals(pid: i64) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut pending = 0;
    for key in ["SigPnd:", "ShdPnd:"] {
        let hex = status.lines().find_map(|l| l.strip_prefix(key))?.trim();
        pending |= u64::from_str_radix(hex, 16).ok()?;
    }
    Some(pending)
}

fn age(path: &Path, by: Duration) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - by).unwrap();
}

fn session_files(env: &Env, id: &str) -> [PathBuf; 3] {
    let p = env.paths();
    [p.state_file(id), p.inbox_file(id), p.lock_file(id)]
}

/// Everything the sync dir holds (names), sorted.
fn sync_dir_names(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(env.paths().sync_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Ends the session through the hook and waits for the daemon to go.
async fn end_session(env: &Env) {
    let out = hook_json(env, "session-end", &input(env, "SessionEnd")).await;
    assert_answered(&out, RESPONSE);
    assert!(
        await_daemon_gone(env, T).await,
        "daemon still running: {:?}",
        daemons_of(&env.home)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_hook_start_sync_hook_end() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    let _r = reaper(&env);
    env.write_transcript(&lines(0..3));
    let out = hook_json(&env, "session-start", &input(&env, "SessionStart")).await;
    assert_answered(&out, RESPONSE);
    assert!(
        text(&out.stderr).contains("started the daemon"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        lock_held(&env),
        "the hook returns once the daemon holds its lock"
    );
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 3).await);
    env.append(&format!("{}\n", line(3)));
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 4).await);

    end_session(&env).await;
    let events = fake.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["payload"]["session_id"], env.id.as_str());
    assert_eq!(events[0]["payload"]["reason"], "exit");
    assert!(!env.inbox_path().exists() && env.state().is_none());
    assert_eq!(fake.lines(&env.id, NAME), complete_lines(&env.transcript));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k2_racing_session_starts_start_exactly_one_daemon() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    let _r = reaper(&env);
    env.write_transcript(&lines(0..2));
    let v = input(&env, "SessionStart");
    let (a, b) = tokio::join!(
        hook_json(&env, "session-start", &v),
        hook_json(&env, "session-start", &v)
    );
    assert_answered(&a, RESPONSE);
    assert_answered(&b, RESPONSE);
    let started = [&a, &b]
        .iter()
        .filter(|o| text(&o.stderr).contains("started the daemon"))
        .count();
    assert_eq!(started, 1, "{} / {}", text(&a.stderr), text(&b.stderr));
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 2).await);
    let pid = state_pid(&env).expect("the daemon recorded its pid");
    assert_eq!(daemons_of(&env.home), [pid]);
    assert_eq!(
        liveness::lock_holder_pid(&env.paths().lock_file(&env.id)),
        Some(pid)
    );

    // A third start while the daemon is live does nothing.
    let c = hook_json(&env, "session-start", &v).await;
    assert_answered(&c, RESPONSE);
    assert!(!text(&c.stderr).contains("started"), "{}", text(&c.stderr));
    // Every hook has returned, and a hook returns only after its spawn (the exec) did: a loser
    // daemon is either still here (inside its 1 s lock retry) or gone, having logged "already
    // being synced" before exiting. Either way it shows now, no need to wait out its retry.
    assert_eq!(daemons_of(&env.home), [pid]);
    let log = std::fs::read_to_string(env.paths().log_file(&env.id)).unwrap_or_default();
    assert!(!log.contains("already being synced"), "{log}");

    end_session(&env).await;
    assert_eq!(fake.peak_concurrency(), 1);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k3_invalid_input_still_answers_and_starts_nothing() {
    let env = Env::new();
    let _r = reaper(&env);
    env.write_transcript(&lines(0..1));
    let mut missing_id = input(&env, "SessionStart");
    missing_id.as_object_mut().unwrap().remove("session_id");
    let mut huge = input(&env, "UserPromptSubmit");
    huge["prompt"] = Value::String("p".repeat(10 * 1024 * 1024));
    let cases: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        Vec::new(),
        b"[1,2,3]".to_vec(),
        b"{}".to_vec(),
        missing_id.to_string().into_bytes(),
        huge.to_string().into_bytes(),
    ];
    for (sub, response) in [
        ("session-start", RESPONSE),
        ("session-end", RESPONSE),
        ("user-prompt-submit", RESPONSE_UPS),
    ] {
        for c in &cases {
            let out = hook(&env, sub, c.clone()).await;
            assert_answered(&out, response);
            assert!(!out.stderr.is_empty(), "{sub}: a note on stderr");
            assert!(
                out.stderr.len() < 4096,
                "{sub}: the note does not echo the input"
            );
        }
    }
    assert!(daemons_of(&env.home).is_empty());
    assert!(
        sync_dir_names(&env).iter().all(|n| !n.ends_with(".json")),
        "{:?}",
        sync_dir_names(&env)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k4_session_end_with_missing_or_stale_state() {
    let env = Env::new();
    let out = hook_json(&env, "session-end", &input(&env, "SessionEnd")).await;
    assert_answered(&out, RESPONSE);
    assert!(
        text(&out.stderr).contains("no state"),
        "{}",
        text(&out.stderr)
    );

    plant_session(&env, &env.id, 999_999_999, Some("linux:dead:1"), 0);
    let out = hook_json(&env, "session-end", &input(&env, "SessionEnd")).await;
    assert_answered(&out, RESPONSE);
    assert!(
        text(&out.stderr).contains("not running"),
        "{}",
        text(&out.stderr)
    );
    for f in session_files(&env, &env.id) {
        assert!(!f.exists(), "{} left behind", f.display());
    }
    assert!(
        sync_dir_names(&env).is_empty(),
        "{:?}",
        sync_dir_names(&env)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x15_session_end_never_signals_an_unrelated_process() {
    let env = Env::new();
    let mut sleeper = blocking_every_signal(std::process::Command::new("sleep").arg("30"))
        .spawn()
        .unwrap();
    let pid = i64::from(sleeper.id());
    plant_session(&env, &env.id, pid, Some("linux:not-its-token:1"), 0);
    let out = hook_json(&env, "session-end", &input(&env, "SessionEnd")).await;
    assert_answered(&out, RESPONSE);
    // The hook signals (kill(2)) before it returns; the sleeper blocks the signal, so it is still
    // pending now instead of killing it at some later moment.
    let pending = pending_signals(pid);
    let survived = sleeper.try_wait().unwrap().is_none();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(
        survived && pending == Some(0),
        "the unrelated process was signalled (pending {pending:x?})"
    );
    assert!(env.state().is_none(), "the stale state is removed");
    assert!(!env.inbox_path().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k5_x34_user_prompt_submit_starts_a_daemon_without_the_prompt_in_argv() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    let _r = reaper(&env);
    env.write_transcript(&lines(0..2));
    let mut v = input(&env, "UserPromptSubmit");
    v["prompt"] = json!("TOP-SECRET-PROMPT-TEXT please refactor");
    let out = hook_json(&env, "user-prompt-submit", &v).await;
    assert_answered(&out, RESPONSE_UPS);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 2).await);
    let pid = state_pid(&env).unwrap();
    assert_eq!(daemons_of(&env.home), [pid]);

    // X34 (H26): argv is exactly `run --session-id=<ID>`; the prompt is nowhere in it or its env.
    let args = cmdline_args(pid).unwrap();
    assert_eq!(
        args,
        [
            BIN.to_string(),
            "run".into(),
            format!("--session-id={}", env.id)
        ]
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(!text(&environ).contains("TOP-SECRET"));
    assert!(!std::fs::read_to_string(env.state_path())
        .unwrap()
        .contains("TOP-SECRET"));

    // Every later prompt is a no-op answering suppressOutput:true.
    for _ in 0..2 {
        let out = hook_json(&env, "user-prompt-submit", &v).await;
        assert_answered(&out, RESPONSE_UPS);
        assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    }
    assert_eq!(daemons_of(&env.home), [pid]);
    end_session(&env).await;
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k7_hostile_ids_and_paths_start_nothing() {
    let env = Env::new();
    let _r = reaper(&env);
    env.write_transcript(&lines(0..1));
    let outside = env.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    write_lines(&outside.join("t.jsonl"), &lines(0..1));
    let escape = env.claude.join("escape");
    std::os::unix::fs::symlink(&outside, &escape).unwrap();
    let transcript = env.transcript.display().to_string();
    let mut cases: Vec<(String, String)> = ["", "a/b", "..", "a b", "../../etc/x", "a\u{0}b", "é"]
        .iter()
        .map(|id| (id.to_string(), transcript.clone()))
        .collect();
    cases.push(("a".repeat(129), transcript.clone()));
    for t in [
        "sessions/transcript.jsonl".to_string(),
        format!(
            "{}/sessions/../sessions/transcript.jsonl",
            env.claude.display()
        ),
        outside.join("t.jsonl").display().to_string(),
        escape.join("t.jsonl").display().to_string(),
        String::new(),
    ] {
        cases.push(("valid-id".into(), t));
    }
    for (sub, response) in [
        ("session-start", RESPONSE),
        ("user-prompt-submit", RESPONSE_UPS),
    ] {
        for (id, t) in &cases {
            let v =
                json!({"session_id": id, "transcript_path": t, "cwd": "/", "hook_event_name": "x"});
            let out = hook_json(&env, sub, &v).await;
            assert_answered(&out, response);
            assert!(!out.stderr.is_empty(), "{sub} {id:?} {t:?}: no note");
        }
    }
    assert!(daemons_of(&env.home).is_empty());
    assert!(
        sync_dir_names(&env).is_empty(),
        "{:?}",
        sync_dir_names(&env)
    );
    assert!(!env.paths().log_dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x25_user_prompt_submit_outside_the_root_starts_nothing() {
    let env = Env::new();
    let _r = reaper(&env);
    let outside = env.tmp.path().join("elsewhere/t.jsonl");
    write_lines(&outside, &lines(0..2));
    let mut v = input(&env, "UserPromptSubmit");
    v["transcript_path"] = json!(outside);
    let out = hook_json(&env, "user-prompt-submit", &v).await;
    assert_answered(&out, RESPONSE_UPS);
    assert!(
        text(&out.stderr).contains("invalid transcript path"),
        "{}",
        text(&out.stderr)
    );
    // The hook has returned, so a daemon it spawned has already exec'd and shows in /proc.
    assert!(daemons_of(&env.home).is_empty());
    assert!(env.state().is_none() && !lock_held(&env));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x21_session_start_reaps_only_dead_old_sessions() {
    let env = Env::new();
    let _r = reaper(&env);
    env.write_transcript(&lines(0..1));
    let me = i64::from(std::process::id());
    let old = Duration::from_secs(10);
    plant_session(&env, "dead-old", 999_999_999, Some("linux:x:1"), 0);
    plant_session(&env, "dead-young", 999_999_999, Some("linux:x:1"), 0);
    plant_session(&env, "locked", 999_999_999, Some("linux:x:1"), 0);
    plant_session(&env, "parent-alive", 999_999_999, Some("linux:x:1"), me);
    plant_session(&env, "go-client", me, None, 0);
    for id in ["dead-old", "locked", "parent-alive", "go-client"] {
        for f in session_files(&env, id) {
            age(&f, old);
        }
    }
    let _held = confab_sync::lock::SessionLock::try_acquire(&env.paths().lock_file("locked"))
        .unwrap()
        .unwrap();

    let out = hook_json(&env, "session-start", &input(&env, "SessionStart")).await;
    assert_answered(&out, RESPONSE);
    assert!(
        text(&out.stderr).contains("removed the stale files of session dead-old"),
        "{}",
        text(&out.stderr)
    );
    for f in session_files(&env, "dead-old") {
        assert!(!f.exists(), "{} not reaped", f.display());
    }
    for id in ["dead-young", "locked", "parent-alive", "go-client"] {
        for f in session_files(&env, id) {
            assert!(f.exists(), "{} reaped", f.display());
        }
    }
    end_session(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x39_status_accepts_a_short_id_and_prune_removes_stale_sessions() {
    let env = Env::new();
    plant_session(&env, "abc", 999_999_999, Some("linux:x:1"), 0);
    let out = cli(&env, &["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("abc ") && l.contains("stale")),
        "{table}"
    );

    let out = cli(&env, &["status", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["sessions"][0];
    assert_eq!(v["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(s["session_id"], "abc");
    assert_eq!(s["state"], "stale");
    assert_eq!(s["pid"], 999_999_999);
    assert_eq!(s["service_manager"], "none");
    assert!(s["uptime_s"].is_null() && s["last_sync_at"].is_null() && s["last_error"].is_null());
    assert_eq!(s["files"], json!({}));

    // Young files survive a prune (a launch may be in progress); old ones go.
    let out = cli(&env, &["status", "--prune", "--json"]).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["sessions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    for f in session_files(&env, "abc") {
        age(&f, Duration::from_secs(10));
    }
    let out = cli(&env, &["status", "--prune"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("removed the stale files of session abc"));
    assert_eq!(text(&out.stdout), "no sessions\n");
    assert!(
        sync_dir_names(&env).is_empty(),
        "{:?}",
        sync_dir_names(&env)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d8_x24_status_json_reports_lines_per_file_and_no_key() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    let _r = reaper(&env);
    env.write_transcript(&[lines(0..2), vec![agent_ref("abc12345")]].concat());
    env.write_agent("abc12345", &lines(0..4));
    let out = hook_json(&env, "session-start", &input(&env, "SessionStart")).await;
    assert_answered(&out, RESPONSE);
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, NAME) == 3
            && f.position(&env.id, "agent-abc12345.jsonl") == 4)
            .await
    );
    // The state is written after each ack (cursors) and at each cycle end (last sync).
    let mut v = Value::Null;
    let seen = eventually(T, || {
        let out = env.command().args(["status", "--json"]).output().unwrap();
        v = serde_json::from_slice(&out.stdout).unwrap();
        v["sessions"][0]["files"]["agent-abc12345.jsonl"]["lines_synced"] == 4
            && v["sessions"][0]["last_sync_at"].is_string()
    })
    .await;
    assert!(seen, "{v}");
    let s = &v["sessions"][0];
    assert_eq!(s["state"], "running");
    assert_eq!(s["pid"].as_i64(), state_pid(&env));
    assert_eq!(s["service_manager"], "none");
    assert!(
        s["backend"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "{s}"
    );
    assert_eq!(s["files"][NAME], json!({"lines_synced": 3, "status": "ok"}));
    assert!(s["uptime_s"].as_u64().is_some());
    assert!(s["last_sync_at"].is_string());

    let table = cli(&env, &["status"]).await;
    let all = format!(
        "{v}{}{}{}",
        text(&table.stdout),
        text(&table.stderr),
        text(&out.stderr)
    );
    assert!(
        all.contains(&format!("{NAME}: 3 lines synced (ok)")),
        "{all}"
    );
    end_session(&env).await;
    let log = std::fs::read_to_string(env.paths().log_file(&env.id)).unwrap();
    for text in [all, log] {
        assert!(
            !text.contains(API_KEY) && !text.contains("Bearer "),
            "{text}"
        );
    }
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_logs_commands() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    let _r = reaper(&env);
    env.write_transcript(&lines(0..2));
    let out = cli(&env, &["stop", &env.id]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("not running"));

    assert_answered(
        &hook_json(&env, "session-start", &input(&env, "SessionStart")).await,
        RESPONSE,
    );
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 2).await);
    env.append(&format!("{}\n", line(2)));
    let out = cli(&env, &["stop", &env.id]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("stopped"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        await_daemon_gone(&env, Duration::from_secs(2)).await,
        "stop waits for the exit"
    );
    assert_eq!(fake.position(&env.id, NAME), 3, "the final sync ran");
    assert!(fake.events().is_empty(), "a stop is not a session end");

    let out = cli(&env, &["logs", &env.id]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("shutting down"),
        "{}",
        text(&out.stdout)
    );
    let out = cli(&env, &["logs", "no-such-session"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
    let out = cli(&env, &["stop", "../x"]).await;
    assert_eq!(out.status.code(), Some(1));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_prints_appended_lines_until_sigint() {
    let env = Env::new();
    let log = env.paths().log_file("s1");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(&log, "first\n").unwrap();
    let mut child = env
        .command()
        .args(["logs", "s1", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let printed = collect(child.stdout.take().unwrap());
    let so_far = || text(&printed.0.lock().unwrap());
    // It prints the file only once its signal handlers are in place and it is following.
    assert!(
        eventually(T, || so_far() == "first\n").await,
        "{}",
        so_far()
    );
    append(&log, "second\n");
    assert!(
        eventually(T, || so_far() == "first\nsecond\n").await,
        "{}",
        so_far()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= end {
            let _ = child.kill();
            panic!("logs -f did not end on SIGINT");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    printed.1.join().unwrap();
    assert_eq!(so_far(), "first\nsecond\n");
}

/// Reads `from` to its end in a thread; the bytes so far are in the buffer, the thread ends at EOF.
fn collect(
    mut from: impl std::io::Read + Send + 'static,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    std::thread::JoinHandle<()>,
) {
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = buf.clone();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = from.read(&mut chunk) {
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packaging_completions_and_man_page() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = cli(&env, &["completions", shell]).await;
        assert_eq!(out.status.code(), Some(0));
        let script = text(&out.stdout);
        assert!(
            script.contains("confab-sync") && script.contains("session-start"),
            "{shell}"
        );
    }
    let man = cli(&env, &["man"]).await;
    assert_eq!(man.status.code(), Some(0));
    let page = text(&man.stdout);
    assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    assert!(page.contains("status"));
    let help = cli(&env, &["--help"]).await;
    assert!(
        !text(&help.stdout).contains("completions"),
        "hidden from --help"
    );
}
