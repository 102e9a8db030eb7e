//! Line reader + chunk budgeting (sync-engine §4, H2, H4, H5, H7).
//!
//! Input: 8 parameter bytes, then the file content. The first part of the content is written,
//! read to EOF from a fuzzed offset, the rest is appended (a growing transcript) and reading goes
//! on with the same reader. Checked against a direct split of the bytes:
//! - only complete lines come out, none contains `\n`, `\r\n`/`\n` are stripped, invalid UTF-8 is
//!   replaced, lines over `max_raw` are `Oversized` with the exact length and SHA-256;
//! - consumed bytes add up to the reader's offset; the unterminated rest is `pending_bytes`;
//! - `skip_lines(n)` lands where n `next_line` calls would;
//! - the fingerprint at the final offset matches the file, and a flipped byte before the offset
//!   or a truncation below it is reported as the right `Mismatch` (H3);
//! - `json_str_len` equals serde_json's length, and a budgeted chunk's real encoded body is
//!   `base + Σcost + commas`, within the target unless it holds one line, greedy, and ≤ max_lines.
#![no_main]

#[path = "common.rs"]
mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::AtomicU64;

use confab_sync::chunker::{encode, json_str_len, placeholder, Budget};
use confab_sync::reader::{check_identity, fingerprint, Line, LineReader, Mismatch};
use confab_sync::sink::{ChunkRequest, FileType};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

/// What the reader must return for one raw line (terminator included).
fn expected_line(raw: &[u8], max_raw: usize) -> Line {
    let mut body = &raw[..raw.len() - 1];
    if body.last() == Some(&b'\r') {
        body = &body[..body.len() - 1];
    }
    if body.len() > max_raw {
        Line::Oversized {
            original_bytes: body.len() as u64,
            sha256: hex::encode(Sha256::digest(body)),
            consumed: raw.len() as u64,
        }
    } else {
        Line::Text {
            text: String::from_utf8_lossy(body).into_owned(),
            consumed: raw.len() as u64,
        }
    }
}

/// The complete lines of `content` from `offset`, as the reader must return them.
fn split_lines(content: &[u8], offset: usize, max_raw: usize) -> Vec<Line> {
    let mut out = Vec::new();
    let mut start = offset;
    for i in memchr_all(&content[offset..]) {
        let end = offset + i + 1;
        out.push(expected_line(&content[start..end], max_raw));
        start = end;
    }
    out
}

fn memchr_all(bytes: &[u8]) -> Vec<usize> {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .map(|(i, _)| i)
        .collect()
}

fn read_to_eof(reader: &mut LineReader<'_>, out: &mut Vec<Line>) {
    while let Some(line) = reader.next_line().expect("read") {
        if let Line::Text { text, .. } = &line {
            assert!(!text.contains('\n'), "line contains a newline: {text:?}");
        }
        out.push(line);
    }
}

fn line_text(line: &Line) -> String {
    match line {
        Line::Text { text, .. } => text.clone(),
        Line::Oversized {
            original_bytes,
            sha256,
            ..
        } => placeholder(*original_bytes, sha256),
    }
}

fn body_len(lines: &[String]) -> usize {
    encode(&ChunkRequest {
        session_id: "s",
        file_name: "f.jsonl",
        file_type: FileType::Transcript,
        first_line: 1,
        lines,
        metadata: None,
    })
    .len()
}

/// Cuts `lines` into chunks with [`Budget`] the way the engine does and checks every chunk.
fn check_chunks(lines: &[String], target_extra: usize, max_lines: usize) {
    let costs: Vec<usize> = lines.iter().map(|l| json_str_len(l)).collect();
    for (line, &cost) in lines.iter().zip(&costs) {
        assert_eq!(cost, serde_json::to_string(line).unwrap().len(), "{line:?}");
    }
    let base = body_len(&[]);
    let target = base + target_extra;
    let mut i = 0;
    while i < lines.len() {
        let mut budget = Budget::new(target, base, max_lines);
        let mut j = i;
        while j < lines.len() && budget.try_add(costs[j]) {
            j += 1;
        }
        let n = j - i;
        assert!(n >= 1, "empty chunk");
        assert_eq!(budget.count(), n);
        assert!(n <= max_lines);
        let predicted = base + costs[i..j].iter().sum::<usize>() + (n - 1);
        let real = body_len(&lines[i..j]);
        assert_eq!(real, predicted, "budget differs from the encoded body");
        if n > 1 {
            assert!(real <= target, "multi-line chunk over target");
        }
        if j < lines.len() && n < max_lines {
            assert!(real + 1 + costs[j] > target, "chunk closed early");
        }
        i = j;
    }
}

/// H3: the cursor's fingerprint matches the unchanged file, and a rewrite of a byte before the
/// offset (same inode, same size) or a truncation below it is caught.
fn check_fingerprints(path: &std::path::Path, content: &[u8], offset: u64) {
    let counter = AtomicU64::new(0);
    let file = File::open(path).unwrap();
    let fp = fingerprint(&file, offset, &counter).unwrap();
    assert_eq!(fp.head_len, offset.min(1024));
    assert_eq!(
        check_identity(&file, offset, &fp, &counter).unwrap(),
        Ok(())
    );
    if offset == 0 {
        return;
    }
    let mut changed = content.to_vec();
    changed[0] ^= 0x01;
    std::fs::write(path, &changed).unwrap();
    assert_eq!(
        check_identity(&file, offset, &fp, &counter).unwrap(),
        Err(Mismatch::HeadChanged)
    );
    let last = offset as usize - 1;
    changed[0] ^= 0x01;
    changed[last] ^= 0x01;
    std::fs::write(path, &changed).unwrap();
    let expected = if offset <= 1024 {
        Mismatch::HeadChanged
    } else {
        Mismatch::TailChanged
    };
    assert_eq!(
        check_identity(&file, offset, &fp, &counter).unwrap(),
        Err(expected)
    );
    std::fs::write(path, &content[..last]).unwrap();
    assert_eq!(
        check_identity(&file, offset, &fp, &counter).unwrap(),
        Err(Mismatch::Truncated {
            size: last as u64,
            offset
        })
    );
}

fuzz_target!(|data: &[u8]| {
    let (p, content) = common::params::<8>(data);
    let split = usize::from(p[3]) * content.len() / 255;
    let offset = usize::from(u16::from_le_bytes([p[0], p[1]])) % (split + 1);
    let max_raw = if p[2] < 0x80 {
        usize::from(p[2] & 0x3f)
    } else {
        1 << 20
    };
    let skip = u64::from(p[4] % 16);
    let target_extra = usize::from(u16::from_le_bytes([p[5], p[6]]));
    let max_lines = usize::from(p[7] % 16) + 1;

    // Phase 1: the first `split` bytes; phase 2: the rest appended to the same file.
    let path = common::write_file("reader.jsonl", &content[..split]);
    let counter = AtomicU64::new(0);
    let file = File::open(&path).unwrap();
    let mut reader = LineReader::new(file, offset as u64, max_raw, &counter).unwrap();
    let mut got = Vec::new();
    read_to_eof(&mut reader, &mut got);
    let first = split_lines(&content[..split], offset, max_raw);
    assert_eq!(got, first, "phase 1 lines");
    let consumed: u64 = got.iter().map(Line::consumed).sum();
    assert_eq!(reader.offset(), offset as u64 + consumed);
    assert_eq!(reader.pending_bytes(), split as u64 - reader.offset());

    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&content[split..])
        .unwrap();
    read_to_eof(&mut reader, &mut got);
    let all = split_lines(content, offset, max_raw);
    assert_eq!(got, all, "lines after the file grew");
    let consumed: u64 = got.iter().map(Line::consumed).sum();
    assert_eq!(reader.offset(), offset as u64 + consumed);
    assert_eq!(
        reader.pending_bytes(),
        content.len() as u64 - reader.offset()
    );

    // skip_lines(n) then next_line == the (n+1)-th line.
    let file = File::open(&path).unwrap();
    let mut skipper = LineReader::new(file, offset as u64, max_raw, &counter).unwrap();
    let skipped = skipper.skip_lines(skip).unwrap();
    assert_eq!(skipped, skip.min(all.len() as u64));
    let skipped_bytes: u64 = all[..skipped as usize].iter().map(Line::consumed).sum();
    assert_eq!(skipper.offset(), offset as u64 + skipped_bytes);
    assert_eq!(
        skipper.next_line().unwrap(),
        all.get(skipped as usize).cloned()
    );

    check_fingerprints(&path, content, reader.offset());

    let texts: Vec<String> = all.iter().map(line_text).collect();
    check_chunks(&texts, target_extra, max_lines);
});
