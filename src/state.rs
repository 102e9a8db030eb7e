//! The per-session state file `~/.confab/sync/<ID>.json` (sync-engine §8), disk-compatible with the
//! Go client (its keys keep their names and meaning; ours live under `confab_sync`).
//!
//! Invariants: written atomically (`<ID>.json.<pid>.tmp` → fsync → rename → fsync dir), file 0600
//! in a 0700 directory; an unreadable file is reported as an error the caller treats as absent.
//! STUB: IO filled in by the state work.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// One file's checkpoint: what the sink acknowledged, and how to recognise the file again (H1, H3).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct FileEntry {
    pub file_type: String,
    pub path: String,
    pub acked_line: u64,
    /// Byte offset just after line `acked_line`; `None` when unknown (must rescan by line count).
    pub acked_offset: Option<u64>,
    pub dev: u64,
    pub ino: u64,
    pub head_len: u64,
    pub head_sha256: String,
    pub tail_len: u64,
    pub tail_sha256: String,
    /// `ok`, `waiting`, `parked` or `diverged`.
    pub status: String,
    pub last_error: Option<String>,
}

/// Our additions, under `confab_sync`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct SyncExt {
    pub version: u32,
    pub pid_start: Option<String>,
    pub parent_start: Option<String>,
    pub service_manager: String,
    pub backend_url: Option<String>,
    pub launch_env: BTreeMap<String, String>,
    pub last_loop_at: Option<String>,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
    pub files: BTreeMap<String, FileEntry>,
}

/// The state file. Field names are the Go client's.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    #[serde(default)]
    pub external_id: String,
    #[serde(default)]
    pub transcript_path: String,
    #[serde(default)]
    pub cwd: String,
    #[serde(default)]
    pub pid: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub parent_pid: i64,
    #[serde(default)]
    pub inbox_path: String,
    #[serde(default)]
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confab_session_id: Option<String>,
    #[serde(default)]
    pub confab_sync: SyncExt,
}

impl State {
    /// A fresh state: `pid` is ours, `started_at` now, `inbox_path` filled in.
    pub fn new(paths: &crate::paths::Paths, id: &str, transcript: &str, cwd: &str, parent_pid: i64) -> State {
        let _ = (paths, id, transcript, cwd, parent_pid);
        todo!()
    }
}

/// Creates `~/.confab/sync` 0700 (resetting a wider mode).
pub fn ensure_sync_dir(dir: &Path) -> std::io::Result<()> {
    todo!("{dir:?}")
}

/// `Ok(None)` when missing; `Err` (one line) when unreadable or not a state.
pub fn load(path: &Path) -> Result<Option<State>, String> {
    todo!("{path:?}")
}

/// Atomic write (H1).
pub fn save(path: &Path, state: &State) -> std::io::Result<()> {
    let _ = state;
    todo!("{path:?}")
}

/// Removes the file; missing is fine.
pub fn delete(path: &Path) -> std::io::Result<()> {
    todo!("{path:?}")
}

/// Every `<ID>.json` in the sync dir (not inbox, lock or tmp files), sorted by id. A missing dir is empty.
pub fn list(dir: &Path) -> Vec<(String, PathBuf)> {
    todo!("{dir:?}")
}
