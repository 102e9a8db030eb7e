//! Where every file lives, and the validation of the two user-supplied names that become paths:
//! the session id and the transcript path (sync-engine §10, H25).
//!
//! Invariants: every path is derived from `HOME` (and `CONFAB_CONFIG_PATH`, `CONFAB_CLAUDE_DIR`,
//! `CONFAB_LOG_DIR`, `XDG_DATA_HOME`) captured once in [`Paths`]; a session id that passed
//! [`validate_session_id`] can never name anything outside `~/.confab/sync/`.

use std::path::{Path, PathBuf};

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
    pub fn from_lookup(get: impl Fn(&str) -> Option<PathBuf>) -> Paths {
        todo!("paths: {:?}", get("HOME"))
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
        self.claude_dir_override.clone().unwrap_or_else(|| self.home.join(".claude"))
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

/// `^[A-Za-z0-9_-]{1,128}$`
pub fn validate_session_id(id: &str) -> Result<(), String> {
    todo!("{id}")
}

/// H25: non-empty, absolute, no `..`, and (after resolving the parent directory's symlinks when it
/// exists) under `<root>/`. Returns the path to use.
pub fn validate_transcript_path(path: &Path, paths: &Paths) -> Result<PathBuf, String> {
    todo!("{path:?} {paths:?}")
}
