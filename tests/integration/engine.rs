//! Acceptance sections D (engine), F (summary linking) and the metadata/redaction parts of X,
//! against the fake backend.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;
use crate::support::fake::{Fake, Fault, Route, Times};

const T: Duration = Duration::from_secs(10);
const NAME: &str = TRANSCRIPT_NAME;

fn redaction_on(env: &Env, url: &str) {
    env.write_config_json(
        json!({"backend_url": url, "api_key": crate::support::fake::API_KEY,
        "redaction": {"enabled": true}}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_no_changes_no_requests() {
    let (fake, env) = setup(3).await;
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 3).await);
    let n = fake.request_count();
    let read = d.counters.get(NAME);
    assert!(cycles_pass(&env.state_path(), 4, T).await);
    assert_eq!(fake.request_count(), n, "idle cycles send nothing");
    assert_eq!(d.counters.get(NAME), read, "idle cycles read nothing (E6)");
    d.stop_within(T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d6_chunk_metadata_from_lines() {
    let (fake, env) = setup(0).await;
    env.write_transcript(&[
        r#"{"type":"user","gitBranch":"main","cwd":"/nonexistent","message":{"role":"user","content":"Fix the <b>bug</b> &amp; test"}}"#.into(),
        r#"{"type":"summary","summary":"Fixing a bug","leafUuid":""}"#.into(),
    ]);
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 2).await);
    d.stop_within(T).await;
    let body = fake.chunk_requests()[0].body.clone().unwrap();
    let meta = &body["metadata"];
    assert_eq!(meta["git_info"]["branch"], "main");
    assert_eq!(meta["git_info"]["is_dirty"], false);
    assert_eq!(meta["summary"], "Fixing a bug");
    assert_eq!(meta["first_user_message"], "Fix the bug & test");
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d7_redaction_in_metadata_and_lines() {
    let fake = Fake::start().await;
    let env = Env::new();
    redaction_on(&env, &fake.url());
    let key = "AKIAIOSFODNN7EXAMPLE";
    env.write_transcript(&[
        format!(r#"{{"type":"user","message":{{"role":"user","content":"my key is {key}"}}}}"#),
        format!(r#"{{"type":"summary","summary":"uses {key}"}}"#),
    ]);
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 2).await);
    d.stop_within(T).await;
    let body = fake.chunk_requests()[0].body.clone().unwrap();
    assert!(body["metadata"]["summary"]
        .as_str()
        .unwrap()
        .contains("[REDACTED:AWS_KEY]"));
    assert!(body["metadata"]["first_user_message"]
        .as_str()
        .unwrap()
        .contains("[REDACTED:AWS_KEY]"));
    assert!(!body.to_string().contains(key));
    assert!(fake.lines(&env.id, NAME).iter().all(|l| !l.contains(key)));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d9_d17_auth_failure_reinit_carries_metadata() {
    let (fake, env) = setup(1).await;
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 1).await);
    fake.revoke_key(crate::support::fake::API_KEY);
    env.append(&(line(1) + "\n"));
    assert!(
        fake.wait_until(T, |f| f.statuses(Route::Chunk).contains(&401))
            .await
    );
    fake.add_key(crate::support::fake::API_KEY, "u1");
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 2).await);
    d.stop_within(T).await;
    let inits = fake.requests_to(Route::Init);
    assert!(inits.len() >= 2);
    assert!(inits
        .iter()
        .all(|r| r.body.as_ref().unwrap()["metadata"]["cwd"].is_string()));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d11_d13_agent_chain_fifteen_deep_in_two_cycles() {
    let (fake, env) = setup(0).await;
    let ids: Vec<String> = (0..16).map(|i| format!("chain{i:04}")).collect();
    env.write_transcript(&[agent_ref(&ids[0])]);
    for i in 0..16 {
        let mut content = vec![line(i)];
        if i + 1 < 16 {
            content.push(agent_ref(&ids[i + 1]));
        }
        env.write_agent(&ids[i], &content);
    }
    // Hide the directory scan's shortcut: the chain is found through references, level by level.
    let d = env.start();
    assert!(
        fake.wait_until(T, |f| ids
            .iter()
            .all(|id| f.position(&env.id, &format!("agent-{id}.jsonl")) > 0))
            .await
    );
    d.stop_within(T).await;
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d12_mutual_references_upload_once() {
    let (fake, env) = setup(0).await;
    env.write_transcript(&[agent_ref("aaaaaaaa")]);
    env.write_agent("aaaaaaaa", &[agent_ref("bbbbbbbb")]);
    env.write_agent("bbbbbbbb", &[agent_ref("aaaaaaaa")]);
    let d = env.start();
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, "agent-bbbbbbbb.jsonl") == 1)
            .await
    );
    // Later cycles follow the references again: none may upload agent a a second time.
    assert!(cycles_pass(&env.state_path(), 3, T).await);
    d.stop_within(T).await;
    let a = fake
        .chunk_requests()
        .iter()
        .filter(|r| r.file_name() == Some("agent-aaaaaaaa.jsonl"))
        .count();
    assert_eq!(a, 1);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d15_stored_then_503_refreshes_without_duplicates() {
    let (fake, env) = setup(3).await;
    fake.fault(Route::Chunk, Fault::CommitThen500, Times::Next(1));
    let d = env.start();
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, NAME) == 3
            && f.count(Route::Init) >= 2)
            .await
    );
    env.append(&(line(3) + "\n"));
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 4).await);
    d.stop_within(T).await;
    let reqs = fake.requests();
    let failed = reqs
        .iter()
        .position(|r| r.route == Some(Route::Chunk) && r.status >= 500)
        .unwrap();
    let next = reqs[failed + 1..]
        .iter()
        .find(|r| r.route.is_some())
        .unwrap();
    assert_eq!(
        next.route,
        Some(Route::Init),
        "an init precedes the next send"
    );
    assert_eq!(fake.lines(&env.id, NAME), complete_lines(&env.transcript));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d16_contiguity_400_resends_from_backend_position() {
    let (fake, env) = setup(5).await;
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 5).await);
    // The backend moved on behind the daemon's back: it now holds 6 lines.
    fake.preset_position(&env.id, NAME, 6);
    env.append(&format!("{}\n{}\n", line(5), line(6)));
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 7).await);
    d.stop_within(T).await;
    let chunks = fake.chunk_requests();
    let rejected = chunks
        .iter()
        .position(|c| c.status == 400)
        .expect("a contiguity 400");
    assert_eq!(chunks[rejected].first_line(), Some(6));
    assert_eq!(
        chunks[rejected + 1].first_line(),
        Some(7),
        "resent from the backend's position"
    );
    let reqs = fake.requests();
    let i = reqs
        .iter()
        .position(|r| r.index == chunks[rejected].index)
        .unwrap();
    assert_eq!(
        reqs[i + 1].route,
        Some(Route::Init),
        "refresh before the resend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d18_restart_resumes_agent_from_backend_line() {
    let (fake, env) = setup(1).await;
    env.write_agent("resume01", &lines(0..1));
    fake.preset_lines(&env.id, "agent-resume01.jsonl", &[&line(0)]);
    env.write_agent("resume01", &lines(0..3));
    let d = env.start();
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, "agent-resume01.jsonl") == 3)
            .await
    );
    d.stop_within(T).await;
    let c = fake
        .chunk_requests()
        .into_iter()
        .find(|r| r.file_name() == Some("agent-resume01.jsonl"))
        .unwrap();
    assert_eq!(c.first_line(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d20_ids_of_every_valid_shape_found_by_scan() {
    let (fake, env) = setup(1).await;
    let ids = [
        "a3eaf63159a07953f",
        "acompact-2aaa241e456ebc94",
        "aprompt_suggestion-ba74af",
        "abcd1234",
    ];
    for id in ids {
        env.write_agent(id, &lines(0..1));
    }
    env.write_agent("abc12", &lines(0..1));
    let d = env.start();
    assert!(
        fake.wait_until(T, |f| ids
            .iter()
            .all(|id| f.position(&env.id, &format!("agent-{id}.jsonl")) == 1))
            .await
    );
    d.stop_within(T).await;
    assert_eq!(fake.position(&env.id, "agent-abc12.jsonl"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d21_init_503_then_recovers_without_restart() {
    let (fake, env) = setup(2).await;
    fake.fault(Route::Init, Fault::Status503, Times::Next(1));
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 2).await);
    d.stop_within(T).await;
    assert_eq!(fake.statuses(Route::Init)[..2], [503, 200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_f4_summary_linking_patches_once() {
    let (fake, env) = setup(0).await;
    let sessions = env.transcript.parent().unwrap();
    // Earlier session: the leaf uuid is in its last 10 lines.
    let mut earlier: Vec<String> = (0..12).map(|i| format!(r#"{{"uuid":"e-{i}"}}"#)).collect();
    earlier.push(r#"{"uuid":"leaf-1"}"#.into());
    write_lines(&sessions.join("earlier-session.jsonl"), &earlier);
    // Another session where the uuid is only 11th from the end: not a match.
    let mut far = vec![r#"{"uuid":"leaf-2"}"#.to_string()];
    far.extend((0..10).map(|i| format!(r#"{{"uuid":"f-{i}"}}"#)));
    write_lines(&sessions.join("far-session.jsonl"), &far);
    let summary = r#"{"type":"summary","summary":"Earlier work","leafUuid":"leaf-1"}"#.to_string();
    let no_match = r#"{"type":"summary","summary":"Far work","leafUuid":"leaf-2"}"#.to_string();
    env.write_transcript(&[summary.clone(), no_match, summary.clone()]);
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 3).await);
    assert!(fake.wait_until(T, |f| f.count(Route::Summary) >= 1).await);
    // The repeated summary and later cycles must not patch again.
    assert!(cycles_pass(&env.state_path(), 3, T).await);
    d.stop_within(T).await;
    assert_eq!(
        fake.summaries(),
        vec![("earlier-session".to_string(), "Earlier work".to_string())]
    );
    let patch = fake.requests_to(Route::Summary).remove(0);
    assert!(patch.header("content-encoding").is_none());
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x25_x32_long_summary_patch_uncompressed_and_redacted() {
    let fake = Fake::start().await;
    let env = Env::new();
    redaction_on(&env, &fake.url());
    let sessions = env.transcript.parent().unwrap();
    write_lines(
        &sessions.join("older.jsonl"),
        &[r#"{"uuid":"leaf-9"}"#.to_string()],
    );
    let token = format!("ghp_{}", "A".repeat(36));
    let text = format!("{} {token}", "s".repeat(1500));
    env.write_transcript(&[
        json!({"type":"summary","summary":text,"leafUuid":"leaf-9"}).to_string()
    ]);
    let d = env.start();
    assert!(fake.wait_until(T, |f| !f.summaries().is_empty()).await);
    d.stop_within(T).await;
    let patch = fake.requests_to(Route::Summary).remove(0);
    assert!(patch.header("content-encoding").is_none());
    assert!(patch.wire_size >= 1024);
    assert_eq!(patch.status, 200);
    let (_, sent) = fake.summaries().remove(0);
    assert!(!sent.contains(&token) && sent.contains("[REDACTED:GITHUB_TOKEN]"));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x26_x27_summary_truncated_and_nul_free() {
    let (fake, env) = setup(0).await;
    let long = format!("{}\u{0}end", "w".repeat(5000));
    env.write_transcript(&[json!({"type":"summary","summary":long}).to_string()]);
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 1).await);
    d.stop_within(T).await;
    let body = fake.chunk_requests()[0].body.clone().unwrap();
    let s = body["metadata"]["summary"].as_str().unwrap();
    assert!(s.len() <= 2048 && s.ends_with("..."), "{}", s.len());
    assert!(!s.contains('\u{0}'));
    assert!(fake.statuses(Route::Chunk).iter().all(|s| *s == 200));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x35_h27_unchanged_lines_byte_identical_with_redaction_on() {
    let fake = Fake::start().await;
    let env = Env::new();
    redaction_on(&env, &fake.url());
    let plain = r#"{"z":1,"a":12345678901234567890,"m":{"y":1.50,"b":[3,2]}}"#.to_string();
    let secret = r#"{"z":1,"a":12345678901234567890,"token":"hunter2","n":1.50}"#.to_string();
    env.write_transcript(&[plain.clone(), secret]);
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 2).await);
    d.stop_within(T).await;
    let stored = fake.lines(&env.id, NAME);
    assert_eq!(stored[0], plain);
    assert_eq!(
        stored[1],
        r#"{"z":1,"a":12345678901234567890,"token":"[REDACTED:SENSITIVE_FIELD]","n":1.50}"#
    );
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x24_key_never_in_output_status_or_debug() {
    let fake = Fake::start().await;
    let key = format!("cfb_{}", "K".repeat(40));
    fake.add_key(&key, "u1");
    let env = Env::new();
    env.write_config(&fake.url(), &key);
    env.write_transcript(&lines(0..3));
    let out = env
        .command()
        .env("CONFAB_LOG", "trace")
        .args(env.run_args())
        .arg("--once")
        .output()
        .unwrap();
    assert!(out.status.success());
    // A failing run too: revoked key, so errors are printed.
    fake.revoke_key(&key);
    env.append(&(line(3) + "\n"));
    let bad = env
        .command()
        .env("CONFAB_LOG", "trace")
        .args(env.run_args())
        .arg("--once")
        .output()
        .unwrap();
    let status = env.command().args(["status", "--json"]).output().unwrap();
    for o in [&out, &bad, &status] {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!all.contains(&key), "key leaked");
        assert!(!all.contains("Bearer "), "header leaked");
    }
    let creds = confab_sync::config::read_credentials(&env.config_json)
        .unwrap()
        .unwrap();
    assert!(!format!("{creds:?}").contains(&key));
}

#[cfg(feature = "test-faults")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x40_state_survives_a_panic() {
    let (fake, env) = setup(3).await;
    let out = env
        .command()
        .env("CONFAB_SYNC_FAULT", "panic-after-ack")
        .args(env.run_args())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the injected panic fails the process"
    );
    let st = env.state().expect("state kept after a crash");
    assert_eq!(st["confab_sync"]["files"][NAME]["acked_line"], 3);
    assert_eq!(fake.position(&env.id, NAME), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x47_jitter_gaps_within_bounds_and_varied() {
    let (_fake, env) = setup(0).await;
    let mut tuning = env.tuning();
    tuning.interval = Duration::from_millis(200);
    tuning.jitter = Duration::from_millis(60);
    let d = env.start_with(env.options(), tuning);
    let mut stamps = Vec::new();
    let mut last = None;
    let end = tokio::time::Instant::now() + Duration::from_secs(4);
    while stamps.len() < 8 && tokio::time::Instant::now() < end {
        let now = env
            .state()
            .and_then(|s| s["confab_sync"]["last_loop_at"].as_str().map(String::from));
        if now.is_some() && now != last {
            stamps.push(chrono::DateTime::parse_from_rfc3339(now.as_deref().unwrap()).unwrap());
            last = now;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    d.stop_within(T).await;
    let gaps: Vec<i64> = stamps
        .windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds())
        .collect();
    assert!(gaps.len() >= 5, "{gaps:?}");
    // [140, 260] ms of delay, plus the cycle itself (a state write with fsync) and 5 ms of polling.
    assert!(gaps.iter().all(|g| (135..=300).contains(g)), "{gaps:?}");
    assert!(gaps.iter().any(|g| *g != gaps[0]), "{gaps:?}");
}
