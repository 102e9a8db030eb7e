//! Acceptance section A (daemon end to end) and B (daemon control), against the fake backend,
//! with the library entry point.

use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use crate::support::fake::{Fake, Fault, Route, Times};

const T: Duration = Duration::from_secs(10);
const NAME: &str = TRANSCRIPT_NAME;

fn synced(fake: &Fake, env: &Env, file: &str) -> bool {
    fake.lines(&env.id, file) == complete_lines(&env.transcript.parent().unwrap().join(file))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1_three_lines_init_then_chunk() {
    let (fake, env) = setup(3).await;
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 3).await);
    d.stop_within(T).await;
    let reqs = fake.requests();
    let init = reqs
        .iter()
        .find(|r| r.route == Some(Route::Init))
        .unwrap()
        .body
        .clone()
        .unwrap();
    assert_eq!(init["external_id"], env.id.as_str());
    assert_eq!(
        init["transcript_path"],
        env.transcript.display().to_string()
    );
    assert_eq!(init["provider"], "claude-code");
    let chunk = fake.chunk_requests()[0].body.clone().unwrap();
    assert_eq!(
        chunk["session_id"].as_str(),
        fake.session_id(&env.id).as_deref()
    );
    assert_eq!(chunk["file_type"], "transcript");
    assert_eq!(chunk["first_line"], 1);
    assert_eq!(chunk["lines"].as_array().unwrap().len(), 3);
    assert!(chunk["metadata"].is_object());
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a2_survives_503s() {
    let (fake, env) = setup(3).await;
    fake.fault(Route::Any, Fault::Status503, Times::Next(2));
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 3).await);
    assert!(fake.request_count() >= 3);
    assert!(fake.statuses(Route::Init).contains(&200));
    d.stop_within(T).await;
    assert!(synced(&fake, &env, NAME));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a3_agent_chunk_has_no_metadata() {
    let (fake, env) = setup(0).await;
    env.write_transcript(&[line(0), agent_ref("abc12345")]);
    env.write_agent("abc12345", &lines(10..12));
    let d = env.start();
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, "agent-abc12345.jsonl") == 2)
            .await
    );
    d.stop_within(T).await;
    let agent = fake
        .chunk_requests()
        .into_iter()
        .find(|r| r.file_name() == Some("agent-abc12345.jsonl"))
        .unwrap();
    let body = agent.body.unwrap();
    assert_eq!(body["file_type"], "agent");
    assert_eq!(body["lines"].as_array().unwrap().len(), 2);
    assert!(body.get("metadata").is_none());
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a4_resumes_from_backend_position() {
    let (fake, env) = setup(4).await;
    fake.preset_position(&env.id, NAME, 2);
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 4).await);
    d.stop_within(T).await;
    let first = &fake.chunk_requests()[0];
    assert_eq!((first.first_line(), first.line_count()), (Some(3), Some(2)));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a5_appended_lines_follow() {
    let (fake, env) = setup(1).await;
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 1).await);
    env.append(&format!("{}\n{}\n", line(1), line(2)));
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 3).await);
    d.stop_within(T).await;
    let second = &fake.chunk_requests()[1];
    assert_eq!(
        (second.first_line(), second.line_count()),
        (Some(2), Some(2))
    );
    assert!(synced(&fake, &env, NAME));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a6_waits_for_a_missing_transcript() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    let d = env.start();
    // The launch state is written just before the wait for the transcript begins.
    assert!(eventually(T, || env.state_path().exists()).await);
    // The wait loop exposes nothing per poll, so a bare window of a few polls (50 ms each).
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        fake.request_count(),
        0,
        "no init before the transcript exists"
    );
    env.write_transcript(&lines(0..2));
    assert!(
        fake.wait_until(Duration::from_millis(2500), |f| f.position(&env.id, NAME)
            == 2)
            .await
    );
    d.stop_within(T).await;
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a7_missing_agent_is_not_an_error_and_is_picked_up_later() {
    let (fake, env) = setup(0).await;
    env.write_transcript(&[line(0), agent_ref("def67890")]);
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 2).await);
    let st = env.state().unwrap();
    assert_eq!(st["confab_sync"]["last_error"], Value::Null);
    env.write_agent("def67890", &lines(5..6));
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, "agent-def67890.jsonl") == 1)
            .await
    );
    d.stop_within(T).await;
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a9_empty_transcript_gets_init_and_no_chunk() {
    let (fake, env) = setup(0).await;
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.count(Route::Init) >= 1).await);
    // Several cycles pass (50 ms interval) without a chunk.
    assert!(eventually(T, || cycle_ended(&env)).await);
    assert!(cycles_pass(&env.state_path(), 4, T).await);
    d.stop_within(T).await;
    assert_eq!(fake.count(Route::Chunk), 0);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a10_final_sync_on_stop_uploads_the_last_line() {
    let (fake, env) = setup(1).await;
    let mut tuning = env.tuning();
    tuning.interval = Duration::from_secs(10);
    let d = env.start_with(env.options(), tuning);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 1).await);
    env.append(&format!("{}\n", line(1)));
    let exit = d.stop_within(T).await;
    assert_eq!(exit.code(), 0);
    assert_eq!(fake.position(&env.id, NAME), 2);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a11_agents_uploaded_in_name_order() {
    let (fake, env) = setup(1).await;
    for id in ["cccccccc", "aaaaaaaa", "bbbbbbbb"] {
        env.write_agent(id, &lines(0..1));
    }
    let d = env.start();
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, "agent-cccccccc.jsonl") == 1)
            .await
    );
    d.stop_within(T).await;
    let order: Vec<String> = fake
        .chunk_requests()
        .iter()
        .map(|r| r.file_name().unwrap().to_string())
        .collect();
    assert_eq!(
        order,
        [
            NAME,
            "agent-aaaaaaaa.jsonl",
            "agent-bbbbbbbb.jsonl",
            "agent-cccccccc.jsonl"
        ]
    );
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a12_agent_added_mid_session() {
    let (fake, env) = setup(1).await;
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 1).await);
    env.write_agent("12345678", &lines(0..3));
    env.append(&format!("{}\n", agent_ref("12345678")));
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, "agent-12345678.jsonl") == 3)
            .await
    );
    d.stop_within(T).await;
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a15_connection_close_429_and_500_then_success() {
    let (fake, env) = setup(5).await;
    fake.fault(Route::Any, Fault::CloseConnection, Times::Next(1));
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.request_count() >= 1).await);
    fake.fault(Route::Any, Fault::Status429, Times::Next(1));
    fake.fault(Route::Any, Fault::Status500BeforeStore, Times::Next(1));
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 5).await);
    d.stop_within(T).await;
    assert!(fake.request_count() >= 4);
    assert_eq!(fake.lines(&env.id, NAME), complete_lines(&env.transcript));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a16_thousand_lines_compressed() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    let big: Vec<String> = (0..1000)
        .map(|i| format!(r#"{{"i":{i},"pad":"{}"}}"#, "x".repeat(1000)))
        .collect();
    env.write_transcript(&big);
    let d = env.start();
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, NAME) == 1000)
            .await
    );
    d.stop_within(T).await;
    assert!(fake
        .chunk_requests()
        .iter()
        .all(|r| r.header("content-encoding") == Some("zstd")));
    assert_eq!(fake.lines(&env.id, NAME), big);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a17_big_lines_cut_in_contiguous_chunks_under_target() {
    let fake = Fake::start().await;
    fake.set_record_body_limit(Some(64));
    let env = Env::with_backend(&fake.url());
    let big: Vec<String> = (0..200)
        .map(|i| format!(r#"{{"i":{i},"pad":"{}"}}"#, "y".repeat(100_000)))
        .collect();
    env.write_transcript(&big);
    let d = env.start();
    assert!(
        fake.wait_until(Duration::from_secs(60), |f| f.position(&env.id, NAME)
            == 200)
            .await
    );
    d.stop_within(T).await;
    let chunks = fake.chunk_requests();
    assert!(chunks.len() >= 2);
    let mut next = 1;
    for c in &chunks {
        assert_eq!(c.first_line(), Some(next));
        next += c.line_count().unwrap() as u64;
        assert!(c.json_size <= 15 * 1024 * 1024);
        assert!(c.json_size <= 4 * 1024 * 1024 || c.line_count() == Some(1));
    }
    assert_eq!(fake.lines(&env.id, NAME), big);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a18_fifteen_mib_line_becomes_placeholder() {
    use sha2::Digest;
    let fake = Fake::start().await;
    fake.set_record_body_limit(Some(64));
    let env = Env::with_backend(&fake.url());
    let huge = "z".repeat(15 * 1024 * 1024);
    env.write_transcript(&[line(0), huge.clone(), line(2)]);
    let d = env.start();
    assert!(
        fake.wait_until(Duration::from_secs(30), |f| f.position(&env.id, NAME) == 3)
            .await
    );
    d.stop_within(T).await;
    let stored = fake.lines(&env.id, NAME);
    assert_eq!(stored[0], line(0));
    assert_eq!(stored[2], line(2));
    let ph: Value = serde_json::from_str(&stored[1]).unwrap();
    assert_eq!(ph["type"], "confab_oversized_line");
    assert_eq!(ph["original_bytes"], 15 * 1024 * 1024);
    assert_eq!(
        ph["sha256"],
        hex::encode(sha2::Sha256::digest(huge.as_bytes()))
    );
    assert!(fake.statuses(Route::Chunk).iter().all(|s| *s == 200));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a19_generic_400s_back_off_then_succeed() {
    let (fake, env) = setup(3).await;
    fake.fault(Route::Chunk, Fault::Generic400, Times::Next(2));
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 3).await);
    d.stop_within(T).await;
    let ok = fake
        .chunk_requests()
        .into_iter()
        .find(|r| r.status == 200)
        .unwrap();
    assert_eq!((ok.first_line(), ok.line_count()), (Some(1), Some(3)));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a22_rollback_resends_from_backend_position() {
    let (fake, env) = setup(6).await;
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 6).await);
    d.stop_within(T).await;
    fake.rollback(&env.id, NAME, 3);
    let before = fake.chunk_requests().len();
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 6).await);
    d.stop_within(T).await;
    let resent = &fake.chunk_requests()[before];
    assert_eq!(
        (resent.first_line(), resent.line_count()),
        (Some(4), Some(3))
    );
    assert_eq!(fake.lines(&env.id, NAME), complete_lines(&env.transcript));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a23_session_gone_three_times_exits_cleanly_without_event() {
    let (fake, env) = setup(3).await;
    fake.fault(Route::Chunk, Fault::SessionNotFound404, Times::Always);
    let d = env.start();
    let exit = tokio::time::timeout(Duration::from_secs(4), d.task)
        .await
        .expect("exits by itself")
        .unwrap();
    assert_eq!(exit.code(), 0);
    assert!(fake.count(Route::Chunk) >= 3);
    assert_eq!(fake.count(Route::Event), 0);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a24_session_gone_twice_then_recovers() {
    let (fake, env) = setup(3).await;
    fake.fault(Route::Chunk, Fault::SessionNotFound404, Times::Next(2));
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 3).await);
    // A daemon that still counted the two 404s would leave at the next one; it keeps cycling.
    assert!(cycles_pass(&env.state_path(), 5, T).await);
    assert!(!d.task.is_finished());
    assert!(fake.count(Route::Chunk) >= 3);
    d.stop_within(T).await;
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b1_b3_stop_is_prompt_and_idempotent() {
    let (fake, env) = setup(1).await;
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 1).await);
    d.stop.stop();
    d.stop.stop();
    d.stop.stop();
    let exit = tokio::time::timeout(Duration::from_secs(2), d.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), 0);
    assert!(env.state().is_none(), "state removed on a clean stop");
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b4_stop_during_transcript_wait() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    let d = env.start();
    assert!(eventually(T, || env.state().is_some()).await);
    let exit = d.stop_within(Duration::from_secs(2)).await;
    assert!(
        matches!(&exit, confab_sync::daemon::Exit::Clean(why) if why.contains("ended before the transcript appeared")),
        "{exit:?}"
    );
    assert_eq!(fake.request_count(), 0);
    assert!(env.state().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b11_new_key_picked_up_without_restart() {
    let fake = Fake::start().await;
    let env = Env::new();
    env.write_config(&fake.url(), "bad-key");
    env.write_transcript(&lines(0..2));
    let d = env.start();
    assert!(
        fake.wait_until(T, |f| f.statuses(Route::Init).contains(&401))
            .await
    );
    env.write_config(&fake.url(), crate::support::fake::API_KEY);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 2).await);
    d.stop_within(T).await;
    let last = fake.requests().last().cloned().unwrap();
    assert!(last.used_key(crate::support::fake::API_KEY));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b12_shutdown_budget_bounds_a_slow_chunk() {
    let (fake, env) = setup(1).await;
    let mut tuning = env.tuning();
    tuning.shutdown_budget = Duration::from_millis(200);
    let d = env.start_with(env.options(), tuning);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 1).await);
    fake.hold(Route::Chunk, Duration::from_secs(2), Times::Always);
    env.append(&format!("{}\n", line(1)));
    assert!(fake.wait_until(T, |f| f.count(Route::Chunk) >= 2).await);
    let start = std::time::Instant::now();
    d.stop_within(Duration::from_secs(2)).await;
    assert!(
        start.elapsed() < Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b13_session_end_event_sent_once_with_inbox_timestamp() {
    let (fake, env) = setup(2).await;
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 2).await);
    let hook = serde_json::json!({"session_id": env.id, "transcript_path": env.transcript, "cwd": "/w",
        "permission_mode": "default", "hook_event_name": "SessionEnd", "reason": "exit"});
    let ev = serde_json::json!({"type":"session_end","timestamp":"2026-03-28T09:08:15.123456789-07:00","hook_input":hook});
    append(&env.inbox_path(), &format!("{ev}\n"));
    d.stop_within(T).await;
    let events = fake.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0]["timestamp"],
        "2026-03-28T09:08:15.123456789-07:00"
    );
    let payload = events[0]["payload"].as_object().unwrap();
    for k in [
        "session_id",
        "transcript_path",
        "cwd",
        "permission_mode",
        "hook_event_name",
        "reason",
    ] {
        assert!(payload.contains_key(k), "{k}");
    }
    assert!(
        !env.inbox_path().exists(),
        "B10: shutdown removes the inbox"
    );
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b1_shutdown_future_returns_within_two_seconds() {
    let (fake, env) = setup(1).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = confab_sync::daemon::Daemon::new(env.options(), env.paths(), env.tuning());
    let task = tokio::spawn(daemon.run(async move {
        let _ = rx.await;
    }));
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 1).await);
    tx.send(()).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e8_e9_e11_non_json_big_and_oversized_first_lines() {
    let fake = Fake::start().await;
    fake.set_record_body_limit(Some(64));
    let env = Env::with_backend(&fake.url());
    let mut tuning = env.tuning();
    tuning.chunk_hard_limit = 1024 * 1024;
    tuning.chunk_target_bytes = 1024 * 1024;
    let oversized = "o".repeat(2 * 1024 * 1024);
    let big = format!(r#"{{"big":"{}"}}"#, "b".repeat(500_000));
    env.write_transcript(&[
        oversized,
        "not json at all".into(),
        big.clone(),
        String::new(),
        line(4),
    ]);
    let d = env.start_with(env.options(), tuning);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 5).await);
    d.stop_within(T).await;
    let stored = fake.lines(&env.id, NAME);
    assert!(
        stored[0].contains("confab_oversized_line"),
        "a first line over the limit is a placeholder"
    );
    assert_eq!(stored[1], "not json at all");
    assert_eq!(stored[2], big);
    assert_eq!(stored[3], "");
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e12_lines_appended_while_a_chunk_is_in_flight() {
    let (fake, env) = setup(3).await;
    fake.hold(Route::Chunk, Duration::from_millis(300), Times::Next(1));
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.count(Route::Chunk) == 1).await);
    env.append(&format!("{}\n{}\n", line(3), line(4)));
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 5).await);
    d.stop_within(T).await;
    assert_eq!(fake.lines(&env.id, NAME), complete_lines(&env.transcript));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_change_wakes_the_loop_long_before_the_interval() {
    let (fake, env) = setup(1).await;
    let mut tuning = env.tuning();
    tuning.interval = Duration::from_secs(60);
    let d = env.start_with(env.options(), tuning);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 1).await);
    // Let the first cycle end, so only a wake-up can send what comes next.
    assert!(eventually(T, || cycle_ended(&env)).await);
    let appended = std::time::Instant::now();
    env.append(&format!("{}\n", line(1)));
    assert!(
        fake.wait_until(Duration::from_secs(3), |f| f.position(&env.id, NAME) == 2)
            .await,
        "an appended line is sent on the file-change wake-up, not after the 60 s interval"
    );
    assert!(
        appended.elapsed() >= Duration::from_millis(100),
        "sent after the debounce, by a wake-up"
    );
    // An agent file created later wakes it too.
    env.write_agent("wakeup01", &lines(0..1));
    assert!(
        fake.wait_until(Duration::from_secs(3), |f| f
            .position(&env.id, "agent-wakeup01.jsonl")
            == 1)
            .await
    );
    d.stop_within(T).await;
    fake.assert_no_violations();
}
