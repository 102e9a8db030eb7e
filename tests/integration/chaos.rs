//! Crash chaos (issue 5; acceptance X1, X2 and L3 at scale): many rounds of `kill -9` of the real
//! binary at random moments while a writer appends real transcript lines (from the corpus) to the
//! transcript and to two sub-agent files, sometimes CRLF, sometimes a partial line completed in a
//! later round. Every round restarts the daemon; at the end one clean run must leave the sink
//! holding exactly each file's complete lines, once, in order.
//!
//! Kill moments: at random while appending; inside a chunk the fake holds (before or after its
//! commit); right after an acknowledgement (the checkpoint write); during the shutdown that a
//! SIGTERM started. After every kill the checkpoint on disk must still be exact (X2).
//!
//! Seeded: the seed is printed (shown when a test fails); `CONFAB_CHAOS_SEED=<n>` replays a run and
//! `CONFAB_CHAOS_ROUNDS=<n>` sets the rounds (default 100 per sink).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::*;
use crate::support::fake::{Fake, Route, Times};

/// Generous: the machine is shared with other builds.
const T: Duration = Duration::from_secs(30);
const AGENTS: [&str; 2] = ["chaosagent01", "chaosagent02"];
const DEFAULT_ROUNDS: usize = 100;

fn rounds() -> usize {
    std::env::var("CONFAB_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_ROUNDS)
}

fn seed(what: &str) -> u64 {
    let seed = std::env::var("CONFAB_CHAOS_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{what}: chaos seed {seed} (replay with CONFAB_CHAOS_SEED={seed})");
    seed
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Appends real lines to the transcript and two agent files.
struct Writer {
    files: Vec<PathBuf>,
    names: Vec<String>,
    pools: Vec<Vec<String>>,
    next: Vec<usize>,
    /// The unwritten rest of a partial line, per file.
    pending: Vec<Vec<u8>>,
}

impl Writer {
    fn new(env: &Env) -> Writer {
        let mut files = vec![env.transcript.clone()];
        let mut names = vec![TRANSCRIPT_NAME.to_string()];
        for id in AGENTS {
            files.push(env.agent_path(id));
            names.push(format!("agent-{id}.jsonl"));
        }
        Writer {
            files,
            names,
            pools: vec![
                corpus_lines("4d5611e5-241a-462a-8d15-5122611a9569.jsonl"),
                corpus_lines("4d5611e5-241a-462a-8d15-5122611a9569/subagents/agent-a2898e3.jsonl"),
                corpus_lines("python-to-rust-port.jsonl"),
            ],
            next: vec![0; 3],
            pending: vec![Vec::new(); 3],
        }
    }

    /// Appends 1–3 lines to one file (the transcript half of the time), 10 % of them CRLF; one
    /// step in five leaves the last line cut at a random byte, finished by a later step.
    fn step(&mut self, rng: &mut StdRng) {
        let i = [0, 0, 1, 2][rng.gen_range(0..4)];
        let mut buf = std::mem::take(&mut self.pending[i]);
        let mut last_start = buf.len();
        for _ in 0..rng.gen_range(1..=3) {
            last_start = buf.len();
            let pool = &self.pools[i];
            buf.extend_from_slice(pool[self.next[i] % pool.len()].as_bytes());
            self.next[i] += 1;
            let end: &[u8] = if rng.gen_bool(0.1) { b"\r\n" } else { b"\n" };
            buf.extend_from_slice(end);
        }
        let cut = if rng.gen_bool(0.2) {
            rng.gen_range(last_start + 1..buf.len())
        } else {
            buf.len()
        };
        append_bytes(&self.files[i], &buf[..cut]);
        self.pending[i] = buf[cut..].to_vec();
    }

    /// Finishes every partial line.
    fn complete(&mut self) {
        for i in 0..self.files.len() {
            let rest = std::mem::take(&mut self.pending[i]);
            if !rest.is_empty() {
                append_bytes(&self.files[i], &rest);
            }
        }
    }
}

/// `confab-sync run` with stderr appended to `log` (a pipe nobody drains could block the daemon).
fn spawn_logged(env: &Env, log: &Path) -> ChildGuard {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = env
        .command()
        .args(env.run_args())
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap();
    ChildGuard(Some(child))
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Byte offset just after line `n` (1-based count of complete lines), if the file has them.
fn offset_of_line(bytes: &[u8], n: u64) -> Option<u64> {
    if n == 0 {
        return Some(0);
    }
    bytes
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .nth(n as usize - 1)
        .map(|(i, _)| i as u64 + 1)
}

/// X2 after a kill: the checkpoint parses, never claims more than the sink holds, and its offset
/// is exactly where its line ends in the file.
fn check_checkpoint(env: &Env, w: &Writer, sink_lines: impl Fn(&str) -> u64, ctx: &str) {
    let Some(state) = env.state() else { return };
    let files = &state["confab_sync"]["files"];
    for (name, path) in w.names.iter().zip(&w.files) {
        let e = &files[name.as_str()];
        let Some(acked) = e["acked_line"].as_u64() else {
            continue;
        };
        let held = sink_lines(name);
        assert!(
            acked <= held,
            "{ctx}: checkpoint of {name} says {acked} lines, the sink holds {held}"
        );
        if let Some(off) = e["acked_offset"].as_u64() {
            let bytes = std::fs::read(path).unwrap();
            assert_eq!(
                Some(off),
                offset_of_line(&bytes, acked),
                "{ctx}: checkpoint offset of {name} is not the end of line {acked}"
            );
        }
    }
}

/// Killed by our SIGKILL; after a SIGTERM also a clean exit, or death by that SIGTERM when it
/// arrived before the daemon installed its handler (the first milliseconds of the process).
fn killed_or_clean(status: ExitStatus, after_sigterm: bool) -> bool {
    let by = |s: Signal| status.signal() == Some(s as i32);
    by(Signal::SIGKILL) || (after_sigterm && (status.success() || by(Signal::SIGTERM)))
}

/// Lets the fake finish what a dead client left behind (held requests commit late; bytes the
/// client wrote just before dying are still parsed), so the next daemon never overlaps them:
/// every connection closed, everything answered, and no new request for a quiet period.
async fn settle(fake: &Fake) {
    for _ in 0..100 {
        assert!(
            fake.wait_until(T, |f| f.open_connections() == 0
                && f.requests().iter().all(|r| r.done()))
                .await,
            "the fake still has requests in flight"
        );
        let seen = fake.request_count();
        // Only a connection still in the listen backlog (not accepted yet) could bring more; the
        // fake cannot see that queue, so a short quiet period stands for it.
        tokio::time::sleep(ms(50)).await;
        if fake.request_count() == seen && fake.requests().iter().all(|r| r.done()) {
            return;
        }
    }
    panic!("the fake never went quiet");
}

/// The daemon `child` has finished a cycle (so its signal handlers are installed).
fn cycled(env: &Env, child: &ChildGuard) -> bool {
    env.state().is_some_and(|s| {
        s["pid"].as_i64() == Some(child.pid().as_raw() as i64)
            && s["confab_sync"]["last_loop_at"].is_string()
    })
}

fn total_position(fake: &Fake, env: &Env, w: &Writer) -> u64 {
    w.names.iter().map(|n| fake.position(&env.id, n)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_chaos_against_the_backend_then_exact() {
    let seed = seed("backend");
    let mut rng = StdRng::seed_from_u64(seed);
    let fake = Fake::start().await;
    fake.set_record_body_limit(Some(256));
    // Thousands of requests in a long run: the rate limit is not what this test is about.
    fake.set_rate_limit(1_000_000, 1e6, 1_000_000, 1e6);
    let env = Env::with_backend(&fake.url());
    let log = env.tmp.path().join("daemon.log");
    let mut w = Writer::new(&env);
    for _ in 0..6 {
        w.step(&mut rng);
    }
    let n = rounds();
    let mut modes = [0usize; 4];
    for round in 0..n {
        let ctx = format!("seed {seed} round {round}");
        let first_request = fake.request_count();
        let mut child = spawn_logged(&env, &log);
        let mode = rng.gen_range(0..4);
        modes[mode] += 1;
        match mode {
            0 => {
                // A random moment while the writer appends.
                for _ in 0..rng.gen_range(0..4) {
                    w.step(&mut rng);
                    tokio::time::sleep(ms(rng.gen_range(0..60))).await;
                }
                tokio::time::sleep(ms(rng.gen_range(0..150))).await;
            }
            1 => {
                // Mid-upload: the fake holds the next chunk, before or after committing it.
                let hold = ms(rng.gen_range(100..300));
                if rng.gen_bool(0.5) {
                    fake.hold(Route::Chunk, hold, Times::Next(1));
                } else {
                    fake.hold_before_commit(Route::Chunk, hold, Times::Next(1));
                }
                let before = fake.count(Route::Chunk);
                w.step(&mut rng);
                w.step(&mut rng);
                // Bounded: the steps may have added only a fragment (nothing to send).
                fake.wait_until(ms(3000), |f| f.count(Route::Chunk) > before)
                    .await;
                tokio::time::sleep(ms(rng.gen_range(0..90))).await;
            }
            2 => {
                // Just after an acknowledgement, while the checkpoint is being written.
                let before = total_position(&fake, &env, &w);
                w.step(&mut rng);
                w.step(&mut rng);
                fake.wait_until(ms(3000), |f| total_position(f, &env, &w) > before)
                    .await;
            }
            _ => {
                // During the shutdown a SIGTERM started (final sync).
                w.step(&mut rng);
                tokio::time::sleep(ms(rng.gen_range(0..100))).await;
                child.signal(Signal::SIGTERM);
                tokio::time::sleep(ms(rng.gen_range(0..40))).await;
            }
        }
        child.signal(Signal::SIGKILL);
        let status = child.wait(T).await;
        assert!(
            killed_or_clean(status, mode == 3),
            "{ctx}: mode {mode}: unexpected exit {status:?}\n{}",
            log_tail(&log)
        );
        fake.clear_holds();
        settle(&fake).await;
        check_checkpoint(&env, &w, |name| fake.position(&env.id, name), &ctx);
        if let Some(r) = fake.requests().get(first_request) {
            assert_eq!(
                r.route,
                Some(Route::Init),
                "{ctx}: a restart starts with an init"
            );
        }
    }
    let in_flight = fake.requests().iter().filter(|r| r.client_gone).count();
    eprintln!("rounds per mode {modes:?}; {in_flight} requests outlived their client");
    if n >= 20 {
        assert!(
            modes.iter().all(|&m| m > 0),
            "seed {seed}: every kill moment was tried"
        );
        assert!(in_flight > 0, "seed {seed}: some kills landed mid-request");
    }

    // One clean run: everything complete arrives; a fragment left at the end is never sent.
    w.complete();
    append_bytes(&env.transcript, b"{\"type\":\"user\",\"unfinished\":");
    let expected: Vec<(String, Vec<String>)> = w
        .names
        .iter()
        .zip(&w.files)
        .map(|(n, p)| (n.clone(), complete_lines(p)))
        .collect();
    let mut child = spawn_logged(&env, &log);
    let synced = fake
        .wait_until(Duration::from_secs(60), |f| {
            expected
                .iter()
                .all(|(n, l)| f.position(&env.id, n) == l.len() as u64)
        })
        .await;
    assert!(
        synced,
        "seed {seed}: final run did not catch up\n{}",
        log_tail(&log)
    );
    assert!(eventually(T, || cycled(&env, &child)).await, "seed {seed}");
    child.signal(Signal::SIGTERM);
    let status = child.wait(T).await;
    assert!(
        status.success(),
        "seed {seed}: {status:?}\n{}",
        log_tail(&log)
    );
    for (name, lines) in &expected {
        assert!(
            fake.lines(&env.id, name) == *lines,
            "seed {seed}: {name}: the backend's lines differ from the file's complete lines"
        );
        assert!(
            fake.merged_lines(&env.id, name) == *lines,
            "seed {seed}: {name}: the read-back merge differs from the file's complete lines"
        );
        assert!(!lines.is_empty(), "seed {seed}: {name} got lines");
    }
    assert!(
        !fake.statuses(Route::Chunk).contains(&400),
        "seed {seed}: a chunk was refused (contiguity)"
    );
    fake.assert_no_violations();
}

fn archived_lines(path: &Path) -> u64 {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_chaos_against_the_local_archive_then_byte_exact() {
    let seed = seed("archive");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = Env::new();
    let log = env.tmp.path().join("daemon.log");
    let archive = env.archive_dir();
    let mut w = Writer::new(&env);
    for _ in 0..6 {
        w.step(&mut rng);
    }
    let archived_total = |w: &Writer| -> u64 {
        w.names
            .iter()
            .map(|n| archived_lines(&archive.join(n)))
            .sum()
    };
    let n = rounds();
    for round in 0..n {
        let ctx = format!("seed {seed} round {round}");
        let mut child = spawn_logged(&env, &log);
        let mode = rng.gen_range(0..3);
        match mode {
            0 => {
                for _ in 0..rng.gen_range(0..4) {
                    w.step(&mut rng);
                    tokio::time::sleep(ms(rng.gen_range(0..60))).await;
                }
                tokio::time::sleep(ms(rng.gen_range(0..150))).await;
            }
            1 => {
                // Just after a chunk reached the archive: the checkpoint is being written.
                let before = archived_total(&w);
                w.step(&mut rng);
                w.step(&mut rng);
                eventually(ms(3000), || archived_total(&w) > before).await;
            }
            _ => {
                w.step(&mut rng);
                tokio::time::sleep(ms(rng.gen_range(0..100))).await;
                child.signal(Signal::SIGTERM);
                tokio::time::sleep(ms(rng.gen_range(0..40))).await;
            }
        }
        child.signal(Signal::SIGKILL);
        let status = child.wait(T).await;
        assert!(
            killed_or_clean(status, mode == 2),
            "{ctx}: mode {mode}: unexpected exit {status:?}\n{}",
            log_tail(&log)
        );
        check_checkpoint(&env, &w, |name| archived_lines(&archive.join(name)), &ctx);
    }

    w.complete();
    append_bytes(&env.transcript, b"{\"type\":\"user\",\"unfinished\":");
    let expected: Vec<(PathBuf, Vec<u8>)> = w
        .names
        .iter()
        .zip(&w.files)
        .map(|(n, p)| (archive.join(n), expected_archive_bytes(p)))
        .collect();
    let mut child = spawn_logged(&env, &log);
    let synced = eventually(Duration::from_secs(60), || {
        expected
            .iter()
            .all(|(p, b)| std::fs::read(p).is_ok_and(|got| got == *b))
    })
    .await;
    assert!(
        synced,
        "seed {seed}: final run did not catch up\n{}",
        log_tail(&log)
    );
    assert!(eventually(T, || cycled(&env, &child)).await, "seed {seed}");
    child.signal(Signal::SIGTERM);
    let status = child.wait(T).await;
    assert!(
        status.success(),
        "seed {seed}: {status:?}\n{}",
        log_tail(&log)
    );
    for (path, bytes) in &expected {
        assert!(
            std::fs::read(path).unwrap() == *bytes,
            "seed {seed}: {} is not byte-exact",
            path.display()
        );
        assert!(!bytes.is_empty());
    }
}
