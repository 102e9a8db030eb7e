//! Shared pieces of the benchmarks (see BENCHMARKS.md): a corpus-built transcript, a minimal
//! confab-compatible backend that discards what it receives, CPU pinning, and process probes
//! (`/proc`, `wait4`).
//!
//! The backend keeps only positions (so a restarted daemon resumes instead of re-uploading) and
//! counters; it checks contiguity like the real one, so a daemon bug shows up as a failed run,
//! not as a fast one. It runs either in the benchmark process (latency, idle) or, for throughput,
//! as a separate process pinned to the other core ([`spawn_server_process`]) so it never competes
//! with the client for core 0.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_confab-sync");
pub const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus");
pub const CORPUS_FILES: [&str; 3] = [
    "4d5611e5-241a-462a-8d15-5122611a9569.jsonl",
    "session_comprehensive.jsonl",
    "python-to-rust-port.jsonl",
];
/// The argument that turns a benchmark binary into the discarding backend process.
pub const SERVE_ARG: &str = "--discarding-server";

/// The corpus transcripts concatenated (1,756 real lines).
pub fn corpus_lines() -> Vec<u8> {
    let mut all = Vec::new();
    for f in CORPUS_FILES {
        all.extend(std::fs::read(Path::new(CORPUS).join(f)).expect("corpus file"));
    }
    all
}

/// Writes the corpus lines repeated until at least `bytes`; returns the size written.
pub fn build_transcript(path: &Path, bytes: u64) -> u64 {
    let lines = corpus_lines();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut written = 0u64;
    while written < bytes {
        f.write_all(&lines).unwrap();
        written += lines.len() as u64;
    }
    f.flush().unwrap();
    written
}

/// What the backend saw.
#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub chunks: AtomicU64,
    pub lines: AtomicU64,
    pub wire_bytes: AtomicU64,
    /// `(file name, last line of the chunk, arrival)` of every accepted chunk.
    pub arrivals: Mutex<Vec<(String, u64, Instant)>>,
    positions: Mutex<HashMap<(String, String), u64>>,
}

/// The decoded body. zstd bodies are decoded into one reused buffer (their frames carry the
/// content size), so the backend spends as little time per request as it can: the client waits
/// for every answer.
fn decode(headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    if headers.get("content-encoding").is_none() {
        return body.to_vec();
    }
    let size = zstd::zstd_safe::get_frame_content_size(body)
        .ok()
        .flatten()
        .expect("zstd frame with its content size") as usize;
    let mut out = SPARE.with(|s| std::mem::take(&mut *s.borrow_mut()));
    out.clear();
    out.reserve(size);
    zstd::bulk::Decompressor::new()
        .unwrap()
        .decompress_to_buffer(body, &mut out)
        .expect("zstd body");
    out
}

/// Gives a decoded body's buffer back for the next request.
fn recycle(buf: Vec<u8>) {
    SPARE.with(|s| *s.borrow_mut() = buf);
}

thread_local! {
    static SPARE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

async fn init(State(s): State<Arc<Stats>>, h: HeaderMap, b: Bytes) -> Json<Value> {
    s.requests.fetch_add(1, Ordering::Relaxed);
    s.wire_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
    let req: Value = serde_json::from_slice(&decode(&h, &b)).expect("init json");
    let session = format!("srv-{}", req["external_id"].as_str().unwrap_or(""));
    let files: serde_json::Map<String, Value> = s
        .positions
        .lock()
        .unwrap()
        .iter()
        .filter(|((sid, _), _)| *sid == session)
        .map(|((_, f), v)| (f.clone(), json!({ "last_synced_line": v })))
        .collect();
    Json(json!({ "session_id": session, "files": files }))
}

async fn chunk(State(s): State<Arc<Stats>>, h: HeaderMap, b: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    struct C {
        session_id: String,
        file_name: String,
        first_line: u64,
        lines: Vec<serde::de::IgnoredAny>,
    }
    let at = Instant::now();
    s.requests.fetch_add(1, Ordering::Relaxed);
    s.wire_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
    let raw = decode(&h, &b);
    let c: C = serde_json::from_slice(&raw).expect("chunk json");
    recycle(raw);
    let n = c.lines.len() as u64;
    let last = c.first_line + n - 1;
    {
        let mut pos = s.positions.lock().unwrap();
        let p = pos.entry((c.session_id, c.file_name.clone())).or_insert(0);
        if c.first_line != *p + 1 {
            let msg = format!(
                "first_line must be {} (got {}) - chunks must be contiguous",
                *p + 1,
                c.first_line
            );
            return (StatusCode::BAD_REQUEST, Json(json!({ "error": msg }))).into_response();
        }
        *p = last;
    }
    s.chunks.fetch_add(1, Ordering::Relaxed);
    s.lines.fetch_add(n, Ordering::Relaxed);
    s.arrivals.lock().unwrap().push((c.file_name, last, at));
    Json(json!({ "last_synced_line": last })).into_response()
}

async fn other(State(s): State<Arc<Stats>>) -> Json<Value> {
    s.requests.fetch_add(1, Ordering::Relaxed);
    Json(json!({ "success": true }))
}

/// The backend in the benchmark process, on its own one-worker runtime (kept alive with it).
pub struct Server {
    _rt: tokio::runtime::Runtime,
    pub stats: Arc<Stats>,
    pub url: String,
}

pub fn server() -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let stats = Arc::new(Stats::default());
    let url = start_server(&rt, stats.clone());
    Server {
        _rt: rt,
        stats,
        url,
    }
}

/// Serves the backend on 127.0.0.1 in `rt`; returns its base URL.
pub fn start_server(rt: &tokio::runtime::Runtime, stats: Arc<Stats>) -> String {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/api/v1/sync/init", post(init))
        .route("/api/v1/sync/chunk", post(chunk))
        .route("/api/v1/sync/event", post(other))
        .fallback(other)
        .with_state(stats);
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// Body of the server process: prints `URL <url>`, serves until stdin closes, then prints
/// `STATS <requests> <chunks> <lines> <cpu µs>` and exits.
pub fn serve_process_main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stats = Arc::new(Stats::default());
    let url = start_server(&rt, stats.clone());
    println!("URL {url}");
    std::io::stdout().flush().unwrap();
    rt.block_on(async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        loop {
            match tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    });
    let cpu = self_cpu();
    println!(
        "STATS {} {} {} {}",
        stats.requests.load(Ordering::Relaxed),
        stats.chunks.load(Ordering::Relaxed),
        stats.lines.load(Ordering::Relaxed),
        cpu.as_micros()
    );
}

/// The discarding backend as a separate process pinned to `core`.
pub struct ServerProcess {
    child: Child,
    pub url: String,
}

impl ServerProcess {
    /// Stops the server; returns (requests, chunks, lines, server CPU).
    pub fn finish(mut self) -> (u64, u64, u64, Duration) {
        drop(self.child.stdin.take());
        let mut out = String::new();
        let mut r = std::io::BufReader::new(self.child.stdout.take().unwrap());
        while r.read_line(&mut out).unwrap() > 0 {
            if out.starts_with("STATS") {
                break;
            }
            out.clear();
        }
        let _ = self.child.wait();
        let v: Vec<u64> = out
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        (v[0], v[1], v[2], Duration::from_micros(v[3]))
    }
}

pub fn spawn_server_process(core: usize) -> ServerProcess {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.arg(SERVE_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    pin_command(&mut cmd, core);
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("URL ")
        .expect("server URL")
        .to_string();
    ServerProcess { child, url }
}

fn cpu_set(core: usize) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        set
    }
}

/// Pins the calling thread to `core`.
pub fn pin_current_thread(core: usize) {
    let set = cpu_set(core);
    // SAFETY: valid set for the calling thread (pid 0).
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    assert_eq!(r, 0, "sched_setaffinity");
}

/// Unpins the calling thread (all cores).
pub fn unpin_current_thread() {
    // SAFETY: plain data, then a valid set for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in 0..num_cores() {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
    }
}

pub fn num_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The child (and every thread it starts) runs on `core` only.
pub fn pin_command(cmd: &mut Command, core: usize) {
    use std::os::unix::process::CommandExt;
    let set = cpu_set(core);
    // SAFETY: sched_setaffinity is async-signal-safe; `set` is copied into the closure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// User + system CPU of this whole process so far.
pub fn self_cpu() -> Duration {
    // SAFETY: getrusage with a valid out-pointer.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_micros((t.tv_sec * 1_000_000 + t.tv_usec) as u64)
}

/// Waits for `child`; returns (wall since `start`, peak RSS KiB, user+sys CPU). Panics unless it
/// exited 0.
pub fn wait_measured(child: Child, start: Instant) -> (Duration, u64, Duration) {
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: wait4 on our own child with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "run failed: {status}"
    );
    // Reaped above: keep std from waiting again.
    std::mem::forget(child);
    (
        start.elapsed(),
        usage.ru_maxrss as u64,
        tv(usage.ru_utime) + tv(usage.ru_stime),
    )
}

/// A field (in KiB) of `/proc/<pid>/<file>` such as `VmRSS:` or `Pss:`.
pub fn proc_kib(pid: u32, file: &str, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time of every thread of `pid` (scheduler nanoseconds, `/proc/<pid>/task/*/schedstat`).
pub fn cpu_of(pid: u32) -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    // Threads that already exited are counted in the process's stat (utime/stime, ticks).
    Duration::from_nanos(ns)
}

pub fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// A home, a Claude dir and a config for daemons.
pub struct World {
    pub tmp: tempfile::TempDir,
    pub home: PathBuf,
    pub claude: PathBuf,
    pub config: PathBuf,
}

impl World {
    pub fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let claude = tmp.path().join("claude");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(claude.join("p")).unwrap();
        let config = tmp.path().join("config.json");
        World {
            home,
            claude,
            config,
            tmp,
        }
    }

    pub fn transcript(&self, id: &str) -> PathBuf {
        self.claude.join(format!("p/{id}.jsonl"))
    }

    pub fn write_config(&self, v: Value) {
        std::fs::write(&self.config, v.to_string()).unwrap();
    }

    /// `confab-sync run` for session `id` on its transcript; no output, warnings only.
    pub fn command(&self, id: &str) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("CONFAB_CONFIG_PATH", &self.config)
            .env("CONFAB_CLAUDE_DIR", &self.claude)
            .env("CONFAB_LOG", "warn")
            .args([
                "run",
                &format!("--session-id={id}"),
                &format!("--transcript={}", self.transcript(id).display()),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        c
    }
}

pub fn sigterm(pid: u32) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The `p`-quantile (0..=1) of `v` (sorted in place).
pub fn quantile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// Waits until `f` holds, checking every 10 ms, at most `limit`.
pub fn await_cond(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}
