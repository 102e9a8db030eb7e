//! Per-chunk metadata: [`ChunkMetaCollector`] watches a chunk's lines go by and yields its
//! git_info, `summary` and `first_user_message`.
//!
//! Invariants:
//! - [`ChunkMetaCollector::observe`] runs on every line during catch-up: it parses a line only when
//!   a cheap substring test says it may matter, and stops looking for what it already has.
//! - git_info comes from the raw line, `summary` and `first_user_message` from the redacted line
//!   (sync-engine §5); both texts then go through [`process_text`].
//! - The summary is the last qualifying one of the chunk, the user message the first with text
//!   that survives sanitizing.

use serde_json::Value;

use super::git::{git_branch_of, RepoUrlCache};
use super::text::{process_text, sanitize, strip_nul_git};
use super::{FIRST_USER_MESSAGE_LIMIT, SUMMARY_LIMIT};
use crate::redact::Redactor;
use crate::sink::{ChunkMetadata, GitInfo};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::test_support::{collect, git, redactor, repo};

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
