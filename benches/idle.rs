//! Idle cost of caught-up daemons (`cargo bench --bench idle`; see BENCHMARKS.md):
//! - one daemon after a small and after a large catch-up: RSS, PSS and anonymous memory
//!   (`/proc/<pid>/smaps_rollup`), threads;
//! - one idle cycle: CPU per cycle with a 100 ms interval (scheduler time of every thread), and
//!   the system calls of one cycle (`strace -f`, when installed);
//! - 50 idle sessions at the default 30 s interval: total PSS and CPU share of one core.
//!
//! The backend runs in this process (it answers the right positions, so a caught-up daemon sends
//! nothing).

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::process::Child;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const SESSIONS: usize = 50;

/// Starts a daemon on a transcript of `bytes` and waits until the backend holds all `lines`.
fn caught_up(w: &World, s: &Server, id: &str, env: &[(&str, &str)]) -> Child {
    let before = s.stats.lines.load(Ordering::Relaxed);
    let lines = std::fs::read(w.transcript(id))
        .unwrap()
        .iter()
        .filter(|&&b| b == b'\n')
        .count() as u64;
    let mut c = w.command(id);
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c.spawn().unwrap();
    assert!(
        await_cond(Duration::from_secs(300), || s
            .stats
            .lines
            .load(Ordering::Relaxed)
            >= before + lines),
        "daemon {id} did not catch up"
    );
    child
}

fn stop(mut child: Child) {
    sigterm(child.id());
    let _ = child.wait();
}

fn memory_line(pid: u32) -> String {
    format!(
        "RSS {:.2} MiB (anon {:.2}, file {:.2}), PSS {:.2} MiB, threads {}",
        mib(proc_kib(pid, "status", "VmRSS:")),
        mib(proc_kib(pid, "status", "RssAnon:")),
        mib(proc_kib(pid, "status", "RssFile:")),
        mib(proc_kib(pid, "smaps_rollup", "Pss:")),
        threads_of(pid)
    )
}

fn one_daemon(w: &World, s: &Server, id: &str, bytes: u64) {
    build_transcript(&w.transcript(id), bytes);
    let child = caught_up(w, s, id, &[]);
    std::thread::sleep(Duration::from_secs(3));
    let mb = std::fs::metadata(w.transcript(id)).unwrap().len() as f64 / 1e6;
    println!(
        "idle daemon after a {mb:.1} MB catch-up: {}",
        memory_line(child.id())
    );
    stop(child);
}

/// CPU per idle cycle with a 100 ms interval, and the system calls of the cycles seen by strace.
fn idle_cycle(w: &World, s: &Server) {
    let id = "idle-cycle";
    build_transcript(&w.transcript(id), 1);
    let child = caught_up(
        w,
        s,
        id,
        &[
            ("CONFAB_SYNC_INTERVAL_MS", "100"),
            ("CONFAB_SYNC_JITTER_MS", "0"),
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    let pid = child.id();
    let requests0 = s.stats.requests.load(Ordering::Relaxed);
    let cpu0 = cpu_of(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let cpu = cpu_of(pid) - cpu0;
    let cycles = t0.elapsed().as_secs_f64() / 0.1;
    println!(
        "idle cycle (100 ms interval, {cycles:.0} cycles): {:.3} ms CPU per cycle, {} requests",
        cpu.as_secs_f64() * 1000.0 / cycles,
        s.stats.requests.load(Ordering::Relaxed) - requests0
    );
    if let Some(calls) = strace_cycles(pid, Duration::from_secs(3)) {
        println!("  system calls per idle cycle (strace -f, 3 s): {calls}");
    }
    stop(child);
}

/// `name×count` per cycle, cycles counted by the state file's rename at each cycle end.
fn strace_cycles(pid: u32, d: Duration) -> Option<String> {
    let out = std::env::temp_dir().join(format!("confab-idle-strace-{pid}"));
    let mut st = std::process::Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&out)
        .args(["-p", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(d);
    // SAFETY: signalling our own child (strace detaches on SIGINT).
    unsafe { libc::kill(st.id() as i32, libc::SIGINT) };
    let _ = st.wait();
    let text = std::fs::read_to_string(&out).ok()?;
    let _ = std::fs::remove_file(&out);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for line in text.lines() {
        let call = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.split('(').next())
            .unwrap_or("");
        if !call.is_empty() && !call.starts_with('<') && !call.starts_with('+') {
            *counts.entry(call.to_string()).or_default() += 1;
        }
    }
    // Every cycle ends by persisting the state (sync-engine §1.6e): one rename per cycle.
    let opens = counts.get("rename").copied().unwrap_or(0).max(1);
    let mut v: Vec<String> = counts
        .iter()
        .map(|(k, n)| format!("{k}×{:.1}", *n as f64 / opens as f64))
        .collect();
    v.sort();
    Some(format!("{opens} cycles: {}", v.join(" ")))
}

fn many_sessions(w: &World, s: &Server) {
    let template = w.tmp.path().join("template.jsonl");
    build_transcript(&template, 1);
    let before = s.stats.lines.load(Ordering::Relaxed);
    let mut children = Vec::new();
    for i in 0..SESSIONS {
        let id = format!("idle-many-{i:02}");
        std::fs::hard_link(&template, w.transcript(&id)).unwrap();
        let mut c = w.command(&id);
        children.push(c.spawn().unwrap());
    }
    let lines = corpus_lines().iter().filter(|&&b| b == b'\n').count() as u64;
    assert!(
        await_cond(Duration::from_secs(300), || s
            .stats
            .lines
            .load(Ordering::Relaxed)
            >= before + lines * SESSIONS as u64),
        "not every session caught up"
    );
    std::thread::sleep(Duration::from_secs(5));
    let pss: u64 = children
        .iter()
        .map(|c| proc_kib(c.id(), "smaps_rollup", "Pss:"))
        .sum();
    let rss: u64 = children
        .iter()
        .map(|c| proc_kib(c.id(), "status", "VmRSS:"))
        .sum();
    let requests0 = s.stats.requests.load(Ordering::Relaxed);
    let cpu0: Duration = children.iter().map(|c| cpu_of(c.id())).sum();
    let window = Duration::from_secs(
        std::env::var("CONFAB_BENCH_IDLE_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(65),
    );
    let t0 = Instant::now();
    std::thread::sleep(window);
    let cpu: Duration = children.iter().map(|c| cpu_of(c.id())).sum::<Duration>() - cpu0;
    let share = cpu.as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
    println!(
        "{SESSIONS} idle sessions (30 s interval): PSS {:.1} MiB total ({:.2} MiB each), RSS {:.1} MiB total; CPU {:.3} % of one core over {:.0} s; {} requests",
        mib(pss),
        mib(pss) / SESSIONS as f64,
        mib(rss),
        share,
        t0.elapsed().as_secs_f64(),
        s.stats.requests.load(Ordering::Relaxed) - requests0
    );
    for c in children {
        stop(c);
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("idle: bench");
        return;
    }
    let s = server();
    let w = World::new();
    w.write_config(json!({"backend_url": s.url, "api_key": "bench-key"}));
    one_daemon(&w, &s, "idle-small", 1);
    let big: u64 = std::env::var("CONFAB_BENCH_IDLE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    one_daemon(&w, &s, "idle-big", big * 1_000_000);
    idle_cycle(&w, &s);
    many_sessions(&w, &s);
}
