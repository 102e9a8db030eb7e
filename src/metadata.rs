//! Metadata (sync-engine §5): init metadata (git, hostname, username, caps) and per-chunk metadata
//! (git_info, summary, first_user_message with sanitize → redact → strip NUL → truncate).
//! STUB: filled in by the metadata work.

use std::path::Path;

use crate::redact::Redactor;
use crate::sink::{ChunkMetadata, InitMetadata};

/// Full init metadata for a session (git from the transcript, else from the cwd).
pub fn init_metadata(cwd: &str, transcript: &Path) -> InitMetadata {
    let _ = transcript;
    InitMetadata { cwd: cwd.to_string(), ..Default::default() }
}

/// Collects one transcript chunk's metadata while its lines are read.
#[derive(Default)]
pub struct ChunkMetaCollector {}

/// Caches `git config --get remote.origin.url` per cwd for 60 s.
#[derive(Default)]
pub struct RepoUrlCache {}

impl ChunkMetaCollector {
    pub fn new() -> Self {
        Self::default()
    }
    /// `raw` is the line as read (for git_info), `redacted` the line as it will be sent.
    pub fn observe(&mut self, raw: &str, redacted: &str) {
        let _ = (raw, redacted);
    }
    pub fn finish(self, redactor: Option<&Redactor>, repos: &mut RepoUrlCache) -> ChunkMetadata {
        let _ = (redactor, repos);
        ChunkMetadata::default()
    }
}

/// sanitize → redact → strip NUL → truncate to `limit` bytes with `...`.
pub fn process_text(text: &str, redactor: Option<&Redactor>, limit: usize) -> String {
    let _ = (redactor, limit);
    text.to_string()
}
