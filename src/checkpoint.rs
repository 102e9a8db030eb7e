//! Writes the state file (the checkpoints, sync-engine §8) off the request path.
//!
//! The atomic write costs two `fsync`s (≈ 10 ms on a virtual disk), which would otherwise sit
//! between every acknowledgement and the next chunk: a quarter of catch-up time (BENCHMARKS.md).
//! [`Checkpointer::submit`] hands the state to a writer thread and returns; the next chunk is read,
//! encoded and sent while the checkpoint is being written.
//!
//! Invariants:
//! - a submitted state is a snapshot taken **after** its acknowledgement, so no checkpoint ever
//!   records a line the sink has not acknowledged (H1);
//! - writes never overlap and never reorder: one writer at a time, always writing the newest
//!   submitted state. States submitted while a write is running are coalesced into the newest, so
//!   every acknowledgement is covered by a write that starts after it, and a slow disk costs fewer
//!   writes, not a queue;
//! - [`Checkpointer::write_now`] and [`Checkpointer::flush`] wait for the writer, so the state on
//!   disk is the newest one when they return; dropping the checkpointer flushes too;
//! - a crash between an acknowledgement and its checkpoint leaves an older, still valid
//!   checkpoint: cursors only cache what the backend knows, and init's backend-wins refresh moves
//!   them forward (H1, H3).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::filesync::{stat_key, StatKey};
use crate::state::{self, State};

/// Owns the state file's writes for one daemon.
pub struct Checkpointer {
    path: PathBuf,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    slot: Mutex<Slot>,
    idle: Condvar,
    /// Identity of the file our last write created: while the path still names it, nobody else
    /// has written the state since, and the takeover check needs only a `stat`, not a read.
    written: Mutex<Option<FileId>>,
}

/// A rename onto the path, or any rewrite, changes it.
type FileId = StatKey;

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::symlink_metadata(path).ok().map(|m| stat_key(&m))
}

#[derive(Default)]
struct Slot {
    next: Option<State>,
    writing: bool,
}

impl Checkpointer {
    pub fn new(path: PathBuf) -> Checkpointer {
        Checkpointer {
            path,
            shared: Arc::default(),
        }
    }

    /// Queues `st` to be written as soon as the writer is free, and returns at once.
    pub fn submit(&self, st: State) {
        let mut slot = lock(&self.shared.slot);
        slot.next = Some(st);
        if slot.writing {
            return;
        }
        slot.writing = true;
        drop(slot);
        let (path, shared) = (self.path.clone(), self.shared.clone());
        let span = tracing::Span::current();
        let spawned = std::thread::Builder::new()
            .name("checkpoint".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _entered = span.enter();
                drain(&path, &shared);
            });
        if let Err(e) = spawned {
            tracing::debug!("no checkpoint thread ({e}); writing in line");
            drain(&self.path, &self.shared);
        }
    }

    /// Writes `st` on the calling thread once the writer is idle: the cycle-end and init writes
    /// need no thread (an idle cycle would otherwise start one every interval).
    pub fn write_now(&self, st: &State) {
        self.flush();
        write_state(&self.path, st, &self.shared.written);
    }

    /// Waits until every submitted state is written.
    pub fn flush(&self) {
        let mut slot = lock(&self.shared.slot);
        while slot.writing {
            slot = self
                .shared
                .idle
                .wait(slot)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The writer: writes the newest state until none is left, then marks itself idle.
fn drain(path: &Path, shared: &Shared) {
    drain_with(shared, |st| write_state(path, st, &shared.written));
}

fn drain_with(shared: &Shared, write: impl Fn(&State)) {
    // Should a write panic, the writer must still be marked idle, or `flush` (and with it the
    // shutdown) would wait forever.
    let unwinding = MarkIdle(shared);
    loop {
        let st = {
            let mut slot = lock(&shared.slot);
            match slot.next.take() {
                Some(st) => st,
                None => {
                    slot.writing = false;
                    shared.idle.notify_all();
                    // Marked idle under the lock: a new writer may start at once, which the
                    // guard must not mark idle again.
                    std::mem::forget(unwinding);
                    return;
                }
            }
        };
        write(&st);
    }
}

struct MarkIdle<'a>(&'a Shared);

impl Drop for MarkIdle<'_> {
    fn drop(&mut self) {
        lock(&self.0.slot).writing = false;
        self.0.idle.notify_all();
    }
}

/// Writes the checkpoint unless another process has taken the state over (H31): a state naming
/// another pid is left alone, so neither our writes nor our shutdown clobber it.
fn write_state(path: &Path, st: &State, written: &Mutex<Option<FileId>>) {
    let mut written = lock(written);
    let ours = written.is_some() && *written == file_id(path);
    if !ours {
        if let Ok(Some(disk)) = state::load(path) {
            if disk.pid != st.pid && disk.pid != 0 {
                tracing::debug!("state file now names pid {}; not overwriting it", disk.pid);
                return;
            }
        }
    }
    match state::save(path, st) {
        Ok(()) => *written = file_id(path),
        Err(e) => {
            *written = None;
            tracing::warn!("cannot write the state file {}: {e}", path.display());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with_line(line: u64) -> State {
        let mut st = State {
            pid: i64::from(std::process::id()),
            ..State::default()
        };
        st.external_id = "s".into();
        st.confab_sync.last_error = Some(format!("line {line}"));
        st
    }

    fn on_disk(path: &Path) -> Option<String> {
        state::load(path).unwrap().unwrap().confab_sync.last_error
    }

    #[test]
    fn the_newest_submitted_state_is_on_disk_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let cp = Checkpointer::new(path.clone());
        for line in 1..=50 {
            cp.submit(state_with_line(line));
        }
        cp.flush();
        assert_eq!(on_disk(&path).as_deref(), Some("line 50"));
        cp.write_now(&state_with_line(51));
        assert_eq!(on_disk(&path).as_deref(), Some("line 51"));
    }

    #[test]
    fn drop_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        {
            let cp = Checkpointer::new(path.clone());
            cp.submit(state_with_line(7));
        }
        assert_eq!(on_disk(&path).as_deref(), Some("line 7"));
    }

    #[test]
    fn a_state_taken_over_by_another_pid_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let mut other = state_with_line(1);
        other.pid = i64::from(std::process::id()) + 1;
        state::save(&path, &other).unwrap();
        Checkpointer::new(path.clone()).write_now(&state_with_line(2));
        assert_eq!(on_disk(&path).as_deref(), Some("line 1"));
    }

    #[test]
    fn a_panicking_write_does_not_hang_flush() {
        let cp = Checkpointer::new(PathBuf::from("/nonexistent/s.json"));
        {
            let mut slot = lock(&cp.shared.slot);
            slot.next = Some(state_with_line(1));
            slot.writing = true;
        }
        let shared = cp.shared.clone();
        let writer = std::thread::spawn(move || drain_with(&shared, |_| panic!("injected")));
        assert!(writer.join().is_err(), "the write panicked");
        cp.flush();
        assert!(!lock(&cp.shared.slot).writing);
    }

    /// The takeover check may skip reading the file only while it is the one we wrote.
    #[test]
    fn a_takeover_after_our_own_write_is_still_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let cp = Checkpointer::new(path.clone());
        cp.write_now(&state_with_line(1));
        let mut other = state_with_line(2);
        other.pid = i64::from(std::process::id()) + 1;
        state::save(&path, &other).unwrap();
        cp.write_now(&state_with_line(3));
        assert_eq!(on_disk(&path).as_deref(), Some("line 2"));
    }
}
