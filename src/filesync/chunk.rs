//! Cutting one chunk from the file: reading complete lines from the cursor, redacting them,
//! replacing lines that can never fit by placeholders, collecting the transcript's chunk metadata
//! and summary pairs, and serializing the request body as the lines are chosen (sync-engine §4).
//!
//! Invariants:
//! - the body is the exact serialization of the request ([`chunker::encode`]), each line encoded
//!   once, and stays within the chunk target (a one-line chunk within the hard limit);
//! - no chunk goes past line [`MAX_LINE_NUMBER`], nor holds more than the file's `max_lines`;
//! - summary pairs come from the lines as read, not their redacted form; a placeholder adds no
//!   metadata and no summary;
//! - only complete lines are read: bytes after the last newline are counted, never sent (H2).

use std::fs::File;

use super::{line_reader, SyncCtx, Tracked, MAX_LINE_NUMBER};
use crate::chunker::{self, Budget};
use crate::discovery;
use crate::metadata::ChunkMetaCollector;
use crate::reader::Line;
use crate::sink::{ChunkMetadata, ChunkRequest, FileType};
use crate::summary_link;

/// One chunk cut from the file.
pub(super) struct Built {
    pub(super) lines: Vec<String>,
    /// The request serialized ([`chunker::encode`] of it, byte for byte).
    pub(super) json: Vec<u8>,
    pub(super) end_offset: u64,
    pub(super) metadata: Option<ChunkMetadata>,
    pub(super) summaries: Vec<(String, String)>,
}

/// Reads lines from `offset` into one chunk (None when no complete line is there). The body is
/// serialized as the lines are chosen, each line once ([`chunker::BodyWriter`]).
pub(super) fn build_chunk(
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
