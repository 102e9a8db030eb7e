//! Security properties end to end (sync-engine §8, §10, H6, H16, H25, H26): file and directory
//! modes after real runs, the API key and request bodies never in any output, argv or file,
//! hostile session ids, transcript paths and init `files` keys refused, and redaction by config on
//! every kind of uploaded text, for the backend and the local archive.
//!
//! Not covered here (not in this tree yet): `status` output, and the log directory (the `run`
//! binary logs to stderr or the journal and creates no log directory).

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use confab_sync::daemon::{Daemon, RunOptions};
use confab_sync::inbox::{HookInput, InboxEvent};

use crate::harness::*;
use crate::support::fake::{Fake, Fault, Route, Times, API_KEY};

const T: Duration = Duration::from_secs(10);
const NAME: &str = TRANSCRIPT_NAME;

/// A realistic confab key: `cfb_` and 40 alphanumerics.
fn real_key() -> String {
    format!("cfb_{}", "7fQ2mZ9xK4pL8wR1tY6vB3nC5hJ0dG2sA9eU4iO7")
}

/// Text that only ever appears inside transcript lines, so inside request bodies.
const BODY_MARKER: &str = "body-marker-5d1c9a";

// ----- processes -----

/// A child whose stdout and stderr are drained by threads (trace logs would fill a pipe).
struct Captured {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Captured {
    fn spawn(mut cmd: Command) -> Captured {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for mut pipe in pipes {
            let out = out.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }));
        }
        Captured {
            child,
            out,
            readers,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits (bounded) for the exit; returns the status and everything printed.
    fn wait(mut self, within: Duration) -> (ExitStatus, String) {
        let end = Instant::now() + within;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("process did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for r in self.readers {
            r.join().unwrap();
        }
        let out = String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned();
        (status, out)
    }
}

/// The binary with umask 0, so any file or directory created without an explicit mode shows up as
/// group/world accessible.
fn command_umask0(env: &Env) -> Command {
    let mut c = env.command();
    // SAFETY: umask is async-signal-safe and touches no memory.
    unsafe {
        c.pre_exec(|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::empty());
            Ok(())
        });
    }
    c
}

fn run_once_traced(env: &Env) -> (ExitStatus, String) {
    let mut c = env.command();
    c.env("CONFAB_LOG", "trace")
        .args(env.run_args())
        .arg("--once");
    Captured::spawn(c).wait(Duration::from_secs(30))
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every file and directory under `root` (not `root` itself), symlinks not followed.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// No path under HOME is readable, writable or searchable by group or others.
fn assert_private_tree(home: &Path) {
    let bad: Vec<String> = walk(home)
        .iter()
        .filter(|p| mode(p) & 0o077 != 0)
        .map(|p| format!("{:o} {}", mode(p), p.display()))
        .collect();
    assert!(bad.is_empty(), "group/world-accessible paths: {bad:#?}");
}

fn session_end_event(env: &Env) -> InboxEvent {
    InboxEvent::session_end(Some(HookInput {
        session_id: env.id.clone(),
        transcript_path: env.transcript.display().to_string(),
        cwd: "/tmp".into(),
        hook_event_name: "SessionEnd".into(),
        reason: "clear".into(),
        ..HookInput::default()
    }))
}

/// Number of `\n` in a file; 0 when it does not exist yet.
fn newlines(p: &Path) -> usize {
    std::fs::read(p).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

async fn wait_for(cond: impl FnMut() -> bool) {
    assert!(eventually(T, cond).await, "condition not reached in time");
}

// ----- §8: modes -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_backend_run_state_lock_inbox_0600_dirs_0700_under_umask_0() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    env.write_transcript(&lines(0..3));
    let mut cmd = command_umask0(&env);
    cmd.args(env.run_args());
    let daemon = Captured::spawn(cmd);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 3).await);
    let sync = env.home.join(".confab/sync");
    let lock = sync.join(format!("{}.lock", env.id));
    wait_for(|| env.state_path().exists() && lock.exists()).await;
    confab_sync::inbox::append(&env.inbox_path(), &session_end_event(&env)).unwrap();
    assert_eq!(mode(&env.home.join(".confab")), 0o700);
    assert_eq!(mode(&sync), 0o700);
    assert_eq!(mode(&env.state_path()), 0o600);
    assert_eq!(mode(&lock), 0o600);
    assert_eq!(mode(&env.inbox_path()), 0o600);
    assert_private_tree(&env.home);
    kill(Pid::from_raw(daemon.pid()), Signal::SIGTERM).unwrap();
    let (status, out) = daemon.wait(T);
    assert!(status.success(), "{out}");
    assert_private_tree(&env.home);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_wider_sync_dir_is_reset_to_0700() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    env.write_transcript(&lines(0..1));
    let sync = env.home.join(".confab/sync");
    std::fs::create_dir_all(&sync).unwrap();
    std::fs::set_permissions(&sync, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (status, out) = run_once_traced(&env);
    assert!(status.success(), "{out}");
    assert_eq!(mode(&sync), 0o700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_archive_run_every_created_path_private_under_umask_0() {
    let env = Env::new();
    env.write_transcript(&[
        agent_ref("abcdef12"),
        json!({"type":"summary","summary":"a summary"}).to_string(),
    ]);
    env.write_agent("abcdef12", &lines(0..2));
    let mut cmd = command_umask0(&env);
    cmd.args(env.run_args());
    let daemon = Captured::spawn(cmd);
    let dir = env.archive_dir();
    wait_for(|| newlines(&dir.join("agent-abcdef12.jsonl")) == 2).await;
    wait_for(|| env.state_path().exists()).await;
    confab_sync::inbox::append(&env.inbox_path(), &session_end_event(&env)).unwrap();
    assert_private_tree(&env.home);
    kill(Pid::from_raw(daemon.pid()), Signal::SIGTERM).unwrap();
    let (status, out) = daemon.wait(T);
    assert!(status.success(), "{out}");
    for f in [NAME, "agent-abcdef12.jsonl", "session.json", "events.jsonl"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    let mut d = dir.clone();
    while d != env.home {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
        d = d.parent().unwrap().to_path_buf();
    }
    assert_private_tree(&env.home);
}

// ----- H16: the key and bodies never leak -----

fn assert_clean(what: &str, text: &str, key: &str) {
    assert!(!text.contains(key), "{what}: API key leaked:\n{text}");
    assert!(
        !text.contains(BODY_MARKER),
        "{what}: request body logged:\n{text}"
    );
    assert!(
        !text.to_ascii_lowercase().contains("bearer "),
        "{what}: Authorization header leaked:\n{text}"
    );
}

fn marked_lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            json!({"type":"user","message":{"role":"user","content":format!("{BODY_MARKER} {i}")}})
                .to_string()
        })
        .collect()
}

/// No file under HOME holds the key (state, inbox, lock, archive).
fn assert_key_not_on_disk(env: &Env, key: &str) {
    for p in walk(&env.home) {
        if p.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(key),
                "key written to {}",
                p.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_key_absent_from_trace_logs_argv_and_files_of_a_running_daemon() {
    let fake = Fake::start().await;
    let key = real_key();
    fake.add_key(&key, "u1");
    let env = Env::new();
    env.write_config(&fake.url(), &key);
    env.write_transcript(&marked_lines(3));
    let mut cmd = env.command();
    cmd.env("CONFAB_LOG", "trace").args(env.run_args());
    let daemon = Captured::spawn(cmd);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 3).await);
    assert!(fake.requests().iter().all(|r| r.used_key(&key)));
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", daemon.pid())).unwrap();
    let argv: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert_eq!(argv[1..], env.run_args()[..], "argv is only what we passed");
    assert_clean("argv", &argv.join(" "), &key);
    env.append(&(marked_lines(1)[0].clone() + "\n"));
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 4).await);
    assert_key_not_on_disk(&env, &key);
    kill(Pid::from_raw(daemon.pid()), Signal::SIGTERM).unwrap();
    let (status, out) = daemon.wait(T);
    assert!(status.success(), "{out}");
    assert!(
        out.contains("TRACE") || out.contains("DEBUG"),
        "trace logging on: {out}"
    );
    assert_clean("trace log", &out, &key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_key_absent_from_errors_for_401_500_and_connection_refused() {
    let fake = Fake::start().await;
    let key = real_key();
    let env = Env::new();
    env.write_config(&fake.url(), &key);
    env.write_transcript(&marked_lines(2));
    // 401: the fake does not know the key.
    let (status, out) = run_once_traced(&env);
    assert!(!status.success(), "401 must fail --once: {out}");
    assert!(fake.statuses(Route::Init).contains(&401));
    assert_clean("401", &out, &key);
    // 500 on init, then on the chunk.
    fake.add_key(&key, "u1");
    fake.fault(Route::Init, Fault::Status500BeforeStore, Times::Next(1));
    let (status, out) = run_once_traced(&env);
    assert!(!status.success(), "500 must fail --once: {out}");
    assert_clean("500 init", &out, &key);
    fake.fault(Route::Chunk, Fault::Status500BeforeStore, Times::Next(1));
    let (status, out) = run_once_traced(&env);
    assert!(!status.success(), "500 must fail --once: {out}");
    assert_clean("500 chunk", &out, &key);
    // Connection refused: a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.write_config(&format!("http://127.0.0.1:{port}"), &key);
    let (status, out) = run_once_traced(&env);
    assert!(!status.success(), "refused must fail --once: {out}");
    assert_clean("connection refused", &out, &key);
    assert_key_not_on_disk(&env, &key);
}

/// A misbehaving server (or proxy) that echoes the request's Authorization header in its error
/// bodies: whatever of the body the client logs must still not show the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_key_echoed_by_the_server_is_not_logged() {
    for status in [401u16, 403, 400, 500] {
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = hits.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap| {
            seen.fetch_add(1, Ordering::SeqCst);
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            async move {
                (
                    StatusCode::from_u16(status).unwrap(),
                    format!("bad credentials: {auth}"),
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let key = real_key();
        let env = Env::new();
        env.write_config(&url, &key);
        env.write_transcript(&marked_lines(1));
        let (_, out) = run_once_traced(&env);
        server.abort();
        assert!(
            hits.load(Ordering::SeqCst) > 0,
            "{status}: the server was asked"
        );
        assert!(!out.contains(&key), "{status}: echoed key logged:\n{out}");
    }
}

#[cfg(feature = "test-faults")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_panic_message_does_not_include_the_key() {
    let fake = Fake::start().await;
    let key = real_key();
    fake.add_key(&key, "u1");
    let env = Env::new();
    env.write_config(&fake.url(), &key);
    env.write_transcript(&marked_lines(2));
    let mut cmd = env.command();
    cmd.env("CONFAB_LOG", "trace")
        .env("CONFAB_SYNC_FAULT", "panic-after-ack")
        .env("RUST_BACKTRACE", "full")
        .args(env.run_args());
    let (status, out) = Captured::spawn(cmd).wait(T);
    assert!(!status.success(), "the injected panic fails the process");
    assert!(out.contains("panic"), "{out}");
    assert_clean("panic", &out, &key);
    assert_key_not_on_disk(&env, &key);
}

// ----- §10: hostile session ids and transcript paths -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_hostile_session_ids_exit_78_and_create_nothing_outside() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    env.write_transcript(&lines(0..1));
    let long = "a".repeat(129);
    for id in [
        "../x", "a/b", "..", ".", "", "a b", "x.json", "é", "a\tb", &long,
    ] {
        let out = env
            .command()
            .arg("run")
            .arg(format!("--session-id={id}"))
            .arg(format!("--transcript={}", env.transcript.display()))
            .arg("--once")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{id:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{id:?}: one line: {err}");
    }
    // NUL cannot travel in argv; the library entry point must refuse it the same way.
    let opts = RunOptions {
        session_id: "ok\0../x".into(),
        ..env.options()
    };
    let exit = Daemon::new(opts, env.paths(), env.tuning())
        .run(std::future::pending())
        .await;
    assert_eq!(exit.code(), 78, "{exit:?}");
    // Nothing was written next to the sync dir, and the backend never heard of any of them.
    let created: Vec<PathBuf> = walk(&env.home)
        .into_iter()
        .filter(|p| p != &env.home.join(".confab") && p != &env.home.join(".confab/sync"))
        .collect();
    assert!(created.is_empty(), "{created:?}");
    assert_eq!(fake.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_leading_dash_session_id_is_one_argument() {
    let fake = Fake::start().await;
    let mut env = Env::with_backend(&fake.url());
    env.id = "-rf".into();
    env.write_transcript(&lines(0..2));
    env.run_once();
    assert_eq!(fake.position("-rf", NAME), 2);
    // Split into two argv entries, the id would be a flag: clap refuses it, nothing is synced.
    let out = env
        .command()
        .args(["run", "--session-id", "-x", "--once"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(fake.position("-x", NAME), 0);
}

fn expect_invalid_transcript(env: &Env, transcript: &Path) -> String {
    let out = env
        .command()
        .arg("run")
        .arg(format!("--session-id={}", env.id))
        .arg(format!("--transcript={}", transcript.display()))
        .arg("--once")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}: {err}",
        transcript.display()
    );
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_hostile_transcript_paths_exit_78_and_upload_nothing() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    env.write_transcript(&lines(0..1));
    let outside = env.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    write_lines(
        &outside.join("t.jsonl"),
        &[r#"{"secret":"outside"}"#.into()],
    );
    symlink(&outside, env.claude.join("escape")).unwrap();
    let sessions = env.transcript.parent().unwrap().to_path_buf();
    // A symlinked ancestor that does not resolve inside the root, with a missing directory below.
    symlink(&outside, sessions.join("deep-escape")).unwrap();
    let cases: Vec<PathBuf> = vec![
        PathBuf::from("sessions/transcript.jsonl"),
        PathBuf::from("transcript.jsonl"),
        sessions.join("../../outside/t.jsonl"),
        sessions.join("..").join(NAME),
        outside.join("t.jsonl"),
        env.claude.join("escape/t.jsonl"),
        sessions.join("deep-escape/missing/t.jsonl"),
        env.claude.clone(),
        sessions.join("session.json"),
        sessions.join("events.jsonl"),
        PathBuf::from("/"),
    ];
    for c in &cases {
        expect_invalid_transcript(&env, c);
    }
    // Under a service manager the daemon gets only `--session-id`; the transcript comes from the
    // state file the hook wrote, and is validated the same way.
    std::fs::create_dir_all(env.home.join(".confab/sync")).unwrap();
    for hostile in [
        outside.join("t.jsonl").display().to_string(),
        env.claude.join("escape/t.jsonl").display().to_string(),
        format!("{}/../../outside/t.jsonl", sessions.display()),
        "sessions/transcript.jsonl".to_string(),
        String::new(),
    ] {
        let state = json!({"external_id": env.id, "transcript_path": hostile, "cwd": "/",
            "pid": 0, "inbox_path": "", "started_at": ""});
        write_atomic(&env.state_path(), state.to_string().as_bytes());
        let out = env
            .command()
            .args(["run", &format!("--session-id={}", env.id), "--once"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "state path {hostile:?}: {err}");
    }
    assert_eq!(fake.request_count(), 0, "nothing reached the backend");
}

/// A transcript path whose parent is inside the root but whose last component is a symlink to a
/// file outside: validation passes (the parent resolves inside), but the file is never opened
/// through the link, so its content is never uploaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_symlinked_transcript_and_agent_files_are_never_read() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    let outside = env.tmp.path().join("outside.jsonl");
    write_lines(&outside, &[r#"{"secret":"outside-content"}"#.into()]);
    env.write_transcript(&[agent_ref("linked01")]);
    std::fs::create_dir_all(env.subagents()).unwrap();
    symlink(&outside, env.agent_path("linked01")).unwrap();
    symlink(&outside, env.agent_path("scanned2")).unwrap();
    let mut tuning = env.tuning();
    tuning.transcript_wait = Duration::from_millis(300);
    let d = env.start_with(env.options(), tuning.clone());
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 1).await);
    // Every cycle looks for agents (by reference and by scan): a few must pass reading neither.
    assert!(cycles_pass(&env.state_path(), 4, T).await);
    d.stop_within(T).await;
    let evil = env.transcript.with_file_name("evil.jsonl");
    symlink(&outside, &evil).unwrap();
    let opts = RunOptions {
        session_id: "evil-session".into(),
        transcript: Some(evil),
        ..env.options()
    };
    let mut cycles = CycleWatch::new(&env.paths().state_file("evil-session"));
    let d = env.start_with(opts, tuning);
    // Either it gives up on the link by itself, or it runs cycles that must not read through it.
    assert!(eventually(T, || d.task.is_finished() || cycles.ended() >= 4).await);
    if !d.task.is_finished() {
        d.stop_within(T).await;
    }
    for r in fake.requests() {
        let body = r.body.map(|b| b.to_string()).unwrap_or_default();
        assert!(
            !body.contains("outside-content"),
            "symlink followed: {body}"
        );
    }
    assert_eq!(fake.position(&env.id, "agent-linked01.jsonl"), 0);
    assert_eq!(fake.position(&env.id, "agent-scanned2.jsonl"), 0);
}

// ----- H6: hostile init `files` keys -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_init_keys_with_nul_and_absolute_paths_are_ignored() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    env.write_transcript(&lines(0..2));
    let outside = env.tmp.path().join("outside.jsonl");
    write_lines(&outside, &[r#"{"secret":"outside-content"}"#.into()]);
    let hostile = [
        outside.display().to_string(),
        "/etc/passwd".to_string(),
        format!("{}/agent-abcdef12.jsonl", env.subagents().display()),
        "agent-abc\0def.jsonl".to_string(),
        "agent-abcdef12.jsonl\0".to_string(),
        "agent-abcdef12\0/../../../outside.jsonl".to_string(),
        "\0".to_string(),
        format!("{NAME}\0"),
        "./agent-abcdef12.jsonl".to_string(),
        "subagents/agent-abcdef12.jsonl".to_string(),
    ];
    for key in &hostile {
        fake.preset_position(&env.id, key, 1);
    }
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 2).await);
    wait_for(|| {
        env.state()
            .is_some_and(|s| s["confab_sync"]["files"][NAME]["acked_line"] == 2)
    })
    .await;
    // Later cycles must not adopt a hostile key either.
    assert!(cycles_pass(&env.state_path(), 3, T).await);
    let files: BTreeSet<String> = env.state().unwrap()["confab_sync"]["files"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    d.stop_within(T).await;
    assert_eq!(files, BTreeSet::from([NAME.to_string()]));
    for r in fake.chunk_requests() {
        assert_eq!(r.file_name(), Some(NAME), "chunk for a hostile key");
        let body = r.body.map(|b| b.to_string()).unwrap_or_default();
        assert!(!body.contains("outside-content"));
    }
    fake.assert_no_violations();
}

// ----- §7: redaction on every kind of uploaded text -----

struct Secrets {
    confab: String,
    aws: &'static str,
    github: String,
    ticket: &'static str,
    password: &'static str,
}

fn secrets() -> Secrets {
    Secrets {
        confab: real_key(),
        aws: "AKIAIOSFODNN7EXAMPLE",
        github: format!("ghp_{}", "Zx9".repeat(12)),
        ticket: "TICKET-482913",
        password: "correct-horse-battery",
    }
}

impl Secrets {
    fn all(&self) -> Vec<&str> {
        vec![
            &self.confab,
            self.aws,
            &self.github,
            self.ticket,
            self.password,
        ]
    }
}

fn redaction_config() -> Value {
    json!({"enabled": true, "patterns": [{"name": "tickets", "type": "ticket", "pattern": r"TICKET-\d{6}"}]})
}

/// A session that puts each secret in each place: transcript lines (JSON and not), an agent file,
/// the chunk summary, the first user message and a linked summary (PATCH).
fn write_secret_session(env: &Env, s: &Secrets) {
    let sessions = env.transcript.parent().unwrap();
    write_lines(
        &sessions.join("earlier-sec.jsonl"),
        &[r#"{"uuid":"leaf-sec"}"#.into()],
    );
    env.write_transcript(&[
        json!({"type":"user","message":{"role":"user","content":format!("key {} ticket {}", s.confab, s.ticket)}}).to_string(),
        agent_ref("abcdef12"),
        json!({"type":"summary","summary":format!("uses {} and {}", s.github, s.aws)}).to_string(),
        json!({"type":"summary","summary":format!("earlier {} {}", s.confab, s.ticket),"leafUuid":"leaf-sec"}).to_string(),
        format!("not json: {} {}", s.aws, s.ticket),
    ]);
    env.write_agent(
        "abcdef12",
        &[
            json!({"type":"assistant","message":{"content":[{"type":"text","text":format!("{} {}", s.aws, s.github)}]}}).to_string(),
            format!(
                r#"{{"type":"user","password":"{}","n":1.50,"t":"{}"}}"#,
                s.password, s.ticket
            ),
        ],
    );
}

fn assert_no_secret(what: &str, text: &str, s: &Secrets) {
    for secret in s.all() {
        assert!(
            !text.contains(secret),
            "{what}: {secret} not redacted:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_redaction_by_config_on_every_uploaded_text_backend() {
    let fake = Fake::start().await;
    let env = Env::new();
    env.write_config_json(json!({"backend_url": fake.url(), "api_key": API_KEY,
        "redaction": redaction_config()}));
    let s = secrets();
    write_secret_session(&env, &s);
    let d = env.start();
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, NAME) == 5
            && f.position(&env.id, "agent-abcdef12.jsonl") == 2
            && !f.summaries().is_empty())
            .await
    );
    d.stop_within(T).await;
    for r in fake.requests() {
        let body = r.body.map(|b| b.to_string()).unwrap_or_default();
        assert_no_secret(&format!("{} {}", r.method, r.path), &body, &s);
    }
    let t = fake.lines(&env.id, NAME);
    assert!(
        t[0].contains("[REDACTED:CONFAB_KEY]") && t[0].contains("[REDACTED:TICKET]"),
        "{t:?}"
    );
    assert_eq!(t[4], "not json: [REDACTED:AWS_KEY] [REDACTED:TICKET]");
    let a = fake.lines(&env.id, "agent-abcdef12.jsonl");
    assert!(
        a[0].contains("[REDACTED:AWS_KEY]") && a[0].contains("[REDACTED:GITHUB_TOKEN]"),
        "{a:?}"
    );
    assert_eq!(
        a[1],
        r#"{"type":"user","password":"[REDACTED:SENSITIVE_FIELD]","n":1.50,"t":"[REDACTED:TICKET]"}"#
    );
    let meta = fake.chunk_requests()[0].body.clone().unwrap()["metadata"].clone();
    assert!(
        meta["first_user_message"]
            .as_str()
            .unwrap()
            .contains("[REDACTED:CONFAB_KEY]"),
        "{meta}"
    );
    assert!(
        meta["summary"]
            .as_str()
            .unwrap()
            .contains("[REDACTED:GITHUB_TOKEN]"),
        "{meta}"
    );
    let (stem, patched) = fake.summaries().remove(0);
    assert_eq!(stem, "earlier-sec");
    assert_eq!(patched, "earlier [REDACTED:CONFAB_KEY] [REDACTED:TICKET]");
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_redaction_by_config_on_every_archived_text() {
    let env = Env::new();
    env.write_config_json(json!({"redaction": redaction_config()}));
    let s = secrets();
    write_secret_session(&env, &s);
    env.run_once();
    let dir = env.archive_dir();
    assert_eq!(complete_lines(&dir.join(NAME)).len(), 5);
    assert_eq!(complete_lines(&dir.join("agent-abcdef12.jsonl")).len(), 2);
    for p in walk(&env.home.join(".local")) {
        if p.is_file() {
            let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned();
            assert_no_secret(&p.display().to_string(), &text, &s);
        }
    }
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.join("session.json")).unwrap()).unwrap();
    assert!(
        meta["first_user_message"]
            .as_str()
            .unwrap()
            .contains("[REDACTED:CONFAB_KEY]"),
        "{meta}"
    );
    assert!(
        meta["summary"]
            .as_str()
            .unwrap()
            .contains("[REDACTED:GITHUB_TOKEN]"),
        "{meta}"
    );
}
