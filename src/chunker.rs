//! Chunk sizing on the *encoded* JSON (H4) and the oversized-line placeholder (H5).
//!
//! Invariants:
//! - [`json_str_len`] equals what serde_json writes for a string, byte for byte (tested against it),
//!   so a budget computed from it holds for the real body;
//! - a chunk holds at least one line, and exceeds the target only when it holds exactly one;
//! - no single line costs more than `hard_limit − 64 KiB`: such a line is replaced by
//!   [`placeholder`], so every one-line body fits under the hard limit;
//! - cutting depends only on the bytes from the chunk's first line and the settings, never on
//!   timing (protocol.md W4 relies on it);
//! - [`BodyWriter`] produces exactly the bytes of [`encode`] for the same request, so a chunk is
//!   serialized once, while it is cut, and the size it was budgeted on is the size sent.

use crate::sink::{ChunkMetadata, ChunkRequest};

/// Room kept in the hard limit for the envelope and metadata.
pub const ENVELOPE_RESERVE: usize = 64 * 1024;

/// Size of `s` once written as a JSON string by serde_json, quotes included.
pub fn json_str_len(s: &str) -> usize {
    let mut n = 2;
    for &b in s.as_bytes() {
        n += match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        };
    }
    n
}

/// `{"type":"confab_oversized_line","original_bytes":N,"sha256":"<hex>"}`, keys in that order.
pub fn placeholder(original_bytes: u64, sha256: &str) -> String {
    format!(
        r#"{{"type":"confab_oversized_line","original_bytes":{original_bytes},"sha256":"{sha256}"}}"#
    )
}

/// The largest encoded line cost that is sent as it is.
pub fn max_line_cost(hard_limit: usize) -> usize {
    hard_limit.saturating_sub(ENVELOPE_RESERVE)
}

/// The largest raw line the reader should buffer: anything longer encodes over the limit anyway.
pub fn max_raw_line(hard_limit: usize) -> usize {
    max_line_cost(hard_limit).saturating_sub(2)
}

/// Accumulates lines up to a byte target.
#[derive(Debug)]
pub struct Budget {
    target: usize,
    used: usize,
    count: usize,
    max_lines: usize,
}

impl Budget {
    /// `base` is the size of the request with no lines; `max_lines` caps the count (halving after a
    /// size rejection, protocol.md §2).
    pub fn new(target: usize, base: usize, max_lines: usize) -> Budget {
        Budget {
            target,
            used: base,
            count: 0,
            max_lines: max_lines.max(1),
        }
    }

    /// Whether a line costing `cost` joins the chunk. The first line always does.
    pub fn try_add(&mut self, cost: usize) -> bool {
        let extra = cost + usize::from(self.count > 0);
        if self.count > 0 && (self.count >= self.max_lines || self.used + extra > self.target) {
            return false;
        }
        self.used += extra;
        self.count += 1;
        true
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// A cost up to this surely joins (`usize::MAX` for the first line, 0 when full).
    pub fn room(&self) -> usize {
        if self.count == 0 {
            usize::MAX
        } else if self.count >= self.max_lines {
            0
        } else {
            self.target.saturating_sub(self.used + 1)
        }
    }
}

/// The most a string of `raw_len` bytes can cost once encoded (every byte a `\u00XX`).
pub fn worst_str_len(raw_len: usize) -> usize {
    raw_len.saturating_mul(6).saturating_add(2)
}

/// Builds a chunk body while its lines are chosen: the envelope up to `"lines":[`, each line
/// encoded once (its cost is the bytes it added), then `]`, the metadata and `}` at [`close`].
/// Lines can be taken back from the end, also after closing ([`reopen`]).
///
/// [`close`]: BodyWriter::close
/// [`reopen`]: BodyWriter::reopen
#[derive(Debug)]
pub struct BodyWriter {
    buf: Vec<u8>,
    /// `buf.len()` after each line (its comma included).
    ends: Vec<usize>,
    prefix_len: usize,
    /// Length up to the last line while closed.
    closed_at: Option<usize>,
}

impl BodyWriter {
    /// `req`'s lines and metadata are ignored; `capacity` is a hint for the whole body.
    pub fn new(req: &ChunkRequest<'_>, capacity: usize) -> BodyWriter {
        let mut buf = Vec::with_capacity(capacity);
        let envelope = ChunkRequest {
            lines: &[],
            metadata: None,
            ..req.clone()
        };
        serde_json::to_writer(&mut buf, &envelope).expect("chunk request serializes");
        debug_assert!(buf.ends_with(b"[]}"));
        buf.truncate(buf.len() - 2);
        BodyWriter {
            prefix_len: buf.len(),
            buf,
            ends: Vec::new(),
            closed_at: None,
        }
    }

    /// Appends `line` and returns its cost: [`json_str_len`] of it (the comma not included).
    pub fn push(&mut self, line: &str) -> usize {
        debug_assert!(self.closed_at.is_none());
        if !self.ends.is_empty() {
            self.buf.push(b',');
        }
        let start = self.buf.len();
        serde_json::to_writer(&mut self.buf, line).expect("a string serializes");
        self.ends.push(self.buf.len());
        self.buf.len() - start
    }

    /// Takes the last line back; returns its cost.
    pub fn pop(&mut self) -> usize {
        debug_assert!(self.closed_at.is_none());
        let end = self.ends.pop().expect("a line to pop");
        let start = match self.ends.last() {
            Some(&prev) => prev + 1,
            None => self.prefix_len,
        };
        self.buf
            .truncate(self.ends.last().copied().unwrap_or(self.prefix_len));
        end - start
    }

    pub fn lines(&self) -> usize {
        self.ends.len()
    }

    /// Finishes the body with `metadata`; returns its size.
    pub fn close(&mut self, metadata: Option<&ChunkMetadata>) -> usize {
        debug_assert!(self.closed_at.is_none());
        self.closed_at = Some(self.buf.len());
        self.buf.push(b']');
        if let Some(m) = metadata {
            self.buf.extend_from_slice(b",\"metadata\":");
            serde_json::to_writer(&mut self.buf, m).expect("metadata serializes");
        }
        self.buf.push(b'}');
        self.buf.len()
    }

    /// Undoes [`close`](BodyWriter::close).
    pub fn reopen(&mut self) {
        if let Some(at) = self.closed_at.take() {
            self.buf.truncate(at);
        }
    }

    /// The body (call [`close`](BodyWriter::close) first).
    pub fn into_bytes(self) -> Vec<u8> {
        debug_assert!(self.closed_at.is_some());
        self.buf
    }
}

/// Serializes a chunk request. serde_json cannot fail on these types.
pub fn encode(req: &ChunkRequest<'_>) -> Vec<u8> {
    serde_json::to_vec(req).expect("chunk request serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{ChunkMetadata, FileType};

    #[test]
    fn str_len_matches_serde_json() {
        let samples = [
            String::new(),
            "plain ascii".into(),
            "quotes \" and \\ backslashes".into(),
            "controls \n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}".into(),
            "unicode é ✓ 𝄞 \u{2028}".into(),
            "\"".repeat(1000),
            (0u8..=127).map(char::from).collect(),
        ];
        for s in &samples {
            assert_eq!(
                json_str_len(s),
                serde_json::to_string(s).unwrap().len(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn budget_matches_real_body_size() {
        let lines: Vec<String> = vec!["a\"b".into(), "{\"x\":1}".into(), "\u{1}".into()];
        let meta = ChunkMetadata::default();
        let size = |lines: &[String]| {
            encode(&ChunkRequest {
                session_id: "s",
                file_name: "f.jsonl",
                file_type: FileType::Transcript,
                first_line: 1,
                lines,
                metadata: Some(&meta),
            })
            .len()
        };
        let base = size(&[]);
        let total: usize = lines.iter().map(|l| json_str_len(l)).sum::<usize>() + lines.len() - 1;
        assert_eq!(size(&lines), base + total);
    }

    #[test]
    fn budget_always_takes_one_line_and_caps_count() {
        let mut b = Budget::new(100, 50, 10);
        assert!(b.try_add(500));
        assert!(!b.try_add(1));
        let mut b = Budget::new(100, 50, 2);
        assert!(b.try_add(10));
        assert!(b.try_add(10));
        assert!(!b.try_add(10));
        assert_eq!(b.count(), 2);
        let mut b = Budget::new(100, 50, 100);
        assert!(b.try_add(20));
        assert!(b.try_add(29)); // 50 + 20 + 1 + 29 = 100
        assert!(!b.try_add(0));
    }

    #[test]
    fn body_writer_matches_encode() {
        let all: Vec<String> = vec![
            "a\"b".into(),
            "{\"x\":1}".into(),
            "\u{1}\u{1f} é \\".into(),
            String::new(),
        ];
        let meta = ChunkMetadata {
            summary: "s \"q\"".into(),
            ..ChunkMetadata::default()
        };
        for file_type in [FileType::Transcript, FileType::Agent] {
            for md in [None, Some(&meta)] {
                let req = |lines: &[String]| {
                    encode(&ChunkRequest {
                        session_id: "s\"1",
                        file_name: "f.jsonl",
                        file_type,
                        first_line: 7,
                        lines,
                        metadata: md,
                    })
                };
                let mut w = BodyWriter::new(
                    &ChunkRequest {
                        session_id: "s\"1",
                        file_name: "f.jsonl",
                        file_type,
                        first_line: 7,
                        lines: &[],
                        metadata: None,
                    },
                    16,
                );
                for (i, l) in all.iter().enumerate() {
                    assert_eq!(w.push(l), json_str_len(l));
                    assert_eq!(w.close(md), req(&all[..=i]).len());
                    w.reopen();
                }
                assert_eq!(w.pop(), json_str_len(&all[3]));
                assert_eq!(w.pop(), json_str_len(&all[2]));
                assert_eq!(w.lines(), 2);
                w.close(md);
                w.reopen();
                w.pop();
                w.close(md);
                assert_eq!(w.into_bytes(), req(&all[..1]));
            }
        }
    }

    #[test]
    fn room_is_what_try_add_accepts() {
        let mut b = Budget::new(100, 50, 3);
        assert_eq!(b.room(), usize::MAX);
        assert!(b.try_add(10));
        assert_eq!(b.room(), 39);
        assert!(b.try_add(39));
        assert_eq!(b.room(), 0);
        assert!(worst_str_len(3) >= json_str_len("\u{1}\u{1}\u{1}"));
    }

    #[test]
    fn placeholder_format() {
        assert_eq!(
            placeholder(5, "ab"),
            r#"{"type":"confab_oversized_line","original_bytes":5,"sha256":"ab"}"#
        );
    }
}
