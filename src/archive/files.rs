//! File-level primitives of the archive: private directories, the torn-tail scan and cut,
//! append-with-rollback, fsync and atomic replacement. They know nothing of sessions or the
//! protocol; every function works on plain paths and returns `io::Result`.
//!
//! Invariants:
//! - a file only ever holds complete lines: an append is one write of a buffer of complete lines,
//!   then `fdatasync`; if anything fails, the file is truncated back to its previous length before
//!   the error is returned, so a refused append left nothing behind. A torn tail (a crash
//!   mid-write) is cut off by [`scan_and_cut`];
//! - a [`Cursor`] passed in is trusted only while the file's length equals its length; any
//!   mismatch makes [`open_for_append`] recount the file, and a cursor that may be wrong after a
//!   failure comes back as `None`, so the next append recounts;
//! - directories are created 0700 and files 0600 (wider ones are narrowed), and what is created or
//!   renamed is made durable by fsyncing its directory.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

const SCAN_BUF: usize = 64 * 1024;

/// A file's complete lines and the byte length they occupy (= the file's length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Cursor {
    pub(super) lines: u64,
    pub(super) len: u64,
}

/// Creates `dir` (and missing parents) 0700, fsyncing the parent of what it created, and narrows
/// an existing directory that is wider than 0700.
pub(super) fn ensure_private_dir(dir: &Path) -> io::Result<()> {
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
pub(super) fn restrict_file(path: &Path) {
    if let Ok(m) = fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
        }
    }
}

fn count_lines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Counts the complete lines of a regular file, streaming, and cuts a torn tail (bytes after the
/// last `\n`) off it.
pub(super) fn scan_and_cut(path: &Path) -> io::Result<Cursor> {
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
        lines += count_lines(block);
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
pub(super) fn open_for_append(
    dir: &Path,
    path: &Path,
    cached: Option<Cursor>,
) -> io::Result<(File, Cursor)> {
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

/// Appends a buffer of complete lines without a contiguity check (`events.jsonl`).
pub(super) fn append(
    dir: &Path,
    path: &Path,
    cursor: &mut Option<Cursor>,
    buf: &[u8],
) -> io::Result<()> {
    let (file, current) = open_for_append(dir, path, *cursor)?;
    write_synced(file, current, cursor, buf)
}

/// One write of the whole buffer (complete lines), then `fdatasync`. On failure the file is
/// truncated back to its previous length, so a refused append leaves nothing behind.
pub(super) fn write_synced(
    mut file: File,
    before: Cursor,
    cursor: &mut Option<Cursor>,
    buf: &[u8],
) -> io::Result<()> {
    let written = file.write_all(buf).and_then(|()| file.sync_data());
    match written {
        Ok(()) => {
            *cursor = Some(Cursor {
                lines: before.lines + count_lines(buf),
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

/// tmp, fsync, rename, directory fsync; the tmp file is removed if any step fails.
pub(super) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
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
    use super::*;

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
    async fn write_failure_truncates_back() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        fs::write(&path, b"a\n").unwrap();
        // A read-only descriptor makes the write fail for any user, root included.
        let file = File::open(&path).unwrap();
        let before = Cursor { lines: 1, len: 2 };
        let mut cursor = Some(before);
        assert!(write_synced(file, before, &mut cursor, b"b\n").is_err());
        assert_eq!(fs::read(&path).unwrap(), b"a\n");
        // Truncating through a read-only descriptor fails too, so the cursor is dropped (recount).
        assert_eq!(cursor, None);
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        write_synced(file, before, &mut cursor, b"b\nc\n").unwrap();
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
            let failed = write_synced(file, before, &mut cursor, b"bbbbbb\n").is_err();
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
}
