//! Catch-up and idle benchmark (`cargo bench --bench catchup`; see BENCHMARKS.md).
//!
//! Builds a transcript of `CONFAB_BENCH_MB` (default 200) MB by repeating the real lines of
//! `../shared/corpus/`, then measures with the release binary:
//! - catch-up: `confab-sync run --once` to a discarding HTTP backend on loopback (it decodes every
//!   body and answers the right `last_synced_line`) and to the local archive: MB/s and peak RSS;
//! - idle: a daemon that has caught up, RSS after a few idle cycles, and CPU time over them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_confab-sync");
const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus");

fn corpus_lines() -> Vec<u8> {
    let mut all = Vec::new();
    for f in [
        "4d5611e5-241a-462a-8d15-5122611a9569.jsonl",
        "session_comprehensive.jsonl",
        "python-to-rust-port.jsonl",
    ] {
        all.extend(std::fs::read(Path::new(CORPUS).join(f)).expect("corpus file"));
    }
    all
}

fn build_transcript(path: &Path, mb: u64) -> u64 {
    let lines = corpus_lines();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut written = 0u64;
    while written < mb * 1_000_000 {
        f.write_all(&lines).unwrap();
        written += lines.len() as u64;
    }
    f.flush().unwrap();
    written
}

fn decode(headers: &HeaderMap, body: &[u8]) -> Value {
    let raw = if headers.get("content-encoding").is_some() {
        zstd::stream::decode_all(body).expect("zstd body")
    } else {
        body.to_vec()
    };
    serde_json::from_slice(&raw).expect("json body")
}

/// Positions per file name: enough state for a restarted daemon to resume instead of re-uploading.
static POSITIONS: std::sync::Mutex<Vec<(String, u64)>> = std::sync::Mutex::new(Vec::new());

async fn init(_h: HeaderMap, _b: Bytes) -> Json<Value> {
    let files: serde_json::Map<String, Value> = POSITIONS
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), json!({"last_synced_line": v})))
        .collect();
    Json(json!({"session_id": "bench-session", "files": files}))
}

async fn chunk(h: HeaderMap, b: Bytes) -> Json<Value> {
    #[derive(serde::Deserialize)]
    struct C {
        file_name: String,
        first_line: u64,
        lines: Vec<serde::de::IgnoredAny>,
    }
    let raw = if h.get("content-encoding").is_some() {
        zstd::stream::decode_all(&b[..]).expect("zstd body")
    } else {
        b.to_vec()
    };
    let c: C = serde_json::from_slice(&raw).expect("chunk json");
    let last = c.first_line + c.lines.len() as u64 - 1;
    let mut pos = POSITIONS.lock().unwrap();
    match pos.iter_mut().find(|(k, _)| *k == c.file_name) {
        Some(p) => p.1 = last,
        None => pos.push((c.file_name, last)),
    }
    Json(json!({"last_synced_line": last}))
}

async fn event(h: HeaderMap, b: Bytes) -> Json<Value> {
    let _ = decode(&h, &b);
    Json(json!({"success": true}))
}

fn start_backend(rt: &tokio::runtime::Runtime) -> String {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/api/v1/sync/init", post(init))
        .route("/api/v1/sync/chunk", post(chunk))
        .route("/api/v1/sync/event", post(event));
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

struct World {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    claude: PathBuf,
    transcript: PathBuf,
    config: PathBuf,
}

fn world(mb: u64) -> (World, u64) {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let claude = tmp.path().join("claude");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(claude.join("p")).unwrap();
    let transcript = claude.join("p/bench-session-id.jsonl");
    let bytes = build_transcript(&transcript, mb);
    let config = tmp.path().join("config.json");
    (
        World {
            home,
            claude,
            transcript,
            config,
            _tmp: tmp,
        },
        bytes,
    )
}

fn command(w: &World, id: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &w.home)
        .env("CONFAB_CONFIG_PATH", &w.config)
        .env("CONFAB_CLAUDE_DIR", &w.claude)
        .env("CONFAB_LOG", "warn")
        .args([
            "run",
            &format!("--session-id={id}"),
            &format!("--transcript={}", w.transcript.display()),
        ])
        .stdin(Stdio::null());
    c
}

/// Runs to completion; returns (wall time, peak RSS in KiB, user+sys CPU).
fn run_measured(mut cmd: Command) -> (Duration, u64, Duration) {
    let start = Instant::now();
    let child = cmd.spawn().unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers.
    let r = unsafe { libc::wait4(pid.as_raw(), &mut status, 0, &mut usage) };
    assert_eq!(r, pid.as_raw());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "run failed: {status}"
    );
    let cpu = Duration::from_micros(
        (usage.ru_utime.tv_sec * 1_000_000
            + usage.ru_utime.tv_usec
            + usage.ru_stime.tv_sec * 1_000_000
            + usage.ru_stime.tv_usec) as u64,
    );
    std::mem::forget(child);
    (start.elapsed(), usage.ru_maxrss as u64, cpu)
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = &s[s.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("catchup: bench");
        return;
    }
    let mb: u64 = std::env::var("CONFAB_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url = start_backend(&rt);

    let (w, bytes) = world(mb);
    let mbytes = bytes as f64 / 1e6;
    println!("transcript: {mbytes:.1} MB of real corpus lines");

    std::fs::write(
        &w.config,
        json!({"backend_url": url, "api_key": "bench-key"}).to_string(),
    )
    .unwrap();
    let mut c = command(&w, "bench-http");
    c.arg("--once");
    let (t, rss, cpu) = run_measured(c);
    println!(
        "catch-up, HTTP backend (zstd, loopback): {:.1} s, {:.1} MB/s, peak RSS {:.1} MiB, CPU {:.1} s",
        t.as_secs_f64(),
        mbytes / t.as_secs_f64(),
        rss as f64 / 1024.0,
        cpu.as_secs_f64()
    );

    std::fs::write(
        &w.config,
        json!({"backend_url": format!("file://{}", w.home.join("arch").display())}).to_string(),
    )
    .unwrap();
    let mut c = command(&w, "bench-archive");
    c.arg("--once");
    let (t, rss, cpu) = run_measured(c);
    println!(
        "catch-up, local archive: {:.1} s, {:.1} MB/s, peak RSS {:.1} MiB, CPU {:.1} s",
        t.as_secs_f64(),
        mbytes / t.as_secs_f64(),
        rss as f64 / 1024.0,
        cpu.as_secs_f64()
    );

    // Idle: a running daemon on the HTTP backend that has caught up (the backend holds everything).
    std::fs::write(
        &w.config,
        json!({"backend_url": url, "api_key": "bench-key"}).to_string(),
    )
    .unwrap();
    let mut c = command(&w, "bench-http");
    c.env("CONFAB_SYNC_INTERVAL_MS", "1000");
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let t0 = cpu_ticks(child.id());
    std::thread::sleep(Duration::from_secs(10));
    let ticks = cpu_ticks(child.id()) - t0;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    println!(
        "idle daemon (HTTP backend, 1 s interval, caught up): RSS {:.1} MiB, CPU {:.0} ms over 10 cycles",
        rss_kib(child.id()) as f64 / 1024.0,
        ticks as f64 / hz * 1000.0
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}
