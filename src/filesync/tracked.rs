//! The position object of one file ([`Tracked`]), its [`Cursor`] and [`Status`], and its
//! transitions: restore, adopt, acknowledge, and the reactions to a failed chunk (refresh, halve,
//! park, back off, rest) (sync-engine §2, §4; protocol.md §2).
//!
//! Invariants:
//! - each file has exactly one [`Tracked`] (H10); `acked` is the sink's position and only moves on
//!   an acknowledgement whose value was checked (H21) or on a refresh ([`Tracked::adopt`]);
//! - a [`Cursor`] is a fact about the file ("line L ends at byte O", with fingerprints); it is only
//!   used after [`reader::check_identity`](crate::reader::check_identity) passed, so a stale offset
//!   is never read from (H3);
//! - a checkpoint ([`Tracked::entry`]) carries an offset only when it is the acked line's end;
//! - a file is not due while parked, backing off or resting; a refresh during a rest does not
//!   count, and is done again after it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Outcome, StatKey, SyncCtx};
use crate::reader::Fingerprint;
use crate::sink::{FileType, SinkError};
use crate::state::FileEntry;

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
    pub(super) max_lines: usize,
    size_rejects: u32,
    /// (dev, ino, size, mtime ns) when the file was last fully synced: unchanged → not even opened.
    pub(super) idle_stat: Option<StatKey>,
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

    /// Records the acknowledgement of line `n`, already checked to be the chunk's last (H21): the
    /// cursor moves to the chunk's end, and the signs of earlier trouble are cleared.
    pub(super) fn acknowledge(&mut self, n: u64, end_offset: u64, fp: Fingerprint) {
        self.acked = n;
        self.counters.lines_acked.store(n, Ordering::Relaxed);
        self.cursor = Some(Cursor {
            line: n,
            offset: end_offset,
            fp,
        });
        self.backoff = None;
        self.size_rejects = 0;
        self.max_lines = usize::MAX;
        self.last_error = None;
        if self.status == Status::Parked {
            self.status = Status::Ok;
            self.parked_until = None;
        }
    }

    /// Reacts to a chunk of `lines_sent` lines that the sink refused or whose request failed.
    pub(super) fn chunk_failed(
        &mut self,
        e: SinkError,
        lines_sent: usize,
        ctx: &SyncCtx<'_>,
    ) -> Outcome {
        self.last_error = Some(e.to_string());
        match e {
            SinkError::Contiguity(_) => {
                self.needs_refresh = true;
                Outcome::Refresh
            }
            SinkError::BodyTooLarge(_) => {
                let n = lines_sent;
                if n == 1 {
                    self.size_rejects += 1;
                }
                self.max_lines = (n / 2).max(1);
                tracing::warn!(file = %self.name, lines = n, "chunk rejected as too large; retrying with {} lines", self.max_lines);
                self.needs_refresh = true;
                Outcome::Refresh
            }
            SinkError::TooManyChunks(m) => {
                self.park(m);
                Outcome::Done
            }
            SinkError::BadRequest(_) => {
                self.back_off(ctx.interval);
                self.needs_refresh = true;
                Outcome::Failed(e)
            }
            SinkError::TimedOut(_) => {
                // The backend may still be working on the chunk we gave up on: leave
                // the file alone for as long again before its refresh, so the resend
                // does not race a late commit (protocol.md W2, W9).
                self.rest(ctx.http_timeout);
                Outcome::Failed(e)
            }
            e if e.outcome_unknown() => {
                self.needs_refresh = true;
                Outcome::Failed(e)
            }
            e => Outcome::Failed(e),
        }
    }

    /// A one-line chunk refused for size three times in a row goes out as a placeholder (§4).
    pub(super) fn needs_placeholder(&self) -> bool {
        self.size_rejects >= 3
    }

    pub(super) fn park(&mut self, why: String) {
        tracing::warn!(file = %self.name, "parking file for an hour: {why}");
        self.status = Status::Parked;
        self.parked_until = Some(Instant::now() + PARK_FOR);
        self.last_error = Some(why);
    }

    /// When the quiet period after a timed-out chunk ends, while one is running.
    pub fn quiet_until(&self) -> Option<Instant> {
        self.quiet_until.filter(|t| *t > Instant::now())
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
