//! The local archive sink (sync-engine §13): a [`Sink`] that appends acknowledged lines to files
//! under `<root>/<external_id>/` instead of sending them to a backend.
//!
//! It mimics the backend's contract (protocol.md §3) so the engine has one code path for both:
//! init reports each archived file's count of complete lines, a chunk whose `first_line` is not
//! count + 1 is refused with the backend's exact contiguity message, and an accepted chunk answers
//! its last line number.
//!
//! Invariants:
//! - an archived file only ever holds complete lines: a chunk is appended with one buffer and
//!   `fdatasync`ed before it is acknowledged; if anything fails, the file is truncated back to its
//!   previous length before the error is returned, so a refused chunk left nothing behind. A torn
//!   tail (a crash mid-write) is cut off at init, `events.jsonl` included;
//! - the cached per-file count is trusted only while the file's length equals the cached length;
//!   any mismatch (or an earlier failure) makes the next chunk recount the file;
//! - nothing outside `<root>/<external_id>/` is ever written: the external id and every file name
//!   are validated before they become paths;
//! - `session.json` is replaced atomically; a non-empty value replaces the stored one, an empty one
//!   never blanks it, and values this sink did not receive are taken from the file on disk (so a
//!   summary link written by another daemon survives);
//! - directories are 0700 and files 0600; all blocking I/O runs on `spawn_blocking`.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::sink::*;

/// The archive's own files in a session directory; a transcript may not use these names.
const SESSION_JSON: &str = "session.json";
const EVENTS_JSONL: &str = "events.jsonl";
/// Prefix of the state's `confab_session_id` for archived sessions.
const SESSION_PREFIX: &str = "archive:";
/// `session.json` is rewritten at most this often for metadata changes.
const META_DEBOUNCE: Duration = Duration::from_secs(1);
/// ... and at least this often while chunks arrive, so `last_sync_at` stays roughly current.
const META_REFRESH: Duration = Duration::from_secs(60);
const SCAN_BUF: usize = 64 * 1024;

/// Appends sessions to `<root>/<external_id>/`.
pub struct ArchiveSink {
    root: PathBuf,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
}

/// What this sink knows about one initialised session.
struct Session {
    dir: PathBuf,
    transcript_name: String,
    files: HashMap<String, Cursor>,
    /// Values received from init and chunk metadata (empty = not received).
    received: SessionMeta,
    /// `received` holds something `session.json` does not have yet.
    meta_dirty: bool,
    meta_written_at: Instant,
}

/// A file's complete lines and the byte length they occupy (= the file's length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    lines: u64,
    len: u64,
}

/// The content of `session.json`, in its key order.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
struct SessionMeta {
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
    fn overlay(&mut self, other: &SessionMeta) {
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

    fn from_init(req: &InitRequest) -> SessionMeta {
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

    fn from_chunk(md: &ChunkMetadata) -> SessionMeta {
        SessionMeta {
            git_info: md.git_info.as_ref().map(git_json),
            summary: md.summary.clone(),
            first_user_message: md.first_user_message.clone(),
            ..SessionMeta::default()
        }
    }
}

fn git_json(g: &GitInfo) -> serde_json::Value {
    serde_json::to_value(g).unwrap_or(serde_json::Value::Null)
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
            check_file_name(session, &file_name, file_type)?;
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
            let path = session.dir.join(EVENTS_JSONL);
            let mut cursor = None;
            append(&session.dir, &path, &mut cursor, &line)
                .map_err(|e| local_err("append to", &path, &e))
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
        let patch = SessionMeta {
            summary: summary.to_string(),
            ..SessionMeta::default()
        };
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

impl Session {
    /// Appends `buf` (holding `count` lines starting at `first_line`) to `file_name`.
    fn append_chunk(
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
    fn note_meta(&mut self, meta: &SessionMeta) {
        let before = self.received.clone();
        self.received.overlay(meta);
        if self.received != before {
            self.meta_dirty = true;
        }
    }

    /// Writes `session.json` when something is pending and the debounce allows it (or `force`).
    /// A failure is logged and retried later: the lines are already stored, so the chunk stands.
    fn flush_meta(&mut self, force: bool) {
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

/// `^[A-Za-z0-9_-]{1,128}$`
fn validate_external_id(id: &str) -> Result<(), SinkError> {
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
fn is_agent_name(name: &str) -> bool {
    name.strip_prefix("agent-")
        .and_then(|rest| rest.strip_suffix(".jsonl"))
        .is_some_and(|id| (1..=200).contains(&id.len()) && id.bytes().all(is_id_byte))
}

/// The transcript's base name, refused when it would collide with the archive's own files
/// (`session.json`, `events.jsonl`, `*.tmp`, which init deletes) or is not a plain name.
fn transcript_base_name(transcript_path: &str) -> Result<String, SinkError> {
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

fn external_id_of(session_id: &str) -> Result<String, SinkError> {
    session_id
        .strip_prefix(SESSION_PREFIX)
        .filter(|id| validate_external_id(id).is_ok())
        .map(str::to_string)
        .ok_or(SinkError::SessionGone)
}

/// The initialised session, or `SessionGone` (like the backend's 404) when it was never initialised
/// here or its directory disappeared, so the engine re-initialises it.
fn live_session<'a>(
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

fn check_file_name(session: &Session, name: &str, file_type: FileType) -> Result<(), SinkError> {
    let expected = if name == session.transcript_name {
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

/// Every line plus `\n`, in one buffer so the chunk is appended with one write.
fn line_buffer(lines: &[String]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for line in lines {
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
    }
    buf
}

/// Creates the directories, cleans the session directory and counts its files.
fn init_session(
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

/// Creates `dir` (and missing parents) 0700, fsyncing the parent of what it created, and narrows
/// an existing directory that is wider than 0700.
fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            if m.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            }
            Ok(())
        }
        Ok(_) => Err(io::Error::other("exists and is not a directory")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                if !parent.exists() {
                    ensure_private_dir(parent)?;
                }
            }
            match DirBuilder::new().mode(0o700).create(dir) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
                other => other?,
            }
            fsync_parent(dir)
        }
        Err(e) => Err(e),
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn fsync_parent(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => fsync_dir(parent),
        None => Ok(()),
    }
}

/// Best effort: archived files are 0600 even if something widened them.
fn restrict_file(path: &Path) {
    if let Ok(m) = fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
        }
    }
}

/// Counts the complete lines of a regular file, streaming, and cuts a torn tail (bytes after the
/// last `\n`) off it.
fn scan_and_cut(path: &Path) -> io::Result<Cursor> {
    let mut file = File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut buf = vec![0u8; SCAN_BUF];
    let (mut pos, mut lines, mut complete) = (0u64, 0u64, 0u64);
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let block = &buf[..n];
        lines += block.iter().filter(|&&b| b == b'\n').count() as u64;
        if let Some(i) = block.iter().rposition(|&b| b == b'\n') {
            complete = pos + i as u64 + 1;
        }
        pos += n as u64;
    }
    if pos > complete {
        tracing::info!(
            "archive: cutting a torn tail of {} bytes off {}",
            pos - complete,
            path.display()
        );
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(complete)?;
        file.sync_data()?;
    }
    Ok(Cursor {
        lines,
        len: complete,
    })
}

/// Opens `path` for appending, creating it 0600 (and fsyncing `dir`) when missing, and returns
/// the file with its trusted cursor: the cached one if the length still matches, else a recount.
fn open_for_append(dir: &Path, path: &Path, cached: Option<Cursor>) -> io::Result<(File, Cursor)> {
    let file = match OpenOptions::new().append(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let f = OpenOptions::new()
                .append(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            fsync_dir(dir)?;
            f
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let cursor = match cached {
        Some(c) if c.len == meta.len() => c,
        _ if meta.len() == 0 => Cursor { lines: 0, len: 0 },
        _ => scan_and_cut(path)?,
    };
    Ok((file, cursor))
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
    let lines = buf.iter().filter(|&&b| b == b'\n').count() as u64;
    write_synced(file, current, cursor, buf, lines).map_err(|e| local_err("append to", path, &e))
}

/// Appends a buffer of complete lines without a contiguity check (`events.jsonl`).
fn append(dir: &Path, path: &Path, cursor: &mut Option<Cursor>, buf: &[u8]) -> io::Result<()> {
    let (file, current) = open_for_append(dir, path, *cursor)?;
    let lines = buf.iter().filter(|&&b| b == b'\n').count() as u64;
    write_synced(file, current, cursor, buf, lines)
}

/// One write of the whole buffer, then `fdatasync`. On failure the file is truncated back to its
/// previous length, so a refused append leaves nothing behind.
fn write_synced(
    mut file: File,
    before: Cursor,
    cursor: &mut Option<Cursor>,
    buf: &[u8],
    lines: u64,
) -> io::Result<()> {
    let written = file.write_all(buf).and_then(|()| file.sync_data());
    match written {
        Ok(()) => {
            *cursor = Some(Cursor {
                lines: before.lines + lines,
                len: before.len + buf.len() as u64,
            });
            Ok(())
        }
        Err(e) => {
            let restored = file.set_len(before.len).and_then(|()| file.sync_data());
            *cursor = restored.ok().map(|()| before);
            Err(e)
        }
    }
}

/// Merges `received` over what `session.json` holds now and replaces it atomically.
fn write_session_json(dir: &Path, received: &SessionMeta) -> io::Result<()> {
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

/// tmp, fsync, rename, directory fsync; the tmp file is removed if any step fails.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    //! Failure injection note: tests run as root, and root ignores permission bits, so a chmod'ed
    //! read-only directory would not fail. Instead the target path is replaced by a directory:
    //! opening it for append fails with EISDIR for any user, which exercises the same error path
    //! (open/write failure → `SinkError::Local`, position unchanged, recovery when fixed).

    use super::*;
    use std::os::unix::fs::MetadataExt;

    const ID: &str = "62d346b1-08c1-4949-8229-f1eb8b44cb46";
    const TRANSCRIPT: &str = "62d346b1-08c1-4949-8229-f1eb8b44cb46.jsonl";
    const AGENT: &str = "agent-a1b2c3d4.jsonl";

    fn init_req(id: &str) -> InitRequest {
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

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    async fn send(
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

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o777
    }

    fn session_json(root: &Path, id: &str) -> serde_json::Value {
        serde_json::from_slice(&fs::read(root.join(id).join(SESSION_JSON)).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn identity_is_file_url() {
        let sink = ArchiveSink::new(PathBuf::from("/tmp/x y/arch"));
        assert_eq!(sink.identity(), "file:///tmp/x%20y/arch");
        let sink = ArchiveSink::new(PathBuf::from("/tmp//x y/./arch/"));
        assert_eq!(sink.identity(), "file:///tmp/x%20y/arch");
        assert_eq!(sink.root(), Path::new("/tmp/x y/arch"));
    }

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
    async fn counting_streams_large_files() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("big");
        // Lines straddle the 64 KiB buffer boundaries; the tail is torn.
        let mut content = Vec::new();
        for i in 0..50_000u32 {
            content.extend_from_slice(
                format!("line {i} {}\n", "x".repeat((i % 13) as usize)).as_bytes(),
            );
        }
        let complete = content.len() as u64;
        content.extend_from_slice(b"torn");
        fs::write(&path, &content).unwrap();
        assert_eq!(
            scan_and_cut(&path).unwrap(),
            Cursor {
                lines: 50_000,
                len: complete
            }
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), complete);
    }

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
    async fn write_failure_truncates_back() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        fs::write(&path, b"a\n").unwrap();
        // A read-only descriptor makes the write fail for any user, root included.
        let file = File::open(&path).unwrap();
        let before = Cursor { lines: 1, len: 2 };
        let mut cursor = Some(before);
        assert!(write_synced(file, before, &mut cursor, b"b\n", 1).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"a\n");
        // Truncating through a read-only descriptor fails too, so the cursor is dropped (recount).
        assert_eq!(cursor, None);
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        write_synced(file, before, &mut cursor, b"b\nc\n", 2).unwrap();
        assert_eq!(cursor, Some(Cursor { lines: 3, len: 6 }));
    }

    /// A real partial write: in a forked child, RLIMIT_FSIZE lets the first `write` store 3 of
    /// the 7 bytes and fails the next with EFBIG (SIGXFSZ ignored); the file must be cut back.
    /// The fork keeps the limit away from the other tests' threads.
    #[test]
    fn partial_write_is_truncated_back() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        fs::write(&path, b"a\n").unwrap();
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        let before = Cursor { lines: 1, len: 2 };
        // SAFETY: the child only makes syscalls and plain file I/O, then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let limit = libc::rlimit {
                rlim_cur: 5,
                rlim_max: 5,
            };
            // SAFETY: plain syscalls on the child's own process.
            let set = unsafe {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                libc::setrlimit(libc::RLIMIT_FSIZE, &limit)
            };
            let mut cursor = Some(before);
            let failed = write_synced(file, before, &mut cursor, b"bbbbbb\n", 1).is_err();
            let ok = set == 0 && failed && cursor == Some(before);
            // SAFETY: leaves the child without running the parent's destructors or test harness.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child status {status}"
        );
        assert_eq!(fs::read(&path).unwrap(), b"a\n");
    }

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
