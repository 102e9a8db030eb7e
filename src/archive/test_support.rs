//! Shared fixtures of the archive's unit tests: a session id and file names, init and chunk
//! requests, and readers for what landed on disk.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{ArchiveSink, SESSION_JSON};
use crate::sink::*;

pub(super) const ID: &str = "62d346b1-08c1-4949-8229-f1eb8b44cb46";
pub(super) const TRANSCRIPT: &str = "62d346b1-08c1-4949-8229-f1eb8b44cb46.jsonl";
pub(super) const AGENT: &str = "agent-a1b2c3d4.jsonl";

pub(super) fn init_req(id: &str) -> InitRequest {
    InitRequest {
        external_id: id.to_string(),
        transcript_path: format!("/home/u/.claude/projects/-p/{id}.jsonl"),
        provider: PROVIDER,
        metadata: InitMetadata {
            cwd: "/home/u/proj".into(),
            git_info: None,
            hostname: "box".into(),
            username: "alice".into(),
        },
    }
}

pub(super) fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub(super) async fn send(
    sink: &ArchiveSink,
    session: &str,
    file: &str,
    first: u64,
    ls: &[String],
    md: Option<&ChunkMetadata>,
) -> Result<u64, SinkError> {
    let file_type = if file.starts_with("agent-") {
        FileType::Agent
    } else {
        FileType::Transcript
    };
    let req = ChunkRequest {
        session_id: session,
        file_name: file,
        file_type,
        first_line: first,
        lines: ls,
        metadata: md,
    };
    let json = serde_json::to_vec(&req).unwrap();
    sink.chunk(&req, &json).await
}

pub(super) fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o777
}

pub(super) fn session_json(root: &Path, id: &str) -> serde_json::Value {
    serde_json::from_slice(&fs::read(root.join(id).join(SESSION_JSON)).unwrap()).unwrap()
}
