//! Live latency and start-up (`cargo bench --bench latency`; see BENCHMARKS.md):
//! - **append latency**: a caught-up daemon at the default 30 s interval; `CONFAB_BENCH_APPENDS`
//!   (default 50) lines are appended one at a time at random gaps (0.05–2 s, fixed seed); each
//!   line's latency runs from its `write` to the arrival of the chunk holding it at the backend
//!   (the acknowledgement leaves right then). Also the request count against the backend's
//!   per-user limit (burst 2,000, then 2.78/s);
//! - **start-up**: time from spawning `confab-sync run` to the `READY=1` datagram on a
//!   `NOTIFY_SOCKET` bound here, over 20 starts;
//! - **hook session-start**: wall time of the hook, when the binary has that subcommand.

#[path = "common/mod.rs"]
mod common;

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};
use serde_json::json;

fn append_latency(w: &World, stats: &Stats) {
    let id = "latency";
    build_transcript(&w.transcript(id), 1);
    let mut lines = corpus_lines().iter().filter(|&&b| b == b'\n').count() as u64;
    let mut child = w.command(id).spawn().unwrap();
    // Other sessions (the hook runs) also upload to this backend: count only this file.
    let name = w
        .transcript(id)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let reached = |n: u64| {
        stats
            .arrivals
            .lock()
            .unwrap()
            .iter()
            .any(|(f, last, _)| *f == name && *last >= n)
    };
    assert!(
        await_cond(Duration::from_secs(120), || reached(lines)),
        "no catch-up"
    );
    std::thread::sleep(Duration::from_secs(1));
    let appends: usize = std::env::var("CONFAB_BENCH_APPENDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let sample: Vec<String> = String::from_utf8(corpus_lines())
        .unwrap()
        .lines()
        .filter(|l| l.len() < 4096)
        .take(appends)
        .map(str::to_string)
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let requests0 = stats.requests.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(w.transcript(id))
        .unwrap();
    let mut written = Vec::new();
    for i in 0..appends {
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..=2000)));
        f.write_all(format!("{}\n", sample[i % sample.len()]).as_bytes())
            .unwrap();
        lines += 1;
        written.push((lines, Instant::now()));
    }
    assert!(
        await_cond(Duration::from_secs(60), || reached(lines)),
        "appended lines never arrived"
    );
    let elapsed = start.elapsed();
    let requests = stats.requests.load(Ordering::Relaxed) - requests0;
    let arrivals = stats.arrivals.lock().unwrap().clone();
    let mut lat: Vec<Duration> = written
        .iter()
        .map(|&(n, at)| {
            let got = arrivals
                .iter()
                .filter(|(f, last, _)| *f == name && *last >= n)
                .map(|(_, _, t)| *t)
                .min()
                .expect("line arrived");
            got.saturating_duration_since(at)
        })
        .collect();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "append latency over {appends} appends (30 s interval, file watcher): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        ms(quantile(&mut lat, 0.5)),
        ms(quantile(&mut lat, 0.99)),
        ms(quantile(&mut lat, 1.0))
    );
    println!(
        "  {requests} requests in {:.1} s = {:.2}/s (backend per-user limit: burst 2000, then 2.78/s); {appends} appends coalesced into {requests} requests",
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64()
    );
    sigterm(child.id());
    let _ = child.wait();
}

fn startup(w: &World) {
    let sock_path = w.tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut times = Vec::new();
    for i in 0..20 {
        let id = format!("startup-{i:02}");
        build_transcript(&w.transcript(&id), 1);
        let mut c = w.command(&id);
        c.env("NOTIFY_SOCKET", &sock_path);
        let t0 = Instant::now();
        let mut child = c.spawn().unwrap();
        let mut buf = [0u8; 4096];
        let ready = loop {
            let n = sock.recv(&mut buf).expect("a notification within 5 s");
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                break t0.elapsed();
            }
        };
        times.push(ready);
        sigterm(child.id());
        let _ = child.wait();
        // Drain what the stopping daemon sent.
        sock.set_nonblocking(true).unwrap();
        while sock.recv(&mut buf).is_ok() {}
        sock.set_nonblocking(false).unwrap();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "start-up to READY=1 over {} starts: min {:.1} ms, median {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        times.len(),
        ms(quantile(&mut times, 0.0)),
        ms(quantile(&mut times, 0.5)),
        ms(quantile(&mut times, 0.95)),
        ms(quantile(&mut times, 1.0))
    );
}

fn hook(w: &World) {
    let has_hook = std::process::Command::new(BIN)
        .args(["hook", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_hook {
        println!("hook session-start: not measured (this build has no `hook` subcommand)");
        return;
    }
    let mut times = Vec::new();
    for i in 0..20 {
        let id = format!("7f1c2d3e-0000-4000-8000-{i:012}");
        build_transcript(&w.transcript(&id), 1);
        let input = json!({
            "session_id": id, "transcript_path": w.transcript(&id),
            "cwd": w.tmp.path(), "hook_event_name": "SessionStart", "source": "startup"
        });
        let mut c = std::process::Command::new(BIN);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &w.home)
            .env("CONFAB_CONFIG_PATH", &w.config)
            .env("CONFAB_CLAUDE_DIR", &w.claude)
            .env("CONFAB_SERVICE_MANAGER", "none")
            .args(["hook", "session-start"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let t0 = Instant::now();
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.to_string().as_bytes())
            .unwrap();
        let _ = child.wait();
        times.push(t0.elapsed());
        // Stop the daemon the hook started (its pid is in the state file).
        // The hook writes pid 0; the daemon then records its own: wait for that one.
        let state = w.home.join(format!(".confab/sync/{id}.json"));
        let pid = || {
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(&state).unwrap_or_default())
                .ok()
                .and_then(|v| v["pid"].as_u64())
                .filter(|&p| p > 0)
        };
        await_cond(Duration::from_secs(2), || pid().is_some());
        if let Some(p) = pid() {
            sigterm(p as u32);
            await_cond(Duration::from_secs(5), || !state.exists());
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "hook session-start over {} runs: median {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        times.len(),
        ms(quantile(&mut times, 0.5)),
        ms(quantile(&mut times, 0.95)),
        ms(quantile(&mut times, 1.0))
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("latency: bench");
        return;
    }
    let s = server();
    let w = World::new();
    w.write_config(json!({"backend_url": s.url, "api_key": "bench-key"}));
    startup(&w);
    hook(&w);
    append_latency(&w, &s.stats);
}
