//! Where every file lives, and the validation of the two user-supplied names that become paths:
//! the session id and the transcript path (sync-engine §10, H25).
//!
//! Invariants: every path is derived from `HOME` (and `CONFAB_CONFIG_PATH`, `CONFAB_CLAUDE_DIR`,
//! `CONFAB_LOG_DIR`, `XDG_DATA_HOME`) captured once in [`Paths`]; a session id that passed
//! [`validate_session_id`] can never name anything outside `~/.confab/sync/`.

use std::path::{Component, Path, PathBuf};

/// All paths the program uses, resolved from the environment once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    pub home: PathBuf,
    /// `$CONFAB_CONFIG_PATH` or `~/.confab/config.json`.
    pub config_json: PathBuf,
    /// `$CONFAB_CLAUDE_DIR` as given, if set.
    pub claude_dir_override: Option<PathBuf>,
    /// `$CONFAB_LOG_DIR` or `~/.confab/logs`.
    pub log_dir: PathBuf,
    /// `$XDG_DATA_HOME` when absolute, else `~/.local/share` (`~/Library/Application Support` on macOS).
    pub data_home: PathBuf,
}

impl Paths {
    /// Reads `HOME` and the overrides from the process environment.
    pub fn from_env() -> Paths {
        Self::from_lookup(|k| std::env::var_os(k).map(PathBuf::from))
    }

    /// Same as [`Paths::from_env`] with an injectable lookup (tests).
    ///
    /// Empty values count as unset. Without `HOME`, the passwd entry of our uid gives the home
    /// directory (a service manager may start us with a bare environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<PathBuf>) -> Paths {
        let get = |k: &str| get(k).filter(|v| !v.as_os_str().is_empty());
        let home = get("HOME").unwrap_or_else(passwd_home);
        let config_json =
            get("CONFAB_CONFIG_PATH").unwrap_or_else(|| home.join(".confab/config.json"));
        let claude_dir_override = get("CONFAB_CLAUDE_DIR");
        let log_dir = get("CONFAB_LOG_DIR").unwrap_or_else(|| home.join(".confab/logs"));
        let data_home = get("XDG_DATA_HOME")
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| default_data_home(&home));
        Paths {
            home,
            config_json,
            claude_dir_override,
            log_dir,
            data_home,
        }
    }

    /// Paths for `home` with no overrides (tests and tools).
    pub fn for_home(home: &Path) -> Paths {
        let home = home.to_path_buf();
        Self::from_lookup(move |k| (k == "HOME").then(|| home.clone()))
    }

    /// `~/.confab`
    pub fn confab_dir(&self) -> PathBuf {
        self.home.join(".confab")
    }
    /// `~/.confab/sync` (0700)
    pub fn sync_dir(&self) -> PathBuf {
        self.confab_dir().join("sync")
    }
    pub fn state_file(&self, id: &str) -> PathBuf {
        self.sync_dir().join(format!("{id}.json"))
    }
    pub fn inbox_file(&self, id: &str) -> PathBuf {
        self.sync_dir().join(format!("{id}.inbox.jsonl"))
    }
    pub fn lock_file(&self, id: &str) -> PathBuf {
        self.sync_dir().join(format!("{id}.lock"))
    }
    pub fn hook_lock_file(&self, id: &str) -> PathBuf {
        self.sync_dir().join(format!("{id}.hook.lock"))
    }
    pub fn log_file(&self, id: &str) -> PathBuf {
        self.log_dir.join(format!("{id}.log"))
    }
    /// `~/.config/confab-sync/config.toml`
    pub fn tuning_file(&self) -> PathBuf {
        self.home.join(".config/confab-sync/config.toml")
    }
    /// `$CONFAB_CLAUDE_DIR` or `~/.claude` (where `settings.json` lives).
    pub fn claude_dir(&self) -> PathBuf {
        self.claude_dir_override
            .clone()
            .unwrap_or_else(|| self.home.join(".claude"))
    }
    /// Root that transcripts must lie under: `$CONFAB_CLAUDE_DIR` as given, else `~/.claude/projects`.
    pub fn transcript_root(&self) -> PathBuf {
        match &self.claude_dir_override {
            Some(d) => d.clone(),
            None => self.home.join(".claude/projects"),
        }
    }
    /// Default local archive root: `<data_home>/confab-sync/archive`.
    pub fn default_archive_root(&self) -> PathBuf {
        self.data_home.join("confab-sync/archive")
    }
}

/// The home directory of our uid from the passwd database; `/` if even that is unknown, so that
/// nothing is ever resolved relative to the working directory.
fn passwd_home() -> PathBuf {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .filter(|d| d.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn default_data_home(home: &Path) -> PathBuf {
    if cfg!(target_os = "macos") {
        home.join("Library/Application Support")
    } else {
        home.join(".local/share")
    }
}

/// Longest accepted session id.
pub const MAX_SESSION_ID_LEN: usize = 128;

/// Base names that the local archive uses for itself inside a session directory (§13).
pub const RESERVED_TRANSCRIPT_NAMES: [&str; 2] = ["session.json", "events.jsonl"];

/// `^[A-Za-z0-9_-]{1,128}$`
pub fn validate_session_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("invalid session id: empty".to_string());
    }
    if id.len() > MAX_SESSION_ID_LEN {
        return Err(format!(
            "invalid session id: {} characters (at most {MAX_SESSION_ID_LEN})",
            id.len()
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "invalid session id {id:?}: only A-Z, a-z, 0-9, '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// H25: non-empty, absolute, no `..`, and (after resolving the parent directory's symlinks when it
/// exists) under `<root>/`. Returns the path to use: the resolved parent joined with the base name,
/// i.e. exactly the path that was checked.
///
/// Base names `session.json` and `events.jsonl` are refused: the archive keeps its own files under
/// those names next to the transcript copy (§13).
pub fn validate_transcript_path(path: &Path, paths: &Paths) -> Result<PathBuf, String> {
    if path.as_os_str().is_empty() {
        return Err("invalid transcript path: empty".to_string());
    }
    if !path.is_absolute() {
        return Err(format!("invalid transcript path {path:?}: not absolute"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("invalid transcript path {path:?}: contains '..'"));
    }
    let name = path
        .file_name()
        .ok_or_else(|| format!("invalid transcript path {path:?}: no file name"))?;
    if RESERVED_TRANSCRIPT_NAMES.iter().any(|r| name == *r) {
        return Err(format!(
            "invalid transcript path {path:?}: the name {name:?} is reserved"
        ));
    }
    let root = resolve_existing(&paths.transcript_root());
    let parent = path.parent().unwrap_or(Path::new("/"));
    let resolved = resolve_existing(parent).join(name);
    match resolved.strip_prefix(&root) {
        Ok(rest) if !rest.as_os_str().is_empty() => Ok(resolved),
        _ => Err(format!(
            "invalid transcript path {path:?}: not under {:?}",
            root.join("")
        )),
    }
}

/// The symlink-free form of `p`: its longest existing ancestor is canonicalized and the missing rest
/// re-joined. Resolving the nearest existing ancestor (not only `p` itself) keeps a symlink higher up
/// from smuggling a not-yet-created directory out of the root. `p` must be absolute and free of `..`.
fn resolve_existing(p: &Path) -> PathBuf {
    for ancestor in p.ancestors() {
        if let Ok(real) = std::fs::canonicalize(ancestor) {
            let rest = p.strip_prefix(ancestor).unwrap_or(Path::new(""));
            return if rest.as_os_str().is_empty() {
                real
            } else {
                real.join(rest)
            };
        }
    }
    p.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<PathBuf> {
        let map: HashMap<String, PathBuf> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn paths_with_root(root: &Path) -> Paths {
        Paths::from_lookup(lookup(&[
            ("HOME", "/nonexistent-home"),
            ("CONFAB_CLAUDE_DIR", root.to_str().unwrap()),
        ]))
    }

    #[test]
    fn defaults_derive_from_home() {
        let p = Paths::from_lookup(lookup(&[("HOME", "/h")]));
        assert_eq!(p.home, PathBuf::from("/h"));
        assert_eq!(p.config_json, PathBuf::from("/h/.confab/config.json"));
        assert_eq!(p.claude_dir_override, None);
        assert_eq!(p.log_dir, PathBuf::from("/h/.confab/logs"));
        let data = if cfg!(target_os = "macos") {
            "/h/Library/Application Support"
        } else {
            "/h/.local/share"
        };
        assert_eq!(p.data_home, PathBuf::from(data));
        assert_eq!(
            p.default_archive_root(),
            PathBuf::from(data).join("confab-sync/archive")
        );
        assert_eq!(p.sync_dir(), PathBuf::from("/h/.confab/sync"));
        assert_eq!(
            p.state_file("abc"),
            PathBuf::from("/h/.confab/sync/abc.json")
        );
        // C10
        assert_eq!(
            p.inbox_file("abc"),
            PathBuf::from("/h/.confab/sync/abc.inbox.jsonl")
        );
        assert_eq!(
            p.lock_file("abc"),
            PathBuf::from("/h/.confab/sync/abc.lock")
        );
        assert_eq!(p.log_file("abc"), PathBuf::from("/h/.confab/logs/abc.log"));
        assert_eq!(p.transcript_root(), PathBuf::from("/h/.claude/projects"));
        assert_eq!(p.claude_dir(), PathBuf::from("/h/.claude"));
        assert_eq!(
            p.tuning_file(),
            PathBuf::from("/h/.config/confab-sync/config.toml")
        );
    }

    #[test]
    fn for_home_ignores_the_environment() {
        let p = Paths::for_home(Path::new("/x"));
        assert_eq!(p, Paths::from_lookup(lookup(&[("HOME", "/x")])));
    }

    #[test]
    fn overrides_apply() {
        let p = Paths::from_lookup(lookup(&[
            ("HOME", "/h"),
            ("CONFAB_CONFIG_PATH", "/c/config.json"),
            ("CONFAB_CLAUDE_DIR", "/claude"),
            ("CONFAB_LOG_DIR", "/logs"),
            ("XDG_DATA_HOME", "/data"),
        ]));
        assert_eq!(p.config_json, PathBuf::from("/c/config.json"));
        assert_eq!(p.claude_dir_override, Some(PathBuf::from("/claude")));
        assert_eq!(p.transcript_root(), PathBuf::from("/claude"));
        assert_eq!(p.claude_dir(), PathBuf::from("/claude"));
        assert_eq!(p.log_dir, PathBuf::from("/logs"));
        assert_eq!(p.data_home, PathBuf::from("/data"));
        assert_eq!(
            p.default_archive_root(),
            PathBuf::from("/data/confab-sync/archive")
        );
    }

    #[test]
    fn relative_or_empty_overrides_are_ignored() {
        let p = Paths::from_lookup(lookup(&[
            ("HOME", "/h"),
            ("XDG_DATA_HOME", "rel/data"),
            ("CONFAB_CONFIG_PATH", ""),
            ("CONFAB_CLAUDE_DIR", ""),
        ]));
        assert_ne!(p.data_home, PathBuf::from("rel/data"));
        assert!(p.data_home.starts_with("/h"));
        assert_eq!(p.config_json, PathBuf::from("/h/.confab/config.json"));
        assert_eq!(p.claude_dir_override, None);
    }

    #[test]
    fn missing_home_uses_passwd() {
        let p = Paths::from_lookup(|_| None);
        assert!(p.home.is_absolute());
        let expected = nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .map(|u| u.dir);
        if let Some(dir) = expected.filter(|d| d.is_absolute()) {
            assert_eq!(p.home, dir);
        }
    }

    #[test]
    fn session_ids() {
        for ok in [
            "a",
            "abc-DEF_123",
            "4f2c1e4a-9b7d-4c3e-8f1a-2b3c4d5e6f70",
            &"x".repeat(128),
        ] {
            assert_eq!(validate_session_id(ok), Ok(()), "{ok}");
        }
        // K7
        let long = "a".repeat(129);
        for bad in [
            "",
            "a/b",
            "..",
            "a b",
            long.as_str(),
            "a.b",
            "a\nb",
            "é",
            "a\0",
        ] {
            let err = validate_session_id(bad).unwrap_err();
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn transcript_inside_root_is_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("sessions")).unwrap();
        let p = paths_with_root(&root);
        let t = root.join("sessions/transcript.jsonl");
        assert_eq!(validate_transcript_path(&t, &p), Ok(t.clone()));
        // A parent that does not exist yet is still checked lexically.
        let t2 = root.join("later/dir/t.jsonl");
        assert_eq!(validate_transcript_path(&t2, &p), Ok(t2.clone()));
        // `.` components are harmless.
        let t3 = root.join("sessions/./t.jsonl");
        assert_eq!(
            validate_transcript_path(&t3, &p),
            Ok(root.join("sessions/t.jsonl"))
        );
    }

    #[test]
    fn default_root_is_claude_projects() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(home.join(".claude/projects/p")).unwrap();
        let p = Paths::from_lookup(lookup(&[("HOME", home.to_str().unwrap())]));
        let ok = home.join(".claude/projects/p/s.jsonl");
        assert_eq!(validate_transcript_path(&ok, &p), Ok(ok.clone()));
        assert!(validate_transcript_path(&home.join(".claude/other/s.jsonl"), &p).is_err());
        assert!(validate_transcript_path(&home.join(".claude/projects"), &p).is_err());
    }

    #[test]
    fn transcript_rejections() {
        // K7
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(root.join("sessions")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        let p = paths_with_root(&root);
        let cases: Vec<(PathBuf, &str)> = vec![
            (PathBuf::new(), "empty"),
            (PathBuf::from("sessions/t.jsonl"), "not absolute"),
            (root.join("sessions/../sessions/t.jsonl"), "'..'"),
            (root.join("../outside/t.jsonl"), "'..'"),
            (outside.join("t.jsonl"), "not under"),
            (root.clone(), "not under"),
            (base.join("rootx/t.jsonl"), "not under"),
            (root.join("escape/t.jsonl"), "not under"),
            (root.join("escape/newdir/t.jsonl"), "not under"),
            (root.join("sessions/session.json"), "reserved"),
            (root.join("sessions/events.jsonl"), "reserved"),
        ];
        for (path, why) in cases {
            let err = validate_transcript_path(&path, &p)
                .expect_err(&format!("{path:?} must be rejected"));
            assert!(err.contains(why), "{path:?}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn symlinked_root_is_resolved() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let real = base.join("real");
        std::fs::create_dir_all(real.join("s")).unwrap();
        std::os::unix::fs::symlink(&real, base.join("link")).unwrap();
        let p = paths_with_root(&base.join("link"));
        // Given through the link or through the real directory, the transcript is inside.
        assert_eq!(
            validate_transcript_path(&base.join("link/s/t.jsonl"), &p),
            Ok(real.join("s/t.jsonl"))
        );
        assert_eq!(
            validate_transcript_path(&real.join("s/t.jsonl"), &p),
            Ok(real.join("s/t.jsonl"))
        );
    }
}
