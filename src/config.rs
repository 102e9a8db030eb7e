//! Configuration: the credentials file `~/.confab/config.json` (shared with the Go client, read-only
//! for us), the daemon tuning file `~/.config/confab-sync/config.toml`, and the environment overrides.
//!
//! Invariants: the API key never appears in `Debug` output or in any error; an invalid value never
//! crashes the daemon (errors are returned as one-line [`ConfigError`]s and retried by the caller);
//! `CONFAB_SYNC_INTERVAL_MS`/`CONFAB_SYNC_JITTER_MS` beat the TOML file, invalid values give defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::paths::Paths;

/// A one-line configuration error. Never contains the API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ConfigError {}

/// `redaction.patterns[]` entry of config.json.
#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct PatternConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub pattern: Option<String>,
    pub capture_group: Option<usize>,
    pub field_pattern: Option<String>,
}

/// `redaction` of config.json.
#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct RedactionConfig {
    pub enabled: bool,
    /// Missing or `null` means true.
    pub use_default_patterns: Option<bool>,
    pub patterns: Vec<PatternConfig>,
}

/// The parsed config.json. `Debug` hides `api_key`.
#[derive(Deserialize, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct Credentials {
    pub backend_url: String,
    pub api_key: String,
    pub log_level: Option<String>,
    pub redaction: RedactionConfig,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("backend_url", &self.backend_url)
            .field("api_key", &if self.api_key.is_empty() { "" } else { "<hidden>" })
            .field("log_level", &self.log_level)
            .field("redaction", &self.redaction)
            .finish()
    }
}

/// Where lines go, as selected by config.json (sync-engine §8, §13).
#[derive(Clone, PartialEq, Eq)]
pub enum SinkChoice {
    /// An http(s) backend; `base_url` has every trailing `/` removed.
    Http { base_url: String, api_key: String },
    /// The local archive at `root` (absolute).
    Archive { root: PathBuf },
}

impl std::fmt::Debug for SinkChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkChoice::Http { base_url, .. } => write!(f, "Http({base_url})"),
            SinkChoice::Archive { root } => write!(f, "Archive({})", root.display()),
        }
    }
}

/// Reads config.json. `Ok(None)` when the file does not exist.
pub fn read_credentials(path: &Path) -> Result<Option<Credentials>, ConfigError> {
    todo!("{path:?}")
}

/// Picks the sink: no file / no or empty `backend_url` → default archive; `file://` → that archive;
/// `http(s)` → backend (error when the key is empty or not a valid header value, or the URL has a
/// query/fragment/no host).
pub fn choose_sink(creds: Option<&Credentials>, paths: &Paths) -> Result<SinkChoice, ConfigError> {
    todo!("{creds:?} {paths:?}")
}

/// Daemon tuning (sync-engine §0), from config.toml and the environment.
#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    pub interval: Duration,
    /// Half-width of the per-cycle jitter, already capped at interval/2.
    pub jitter: Duration,
    pub http_timeout: Duration,
    pub chunk_target_bytes: usize,
    pub chunk_hard_limit: usize,
    pub log_level: Option<String>,
    pub parent_check: Duration,
    pub transcript_poll: Duration,
    pub transcript_wait: Duration,
    pub shutdown_budget: Duration,
    pub session_gone_cycles: u32,
}

pub const CHUNK_HARD_LIMIT: usize = 15 * 1024 * 1024;
pub const CHUNK_TARGET: usize = 4 * 1024 * 1024;

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            interval: Duration::from_secs(30),
            jitter: Duration::from_secs(5),
            http_timeout: Duration::from_secs(30),
            chunk_target_bytes: CHUNK_TARGET,
            chunk_hard_limit: CHUNK_HARD_LIMIT,
            log_level: None,
            parent_check: Duration::from_secs(5),
            transcript_poll: Duration::from_secs(2),
            transcript_wait: Duration::from_secs(60),
            shutdown_budget: Duration::from_secs(30),
            session_gone_cycles: 3,
        }
    }
}

impl Tuning {
    /// Loads `paths.tuning_file()` (missing = defaults) then applies the environment via `env`.
    pub fn load(paths: &Paths, env: impl Fn(&str) -> Option<String>) -> Result<Tuning, ConfigError> {
        todo!("{paths:?} {:?}", env("X"))
    }

    /// The delay before the next cycle: `interval + uniform[-jitter, +jitter]`.
    pub fn cycle_delay(&self, rng: &mut impl rand::Rng) -> Duration {
        todo!("{}", rng.gen::<u8>())
    }

    /// After `k >= 1` failed cycles in a row: `min(interval * 2^(k-1), max(interval, 300 s))`.
    pub fn failure_backoff(&self, k: u32) -> Duration {
        todo!("{k}")
    }
}
