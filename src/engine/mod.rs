//! The session engine: one sync cycle over a session's files, on top of the sink session and the
//! set of tracked files (sync-engine §1.6, §2, §3, §6, §13).
//!
//! Layout: this module holds the [`Engine`] and its cycle (every due file, level by level of agent
//! discovery, each until nothing is left to send or it needs a refresh); `init` builds the sink
//! and runs init and refresh, `tracked_files` keeps the set of files and finds new agents,
//! `summaries` links acknowledged summaries, `session_end` sends the session_end event, `report`
//! records what a cycle did, and `counters` counts the bytes read per file. Each submodule
//! states its own invariants.
//!
//! Invariants:
//! - no chunk is sent before an init succeeded; every recovery goes through init (protocol.md §5);
//! - the sink is called by one task, one request at a time (H10);
//! - a file gets at most `MAX_REFRESHES_PER_FILE` refreshes per cycle and discovery goes at most
//!   `DISCOVERY_LEVELS` deep, so a cycle always ends;
//! - with `persist`, the checkpoint is handed to the [`Checkpointer`] after every acknowledged
//!   chunk (H1) and written at every init and cycle end.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::checkpoint::Checkpointer;
use crate::config::Tuning;
use crate::filesync::{self, Outcome, SyncCtx, Tracked};
use crate::metadata::RepoUrlCache;
use crate::paths::Paths;
use crate::redact::Redactor;
use crate::sink::{FileType, InitMetadata, Sink, SinkError};
use crate::state::{FileEntry, State};

mod counters;
mod init;
mod report;
mod session_end;
mod summaries;
mod tracked_files;

pub use counters::ReadCounters;
pub use report::CycleReport;

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

pub struct Engine {
    pub session: Session,
    paths: Paths,
    tuning: Tuning,
    cancel: CancellationToken,
    checkpoints: Checkpointer,
    pub state: State,
    persist: bool,
    sink: Option<Box<dyn Sink>>,
    config_stamp: Option<init::ConfigStamp>,
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

    /// When the last running quiet period (a file resting after a timed-out chunk) ends.
    pub fn quiet_until(&self) -> Option<std::time::Instant> {
        self.files.values().filter_map(|t| t.quiet_until()).max()
    }

    /// Waits for checkpoint writes still running (an ack's write may outlive a cycle cut short
    /// by the shutdown deadline): whoever deletes the state file afterwards must not see it
    /// written again behind its back.
    pub fn flush_checkpoints(&self) {
        self.checkpoints.flush();
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
        self.checkpoints.write_now(&self.state);
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
}

/// Test-only fault: panic right after a checkpoint, to prove the state survives a crash (H32).
fn fault_after_ack(_checkpoints: &Checkpointer) {
    #[cfg(feature = "test-faults")]
    if std::env::var("CONFAB_SYNC_FAULT").as_deref() == Ok("panic-after-ack") {
        _checkpoints.flush();
        panic!("injected fault: panic after ack");
    }
}
