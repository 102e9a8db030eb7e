//! Metadata (sync-engine §5): init metadata (git, hostname, username, caps) and per-chunk metadata
//! (git_info, summary, first_user_message with sanitize → redact → strip NUL → truncate).
//!
//! Invariants:
//! - Init metadata is never redacted; every string in it is free of U+0000 (H19) and a field over
//!   the backend's cap is omitted with a warning (H33), never sent truncated.
//! - A `repo_url` never carries a password or an http(s) user/token (H29).
//! - git runs with a 5 s timeout, `GIT_TERMINAL_PROMPT=0` and `GIT_OPTIONAL_LOCKS=0` (it must never
//!   prompt or take `index.lock` away from the user); any git failure just leaves fields out.
//! - `summary` and `first_user_message` go through [`process_text`]: the redaction happens before the
//!   truncation (H18), so no fragment of a secret cut at the limit survives.
//! - [`ChunkMetaCollector::observe`] runs on every line during catch-up: it parses a line only when
//!   a cheap substring test says it may matter, and stops looking for what it already has.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::Value;

use crate::redact::Redactor;
use crate::sink::{ChunkMetadata, GitInfo, InitMetadata};

/// `summary` limit in bytes, `...` included (H18).
pub const SUMMARY_LIMIT: usize = 2048;
/// `first_user_message` limit in bytes, `...` included (H18).
pub const FIRST_USER_MESSAGE_LIMIT: usize = 4096;
/// Backend caps on init metadata (protocol.md §3.1, H33).
pub const CWD_CAP: usize = 8192;
pub const HOSTNAME_CAP: usize = 255;
pub const USERNAME_CAP: usize = 255;

const GIT_TIMEOUT: Duration = Duration::from_secs(5);
/// git output kept (the rest is drained and dropped): only short values are ever used.
const GIT_OUTPUT_MAX: usize = 64 * 1024;
/// Transcript scan for `gitBranch` at init: lines over this are skipped…
const SCAN_LINE_MAX: usize = 10 * 1024 * 1024;
/// …and the scan stops after reading this much.
const SCAN_TOTAL_MAX: u64 = 64 * 1024 * 1024;
const REPO_URL_TTL: Duration = Duration::from_secs(60);

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

fn strip_nul_git(g: &mut GitInfo) {
    for s in [
        &mut g.repo_url,
        &mut g.branch,
        &mut g.commit_sha,
        &mut g.commit_message,
        &mut g.author,
    ] {
        strip_nul(s);
    }
}

/// H19: removes every U+0000.
fn strip_nul(s: &mut String) {
    if s.contains('\0') {
        s.retain(|c| c != '\0');
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

/// `(gitBranch, cwd)` of a line whose top-level `gitBranch` is a non-empty string.
fn git_branch_of(line: &str) -> Option<(String, String)> {
    if !line.contains("\"gitBranch\"") {
        return None;
    }
    let v: Value = serde_json::from_str(line).ok()?;
    let branch = v.get("gitBranch")?.as_str().filter(|b| !b.is_empty())?;
    let cwd = v.get("cwd").and_then(Value::as_str).unwrap_or_default();
    Some((branch.to_string(), cwd.to_string()))
}

/// git_info step 2: the cwd's work tree, if it is one.
fn git_from_work_tree(cwd: &str) -> Option<GitInfo> {
    if cwd.is_empty()
        || run_git(cwd, &["rev-parse", "--is-inside-work-tree"]).as_deref() != Some("true")
    {
        return None;
    }
    let get = |args: &[&str]| run_git(cwd, args).unwrap_or_default();
    Some(GitInfo {
        repo_url: remote_url(cwd),
        branch: get(&["rev-parse", "--abbrev-ref", "HEAD"]),
        commit_sha: get(&["rev-parse", "HEAD"]),
        commit_message: get(&["log", "-1", "--format=%s"]),
        author: get(&["log", "-1", "--format=%an <%ae>"]),
        is_dirty: run_git(cwd, &["status", "--porcelain"]).is_some_and(|s| !s.is_empty()),
    })
}

/// `git config --get remote.origin.url` in `cwd`, credentials stripped; empty when unknown.
fn remote_url(cwd: &str) -> String {
    run_git(cwd, &["config", "--get", "remote.origin.url"])
        .map(|u| strip_url_credentials(&u))
        .unwrap_or_default()
}

/// H29: drops the password of a URL, and for http(s) also the user (often a token). Anything that
/// is not a URL with credentials (scp-like `git@host:o/r.git`, paths) is returned unchanged.
pub fn strip_url_credentials(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_string();
    };
    if !parsed.has_host() || (parsed.username().is_empty() && parsed.password().is_none()) {
        return url.to_string();
    }
    // Both setters only fail for URLs without a host, excluded above.
    let _ = parsed.set_password(None);
    if matches!(parsed.scheme(), "http" | "https") {
        let _ = parsed.set_username("");
    }
    parsed.to_string()
}

/// Runs git in `dir`; its trimmed stdout on success, `None` on any failure or after 5 s.
fn run_git(dir: &str, args: &[&str]) -> Option<String> {
    let mut child = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // Read stdout on a thread so a chatty git can never block on a full pipe while we wait.
    let mut stdout = child.stdout.take()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let _ = stdout
            .by_ref()
            .take(GIT_OUTPUT_MAX as u64)
            .read_to_end(&mut kept);
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        let _ = tx.send(kept);
    });
    let deadline = Instant::now() + GIT_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(25));
            }
            _ => {
                tracing::warn!(
                    "git {} in {dir}: no answer within 5 s; killed",
                    args.join(" ")
                );
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    // A grandchild could hold the pipe open: never wait past the deadline for it.
    let out = rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .ok()?;
    if !status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out).trim().to_string())
}

/// Sanitize → value-redact → remove U+0000 → truncate to `limit` bytes on a UTF-8 boundary with
/// `...` counted inside the limit (sync-engine §5). Used for `summary`, `first_user_message` and
/// the summary PATCH.
pub fn process_text(text: &str, redactor: Option<&Redactor>, limit: usize) -> String {
    let clean = sanitize(text);
    let mut out = match redactor {
        Some(r) => match r.redact_text(&clean) {
            Cow::Borrowed(_) => clean,
            Cow::Owned(o) => o,
        },
        None => clean,
    };
    strip_nul(&mut out);
    truncate_with_ellipsis(&mut out, limit);
    out
}

/// Drops `<…>` tags, decodes HTML entities, collapses Unicode whitespace runs to one space, trims.
fn sanitize(text: &str) -> String {
    static TAG: OnceLock<Regex> = OnceLock::new();
    let tag = TAG.get_or_init(|| Regex::new(r"<[^>]*>").expect("static regex"));
    let untagged = tag.replace_all(text, "");
    let decoded = html_escape::decode_html_entities(&untagged);
    decoded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Cuts `s` to at most `limit` bytes, ending in `...` when cut.
fn truncate_with_ellipsis(s: &mut String, limit: usize) {
    const ELLIPSIS: &str = "...";
    if s.len() <= limit {
        return;
    }
    let mut keep = limit.saturating_sub(ELLIPSIS.len());
    while !s.is_char_boundary(keep) {
        keep -= 1;
    }
    s.truncate(keep);
    if limit >= ELLIPSIS.len() {
        s.push_str(ELLIPSIS);
    }
}

/// Collects one transcript chunk's metadata while its lines are read.
#[derive(Default)]
pub struct ChunkMetaCollector {
    /// `(gitBranch, cwd)` of the first raw line with a branch.
    git: Option<(String, String)>,
    /// Unprocessed text of the last qualifying summary line so far.
    summary: Option<String>,
    /// Unprocessed text of the first user line with text.
    first_user: Option<String>,
}

impl ChunkMetaCollector {
    pub fn new() -> Self {
        Self::default()
    }

    /// `raw` is the line as read (for git_info), `redacted` the line as it will be sent (for
    /// `summary` and `first_user_message`). Call it for every line of the chunk, in order.
    pub fn observe(&mut self, raw: &str, redacted: &str) {
        if self.git.is_none() {
            self.git = git_branch_of(raw);
        }
        // A summary line has `"type":"summary"`, so the quoted word occurs unescaped.
        if redacted.contains("\"summary\"") {
            if let Some(s) = summary_of(redacted) {
                self.summary = Some(s);
            }
        }
        if self.first_user.is_none() && redacted.contains("\"user\"") {
            // Text that sanitizes to nothing (only tags or whitespace) does not count as text,
            // so a later user line can still provide the message.
            self.first_user =
                user_text_of(redacted).filter(|t| !sanitize(t).replace('\0', "").is_empty());
        }
    }

    pub fn finish(self, redactor: Option<&Redactor>, repos: &mut RepoUrlCache) -> ChunkMetadata {
        let git_info = self.git.map(|(branch, cwd)| {
            let mut g = GitInfo {
                repo_url: repos.get(&cwd),
                branch,
                is_dirty: false,
                ..Default::default()
            };
            strip_nul_git(&mut g);
            g
        });
        let process = |t: Option<String>, limit| {
            t.map(|t| process_text(&t, redactor, limit))
                .unwrap_or_default()
        };
        ChunkMetadata {
            git_info,
            summary: process(self.summary, SUMMARY_LIMIT),
            first_user_message: process(self.first_user, FIRST_USER_MESSAGE_LIMIT),
        }
    }
}

/// The `summary` of a top-level `"type":"summary"` line with a non-empty summary and no (or an
/// empty) `leafUuid`.
fn summary_of(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v.get("type")?.as_str()? != "summary" {
        return None;
    }
    let leaf = v
        .get("leafUuid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !leaf.is_empty() {
        return None;
    }
    v.get("summary")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The text of a `"type":"user"` line: `message.content` when a string, else its first
/// `type:"text"` element with non-empty `text`. Lines with only tool results have none.
fn user_text_of(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v.get("type")?.as_str()? != "user" {
        return None;
    }
    let text = match v.get("message")?.get("content")? {
        Value::String(s) => s.as_str(),
        Value::Array(items) => items.iter().find_map(|item| {
            (item.get("type")?.as_str()? == "text").then_some(())?;
            item.get("text")?.as_str().filter(|t| !t.is_empty())
        })?,
        _ => return None,
    };
    (!text.is_empty()).then(|| text.to_string())
}

/// Caches `git config --get remote.origin.url` per cwd for 60 s.
#[derive(Default)]
pub struct RepoUrlCache {
    entries: HashMap<String, (Instant, String)>,
}

impl RepoUrlCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The credential-free origin URL of `cwd`'s repository, or empty (also for an empty cwd).
    pub fn get(&mut self, cwd: &str) -> String {
        if cwd.is_empty() {
            return String::new();
        }
        if let Some((at, url)) = self.entries.get(cwd) {
            if at.elapsed() < REPO_URL_TTL {
                return url.clone();
            }
        }
        let url = remote_url(cwd);
        self.entries
            .insert(cwd.to_string(), (Instant::now(), url.clone()));
        url
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedactionConfig;

    fn redactor() -> Redactor {
        Redactor::from_config(&RedactionConfig {
            enabled: true,
            ..Default::default()
        })
        .unwrap()
        .unwrap()
    }

    fn git(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .args([
                "-c",
                "user.name=Ada Lovelace",
                "-c",
                "user.email=ada@example.com",
            ])
            .args([
                "-c",
                "init.defaultBranch=main",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }

    fn repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q"]);
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        git(dir.path(), &["add", "a.txt"]);
        git(dir.path(), &["commit", "-q", "-m", "First commit"]);
        git(
            dir.path(),
            &[
                "remote",
                "add",
                "origin",
                "https://user:tok@host.example/r.git",
            ],
        );
        dir
    }

    fn collect(lines: &[String], r: Option<&Redactor>) -> ChunkMetadata {
        let mut c = ChunkMetaCollector::new();
        for l in lines {
            let red = r
                .map(|r| r.redact_line(l).into_owned())
                .unwrap_or_else(|| l.clone());
            c.observe(l, &red);
        }
        c.finish(r, &mut RepoUrlCache::new())
    }

    #[test]
    fn d6_chunk_metadata_from_branch_summary_and_user_lines() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().to_str().unwrap();
        let lines = vec![
            serde_json::json!({"type":"progress","gitBranch":"","cwd":cwd}).to_string(),
            serde_json::json!({"type":"user","gitBranch":"main","cwd":cwd,
                "message":{"role":"user","content":[{"type":"tool_result","content":"x"}]}})
            .to_string(),
            serde_json::json!({"type":"user","gitBranch":"other","cwd":cwd,
                "message":{"role":"user","content":[{"type":"text","text":""},
                    {"type":"text","text":"Fix <b>the</b>\n\n  bug &amp; test"}]}})
            .to_string(),
            serde_json::json!({"type":"user","message":{"content":"later"}}).to_string(),
            serde_json::json!({"type":"summary","summary":"First","leafUuid":""}).to_string(),
            serde_json::json!({"type":"summary","summary":"Linked","leafUuid":"u-1"}).to_string(),
            serde_json::json!({"type":"summary","summary":"Second  summary"}).to_string(),
            serde_json::json!({"type":"summary","summary":""}).to_string(),
        ];
        let m = collect(&lines, None);
        let g = m.git_info.as_ref().unwrap();
        assert_eq!(
            (g.branch.as_str(), g.is_dirty, g.repo_url.as_str()),
            ("main", false, "")
        );
        assert_eq!(m.summary, "Second summary");
        assert_eq!(m.first_user_message, "Fix the bug & test");
        let wire = serde_json::to_string(&m).unwrap();
        assert!(
            wire.starts_with(r#"{"git_info":{"branch":"main","is_dirty":false},"summary""#),
            "{wire}"
        );
        // Nothing found: an empty object.
        assert_eq!(serde_json::to_string(&collect(&[], None)).unwrap(), "{}");
    }

    #[test]
    fn chunk_git_info_takes_repo_url_from_the_line_cwd() {
        let repo = repo();
        let cwd = repo.path().to_str().unwrap();
        let lines =
            vec![serde_json::json!({"type":"user","gitBranch":"feat","cwd":cwd}).to_string()];
        let g = collect(&lines, None).git_info.unwrap();
        assert_eq!(g.repo_url, "https://host.example/r.git");
        assert_eq!(g.branch, "feat");
        assert!(g.commit_sha.is_empty() && !g.is_dirty);
        // Cached: a changed origin is not seen within 60 s.
        let mut cache = RepoUrlCache::new();
        assert_eq!(cache.get(cwd), "https://host.example/r.git");
        git(
            repo.path(),
            &["remote", "set-url", "origin", "git@github.com:o/r.git"],
        );
        assert_eq!(cache.get(cwd), "https://host.example/r.git");
        assert_eq!(RepoUrlCache::new().get(cwd), "git@github.com:o/r.git");
    }

    #[test]
    fn d7_metadata_is_redacted() {
        let r = redactor();
        let key = "AKIAIOSFODNN7EXAMPLE";
        let lines = vec![
            serde_json::json!({"type":"user","message":{"content":format!("my key {key}")}})
                .to_string(),
            serde_json::json!({"type":"summary","summary":format!("uses {key}")}).to_string(),
        ];
        let m = collect(&lines, Some(&r));
        assert_eq!(m.first_user_message, "my key [REDACTED:AWS_KEY]");
        assert_eq!(m.summary, "uses [REDACTED:AWS_KEY]");
        // process_text redacts on its own too (summary PATCH).
        assert_eq!(
            process_text(key, Some(&r), SUMMARY_LIMIT),
            "[REDACTED:AWS_KEY]"
        );
    }

    #[test]
    fn x26_truncation_after_redaction() {
        let r = redactor();
        let long = "word ".repeat(1000);
        let s = process_text(&long, Some(&r), SUMMARY_LIMIT);
        assert!(
            s.len() <= SUMMARY_LIMIT && s.ends_with("..."),
            "{}",
            s.len()
        );
        // An AWS key straddling byte 4,096 of the first user message.
        let key = "AKIAIOSFODNN7EXAMPLE";
        let text = format!("{}{key} tail", "a".repeat(4090));
        let lines = vec![serde_json::json!({"type":"user","message":{"content":text}}).to_string()];
        let m = collect(&lines, Some(&r));
        let f = &m.first_user_message;
        assert!(f.len() <= FIRST_USER_MESSAGE_LIMIT && f.ends_with("..."));
        for frag in ["AKI", "IOSF", "EXAMPLE"] {
            assert!(!f.contains(frag), "{frag} survived");
        }
        // Without redaction the cut would have left a fragment: the test is meaningful.
        assert!(process_text(&text, None, FIRST_USER_MESSAGE_LIMIT).contains("AKI"));
        // Cuts fall on a UTF-8 boundary, `...` inside the limit.
        let t = process_text(&"é".repeat(10), None, 8);
        assert_eq!(t, "éé...");
        assert_eq!(process_text("short", None, 8), "short");
        assert_eq!(process_text("exactly8", None, 8), "exactly8");
    }

    #[test]
    fn x27_nul_removed_and_empty_results_omitted() {
        let lines = vec![
            serde_json::json!({"type":"summary","summary":"a\u{0}b"}).to_string(),
            serde_json::json!({"type":"user","message":{"content":"<br/>  \u{0}"}}).to_string(),
        ];
        let m = collect(&lines, Some(&redactor()));
        assert_eq!(m.summary, "ab");
        assert_eq!(m.first_user_message, "");
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"summary":"ab"}"#);
        // A user line whose text sanitizes to nothing does not hide a later one.
        let mut more = lines.clone();
        more.push(serde_json::json!({"type":"user","message":{"content":"real"}}).to_string());
        assert_eq!(collect(&more, None).first_user_message, "real");
    }

    #[test]
    fn h29_credentials_stripped_from_repo_urls() {
        let cases = [
            ("https://user:tok@host/r.git", "https://host/r.git"),
            (
                "https://ghp_abc@github.com/o/r.git",
                "https://github.com/o/r.git",
            ),
            ("http://u:p@host:8080/r", "http://host:8080/r"),
            ("ssh://git:pw@host/r.git", "ssh://git@host/r.git"),
            ("ssh://git@host/r.git", "ssh://git@host/r.git"),
            ("git@github.com:o/r.git", "git@github.com:o/r.git"),
            ("https://github.com/o/r.git", "https://github.com/o/r.git"),
            ("/srv/git/r.git", "/srv/git/r.git"),
        ];
        for (input, want) in cases {
            assert_eq!(strip_url_credentials(input), want, "{input}");
        }
    }

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

    #[test]
    fn observe_on_the_corpus() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/corpus/4d5611e5-241a-462a-8d15-5122611a9569.jsonl"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<String> = text.lines().map(String::from).collect();
        let m = collect(&lines, Some(&redactor()));
        assert_eq!(m.git_info.unwrap().branch, "spotter-dov");
        assert!(
            !m.first_user_message.is_empty()
                && m.first_user_message.len() <= FIRST_USER_MESSAGE_LIMIT
        );
        assert!(m.summary.is_empty());
    }
}
