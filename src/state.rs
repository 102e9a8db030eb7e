//! The per-session state file `~/.confab/sync/<ID>.json` (sync-engine §8), disk-compatible with the
//! Go client (its keys keep their names and meaning; ours live under `confab_sync`).
//!
//! Invariants: written atomically (`<ID>.json.<pid>.tmp` → fsync → rename → fsync dir), file 0600
//! in a 0700 directory; an unreadable file is reported as an error the caller treats as absent;
//! leftover `.tmp` files are deleted, never read; only `<ID>.json` names a state.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
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
    pub fn new(
        paths: &crate::paths::Paths,
        id: &str,
        transcript: &str,
        cwd: &str,
        parent_pid: i64,
    ) -> State {
        let pid = i64::from(std::process::id());
        State {
            external_id: id.to_string(),
            transcript_path: transcript.to_string(),
            cwd: cwd.to_string(),
            pid,
            parent_pid,
            inbox_path: paths.inbox_file(id).to_string_lossy().into_owned(),
            started_at: now_rfc3339(),
            confab_session_id: None,
            confab_sync: SyncExt {
                version: STATE_VERSION,
                pid_start: crate::liveness::start_token(pid),
                ..SyncExt::default()
            },
        }
    }

    /// Whether this state names the running process `pid` with start token `token` (H31: only the
    /// owner deletes a state). A state without a recorded token matches on the pid alone.
    pub fn is_owned_by(&self, pid: i64, token: Option<&str>) -> bool {
        self.pid == pid
            && match (self.confab_sync.pid_start.as_deref(), token) {
                (Some(stored), Some(ours)) => stored == ours,
                (None, _) => true,
                (Some(_), None) => false,
            }
    }
}

/// Version of our `confab_sync` block.
pub const STATE_VERSION: u32 = 1;

/// Now as RFC 3339 with the local offset, e.g. `2025-01-02T03:04:05.123+01:00`.
pub fn now_rfc3339() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// Creates `~/.confab/sync` 0700 (resetting a wider mode).
pub fn ensure_sync_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// `Ok(None)` when missing; `Err` (one line) when unreadable or not a state.
pub fn load(path: &Path) -> Result<Option<State>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read state {}: {e}", path.display())),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| one_line(&format!("invalid state {}: {e}", path.display())))
}

fn one_line(s: &str) -> String {
    s.replace('\r', "\\r").replace('\n', "\\n")
}

/// Atomic write (H1): `<ID>.json.<pid>.tmp` (0600) → fsync → rename → fsync the directory.
pub fn save(path: &Path, state: &State) -> std::io::Result<()> {
    let mut text = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    text.push(b'\n');
    write_atomic(path, &text)
}

/// Writes `bytes` to `path` atomically, in the way [`save`] does.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let result = write_tmp_and_rename(&tmp, path, bytes);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `<path>.<our pid>.tmp`
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

fn write_tmp_and_rename(tmp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)
    };
    // A leftover tmp of ours might carry a wider mode; never reuse it.
    let mut f = match create() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(tmp)?;
            create()?
        }
        other => other?,
    };
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// fsync a directory so that a rename or creation in it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// Removes the file; missing is fine.
pub fn delete(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Every `<ID>.json` in the sync dir (not inbox, lock or tmp files), sorted by id. A missing dir is empty.
/// Names whose stem is not a valid session id are skipped: no writer of ours creates them.
pub fn list(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut states: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_suffix(".json")?;
            crate::paths::validate_session_id(id).ok()?;
            Some((id.to_string(), e.path()))
        })
        .collect();
    states.sort();
    states
}

/// Deletes leftover `*.tmp` files in `dir` (from writers that crashed between write and rename).
/// A tmp file whose name ends in `.<pid>.tmp` for ourselves or another live process may be a write
/// in progress and is kept. Returns how many were removed.
pub fn remove_stale_tmp(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let me = i64::from(std::process::id());
    let mut removed = 0;
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".tmp") else {
            continue;
        };
        let writer = stem
            .rsplit_once('.')
            .and_then(|(_, pid)| pid.parse::<i64>().ok());
        if writer.is_some_and(|pid| pid == me || crate::liveness::alive(pid, None)) {
            continue;
        }
        if std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::Paths;

    fn paths_in(home: &Path) -> Paths {
        let home = home.to_path_buf();
        Paths::from_lookup(move |k| (k == "HOME").then(|| home.clone()))
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn sample(paths: &Paths, id: &str) -> State {
        let mut s = State::new(paths, id, "/t/transcript.jsonl", "/work", 0);
        s.confab_sync.files.insert(
            "transcript.jsonl".into(),
            FileEntry {
                file_type: "transcript".into(),
                path: "/t/transcript.jsonl".into(),
                acked_line: 120,
                acked_offset: Some(48213),
                dev: 2049,
                ino: 1234567,
                head_len: 1024,
                head_sha256: "ab".repeat(32),
                tail_len: 1024,
                tail_sha256: "cd".repeat(32),
                status: "ok".into(),
                last_error: None,
            },
        );
        s.confab_sync
            .launch_env
            .insert("CONFAB_SYNC_INTERVAL_MS".into(), "2000".into());
        s
    }

    #[test]
    fn c1_c11_new_state() {
        let tmp = tempfile::tempdir().unwrap();
        let p = paths_in(tmp.path());
        let s = State::new(&p, "sess-1", "/t/x.jsonl", "/cwd", 0);
        assert_eq!(s.external_id, "sess-1");
        assert_eq!(s.transcript_path, "/t/x.jsonl");
        assert_eq!(s.cwd, "/cwd");
        assert_eq!(s.pid, i64::from(std::process::id()));
        assert_eq!(s.parent_pid, 0);
        assert_eq!(s.confab_session_id, None);
        assert_eq!(s.confab_sync.version, 1);
        assert_eq!(s.confab_sync.pid_start, crate::liveness::start_token(s.pid));
        // C10/C11
        assert_eq!(
            s.inbox_path,
            tmp.path()
                .join(".confab/sync/sess-1.inbox.jsonl")
                .to_str()
                .unwrap()
        );
        let started = chrono::DateTime::parse_from_rfc3339(&s.started_at).expect("RFC 3339");
        let age = chrono::Utc::now().signed_duration_since(started);
        assert!(age.num_seconds().abs() < 5, "recent: {}", s.started_at);
        let v = serde_json::to_value(&s).unwrap();
        assert!(v.get("parent_pid").is_none(), "omitted when 0");
        assert!(v.get("confab_session_id").is_none(), "omitted when None");
        assert!(s.is_owned_by(s.pid, s.confab_sync.pid_start.as_deref()));
    }

    #[test]
    fn c2_parent_pid_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let p = paths_in(tmp.path());
        let mut s = State::new(&p, "a", "/t", "/c", 12345);
        assert_eq!(s.parent_pid, 12345);
        s.confab_session_id = Some("sid".into());
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["parent_pid"], 12345);
        assert_eq!(v["confab_session_id"], "sid");
        ensure_sync_dir(&p.sync_dir()).unwrap();
        save(&p.state_file("a"), &s).unwrap();
        assert_eq!(load(&p.state_file("a")).unwrap().unwrap().parent_pid, 12345);
    }

    #[test]
    fn c3_save_modes_keys_and_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let p = paths_in(tmp.path());
        let dir = p.sync_dir();
        ensure_sync_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let s = sample(&p, "abc");
        let path = p.state_file("abc");
        assert_eq!(path, tmp.path().join(".confab/sync/abc.json"));
        save(&path, &s).unwrap();
        assert_eq!(mode(&path), 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        for key in [
            "external_id",
            "transcript_path",
            "cwd",
            "pid",
            "inbox_path",
            "started_at",
            "confab_sync",
        ] {
            assert!(
                text.contains(&format!("\n  \"{key}\": ")),
                "{key} at 2-space indent in {text}"
            );
        }
        assert!(text.contains("\n    \"version\": 1"));
        assert!(text.contains("\"acked_offset\": 48213"));
        assert!(!text.contains("parent_pid"));
        assert!(!text.contains("confab_session_id"));
        assert_eq!(load(&path).unwrap(), Some(s.clone()));
        // No tmp left behind, only the state.
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["abc.json".to_string()]);
        // Overwrite keeps the mode and replaces the content.
        let mut s2 = s;
        s2.confab_session_id = Some("x".into());
        save(&path, &s2).unwrap();
        assert_eq!(load(&path).unwrap(), Some(s2));
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn sync_dir_mode_is_reset() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/sync");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_sync_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        ensure_sync_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn c4_c5_load_missing_and_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let p = paths_in(tmp.path());
        assert_eq!(load(&p.state_file("nope")), Ok(None));
        ensure_sync_dir(&p.sync_dir()).unwrap();
        let path = p.state_file("x");
        save(&path, &sample(&p, "x")).unwrap();
        assert!(path.exists());
        delete(&path).unwrap();
        assert!(!path.exists());
        delete(&path).unwrap();
        assert_eq!(load(&path), Ok(None));
    }

    #[test]
    fn unreadable_state_is_a_one_line_error() {
        let tmp = tempfile::tempdir().unwrap();
        for (i, text) in ["{not json", "[1]", "{\"pid\":\"a\nb\"}", ""]
            .iter()
            .enumerate()
        {
            let path = tmp.path().join(format!("s{i}.json"));
            std::fs::write(&path, text).unwrap();
            let err = load(&path).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
            assert!(err.contains("invalid state"), "{err}");
        }
    }

    #[test]
    fn loads_a_go_client_state() {
        // The existing client writes only its own keys; ours default.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("g.json");
        std::fs::write(
            &path,
            r#"{"external_id":"g","transcript_path":"/t","cwd":"/c","pid":42,"parent_pid":7,
               "inbox_path":"/h/.confab/sync/g.inbox.jsonl","started_at":"2025-01-01T00:00:00Z",
               "confab_session_id":"s-1"}"#,
        )
        .unwrap();
        let s = load(&path).unwrap().unwrap();
        assert_eq!((s.pid, s.parent_pid), (42, 7));
        assert_eq!(s.confab_session_id.as_deref(), Some("s-1"));
        assert_eq!(s.confab_sync, SyncExt::default());
        assert!(s.is_owned_by(42, Some("linux:x:1")));
        assert!(!s.is_owned_by(43, None));
    }

    #[test]
    fn ownership_needs_pid_and_token() {
        let tmp = tempfile::tempdir().unwrap();
        let s = State::new(&paths_in(tmp.path()), "a", "/t", "/c", 0);
        let token = s.confab_sync.pid_start.clone();
        assert!(s.is_owned_by(s.pid, token.as_deref()));
        assert!(!s.is_owned_by(s.pid + 1, token.as_deref()));
        assert!(!s.is_owned_by(s.pid, Some("linux:other:1")));
    }

    #[test]
    fn c8_c9_list() {
        let tmp = tempfile::tempdir().unwrap();
        let p = paths_in(tmp.path());
        let dir = p.sync_dir();
        assert_eq!(list(&dir), Vec::new());
        ensure_sync_dir(&dir).unwrap();
        for id in ["ccc", "aaa", "bbb"] {
            save(&p.state_file(id), &sample(&p, id)).unwrap();
        }
        for extra in [
            "aaa.inbox.jsonl",
            "aaa.lock",
            "aaa.hook.lock",
            "ddd.json.123.tmp",
            "bad.id.json",
            "notes.txt",
        ] {
            std::fs::write(dir.join(extra), "{}").unwrap();
        }
        std::fs::create_dir(dir.join("eee.json")).unwrap();
        let got = list(&dir);
        let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["aaa", "bbb", "ccc"]);
        assert_eq!(got[0].1, p.state_file("aaa"));
    }

    #[test]
    fn stale_tmp_files_are_removed_live_writers_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let me = std::process::id();
        let dead = "a.json.999999999.tmp";
        let ours = format!("a.json.{me}.tmp");
        let odd = "weird.tmp";
        for name in [dead, ours.as_str(), odd, "a.json"] {
            std::fs::write(dir.join(name), "x").unwrap();
        }
        assert_eq!(remove_stale_tmp(dir), 2);
        assert!(!dir.join(dead).exists());
        assert!(!dir.join(odd).exists());
        assert!(dir.join(&ours).exists());
        assert!(dir.join("a.json").exists());
        assert_eq!(remove_stale_tmp(&dir.join("missing")), 0);
    }

    #[test]
    fn failed_save_leaves_no_tmp() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        ensure_sync_dir(&dir).unwrap();
        // The target is a non-empty directory, so the rename fails.
        let target = dir.join("x.json");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("f"), "").unwrap();
        let tmp_p = tempfile::tempdir().unwrap();
        assert!(save(
            &target,
            &State::new(&paths_in(tmp_p.path()), "x", "/t", "/c", 0)
        )
        .is_err());
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
