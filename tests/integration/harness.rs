//! Fixture builders for the integration tests: a temporary HOME with a transcript, config files
//! pointing at the fake backend, an in-process daemon (library entry point) and the real binary.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use confab_sync::config::Tuning;
use confab_sync::daemon::{Daemon, Exit, RunOptions, StopHandle};
use confab_sync::engine::ReadCounters;
use confab_sync::paths::Paths;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_confab-sync");
pub const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus");
pub const SESSION: &str = "test-session-0001";
pub const TRANSCRIPT_NAME: &str = "transcript.jsonl";

/// One test's world: HOME, the Claude dir (`CONFAB_CLAUDE_DIR`), the transcript and config.
pub struct Env {
    pub tmp: TempDir,
    pub home: PathBuf,
    pub claude: PathBuf,
    pub transcript: PathBuf,
    pub config_json: PathBuf,
    pub id: String,
}

impl Env {
    /// No config.json: the daemon uses the local archive under HOME.
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let claude = tmp.path().join("claude");
        let sessions = claude.join("sessions");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&sessions).unwrap();
        Env {
            transcript: sessions.join(TRANSCRIPT_NAME),
            config_json: tmp.path().join("config.json"),
            tmp,
            home,
            claude,
            id: SESSION.to_string(),
        }
    }

    /// config.json pointing at `url` with the fake's key.
    pub fn with_backend(url: &str) -> Env {
        let env = Env::new();
        env.write_config(url, crate::support::fake::API_KEY);
        env
    }

    pub fn write_config(&self, url: &str, key: &str) {
        let body = serde_json::json!({"backend_url": url, "api_key": key});
        write_atomic(&self.config_json, body.to_string().as_bytes());
    }

    pub fn write_config_json(&self, v: serde_json::Value) {
        write_atomic(&self.config_json, v.to_string().as_bytes());
    }

    pub fn paths(&self) -> Paths {
        let home = self.home.clone();
        let cfg = self.config_json.clone();
        let claude = self.claude.clone();
        Paths::from_lookup(move |k| match k {
            "HOME" => Some(home.clone()),
            "CONFAB_CONFIG_PATH" => Some(cfg.clone()),
            "CONFAB_CLAUDE_DIR" => Some(claude.clone()),
            _ => None,
        })
    }

    /// Fast, exact timers for tests: 50 ms interval, no jitter.
    pub fn tuning(&self) -> Tuning {
        Tuning {
            interval: Duration::from_millis(50),
            jitter: Duration::ZERO,
            parent_check: Duration::from_millis(200),
            transcript_poll: Duration::from_millis(50),
            transcript_wait: Duration::from_secs(10),
            shutdown_budget: Duration::from_secs(10),
            ..Tuning::default()
        }
    }

    pub fn subagents(&self) -> PathBuf {
        self.transcript.with_extension("").join("subagents")
    }

    pub fn agent_path(&self, id: &str) -> PathBuf {
        self.subagents().join(format!("agent-{id}.jsonl"))
    }

    pub fn write_transcript(&self, lines: &[String]) {
        write_lines(&self.transcript, lines);
    }

    pub fn append(&self, bytes: &str) {
        append(&self.transcript, bytes);
    }

    pub fn write_agent(&self, id: &str, lines: &[String]) {
        std::fs::create_dir_all(self.subagents()).unwrap();
        write_lines(&self.agent_path(id), lines);
    }

    pub fn state_path(&self) -> PathBuf {
        self.home
            .join(".confab/sync")
            .join(format!("{}.json", self.id))
    }

    pub fn inbox_path(&self) -> PathBuf {
        self.home
            .join(".confab/sync")
            .join(format!("{}.inbox.jsonl", self.id))
    }

    pub fn state(&self) -> Option<serde_json::Value> {
        std::fs::read(self.state_path())
            .ok()
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    pub fn archive_dir(&self) -> PathBuf {
        self.home
            .join(".local/share/confab-sync/archive")
            .join(&self.id)
    }

    pub fn options(&self) -> RunOptions {
        RunOptions {
            session_id: self.id.clone(),
            transcript: Some(self.transcript.clone()),
            cwd: Some(self.tmp.path().display().to_string()),
            ..RunOptions::default()
        }
    }

    /// Starts the library daemon in a task.
    pub fn start(&self) -> Running {
        self.start_with(self.options(), self.tuning())
    }

    pub fn start_with(&self, opts: RunOptions, tuning: Tuning) -> Running {
        init_logs();
        let daemon = Daemon::new(opts, self.paths(), tuning);
        let stop = daemon.stop_handle();
        let counters = daemon.read_counters();
        let task = tokio::spawn(daemon.run(std::future::pending()));
        Running {
            stop,
            counters,
            task,
        }
    }

    /// The real binary with this env (no service manager, the test's timers).
    pub fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("CONFAB_CONFIG_PATH", &self.config_json)
            .env("CONFAB_CLAUDE_DIR", &self.claude)
            .env("CONFAB_SERVICE_MANAGER", "none")
            .env("CONFAB_SYNC_INTERVAL_MS", "50")
            .env("CONFAB_SYNC_JITTER_MS", "0")
            .stdin(Stdio::null());
        c
    }

    pub fn run_args(&self) -> Vec<String> {
        vec![
            "run".into(),
            format!("--session-id={}", self.id),
            format!("--transcript={}", self.transcript.display()),
        ]
    }

    /// Spawns `confab-sync run` with captured stderr.
    pub fn spawn(&self, extra: &[&str]) -> Child {
        self.command()
            .args(self.run_args())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs `confab-sync run --once` to the end, whatever its exit.
    pub fn run_once_output(&self) -> Output {
        self.command()
            .args(self.run_args())
            .arg("--once")
            .output()
            .unwrap()
    }

    /// Runs `confab-sync run --once` to the end and asserts it succeeded (stderr in the message).
    pub fn run_once(&self) -> Output {
        let out = self.run_once_output();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Queues a SessionEnd hook (reason `exit`) in the inbox, as the hook command does.
    pub fn queue_session_end(&self) {
        let hook = serde_json::json!({"session_id": self.id, "transcript_path": self.transcript, "cwd": "/w",
            "permission_mode": "default", "hook_event_name": "SessionEnd", "reason": "exit"});
        append(
            &self.inbox_path(),
            &format!(
                "{}\n",
                serde_json::json!({"type":"session_end","timestamp":"2026-03-28T09:08:15Z","hook_input":hook})
            ),
        );
    }

    /// Writes `~/.config/confab-sync/config.toml`.
    pub fn write_tuning_toml(&self, body: &str) {
        let p = self.home.join(".config/confab-sync/config.toml");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
}

pub struct Running {
    pub stop: StopHandle,
    pub counters: Arc<ReadCounters>,
    pub task: tokio::task::JoinHandle<Exit>,
}

impl Running {
    /// Stops and waits (at most `within`), returning the exit.
    pub async fn stop_within(self, within: Duration) -> Exit {
        self.stop.stop();
        tokio::time::timeout(within, self.task)
            .await
            .expect("daemon stops in time")
            .expect("daemon task")
    }
}

pub fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub fn write_lines(path: &Path, lines: &[String]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut s = String::new();
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

pub fn append(path: &Path, bytes: &str) {
    append_bytes(path, bytes.as_bytes());
}

/// A small realistic transcript line.
pub fn line(i: usize) -> String {
    format!(
        r#"{{"type":"assistant","uuid":"u-{i}","sessionId":"{SESSION}","message":{{"role":"assistant","content":[{{"type":"text","text":"line {i} \"quoted\" é"}}]}}}}"#
    )
}

pub fn lines(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(line).collect()
}

/// A user line referencing an agent.
pub fn agent_ref(id: &str) -> String {
    format!(
        r#"{{"type":"user","message":{{"role":"user","content":"x"}},"toolUseResult":{{"agentId":"{id}"}}}}"#
    )
}

/// The complete lines of a file as the backend should hold them (CRLF → LF).
pub fn complete_lines(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    String::from_utf8_lossy(&bytes[..end])
        .split_terminator('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect()
}

pub fn corpus(rel: &str) -> PathBuf {
    Path::new(CORPUS).join(rel)
}

/// Awaits `cond` (polling every 10 ms) for at most `timeout`.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits the child's exit (polling every 10 ms); kills it and panics after `within`.
pub async fn wait_child(child: &mut Child, within: Duration) -> ExitStatus {
    let end = tokio::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if tokio::time::Instant::now() >= end {
            let _ = child.kill();
            panic!("process did not exit within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Daemon logs go to the test's captured output (shown only when a test fails).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("TEST_LOG").unwrap_or_else(|_| "confab_sync=debug".into()),
        ))
        .with_test_writer()
        .try_init();
}

/// A fake backend and an env pointing at it, with an `n`-line transcript.
pub async fn setup(n: usize) -> (crate::support::fake::Fake, Env) {
    let fake = crate::support::fake::Fake::start().await;
    let env = Env::with_backend(&fake.url());
    env.write_transcript(&lines(0..n));
    (fake, env)
}

/// True once the daemon finished a cycle (it stamps `last_loop_at` in its state).
pub fn cycle_ended(env: &Env) -> bool {
    env.state()
        .is_some_and(|s| s["confab_sync"]["last_loop_at"].is_string())
}

/// Counts the cycles a daemon ends from the moment it is created, by the new `last_loop_at`
/// stamps in the state file at `state` (each cycle writes one, synchronously, as it ends). The
/// first cycle counted may have started before; from the second on, each ran entirely after.
pub struct CycleWatch {
    state: PathBuf,
    last: Option<String>,
    ended: usize,
}

impl CycleWatch {
    pub fn new(state: &Path) -> CycleWatch {
        CycleWatch {
            last: last_loop_at(state),
            state: state.to_path_buf(),
            ended: 0,
        }
    }

    /// Cycles seen ending so far (a lower bound: two cycles between polls count as one).
    pub fn ended(&mut self) -> usize {
        let now = last_loop_at(&self.state);
        if now.is_some() && now != self.last {
            self.ended += 1;
            self.last = now;
        }
        self.ended
    }
}

fn last_loop_at(state: &Path) -> Option<String> {
    let bytes = std::fs::read(state).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["confab_sync"]["last_loop_at"]
        .as_str()
        .map(str::to_string)
}

/// Awaits `n` more cycles of the daemon writing `state` (see [`CycleWatch`]), for at most `within`.
/// The window that lets a negative assertion ("nothing was sent") mean "in `n` cycles".
pub async fn cycles_pass(state: &Path, n: usize, within: Duration) -> bool {
    let mut watch = CycleWatch::new(state);
    eventually(within, || watch.ended() >= n).await
}

// ---------------------------------------------------------------------------------------------
// Helpers for the chaos and fault tests (appended).

/// Appends raw bytes (possibly a partial line or invalid UTF-8).
pub fn append_bytes(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

/// The source's complete lines, CRLF turned into LF, as the archive must hold them.
pub fn expected_archive_bytes(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for l in complete_lines(path) {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    out
}

/// The non-empty lines of a corpus file, for writers that replay real transcripts.
pub fn corpus_lines(rel: &str) -> Vec<String> {
    std::fs::read_to_string(corpus(rel))
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A spawned binary that is SIGKILLed and reaped if the test panics before it ends.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.0.as_ref().expect("child").id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(self.pid(), sig);
    }

    /// Waits (bounded, polling) for the exit; panics after `within`, killing the child.
    pub async fn wait(&mut self, within: Duration) -> ExitStatus {
        let status = wait_child(self.0.as_mut().expect("child"), within).await;
        self.0 = None;
        status
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
