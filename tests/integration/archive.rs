//! Acceptance section L: the embedded local archive, end to end.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;

use crate::harness::*;
use crate::support::fake::Fake;

const T: Duration = Duration::from_secs(10);
const NAME: &str = TRANSCRIPT_NAME;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn archived(dir: &std::path::Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(file)).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_no_config_archives_transcript_and_agents_with_crlf_to_lf() {
    let env = Env::new();
    std::fs::copy(
        corpus("4d5611e5-241a-462a-8d15-5122611a9569/subagents/agent-a2898e3.jsonl"),
        &env.transcript,
    )
    .unwrap();
    append(&env.transcript, "{\"crlf\":1}\r\n{\"crlf\":2}\r\n");
    env.write_agent("abcdef12", &lines(0..3));
    env.run_once();
    let dir = env.archive_dir();
    assert_eq!(
        archived(&dir, NAME),
        expected_archive_bytes(&env.transcript)
    );
    assert_eq!(
        archived(&dir, "agent-abcdef12.jsonl"),
        expected_archive_bytes(&env.agent_path("abcdef12"))
    );
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(NAME)), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_file_url_and_xdg_data_home_choose_the_root() {
    let env = Env::new();
    env.write_transcript(&lines(0..4));
    let root = env.tmp.path().join("x/arch");
    env.write_config_json(serde_json::json!({"backend_url": format!("file://{}", root.display())}));
    env.run_once();
    assert_eq!(
        std::fs::read(root.join(&env.id).join(NAME)).unwrap(),
        expected_archive_bytes(&env.transcript)
    );

    std::fs::remove_file(&env.config_json).unwrap();
    let xdg = env.tmp.path().join("xdg");
    let out = env
        .command()
        .env("XDG_DATA_HOME", &xdg)
        .args(env.run_args())
        .arg("--once")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        std::fs::read(xdg.join("confab-sync/archive").join(&env.id).join(NAME)).unwrap(),
        expected_archive_bytes(&env.transcript)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l3_kill_9_rounds_while_appending_then_exact() {
    let env = Env::new();
    env.write_transcript(&lines(0..10));
    let mut rng = rand::thread_rng();
    let mut next = 10;
    for _ in 0..15 {
        let mut child = env.spawn(&[]);
        for _ in 0..rng.gen_range(1..6) {
            let batch: String = (next..next + 7).map(|i| line(i) + "\n").collect();
            append(&env.transcript, &batch);
            next += 7;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..40))).await;
        }
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        wait_child(&mut child, T).await;
    }
    // A torn tail planted in the archive (half a line, no newline) is cut off at init.
    let archived_file = env.archive_dir().join(NAME);
    if archived_file.exists() {
        append(&archived_file, "{\"torn\":");
    }
    env.run_once();
    assert_eq!(
        std::fs::read(&archived_file).unwrap(),
        expected_archive_bytes(&env.transcript)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_sigterm_with_session_end_writes_one_event_and_session_json() {
    let env = Env::new();
    env.write_transcript(&lines(0..2));
    let mut child = env.spawn(&[]);
    assert!(eventually(T, || env.archive_dir().join(NAME).exists()).await);
    env.queue_session_end();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(wait_child(&mut child, T).await.success());
    let events = std::fs::read_to_string(env.archive_dir().join("events.jsonl")).unwrap();
    assert_eq!(events.lines().count(), 1);
    let ev: serde_json::Value = serde_json::from_str(events.lines().next().unwrap()).unwrap();
    assert_eq!(ev["event_type"], "session_end");
    assert_eq!(ev["payload"]["reason"], "exit");
    let session: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.archive_dir().join("session.json")).unwrap())
            .unwrap();
    assert_eq!(session["provider"], "claude-code");
    assert_eq!(
        session["transcript_path"],
        env.transcript.display().to_string()
    );
    assert!(session["cwd"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l5_switching_archive_to_backend_and_back() {
    let fake = Fake::start().await;
    let env = Env::new();
    env.write_transcript(&lines(0..3));
    let d = env.start();
    assert!(
        eventually(T, || std::fs::read(env.archive_dir().join(NAME))
            .is_ok_and(|b| b == expected_archive_bytes(&env.transcript)))
        .await
    );
    env.write_config(&fake.url(), crate::support::fake::API_KEY);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 3).await);
    assert_eq!(
        fake.chunk_requests()[0].first_line(),
        Some(1),
        "the backend gets every line from line 1"
    );
    let before = std::fs::read(env.archive_dir().join(NAME)).unwrap();
    append(&env.transcript, &(line(3) + "\n"));
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 4).await);
    assert_eq!(
        std::fs::read(env.archive_dir().join(NAME)).unwrap(),
        before,
        "the archive is left as it was"
    );
    // And back: the archive catches up from its own position.
    std::fs::remove_file(&env.config_json).unwrap();
    append(&env.transcript, &(line(4) + "\n"));
    assert!(
        eventually(T, || std::fs::read(env.archive_dir().join(NAME))
            .is_ok_and(|b| b == expected_archive_bytes(&env.transcript)))
        .await
    );
    d.stop_within(T).await;
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l6_unwritable_archive_then_writable_again_is_exact() {
    let env = Env::new();
    env.write_transcript(&lines(0..2));
    let d = env.start();
    let file = env.archive_dir().join(NAME);
    assert!(
        eventually(T, || std::fs::read(&file)
            .is_ok_and(|b| b == expected_archive_bytes(&env.transcript)))
        .await
    );
    // Root ignores permissions: make the archived file's path unusable by putting a directory there.
    let saved = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    append(&env.transcript, &(line(2) + "\n"));
    assert!(
        eventually(T, || env
            .state()
            .is_some_and(|s| s["confab_sync"]["last_error"].is_string()))
        .await
    );
    assert!(!d.task.is_finished(), "the daemon keeps running");
    std::fs::remove_dir(&file).unwrap();
    std::fs::write(&file, &saved).unwrap();
    append(&env.transcript, &(line(3) + "\n"));
    assert!(
        eventually(T, || std::fs::read(&file)
            .is_ok_and(|b| b == expected_archive_bytes(&env.transcript)))
        .await
    );
    d.stop_within(T).await;
}
