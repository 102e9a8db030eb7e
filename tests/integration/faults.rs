//! Reliability under faults (issue 5): a table-driven matrix of backend faults, each mixed with
//! appends (partial lines included) while the fault is active, and local faults (a full disk, a
//! read-only state or archive directory, a transcript deleted, truncated, replaced, rotated or
//! growing while read, lines split at every byte, CRLF, invalid UTF-8, a 50 MiB line).
//!
//! Every test ends with the sink holding exactly the file's complete lines (nothing lost, nothing
//! sent twice) and the fake's violation log empty. Disk-full and read-only cases need mounts: the
//! test re-executes itself under `unshare --mount --propagation private` (we run as root, and root
//! ignores chmod), mounts a small tmpfs there, and the kernel drops the mounts with the namespace.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sha2::{Digest, Sha256};

use confab_sync::config::Tuning;
use confab_sync::daemon::Exit;

use crate::harness::*;
use crate::support::fake::{Fake, Fault, Route, Times, API_KEY, DEFAULT_USER};

/// Generous: the machine is shared with other builds.
const T: Duration = Duration::from_secs(30);
const NAME: &str = TRANSCRIPT_NAME;
const AGENT: &str = "faultagent01";
const TRANSCRIPT_CORPUS: &str = "4d5611e5-241a-462a-8d15-5122611a9569.jsonl";
const AGENT_CORPUS: &str = "4d5611e5-241a-462a-8d15-5122611a9569/subagents/agent-a2898e3.jsonl";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn agent_name() -> String {
    format!("agent-{AGENT}.jsonl")
}

fn seed(test: &str) -> u64 {
    let seed = std::env::var("CONFAB_CHAOS_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{test}: seed {seed} (replay with CONFAB_CHAOS_SEED={seed})");
    seed
}

fn state_entry(env: &Env, name: &str) -> Value {
    env.state()
        .map(|s| s["confab_sync"]["files"][name].clone())
        .unwrap_or(Value::Null)
}

// =============================================================================================
// 1. The backend fault matrix

/// What a matrix case sees.
struct Ctx<'a> {
    fake: &'a Fake,
    env: &'a Env,
    seed: u64,
}

/// One row of the matrix. Every hook is a plain function so the table reads as data.
#[derive(Clone, Copy)]
struct Case {
    /// Knobs set before the daemon starts.
    arm: fn(&Ctx),
    /// Knobs set once the initial lines are synced (`None`: do not wait for them).
    mid: Option<fn(&Ctx)>,
    /// After the appends: ends a fault that does not end by itself (a good key, a reactivated user).
    heal: fn(&Ctx),
    /// True once every armed fault has had its chance (the runner appends one more line at a time
    /// until it holds, so a fault is never left unfired because the daemon batched the appends).
    drained: fn(&Fake) -> bool,
    /// Proof that the fault really happened, checked once everything arrived.
    check: fn(&Ctx),
    /// Transcript lines the fake holds no content for (a preset position).
    skip: usize,
    tuning: fn(&mut Tuning),
}

const BASE: Case = Case {
    arm: |_| {},
    mid: None,
    heal: |_| {},
    drained: |_| true,
    check: |_| {},
    skip: 0,
    tuning: |_| {},
};

/// The Retry-After date m10 armed (its check runs in a plain `fn`, so it cannot capture it).
static M10_DATE: std::sync::Mutex<Option<std::time::SystemTime>> = std::sync::Mutex::new(None);

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Initial transcript lines (the `skip` case presets the fake above them).
const INITIAL: usize = 5;

/// How many requests a fault answered.
fn fired(f: &Fake, fault: Fault) -> usize {
    f.requests()
        .iter()
        .filter(|r| r.fault.as_ref() == Some(&fault))
        .count()
}

fn statuses_with(f: &Fake, status: u16) -> usize {
    f.statuses(Route::Any)
        .iter()
        .filter(|&&s| s == status)
        .count()
}

fn faults_fired(f: &Fake) -> usize {
    f.requests().iter().filter(|r| r.fault.is_some()).count()
}

fn clients_gone(f: &Fake) -> usize {
    f.requests().iter().filter(|r| r.client_gone).count()
}

/// The gap between the first 429 answer and the request after it.
fn gap_after_first_429(f: &Fake) -> Duration {
    let reqs = f.requests_to(Route::Any);
    let i = reqs
        .iter()
        .position(|r| r.status == 429)
        .expect("a 429 was answered");
    let next = reqs.get(i + 1).expect("a request after the 429");
    next.started
        .duration_since(reqs[i].finished.expect("answered"))
}

async fn run_case(name: &str, case: Case) {
    let seed = seed(name);
    let mut rng = StdRng::seed_from_u64(seed);
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    let tpool = corpus_lines(TRANSCRIPT_CORPUS);
    let apool = corpus_lines(AGENT_CORPUS);
    let agent = env.agent_path(AGENT);
    env.write_transcript(&tpool[..INITIAL]);
    env.write_agent(AGENT, &apool[..3]);
    let ctx = Ctx {
        fake: &fake,
        env: &env,
        seed,
    };
    (case.arm)(&ctx);
    let mut tuning = env.tuning();
    (case.tuning)(&mut tuning);
    let d = env.start_with(env.options(), tuning);
    if let Some(mid) = case.mid {
        let synced = fake
            .wait_until(T, |f| {
                f.position(&env.id, NAME) == INITIAL as u64
                    && f.position(&env.id, &agent_name()) == 3
            })
            .await;
        assert!(synced, "{name}: initial sync");
        mid(&ctx);
    }
    // Appends while the fault is active, paced by the daemon's requests (bounded: a daemon in a
    // 429 wait sends nothing for a while).
    let (mut tn, mut an) = (INITIAL, 3);
    let mut pending: Option<(PathBuf, Vec<u8>)> = None;
    for round in 0..6 {
        let before = fake.request_count();
        if let Some((p, rest)) = pending.take() {
            append_bytes(&p, &rest);
        }
        let mut buf = Vec::new();
        for _ in 0..rng.gen_range(1..=2) {
            buf.extend_from_slice(tpool[tn].as_bytes());
            buf.push(b'\n');
            tn += 1;
        }
        if round % 2 == 1 {
            let line = format!("{}\n", apool[an]);
            an += 1;
            append(&agent, &line);
        }
        if rng.gen_bool(0.3) {
            let cut = rng.gen_range(1..buf.len());
            append_bytes(&env.transcript, &buf[..cut]);
            pending = Some((env.transcript.clone(), buf[cut..].to_vec()));
        } else {
            append_bytes(&env.transcript, &buf);
        }
        fake.wait_until(ms(1500), |f| f.request_count() > before)
            .await;
    }
    if let Some((p, rest)) = pending.take() {
        append_bytes(&p, &rest);
    }
    (case.heal)(&ctx);
    for _ in 0..20 {
        let now = complete_lines(&env.transcript).len() as u64;
        let caught_up = fake
            .wait_until(T, |f| f.position(&env.id, NAME) == now)
            .await;
        if caught_up && (case.drained)(&fake) {
            break;
        }
        append(&env.transcript, &format!("{}\n", tpool[tn]));
        tn += 1;
    }
    assert!(
        (case.drained)(&fake),
        "{name} (seed {seed}): armed faults never fired"
    );
    let want_t = complete_lines(&env.transcript);
    let want_a = complete_lines(&agent);
    let arrived = fake
        .wait_until(T, |f| {
            f.position(&env.id, NAME) == want_t.len() as u64
                && f.position(&env.id, &agent_name()) == want_a.len() as u64
        })
        .await;
    assert!(
        arrived,
        "{name} (seed {seed}): positions {:?}, want {} and {}",
        fake.files(&env.id),
        want_t.len(),
        want_a.len()
    );
    (case.check)(&ctx);
    assert!(!d.task.is_finished(), "{name}: the daemon keeps running");
    let exit = d.stop_within(T).await;
    assert_eq!(exit.code(), 0, "{name}: {exit:?}");
    assert!(
        fake.lines(&env.id, NAME) == want_t[case.skip..],
        "{name} (seed {seed}): transcript lines differ"
    );
    assert!(
        fake.merged_lines(&env.id, NAME) == want_t[case.skip..],
        "{name} (seed {seed}): transcript read-back merge differs"
    );
    assert!(
        fake.lines(&env.id, &agent_name()) == want_a,
        "{name} (seed {seed}): agent lines differ"
    );
    assert!(
        fake.merged_lines(&env.id, &agent_name()) == want_a,
        "{name} (seed {seed}): agent read-back merge differs"
    );
    fake.assert_no_violations();
}

/// Rows of the matrix: one test each, so they run in parallel and fail by name.
macro_rules! matrix {
    ($($name:ident => $case:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            run_case(stringify!($name), $case).await
        }
    )*};
}

matrix! {
    m01_503_bursts_on_every_route => Case {
        drained: |f| faults_fired(f) >= 7,
        arm: |c| c.fake.fault(Route::Any, Fault::Status503, Times::Next(3)),
        mid: Some(|c| c.fake.fault(Route::Chunk, Fault::Status503, Times::Next(4))),
        check: |c| assert_eq!(fired(c.fake, Fault::Status503), 7),
        ..BASE
    };
    m02_500_before_commit => Case {
        drained: |f| faults_fired(f) >= 3,
        mid: Some(|c| c.fake.fault(Route::Chunk, Fault::Status500BeforeStore, Times::Next(3))),
        check: |c| assert_eq!(fired(c.fake, Fault::Status500BeforeStore), 3),
        ..BASE
    };
    m03_500_after_commit => Case {
        drained: |f| faults_fired(f) >= 3,
        mid: Some(|c| c.fake.fault(Route::Chunk, Fault::CommitThen500, Times::Next(3))),
        check: |c| assert_eq!(fired(c.fake, Fault::CommitThen500), 3),
        ..BASE
    };
    m04_orphan_then_500 => Case {
        drained: |f| faults_fired(f) >= 3,
        mid: Some(|c| c.fake.fault(Route::Chunk, Fault::OrphanThen500, Times::Next(3))),
        check: |c| assert_eq!(fired(c.fake, Fault::OrphanThen500), 3),
        ..BASE
    };
    m05_connection_dropped_after_commit => Case {
        drained: |f| faults_fired(f) >= 3,
        mid: Some(|c| c.fake.fault(Route::Chunk, Fault::DropAfterCommit, Times::Next(3))),
        check: |c| assert_eq!(fired(c.fake, Fault::DropAfterCommit), 3),
        ..BASE
    };
    m06_connection_closed_before_processing => Case {
        drained: |f| faults_fired(f) >= 3,
        arm: |c| c.fake.fault(Route::Init, Fault::CloseConnection, Times::Next(1)),
        mid: Some(|c| c.fake.fault(Route::Chunk, Fault::CloseConnection, Times::Next(2))),
        check: |c| assert_eq!(fired(c.fake, Fault::CloseConnection), 3),
        ..BASE
    };
    m07_slow_responses_past_the_client_timeout => Case {
        drained: |f| clients_gone(f) >= 4,
        tuning: |t| t.http_timeout = ms(300),
        arm: |c| c.fake.hold(Route::Init, ms(1000), Times::Next(1)),
        mid: Some(|c| c.fake.hold(Route::Chunk, ms(1000), Times::Next(3))),
        check: |c| {
            let gone = clients_gone(c.fake);
            assert!(gone >= 4, "the client gave up on the held responses ({gone})");
        },
        ..BASE
    };
    // Processing held *before* the commit past the client timeout, and committed after the
    // client gave up (F goes on processing, like a backend that ignores the disconnect). The
    // file rests for one timeout before its refresh, so the refresh sees the late commit and
    // skips those lines: no resend racing the held request (Z15), none after its 200 (Z-resend).
    m22_slow_processing_before_commit_past_the_client_timeout => Case {
        drained: |f| clients_gone(f) >= 3,
        tuning: |t| t.http_timeout = ms(400),
        mid: Some(|c| c.fake.hold_before_commit(Route::Chunk, ms(600), Times::Next(3))),
        check: |c| {
            let late: Vec<u16> = c
                .fake
                .requests_to(Route::Chunk)
                .iter()
                .filter(|r| r.client_gone)
                .map(|r| r.status)
                .collect();
            assert!(late.len() >= 3, "the client gave up on the held chunks ({late:?})");
            assert!(late.iter().all(|&s| s == 200), "each committed after the client left: {late:?}");
        },
        ..BASE
    };
    m08_429_without_retry_after => Case {
        drained: |f| faults_fired(f) >= 2,
        mid: Some(|c| c.fake.fault(Route::Chunk, Fault::Status429, Times::Next(2))),
        check: |c| {
            assert_eq!(fired(c.fake, Fault::Status429), 2);
            let gap = gap_after_first_429(c.fake);
            assert!(gap >= ms(400) && gap < ms(5000), "jittered backoff: {gap:?}");
        },
        ..BASE
    };
    m09_429_with_retry_after_seconds => Case {
        drained: |f| faults_fired(f) >= 2,
        mid: Some(|c| {
            c.fake.set_retry_after(Some("1".into()));
            c.fake.fault(Route::Chunk, Fault::Status429, Times::Next(2));
        }),
        check: |c| {
            assert_eq!(fired(c.fake, Fault::Status429), 2);
            let gap = gap_after_first_429(c.fake);
            assert!(gap >= ms(900) && gap < ms(5000), "Retry-After: 1 honoured: {gap:?}");
        },
        ..BASE
    };
    m10_429_with_retry_after_http_date => Case {
        drained: |f| faults_fired(f) >= 1,
        mid: Some(|c| {
            let at = std::time::SystemTime::now() + Duration::from_secs(3);
            let date = httpdate::fmt_http_date(at);
            *lock(&M10_DATE) = Some(httpdate::parse_http_date(&date).unwrap());
            c.fake.set_retry_after(Some(date));
            c.fake.fault(Route::Chunk, Fault::Status429, Times::Next(1));
        }),
        check: |c| {
            assert_eq!(fired(c.fake, Fault::Status429), 1);
            // Measured against the date itself: under load the 429 may be answered late, leaving
            // less than the 3 s to wait.
            let date = lock(&M10_DATE).expect("armed");
            let since_date = std::time::SystemTime::now()
                .duration_since(date)
                .expect("the date has passed");
            let date_instant = tokio::time::Instant::now() - since_date;
            let reqs = c.fake.requests_to(Route::Any);
            let i = reqs.iter().position(|r| r.status == 429).expect("a 429");
            let next = reqs.get(i + 1).expect("a request after the 429").started;
            assert!(
                next + ms(100) >= date_instant && next < date_instant + ms(5000),
                "HTTP-date honoured: next request {:?} after the date",
                next.checked_duration_since(date_instant)
            );
        },
        ..BASE
    };
    m11_401_until_config_gets_a_good_key => Case {
        arm: |c| c.env.write_config(&c.fake.url(), "bad-key-0000000000"),
        heal: |c| c.env.write_config(&c.fake.url(), API_KEY),
        check: |c| {
            let reqs = c.fake.requests_to(Route::Any);
            assert!(reqs.iter().filter(|r| r.status == 401).count() >= 3, "401s while the key was bad");
            assert!(!reqs[0].used_key(API_KEY));
            assert!(reqs.last().unwrap().used_key(API_KEY));
            assert_eq!(c.fake.position(&c.env.id, NAME), complete_lines(&c.env.transcript).len() as u64);
        },
        ..BASE
    };
    m12_401_key_revoked_mid_session_then_a_new_key => Case {
        mid: Some(|c| c.fake.revoke_key(API_KEY)),
        heal: |c| {
            c.fake.add_key("fresh-key-1234567890", DEFAULT_USER);
            c.env.write_config(&c.fake.url(), "fresh-key-1234567890");
        },
        check: |c| {
            assert!(statuses_with(c.fake, 401) >= 1);
            assert!(c.fake.requests().last().unwrap().used_key("fresh-key-1234567890"));
        },
        ..BASE
    };
    m13_403_deactivated_user_until_reactivated => Case {
        mid: Some(|c| c.fake.deactivate_user(DEFAULT_USER)),
        heal: |c| c.fake.reactivate_user(DEFAULT_USER),
        check: |c| assert!(statuses_with(c.fake, 403) >= 2),
        ..BASE
    };
    m14_403_read_only_user_until_writable => Case {
        mid: Some(|c| c.fake.set_read_only(DEFAULT_USER, true)),
        heal: |c| c.fake.set_read_only(DEFAULT_USER, false),
        check: |c| assert!(statuses_with(c.fake, 403) >= 2),
        ..BASE
    };
    m15_storage_404_and_403_are_server_errors => Case {
        drained: |f| faults_fired(f) >= 5,
        mid: Some(|c| {
            c.fake.fault(Route::Chunk, Fault::FileNotFoundInStorage404, Times::Next(3));
            c.fake.fault(Route::Chunk, Fault::StorageAccessDenied403, Times::Next(2));
        }),
        check: |c| {
            assert_eq!(fired(c.fake, Fault::FileNotFoundInStorage404), 3);
            assert_eq!(fired(c.fake, Fault::StorageAccessDenied403), 2);
        },
        ..BASE
    };
    m16_session_not_found_for_two_cycles_then_recovery => Case {
        drained: |f| faults_fired(f) >= 2,
        mid: Some(|c| c.fake.fault(Route::Chunk, Fault::SessionNotFound404, Times::Next(2))),
        check: |c| assert_eq!(fired(c.fake, Fault::SessionNotFound404), 2),
        ..BASE
    };
    m17_backend_rolled_back_lower_resends => Case {
        mid: Some(|c| {
            c.fake.rollback(&c.env.id, NAME, 2);
            c.fake.rollback(&c.env.id, &agent_name(), 1);
        }),
        check: |c| {
            assert!(statuses_with(c.fake, 400) >= 1, "the stale position was refused once");
            let firsts: Vec<_> = c.fake.chunk_requests().iter()
                .filter(|r| r.status == 200 && r.file_name() == Some(NAME))
                .map(|r| r.first_line()).collect();
            assert!(firsts.contains(&Some(3)), "resent from the backend's line 3: {firsts:?}");
        },
        ..BASE
    };
    m18_backend_ahead_of_the_file_sends_nothing_until_it_grows_past => Case {
        arm: |c| c.fake.preset_position(&c.env.id, NAME, INITIAL as u64 + 3),
        skip: INITIAL + 3,
        check: |c| {
            let firsts: Vec<u64> = c.fake.chunk_requests().iter()
                .filter(|r| r.file_name() == Some(NAME))
                .filter_map(|r| r.first_line()).collect();
            assert_eq!(firsts.first(), Some(&(INITIAL as u64 + 4)), "{firsts:?}");
            assert!(firsts.iter().all(|&l| l > INITIAL as u64 + 3), "{firsts:?}");
        },
        ..BASE
    };
    m19_wrong_last_synced_line_refreshes => Case {
        drained: |f| faults_fired(f) >= 2,
        mid: Some(|c| {
            c.fake.fault(Route::Chunk, Fault::WrongLastSyncedLine(5), Times::Next(1));
            c.fake.fault(Route::Chunk, Fault::WrongLastSyncedLine(-1), Times::Next(1));
        }),
        check: |c| {
            assert_eq!(fired(c.fake, Fault::WrongLastSyncedLine(5)), 1);
            assert_eq!(fired(c.fake, Fault::WrongLastSyncedLine(-1)), 1);
        },
        ..BASE
    };
    m20_generic_and_invalid_body_400s => Case {
        drained: |f| faults_fired(f) >= 4,
        mid: Some(|c| {
            c.fake.fault(Route::Chunk, Fault::Generic400, Times::Next(2));
            c.fake.fault(Route::Chunk, Fault::InvalidBody400, Times::Next(2));
        }),
        check: |c| {
            assert_eq!(fired(c.fake, Fault::Generic400), 2);
            assert_eq!(fired(c.fake, Fault::InvalidBody400), 2);
        },
        ..BASE
    };
    m21_everything_mixed_in_a_seeded_order => Case {
        drained: |f| faults_fired(f) >= 12,
        mid: Some(|c| {
            let mut rng = StdRng::seed_from_u64(c.seed);
            let mut all = vec![
                Fault::Status503, Fault::Status500BeforeStore, Fault::CommitThen500,
                Fault::OrphanThen500, Fault::DropAfterCommit, Fault::CloseConnection,
                Fault::Status429, Fault::WrongLastSyncedLine(2), Fault::Generic400,
                Fault::FileNotFoundInStorage404, Fault::SessionNotFound404,
            ];
            all.shuffle(&mut rng);
            c.fake.set_retry_after(Some("0".into()));
            for f in all {
                c.fake.fault(Route::Chunk, f, Times::Next(1));
            }
            c.fake.fault(Route::Init, Fault::Status503, Times::Next(1));
            c.fake.hold(Route::Chunk, ms(150), Times::Next(2));
        }),
        check: |c| {
            assert_eq!(faults_fired(c.fake), 12, "every queued fault fired once");
        },
        ..BASE
    };
}

/// A chunk timed out just before the stop: its file rests for one request timeout, and the final
/// sync waits for the rest (it ends within the budget) instead of leaving the file's lines behind;
/// the late commit is adopted, not resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_resting_after_a_timeout_gets_its_final_sync() {
    let (fake, env, pool) = backend_with(5).await;
    let mut tuning = env.tuning();
    tuning.http_timeout = ms(400);
    let d = env.start_with(env.options(), tuning);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 5).await);
    fake.hold_before_commit(Route::Chunk, ms(600), Times::Next(1));
    append(&env.transcript, &lines_of(&pool[5..8]));
    let gave_up = |f: &Fake| f.requests_to(Route::Chunk).iter().any(|r| r.client_gone);
    assert!(
        fake.wait_until(T, gave_up).await,
        "the client gave up on the held chunk"
    );
    append(&env.transcript, &lines_of(&pool[8..10]));
    let exit = d.stop_within(T).await;
    assert!(matches!(exit, Exit::Clean(_)), "{exit:?}");
    assert_eq!(fake.lines(&env.id, NAME), pool[..10]);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_not_found_forever_exits_zero_without_final_sync() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    env.write_transcript(&corpus_lines(TRANSCRIPT_CORPUS)[..3]);
    let log = env.tmp.path().join("daemon.log");
    let mut child = spawn_to(&env, &log);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 3).await);
    fake.delete_session(&env.id);
    append(&env.transcript, &format!("{}\n", line(3)));
    let status = child.wait(T).await;
    assert_eq!(status.code(), Some(0), "{}", read(&log));
    let chunks = fake.chunk_requests();
    let gone = chunks.iter().filter(|r| r.status == 404).count();
    assert!(gone >= 3, "three cycles of 404 before giving up ({gone})");
    assert_eq!(chunks.last().unwrap().status, 404, "no final sync after");
    assert!(fake.events().is_empty());
    assert!(env.state().is_none(), "a clean end removes the state");
    fake.assert_no_violations();
}

/// `confab-sync run` with stderr to a file (a pipe nobody drains could block the daemon).
fn spawn_to(env: &Env, log: &Path) -> ChildGuard {
    let f = std::fs::File::create(log).unwrap();
    let c = env
        .command()
        .args(env.run_args())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(f))
        .spawn()
        .unwrap();
    ChildGuard(Some(c))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

// =============================================================================================
// 2. The transcript under the daemon's feet (no mounts needed)

async fn backend_with(n: usize) -> (Fake, Env, Vec<String>) {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    let pool = corpus_lines(TRANSCRIPT_CORPUS);
    env.write_transcript(&pool[..n]);
    (fake, env, pool)
}

fn expected_archive_bytes_of(lines: &[String]) -> Vec<u8> {
    lines_of(lines).into_bytes()
}

fn lines_of(text: &[String]) -> String {
    text.iter().map(|l| format!("{l}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcript_deleted_then_restored_with_more_lines() {
    let (fake, env, pool) = backend_with(5).await;
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 5).await);
    std::fs::remove_file(&env.transcript).unwrap();
    assert!(
        eventually(T, || state_entry(&env, NAME)["status"] == "waiting").await,
        "a deleted transcript is waited for"
    );
    assert!(!d.task.is_finished());
    env.write_transcript(&pool[..8]);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 8).await);
    d.stop_within(T).await;
    assert_eq!(fake.lines(&env.id, NAME), pool[..8]);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcript_truncated_to_zero_then_regrown() {
    let (fake, env, pool) = backend_with(5).await;
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 5).await);
    let inits = fake.count(Route::Init);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&env.transcript)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert!(
        fake.wait_until(T, |f| f.count(Route::Init) > inits).await,
        "re-init"
    );
    // Regrow with other lines: nothing is sent until the file is past the backend's 5.
    let other = &pool[100..107];
    append(&env.transcript, &lines_of(&other[..4]));
    assert!(eventually(T, || state_entry(&env, NAME)["status"] == "diverged").await);
    assert_eq!(fake.position(&env.id, NAME), 5);
    append(&env.transcript, &lines_of(&other[4..]));
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 7).await);
    d.stop_within(T).await;
    let mut want = pool[..5].to_vec();
    want.extend_from_slice(&other[5..]);
    assert_eq!(fake.lines(&env.id, NAME), want);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcript_replaced_by_rename_with_more_lines() {
    let (fake, env, pool) = backend_with(5).await;
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 5).await);
    let tmp = env.transcript.with_extension("saving");
    write_lines(&tmp, &pool[..9]);
    std::fs::rename(&tmp, &env.transcript).unwrap();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 9).await);
    d.stop_within(T).await;
    assert_eq!(fake.lines(&env.id, NAME), pool[..9]);
    assert!(!fake.statuses(Route::Chunk).contains(&400));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcript_rotated_away_and_a_new_file_created() {
    let (fake, env, pool) = backend_with(5).await;
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 5).await);
    let rotated = env.transcript.with_extension("jsonl.1");
    std::fs::rename(&env.transcript, &rotated).unwrap();
    let fresh = &pool[200..208];
    env.write_transcript(&fresh[..2]);
    assert!(eventually(T, || state_entry(&env, NAME)["status"] == "diverged").await);
    // Lines written to the rotated file now are no longer the transcript's.
    append(&rotated, &lines_of(&pool[5..7]));
    append(&env.transcript, &lines_of(&fresh[2..]));
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 8).await);
    d.stop_within(T).await;
    let mut want = pool[..5].to_vec();
    want.extend_from_slice(&fresh[5..]);
    assert_eq!(fake.lines(&env.id, NAME), want);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcript_growing_while_being_read_in_small_chunks() {
    let seed = seed("growing");
    let (fake, env, pool) = backend_with(0).await;
    let mut tuning = env.tuning();
    tuning.chunk_target_bytes = 8 * 1024;
    let d = env.start_with(env.options(), tuning);
    // Writes of random sizes, cutting lines anywhere, while chunks are cut and sent.
    let bytes: Vec<u8> = lines_of(&pool[..400]).into_bytes();
    let path = env.transcript.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut at = 0;
        while at < bytes.len() {
            let n = rng.gen_range(1..20_000).min(bytes.len() - at);
            append_bytes(&path, &bytes[at..at + n]);
            at += n;
            std::thread::sleep(ms(rng.gen_range(0..4)));
        }
    });
    writer.await.unwrap();
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, NAME) == 400)
            .await,
        "seed {seed}"
    );
    d.stop_within(T).await;
    assert!(fake.lines(&env.id, NAME) == pool[..400], "seed {seed}");
    assert!(fake.chunk_requests().len() > 20, "small chunks");
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_split_at_every_byte_position() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    env.write_transcript(&[]);
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.count(Route::Init) >= 1).await);
    // Multi-byte characters (split mid-character too), CRLF and LF ends.
    let lines = [
        "{\"t\":\"é€😀 a\\\"b\"}\r\n".as_bytes(),
        b"{\"n\":12345678901234567890}\n",
        "\"ü\"\r\n".as_bytes(),
    ];
    let mut done = 0u64;
    for l in lines {
        for &b in l {
            let before = d.counters.get(NAME);
            append_bytes(&env.transcript, &[b]);
            // The daemon looked at the file with this byte in it.
            assert!(eventually(T, || d.counters.get(NAME) > before).await);
            let complete = b == b'\n';
            if complete {
                done += 1;
                assert!(
                    fake.wait_until(T, |f| f.position(&env.id, NAME) == done)
                        .await
                );
            } else {
                assert_eq!(fake.position(&env.id, NAME), done, "never part of a line");
            }
        }
    }
    let len = std::fs::metadata(&env.transcript).unwrap().len();
    assert!(
        eventually(T, || state_entry(&env, NAME)["acked_offset"] == len).await,
        "the checkpoint offset is the file's length: {}",
        state_entry(&env, NAME)
    );
    d.stop_within(T).await;
    let want = complete_lines(&env.transcript);
    assert_eq!(want[0], "{\"t\":\"é€😀 a\\\"b\"}");
    assert_eq!(fake.lines(&env.id, NAME), want);
    assert!(fake
        .chunk_requests()
        .iter()
        .all(|r| r.line_count() == Some(1)));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_empty_lone_cr_and_invalid_utf8_lines() {
    let fake = Fake::start().await;
    let env = Env::with_backend(&fake.url());
    let mut tuning = env.tuning();
    tuning.chunk_target_bytes = 200;
    append_bytes(
        &env.transcript,
        b"{\"a\":1}\r\n\r\n\nb\rc\r\nd\r\n{\"bad\":\"\xff\xfe\xe2\x82\"}\r\n",
    );
    let d = env.start_with(env.options(), tuning);
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 6).await);
    // A valid multi-byte character split across two writes is not replaced.
    let before = d.counters.get(NAME);
    append_bytes(&env.transcript, b"{\"euro\":\"\xe2\x82");
    assert!(eventually(T, || d.counters.get(NAME) > before).await);
    append_bytes(&env.transcript, b"\xac\"}\r\n");
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 7).await);
    let len = std::fs::metadata(&env.transcript).unwrap().len();
    assert!(
        eventually(T, || state_entry(&env, NAME)["acked_offset"] == len).await,
        "CRLF-safe offsets: {}",
        state_entry(&env, NAME)
    );
    d.stop_within(T).await;
    let got = fake.lines(&env.id, NAME);
    assert_eq!(
        got,
        vec![
            "{\"a\":1}",
            "",
            "",
            "b\rc",
            "d",
            "{\"bad\":\"\u{fffd}\u{fffd}\u{fffd}\"}",
            "{\"euro\":\"€\"}",
        ]
    );
    assert_eq!(got, complete_lines(&env.transcript));
    fake.assert_no_violations();
}

/// Peak resident memory of a process, from `/proc/<pid>/status`.
fn vm_hwm_kib(pid: nix::unistd::Pid) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_line_becomes_a_placeholder_with_bounded_memory() {
    const N: usize = 50 * 1024 * 1024;
    let fake = Fake::start().await;
    fake.set_record_body_limit(Some(1024));
    let env = Env::with_backend(&fake.url());
    // Written and hashed in blocks: never 50 MiB in the test's memory either.
    let mut hash = Sha256::new();
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&env.transcript).unwrap());
        writeln!(f, "{}", line(0)).unwrap();
        let head = b"{\"big\":\"";
        let block = vec![b'x'; 1 << 20];
        f.write_all(head).unwrap();
        hash.update(head);
        let mut left = N - head.len() - 2;
        while left > 0 {
            let n = left.min(block.len());
            f.write_all(&block[..n]).unwrap();
            hash.update(&block[..n]);
            left -= n;
        }
        f.write_all(b"\"}").unwrap();
        hash.update(b"\"}");
        f.write_all(b"\n").unwrap();
        writeln!(f, "{}", line(2)).unwrap();
    }
    let sha = hex::encode(hash.finalize());
    let log = env.tmp.path().join("daemon.log");
    let mut child = spawn_to(&env, &log);
    assert!(
        fake.wait_until(Duration::from_secs(60), |f| f.position(&env.id, NAME) == 3)
            .await,
        "{}",
        read(&log)
    );
    let peak = vm_hwm_kib(child.pid());
    child.signal(Signal::SIGTERM);
    assert!(child.wait(T).await.success());
    let stored = fake.lines(&env.id, NAME);
    assert_eq!(stored[0], line(0));
    assert_eq!(
        stored[1],
        format!(
            "{{\"type\":\"confab_oversized_line\",\"original_bytes\":{N},\"sha256\":\"{sha}\"}}"
        )
    );
    assert_eq!(stored[2], line(2));
    assert!(peak < 100 * 1024, "peak RSS {peak} KiB");
    assert!(read(&log).contains("placeholder"), "a warning is logged");
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_state_tmp_from_a_crashed_writer_is_deleted() {
    let (fake, env, _) = backend_with(2).await;
    let dir = env.home.join(".confab/sync");
    std::fs::create_dir_all(&dir).unwrap();
    // A pid that certainly is dead: a child we reaped.
    let dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let mut dead = dead;
    dead.wait().unwrap();
    let tmp = dir.join(format!("{}.json.{dead_pid}.tmp", env.id));
    std::fs::write(&tmp, b"{\"half\":").unwrap();
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 2).await);
    d.stop_within(T).await;
    assert!(
        !tmp.exists(),
        "sync-engine §8: leftover .tmp files are deleted, never used"
    );
    fake.assert_no_violations();
}

/// Whether process `pid` has a handler installed for `sig` (`SigCgt` in /proc/<pid>/status).
fn catches(pid: nix::unistd::Pid, sig: Signal) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|caught| caught & (1 << (sig as i32 - 1)) != 0)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_waiting_for_the_lock_is_a_clean_exit() {
    let (fake, env, _) = backend_with(2).await;
    let mut first = spawn_to(&env, &env.tmp.path().join("first.log"));
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 2).await);
    let log = env.tmp.path().join("second.log");
    let mut second = spawn_to(&env, &log);
    // Its SIGTERM handler is installed (the first thing its runtime does); next, within a few
    // milliseconds of start-up, it enters its 1 s lock retry. A SIGTERM caught before that retry
    // ends is handled the same way: shutdown once the retry fails.
    assert!(eventually(T, || catches(second.pid(), Signal::SIGTERM)).await);
    assert!(second.0.as_mut().unwrap().try_wait().unwrap().is_none());
    second.signal(Signal::SIGTERM);
    let status = second.wait(T).await;
    first.signal(Signal::SIGTERM);
    assert!(first.wait(T).await.success());
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM means shutdown (exit 0), not death by the default action: {status:?} {}",
        read(&log)
    );
    fake.assert_no_violations();
}

// =============================================================================================
// 3. Local faults that need mounts: a private mount namespace per test

const INSIDE: &str = "CONFAB_TEST_INSIDE_MOUNT_NS";

/// Re-runs the named test of this binary inside `unshare --mount --propagation private` and
/// checks that it passed there. Returns true in the outer process (which is then done).
fn ran_in_mount_namespace(test: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        return false;
    }
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .env("TEST_LOG", "confab_sync=info")
        .output()
        .expect("unshare (util-linux) is installed");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "inner run failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "the inner run ran the test:\n{text}"
    );
    true
}

fn mount(args: &[&str]) {
    let out = Command::new("mount").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "mount {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tmpfs of `size` mounted on `dir` (inside the namespace); unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "tmpfs",
            dir.to_str().unwrap(),
        ]);
        Tmpfs(dir.to_path_buf())
    }

    /// Fills the file system, leaving `free_pages` pages free; returns the filler.
    fn fill(&self, free_pages: u64) -> PathBuf {
        let p = self.0.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let page = vec![0xa5u8; 4096];
        while matches!(f.write(&page), Ok(4096)) {}
        let len = f.metadata().unwrap().len();
        f.set_len((len / 4096).saturating_sub(free_pages) * 4096)
            .unwrap();
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `dir` bound onto itself read-only (inside the namespace) until dropped. Files the daemon
/// already has open stay writable (they belong to the mount underneath, which is also why a plain
/// `remount,ro` would fail as busy); every path looked up from now on is read-only.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn new(dir: &Path) -> ReadOnly {
        let d = dir.to_str().unwrap();
        mount(&["--bind", d, d]);
        mount(&["-o", "remount,bind,ro", d]);
        ReadOnly(dir.to_path_buf())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let out = Command::new("umount").arg(&self.0).output().unwrap();
        assert!(out.status.success(), "umount {}", self.0.display());
    }
}

fn no_tmp_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |rd| {
        rd.flatten()
            .all(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_while_checkpointing_loses_and_duplicates_nothing() {
    if ran_in_mount_namespace("faults::disk_full_while_checkpointing_loses_and_duplicates_nothing")
    {
        return;
    }
    let (fake, env, pool) = backend_with(5).await;
    let fs = Tmpfs::new(&env.home, "512k");
    let d = env.start();
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 5).await);
    assert!(eventually(T, || state_entry(&env, NAME)["acked_line"] == 5).await);
    let filler = fs.fill(0);
    append(&env.transcript, &lines_of(&pool[5..8]));
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, NAME) == 8).await,
        "uploads go on while no checkpoint can be written"
    );
    let e = state_entry(&env, NAME);
    assert_eq!(e["acked_line"], 5, "the old checkpoint is intact: {e}");
    assert!(no_tmp_files(&env.home.join(".confab/sync")));
    // A crash while the disk is full, and a restart that cannot write its state either.
    d.task.abort();
    let _ = d.task.await;
    append(&env.transcript, &lines_of(&pool[8..10]));
    let d = env.start();
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, NAME) == 10)
            .await
    );
    std::fs::remove_file(filler).unwrap();
    append(&env.transcript, &lines_of(&pool[10..11]));
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, NAME) == 11)
            .await
    );
    assert!(
        eventually(T, || state_entry(&env, NAME)["acked_line"] == 11).await,
        "checkpoints resume once there is space"
    );
    d.stop_within(T).await;
    assert_eq!(fake.lines(&env.id, NAME), pool[..11]);
    assert!(!fake.statuses(Route::Chunk).contains(&400));
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_while_archiving_then_freed_is_byte_exact() {
    if ran_in_mount_namespace("faults::disk_full_while_archiving_then_freed_is_byte_exact") {
        return;
    }
    let env = Env::new();
    let pool = corpus_lines(TRANSCRIPT_CORPUS);
    env.write_transcript(&pool[..5]);
    let fs = Tmpfs::new(&env.home, "1m");
    let d = env.start();
    let file = env.archive_dir().join(NAME);
    let exact = || std::fs::read(&file).is_ok_and(|b| b == expected_archive_bytes(&env.transcript));
    assert!(eventually(T, exact).await);
    // One page left: a chunk bigger than that is written in part, then refused. Every appended
    // line is bigger than the page, so even a chunk cut from a partly visible append (a reader
    // can see a write grow page by page) cannot fit.
    let filler = fs.fill(1);
    let before = std::fs::read(&file).unwrap();
    let big: Vec<String> = pool
        .iter()
        .filter(|l| l.len() > 4200)
        .take(15)
        .cloned()
        .collect();
    assert_eq!(big.len(), 15);
    append(&env.transcript, &lines_of(&big));
    let reads = d.counters.get(NAME);
    assert!(
        eventually(T, || d.counters.get(NAME) > reads + 20_000).await,
        "the daemon keeps retrying"
    );
    assert!(!d.task.is_finished(), "the daemon keeps running");
    // A retry may be caught between its partial write and the truncation back, so the file is
    // awaited, not sampled; the exact comparison at the end would also see any bytes left behind.
    assert!(
        eventually(T, || std::fs::read(&file).is_ok_and(|b| b == before)).await,
        "a refused chunk leaves nothing behind"
    );
    std::fs::remove_file(filler).unwrap();
    append(&env.transcript, &lines_of(&pool[20..21]));
    assert!(eventually(T, exact).await, "exact once space is freed");
    d.stop_within(T).await;
    assert!(exact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_state_dir_keeps_syncing_then_checkpoints_resume() {
    if ran_in_mount_namespace("faults::read_only_state_dir_keeps_syncing_then_checkpoints_resume") {
        return;
    }
    let (fake, env, pool) = backend_with(5).await;
    let d = env.start();
    assert!(eventually(T, || state_entry(&env, NAME)["acked_line"] == 5).await);
    let ro = ReadOnly::new(&env.home.join(".confab/sync"));
    append(&env.transcript, &lines_of(&pool[5..9]));
    assert!(fake.wait_until(T, |f| f.position(&env.id, NAME) == 9).await);
    assert_eq!(state_entry(&env, NAME)["acked_line"], 5);
    assert!(!d.task.is_finished());
    // A second daemon cannot even open its lock file on a read-only directory: it says so in one
    // line and exits non-zero (a service manager may retry), without uploading anything.
    let requests = fake.request_count();
    let out = env.run_once_output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(last.contains("Read-only file system"), "{err}");
    assert_eq!(fake.request_count(), requests);
    drop(ro);
    append(&env.transcript, &lines_of(&pool[9..10]));
    assert!(
        fake.wait_until(T, |f| f.position(&env.id, NAME) == 10)
            .await
    );
    assert!(eventually(T, || state_entry(&env, NAME)["acked_line"] == 10).await);
    d.stop_within(T).await;
    assert_eq!(fake.lines(&env.id, NAME), pool[..10]);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_archive_mount_then_writable_is_byte_exact() {
    if ran_in_mount_namespace("faults::read_only_archive_mount_then_writable_is_byte_exact") {
        return;
    }
    let env = Env::new();
    let pool = corpus_lines(TRANSCRIPT_CORPUS);
    env.write_transcript(&pool[..5]);
    let root = env.tmp.path().join("arch");
    env.write_config_json(serde_json::json!({"backend_url": format!("file://{}", root.display())}));
    let d = env.start();
    let file = root.join(&env.id).join(NAME);
    let exact = || std::fs::read(&file).is_ok_and(|b| b == expected_archive_bytes(&env.transcript));
    assert!(eventually(T, exact).await);
    let ro = ReadOnly::new(&root);
    append(&env.transcript, &lines_of(&pool[5..9]));
    assert!(
        eventually(T, || state_entry(&env, NAME)["last_error"].is_string()
            || env
                .state()
                .is_some_and(|s| s["confab_sync"]["last_error"].is_string()))
        .await,
        "the error is recorded"
    );
    assert!(!d.task.is_finished(), "the daemon keeps running");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        expected_archive_bytes_of(&pool[..5]),
        "nothing was written while read-only"
    );
    drop(ro);
    assert!(eventually(T, exact).await, "exact once writable again");
    d.stop_within(T).await;
    assert!(exact());
}
