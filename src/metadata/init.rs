//! Init metadata (sync-engine §5): cwd, git_info, hostname and username, gathered once per session.
//!
//! Invariants:
//! - Never redacted (sync-engine §7).
//! - Every string is free of U+0000 (H19), and a field over the backend's cap is omitted with a
//!   warning (H33), never sent truncated.
//! - git_info comes from the transcript's first non-empty `gitBranch` (its `cwd` gives the repo
//!   URL), else from the cwd's work tree; the transcript scan is bounded in line size and total
//!   bytes so a huge transcript cannot stall startup.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use super::git::{git_branch_of, git_from_work_tree, remote_url};
use super::text::{strip_nul, strip_nul_git};
use super::{CWD_CAP, HOSTNAME_CAP, USERNAME_CAP};
use crate::sink::{GitInfo, InitMetadata};

/// Transcript scan for `gitBranch` at init: lines over this are skipped…
const SCAN_LINE_MAX: usize = 10 * 1024 * 1024;
/// …and the scan stops after reading this much.
const SCAN_TOTAL_MAX: u64 = 64 * 1024 * 1024;

/// Full init metadata for a session (git from the transcript, else from the cwd).
pub fn init_metadata(cwd: &str, transcript: &Path) -> InitMetadata {
    let git_info = git_from_transcript(transcript).or_else(|| git_from_work_tree(cwd));
    let mut m = InitMetadata {
        cwd: cwd.to_string(),
        git_info,
        hostname: hostname(),
        username: username(),
    };
    strip_nul_init(&mut m);
    apply_init_caps(&mut m);
    m
}

/// H33: omits `cwd` over 8,192 B and `hostname`/`username` over 255 B, with a warning.
pub fn apply_init_caps(m: &mut InitMetadata) {
    cap_field("cwd", &mut m.cwd, CWD_CAP);
    cap_field("hostname", &mut m.hostname, HOSTNAME_CAP);
    cap_field("username", &mut m.username, USERNAME_CAP);
}

fn cap_field(name: &str, value: &mut String, cap: usize) {
    if value.len() > cap {
        tracing::warn!(
            "init metadata: {name} is {} bytes (limit {cap}); leaving it out",
            value.len()
        );
        value.clear();
    }
}

fn strip_nul_init(m: &mut InitMetadata) {
    strip_nul(&mut m.cwd);
    strip_nul(&mut m.hostname);
    strip_nul(&mut m.username);
    if let Some(g) = &mut m.git_info {
        strip_nul_git(g);
    }
}

/// The machine's hostname, or empty.
fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The login name of our uid, else `$USER`, else empty.
fn username() -> String {
    match nix::unistd::User::from_uid(nix::unistd::getuid()) {
        Ok(Some(user)) => user.name,
        _ => std::env::var("USER").unwrap_or_default(),
    }
}

/// git_info step 1: the first transcript line with a non-empty string `gitBranch`.
fn git_from_transcript(transcript: &Path) -> Option<GitInfo> {
    let file = std::fs::File::open(transcript).ok()?;
    let mut reader = BufReader::with_capacity(64 * 1024, file.take(SCAN_TOTAL_MAX));
    let mut buf = Vec::new();
    while let Some(complete) = read_line_capped(&mut reader, &mut buf, SCAN_LINE_MAX).ok()? {
        if !complete {
            continue; // over 10 MiB: skipped
        }
        let line = String::from_utf8_lossy(&buf);
        if let Some((branch, cwd)) = git_branch_of(&line) {
            let repo_url = if cwd.is_empty() {
                String::new()
            } else {
                remote_url(&cwd)
            };
            return Some(GitInfo {
                repo_url,
                branch,
                is_dirty: false,
                ..Default::default()
            });
        }
    }
    None
}

/// Reads one line (without `\n`) into `buf`, keeping at most `max` bytes. `Ok(None)` at EOF,
/// `Ok(Some(false))` when the line was longer than `max` (its bytes are consumed, not kept).
/// A last line without `\n` counts too: at init it is only a source of hints.
fn read_line_capped(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(read_any.then_some(!too_long));
        }
        read_any = true;
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        if !too_long && buf.len() + part.len() <= max {
            buf.extend_from_slice(part);
        } else {
            too_long = true;
            buf.clear();
        }
        let used = done.unwrap_or(chunk.len());
        r.consume(used);
        if done.is_some() {
            return Ok(Some(!too_long));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::test_support::repo;

    #[test]
    fn x41_caps_and_nul() {
        let mut m = InitMetadata {
            cwd: "/a".into(),
            git_info: None,
            hostname: "h".repeat(300),
            username: "u".repeat(255),
        };
        apply_init_caps(&mut m);
        assert_eq!((m.hostname.as_str(), m.username.len()), ("", 255));
        let json = serde_json::to_string(&m).unwrap();
        assert!(!json.contains("hostname"), "{json}");
        m.cwd = "c".repeat(CWD_CAP + 1);
        m.username = "u".repeat(256);
        apply_init_caps(&mut m);
        assert!(m.cwd.is_empty() && m.username.is_empty());

        let dir = tempfile::tempdir().unwrap();
        let m = init_metadata("/no/such\u{0}dir", &dir.path().join("none.jsonl"));
        assert_eq!(m.cwd, "/no/suchdir");
        assert!(m.git_info.is_none());
        assert!(!m.hostname.is_empty() && !m.username.is_empty());
    }

    #[test]
    fn init_git_from_the_cwd_work_tree() {
        let repo = repo();
        let cwd = repo.path().to_str().unwrap();
        let missing = repo.path().join("missing.jsonl");
        let g = init_metadata(cwd, &missing).git_info.unwrap();
        assert_eq!(g.repo_url, "https://host.example/r.git");
        assert_eq!(g.branch, "main");
        assert_eq!(g.commit_sha.len(), 40);
        assert_eq!(g.commit_message, "First commit");
        assert_eq!(g.author, "Ada Lovelace <ada@example.com>");
        assert!(!g.is_dirty);
        std::fs::write(repo.path().join("new.txt"), "n").unwrap();
        assert!(init_metadata(cwd, &missing).git_info.unwrap().is_dirty);
        // A subdirectory is in the work tree too; a plain directory is not.
        std::fs::create_dir(repo.path().join("sub")).unwrap();
        assert!(
            init_metadata(repo.path().join("sub").to_str().unwrap(), &missing)
                .git_info
                .is_some()
        );
        let plain = tempfile::tempdir().unwrap();
        assert!(init_metadata(plain.path().to_str().unwrap(), &missing)
            .git_info
            .is_none());
    }

    #[test]
    fn init_git_prefers_the_transcript_and_skips_huge_lines() {
        let repo = repo();
        let cwd = repo.path().to_str().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t.jsonl");
        let huge = format!(
            r#"{{"gitBranch":"huge","cwd":"{cwd}","pad":"{}"}}"#,
            "x".repeat(SCAN_LINE_MAX)
        );
        let lines = [
            "not json \"gitBranch\"".to_string(),
            r#"{"type":"user","gitBranch":""}"#.to_string(),
            huge,
            serde_json::json!({"type":"user","gitBranch":"feature/x","cwd":cwd}).to_string(),
        ];
        std::fs::write(&t, lines.join("\n") + "\n").unwrap();
        let plain = tempfile::tempdir().unwrap();
        let g = init_metadata(plain.path().to_str().unwrap(), &t)
            .git_info
            .unwrap();
        assert_eq!(
            g,
            GitInfo {
                repo_url: "https://host.example/r.git".into(),
                branch: "feature/x".into(),
                ..Default::default()
            }
        );
        // No branch in the transcript: fall back to the cwd's work tree.
        std::fs::write(&t, "{\"type\":\"user\"}\n").unwrap();
        assert_eq!(init_metadata(cwd, &t).git_info.unwrap().branch, "main");
    }

    #[test]
    fn read_line_capped_reports_long_lines_and_unterminated_tails() {
        let data = b"abc\n0123456789\nxy".to_vec();
        let mut r = BufReader::with_capacity(4, &data[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line_capped(&mut r, &mut buf, 5).unwrap(), Some(true));
        assert_eq!(buf, b"abc");
        assert_eq!(read_line_capped(&mut r, &mut buf, 5).unwrap(), Some(false));
        assert_eq!(read_line_capped(&mut r, &mut buf, 5).unwrap(), Some(true));
        assert_eq!(buf, b"xy");
        assert_eq!(read_line_capped(&mut r, &mut buf, 5).unwrap(), None);
    }
}
