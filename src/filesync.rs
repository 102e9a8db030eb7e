//! One file's sync: its position object, identity check, reading from the cursor, cutting chunks
//! and sending them, one at a time (sync-engine §2, §4).
//!
//! Invariants:
//! - each file has exactly one [`Tracked`] (H10); `acked` is the sink's position and only moves on
//!   an acknowledgement whose value was checked (H21) or on a refresh;
//! - a [`Cursor`] is a fact about the file ("line L ends at byte O", with fingerprints); it is only
//!   used after [`reader::check_identity`] passed, so a stale offset is never read from (H3);
//! - nothing is sent for a file whose outcome is unknown: the caller refreshes first;
//! - the caller persists the checkpoint after every acknowledged chunk (H1): [`SyncCtx::on_ack`].

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::chunker::{self, Budget};
use crate::discovery;
use crate::metadata::{ChunkMetaCollector, RepoUrlCache};
use crate::reader::{self, Fingerprint, Line, LineReader};
use crate::redact::Redactor;
use crate::sink::{ChunkMetadata, ChunkRequest, FileType, Sink, SinkError};
use crate::state::FileEntry;
use crate::summary_link;

/// The backend refuses line numbers above this (protocol.md §4).
pub const MAX_LINE_NUMBER: u64 = 99_999_999;
const PARK_FOR: Duration = Duration::from_secs(3600);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Live per-file numbers for tests, benchmarks and the `--once` progress display.
#[derive(Debug, Default)]
pub struct FileCounters {
    /// Every byte read from the file (lines, skips, fingerprints).
    pub bytes_read: AtomicU64,
    /// The sink's position.
    pub lines_acked: AtomicU64,
}

/// "Line `line` ends at byte `offset`" of the file `fp` describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub line: u64,
    pub offset: u64,
    pub fp: Fingerprint,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Waiting,
    Parked,
    Diverged,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Waiting => "waiting",
            Status::Parked => "parked",
            Status::Diverged => "diverged",
        }
    }
}

/// The position object of one file.
#[derive(Debug)]
pub struct Tracked {
    pub name: String,
    pub file_type: FileType,
    pub path: PathBuf,
    pub acked: u64,
    pub cursor: Option<Cursor>,
    pub status: Status,
    /// A chunk's outcome is unknown, or the position must be re-learned: refresh before sending.
    pub needs_refresh: bool,
    pub parked_until: Option<Instant>,
    backoff: Option<(Instant, Duration)>,
    /// After a timed-out chunk: not due, and no refresh counts, before this instant (the
    /// backend may still commit the chunk we gave up on).
    quiet_until: Option<Instant>,
    /// Lines per chunk after size rejections (protocol.md §2, halving).
    max_lines: usize,
    size_rejects: u32,
    /// (dev, ino, size, mtime ns) when the file was last fully synced: unchanged → not even opened.
    idle_stat: Option<(u64, u64, u64, i64)>,
    /// Bytes after the last complete line at the last read.
    pub pending_bytes: u64,
    pub last_error: Option<String>,
    pub counters: std::sync::Arc<FileCounters>,
}

impl Tracked {
    pub fn new(
        name: String,
        file_type: FileType,
        path: PathBuf,
        counters: std::sync::Arc<FileCounters>,
    ) -> Tracked {
        Tracked {
            name,
            file_type,
            path,
            acked: 0,
            cursor: None,
            status: Status::Ok,
            needs_refresh: false,
            parked_until: None,
            backoff: None,
            quiet_until: None,
            max_lines: usize::MAX,
            size_rejects: 0,
            idle_stat: None,
            pending_bytes: 0,
            last_error: None,
            counters,
        }
    }

    /// Restores a checkpoint from the state file (only trusted once init confirms the session).
    pub fn restore(&mut self, e: &FileEntry) {
        self.acked = e.acked_line;
        self.cursor = e.acked_offset.map(|offset| Cursor {
            line: e.acked_line,
            offset,
            fp: Fingerprint {
                dev: e.dev,
                ino: e.ino,
                head_len: e.head_len,
                head_sha256: e.head_sha256.clone(),
                tail_len: e.tail_len,
                tail_sha256: e.tail_sha256.clone(),
            },
        });
    }

    /// The checkpoint to persist. The offset is written only when it is the acked line's end.
    pub fn entry(&self) -> FileEntry {
        let c = self.cursor.as_ref().filter(|c| c.line == self.acked);
        let fp = c.map(|c| c.fp.clone()).unwrap_or_default();
        FileEntry {
            file_type: self.file_type.as_str().to_string(),
            path: self.path.display().to_string(),
            acked_line: self.acked,
            acked_offset: c.map(|c| c.offset),
            dev: fp.dev,
            ino: fp.ino,
            head_len: fp.head_len,
            head_sha256: fp.head_sha256,
            tail_len: fp.tail_len,
            tail_sha256: fp.tail_sha256,
            status: self.status.as_str().to_string(),
            last_error: self.last_error.clone(),
        }
    }

    /// Adopts the sink's position after an init (sync-engine §2 "refresh").
    pub fn adopt(&mut self, position: u64) {
        self.acked = position;
        if self.cursor.as_ref().is_some_and(|c| c.line > position) {
            // The sink rolled back below our cursor: rescan from the start by line count.
            self.cursor = None;
        }
        // A refresh during the quiet period may predate a late commit: refresh again after it.
        self.needs_refresh = self.quiet_until.is_some_and(|t| Instant::now() < t);
        self.idle_stat = None;
    }

    pub fn due(&self, now: Instant) -> bool {
        self.parked_until.is_none_or(|t| now >= t)
            && self.backoff.is_none_or(|(t, _)| now >= t)
            && self.quiet_until.is_none_or(|t| now >= t)
    }

    fn park(&mut self, why: String) {
        tracing::warn!(file = %self.name, "parking file for an hour: {why}");
        self.status = Status::Parked;
        self.parked_until = Some(Instant::now() + PARK_FOR);
        self.last_error = Some(why);
    }

    /// Not due, and no refresh counts, for `d` (see `quiet_until`).
    fn rest(&mut self, d: Duration) {
        self.quiet_until = Some(Instant::now() + d);
        self.needs_refresh = true;
    }

    fn back_off(&mut self, interval: Duration) {
        let wait = match self.backoff {
            Some((_, w)) => (w * 2).min(MAX_BACKOFF),
            None => interval,
        };
        self.backoff = Some((Instant::now() + wait, wait));
    }
}

/// What happened to one file in one pass.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing left to send (or the file is waiting, parked or backing off).
    Done,
    /// The caller must refresh positions, then call again.
    Refresh,
    /// Stop this file for this cycle.
    Failed(SinkError),
}

/// Everything a file sync needs from the session.
pub struct SyncCtx<'a> {
    pub sink: &'a dyn Sink,
    pub session_id: &'a str,
    pub redactor: Option<&'a Redactor>,
    pub repos: &'a mut RepoUrlCache,
    pub chunk_target: usize,
    pub hard_limit: usize,
    pub interval: Duration,
    /// The request timeout: how long a file rests after a chunk timed out.
    pub http_timeout: Duration,
    /// Agent ids seen in the lines read.
    pub agent_ids: &'a mut BTreeSet<String>,
    /// `(leafUuid, summary)` pairs of acknowledged transcript lines, for summary linking.
    pub summaries: &'a mut Vec<(String, String)>,
    /// Called after each acknowledged chunk, to persist the checkpoint (H1).
    pub on_ack: &'a mut (dyn FnMut(&Tracked) + Send),
}

/// One chunk cut from the file.
struct Built {
    lines: Vec<String>,
    /// The request serialized ([`chunker::encode`] of it, byte for byte).
    json: Vec<u8>,
    end_offset: u64,
    metadata: Option<ChunkMetadata>,
    summaries: Vec<(String, String)>,
}

fn stat_key(file: &File) -> std::io::Result<(u64, u64, u64, i64)> {
    let m = file.metadata()?;
    Ok((
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
    ))
}

/// [`stat_key`] of the regular file at `path` itself (a symlink is not followed, as
/// [`reader::open_regular`] does not follow it); None for anything else.
fn path_stat_key(path: &std::path::Path) -> Option<(u64, u64, u64, i64)> {
    let m = std::fs::symlink_metadata(path).ok()?;
    m.file_type().is_file().then(|| {
        (
            m.dev(),
            m.ino(),
            m.len(),
            m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        )
    })
}

/// Syncs one file until nothing is left to send, or until something needs the caller.
pub async fn sync_file(t: &mut Tracked, ctx: &mut SyncCtx<'_>) -> Outcome {
    if t.needs_refresh {
        return Outcome::Refresh;
    }
    if t.idle_stat.is_some() && path_stat_key(&t.path) == t.idle_stat {
        // Unchanged since it was fully synced: one `lstat`, nothing opened.
        return Outcome::Done;
    }
    let file = match reader::open_regular(&t.path) {
        Ok(Some(f)) => f,
        Ok(None) => {
            // A missing agent the backend named is waiting, not an error (H30).
            t.status = Status::Waiting;
            t.cursor = None;
            t.idle_stat = None;
            return Outcome::Done;
        }
        Err(e) => return local_error(t, format!("cannot open {}: {e}", t.path.display())),
    };
    let stat = match stat_key(&file) {
        Ok(s) => s,
        Err(e) => return local_error(t, format!("cannot stat {}: {e}", t.path.display())),
    };
    if t.idle_stat == Some(stat) {
        return Outcome::Done;
    }
    if let Some(c) = &t.cursor {
        match reader::check_identity(&file, c.offset, &c.fp, &t.counters.bytes_read) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                tracing::warn!(file = %t.name, "{why}; re-learning the position and rescanning by line count");
                t.cursor = None;
                t.needs_refresh = true;
                return Outcome::Refresh;
            }
            Err(e) => return local_error(t, format!("cannot read {}: {e}", t.path.display())),
        }
    }
    if t.status == Status::Waiting {
        t.status = Status::Ok;
    }
    match position_at_acked(t, &file) {
        Ok(true) => {}
        Ok(false) => {
            t.status = Status::Diverged;
            t.idle_stat = Some(stat);
            return Outcome::Done;
        }
        Err(e) => return local_error(t, format!("cannot read {}: {e}", t.path.display())),
    }
    if t.status == Status::Diverged {
        t.status = Status::Ok;
    }
    // A one-line chunk refused for size three times in a row goes out as a placeholder (§4).
    let mut force_placeholder = t.size_rejects >= 3;
    loop {
        if t.acked >= MAX_LINE_NUMBER {
            // Only park when there is something left to send.
            if has_complete_line_after(t, &file).unwrap_or(false) {
                t.park(format!(
                    "line numbers above {MAX_LINE_NUMBER} are refused by the backend"
                ));
            }
            return Outcome::Done;
        }
        crate::sdnotify::watchdog_ping();
        let cursor_offset = t.cursor.as_ref().map_or(0, |c| c.offset);
        let built = match build_chunk(t, ctx, &file, cursor_offset, force_placeholder) {
            Ok(Some(b)) => b,
            Ok(None) => {
                // The stat from before reading: any change since then makes the next pass look again.
                t.idle_stat = Some(stat);
                return Outcome::Done;
            }
            Err(e) => return local_error(t, format!("cannot read {}: {e}", t.path.display())),
        };
        let first_line = t.acked + 1;
        let req = ChunkRequest {
            session_id: ctx.session_id,
            file_name: &t.name,
            file_type: t.file_type,
            first_line,
            lines: &built.lines,
            metadata: built.metadata.as_ref(),
        };
        let json = built.json;
        debug_assert_eq!(json, chunker::encode(&req));
        let expected = req.last_line();
        // Fingerprint the bytes being sent now, not after the response: the file may be rewritten
        // while the chunk is in flight, and the acknowledgement must be recorded regardless.
        let fp = match reader::fingerprint(&file, built.end_offset, &t.counters.bytes_read) {
            Ok(fp) => fp,
            Err(e) => return local_error(t, format!("cannot read {}: {e}", t.path.display())),
        };
        match crate::sdnotify::keepalive(ctx.sink.chunk(&req, &json)).await {
            Ok(n) if n == expected => {
                t.acked = n;
                t.counters.lines_acked.store(n, Ordering::Relaxed);
                t.cursor = Some(Cursor {
                    line: n,
                    offset: built.end_offset,
                    fp,
                });
                t.backoff = None;
                t.size_rejects = 0;
                t.max_lines = usize::MAX;
                t.last_error = None;
                if t.status == Status::Parked {
                    t.status = Status::Ok;
                    t.parked_until = None;
                }
                force_placeholder = false;
                ctx.summaries.extend(built.summaries);
                (ctx.on_ack)(t);
            }
            Ok(n) => {
                tracing::warn!(file = %t.name, "backend acknowledged up to line {n}, expected {expected}; re-learning the position");
                t.needs_refresh = true;
                return Outcome::Refresh;
            }
            Err(e) => {
                t.last_error = Some(e.to_string());
                match e {
                    SinkError::Contiguity(_) => {
                        t.needs_refresh = true;
                        return Outcome::Refresh;
                    }
                    SinkError::BodyTooLarge(_) => {
                        let n = built.lines.len();
                        if n == 1 {
                            t.size_rejects += 1;
                        }
                        t.max_lines = (n / 2).max(1);
                        tracing::warn!(file = %t.name, lines = n, "chunk rejected as too large; retrying with {} lines", t.max_lines);
                        t.needs_refresh = true;
                        return Outcome::Refresh;
                    }
                    SinkError::TooManyChunks(m) => {
                        t.park(m);
                        return Outcome::Done;
                    }
                    SinkError::BadRequest(_) => {
                        t.back_off(ctx.interval);
                        t.needs_refresh = true;
                        return Outcome::Failed(e);
                    }
                    SinkError::TimedOut(_) => {
                        // The backend may still be working on the chunk we gave up on: leave
                        // the file alone for as long again before its refresh, so the resend
                        // does not race a late commit (protocol.md W2, W9).
                        t.rest(ctx.http_timeout);
                        return Outcome::Failed(e);
                    }
                    e if e.outcome_unknown() => {
                        t.needs_refresh = true;
                        return Outcome::Failed(e);
                    }
                    e => return Outcome::Failed(e),
                }
            }
        }
    }
}

fn local_error(t: &mut Tracked, msg: String) -> Outcome {
    t.last_error = Some(msg.clone());
    Outcome::Failed(SinkError::Local(msg))
}

/// Reads `file` (through its own descriptor) from `offset`, counting into the file's counters.
fn line_reader<'c>(
    file: &File,
    offset: u64,
    max_raw: usize,
    counters: &'c FileCounters,
) -> std::io::Result<LineReader<'c>> {
    LineReader::new(file.try_clone()?, offset, max_raw, &counters.bytes_read)
}

/// Moves the cursor to the end of line `acked`, scanning by line count from the cursor (or from
/// the start). `Ok(false)` when the file has fewer complete lines than the sink holds.
fn position_at_acked(t: &mut Tracked, file: &File) -> std::io::Result<bool> {
    let (line, offset) = t.cursor.as_ref().map_or((0, 0), |c| (c.line, c.offset));
    if line == t.acked {
        return Ok(true);
    }
    let mut r = line_reader(file, offset, usize::MAX, &t.counters)?;
    let skipped = r.skip_lines(t.acked - line)?;
    let new_offset = r.offset();
    t.pending_bytes = r.pending_bytes();
    let fp = reader::fingerprint(file, new_offset, &t.counters.bytes_read)?;
    t.cursor = Some(Cursor {
        line: line + skipped,
        offset: new_offset,
        fp,
    });
    Ok(line + skipped == t.acked)
}

fn has_complete_line_after(t: &Tracked, file: &File) -> std::io::Result<bool> {
    let offset = t.cursor.as_ref().map_or(0, |c| c.offset);
    let mut r = line_reader(file, offset, usize::MAX, &t.counters)?;
    Ok(r.skip_lines(1)? == 1)
}

/// Reads lines from `offset` into one chunk (None when no complete line is there). The body is
/// serialized as the lines are chosen, each line once ([`chunker::BodyWriter`]).
fn build_chunk(
    t: &mut Tracked,
    ctx: &mut SyncCtx<'_>,
    file: &File,
    offset: u64,
    force_placeholder: bool,
) -> std::io::Result<Option<Built>> {
    let hard = ctx.hard_limit;
    let max_cost = chunker::max_line_cost(hard);
    let mut r = line_reader(file, offset, chunker::max_raw_line(hard), &t.counters)?;
    let first_line = t.acked + 1;
    let is_transcript = t.file_type == FileType::Transcript;
    let empty_meta = ChunkMetadata::default();
    let envelope = ChunkRequest {
        session_id: ctx.session_id,
        file_name: &t.name,
        file_type: t.file_type,
        first_line,
        lines: &[],
        metadata: is_transcript.then_some(&empty_meta),
    };
    let base = chunker::encode(&envelope).len();
    let max_lines = t.max_lines.min((MAX_LINE_NUMBER - t.acked) as usize);
    let mut budget = Budget::new(ctx.chunk_target, base, max_lines);
    // Enough for the usual chunk and its metadata without reallocating, without reserving the
    // whole target for a few appended lines.
    let unread = file.metadata()?.len().saturating_sub(offset) as usize;
    let capacity = ctx
        .chunk_target
        .min(unread.saturating_add(unread / 4))
        .saturating_add(base + chunker::ENVELOPE_RESERVE);
    let mut body = chunker::BodyWriter::new(&envelope, capacity);
    let mut collector = is_transcript.then(ChunkMetaCollector::new);
    let mut lines = Vec::new();
    let mut ends = Vec::new();
    let mut summaries = Vec::new();
    while let Some(line) = r.next_line()? {
        let line_no = first_line + lines.len() as u64;
        // `raw`: the line as read, for metadata; None for a placeholder.
        let (text, raw) = match line {
            Line::Oversized {
                original_bytes,
                sha256,
                ..
            } => {
                tracing::warn!(file = %t.name, line = line_no, bytes = original_bytes, "line too large to send; sending a placeholder");
                (chunker::placeholder(original_bytes, &sha256), None)
            }
            Line::Text { text, .. } if force_placeholder && lines.is_empty() => {
                tracing::warn!(file = %t.name, line = line_no, bytes = text.len(), "line rejected as too large 3 times; sending a placeholder");
                (placeholder_of(&text), None)
            }
            Line::Text { text, .. } => {
                discovery::extract_agent_ids(&text, ctx.agent_ids);
                let redacted = match ctx.redactor.map(|r| r.redact_line(&text)) {
                    Some(std::borrow::Cow::Owned(s)) => Some(s),
                    _ => None,
                };
                let sent = redacted.as_deref().unwrap_or(&text);
                if chunker::worst_str_len(sent.len()) > max_cost
                    && chunker::json_str_len(sent) > max_cost
                {
                    tracing::warn!(file = %t.name, line = line_no, bytes = text.len(), "line too large once encoded; sending a placeholder");
                    (placeholder_of(&text), None)
                } else {
                    match redacted {
                        Some(s) => (s, Some(Raw::Other(text))),
                        None => (text, Some(Raw::Same)),
                    }
                }
            }
        };
        // Encode right away when the line surely fits; otherwise measure it first, so a line
        // that ends the chunk is never encoded.
        if chunker::worst_str_len(text.len()) <= budget.room() {
            let cost = body.push(&text);
            let joined = budget.try_add(cost);
            debug_assert!(joined);
        } else {
            if !budget.try_add(chunker::json_str_len(&text)) {
                break;
            }
            body.push(&text);
        }
        if let Some(raw) = &raw {
            let raw = match raw {
                Raw::Same => text.as_str(),
                Raw::Other(s) => s.as_str(),
            };
            if let Some(c) = collector.as_mut() {
                c.observe(raw, &text);
            }
            if is_transcript {
                if let Some(pair) = summary_link::summary_links(raw) {
                    summaries.push(pair);
                }
            }
        }
        lines.push(text);
        ends.push(r.offset());
    }
    t.pending_bytes = r.pending_bytes();
    if lines.is_empty() {
        return Ok(None);
    }
    let metadata = collector.map(|c| c.finish(ctx.redactor, ctx.repos));
    let size = body.close(metadata.as_ref());
    trim_to_limit(ctx, &mut body, &mut lines, size, metadata.as_ref());
    Ok(Some(Built {
        end_offset: ends[lines.len() - 1],
        lines,
        json: body.into_bytes(),
        metadata,
        summaries,
    }))
}

/// The line as read, when it differs from what is sent.
enum Raw {
    Same,
    Other(String),
}

fn placeholder_of(text: &str) -> String {
    use sha2::Digest;
    chunker::placeholder(
        text.len() as u64,
        &hex::encode(sha2::Sha256::digest(text.as_bytes())),
    )
}

/// Drops trailing lines while the serialized body is over the target (metadata can push it
/// over); a one-line chunk always fits under the hard limit by construction. The metadata stays
/// what the read lines gave.
fn trim_to_limit(
    ctx: &SyncCtx<'_>,
    body: &mut chunker::BodyWriter,
    lines: &mut Vec<String>,
    size: usize,
    metadata: Option<&ChunkMetadata>,
) {
    let limit = ctx.chunk_target.min(ctx.hard_limit);
    let mut over = size.saturating_sub(limit);
    if over == 0 || lines.len() == 1 {
        return;
    }
    body.reopen();
    while over > 0 && lines.len() > 1 {
        lines.pop();
        over = over.saturating_sub(body.pop() + 1);
    }
    body.close(metadata);
}
