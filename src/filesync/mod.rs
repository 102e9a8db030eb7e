//! One file's sync: the identity check, reading from the cursor, cutting chunks and sending them,
//! one at a time, and reacting to each answer (sync-engine §2, §4).
//!
//! Layout: this module is the sync pass ([`sync_file`]) and what it shares with the caller
//! ([`SyncCtx`], [`Outcome`]); `tracked` is the per-file state and its transitions (what an
//! acknowledgement or a failed chunk does to it), `position` finds line `acked` in the file by line count, and `chunk` cuts one chunk.
//! Each submodule states its own invariants.
//!
//! Invariants:
//! - nothing is sent for a file whose outcome is unknown: the caller refreshes first;
//! - a stored cursor is used only after [`reader::check_identity`] passed (H3);
//! - an acknowledgement moves `acked` only when it is the chunk's last line (H21); any other
//!   value, a contiguity error or a size rejection asks the caller for a refresh;
//! - the caller persists the checkpoint after every acknowledged chunk (H1): [`SyncCtx::on_ack`];
//! - a file unchanged (same stat) since it was fully synced is not even opened.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use crate::chunker;
use crate::metadata::RepoUrlCache;
use crate::reader::{self, LineReader};
use crate::redact::Redactor;
use crate::sink::{ChunkRequest, Sink, SinkError};

mod chunk;
mod position;
mod tracked;

pub use tracked::{Cursor, FileCounters, Status, Tracked};

use chunk::build_chunk;
use position::{has_complete_line_after, position_at_acked};

/// The backend refuses line numbers above this (protocol.md §4).
pub const MAX_LINE_NUMBER: u64 = 99_999_999;

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

/// (dev, ino, size, mtime ns): while it is the same, the file was not replaced nor written to.
pub(crate) type StatKey = (u64, u64, u64, i64);

pub(crate) fn stat_key(m: &std::fs::Metadata) -> StatKey {
    (
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
    )
}

fn file_stat_key(file: &File) -> std::io::Result<StatKey> {
    file.metadata().map(|m| stat_key(&m))
}

/// [`stat_key`] of the regular file at `path` itself (a symlink is not followed, as
/// [`reader::open_regular`] does not follow it); None for anything else.
fn path_stat_key(path: &std::path::Path) -> Option<StatKey> {
    let m = std::fs::symlink_metadata(path).ok()?;
    m.file_type().is_file().then(|| stat_key(&m))
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
        Err(e) => return io_error(t, "open", e),
    };
    let stat = match file_stat_key(&file) {
        Ok(s) => s,
        Err(e) => return io_error(t, "stat", e),
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
            Err(e) => return io_error(t, "read", e),
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
        Err(e) => return io_error(t, "read", e),
    }
    if t.status == Status::Diverged {
        t.status = Status::Ok;
    }
    let mut force_placeholder = t.needs_placeholder();
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
            Err(e) => return io_error(t, "read", e),
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
            Err(e) => return io_error(t, "read", e),
        };
        match crate::sdnotify::keepalive(ctx.sink.chunk(&req, &json)).await {
            Ok(n) if n == expected => {
                t.acknowledge(n, built.end_offset, fp);
                force_placeholder = false;
                ctx.summaries.extend(built.summaries);
                (ctx.on_ack)(t);
            }
            Ok(n) => {
                tracing::warn!(file = %t.name, "backend acknowledged up to line {n}, expected {expected}; re-learning the position");
                t.needs_refresh = true;
                return Outcome::Refresh;
            }
            Err(e) => return t.chunk_failed(e, built.lines.len(), ctx),
        }
    }
}

/// A local I/O failure on the file: it becomes the file's last error and stops it for this cycle.
fn io_error(t: &mut Tracked, doing: &str, e: std::io::Error) -> Outcome {
    let msg = format!("cannot {doing} {}: {e}", t.path.display());
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
