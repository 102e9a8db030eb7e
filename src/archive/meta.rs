//! `session.json`: the session's metadata as the archive stores it, merged from init and chunk
//! metadata and from what the file already holds.
//!
//! Invariants: the file is replaced atomically; a non-empty value replaces the stored one, an
//! empty one never blanks it, and values this sink did not receive are taken from the file on disk
//! (so a summary link written by another daemon survives); `first_seen` is set once.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::files::write_atomic;
use super::SESSION_JSON;
use crate::sink::{ChunkMetadata, GitInfo, InitRequest};

/// The content of `session.json`, in its key order.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub(super) struct SessionMeta {
    provider: String,
    cwd: String,
    transcript_path: String,
    git_info: Option<serde_json::Value>,
    hostname: String,
    username: String,
    summary: String,
    first_user_message: String,
    first_seen: String,
    last_sync_at: String,
}

impl SessionMeta {
    /// Copies every non-empty value of `other` over ours.
    pub(super) fn overlay(&mut self, other: &SessionMeta) {
        for (dst, src) in [
            (&mut self.provider, &other.provider),
            (&mut self.cwd, &other.cwd),
            (&mut self.transcript_path, &other.transcript_path),
            (&mut self.hostname, &other.hostname),
            (&mut self.username, &other.username),
            (&mut self.summary, &other.summary),
            (&mut self.first_user_message, &other.first_user_message),
            (&mut self.first_seen, &other.first_seen),
            (&mut self.last_sync_at, &other.last_sync_at),
        ] {
            if !src.is_empty() {
                dst.clone_from(src);
            }
        }
        if other.git_info.is_some() {
            self.git_info.clone_from(&other.git_info);
        }
    }

    pub(super) fn from_init(req: &InitRequest) -> SessionMeta {
        SessionMeta {
            provider: req.provider.to_string(),
            cwd: req.metadata.cwd.clone(),
            transcript_path: req.transcript_path.clone(),
            git_info: req.metadata.git_info.as_ref().map(git_json),
            hostname: req.metadata.hostname.clone(),
            username: req.metadata.username.clone(),
            ..SessionMeta::default()
        }
    }

    pub(super) fn from_chunk(md: &ChunkMetadata) -> SessionMeta {
        SessionMeta {
            git_info: md.git_info.as_ref().map(git_json),
            summary: md.summary.clone(),
            first_user_message: md.first_user_message.clone(),
            ..SessionMeta::default()
        }
    }

    /// Only a summary, as a summary link patches it in.
    pub(super) fn from_summary(summary: &str) -> SessionMeta {
        SessionMeta {
            summary: summary.to_string(),
            ..SessionMeta::default()
        }
    }
}

fn git_json(g: &GitInfo) -> serde_json::Value {
    serde_json::to_value(g).unwrap_or(serde_json::Value::Null)
}

/// Merges `received` over what `session.json` holds now and replaces it atomically.
pub(super) fn write_session_json(dir: &Path, received: &SessionMeta) -> io::Result<()> {
    let path = dir.join(SESSION_JSON);
    let mut meta = fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<SessionMeta>(&b).ok())
        .unwrap_or_default();
    meta.overlay(received);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    if meta.first_seen.is_empty() {
        meta.first_seen.clone_from(&now);
    }
    meta.last_sync_at = now;
    let mut bytes = serde_json::to_vec_pretty(&meta).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(dir, SESSION_JSON, &bytes)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::test_support::*;
    use super::super::ArchiveSink;
    use super::*;
    use crate::sink::*;

    #[tokio::test]
    async fn session_json_keeps_non_empty_values() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let sink = ArchiveSink::new(root.clone());
        let sid = sink.init(&init_req(ID)).await.unwrap().session_id;
        let js = session_json(&root, ID);
        assert_eq!(js["provider"], "claude-code");
        assert_eq!(js["cwd"], "/home/u/proj");
        assert_eq!(
            js["transcript_path"],
            format!("/home/u/.claude/projects/-p/{ID}.jsonl")
        );
        assert_eq!(js["hostname"], "box");
        let first_seen = js["first_seen"].as_str().unwrap().to_string();
        assert!(!first_seen.is_empty());

        let md = ChunkMetadata {
            git_info: Some(GitInfo {
                branch: "main".into(),
                ..GitInfo::default()
            }),
            summary: "Fix the parser".into(),
            first_user_message: "hello".into(),
        };
        send(&sink, &sid, TRANSCRIPT, 1, &lines(&["a"]), Some(&md))
            .await
            .unwrap();
        // Pending metadata is written at the latest when the sink is dropped (debounce).
        drop(sink);
        let js = session_json(&root, ID);
        assert_eq!(js["summary"], "Fix the parser");
        assert_eq!(js["first_user_message"], "hello");
        assert_eq!(
            js["git_info"],
            serde_json::json!({"branch": "main", "is_dirty": false})
        );

        // A later init with empty values never blanks what is stored.
        let mut req = init_req(ID);
        req.metadata = InitMetadata::default();
        let sink = ArchiveSink::new(root.clone());
        sink.init(&req).await.unwrap();
        let js = session_json(&root, ID);
        assert_eq!(js["cwd"], "/home/u/proj");
        assert_eq!(js["username"], "alice");
        assert_eq!(js["summary"], "Fix the parser");
        assert_eq!(js["git_info"]["branch"], "main");
        assert_eq!(js["first_seen"], first_seen.as_str());
        let keys: Vec<&str> = js.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "provider",
                "cwd",
                "transcript_path",
                "git_info",
                "hostname",
                "username",
                "summary",
                "first_user_message",
                "first_seen",
                "last_sync_at"
            ]
        );
        assert_eq!(mode(&root.join(ID).join(SESSION_JSON)), 0o600);
        let leftovers = fs::read_dir(root.join(ID))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[tokio::test]
    async fn patch_summary_updates_existing_and_skips_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let sink = ArchiveSink::new(root.clone());
        sink.init(&init_req("earlier")).await.unwrap();
        sink.patch_summary("earlier", "Linked summary")
            .await
            .unwrap();
        let js = session_json(&root, "earlier");
        assert_eq!(js["summary"], "Linked summary");
        assert_eq!(js["cwd"], "/home/u/proj");
        // An empty summary never blanks it.
        sink.patch_summary("earlier", "").await.unwrap();
        assert_eq!(session_json(&root, "earlier")["summary"], "Linked summary");

        sink.patch_summary("missing", "x").await.unwrap();
        assert!(!root.join("missing").exists());
        assert!(sink.patch_summary("../etc", "x").await.is_err());
    }
}
