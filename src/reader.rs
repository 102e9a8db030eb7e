//! Transcript reading: complete lines from a byte offset of a growing file, and the fingerprints
//! that tell whether a file is still the one a cursor was taken on (H1–H3, H5, H7).
//!
//! Invariants:
//! - only complete lines come out: bytes after the last `\n` are never returned, only counted
//!   ([`LineReader::pending_bytes`]);
//! - a line's `consumed` counts every byte including `\r\n`, so offsets stay exact for CRLF (H7);
//! - a line longer than `max_raw` is never held in memory: it is hashed as a stream and returned as
//!   [`Line::Oversized`] (H5);
//! - every byte read is added to the caller's counter, so tests can prove what was (not) read.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// How many bytes each fingerprint covers at most (sync-engine §0).
pub const FINGERPRINT_LEN: u64 = 1024;
const BUF_SIZE: usize = 64 * 1024;

/// Opens a transcript or agent file without following a symlink in the last component.
/// `Ok(None)` when it is missing or not a regular file (sync-engine §3 "Opening").
pub fn open_regular(path: &Path) -> io::Result<Option<File>> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        // ELOOP: the last component is a symlink.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.file_type().is_file() {
        return Ok(None);
    }
    Ok(Some(file))
}

/// What identifies a file at a cursor: its inode and the bytes around the start and the offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint {
    pub dev: u64,
    pub ino: u64,
    pub head_len: u64,
    pub head_sha256: String,
    pub tail_len: u64,
    pub tail_sha256: String,
}

fn sha256_range(file: &File, start: u64, len: u64, counter: &AtomicU64) -> io::Result<String> {
    let mut buf = vec![0u8; len as usize];
    read_exact_at(file, &mut buf, start)?;
    counter.fetch_add(len, Ordering::Relaxed);
    Ok(hex::encode(Sha256::digest(&buf)))
}

fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

/// Computes the fingerprint of `file` for a cursor at `offset` (which must be ≤ its size).
pub fn fingerprint(file: &File, offset: u64, counter: &AtomicU64) -> io::Result<Fingerprint> {
    let meta = file.metadata()?;
    let len = offset.min(FINGERPRINT_LEN);
    let head_sha256 = sha256_range(file, 0, len, counter)?;
    let tail_sha256 = if offset <= FINGERPRINT_LEN {
        head_sha256.clone()
    } else {
        sha256_range(file, offset - len, len, counter)?
    };
    Ok(Fingerprint {
        dev: meta.dev(),
        ino: meta.ino(),
        head_len: len,
        head_sha256,
        tail_len: len,
        tail_sha256,
    })
}

/// Why a cursor no longer applies to a file (H3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    Replaced,
    Truncated { size: u64, offset: u64 },
    HeadChanged,
    TailChanged,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Replaced => f.write_str("file was replaced (new inode)"),
            Mismatch::Truncated { size, offset } => {
                write!(
                    f,
                    "file was truncated (size {size} < synced offset {offset})"
                )
            }
            Mismatch::HeadChanged => f.write_str("file was rewritten (first bytes differ)"),
            Mismatch::TailChanged => {
                f.write_str("file was rewritten (bytes before the offset differ)")
            }
        }
    }
}

/// Checks that `file` is still the file `fp` was taken of at `offset`.
pub fn check_identity(
    file: &File,
    offset: u64,
    fp: &Fingerprint,
    counter: &AtomicU64,
) -> io::Result<Result<(), Mismatch>> {
    let meta = file.metadata()?;
    if meta.dev() != fp.dev || meta.ino() != fp.ino {
        return Ok(Err(Mismatch::Replaced));
    }
    if meta.len() < offset {
        return Ok(Err(Mismatch::Truncated {
            size: meta.len(),
            offset,
        }));
    }
    let now = fingerprint(file, offset, counter)?;
    if now.head_sha256 != fp.head_sha256 || now.head_len != fp.head_len {
        return Ok(Err(Mismatch::HeadChanged));
    }
    if now.tail_sha256 != fp.tail_sha256 || now.tail_len != fp.tail_len {
        return Ok(Err(Mismatch::TailChanged));
    }
    Ok(Ok(()))
}

fn strip_terminator(bytes: &mut Vec<u8>) {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
}

/// One complete line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// The line without its terminator (`\n`, or `\r\n`), invalid UTF-8 replaced by U+FFFD.
    Text { text: String, consumed: u64 },
    /// A line longer than the reader's `max_raw`: never buffered, only measured and hashed.
    Oversized {
        original_bytes: u64,
        sha256: String,
        consumed: u64,
    },
}

impl Line {
    pub fn consumed(&self) -> u64 {
        match self {
            Line::Text { consumed, .. } | Line::Oversized { consumed, .. } => *consumed,
        }
    }
}

/// Streams complete lines from `offset`.
pub struct LineReader<'c> {
    inner: BufReader<File>,
    offset: u64,
    max_raw: usize,
    pending: u64,
    counter: &'c AtomicU64,
}

impl<'c> LineReader<'c> {
    /// `max_raw`: a line with more raw bytes than this is returned as [`Line::Oversized`].
    pub fn new(
        mut file: File,
        offset: u64,
        max_raw: usize,
        counter: &'c AtomicU64,
    ) -> io::Result<Self> {
        file.seek(SeekFrom::Start(offset))?;
        Ok(LineReader {
            inner: BufReader::with_capacity(BUF_SIZE, file),
            offset,
            max_raw,
            pending: 0,
            counter,
        })
    }

    /// Offset just after the last complete line returned.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes after the last complete line seen at the last EOF (an unterminated line).
    pub fn pending_bytes(&self) -> u64 {
        self.pending
    }

    pub fn file(&self) -> &File {
        self.inner.get_ref()
    }

    fn fill(&mut self) -> io::Result<&[u8]> {
        let buf = self.inner.fill_buf()?;
        Ok(buf)
    }

    /// The next complete line, or `None` at EOF (the unterminated rest is left unread logically:
    /// the offset stays at its start).
    pub fn next_line(&mut self) -> io::Result<Option<Line>> {
        let start = self.offset;
        let mut bytes: Vec<u8> = Vec::new();
        // Once a line is known to be oversized it is hashed as it streams by. The last two bytes
        // are held back so the terminator (`\n` or `\r\n`) can be left out of the hash.
        let mut hashing: Option<(Sha256, Vec<u8>)> = None;
        let mut total: u64 = 0;
        loop {
            let buf = self.fill()?;
            if buf.is_empty() {
                // EOF without a terminator: rewind to the line start so the next read sees it whole.
                self.pending = total;
                if total > 0 {
                    self.inner.seek(SeekFrom::Start(start))?;
                }
                return Ok(None);
            }
            let (take, done) = match memchr::memchr(b'\n', buf) {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            let piece = &buf[..take];
            total += take as u64;
            match hashing.as_mut() {
                Some((h, held)) => {
                    held.extend_from_slice(piece);
                    let keep = held.len().min(2);
                    let cut = held.len() - keep;
                    h.update(&held[..cut]);
                    held.drain(..cut);
                }
                None => {
                    bytes.extend_from_slice(piece);
                    if bytes.len() > self.max_raw + 2 {
                        let cut = bytes.len() - 2;
                        let mut h = Sha256::new();
                        h.update(&bytes[..cut]);
                        hashing = Some((h, bytes.split_off(cut)));
                        bytes = Vec::new();
                    }
                }
            }
            self.counter.fetch_add(take as u64, Ordering::Relaxed);
            self.inner.consume(take);
            if done {
                break;
            }
        }
        self.offset = start + total;
        self.pending = 0;
        if let Some((mut h, mut held)) = hashing {
            // `held` is the line's last two bytes; what is left after stripping belongs to the line.
            strip_terminator(&mut held);
            h.update(&held);
            let original_bytes = total - (2 - held.len() as u64);
            return Ok(Some(Line::Oversized {
                original_bytes,
                sha256: hex::encode(h.finalize()),
                consumed: total,
            }));
        }
        strip_terminator(&mut bytes);
        if bytes.len() > self.max_raw {
            let original_bytes = bytes.len() as u64;
            let sha256 = hex::encode(Sha256::digest(&bytes));
            return Ok(Some(Line::Oversized {
                original_bytes,
                sha256,
                consumed: total,
            }));
        }
        let text = match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        Ok(Some(Line::Text {
            text,
            consumed: total,
        }))
    }

    /// Skips up to `n` complete lines without decoding them. Returns how many were skipped (fewer
    /// than `n` at EOF; the offset then stays after the last complete line).
    pub fn skip_lines(&mut self, n: u64) -> io::Result<u64> {
        let mut skipped = 0;
        let mut line_start = self.offset;
        let mut pos = self.offset;
        while skipped < n {
            let buf = self.fill()?;
            if buf.is_empty() {
                self.pending = pos - line_start;
                self.inner.seek(SeekFrom::Start(line_start))?;
                self.offset = line_start;
                return Ok(skipped);
            }
            let len = buf.len();
            let mut consumed = 0;
            for i in memchr::memchr_iter(b'\n', buf) {
                skipped += 1;
                consumed = i + 1;
                line_start = pos + consumed as u64;
                if skipped == n {
                    break;
                }
            }
            let take = if skipped == n { consumed } else { len };
            pos += take as u64;
            self.counter.fetch_add(take as u64, Ordering::Relaxed);
            self.inner.consume(take);
        }
        self.offset = line_start;
        self.pending = 0;
        Ok(skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        std::fs::write(&p, bytes).unwrap();
        (dir, p)
    }

    fn read_all(p: &Path, offset: u64, max: usize) -> (Vec<Line>, u64, u64) {
        let c = AtomicU64::new(0);
        let f = open_regular(p).unwrap().unwrap();
        let mut r = LineReader::new(f, offset, max, &c).unwrap();
        let mut out = vec![];
        while let Some(l) = r.next_line().unwrap() {
            out.push(l);
        }
        (out, r.offset(), r.pending_bytes())
    }

    fn texts(lines: &[Line]) -> Vec<String> {
        lines
            .iter()
            .map(|l| match l {
                Line::Text { text, .. } => text.clone(),
                Line::Oversized { .. } => "<oversized>".into(),
            })
            .collect()
    }

    #[test]
    fn only_complete_lines_and_pending_count() {
        let (_d, p) = file_with(b"{\"a\":1}\n{\"b\":");
        let (lines, off, pending) = read_all(&p, 0, 1 << 20);
        assert_eq!(texts(&lines), vec!["{\"a\":1}"]);
        assert_eq!(off, 8);
        assert_eq!(pending, 5);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"2}\n")
            .unwrap();
        let (lines, off, pending) = read_all(&p, 8, 1 << 20);
        assert_eq!(texts(&lines), vec!["{\"b\":2}"]);
        assert_eq!((off, pending), (16, 0));
    }

    #[test]
    fn crlf_offsets_count_every_byte() {
        let (_d, p) = file_with(b"a\r\nbb\r\n\r\nc\n");
        let (lines, off, _) = read_all(&p, 0, 1 << 20);
        assert_eq!(texts(&lines), vec!["a", "bb", "", "c"]);
        let consumed: Vec<u64> = lines.iter().map(Line::consumed).collect();
        assert_eq!(consumed, vec![3, 4, 2, 2]);
        assert_eq!(off, 11);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_char() {
        let (_d, p) = file_with(b"a\xffb\n");
        let (lines, _, _) = read_all(&p, 0, 1 << 20);
        assert_eq!(texts(&lines), vec!["a\u{FFFD}b"]);
    }

    #[test]
    fn oversized_line_is_hashed_not_buffered() {
        let big = vec![b'x'; 300_000];
        let mut content = b"small\n".to_vec();
        content.extend_from_slice(&big);
        content.extend_from_slice(b"\r\nafter\n");
        let (_d, p) = file_with(&content);
        let (lines, off, _) = read_all(&p, 0, 100_000);
        assert_eq!(lines.len(), 3);
        match &lines[1] {
            Line::Oversized {
                original_bytes,
                sha256,
                consumed,
            } => {
                assert_eq!(*original_bytes, 300_000);
                assert_eq!(*sha256, hex::encode(Sha256::digest(&big)));
                assert_eq!(*consumed, 300_002);
            }
            other => panic!("expected oversized, got {other:?}"),
        }
        assert_eq!(texts(&lines[2..]), vec!["after"]);
        assert_eq!(off, content.len() as u64);
        // Just above the limit but below the streaming switch still hashes the same way.
        let (_d2, p2) = file_with(&[vec![b'y'; 101], b"\n".to_vec()].concat());
        let (lines, _, _) = read_all(&p2, 0, 100);
        assert!(matches!(
            &lines[0],
            Line::Oversized {
                original_bytes: 101,
                ..
            }
        ));
    }

    #[test]
    fn skip_lines_counts_and_stops_at_partial() {
        let (_d, p) = file_with(b"1\n22\n333\n44");
        let c = AtomicU64::new(0);
        let f = open_regular(&p).unwrap().unwrap();
        let mut r = LineReader::new(f, 0, 1 << 20, &c).unwrap();
        assert_eq!(r.skip_lines(2).unwrap(), 2);
        assert_eq!(r.offset(), 5);
        assert_eq!(texts(&[r.next_line().unwrap().unwrap()]), vec!["333"]);
        assert_eq!(r.skip_lines(5).unwrap(), 0);
        assert_eq!(r.offset(), 9);
        assert_eq!(r.pending_bytes(), 2);
    }

    #[test]
    fn fingerprint_detects_rewrite_truncation_and_replacement() {
        let (d, p) = file_with(b"line one\nline two\n");
        let c = AtomicU64::new(0);
        let f = open_regular(&p).unwrap().unwrap();
        let fp = fingerprint(&f, 18, &c).unwrap();
        assert_eq!(check_identity(&f, 18, &fp, &c).unwrap(), Ok(()));
        std::fs::write(&p, b"LINE one\nline two\nmore\n").unwrap();
        let f = open_regular(&p).unwrap().unwrap();
        assert_eq!(
            check_identity(&f, 18, &fp, &c).unwrap(),
            Err(Mismatch::HeadChanged)
        );
        std::fs::write(&p, b"line").unwrap();
        let f = open_regular(&p).unwrap().unwrap();
        assert!(matches!(
            check_identity(&f, 18, &fp, &c).unwrap(),
            Err(Mismatch::Truncated { .. })
        ));
        let q = d.path().join("new");
        std::fs::write(&q, b"line one\nline two\n").unwrap();
        std::fs::rename(&q, &p).unwrap();
        let f = open_regular(&p).unwrap().unwrap();
        assert_eq!(
            check_identity(&f, 18, &fp, &c).unwrap(),
            Err(Mismatch::Replaced)
        );
    }

    #[test]
    fn symlinks_and_directories_count_as_missing() {
        let (d, p) = file_with(b"x\n");
        let link = d.path().join("link.jsonl");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(open_regular(&link).unwrap().is_none());
        assert!(open_regular(d.path()).unwrap().is_none());
        assert!(open_regular(&d.path().join("missing")).unwrap().is_none());
    }
}
