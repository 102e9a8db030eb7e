//! Session bookkeeping: what the sink knows about each initialised session (its directory, its
//! transcript name, each archived file's [`Cursor`]) and the metadata waiting to be written.
//!
//! Invariants:
//! - init cleans the session directory (leftover `*.tmp` deleted, torn tails cut, modes narrowed)
//!   and reports each archived file's count of complete lines;
//! - a chunk whose `first_line` is not count + 1 is refused with the backend's exact contiguity
//!   message and leaves the file untouched; the cached count is trusted only while the file's
//!   length equals the cached length, and is dropped after a failure, so the next chunk recounts;
//! - a session whose directory disappeared is `SessionGone` (like the backend's 404), so the
//!   engine re-initialises it;
//! - `session.json` is rewritten at most once per [`META_DEBOUNCE`] for metadata changes (pending
//!   changes skip the debounce on drop and before an event), and at least every [`META_REFRESH`]
//!   while chunks arrive; a failed write is retried later, since the lines are already stored.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::files::{
    append, ensure_private_dir, open_for_append, restrict_file, scan_and_cut, write_synced, Cursor,
};
use super::meta::{write_session_json, SessionMeta};
use super::names::is_agent_name;
use super::{local_err, EVENTS_JSONL, SESSION_JSON};
use crate::sink::SinkError;

/// `session.json` is rewritten at most this often for metadata changes.
const META_DEBOUNCE: Duration = Duration::from_secs(1);
/// ... and at least this often while chunks arrive, so `last_sync_at` stays roughly current.
const META_REFRESH: Duration = Duration::from_secs(60);

/// What this sink knows about one initialised session.
pub(super) struct Session {
    dir: PathBuf,
    pub(super) transcript_name: String,
    files: HashMap<String, Cursor>,
    /// Values received from init and chunk metadata (empty = not received).
    received: SessionMeta,
    /// `received` holds something `session.json` does not have yet.
    meta_dirty: bool,
    meta_written_at: Instant,
}

impl Session {
    /// Appends `buf` (holding `count` lines starting at `first_line`) to `file_name`.
    pub(super) fn append_chunk(
        &mut self,
        file_name: &str,
        first_line: u64,
        count: u64,
        buf: &[u8],
    ) -> Result<u64, SinkError> {
        let path = self.dir.join(file_name);
        let mut cursor = self.files.get(file_name).copied();
        let result = append_checked(&self.dir, &path, &mut cursor, first_line, buf);
        match cursor {
            Some(c) => self.files.insert(file_name.to_string(), c),
            None => self.files.remove(file_name),
        };
        result?;
        Ok(first_line + count - 1)
    }

    /// Records chunk metadata; `session.json` is rewritten only when a value changed.
    pub(super) fn note_meta(&mut self, meta: &SessionMeta) {
        let before = self.received.clone();
        self.received.overlay(meta);
        if self.received != before {
            self.meta_dirty = true;
        }
    }

    /// Writes `session.json` when something is pending and the debounce allows it (or `force`).
    /// A failure is logged and retried later: the lines are already stored, so the chunk stands.
    pub(super) fn flush_meta(&mut self, force: bool) {
        let age = self.meta_written_at.elapsed();
        let due = self.meta_dirty || age >= META_REFRESH;
        if !due || (!force && age < META_DEBOUNCE) {
            return;
        }
        match write_session_json(&self.dir, &self.received) {
            Ok(()) => {
                self.meta_dirty = false;
                self.meta_written_at = Instant::now();
            }
            Err(e) => tracing::warn!(
                "archive: writing {}: {e}",
                self.dir.join(SESSION_JSON).display()
            ),
        }
    }

    /// Appends one event line to `events.jsonl` (events are not numbered: no contiguity check).
    pub(super) fn append_event(&self, line: &[u8]) -> Result<(), SinkError> {
        let path = self.dir.join(EVENTS_JSONL);
        let mut cursor = None;
        append(&self.dir, &path, &mut cursor, line).map_err(|e| local_err("append to", &path, &e))
    }
}

/// The initialised session, or `SessionGone` (like the backend's 404) when it was never initialised
/// here or its directory disappeared, so the engine re-initialises it.
pub(super) fn live_session<'a>(
    map: &'a mut HashMap<String, Session>,
    external_id: &str,
) -> Result<&'a mut Session, SinkError> {
    let dir = match map.get(external_id) {
        Some(s) => s.dir.clone(),
        None => return Err(SinkError::SessionGone),
    };
    match fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            map.remove(external_id);
            Err(SinkError::SessionGone)
        }
        Err(e) => Err(local_err("stat", &dir, &e)),
        Ok(m) if !m.is_dir() => Err(SinkError::Local(format!(
            "{} is not a directory",
            dir.display()
        ))),
        Ok(_) => Ok(map.get_mut(external_id).expect("checked above")),
    }
}

/// Creates the directories, cleans the session directory and counts its files.
pub(super) fn init_session(
    root: &Path,
    external_id: &str,
    transcript_name: String,
    incoming: SessionMeta,
) -> Result<(Session, BTreeMap<String, u64>), SinkError> {
    ensure_private_dir(root).map_err(|e| local_err("create", root, &e))?;
    let dir = root.join(external_id);
    ensure_private_dir(&dir).map_err(|e| local_err("create", &dir, &e))?;
    let mut files = HashMap::new();
    let mut reported = BTreeMap::new();
    for entry in fs::read_dir(&dir).map_err(|e| local_err("list", &dir, &e))? {
        let entry = entry.map_err(|e| local_err("list", &dir, &e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let path = entry.path();
        if name.ends_with(".tmp") {
            let _ = fs::remove_file(&path);
            continue;
        }
        let archived = name == transcript_name || is_agent_name(&name);
        if !archived && name != EVENTS_JSONL {
            continue;
        }
        let cursor = scan_and_cut(&path).map_err(|e| local_err("scan", &path, &e))?;
        restrict_file(&path);
        if archived {
            files.insert(name.clone(), cursor);
            reported.insert(name, cursor.lines);
        }
    }
    write_session_json(&dir, &incoming)
        .map_err(|e| local_err("write", &dir.join(SESSION_JSON), &e))?;
    let session = Session {
        dir,
        transcript_name,
        files,
        received: incoming,
        meta_dirty: false,
        meta_written_at: Instant::now(),
    };
    Ok((session, reported))
}

/// Contiguity check, then append. `cursor` is updated to the file's state afterwards (`None`
/// when it is unknown, so the next call recounts).
fn append_checked(
    dir: &Path,
    path: &Path,
    cursor: &mut Option<Cursor>,
    first_line: u64,
    buf: &[u8],
) -> Result<(), SinkError> {
    let (file, current) = match open_for_append(dir, path, *cursor) {
        Ok(x) => x,
        Err(e) => {
            *cursor = None;
            return Err(local_err("open", path, &e));
        }
    };
    *cursor = Some(current);
    if current.lines + 1 != first_line {
        return Err(SinkError::Contiguity(format!(
            "first_line must be {} (got {first_line}) - chunks must be contiguous",
            current.lines + 1
        )));
    }
    write_synced(file, current, cursor, buf).map_err(|e| local_err("append to", path, &e))
}

#[cfg(test)]
mod tests {
    //! Failure injection note: tests run as root, and root ignores permission bits, so a chmod'ed
    //! read-only directory would not fail. Instead the target path is replaced by a directory:
    //! opening it for append fails with EISDIR for any user, which exercises the same error path
    //! (open/write failure → `SinkError::Local`, position unchanged, recovery when fixed).

    use std::fs::OpenOptions;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use super::super::test_support::*;
    use super::super::{lock, ArchiveSink};
    use super::*;
    use crate::sink::*;

    #[tokio::test]
    async fn init_on_empty_root_creates_private_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("a/b/archive");
        let sink = ArchiveSink::new(root.clone());
        let resp = sink.init(&init_req(ID)).await.unwrap();
        assert_eq!(resp.session_id, format!("archive:{ID}"));
        assert!(resp.files.is_empty());
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join(ID)), 0o700);
        assert_eq!(mode(&root.join(ID).join(SESSION_JSON)), 0o600);
    }

    #[tokio::test]
    async fn wider_dirs_are_narrowed_to_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("archive");
        fs::create_dir_all(root.join(ID)).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(root.join(ID), fs::Permissions::from_mode(0o777)).unwrap();
        ArchiveSink::new(root.clone())
            .init(&init_req(ID))
            .await
            .unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join(ID)), 0o700);
    }

    #[tokio::test]
    async fn torn_tails_are_cut_at_init() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let sink = ArchiveSink::new(root.clone());
        let sid = sink.init(&init_req(ID)).await.unwrap().session_id;
        send(&sink, &sid, TRANSCRIPT, 1, &lines(&["one", "two"]), None)
            .await
            .unwrap();
        let ev = EventRequest {
            session_id: sid.clone(),
            event_type: "session_end",
            timestamp: "2026-03-28T09:08:15.123Z".into(),
            payload: serde_json::json!({"session_id": ID, "reason": "exit"}),
        };
        sink.event(&ev).await.unwrap();
        drop(sink);

        let dir = root.join(ID);
        let append_raw = |name: &str, bytes: &[u8]| {
            let mut f = OpenOptions::new()
                .append(true)
                .create(true)
                .open(dir.join(name))
                .unwrap();
            f.write_all(bytes).unwrap();
        };
        append_raw(TRANSCRIPT, b"{\"half\":");
        append_raw(EVENTS_JSONL, b"{\"event_type\":\"sess");
        append_raw(AGENT, b"no newline at all");
        // An unrelated file and a leftover tmp: the first is ignored, the second deleted.
        append_raw("notes.txt", b"x\ny\n");
        append_raw("session.json.999.tmp", b"{");

        let sink = ArchiveSink::new(root.clone());
        let resp = sink.init(&init_req(ID)).await.unwrap();
        let want: BTreeMap<String, u64> =
            [(TRANSCRIPT.to_string(), 2), (AGENT.to_string(), 0)].into();
        assert_eq!(resp.files, want);
        assert_eq!(fs::read(dir.join(TRANSCRIPT)).unwrap(), b"one\ntwo\n");
        assert_eq!(fs::read(dir.join(AGENT)).unwrap(), b"");
        let events = fs::read_to_string(dir.join(EVENTS_JSONL)).unwrap();
        assert_eq!(
            events,
            format!(
                "{{\"event_type\":\"session_end\",\"timestamp\":\"2026-03-28T09:08:15.123Z\",\
                 \"payload\":{{\"session_id\":\"{ID}\",\"reason\":\"exit\"}}}}\n"
            )
        );
        assert!(!dir.join("session.json.999.tmp").exists());
        assert!(dir.join("notes.txt").exists());
        // The lines after the cut arrive once, continuing the count.
        assert_eq!(
            send(
                &sink,
                &resp.session_id,
                TRANSCRIPT,
                3,
                &lines(&["three"]),
                None
            )
            .await,
            Ok(3)
        );
        assert_eq!(
            fs::read(dir.join(TRANSCRIPT)).unwrap(),
            b"one\ntwo\nthree\n"
        );
        sink.event(&ev).await.unwrap();
        assert_eq!(
            fs::read_to_string(dir.join(EVENTS_JSONL))
                .unwrap()
                .lines()
                .count(),
            2
        );
    }

    #[tokio::test]
    async fn changed_metadata_is_written_after_the_debounce() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let sink = ArchiveSink::new(root.clone());
        let sid = sink.init(&init_req(ID)).await.unwrap().session_id;
        // Pretend init's write was long ago so the debounce allows an immediate write.
        for s in lock(&sink.sessions).values_mut() {
            s.meta_written_at = Instant::now() - META_DEBOUNCE;
        }
        let md = ChunkMetadata {
            summary: "S1".into(),
            ..ChunkMetadata::default()
        };
        send(&sink, &sid, TRANSCRIPT, 1, &lines(&["a"]), Some(&md))
            .await
            .unwrap();
        assert_eq!(session_json(&root, ID)["summary"], "S1");
        // Within the debounce window the change is held back, not lost.
        let md = ChunkMetadata {
            summary: "S2".into(),
            ..ChunkMetadata::default()
        };
        send(&sink, &sid, TRANSCRIPT, 2, &lines(&["b"]), Some(&md))
            .await
            .unwrap();
        assert_eq!(session_json(&root, ID)["summary"], "S1");
        assert!(lock(&sink.sessions).values().all(|s| s.meta_dirty));
        drop(sink);
        assert_eq!(session_json(&root, ID)["summary"], "S2");
    }

    #[tokio::test]
    async fn io_error_is_local_and_recovers_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let dir = root.join(ID);
        let sink = ArchiveSink::new(root.clone());
        let sid = sink.init(&init_req(ID)).await.unwrap().session_id;
        send(&sink, &sid, AGENT, 1, &lines(&["1", "2"]), None)
            .await
            .unwrap();

        // Existing file unwritable: the path is a directory for the duration of the fault.
        let aside = tmp.path().join("aside");
        fs::rename(dir.join(AGENT), &aside).unwrap();
        fs::create_dir(dir.join(AGENT)).unwrap();
        let err = send(&sink, &sid, AGENT, 3, &lines(&["3"]), None)
            .await
            .unwrap_err();
        match &err {
            SinkError::Local(m) => {
                assert!(m.contains(AGENT), "{m}");
                assert!(!m.contains('\n'), "{m}");
            }
            other => panic!("expected Local, got {other:?}"),
        }
        assert!(!err.outcome_unknown());
        fs::remove_dir(dir.join(AGENT)).unwrap();
        fs::rename(&aside, dir.join(AGENT)).unwrap();
        assert_eq!(
            send(&sink, &sid, AGENT, 3, &lines(&["3"]), None).await,
            Ok(3)
        );
        assert_eq!(fs::read(dir.join(AGENT)).unwrap(), b"1\n2\n3\n");

        // A new file that cannot be created.
        fs::create_dir(dir.join(TRANSCRIPT)).unwrap();
        let err = send(&sink, &sid, TRANSCRIPT, 1, &lines(&["t"]), None)
            .await
            .unwrap_err();
        assert!(matches!(err, SinkError::Local(_)), "{err:?}");
        fs::remove_dir(dir.join(TRANSCRIPT)).unwrap();
        assert_eq!(
            send(&sink, &sid, TRANSCRIPT, 1, &lines(&["t"]), None).await,
            Ok(1)
        );
        assert_eq!(fs::read(dir.join(TRANSCRIPT)).unwrap(), b"t\n");

        // A file changed behind the sink's back is recounted, not trusted from the cache.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join(TRANSCRIPT))
            .unwrap();
        f.write_all(b"u\n").unwrap();
        let err = send(&sink, &sid, TRANSCRIPT, 2, &lines(&["x"]), None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, SinkError::Contiguity(ref m) if m.starts_with("first_line must be 3 "))
        );
    }

    #[tokio::test]
    async fn deleted_session_dir_is_session_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = ArchiveSink::new(tmp.path().to_path_buf());
        let sid = sink.init(&init_req(ID)).await.unwrap().session_id;
        fs::remove_dir_all(tmp.path().join(ID)).unwrap();
        let err = send(&sink, &sid, AGENT, 1, &lines(&["a"]), None)
            .await
            .unwrap_err();
        assert_eq!(err, SinkError::SessionGone);
        let resp = sink.init(&init_req(ID)).await.unwrap();
        assert!(resp.files.is_empty());
        assert_eq!(
            send(&sink, &sid, AGENT, 1, &lines(&["a"]), None).await,
            Ok(1)
        );
    }
}
