//! The real `confab-sync run` binary: signals, exit codes, the lock, crashes and restarts.

use std::io::Read;
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::*;
use crate::support::fake::{Fake, Route, Times};

const T: Duration = Duration::from_secs(10);
const NAME: &str = TRANSCRIPT_NAME;

fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(child.id() as i32), sig).unwrap();
}

/// Waits for the child to exit (bounded), returning its status and stderr.
async fn wait_exit(mut child: Child, within: Duration) -> (std::process::ExitStatus, String) {
    let status = wait_child(&mut child, within).await;
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a13_second_daemon_exits_zero_with_message() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    env.write_transcript(&lines(0..3));
    let first = env.spawn(&[]);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 3).await);
    let start = Instant::now();
    let (status, err) = wait_exit(env.spawn(&[]), Duration::from_secs(3)).await;
    assert!(status.success(), "{status:?} {err}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(err.contains("already being synced"), "{err}");
    signal(&first, Signal::SIGTERM);
    let (status, _) = wait_exit(first, T).await;
    assert!(status.success());
    assert_eq!(fake.peak_concurrency(), 1);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a20_sigterm_runs_final_sync_and_cleans_up() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    env.write_transcript(&lines(0..1));
    let child = env
        .command()
        .args(env.run_args())
        .env("CONFAB_SYNC_INTERVAL_MS", "10000")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 1).await);
    env.append(&format!("{}\n{}\n", line(1), line(2)));
    signal(&child, Signal::SIGTERM);
    let (status, err) = wait_exit(child, T).await;
    assert_eq!(status.code(), Some(0), "{err}");
    let last = fake.chunk_requests().last().cloned().unwrap();
    assert_eq!((last.first_line(), last.line_count()), (Some(2), Some(2)));
    assert!(env.state().is_none() && !env.inbox_path().exists());
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a21_parent_exit_stops_the_daemon() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    env.write_transcript(&lines(0..2));
    env.write_tuning_toml("parent_check_ms = 200\n");
    let mut parent = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let child = env.spawn(&[&format!("--parent-pid={}", parent.id())]);
    assert!(fake.wait_until(T, |f| f.count(Route::Chunk) >= 1).await);
    parent.kill().unwrap();
    parent.wait().unwrap();
    let (status, err) = wait_exit(child, Duration::from_secs(2)).await;
    assert!(status.success(), "{err}");
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x1_kill_9_mid_upload_then_restart_is_exact() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    env.write_transcript(&lines(0..5));
    let child = env.spawn(&[]);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 5).await);
    fake.hold(Route::Chunk, Duration::from_secs(2), Times::Next(1));
    env.append(&format!("{}\n{}\n", line(5), line(6)));
    // The chunk is committed and its response held: kill the daemon inside that window.
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 7).await);
    signal(&child, Signal::SIGKILL);
    let _ = wait_exit(child, T).await;
    let before = fake.request_count();
    env.append(&format!("{}\n", line(7)));
    let child = env.spawn(&[]);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 8).await);
    signal(&child, Signal::SIGTERM);
    let _ = wait_exit(child, T).await;
    assert_eq!(
        fake.requests()[before].route,
        Some(Route::Init),
        "the restart starts with an init"
    );
    assert_eq!(fake.lines(&env.id, NAME), complete_lines(&env.transcript));
    assert!(!fake.statuses(Route::Chunk).contains(&400));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x16_once_while_locked_sends_nothing() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    env.write_transcript(&lines(0..2));
    let daemon = env.spawn(&[]);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 2).await);
    let before = fake.request_count();
    let out = env.run_once();
    assert!(String::from_utf8_lossy(&out.stderr).contains("already being synced"));
    signal(&daemon, Signal::SIGTERM);
    let _ = wait_exit(daemon, T).await;
    // The daemon's own final sync may add requests; the --once run added none of its own.
    assert!(fake.requests()[before..]
        .iter()
        .all(|r| r.route != Some(Route::Chunk)));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x48_transcript_wait_timeout_exits_zero_and_cleans_up() {
    let env = Env::new();
    env.write_tuning_toml("transcript_wait_ms = 300\ntranscript_poll_ms = 50\n");
    let (status, err) = wait_exit(env.spawn(&[]), T).await;
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(env.state().is_none() && !env.inbox_path().exists());
    // SIGTERM during the wait does the same.
    env.write_tuning_toml("transcript_wait_ms = 60000\n");
    let child = env.spawn(&[]);
    assert!(eventually(T, || env.state().is_some()).await);
    signal(&child, Signal::SIGTERM);
    let (status, err) = wait_exit(child, T).await;
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(env.state().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_session_id_exits_78() {
    let env = Env::new();
    let out = env
        .command()
        .args(["run", "--session-id=../etc", "--once"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_uploads_a_real_transcript_byte_exact_to_backend_and_archive() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    let src = corpus("4d5611e5-241a-462a-8d15-5122611a9569.jsonl");
    std::fs::copy(&src, &env.transcript).unwrap();
    std::fs::create_dir_all(env.subagents()).unwrap();
    for a in ["a2898e3", "acompact-e1f845"] {
        std::fs::copy(
            corpus(&format!(
                "4d5611e5-241a-462a-8d15-5122611a9569/subagents/agent-{a}.jsonl"
            )),
            env.agent_path(a),
        )
        .unwrap();
    }
    env.run_once();
    assert_eq!(fake.lines(&env.id, NAME), complete_lines(&env.transcript));
    for a in ["a2898e3", "acompact-e1f845"] {
        assert_eq!(
            fake.lines(&env.id, &format!("agent-{a}.jsonl")),
            complete_lines(&env.agent_path(a))
        );
    }
    fake.assert_no_violations();

    // Same with no config at all: the embedded local archive.
    std::fs::remove_file(&env.config_json).unwrap();
    env.run_once();
    assert_eq!(
        std::fs::read(env.archive_dir().join(NAME)).unwrap(),
        std::fs::read(&env.transcript).unwrap()
    );
    for a in ["a2898e3", "acompact-e1f845"] {
        let name = format!("agent-{a}.jsonl");
        assert_eq!(
            std::fs::read(env.archive_dir().join(&name)).unwrap(),
            std::fs::read(env.agent_path(a)).unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_with_a_missing_transcript_fails_with_one_line() {
    let env = Env::new();
    let out = env.run_once_output();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not exist") && err.trim().lines().count() == 1,
        "{err}"
    );
}

/// Runs `confab-sync run --once` under a pseudo-terminal (`script` from util-linux).
fn once_on_a_terminal(env: &Env) -> String {
    let cmdline = format!(
        "{BIN} run --session-id={} --transcript={} --once",
        env.id,
        env.transcript.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmdline, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &env.home)
        .env("CONFAB_CONFIG_PATH", &env.config_json)
        .env("CONFAB_CLAUDE_DIR", &env.claude)
        .env("TERM", "xterm")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_shows_progress_and_summary_only_on_a_terminal() {
    let env = Env::new();
    std::fs::copy(corpus("session_comprehensive.jsonl"), &env.transcript).unwrap();
    let tty = once_on_a_terminal(&env);
    assert!(
        tty.contains("lines synced") && tty.contains("MB/s"),
        "summary on a terminal: {tty}"
    );
    // Not a terminal: no bars, no summary.
    std::fs::remove_dir_all(env.archive_dir()).unwrap();
    let out = env.run_once();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("MB/s"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x5_pending_fragment_at_shutdown_is_logged_not_sent() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    env.write_transcript(&lines(0..1));
    append(&env.transcript, "{\"half\":");
    let child = env.spawn(&[]);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 1).await);
    signal(&child, Signal::SIGTERM);
    let (status, err) = wait_exit(child, T).await;
    assert!(status.success(), "{err}");
    assert_eq!(fake.position(&env.id, NAME), 1);
    assert!(
        err.contains("8 bytes after the last complete line were not sent"),
        "{err}"
    );
    fake.assert_no_violations();
}
