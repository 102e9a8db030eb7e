//! The session engine: the sink session (lazy init, refresh, auth drop, sink switching), the set of
//! tracked files (transcript, then agents in name order, discovered level by level), one sync cycle
//! over them, summary linking and the session_end event (sync-engine §1.6, §2, §3, §6, §13).
//!
//! Invariants:
//! - no chunk is sent before an init succeeded; every recovery goes through init (protocol.md §5);
//! - the sink is called by one task, one request at a time (H10);
//! - checkpoints from disk are trusted only when init returns the same session id from the same
//!   sink (sync-engine §8); the sink's positions always win;
//! - files are visited in a deterministic order: transcript first, then agents by name (H14).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::archive::ArchiveSink;
use crate::backend::HttpSink;
use crate::checkpoint::Checkpointer;
use crate::config::{self, SinkChoice, Tuning};
use crate::discovery;
use crate::filesync::{self, FileCounters, Outcome, Status, SyncCtx, Tracked};
use crate::inbox::InboxEvent;
use crate::metadata::{self, RepoUrlCache};
use crate::paths::Paths;
use crate::redact::Redactor;
use crate::sink::{EventRequest, FileType, InitMetadata, InitRequest, Sink, SinkError, PROVIDER};
use crate::state::{FileEntry, State};
use crate::summary_link;

/// Payloads over this are cut to the six hook keys (protocol.md §3.3).
const EVENT_BODY_LIMIT: usize = 120 * 1024;
/// Refreshes one file may trigger within one cycle before it is left for the next.
const MAX_REFRESHES_PER_FILE: usize = 4;
const DISCOVERY_LEVELS: usize = 10;

/// The session being synced.
#[derive(Clone, Debug)]
pub struct Session {
    pub external_id: String,
    pub transcript: PathBuf,
    pub cwd: String,
}

/// Bytes read per file name, for tests and benchmarks (E5, E6, X3).
#[derive(Default, Debug)]
pub struct ReadCounters(Mutex<BTreeMap<String, Arc<FileCounters>>>);

impl ReadCounters {
    pub fn counter(&self, name: &str) -> Arc<FileCounters> {
        self.0
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .clone()
    }
    /// Bytes read from `name` so far.
    pub fn get(&self, name: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.bytes_read.load(Ordering::Relaxed))
    }
    pub fn total(&self) -> u64 {
        self.0
            .lock()
            .unwrap()
            .values()
            .map(|c| c.bytes_read.load(Ordering::Relaxed))
            .sum()
    }
    /// `(file name, counters)` of every file seen, in name order.
    pub fn snapshot(&self) -> Vec<(String, Arc<FileCounters>)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// What one cycle did.
#[derive(Debug, Default, Clone)]
pub struct CycleReport {
    pub acked_chunks: usize,
    pub failed: bool,
    pub auth_failed: bool,
    pub session_gone: bool,
    pub error: Option<String>,
}

impl CycleReport {
    fn fail(&mut self, e: &SinkError) {
        self.failed = true;
        self.auth_failed |= e.is_auth();
        self.session_gone |= *e == SinkError::SessionGone;
        self.error = Some(e.to_string());
    }
}

type ConfigStamp = Option<(u64, u64, u64, i64)>;

pub struct Engine {
    pub session: Session,
    paths: Paths,
    tuning: Tuning,
    cancel: CancellationToken,
    checkpoints: Checkpointer,
    pub state: State,
    persist: bool,
    sink: Option<Box<dyn Sink>>,
    config_stamp: Option<ConfigStamp>,
    session_id: Option<String>,
    init_meta: Option<InitMetadata>,
    redactor: Option<Redactor>,
    files: BTreeMap<String, Tracked>,
    transcript_name: String,
    /// Checkpoints read from disk, waiting for the first init to confirm them.
    disk_entries: Option<BTreeMap<String, FileEntry>>,
    known_ids: BTreeSet<String>,
    summaries_sent: HashSet<(String, String)>,
    repos: RepoUrlCache,
    counters: Arc<ReadCounters>,
    pub init_succeeded: bool,
    last_config_error: Option<String>,
    /// An init or sent chunks left freed buffers and touched code: give them back at cycle end
    /// (a cycle ends when nothing is left to send). Idle cycles skip it.
    release_pending: bool,
}

impl Engine {
    /// `persist`: whether checkpoints are written to `state` on disk.
    pub fn new(
        session: Session,
        paths: Paths,
        tuning: Tuning,
        state: State,
        persist: bool,
        cancel: CancellationToken,
        counters: Arc<ReadCounters>,
    ) -> Engine {
        let transcript_name = session
            .transcript
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut files = BTreeMap::new();
        files.insert(
            transcript_name.clone(),
            Tracked::new(
                transcript_name.clone(),
                FileType::Transcript,
                session.transcript.clone(),
                counters.counter(&transcript_name),
            ),
        );
        Engine {
            checkpoints: Checkpointer::new(paths.state_file(&session.external_id)),
            disk_entries: Some(state.confab_sync.files.clone()),
            session,
            paths,
            tuning,
            cancel,
            state,
            persist,
            sink: None,
            config_stamp: None,
            session_id: None,
            init_meta: None,
            redactor: None,
            files,
            transcript_name,
            known_ids: BTreeSet::new(),
            summaries_sent: HashSet::new(),
            repos: RepoUrlCache::default(),
            counters,
            init_succeeded: false,
            last_config_error: None,
            release_pending: false,
        }
    }

    pub fn has_session(&self) -> bool {
        self.session_id.is_some()
    }

    pub fn files(&self) -> impl Iterator<Item = &Tracked> {
        self.files.values()
    }

    pub fn counters(&self) -> Arc<ReadCounters> {
        self.counters.clone()
    }

    /// Forgets the sink session (auth failure, sink switch): the next cycle re-reads the config
    /// and sends a full init. Cursors are kept; that init revalidates them.
    pub fn drop_session(&mut self) {
        self.session_id = None;
        self.sink = None;
    }

    fn config_stamp(&self) -> ConfigStamp {
        std::fs::metadata(&self.paths.config_json).ok().map(|m| {
            (
                m.dev(),
                m.ino(),
                m.len(),
                m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            )
        })
    }

    /// Re-reads config.json when it changed; a change of sink drops the session (sync-engine §13).
    fn check_config(&mut self) {
        let stamp = self.config_stamp();
        if self.config_stamp == Some(stamp) {
            return;
        }
        self.config_stamp = Some(stamp);
        if self.sink.is_none() {
            return;
        }
        let current = self.sink.as_ref().map(|s| s.identity());
        match self.build_sink() {
            Ok((sink, redactor)) => {
                if Some(sink.identity()) != current {
                    tracing::info!(
                        "config.json now selects {}; re-initialising",
                        sink.identity()
                    );
                    self.drop_session();
                } else {
                    self.redactor = redactor;
                }
            }
            Err(e) => {
                tracing::warn!("config.json changed and is invalid: {e}; re-initialising");
                self.drop_session();
            }
        }
    }

    fn build_sink(&self) -> Result<(Box<dyn Sink>, Option<Redactor>), SinkError> {
        let creds = config::read_credentials(&self.paths.config_json)
            .map_err(|e| SinkError::Config(e.0))?;
        let choice =
            config::choose_sink(creds.as_ref(), &self.paths).map_err(|e| SinkError::Config(e.0))?;
        let redactor = match &creds {
            Some(c) => Redactor::from_config(&c.redaction).map_err(|e| SinkError::Config(e.0))?,
            None => None,
        };
        let sink: Box<dyn Sink> = match choice {
            SinkChoice::Http { base_url, api_key } => Box::new(
                HttpSink::new(
                    &base_url,
                    &api_key,
                    self.tuning.http_timeout,
                    self.cancel.clone(),
                )
                .map_err(|e| SinkError::Config(e.0))?,
            ),
            SinkChoice::Archive { root } => Box::new(ArchiveSink::new(root)),
        };
        Ok((sink, redactor))
    }

    /// Full init when there is no session (re-reading the config), else a refresh with the cached
    /// metadata (H20). Adopts the sink's positions for every file.
    async fn init(&mut self) -> Result<(), SinkError> {
        let full = self.session_id.is_none();
        if full {
            let (sink, redactor) = match self.build_sink() {
                Ok(x) => x,
                Err(e) => {
                    if self.last_config_error.as_deref() != Some(&e.to_string()) {
                        tracing::error!("{e}");
                        self.last_config_error = Some(e.to_string());
                    }
                    return Err(e);
                }
            };
            self.last_config_error = None;
            self.sink = Some(sink);
            self.redactor = redactor;
            let (cwd, transcript) = (self.session.cwd.clone(), self.session.transcript.clone());
            let meta =
                tokio::task::spawn_blocking(move || metadata::init_metadata(&cwd, &transcript))
                    .await
                    .unwrap_or_default();
            self.init_meta = Some(meta);
        }
        let sink = self
            .sink
            .as_ref()
            .expect("sink built above or kept from the session");
        let req = InitRequest {
            external_id: self.session.external_id.clone(),
            transcript_path: self.session.transcript.display().to_string(),
            provider: PROVIDER,
            metadata: self.init_meta.clone().unwrap_or_default(),
        };
        let resp = crate::sdnotify::keepalive(sink.init(&req)).await?;
        let identity = sink.identity();
        if full {
            let same = self.state.confab_session_id.as_deref() == Some(resp.session_id.as_str())
                && self.state.confab_sync.backend_url.as_deref() == Some(identity.as_str());
            if let Some(entries) = self.disk_entries.take() {
                if same {
                    for (name, e) in &entries {
                        // The state file is input too: only names that pass the init-key rule.
                        if *name == self.transcript_name
                            || discovery::agent_id_from_file_name(name).is_some()
                        {
                            self.track_named(name, e.file_type.as_str()).restore(e);
                        }
                    }
                }
            }
            tracing::info!(backend_session = %resp.session_id, sink = %identity, "session initialised");
        }
        tracing::Span::current().record("backend_session", resp.session_id.as_str());
        self.session_id = Some(resp.session_id.clone());
        self.init_succeeded = true;
        self.release_pending = true;
        self.state.confab_session_id = Some(resp.session_id);
        self.state.confab_sync.backend_url = Some(identity);
        let mut named = BTreeSet::new();
        for (key, &pos) in &resp.files {
            if *key == self.transcript_name || discovery::agent_id_from_file_name(key).is_some() {
                named.insert(key.clone());
                let kind = if *key == self.transcript_name {
                    "transcript"
                } else {
                    "agent"
                };
                self.track_named(key, kind).adopt(pos);
            } else {
                tracing::debug!(key = %key, "ignoring a file name from init that is not ours");
            }
        }
        for t in self.files.values_mut().filter(|t| !named.contains(&t.name)) {
            t.adopt(0);
        }
        self.save_state();
        Ok(())
    }

    /// The tracked file for a valid name, created if needed.
    fn track_named(&mut self, name: &str, kind: &str) -> &mut Tracked {
        if !self.files.contains_key(name) {
            let file_type = if name == self.transcript_name || kind == "transcript" {
                FileType::Transcript
            } else {
                FileType::Agent
            };
            let path = if file_type == FileType::Transcript {
                self.session.transcript.clone()
            } else {
                discovery::subagents_dir(&self.session.transcript).join(name)
            };
            let t = Tracked::new(
                name.to_string(),
                file_type,
                path,
                self.counters.counter(name),
            );
            self.files.insert(name.to_string(), t);
        }
        self.files.get_mut(name).expect("inserted above")
    }

    fn save_state(&mut self) {
        if !self.persist {
            return;
        }
        self.state.confab_sync.files = self
            .files
            .values()
            .map(|t| (t.name.clone(), t.entry()))
            .collect();
        self.checkpoints.write_now(self.state.clone());
    }

    /// One sync cycle: lazy init, then every file until nothing is left to send.
    pub async fn cycle(&mut self) -> CycleReport {
        let mut report = CycleReport::default();
        self.check_config();
        if self.session_id.is_none() {
            if let Err(e) = self.init().await {
                report.fail(&e);
                if e.is_auth() {
                    self.drop_session();
                }
                return report;
            }
        }
        let mut done = BTreeSet::new();
        for _ in 0..DISCOVERY_LEVELS {
            let level: Vec<String> = self
                .ordered_names()
                .into_iter()
                .filter(|n| !done.contains(n))
                .collect();
            if level.is_empty() {
                break;
            }
            for name in level {
                done.insert(name.clone());
                if let Err(e) = self.sync_one(&name, &mut report).await {
                    report.fail(&e);
                    if e.is_auth() {
                        tracing::warn!("{e}; will re-read config.json and re-initialise");
                        self.drop_session();
                        return report;
                    }
                    if e == SinkError::SessionGone {
                        return report;
                    }
                }
            }
            self.discover();
        }
        report
    }

    /// Transcript first, then agents by name (H14).
    fn ordered_names(&self) -> Vec<String> {
        let mut names = vec![self.transcript_name.clone()];
        names.extend(
            self.files
                .keys()
                .filter(|n| **n != self.transcript_name)
                .cloned(),
        );
        names
    }

    /// Tracks agents referenced in content whose file now exists, and every directory-scan hit.
    fn discover(&mut self) {
        let dir = discovery::subagents_dir(&self.session.transcript);
        let mut ids = discovery::scan_dir(&dir);
        for id in &self.known_ids {
            if !ids.contains(id) && dir.join(discovery::agent_file_name(id)).is_file() {
                ids.insert(id.clone());
            }
        }
        for id in ids {
            let name = discovery::agent_file_name(&id);
            if !self.files.contains_key(&name) {
                self.track_named(&name, "agent");
            }
        }
    }

    /// Syncs one file, refreshing positions as often as it needs (bounded).
    async fn sync_one(&mut self, name: &str, report: &mut CycleReport) -> Result<(), SinkError> {
        let now = std::time::Instant::now();
        if !self.files.get(name).is_some_and(|t| t.due(now)) {
            return Ok(());
        }
        for _ in 0..MAX_REFRESHES_PER_FILE {
            let mut summaries = Vec::new();
            let outcome = {
                let Engine {
                    sink,
                    files,
                    redactor,
                    repos,
                    known_ids,
                    state,
                    checkpoints,
                    persist,
                    tuning,
                    session_id,
                    ..
                } = self;
                let (Some(sink), Some(session_id)) = (sink.as_deref(), session_id.as_deref())
                else {
                    return Err(SinkError::Config("no session".into()));
                };
                let t = files.get_mut(name).expect("name comes from files");
                let acked = &mut report.acked_chunks;
                let mut on_ack = |t: &Tracked| {
                    *acked += 1;
                    if *persist {
                        state.confab_sync.files.insert(t.name.clone(), t.entry());
                        checkpoints.submit(state.clone());
                    }
                    fault_after_ack(checkpoints);
                };
                let mut ctx = SyncCtx {
                    sink,
                    session_id,
                    redactor: redactor.as_ref(),
                    repos,
                    chunk_target: tuning.chunk_target_bytes,
                    hard_limit: tuning.chunk_hard_limit,
                    interval: tuning.interval,
                    http_timeout: tuning.http_timeout,
                    agent_ids: known_ids,
                    summaries: &mut summaries,
                    on_ack: &mut on_ack,
                };
                filesync::sync_file(t, &mut ctx).await
            };
            self.link_summaries(summaries).await;
            match outcome {
                Outcome::Done => return Ok(()),
                Outcome::Refresh => self.init().await?,
                Outcome::Failed(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Summary linking for acknowledged summary lines, once per `(leafUuid, summary)` (§6).
    async fn link_summaries(&mut self, pairs: Vec<(String, String)>) {
        for (leaf, summary) in pairs {
            if !self.summaries_sent.insert((leaf.clone(), summary.clone())) {
                continue;
            }
            let transcript = self.session.transcript.clone();
            let leaf2 = leaf.clone();
            let Ok(Some(stem)) = tokio::task::spawn_blocking(move || {
                summary_link::find_linked_session(&transcript, &leaf2)
            })
            .await
            else {
                continue;
            };
            let text = metadata::process_text(&summary, self.redactor.as_ref(), 2048);
            if text.is_empty() {
                continue;
            }
            if let Some(sink) = &self.sink {
                match sink.patch_summary(&stem, &text).await {
                    Ok(()) => tracing::debug!(session = %stem, "linked summary sent"),
                    Err(e) => tracing::debug!(session = %stem, "summary link failed: {e}"),
                }
            }
        }
    }

    /// Sends the session_end event once (never retried: events are not idempotent).
    pub async fn send_session_end(&mut self, ev: &InboxEvent) -> Result<(), SinkError> {
        if self.session_id.is_none() {
            self.init().await?;
        }
        let mut input = ev.hook_input.clone().unwrap_or_default();
        input.strip_nul();
        let mut req = EventRequest {
            session_id: self.session_id.clone().unwrap_or_default(),
            event_type: "session_end",
            timestamp: ev.timestamp.clone(),
            payload: input.to_payload(),
        };
        if serde_json::to_vec(&req).map_or(0, |b| b.len()) > EVENT_BODY_LIMIT {
            req.payload = input.six_keys_only().to_payload();
        }
        let sink = self
            .sink
            .as_ref()
            .ok_or_else(|| SinkError::Config("no sink".into()))?;
        crate::sdnotify::keepalive(sink.event(&req)).await
    }

    /// Records the cycle's outcome in the state file (sync-engine §1.6e).
    pub fn finish_cycle(&mut self, report: &CycleReport) {
        let now = chrono::Local::now().to_rfc3339();
        self.state.confab_sync.last_loop_at = Some(now.clone());
        if !report.failed {
            self.state.confab_sync.last_success_at = Some(now);
        }
        self.state.confab_sync.last_error = report.error.clone();
        self.save_state();
        if std::mem::take(&mut self.release_pending) || report.acked_chunks > 0 {
            crate::memory::release_idle_memory();
        }
    }

    /// Logs the bytes left after the last complete line of each file (H2: never sent).
    pub fn log_pending(&self) {
        for t in self.files.values().filter(|t| t.pending_bytes > 0) {
            tracing::info!(file = %t.name, "{} bytes after the last complete line were not sent (unterminated line)", t.pending_bytes);
        }
    }

    /// One line for `STATUS=`.
    pub fn status_line(&self, report: Option<&CycleReport>) -> String {
        let lines: u64 = self.files.values().map(|t| t.acked).sum();
        let waiting = self
            .files
            .values()
            .filter(|t| t.status != Status::Ok)
            .count();
        let mut s = format!("{} files, {} lines synced", self.files.len(), lines);
        if waiting > 0 {
            s.push_str(&format!(", {waiting} not ok"));
        }
        if let Some(e) = report.and_then(|r| r.error.as_ref()) {
            s.push_str(&format!("; last error: {e}"));
        }
        s
    }
}

/// Test-only fault: panic right after a checkpoint, to prove the state survives a crash (H32).
fn fault_after_ack(_checkpoints: &Checkpointer) {
    #[cfg(feature = "test-faults")]
    if std::env::var("CONFAB_SYNC_FAULT").as_deref() == Ok("panic-after-ack") {
        _checkpoints.flush();
        panic!("injected fault: panic after ack");
    }
}
