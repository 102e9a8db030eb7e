//! Where git_info comes from: a transcript line's `gitBranch` hint, or git itself run in a work
//! tree; and the origin URL (cached per cwd for chunks), stripped of the credentials that must
//! never leave the machine with it.
//!
//! Invariants:
//! - A `repo_url` never carries a password or an http(s) user/token (H29).
//! - git runs with a 5 s timeout, `GIT_TERMINAL_PROMPT=0` and `GIT_OPTIONAL_LOCKS=0` (it must never
//!   prompt or take `index.lock` away from the user); any git failure just leaves fields out.
//! - At most 64 KiB of git's output is kept, and a child that never closes its pipe cannot make
//!   us wait past the deadline.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::sink::GitInfo;

const GIT_TIMEOUT: Duration = Duration::from_secs(5);
/// git output kept (the rest is drained and dropped): only short values are ever used.
const GIT_OUTPUT_MAX: usize = 64 * 1024;
const REPO_URL_TTL: Duration = Duration::from_secs(60);

/// `(gitBranch, cwd)` of a line whose top-level `gitBranch` is a non-empty string.
pub(super) fn git_branch_of(line: &str) -> Option<(String, String)> {
    if !line.contains("\"gitBranch\"") {
        return None;
    }
    let v: Value = serde_json::from_str(line).ok()?;
    let branch = v.get("gitBranch")?.as_str().filter(|b| !b.is_empty())?;
    let cwd = v.get("cwd").and_then(Value::as_str).unwrap_or_default();
    Some((branch.to_string(), cwd.to_string()))
}

/// git_info step 2: the cwd's work tree, if it is one.
pub(super) fn git_from_work_tree(cwd: &str) -> Option<GitInfo> {
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
pub(super) fn remote_url(cwd: &str) -> String {
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
}
