//! Summary linking (sync-engine §6): find the earlier session whose last 10 lines hold `leafUuid`.
//!
//! Invariants: only regular `*.jsonl` files directly in the transcript's directory are candidates,
//! never the transcript itself, `agent-*` files or stems that are not valid session ids (so the
//! stem is safe to put in a URL path); at most the last 10 MiB of a candidate are read; an
//! unreadable, empty or missing candidate is simply not a match.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde_json::Value;

/// How many lines from the end of a candidate are searched.
const TAIL_LINES: usize = 10;
/// At most this much of a candidate is read, from its end.
const TAIL_BYTES_MAX: u64 = 10 * 1024 * 1024;
const READ_STEP: u64 = 64 * 1024;

/// `(leafUuid, summary)` of a `{"type":"summary","summary":S,"leafUuid":U}` line with S and U both
/// non-empty strings.
pub fn summary_links(line: &str) -> Option<(String, String)> {
    if !line.contains("\"summary\"") || !line.contains("\"leafUuid\"") {
        return None;
    }
    let v: Value = serde_json::from_str(line).ok()?;
    if v.get("type")?.as_str()? != "summary" {
        return None;
    }
    let non_empty = |key: &str| {
        v.get(key)?
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Some((non_empty("leafUuid")?, non_empty("summary")?))
}

/// Returns the stem of the first sibling transcript (sorted by name) whose last 10 lines contain a
/// line with top-level `uuid == leaf_uuid`.
pub fn find_linked_session(transcript: &Path, leaf_uuid: &str) -> Option<String> {
    if leaf_uuid.is_empty() {
        return None;
    }
    let dir = transcript.parent()?;
    let own_name = transcript.file_name()?.to_str()?;
    candidates(dir, own_name).into_iter().find(|stem| {
        let path = dir.join(format!("{stem}.jsonl"));
        last_lines(&path, TAIL_LINES, TAIL_BYTES_MAX)
            .map(|lines| lines.iter().any(|l| has_uuid(l, leaf_uuid)))
            .unwrap_or(false)
    })
}

/// Stems of the candidate files in `dir`, sorted by name.
fn candidates(dir: &Path, own_name: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut stems: Vec<String> = entries
        .filter_map(Result::ok)
        // `file_type` does not follow symlinks: only regular files count.
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name != own_name && !name.starts_with("agent-"))
        .filter_map(|name| name.strip_suffix(".jsonl").map(str::to_string))
        .filter(|stem| is_session_id(stem))
        .collect();
    stems.sort();
    stems
}

/// `^[A-Za-z0-9_-]{1,128}$`
fn is_session_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn has_uuid(line: &[u8], uuid: &str) -> bool {
    if !String::from_utf8_lossy(line).contains(uuid) {
        return false;
    }
    serde_json::from_slice::<Value>(line)
        .ok()
        .and_then(|v| v.get("uuid").and_then(Value::as_str).map(|u| u == uuid))
        .unwrap_or(false)
}

/// The last `n` lines of a file (without `\n`/`\r\n`; a final line without `\n` counts), reading
/// backwards from the end in steps, never more than `max` bytes. A line cut by the `max` window
/// is left out.
fn last_lines(path: &Path, n: usize, max: u64) -> io::Result<Vec<Vec<u8>>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let floor = len.saturating_sub(max);
    let mut pos = len;
    let mut tail: Vec<u8> = Vec::new();
    // Stop once the window holds n line ends before the last line (so n full lines).
    while pos > floor && count_breaks(&tail) <= n {
        let step = READ_STEP.max(tail.len() as u64).min(pos - floor);
        pos -= step;
        let mut chunk = vec![0; step as usize];
        file.read_exact_at(&mut chunk, pos)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
    }
    let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let mut lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    if pos > 0 {
        lines.remove(0); // may start mid-line
    }
    let keep = lines.len().saturating_sub(n);
    Ok(lines[keep..]
        .iter()
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
        .collect())
}

/// Line breaks in `tail`, not counting a final one.
fn count_breaks(tail: &[u8]) -> usize {
    let body = tail.strip_suffix(b"\n").unwrap_or(tail);
    body.iter().filter(|&&b| b == b'\n').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(uuid: &str) -> String {
        serde_json::json!({"type":"assistant","uuid":uuid,"message":{"content":"x"}}).to_string()
    }

    /// Writes `<stem>.jsonl` with `before` lines, the uuid line, then `after` lines.
    fn write(dir: &Path, name: &str, uuid: &str, after: usize) {
        let mut lines: Vec<String> = (0..5).map(|i| line(&format!("other-{i}"))).collect();
        lines.push(line(uuid));
        lines.extend((0..after).map(|i| line(&format!("after-{i}"))));
        std::fs::write(dir.join(name), lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn f1_match_only_within_the_last_ten_lines() {
        let dir = tempfile::tempdir().unwrap();
        let me = dir.path().join("current.jsonl");
        std::fs::write(&me, "").unwrap();
        write(dir.path(), "bbb.jsonl", "U1", 9); // 10th line from the end
        assert_eq!(find_linked_session(&me, "U1").as_deref(), Some("bbb"));
        write(dir.path(), "bbb.jsonl", "U1", 10); // 11th from the end
        assert_eq!(find_linked_session(&me, "U1"), None);
        // The first match by name wins.
        write(dir.path(), "ccc.jsonl", "U2", 0);
        write(dir.path(), "aaa.jsonl", "U2", 3);
        assert_eq!(find_linked_session(&me, "U2").as_deref(), Some("aaa"));
        // The uuid must be the top-level `uuid`, not just anywhere in the line.
        let nested =
            serde_json::json!({"uuid":"z","parentUuid":"U3","data":{"uuid":"U3"}}).to_string();
        std::fs::write(dir.path().join("ddd.jsonl"), nested + "\n").unwrap();
        assert_eq!(find_linked_session(&me, "U3"), None);
        assert_eq!(find_linked_session(&me, ""), None);
    }

    #[test]
    fn f2_current_transcript_agents_and_bad_stems_are_never_candidates() {
        let dir = tempfile::tempdir().unwrap();
        let me = dir.path().join("me.jsonl");
        write(dir.path(), "me.jsonl", "U", 0);
        write(dir.path(), "agent-abc123.jsonl", "U", 0);
        write(dir.path(), "bad stem.jsonl", "U", 0);
        write(dir.path(), "notjsonl.txt", "U", 0);
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        write(&dir.path().join("sub"), "nested.jsonl", "U", 0);
        std::fs::create_dir(dir.path().join("dir.jsonl")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("me.jsonl"), dir.path().join("link.jsonl"))
            .unwrap();
        assert_eq!(find_linked_session(&me, "U"), None);
        write(dir.path(), "ok_one-2.jsonl", "U", 0);
        assert_eq!(find_linked_session(&me, "U").as_deref(), Some("ok_one-2"));
    }

    #[test]
    fn f3_empty_or_missing_candidates_are_no_match() {
        let dir = tempfile::tempdir().unwrap();
        let me = dir.path().join("me.jsonl");
        std::fs::write(dir.path().join("empty.jsonl"), "").unwrap();
        std::fs::write(dir.path().join("blank.jsonl"), "\n\n").unwrap();
        assert_eq!(find_linked_session(&me, "U"), None);
        assert_eq!(
            find_linked_session(&dir.path().join("gone/me.jsonl"), "U"),
            None
        );
    }

    #[test]
    fn tail_reading_handles_crlf_partial_last_lines_and_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        std::fs::write(&p, "a\r\nb\nc").unwrap();
        assert_eq!(
            last_lines(&p, 10, 1024).unwrap(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(
            last_lines(&p, 2, 1024).unwrap(),
            vec![b"b".to_vec(), b"c".to_vec()]
        );
        // A long file read in several steps.
        let long: String = (0..50_000).map(|i| format!("line-{i}\n")).collect();
        std::fs::write(&p, &long).unwrap();
        let last = last_lines(&p, 3, 1 << 20).unwrap();
        assert_eq!(
            last,
            vec![
                b"line-49997".to_vec(),
                b"line-49998".to_vec(),
                b"line-49999".to_vec()
            ]
        );
        // The window cuts off a line it does not fully hold.
        std::fs::write(&p, format!("{}\nshort\n", "x".repeat(100))).unwrap();
        assert_eq!(last_lines(&p, 10, 50).unwrap(), vec![b"short".to_vec()]);
    }

    #[test]
    fn summary_lines_are_recognised() {
        let l = r#"{"type":"summary","summary":"Did things","leafUuid":"u-1"}"#;
        assert_eq!(summary_links(l), Some(("u-1".into(), "Did things".into())));
        assert_eq!(
            summary_links(r#"{"type":"summary","summary":"","leafUuid":"u"}"#),
            None
        );
        assert_eq!(
            summary_links(r#"{"type":"summary","summary":"s","leafUuid":""}"#),
            None
        );
        assert_eq!(summary_links(r#"{"type":"summary","summary":"s"}"#), None);
        assert_eq!(
            summary_links(r#"{"type":"user","summary":"s","leafUuid":"u"}"#),
            None
        );
        assert_eq!(summary_links("not json"), None);
    }
}
