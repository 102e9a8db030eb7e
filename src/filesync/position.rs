//! Finding line `acked` in the file by line count, when the cursor is behind it or missing
//! (after a refresh, a rollback or an identity mismatch), and checking for a complete line after
//! the cursor (sync-engine §2).
//!
//! Invariants:
//! - the cursor only ever moves to the end of a complete line, with the fingerprint of the bytes
//!   up to it;
//! - a file with fewer complete lines than the sink holds is reported (`Ok(false)`), never padded
//!   or guessed at.

use std::fs::File;

use super::{line_reader, Cursor, Tracked};
use crate::reader;

/// Moves the cursor to the end of line `acked`, scanning by line count from the cursor (or from
/// the start). `Ok(false)` when the file has fewer complete lines than the sink holds.
pub(super) fn position_at_acked(t: &mut Tracked, file: &File) -> std::io::Result<bool> {
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

pub(super) fn has_complete_line_after(t: &Tracked, file: &File) -> std::io::Result<bool> {
    let offset = t.cursor.as_ref().map_or(0, |c| c.offset);
    let mut r = line_reader(file, offset, usize::MAX, &t.counters)?;
    Ok(r.skip_lines(1)? == 1)
}
