//! Validation of everything that becomes a path in the archive: the session's external id and
//! the names of archived files.
//!
//! Invariant: nothing outside `<root>/<external_id>/` is ever written, and no transcript or agent
//! file can take the name of one of the archive's own files (`session.json`, `events.jsonl`,
//! `*.tmp`): ids and names are checked here before they are joined to a path.

use std::path::Path;

use super::{EVENTS_JSONL, SESSION_JSON, SESSION_PREFIX};
use crate::sink::{FileType, SinkError};

/// `^[A-Za-z0-9_-]{1,128}$`
pub(super) fn validate_external_id(id: &str) -> Result<(), SinkError> {
    if (1..=128).contains(&id.len()) && id.bytes().all(is_id_byte) {
        Ok(())
    } else {
        Err(SinkError::Config(format!(
            "invalid session id for the archive: {id:?}"
        )))
    }
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// `agent-<id>.jsonl` with an id of `[A-Za-z0-9_-]{1,200}`.
pub(super) fn is_agent_name(name: &str) -> bool {
    name.strip_prefix("agent-")
        .and_then(|rest| rest.strip_suffix(".jsonl"))
        .is_some_and(|id| (1..=200).contains(&id.len()) && id.bytes().all(is_id_byte))
}

/// The transcript's base name, refused when it would collide with the archive's own files
/// (`session.json`, `events.jsonl`, `*.tmp`, which init deletes) or is not a plain name.
pub(super) fn transcript_base_name(transcript_path: &str) -> Result<String, SinkError> {
    let name = Path::new(transcript_path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let reserved = name == SESSION_JSON || name == EVENTS_JSONL || name.ends_with(".tmp");
    if name.is_empty() || reserved || name.contains('/') || name.contains('\0') {
        return Err(SinkError::Config(format!(
            "transcript name {name:?} cannot be archived (reserved or invalid)"
        )));
    }
    Ok(name.to_string())
}

pub(super) fn external_id_of(session_id: &str) -> Result<String, SinkError> {
    session_id
        .strip_prefix(SESSION_PREFIX)
        .filter(|id| validate_external_id(id).is_ok())
        .map(str::to_string)
        .ok_or(SinkError::SessionGone)
}

/// The name of an archived file must match its declared type: the session's transcript, or an
/// agent file.
pub(super) fn check_file_name(
    transcript_name: &str,
    name: &str,
    file_type: FileType,
) -> Result<(), SinkError> {
    let expected = if name == transcript_name {
        FileType::Transcript
    } else if is_agent_name(name) {
        FileType::Agent
    } else {
        return Err(SinkError::BadRequest(format!("invalid file_name {name:?}")));
    };
    if expected != file_type {
        return Err(SinkError::BadRequest(format!(
            "file_type {} does not match file_name {name:?}",
            file_type.as_str()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::test_support::*;
    use super::super::ArchiveSink;
    use crate::sink::*;

    #[tokio::test]
    async fn invalid_ids_and_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = ArchiveSink::new(tmp.path().to_path_buf());
        for bad in ["", "../x", "a/b", "a.b", &"x".repeat(129)] {
            let mut req = init_req("ok");
            req.external_id = bad.to_string();
            assert!(
                matches!(sink.init(&req).await, Err(SinkError::Config(_))),
                "{bad:?}"
            );
        }
        for name in ["session.json", "events.jsonl"] {
            let mut req = init_req("ok");
            req.transcript_path = format!("/home/u/.claude/projects/-p/{name}");
            assert!(
                matches!(sink.init(&req).await, Err(SinkError::Config(_))),
                "{name}"
            );
        }
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "nothing created"
        );

        let sid = sink.init(&init_req(ID)).await.unwrap().session_id;
        for name in [
            "session.json",
            "events.jsonl",
            "agent-.jsonl",
            "../x.jsonl",
            "other.jsonl",
            "agent-a/b.jsonl",
        ] {
            let err = send(&sink, &sid, name, 1, &lines(&["x"]), None)
                .await
                .unwrap_err();
            assert!(matches!(err, SinkError::BadRequest(_)), "{name}: {err:?}");
        }
        // Wrong file_type for the name.
        let ls = lines(&["x"]);
        let req = ChunkRequest {
            session_id: &sid,
            file_name: TRANSCRIPT,
            file_type: FileType::Agent,
            first_line: 1,
            lines: &ls,
            metadata: None,
        };
        assert!(matches!(
            sink.chunk(&req, b"").await,
            Err(SinkError::BadRequest(_))
        ));
        // A line with an embedded newline would break numbering.
        let err = send(&sink, &sid, AGENT, 1, &lines(&["a\nb"]), None)
            .await
            .unwrap_err();
        assert!(matches!(err, SinkError::BadRequest(_)));
        // Unknown session ids look like a deleted backend session.
        let err = send(&sink, "archive:other", AGENT, 1, &lines(&["a"]), None)
            .await
            .unwrap_err();
        assert_eq!(err, SinkError::SessionGone);
    }
}
