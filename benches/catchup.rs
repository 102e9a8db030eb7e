//! Catch-up throughput against its single-core ceiling, peak memory, and redaction cost
//! (`cargo bench --bench catchup`; see BENCHMARKS.md).
//!
//! Builds a transcript of `CONFAB_BENCH_MB` (default 1000) MB by repeating the real lines of
//! `../shared/corpus/`, then, `CONFAB_BENCH_REPS` (default 2) times in turn, each against a fresh
//! discarding backend process pinned to core 1 while the client is pinned to core 0:
//! - **ceiling**: this process, one thread, doing only read lines → serde_json-encode a chunk →
//!   zstd level 3 → POST (reqwest, current-thread tokio, like the daemon) and wait for the answer;
//! - **daemon**: `confab-sync run --once` (no state file: no checkpoint writes, as `--once` does
//!   for a session it has never seen);
//! - **daemon + checkpoint**: the same with an existing state file, so every acknowledged chunk
//!   also writes the state atomically (H1: tmp, fsync, rename, directory fsync);
//! - **daemon + redaction**: default patterns on (`redaction.enabled: true`), no state file.
//!
//! Then the local archive (`file://`), and an end-to-end redaction check: the corpus synced to
//! the archive with redaction on must equal `Redactor::redact_line_reference` of every line.

#[path = "common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use confab_sync::sink::{ChunkRequest, FileType};
use serde_json::json;

const TARGET: usize = 4 * 1024 * 1024;

/// read → encode → zstd → POST, nothing else. Returns (wall, CPU of this process, chunks).
fn ceiling(transcript: &Path, url: &str) -> (Duration, Duration, u64) {
    pin_current_thread(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let name = transcript
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let session = format!("srv-{}", name.trim_end_matches(".jsonl"));
    let chunk_url = format!("{url}/api/v1/sync/chunk");
    let cpu0 = self_cpu();
    let start = Instant::now();
    let mut reader = BufReader::with_capacity(64 * 1024, std::fs::File::open(transcript).unwrap());
    let mut zstd = zstd::bulk::Compressor::new(3).unwrap();
    zstd.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))
        .unwrap();
    let mut next = 1u64;
    let mut chunks = 0u64;
    let mut carry: Option<String> = None;
    let mut raw = Vec::new();
    loop {
        let mut lines: Vec<String> = Vec::new();
        let mut size = 0usize;
        if let Some(l) = carry.take() {
            size += l.len() + 3;
            lines.push(l);
        }
        loop {
            raw.clear();
            if reader.read_until(b'\n', &mut raw).unwrap() == 0 {
                break;
            }
            raw.pop();
            let line = String::from_utf8(std::mem::take(&mut raw)).unwrap();
            if !lines.is_empty() && size + line.len() + 3 > TARGET {
                carry = Some(line);
                break;
            }
            size += line.len() + 3;
            lines.push(line);
        }
        if lines.is_empty() {
            break;
        }
        let req = ChunkRequest {
            session_id: &session,
            file_name: &name,
            file_type: FileType::Transcript,
            first_line: next,
            lines: &lines,
            metadata: None,
        };
        let body = serde_json::to_vec(&req).unwrap();
        let wire = zstd.compress(&body).unwrap();
        let last = req.last_line();
        let ack: serde_json::Value = rt.block_on(async {
            let body = client
                .post(&chunk_url)
                .header("content-type", "application/json")
                .header("content-encoding", "zstd")
                .header("authorization", "Bearer bench-key")
                .body(wire)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            serde_json::from_slice(&body).unwrap()
        });
        assert_eq!(ack["last_synced_line"].as_u64(), Some(last), "{ack}");
        next = last + 1;
        chunks += 1;
    }
    let r = (start.elapsed(), self_cpu() - cpu0, chunks);
    unpin_current_thread();
    r
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Ceiling,
    Daemon,
    DaemonCheckpoint,
    DaemonRedaction,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Ceiling => "ceiling (read→encode→zstd→POST)",
            Kind::Daemon => "daemon run --once",
            Kind::DaemonCheckpoint => "daemon run --once + checkpoint/ack",
            Kind::DaemonRedaction => "daemon run --once + redaction",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Run {
    wall: Duration,
    cpu: Duration,
    peak_kib: u64,
    server_cpu: Duration,
    requests: u64,
}

fn write_state(w: &World, id: &str) {
    let paths = confab_sync::paths::Paths::for_home(&w.home);
    confab_sync::state::ensure_sync_dir(&paths.sync_dir()).unwrap();
    let mut st =
        confab_sync::state::State::new(&paths, id, &w.transcript(id).display().to_string(), "/", 0);
    st.pid = 0;
    confab_sync::state::save(&paths.state_file(id), &st).unwrap();
}

fn run(kind: Kind, w: &World, id: &str, lines: u64) -> Run {
    let server = spawn_server_process(1);
    let (wall, cpu, peak_kib) = match kind {
        Kind::Ceiling => {
            let (wall, cpu, _) = ceiling(&w.transcript(id), &server.url);
            (wall, cpu, 0)
        }
        _ => {
            let redaction = kind == Kind::DaemonRedaction;
            w.write_config(json!({
                "backend_url": server.url, "api_key": "bench-key",
                "redaction": {"enabled": redaction}
            }));
            let paths = confab_sync::paths::Paths::for_home(&w.home);
            let _ = std::fs::remove_file(paths.state_file(id));
            if kind == Kind::DaemonCheckpoint {
                write_state(w, id);
            }
            let mut c = w.command(id);
            c.arg("--once");
            pin_command(&mut c, 0);
            let start = Instant::now();
            let child = c.spawn().unwrap();
            let (wall, peak, cpu) = wait_measured(child, start);
            (wall, cpu, peak)
        }
    };
    let (requests, _chunks, got, server_cpu) = server.finish();
    assert_eq!(got, lines, "{kind:?}: the backend must receive every line");
    Run {
        wall,
        cpu,
        peak_kib,
        server_cpu,
        requests,
    }
}

/// Syncs the corpus to the archive with redaction on and compares with the reference.
fn redaction_identity() -> (usize, usize) {
    let w = World::new();
    let id = "redaction-check";
    let bytes = corpus_lines();
    std::fs::write(w.transcript(id), &bytes).unwrap();
    let root = w.home.join("arch");
    w.write_config(json!({
        "backend_url": format!("file://{}", root.display()),
        "redaction": {"enabled": true}
    }));
    let mut c = w.command(id);
    c.arg("--once");
    let status = c.status().unwrap();
    assert!(status.success());
    let archived = std::fs::read(root.join(id).join(format!("{id}.jsonl"))).unwrap();
    let cfg = confab_sync::config::RedactionConfig {
        enabled: true,
        ..Default::default()
    };
    let r = confab_sync::redact::Redactor::from_config(&cfg)
        .unwrap()
        .unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let mut expected = String::new();
    let mut changed = 0;
    let mut total = 0;
    for line in text.lines() {
        let out = r.redact_line_reference(line);
        if out != line {
            changed += 1;
        }
        total += 1;
        expected.push_str(&out);
        expected.push('\n');
    }
    assert!(
        archived == expected.as_bytes(),
        "archived redacted transcript differs from the per-pattern reference"
    );
    (total, changed)
}

fn main() {
    if std::env::args().any(|a| a == SERVE_ARG) {
        return serve_process_main();
    }
    if std::env::args().any(|a| a == "--list") {
        println!("catchup: bench");
        return;
    }
    assert!(
        num_cores() >= 2,
        "needs two cores (client on 0, backend on 1)"
    );
    let mb: u64 = env_num("CONFAB_BENCH_MB", 1000);
    let reps: u64 = env_num("CONFAB_BENCH_REPS", 2);
    let w = World::new();
    let id = "bench-catchup";
    let bytes = build_transcript(&w.transcript(id), mb * 1_000_000);
    let lines = bytecount_lines(&w.transcript(id));
    let mbytes = bytes as f64 / 1e6;
    println!("transcript: {mbytes:.1} MB, {lines} lines (real corpus lines repeated)");
    println!("client pinned to core 0, discarding backend process pinned to core 1");

    let kinds = [
        Kind::Ceiling,
        Kind::Daemon,
        Kind::DaemonCheckpoint,
        Kind::DaemonRedaction,
    ];
    let mut best: Vec<Option<Run>> = vec![None; kinds.len()];
    for rep in 1..=reps {
        for (i, &k) in kinds.iter().enumerate() {
            let r = run(k, &w, id, lines);
            println!(
                "  rep {rep} {:<36} {:6.2} s {:7.1} MB/s  CPU {:5.2} s  peak RSS {:5.1} MiB  requests {}  backend CPU {:.2} s",
                k.label(),
                r.wall.as_secs_f64(),
                mbytes / r.wall.as_secs_f64(),
                r.cpu.as_secs_f64(),
                mib(r.peak_kib),
                r.requests,
                r.server_cpu.as_secs_f64()
            );
            if best[i].is_none_or(|b| r.wall < b.wall) {
                best[i] = Some(r);
            }
        }
    }
    let get = |k: Kind| best[kinds.iter().position(|&x| x == k).unwrap()].unwrap();
    let ceil = get(Kind::Ceiling);
    let rate = |r: Run| mbytes / r.wall.as_secs_f64();
    println!("best of {reps}:");
    println!(
        "  ceiling                      {:7.1} MB/s (CPU {:.2} s)",
        rate(ceil),
        ceil.cpu.as_secs_f64()
    );
    for k in [Kind::Daemon, Kind::DaemonCheckpoint, Kind::DaemonRedaction] {
        let r = get(k);
        println!(
            "  {:<28} {:7.1} MB/s = {:5.1} % of ceiling, peak RSS {:.1} MiB, CPU {:.2} s",
            k.label(),
            rate(r),
            100.0 * rate(r) / rate(ceil),
            mib(r.peak_kib),
            r.cpu.as_secs_f64()
        );
    }
    println!(
        "  redaction on vs off: {:.1} % (target ≥ 50 %)",
        100.0 * rate(get(Kind::DaemonRedaction)) / rate(get(Kind::Daemon))
    );
    println!(
        "  daemon vs ceiling: {:.1} % (target ≥ 70 %); peak RSS {:.1} MiB (target ≤ 48 MiB)",
        100.0 * rate(get(Kind::Daemon)) / rate(ceil),
        mib(get(Kind::Daemon).peak_kib)
    );

    // Local archive: every chunk appended and fdatasync'ed, plus the checkpoint.
    let root = w.home.join("arch");
    w.write_config(json!({"backend_url": format!("file://{}", root.display())}));
    let paths = confab_sync::paths::Paths::for_home(&w.home);
    let _ = std::fs::remove_file(paths.state_file(id));
    write_state(&w, id);
    let mut c = w.command(id);
    c.arg("--once");
    pin_command(&mut c, 0);
    let start = Instant::now();
    let (wall, peak, cpu) = wait_measured(c.spawn().unwrap(), start);
    println!(
        "archive + checkpoint/ack: {:.2} s, {:.1} MB/s, CPU {:.2} s, peak RSS {:.1} MiB",
        wall.as_secs_f64(),
        mbytes / wall.as_secs_f64(),
        cpu.as_secs_f64(),
        mib(peak)
    );
    let _ = std::fs::remove_dir_all(&root);

    let (total, changed) = redaction_identity();
    println!(
        "redaction output identical to redact_line_reference on the corpus: {total} lines, {changed} redacted"
    );
}

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bytecount_lines(p: &Path) -> u64 {
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(p).unwrap());
    let mut n = 0u64;
    loop {
        let buf = r.fill_buf().unwrap();
        if buf.is_empty() {
            return n;
        }
        n += memchr_count(buf);
        let len = buf.len();
        r.consume(len);
    }
}

fn memchr_count(b: &[u8]) -> u64 {
    b.iter().filter(|&&c| c == b'\n').count() as u64
}
