//! Acceptance section X: where we must beat the existing client (H1–H39), in process.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;
use crate::support::fake::{Fake, Fault, Route, Times};

const T: Duration = Duration::from_secs(10);
const NAME: &str = TRANSCRIPT_NAME;

fn state_file_entry(env: &Env) -> Value {
    env.state().unwrap()["confab_sync"]["files"][NAME].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x2_checkpoint_after_every_ack_is_exact() {
    let (fake, env) = setup(0).await;
    let mut tuning = env.tuning();
    tuning.chunk_target_bytes = 600;
    let all = lines(0..20);
    env.write_transcript(&all);
    let d = env.start_with(env.options(), tuning);
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, NAME) == 20)
            .await
    );
    assert!(eventually(T, || state_file_entry(&env)["acked_line"] == 20).await);
    let e = state_file_entry(&env);
    let expected: usize = all.iter().map(|l| l.len() + 1).sum();
    assert_eq!(e["acked_offset"], expected as u64);
    assert!(
        fake.chunk_requests().len() > 3,
        "small target cuts several chunks"
    );

    d.stop_within(T).await;
    // Every write was tmp + rename: nothing is left behind once the writer is done.
    let leftovers: Vec<_> = std::fs::read_dir(env.home.join(".confab/sync"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x3_restart_after_big_sync_reads_only_the_new_bytes() {
    let fake = Fake::start().await;
    fake.set_record_body_limit(Some(64));
    let env = Env::with_backend(&fake.url());
    // ~50 MB of real lines.
    let corpus_text =
        std::fs::read_to_string(corpus("4d5611e5-241a-462a-8d15-5122611a9569.jsonl")).unwrap();
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&env.transcript).unwrap());
        while f.get_ref().metadata().unwrap().len() < 50_000_000 {
            f.write_all(corpus_text.as_bytes()).unwrap();
            f.flush().unwrap();
        }
    }
    let total = complete_lines(&env.transcript).len() as u64;
    let d = env.start();
    assert!(
        fake.wait_until(Duration::from_secs(120), |f| f.position(&env.id, NAME)
            == total)
            .await
    );
    // Fully synced means checkpointed too; then simulate kill -9: abort without any shutdown work.
    assert!(eventually(T, || state_file_entry(&env)["acked_line"] == total).await);
    d.task.abort();
    let _ = d.task.await;
    env.append(&format!("{}\n", line(1)));
    let before = fake.chunk_requests().len();
    let d = env.start();
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, NAME) == total + 1)
            .await
    );
    let read = d.counters.get(NAME);
    d.stop_within(T).await;
    let new = &fake.chunk_requests()[before..];
    assert_eq!(
        new.len(),
        1,
        "{:?}",
        new.iter()
            .map(|c| (c.first_line(), c.line_count(), c.status))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        (new[0].first_line(), new[0].line_count()),
        (Some(total + 1), Some(1))
    );
    assert!(read < 64 * 1024, "read {read} bytes");
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x4_x5_partial_line_waits_for_its_newline() {
    let (fake, env) = setup(0).await;
    env.append("{\"a\":1}\n{\"b\":");
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 1).await);
    // Each later cycle sees the fragment again; two whole ones must not send it.
    assert!(cycles_pass(&env.state_path(), 3, T).await);
    assert_eq!(fake.position(&env.id, NAME), 1);
    env.append("2}\n");
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 2).await);
    assert_eq!(fake.lines(&env.id, NAME), vec!["{\"a\":1}", "{\"b\":2}"]);
    env.append("{\"c\":");
    d.stop_within(T).await;
    assert_eq!(
        fake.position(&env.id, NAME),
        2,
        "a fragment is never sent, not even at shutdown"
    );
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x6_rewrite_with_longer_lines_reinits_and_sends_only_new_tail() {
    let (fake, env) = setup(5).await;
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 5).await);
    let inits = fake.count(Route::Init);
    let longer: Vec<String> = (0..7)
        .map(|i| format!(r#"{{"rewritten":{i},"pad":"{}"}}"#, "w".repeat(50)))
        .collect();
    env.write_transcript(&longer);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 7).await);
    d.stop_within(T).await;
    assert!(fake.count(Route::Init) > inits, "re-init after the rewrite");
    let last = fake.chunk_requests().last().cloned().unwrap();
    assert_eq!((last.first_line(), last.line_count()), (Some(6), Some(2)));
    let body = last.body.unwrap();
    assert_eq!(body["lines"][0], longer[5].as_str());
    assert_eq!(body["lines"][1], longer[6].as_str());
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x7_replacement_by_rename_is_detected() {
    let (fake, env) = setup(3).await;
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 3).await);
    let inits = fake.count(Route::Init);
    let tmp = env.transcript.with_extension("new");
    write_lines(&tmp, &lines(0..3));
    std::fs::rename(&tmp, &env.transcript).unwrap();
    assert!(fake.wait_until(T, |f| f.count(Route::Init) > inits).await);
    env.append(&format!("{}\n", line(3)));
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 4).await);
    d.stop_within(T).await;
    assert_eq!(fake.lines(&env.id, NAME), complete_lines(&env.transcript));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x8_truncated_file_diverges_until_it_grows_past_the_backend() {
    let (fake, env) = setup(5).await;
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 5).await);
    env.write_transcript(&lines(0..2));
    env.append(&format!("{}\n{}\n", line(2), line(3)));
    assert!(eventually(T, || state_file_entry(&env)["status"] == "diverged").await);
    assert_eq!(fake.position(&env.id, NAME), 5);
    env.append(&format!("{}\n{}\n", line(4), line(55)));
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 6).await);
    d.stop_within(T).await;
    assert_eq!(fake.lines(&env.id, NAME)[5], line(55));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x9_rewrite_while_down_rescans_by_line_count() {
    let (fake, env) = setup(4).await;
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 4).await);
    d.task.abort();
    let _ = d.task.await;
    let other: Vec<String> = (0..6).map(|i| format!(r#"{{"other":{i}}}"#)).collect();
    env.write_transcript(&other);
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 6).await);
    d.stop_within(T).await;
    let stored = fake.lines(&env.id, NAME);
    assert_eq!(stored[4..], other[4..]);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x10_quote_heavy_lines_stay_under_the_hard_limit() {
    let fake = Fake::start().await;
    fake.set_record_body_limit(Some(64));
    let env = Env::with_backend(&fake.url());
    let mut tuning = env.tuning();
    tuning.chunk_target_bytes = tuning.chunk_hard_limit;
    // 15 MiB of lines made of about half `"` characters (each costs 2 bytes once encoded).
    let one = format!(r#"{{"q":"{}"}}"#, "a\\\"".repeat(25_000));
    let n = 15 * 1024 * 1024 / one.len() + 1;
    env.write_transcript(&vec![one.clone(); n]);
    let d = env.start_with(env.options(), tuning);
    assert!(
        fake.wait_until(Duration::from_secs(60), |f| f.position(&env.id, NAME)
            == n as u64)
            .await
    );
    d.stop_within(T).await;
    assert!(fake
        .chunk_requests()
        .iter()
        .all(|c| c.status == 200 && c.json_size <= 15 * 1024 * 1024));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x12_three_size_rejections_give_a_placeholder() {
    let (fake, env) = setup(1).await;
    fake.fault(Route::Chunk, Fault::InvalidBody400, Times::Next(3));
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 1).await);
    d.stop_within(T).await;
    let chunks = fake.chunk_requests();
    assert_eq!(chunks.len(), 4);
    let stored: Value = serde_json::from_str(&fake.lines(&env.id, NAME)[0]).unwrap();
    assert_eq!(stored["type"], "confab_oversized_line");
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x13_hostile_init_keys_are_ignored() {
    let (fake, env) = setup(1).await;
    for key in [
        "../../x.jsonl",
        "agent-../x.jsonl",
        "subagents/workflows/r/agent-a.jsonl",
        "agent-ok123456.jsonl",
    ] {
        fake.preset_position(&env.id, key, 1);
    }
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 1).await);
    assert!(
        eventually(T, || env.state().is_some_and(|s| s["confab_sync"]["files"]
            ["agent-ok123456.jsonl"]["status"]
            == "waiting"))
        .await
    );
    let files = env.state().unwrap()["confab_sync"]["files"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(
        files,
        vec!["agent-ok123456.jsonl".to_string(), NAME.to_string()]
    );
    d.stop_within(T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x14_crlf_lines_with_small_chunks() {
    let (fake, env) = setup(0).await;
    let mut tuning = env.tuning();
    tuning.chunk_target_bytes = 400;
    let mut body = String::new();
    for i in 0..30 {
        body.push_str(&line(i));
        body.push_str("\r\n");
    }
    std::fs::write(&env.transcript, &body).unwrap();
    let d = env.start_with(env.options(), tuning);
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, NAME) == 30)
            .await
    );
    assert!(
        eventually(T, || state_file_entry(&env)["acked_offset"]
            == body.len() as u64)
        .await
    );
    d.stop_within(T).await;
    assert_eq!(fake.lines(&env.id, NAME), lines(0..30));
    assert!(fake.chunk_requests().len() > 2);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x17_requests_strictly_sequential_with_slow_backend() {
    let (fake, env) = setup(2).await;
    env.write_agent("aaaaaaaa", &lines(0..2));
    env.write_agent("bbbbbbbb", &lines(0..2));
    fake.hold(Route::Chunk, Duration::from_millis(300), Times::Always);
    let d = env.start();
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, "agent-bbbbbbbb.jsonl") == 2)
            .await
    );
    d.stop_within(T).await;
    assert_eq!(fake.peak_concurrency(), 1);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x19_stop_during_a_held_chunk_exits_within_budget() {
    let (fake, env) = setup(1).await;
    let mut tuning = env.tuning();
    tuning.shutdown_budget = Duration::from_secs(2);
    fake.hold(Route::Chunk, Duration::from_secs(60), Times::Always);
    let d = env.start_with(env.options(), tuning);
    assert!(fake.wait_until(T, |f| f.count(Route::Chunk) >= 1).await);
    let start = Instant::now();
    d.stop_within(Duration::from_millis(2500)).await;
    assert!(start.elapsed() < Duration::from_millis(2500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x18_stop_during_429_wait_is_prompt() {
    let (fake, env) = setup(1).await;
    let mut tuning = env.tuning();
    tuning.shutdown_budget = Duration::from_secs(2);
    fake.set_retry_after(Some("30".into()));
    fake.fault(Route::Chunk, Fault::Status429, Times::Always);
    let d = env.start_with(env.options(), tuning);
    assert!(
        fake.wait_until(T, |f| f.statuses(Route::Chunk).contains(&429))
            .await
    );
    let start = Instant::now();
    d.stop_within(Duration::from_secs(3)).await;
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x22_chunk_order_is_deterministic() {
    for _ in 0..20 {
        let (fake, env) = setup(1).await;
        for id in ["bbbbbbbb", "aaaaaaaa", "cccccccc"] {
            env.write_agent(id, &lines(0..1));
        }
        let d = env.start();
        assert!(fake.wait_until(T, |f| f.chunk_requests().len() >= 4).await);
        d.stop_within(T).await;
        let order: Vec<String> = fake
            .chunk_requests()
            .iter()
            .map(|r| r.file_name().unwrap().to_string())
            .collect();
        assert_eq!(
            order[..4],
            [
                NAME,
                "agent-aaaaaaaa.jsonl",
                "agent-bbbbbbbb.jsonl",
                "agent-cccccccc.jsonl"
            ]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x28_refresh_after_503_keeps_cwd() {
    let (fake, env) = setup(1).await;
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 1).await);
    let cwd = fake.stored_cwd(&env.id).unwrap();
    assert!(!cwd.is_empty());
    fake.fault(Route::Chunk, Fault::Status503, Times::Next(1));
    env.append(&format!("{}\n", line(1)));
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 2).await);
    d.stop_within(T).await;
    assert_eq!(fake.stored_cwd(&env.id).unwrap(), cwd);
    let inits = fake.requests_to(Route::Init);
    assert!(inits.len() >= 2);
    assert!(inits
        .iter()
        .all(|r| r.body.as_ref().unwrap()["metadata"]["cwd"] == cwd.as_str()));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x29_wrong_ack_value_is_not_trusted() {
    let (fake, env) = setup(2).await;
    fake.fault(Route::Chunk, Fault::WrongLastSyncedLine(5), Times::Next(1));
    let d = env.start();
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, NAME) == 2
            && f.count(Route::Init) >= 2)
            .await
    );
    env.append(&format!("{}\n", line(2)));
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 3).await);
    d.stop_within(T).await;
    assert_eq!(fake.lines(&env.id, NAME), complete_lines(&env.transcript));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x30_storage_404s_are_not_session_gone() {
    let (fake, env) = setup(1).await;
    fake.fault(
        Route::Chunk,
        Fault::FileNotFoundInStorage404,
        Times::Next(5),
    );
    let d = env.start();
    assert!(
        fake.wait_until(Duration::from_secs(30), |f| f.position(&env.id, NAME) == 1)
            .await
    );
    assert!(!d.task.is_finished());
    d.stop_within(T).await;
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x31_chunk_cap_parks_the_file_and_others_continue() {
    let (fake, env) = setup(0).await;
    fake.set_chunk_cap(3);
    let d = env.start();
    for i in 0..4 {
        env.append(&format!("{}\n", line(i)));
        if i < 3 {
            assert!(
                fake.wait_until(T, |f| f.position(&env.id, NAME) == i as u64 + 1)
                    .await
            );
        }
    }
    assert!(eventually(T, || state_file_entry(&env)["status"] == "parked").await);
    let rejected = fake.count(Route::Chunk);
    env.write_agent("aaaaaaaa", &lines(0..2));
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, "agent-aaaaaaaa.jsonl") == 2)
            .await
    );
    // The parked file is skipped by every cycle until the hourly retry: a few cycles must pass
    // without a new chunk for it.
    assert!(cycles_pass(&env.state_path(), 4, T).await);
    let transcript_chunks = fake
        .chunk_requests()
        .iter()
        .filter(|r| r.file_name() == Some(NAME))
        .count();
    assert_eq!(
        transcript_chunks, rejected,
        "no retry before the hourly one"
    );
    assert!(state_file_entry(&env)["last_error"]
        .as_str()
        .unwrap()
        .contains("too many chunks"));
    d.stop_within(T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x31_line_number_limit_parks_without_crossing() {
    let (fake, env) = setup(3).await;
    // The backend already holds 99,999,998 lines; the file has 3 lines, so nothing is sent until
    // it has more. Simulate a file at the limit by presetting just below its line count.
    fake.preset_position(&env.id, NAME, 99_999_998);
    let d = env.start();
    assert!(
        eventually(T, || env.state().is_some_and(|s| s["confab_sync"]["files"]
            [NAME]["acked_line"]
            == 99_999_998u64))
        .await
    );
    d.stop_within(T).await;
    assert!(fake
        .chunk_requests()
        .iter()
        .all(|c| c.first_line().unwrap() + c.line_count().unwrap() as u64 - 1 <= 99_999_999));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x34_init_once_at_shutdown_when_it_never_succeeded() {
    let (fake, env) = setup(2).await;
    fake.fault(Route::Any, Fault::Status503, Times::Always);
    env.queue_session_end();
    let d = env.start();
    assert!(
        fake.wait_until(T, |f| f.statuses(Route::Init).contains(&503))
            .await
    );
    fake.clear_faults();
    d.stop_within(T).await;
    assert_eq!(fake.position(&env.id, NAME), 2);
    assert_eq!(fake.events().len(), 1);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x35_failed_cycles_back_off_exponentially() {
    let (fake, env) = setup(1).await;
    let mut tuning = env.tuning();
    tuning.interval = Duration::from_millis(100);
    fake.fault(Route::Any, Fault::Status503, Times::Always);
    let d = env.start_with(env.options(), tuning);
    assert!(
        fake.wait_until(Duration::from_secs(5), |f| f.count(Route::Init) >= 5)
            .await
    );
    d.stop_within(T).await;
    let times: Vec<tokio::time::Instant> = fake
        .requests_to(Route::Init)
        .iter()
        .map(|r| r.started)
        .collect();
    let gaps: Vec<u128> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    // 100, 200, 400, 800 ms: each gap about double the one before.
    for w in gaps.windows(2).take(3) {
        assert!(w[1] as f64 >= w[0] as f64 * 1.6, "gaps {gaps:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x44_dropped_connection_after_commit_no_duplicate() {
    let (fake, env) = setup(3).await;
    fake.fault(Route::Chunk, Fault::DropAfterCommit, Times::Next(1));
    let d = env.start();
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, NAME) == 3
            && f.count(Route::Init) >= 2)
            .await
    );
    env.append(&format!("{}\n", line(3)));
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 4).await);
    d.stop_within(T).await;
    assert_eq!(fake.lines(&env.id, NAME), complete_lines(&env.transcript));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x45_orphan_then_500_resend_covers_it() {
    let (fake, env) = setup(3).await;
    fake.fault(Route::Chunk, Fault::OrphanThen500, Times::Next(1));
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 3).await);
    d.stop_within(T).await;
    let chunks = fake.chunk_requests();
    assert_eq!(chunks[0].first_line(), chunks[1].first_line());
    assert!(chunks[1].line_count() >= chunks[0].line_count());
    assert_eq!(
        fake.merged_lines(&env.id, NAME),
        complete_lines(&env.transcript)
    );
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x46_trailing_slash_backend_url_works() {
    let fake = Fake::start().await;
    let env = Env::new();
    env.write_config(&format!("{}/", fake.url()), crate::support::fake::API_KEY);
    env.write_transcript(&lines(0..3));
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 3).await);
    d.stop_within(T).await;
    assert!(fake.requests().iter().all(|r| !r.path.contains("//")));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x31_h30_backend_named_missing_agent_waits_then_resumes() {
    let (fake, env) = setup(1).await;
    fake.preset_lines(&env.id, "agent-missing01.jsonl", &["{\"a\":0}"]);
    let d = env.start();
    assert!(
        eventually(T, || env.state().is_some_and(|s| s["confab_sync"]["files"]
            ["agent-missing01.jsonl"]["status"]
            == "waiting"))
        .await
    );
    assert_eq!(
        env.state().unwrap()["confab_sync"]["last_error"],
        Value::Null
    );
    env.write_agent(
        "missing01",
        &["{\"a\":0}".to_string(), "{\"a\":1}".to_string()],
    );
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, "agent-missing01.jsonl") == 2)
            .await
    );
    d.stop_within(T).await;
    let c = fake
        .chunk_requests()
        .into_iter()
        .find(|r| r.file_name() == Some("agent-missing01.jsonl"))
        .unwrap();
    assert_eq!(c.first_line(), Some(2));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x39_state_survives_until_another_pid_takes_it() {
    let (fake, env) = setup(1).await;
    let mut tuning = env.tuning();
    // Idle between cycles, so the daemon is not writing its state while the test rewrites it.
    tuning.interval = Duration::from_secs(30);
    let d = env.start_with(env.options(), tuning);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 1).await);
    assert!(eventually(T, || cycle_ended(&env)).await);
    let mut st = env.state().unwrap();
    st["pid"] = Value::from(1);
    write_atomic(
        &env.state_path(),
        serde_json::to_string_pretty(&st).unwrap().as_bytes(),
    );
    d.stop_within(T).await;
    assert!(
        env.state().is_some(),
        "a state that is no longer ours is not deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x15_parent_with_wrong_start_token_counts_as_dead() {
    let (fake, env) = setup(1).await;
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    // A state written for this parent pid, but with another process's start token.
    let mut st = confab_sync::state::State::new(
        &env.paths(),
        &env.id,
        &env.transcript.display().to_string(),
        "/",
        sleeper.id() as i64,
    );
    st.confab_sync.parent_start = Some("linux:not-this-boot:1".into());
    std::fs::create_dir_all(env.state_path().parent().unwrap()).unwrap();
    confab_sync::state::save(&env.state_path(), &st).unwrap();
    let mut opts = env.options();
    opts.parent_pid = Some(sleeper.id() as i64);
    let d = env.start_with(opts, env.tuning());
    let exit = tokio::time::timeout(Duration::from_secs(3), d.task)
        .await
        .expect("exits by itself")
        .unwrap();
    assert_eq!(exit.code(), 0);
    assert!(
        sleeper.try_wait().unwrap().is_none(),
        "the unrelated process is untouched"
    );
    sleeper.kill().unwrap();
    let _ = sleeper.wait();
    let _ = fake;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x20_parent_death_during_a_hung_chunk_exits_within_budget() {
    let (fake, env) = setup(1).await;
    let mut parent = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let mut tuning = env.tuning();
    tuning.shutdown_budget = Duration::from_secs(1);
    fake.hold(Route::Chunk, Duration::from_secs(60), Times::Always);
    let mut opts = env.options();
    opts.parent_pid = Some(parent.id() as i64);
    let d = env.start_with(opts, tuning);
    assert!(fake.wait_until(T, |f| f.count(Route::Chunk) >= 1).await);
    parent.kill().unwrap();
    parent.wait().unwrap();
    // Parent check every 200 ms, then a 1 s budget.
    let exit = tokio::time::timeout(Duration::from_millis(1600), d.task)
        .await
        .expect("exits in time")
        .unwrap();
    assert_eq!(exit.code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x11_twenty_mib_line_placeholder_and_bounded_memory() {
    use sha2::Digest;
    let fake = Fake::start().await;
    fake.set_record_body_limit(Some(64));
    let env = Env::with_backend(&fake.url());
    let huge = "h".repeat(20 * 1024 * 1024);
    env.write_transcript(&[line(0), huge.clone(), line(2), line(3)]);
    let child = env.spawn(&[]);
    let peak = std::sync::atomic::AtomicU64::new(0);
    let ok = fake
        .wait_until(Duration::from_secs(30), |f| {
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
            if let Some(hwm) = status.lines().find(|l| l.starts_with("VmHWM:")) {
                let kib = hwm
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                peak.store(kib, std::sync::atomic::Ordering::Relaxed);
            }
            f.position(&env.id, NAME) == 4
        })
        .await;
    assert!(ok);
    let peak_kib = peak.load(std::sync::atomic::Ordering::Relaxed);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("hhhhhhhhhh"),
        "the warning does not contain the line"
    );
    assert!(stderr.contains("placeholder"), "{stderr}");
    let stored = fake.lines(&env.id, NAME);
    let ph: Value = serde_json::from_str(&stored[1]).unwrap();
    assert_eq!(ph["original_bytes"], 20_971_520u64);
    assert_eq!(
        ph["sha256"],
        hex::encode(sha2::Sha256::digest(huge.as_bytes()))
    );
    assert_eq!(stored[2..], [line(2), line(3)]);
    assert!(
        peak_kib > 0 && peak_kib < 100 * 1024,
        "peak RSS {peak_kib} KiB"
    );
    fake.assert_no_violations();
}
