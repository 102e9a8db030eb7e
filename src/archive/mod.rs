//! The local archive sink (sync-engine §13): a [`Sink`] that appends acknowledged lines to files
//! under `<root>/<external_id>/` instead of sending them to a backend.
//!
//! It mimics the backend's contract (protocol.md §3) so the engine has one code path for both:
//! init reports each archived file's count of complete lines, a chunk whose `first_line` is not
//! count + 1 is refused with the backend's exact contiguity message, and an accepted chunk answers
//! its last line number.
//!
//! Layout: this module is the [`Sink`] implementation and the request checks; `session` keeps
//! each initialised session's bookkeeping, `meta` merges and writes `session.json`, `files` holds
//! the file-level primitives (torn-tail cut, append with rollback, fsync, atomic write, private
//! directories) and `names` validates every id and name before it becomes a path.
//!
//! Invariants (each submodule states its own in detail):
//! - an archived file only ever holds complete lines, and a refused chunk leaves nothing behind;
//! - nothing outside `<root>/<external_id>/` is ever written;
//! - `session.json` is replaced atomically and an empty value never blanks a stored one;
//! - directories are 0700 and files 0600; all blocking I/O runs on `spawn_blocking`.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde::Serialize;

use crate::sink::*;

mod files;
mod meta;
mod names;
mod session;
#[cfg(test)]
mod test_support;

use meta::{write_session_json, SessionMeta};
use names::{check_file_name, external_id_of, transcript_base_name, validate_external_id};
use session::{init_session, live_session, Session};

/// The archive's own files in a session directory; a transcript may not use these names.
const SESSION_JSON: &str = "session.json";
const EVENTS_JSONL: &str = "events.jsonl";
/// Prefix of the state's `confab_session_id` for archived sessions.
const SESSION_PREFIX: &str = "archive:";

/// Appends sessions to `<root>/<external_id>/`.
pub struct ArchiveSink {
    root: PathBuf,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
}

impl ArchiveSink {
    /// `root` is absolute; directories are created on init.
    /// The root is normalised (no trailing `/`, `//` or `.`) so its identity is stable.
    pub fn new(root: PathBuf) -> ArchiveSink {
        ArchiveSink {
            root: root.components().collect(),
            sessions: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The archive root this sink writes under.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[async_trait]
impl Sink for ArchiveSink {
    fn identity(&self) -> String {
        url::Url::from_file_path(&self.root)
            .map(String::from)
            .unwrap_or_else(|()| format!("file://{}", self.root.display()))
    }

    async fn init(&self, req: &InitRequest) -> Result<InitResponse, SinkError> {
        validate_external_id(&req.external_id)?;
        let transcript_name = transcript_base_name(&req.transcript_path)?;
        let root = self.root.clone();
        let sessions = self.sessions.clone();
        let external_id = req.external_id.clone();
        let incoming = SessionMeta::from_init(req);
        blocking(move || {
            let (session, files) = init_session(&root, &external_id, transcript_name, incoming)?;
            lock(&sessions).insert(external_id.clone(), session);
            Ok(InitResponse {
                session_id: format!("{SESSION_PREFIX}{external_id}"),
                files,
            })
        })
        .await
    }

    async fn chunk(&self, req: &ChunkRequest<'_>, _json: &[u8]) -> Result<u64, SinkError> {
        let external_id = external_id_of(req.session_id)?;
        check_chunk_shape(req)?;
        let buf = line_buffer(req.lines);
        let file_name = req.file_name.to_string();
        let file_type = req.file_type;
        let first_line = req.first_line;
        let count = req.lines.len() as u64;
        let meta = req.metadata.map(SessionMeta::from_chunk);
        let sessions = self.sessions.clone();
        blocking(move || {
            let mut map = lock(&sessions);
            let session = live_session(&mut map, &external_id)?;
            check_file_name(&session.transcript_name, &file_name, file_type)?;
            session.flush_meta(false);
            let last = session.append_chunk(&file_name, first_line, count, &buf)?;
            if let Some(meta) = meta {
                session.note_meta(&meta);
            }
            session.flush_meta(false);
            Ok(last)
        })
        .await
    }

    async fn event(&self, req: &EventRequest) -> Result<(), SinkError> {
        let external_id = external_id_of(&req.session_id)?;
        let mut line = serde_json::to_vec(&EventLine {
            event_type: req.event_type,
            timestamp: &req.timestamp,
            payload: &req.payload,
        })
        .map_err(|e| SinkError::BadRequest(format!("event does not serialize: {e}")))?;
        line.push(b'\n');
        let sessions = self.sessions.clone();
        blocking(move || {
            let mut map = lock(&sessions);
            let session = live_session(&mut map, &external_id)?;
            session.flush_meta(true);
            session.append_event(&line)
        })
        .await
    }

    async fn patch_summary(&self, external_id: &str, summary: &str) -> Result<(), SinkError> {
        validate_external_id(external_id).map_err(|_| {
            SinkError::BadRequest(format!(
                "invalid session id for summary link: {external_id:?}"
            ))
        })?;
        if summary.is_empty() {
            return Ok(());
        }
        let dir = self.root.join(external_id);
        let patch = SessionMeta::from_summary(summary);
        blocking(move || {
            if !dir.is_dir() {
                return Ok(());
            }
            write_session_json(&dir, &patch)
                .map_err(|e| local_err("write", &dir.join(SESSION_JSON), &e))
        })
        .await
    }
}

impl Drop for ArchiveSink {
    /// Metadata held back by the debounce must not be lost when the daemon stops.
    fn drop(&mut self) {
        for session in lock(&self.sessions).values_mut() {
            session.flush_meta(true);
        }
    }
}

#[derive(Serialize)]
struct EventLine<'a> {
    event_type: &'a str,
    timestamp: &'a str,
    payload: &'a serde_json::Value,
}

/// Runs blocking file I/O off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SinkError::Local(format!("archive task failed: {e}")))?
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn local_err(op: &str, path: &Path, e: &io::Error) -> SinkError {
    SinkError::Local(format!("{op} {}: {e}", path.display()))
}

fn check_chunk_shape(req: &ChunkRequest<'_>) -> Result<(), SinkError> {
    if req.lines.is_empty() {
        return Err(SinkError::BadRequest("lines must not be empty".into()));
    }
    if req.first_line < 1 {
        return Err(SinkError::BadRequest(
            "first_line must be at least 1".into(),
        ));
    }
    // An embedded newline would shift every later line number of the file.
    if req.lines.iter().any(|l| l.contains('\n')) {
        return Err(SinkError::BadRequest("a line contains a newline".into()));
    }
    Ok(())
}

/// Every line plus `\n`, in one buffer so the chunk is appended with one write.
fn line_buffer(lines: &[String]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for line in lines {
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
    }
    buf
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;

    use super::test_support::*;
    use super::*;

    #[tokio::test]
    async fn identity_is_file_url() {
        let sink = ArchiveSink::new(PathBuf::from("/tmp/x y/arch"));
        assert_eq!(sink.identity(), "file:///tmp/x%20y/arch");
        let sink = ArchiveSink::new(PathBuf::from("/tmp//x y/./arch/"));
        assert_eq!(sink.identity(), "file:///tmp/x%20y/arch");
        assert_eq!(sink.root(), Path::new("/tmp/x y/arch"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn contiguity_is_refused_with_backend_message() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = ArchiveSink::new(tmp.path().to_path_buf());
        let sid = sink.init(&init_req(ID)).await.unwrap().session_id;
        assert_eq!(
            send(&sink, &sid, TRANSCRIPT, 1, &lines(&["a", "b", "c"]), None).await,
            Ok(3)
        );
        let err = send(&sink, &sid, TRANSCRIPT, 3, &lines(&["x"]), None)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            SinkError::Contiguity(
                "first_line must be 4 (got 3) - chunks must be contiguous".into()
            )
        );
        let err = send(&sink, &sid, AGENT, 2, &lines(&["x"]), None)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            SinkError::Contiguity(
                "first_line must be 1 (got 2) - chunks must be contiguous".into()
            )
        );
        assert_eq!(
            send(&sink, &sid, TRANSCRIPT, 4, &lines(&["d"]), None).await,
            Ok(4)
        );
        assert_eq!(
            fs::read(tmp.path().join(ID).join(TRANSCRIPT)).unwrap(),
            b"a\nb\nc\nd\n"
        );
        assert!(
            !tmp.path().join(ID).join(AGENT).exists()
                || mode(&tmp.path().join(ID).join(AGENT)) == 0o600
        );
    }

    #[tokio::test]
    async fn lines_are_archived_byte_exact_and_counted_after_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let sink = ArchiveSink::new(root.clone());
        let sid = sink.init(&init_req(ID)).await.unwrap().session_id;
        let first = lines(&["{\"type\":\"user\"}", "", "héllo ✓ 🦀 \u{FFFD}", "\r"]);
        assert_eq!(send(&sink, &sid, TRANSCRIPT, 1, &first, None).await, Ok(4));
        assert_eq!(
            send(&sink, &sid, AGENT, 1, &lines(&["", ""]), None).await,
            Ok(2)
        );
        assert_eq!(
            send(&sink, &sid, TRANSCRIPT, 5, &lines(&["last"]), None).await,
            Ok(5)
        );
        let expected = "{\"type\":\"user\"}\n\nhéllo ✓ 🦀 \u{FFFD}\n\r\nlast\n";
        assert_eq!(
            fs::read(root.join(ID).join(TRANSCRIPT)).unwrap(),
            expected.as_bytes()
        );
        assert_eq!(fs::read(root.join(ID).join(AGENT)).unwrap(), b"\n\n");
        assert_eq!(mode(&root.join(ID).join(TRANSCRIPT)), 0o600);
        assert_eq!(mode(&root.join(ID).join(AGENT)), 0o600);
        drop(sink);

        let again = ArchiveSink::new(root.clone());
        let resp = again.init(&init_req(ID)).await.unwrap();
        let want: BTreeMap<String, u64> =
            [(TRANSCRIPT.to_string(), 5), (AGENT.to_string(), 2)].into();
        assert_eq!(resp.files, want);
        assert_eq!(
            send(&again, &resp.session_id, AGENT, 3, &lines(&["z"]), None).await,
            Ok(3)
        );
    }

    #[tokio::test]
    async fn corpus_transcript_and_agent_round_trip() {
        const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/");
        let id = "4d5611e5-241a-462a-8d15-5122611a9569";
        let sources = [
            (format!("{id}.jsonl"), format!("{CORPUS}{id}.jsonl")),
            (
                "agent-a2898e3.jsonl".to_string(),
                format!("{CORPUS}{id}/subagents/agent-a2898e3.jsonl"),
            ),
        ];
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        for (name, src) in &sources {
            let bytes = fs::read(src).unwrap();
            let all: Vec<String> = String::from_utf8(bytes.clone())
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect();
            let mut next = 0usize;
            let mut size = 1usize;
            while next < all.len() {
                // A fresh sink each round: counts must come back from init, not from memory.
                let sink = ArchiveSink::new(root.clone());
                let resp = sink.init(&init_req(id)).await.unwrap();
                assert_eq!(resp.files.get(name).copied().unwrap_or(0), next as u64);
                let end = (next + size).min(all.len());
                let got = send(
                    &sink,
                    &resp.session_id,
                    name,
                    next as u64 + 1,
                    &all[next..end],
                    None,
                )
                .await;
                assert_eq!(got, Ok(end as u64));
                next = end;
                size = size * 3 + 1;
            }
            assert_eq!(fs::read(root.join(id).join(name)).unwrap(), bytes, "{name}");
        }
    }
}
