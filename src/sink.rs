//! The sink seam: where acknowledged lines go.
//!
//! Two implementations exist: the confab HTTP backend (`backend.rs`) and the local archive
//! (`archive.rs`). Both speak in the wire protocol's terms (protocol.md §3), so the engine has one
//! code path for both: a sink reports positions at init, refuses a non-contiguous chunk with
//! [`SinkError::Contiguity`], and answers an accepted chunk with its last line number.
//!
//! Invariants every sink keeps:
//! - it never has more than one request in flight (the engine calls it sequentially, `&self`
//!   methods are never called concurrently by the daemon);
//! - an error tells the engine whether the chunk *may* have been stored ([`SinkError::outcome_unknown`]),
//!   so the engine refreshes before it sends anything else for that file.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Serialize;

/// The `provider` value sent on init.
pub const PROVIDER: &str = "claude-code";

/// Git facts sent in init and chunk metadata. Key order is the wire order (sync-engine §5).
#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct GitInfo {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub repo_url: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub branch: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub commit_sha: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub commit_message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub author: String,
    pub is_dirty: bool,
}

/// `metadata` of an init request. Every field is omitted when empty.
#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct InitMetadata {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cwd: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_info: Option<GitInfo>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
}

/// `POST /api/v1/sync/init` body.
#[derive(Serialize, Clone, Debug)]
pub struct InitRequest {
    pub external_id: String,
    pub transcript_path: String,
    pub provider: &'static str,
    pub metadata: InitMetadata,
}

/// What init tells us. `files` holds the raw keys; the engine validates them (H6).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitResponse {
    pub session_id: String,
    pub files: BTreeMap<String, u64>,
}

/// `metadata` of a transcript chunk. Agent chunks carry none.
#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkMetadata {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_info: Option<GitInfo>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub summary: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub first_user_message: String,
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    Transcript,
    Agent,
}

impl FileType {
    pub fn as_str(self) -> &'static str {
        match self {
            FileType::Transcript => "transcript",
            FileType::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<FileType> {
        match s {
            "transcript" => Some(FileType::Transcript),
            "agent" => Some(FileType::Agent),
            _ => None,
        }
    }
}

/// `POST /api/v1/sync/chunk` body. `lines` never contain `\n`.
#[derive(Serialize, Clone, Debug)]
pub struct ChunkRequest<'a> {
    pub session_id: &'a str,
    pub file_name: &'a str,
    pub file_type: FileType,
    pub first_line: u64,
    pub lines: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<&'a ChunkMetadata>,
}

impl ChunkRequest<'_> {
    pub fn last_line(&self) -> u64 {
        self.first_line + self.lines.len() as u64 - 1
    }
}

/// `POST /api/v1/sync/event` body.
#[derive(Serialize, Clone, Debug)]
pub struct EventRequest {
    pub session_id: String,
    pub event_type: &'static str,
    pub timestamp: String,
    pub payload: serde_json::Value,
}

/// Everything a sink can answer besides success, already classified (protocol.md §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkError {
    /// 400 contiguity: refresh and rescan from the sink's position.
    Contiguity(String),
    /// 400 "File has too many chunks": park the file (H23).
    TooManyChunks(String),
    /// 400 `Invalid request body` / `Invalid JSON body`, or a 413: the body was too big.
    BodyTooLarge(String),
    /// Any other 400: per-file backoff.
    BadRequest(String),
    /// 401, account 403s, `Access denied`: drop the session, re-read config, re-init.
    Auth(String),
    /// 404 `Session not found` on chunk or event.
    SessionGone,
    /// 5xx, storage errors: the chunk may or may not be stored.
    Server(String),
    /// Reset, bad 2xx body after the request started: outcome unknown.
    Unknown(String),
    /// No answer within the request timeout: outcome unknown, and the backend may still be
    /// working on it, so the file rests before its refresh (filesync's quiet period).
    TimedOut(String),
    /// Nothing reached the server (connect, DNS, TLS).
    NotSent(String),
    /// Misconfiguration: 3xx, wrong route 404, 415, bad URL, missing key.
    Config(String),
    /// 429 after all retries.
    RateLimited,
    /// A shutdown cancelled a wait before the request was (re)sent: nothing new was sent.
    Cancelled,
    /// A local I/O failure (archive sink).
    Local(String),
}

impl SinkError {
    /// True when a chunk that got this error may have been stored, so the file must be refreshed
    /// before anything else is sent for it (protocol.md W2, W5, W7).
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            SinkError::Server(_) | SinkError::Unknown(_) | SinkError::TimedOut(_)
        )
    }

    pub fn is_auth(&self) -> bool {
        matches!(self, SinkError::Auth(_))
    }
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkError::Contiguity(m) => write!(f, "not contiguous: {m}"),
            SinkError::TooManyChunks(m) => write!(f, "chunk limit reached: {m}"),
            SinkError::BodyTooLarge(m) => write!(f, "request body too large: {m}"),
            SinkError::BadRequest(m) => write!(f, "rejected: {m}"),
            SinkError::Auth(m) => write!(f, "not authorized: {m}"),
            SinkError::SessionGone => write!(f, "session not found (deleted on the backend?)"),
            SinkError::Server(m) => write!(f, "server error: {m}"),
            SinkError::Unknown(m) => write!(f, "outcome unknown: {m}"),
            SinkError::TimedOut(m) => write!(f, "outcome unknown, no answer in time: {m}"),
            SinkError::NotSent(m) => write!(f, "backend unreachable: {m}"),
            SinkError::Config(m) => write!(f, "configuration error: {m}"),
            SinkError::RateLimited => write!(f, "rate limited (429) after 6 attempts"),
            SinkError::Cancelled => write!(f, "cancelled by shutdown"),
            SinkError::Local(m) => write!(f, "local archive error: {m}"),
        }
    }
}

impl std::error::Error for SinkError {}

/// One destination for a session's lines.
#[async_trait]
pub trait Sink: Send + Sync {
    /// The value stored as the state's `confab_sync.backend_url` (an http(s) URL, or the archive
    /// root as a `file://` URL). Cursors are only trusted when it matches.
    fn identity(&self) -> String;

    async fn init(&self, req: &InitRequest) -> Result<InitResponse, SinkError>;

    /// Sends one chunk. `json` is `req` serialized (the engine budgets on it, H4); an HTTP sink sends
    /// exactly those bytes, the archive writes `req.lines`. Returns the sink's `last_synced_line`.
    async fn chunk(&self, req: &ChunkRequest<'_>, json: &[u8]) -> Result<u64, SinkError>;

    async fn event(&self, req: &EventRequest) -> Result<(), SinkError>;

    /// Summary linking (sync-engine §6). Best effort; errors are only logged by the caller.
    async fn patch_summary(&self, external_id: &str, summary: &str) -> Result<(), SinkError>;
}
