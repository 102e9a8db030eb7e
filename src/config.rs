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

/// JSON `null` reads as the type's default, as it does for the Go client that shares the file.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `redaction.patterns[]` entry of config.json.
#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct PatternConfig {
    #[serde(deserialize_with = "null_default")]
    pub name: String,
    #[serde(rename = "type", deserialize_with = "null_default")]
    pub kind: String,
    pub pattern: Option<String>,
    pub capture_group: Option<usize>,
    pub field_pattern: Option<String>,
}

/// `redaction` of config.json.
#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct RedactionConfig {
    #[serde(deserialize_with = "null_default")]
    pub enabled: bool,
    /// Missing or `null` means true.
    pub use_default_patterns: Option<bool>,
    #[serde(deserialize_with = "null_default")]
    pub patterns: Vec<PatternConfig>,
}

/// The parsed config.json. `Debug` hides `api_key`.
#[derive(Deserialize, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct Credentials {
    #[serde(deserialize_with = "null_default")]
    pub backend_url: String,
    #[serde(deserialize_with = "null_default")]
    pub api_key: String,
    pub log_level: Option<String>,
    #[serde(deserialize_with = "null_default")]
    pub redaction: RedactionConfig,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("backend_url", &self.backend_url)
            .field(
                "api_key",
                &if self.api_key.is_empty() {
                    ""
                } else {
                    "<hidden>"
                },
            )
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
///
/// A parse error reports only its category and position: serde's messages can quote the offending
/// value, which may be the key.
pub fn read_credentials(path: &Path) -> Result<Option<Credentials>, ConfigError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ConfigError(format!("cannot read {}: {e}", path.display()))),
    };
    serde_json::from_slice::<Credentials>(&bytes)
        .map(Some)
        .map_err(|e| {
            let what = match e.classify() {
                serde_json::error::Category::Data => "a value of the wrong type",
                serde_json::error::Category::Eof => "unexpected end of file",
                serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
                    "invalid JSON"
                }
            };
            ConfigError(format!(
                "not authenticated: {} has {what} at line {} column {}",
                path.display(),
                e.line(),
                e.column()
            ))
        })
}

/// Picks the sink: no file / no or empty `backend_url` → default archive; `file://` → that archive;
/// `http(s)` → backend (error when the key is empty or not a valid header value, or the URL has a
/// query/fragment/no host).
pub fn choose_sink(creds: Option<&Credentials>, paths: &Paths) -> Result<SinkChoice, ConfigError> {
    let url = creds.map(|c| c.backend_url.trim()).unwrap_or("");
    if url.is_empty() {
        return Ok(SinkChoice::Archive {
            root: paths.default_archive_root(),
        });
    }
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("file") => file_url_root(url).map(|root| SinkChoice::Archive { root }),
        Some("http") | Some("https") => {
            let base_url = http_base_url(url)?;
            let key = creds.map(|c| c.api_key.trim()).unwrap_or("");
            check_api_key(key, &paths.config_json)?;
            Ok(SinkChoice::Http {
                base_url,
                api_key: key.to_string(),
            })
        }
        _ => Err(ConfigError(
            "backend_url must be an http://, https:// or file:// URL".to_string(),
        )),
    }
}

/// `file:///abs` or `file://localhost/abs`, percent-decoded. Trailing `/`s are dropped so that one
/// directory has one spelling (the archive identity is derived from it).
fn file_url_root(url: &str) -> Result<PathBuf, ConfigError> {
    use std::os::unix::ffi::OsStrExt;
    let bad = |why: &str| ConfigError(format!("backend_url file URL {why}"));
    let rest = &url["file:".len()..];
    let rest = rest
        .strip_prefix("//")
        .ok_or_else(|| bad("must start with file:///"))?;
    let path = if rest.starts_with('/') {
        rest
    } else if rest
        .get(..10)
        .is_some_and(|h| h.eq_ignore_ascii_case("localhost/"))
    {
        &rest[9..]
    } else {
        return Err(bad(
            "must name an absolute path on this host (file:///path or file://localhost/path)",
        ));
    };
    if path.contains(['?', '#']) {
        return Err(bad("must not have a query or fragment"));
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(path).collect();
    if decoded.contains(&0) {
        return Err(bad("must not contain NUL"));
    }
    let mut end = decoded.len();
    while end > 1 && decoded[end - 1] == b'/' {
        end -= 1;
    }
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&decoded[..end])))
}

/// Validates an http(s) `backend_url` and returns it without trailing `/` (protocol §1).
fn http_base_url(raw: &str) -> Result<String, ConfigError> {
    let bad = |why: String| ConfigError(format!("invalid backend_url: {why}"));
    let url = url::Url::parse(raw).map_err(|e| bad(e.to_string()))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".to_string()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment".to_string()));
    }
    // A password in the URL would show up wherever the base URL is printed.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not contain a user name or password".to_string()));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// The key must be present and usable in `Authorization: Bearer <key>`.
fn check_api_key(key: &str, config_path: &Path) -> Result<(), ConfigError> {
    if key.is_empty() {
        return Err(ConfigError(format!(
            "not authenticated: no api_key in {}",
            config_path.display()
        )));
    }
    let header_ok = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).is_ok();
    if !header_ok || key.chars().any(char::is_control) {
        return Err(ConfigError(format!(
            "not authenticated: the api_key in {} contains characters not allowed in an HTTP header",
            config_path.display()
        )));
    }
    Ok(())
}

/// `base` (trailing `/`s removed) + `route` (which starts with `/api/v1/`): never a `//` (H36).
pub fn join_url(base: &str, route: &str) -> String {
    let base = base.trim_end_matches('/');
    let route = route.trim_start_matches('/');
    format!("{base}/{route}")
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
    ///
    /// A missing file means defaults; an unreadable or invalid one (bad TOML, wrong type, value out of
    /// range) is an error. Unknown keys are ignored. An invalid environment value is ignored (the file
    /// or the default applies).
    pub fn load(
        paths: &Paths,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Tuning, ConfigError> {
        let path = paths.tuning_file();
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => TuningFile::parse(&text)
                .map_err(|e| ConfigError(format!("invalid {}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TuningFile::default(),
            Err(e) => return Err(ConfigError(format!("cannot read {}: {e}", path.display()))),
        };
        let env_interval = env_ms(&env, ENV_INTERVAL, 1);
        let env_jitter = env_ms(&env, ENV_JITTER, 0);
        Ok(file.resolve(env_interval, env_jitter))
    }

    /// The delay before the next cycle: `interval + uniform[-jitter, +jitter]`.
    pub fn cycle_delay(&self, rng: &mut impl rand::Rng) -> Duration {
        let j = self.jitter.min(self.interval / 2);
        if j.is_zero() {
            return self.interval;
        }
        let span = u64::try_from((2 * j).as_nanos()).unwrap_or(u64::MAX);
        (self.interval - j) + Duration::from_nanos(rng.gen_range(0..=span))
    }

    /// After `k >= 1` failed cycles in a row: `min(interval * 2^(k-1), max(interval, 300 s))`.
    /// `k == 0` (no failure) is the plain interval.
    pub fn failure_backoff(&self, k: u32) -> Duration {
        let cap = self.interval.max(BACKOFF_CAP);
        let exp = k.saturating_sub(1);
        if exp >= 32 {
            return cap;
        }
        self.interval.saturating_mul(1u32 << exp).min(cap)
    }
}

/// Environment override of the interval (ms, 1..=3,600,000).
pub const ENV_INTERVAL: &str = "CONFAB_SYNC_INTERVAL_MS";
/// Environment override of the jitter half-width (ms, 0..=3,600,000).
pub const ENV_JITTER: &str = "CONFAB_SYNC_JITTER_MS";
/// Largest interval or jitter accepted anywhere: one hour.
pub const MAX_INTERVAL_MS: u64 = 3_600_000;
/// The failure backoff never exceeds this (unless the interval itself is longer).
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// A valid millisecond value from the environment, else `None` (ignored).
fn env_ms(env: &impl Fn(&str) -> Option<String>, key: &str, min: u64) -> Option<u64> {
    let v: u64 = env(key)?.trim().parse().ok()?;
    (min..=MAX_INTERVAL_MS).contains(&v).then_some(v)
}

/// config.toml as written; every key optional.
#[derive(Deserialize, Default, Debug)]
struct TuningFile {
    interval_ms: Option<u64>,
    jitter_ms: Option<u64>,
    http_timeout_ms: Option<u64>,
    chunk_target_bytes: Option<u64>,
    chunk_hard_limit_bytes: Option<u64>,
    log_level: Option<String>,
    parent_check_ms: Option<u64>,
    transcript_poll_ms: Option<u64>,
    transcript_wait_ms: Option<u64>,
    shutdown_budget_ms: Option<u64>,
    session_gone_cycles: Option<u32>,
}

impl TuningFile {
    /// Parses and range-checks; the error is one line.
    fn parse(text: &str) -> Result<TuningFile, String> {
        let f: TuningFile = toml::from_str(text).map_err(|e| {
            let msg = e.message().replace('\n', " ");
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("{msg} (line {line})")
                }
                None => msg,
            }
        })?;
        let check = |key: &str, v: Option<u64>, min: u64, max: u64| match v {
            Some(v) if !(min..=max).contains(&v) => {
                Err(format!("{key} = {v} is outside {min}..={max}"))
            }
            _ => Ok(()),
        };
        let day = 86_400_000;
        check("interval_ms", f.interval_ms, 1, MAX_INTERVAL_MS)?;
        check("jitter_ms", f.jitter_ms, 0, MAX_INTERVAL_MS)?;
        check("http_timeout_ms", f.http_timeout_ms, 1, day)?;
        check(
            "chunk_hard_limit_bytes",
            f.chunk_hard_limit_bytes,
            1,
            CHUNK_HARD_LIMIT as u64,
        )?;
        check("chunk_target_bytes", f.chunk_target_bytes, 1, u64::MAX)?;
        check("parent_check_ms", f.parent_check_ms, 1, day)?;
        check("transcript_poll_ms", f.transcript_poll_ms, 1, day)?;
        check("transcript_wait_ms", f.transcript_wait_ms, 0, day)?;
        check("shutdown_budget_ms", f.shutdown_budget_ms, 0, day)?;
        check(
            "session_gone_cycles",
            f.session_gone_cycles.map(u64::from),
            1,
            1_000_000,
        )?;
        Ok(f)
    }

    /// Applies the file over the defaults, then the environment over both (§0).
    fn resolve(self, env_interval: Option<u64>, env_jitter: Option<u64>) -> Tuning {
        let d = Tuning::default();
        let ms = Duration::from_millis;
        let interval_set = env_interval.or(self.interval_ms);
        let interval = interval_set.map_or(d.interval, ms);
        // Setting only the interval turns jitter off, so short test intervals stay exact (H37).
        let jitter = match (env_jitter.or(self.jitter_ms), interval_set) {
            (Some(j), _) => ms(j),
            (None, Some(_)) => Duration::ZERO,
            (None, None) => d.jitter,
        };
        let chunk_hard_limit = self
            .chunk_hard_limit_bytes
            .map_or(d.chunk_hard_limit, |v| v as usize);
        let chunk_target_bytes = self
            .chunk_target_bytes
            .map_or(d.chunk_target_bytes, |v| {
                usize::try_from(v).unwrap_or(usize::MAX)
            })
            .min(chunk_hard_limit);
        Tuning {
            interval,
            jitter: jitter.min(interval / 2),
            http_timeout: self.http_timeout_ms.map_or(d.http_timeout, ms),
            chunk_target_bytes,
            chunk_hard_limit,
            log_level: self.log_level.filter(|l| !l.trim().is_empty()),
            parent_check: self.parent_check_ms.map_or(d.parent_check, ms),
            transcript_poll: self.transcript_poll_ms.map_or(d.transcript_poll, ms),
            transcript_wait: self.transcript_wait_ms.map_or(d.transcript_wait, ms),
            shutdown_budget: self.shutdown_budget_ms.map_or(d.shutdown_budget, ms),
            session_gone_cycles: self.session_gone_cycles.unwrap_or(d.session_gone_cycles),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::collections::HashMap;

    const KEY: &str = "cfb_secret_key_ABCDEFGH12345678";

    fn home_paths(home: &Path) -> Paths {
        let home = home.to_path_buf();
        Paths::from_lookup(move |k| (k == "HOME").then(|| home.clone()))
    }

    fn fixed_paths() -> Paths {
        Paths::from_lookup(|k| (k == "HOME").then(|| PathBuf::from("/h")))
    }

    fn creds(url: &str, key: &str) -> Credentials {
        Credentials {
            backend_url: url.to_string(),
            api_key: key.to_string(),
            ..Default::default()
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn missing_credentials_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(read_credentials(&tmp.path().join("nope.json")), Ok(None));
    }

    #[test]
    fn credentials_parse_and_ignore_unknown_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let p = write(
            tmp.path(),
            "c.json",
            r#"{"backend_url":"https://b.example","api_key":"k1","log_level":"debug","extra":{"x":1},
               "redaction":{"enabled":true,"use_default_patterns":null,
                 "patterns":[{"name":"n","type":"regex","pattern":"a+","capture_group":1,"zzz":2}]}}"#,
        );
        let c = read_credentials(&p).unwrap().unwrap();
        assert_eq!(c.backend_url, "https://b.example");
        assert_eq!(c.api_key, "k1");
        assert_eq!(c.log_level.as_deref(), Some("debug"));
        assert!(c.redaction.enabled);
        assert_eq!(c.redaction.use_default_patterns, None);
        assert_eq!(c.redaction.patterns[0].kind, "regex");
        assert_eq!(c.redaction.patterns[0].capture_group, Some(1));
    }

    #[test]
    fn credentials_nulls_read_as_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let p = write(
            tmp.path(),
            "c.json",
            r#"{"backend_url":null,"api_key":null,"redaction":null}"#,
        );
        assert_eq!(read_credentials(&p), Ok(Some(Credentials::default())));
    }

    #[test]
    fn invalid_credentials_error_is_one_line_without_key() {
        let tmp = tempfile::tempdir().unwrap();
        for (i, text) in [
            format!(r#"{{"backend_url":"http://x","api_key":"{KEY}""#),
            format!(r#""{KEY}""#),
            format!(r#"{{"backend_url":"{KEY}","redaction":"{KEY}"}}"#),
            format!(r#"{{"api_key":["{KEY}"]}}"#),
            String::new(),
            "[1,2]".to_string(),
        ]
        .iter()
        .enumerate()
        {
            let p = write(tmp.path(), &format!("c{i}.json"), text);
            let err = read_credentials(&p).unwrap_err().0;
            assert!(!err.contains(KEY), "{err}");
            assert!(!err.contains('\n'), "{err}");
            assert!(err.contains("line"), "{err}");
        }
    }

    #[test]
    fn debug_hides_the_key() {
        // H16 / X24
        let c = creds("https://b", KEY);
        assert!(!format!("{c:?}").contains(KEY));
        assert!(!format!("{c:#?}").contains(KEY));
        let sink = choose_sink(Some(&c), &fixed_paths()).unwrap();
        assert!(!format!("{sink:?}").contains(KEY));
    }

    #[test]
    fn no_config_or_empty_url_selects_default_archive() {
        let p = fixed_paths();
        let archive = SinkChoice::Archive {
            root: p.default_archive_root(),
        };
        assert_eq!(choose_sink(None, &p), Ok(archive.clone()));
        assert_eq!(choose_sink(Some(&creds("", "")), &p), Ok(archive.clone()));
        assert_eq!(choose_sink(Some(&creds("  ", KEY)), &p), Ok(archive));
    }

    #[test]
    fn file_urls_select_that_archive() {
        let p = fixed_paths();
        let root = |u: &str| choose_sink(Some(&creds(u, "")), &p);
        let archive = |r: &str| {
            Ok(SinkChoice::Archive {
                root: PathBuf::from(r),
            })
        };
        assert_eq!(root("file:///tmp/x/arch"), archive("/tmp/x/arch"));
        assert_eq!(root("file:///tmp/x/arch/"), archive("/tmp/x/arch"));
        assert_eq!(root("file://localhost/tmp/a%20b"), archive("/tmp/a b"));
        assert_eq!(root("FILE://LocalHost/tmp/%C3%A9"), archive("/tmp/é"));
        assert_eq!(root("file:///"), archive("/"));
        for bad in [
            "file://otherhost/tmp",
            "file://relative/path",
            "file:relative",
            "file:/abs",
            "file:///a?q",
            "file:///a#f",
            "file:///a%00b",
            "file://localhost",
        ] {
            let err = root(bad).expect_err(bad);
            assert!(!err.0.contains('\n'));
        }
    }

    #[test]
    fn http_urls() {
        let p = fixed_paths();
        let http = |u: &str| choose_sink(Some(&creds(u, KEY)), &p);
        let base = |b: &str| {
            Ok(SinkChoice::Http {
                base_url: b.to_string(),
                api_key: KEY.to_string(),
            })
        };
        assert_eq!(http("http://127.0.0.1:8080"), base("http://127.0.0.1:8080"));
        assert_eq!(
            http("http://127.0.0.1:8080/"),
            base("http://127.0.0.1:8080")
        );
        assert_eq!(http("https://h/confab///"), base("https://h/confab"));
        assert_eq!(http(" https://h/pre/ "), base("https://h/pre"));
        for bad in [
            "http://",
            "https://h/?q=1",
            "https://h/#f",
            "ftp://h",
            "h:80",
            "nonsense",
            "https://u:p@h/",
        ] {
            assert!(http(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_key_rules() {
        let p = fixed_paths();
        let sink = |k: &str| choose_sink(Some(&creds("https://h", k)), &p);
        let err = sink("").unwrap_err().0;
        assert!(err.starts_with("not authenticated"), "{err}");
        assert!(sink("   ").unwrap_err().0.starts_with("not authenticated"));
        assert_eq!(
            sink(&format!("  {KEY}\n")),
            Ok(SinkChoice::Http {
                base_url: "https://h".into(),
                api_key: KEY.into()
            })
        );
        for bad in [
            format!("{KEY}\r\nX-Evil: 1"),
            "a\u{1}b".to_string(),
            "a\tb".to_string(),
            "a\u{7f}".to_string(),
        ] {
            let err = sink(&bad).unwrap_err().0;
            assert!(!err.contains(KEY) && !err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn join_url_never_doubles_slashes() {
        // G7
        for (base, want) in [
            ("http://h:1", "http://h:1/api/v1/sync/init"),
            ("http://h:1/", "http://h:1/api/v1/sync/init"),
            ("http://h:1/pre/", "http://h:1/pre/api/v1/sync/init"),
            ("http://h:1/pre", "http://h:1/pre/api/v1/sync/init"),
        ] {
            let got = join_url(base, "/api/v1/sync/init");
            assert_eq!(got, want);
            assert!(!got["http://".len()..].contains("//"));
        }
        // The whole path from config to request URL.
        let p = fixed_paths();
        let SinkChoice::Http { base_url, .. } =
            choose_sink(Some(&creds("http://h:1/pre/", "k")), &p).unwrap()
        else {
            panic!("http expected")
        };
        assert_eq!(
            join_url(&base_url, "/api/v1/sync/init"),
            "http://h:1/pre/api/v1/sync/init"
        );
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn load(home: &Path, vars: &[(&str, &str)]) -> Result<Tuning, ConfigError> {
        Tuning::load(&home_paths(home), env_of(vars))
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn env_parsing_k1() {
        let tmp = tempfile::tempdir().unwrap();
        let h = tmp.path();
        let t = load(h, &[]).unwrap();
        assert_eq!(t, Tuning::default());
        assert_eq!((t.interval, t.jitter), (ms(30_000), ms(5_000)));

        let t = load(h, &[(ENV_INTERVAL, "2000")]).unwrap();
        assert_eq!((t.interval, t.jitter), (ms(2000), ms(0)));
        let t = load(h, &[(ENV_INTERVAL, "2000"), (ENV_JITTER, "1000")]).unwrap();
        assert_eq!((t.interval, t.jitter), (ms(2000), ms(1000)));
        let t = load(h, &[(ENV_JITTER, "1000")]).unwrap();
        assert_eq!((t.interval, t.jitter), (ms(30_000), ms(1000)));
        let t = load(h, &[(ENV_JITTER, "0")]).unwrap();
        assert_eq!((t.interval, t.jitter), (ms(30_000), ms(0)));
        for bad in ["0", "-5", "abc", "3600001", "", "1.5"] {
            let t = load(h, &[(ENV_INTERVAL, bad)]).unwrap();
            assert_eq!((t.interval, t.jitter), (ms(30_000), ms(5_000)), "{bad}");
        }
        for bad in ["-1", "abc", "3600001"] {
            let t = load(h, &[(ENV_JITTER, bad)]).unwrap();
            assert_eq!(t.jitter, ms(5_000), "{bad}");
        }
        let t = load(h, &[(ENV_INTERVAL, "3600000")]).unwrap();
        assert_eq!(t.interval, ms(3_600_000));
    }

    #[test]
    fn toml_file_and_env_precedence() {
        let tmp = tempfile::tempdir().unwrap();
        let h = tmp.path();
        write(
            h,
            ".config/confab-sync/config.toml",
            "interval_ms = 10000\njitter_ms = 2000\nhttp_timeout_ms = 5000\nchunk_target_bytes = 1000\n\
             chunk_hard_limit_bytes = 2000\nlog_level = \"debug\"\nparent_check_ms = 200\n\
             transcript_poll_ms = 50\ntranscript_wait_ms = 300\nshutdown_budget_ms = 0\n\
             session_gone_cycles = 5\nfuture_key = \"ignored\"\n",
        );
        let t = load(h, &[]).unwrap();
        assert_eq!(
            t,
            Tuning {
                interval: ms(10_000),
                jitter: ms(2000),
                http_timeout: ms(5000),
                chunk_target_bytes: 1000,
                chunk_hard_limit: 2000,
                log_level: Some("debug".into()),
                parent_check: ms(200),
                transcript_poll: ms(50),
                transcript_wait: ms(300),
                shutdown_budget: ms(0),
                session_gone_cycles: 5,
            }
        );
        let t = load(h, &[(ENV_INTERVAL, "100"), (ENV_JITTER, "10")]).unwrap();
        assert_eq!((t.interval, t.jitter), (ms(100), ms(10)));
        // Env interval with the file's jitter: jitter is set (in the file), capped at interval/2.
        let t = load(h, &[(ENV_INTERVAL, "100")]).unwrap();
        assert_eq!((t.interval, t.jitter), (ms(100), ms(50)));
        // Invalid env is ignored: the file applies.
        let t = load(h, &[(ENV_INTERVAL, "nope")]).unwrap();
        assert_eq!(t.interval, ms(10_000));
    }

    #[test]
    fn toml_interval_only_turns_jitter_off_and_target_is_capped() {
        let tmp = tempfile::tempdir().unwrap();
        let h = tmp.path();
        write(
            h,
            ".config/confab-sync/config.toml",
            "interval_ms = 500\nchunk_target_bytes = 99999999\n",
        );
        let t = load(h, &[]).unwrap();
        assert_eq!((t.interval, t.jitter), (ms(500), ms(0)));
        assert_eq!(t.chunk_target_bytes, CHUNK_HARD_LIMIT);
    }

    #[test]
    fn invalid_toml_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let h = tmp.path();
        for text in [
            "interval_ms = \"fast\"",
            "interval_ms = 0",
            "interval_ms = -5",
            "jitter_ms = 3600001",
            "chunk_hard_limit_bytes = 99999999",
            "session_gone_cycles = 0",
            "this is not toml",
        ] {
            write(h, ".config/confab-sync/config.toml", text);
            let err = load(h, &[]).expect_err(text).0;
            assert!(!err.contains('\n'), "{err}");
            assert!(err.contains("config.toml"), "{err}");
        }
    }

    #[test]
    fn default_delays_lie_in_25_to_35_s_and_vary() {
        // X37
        let t = Tuning::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..200).map(|_| t.cycle_delay(&mut rng)).collect();
        assert!(delays.iter().all(|d| (ms(25_000)..=ms(35_000)).contains(d)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 100);
        assert!(delays.iter().any(|d| *d < ms(27_000)) && delays.iter().any(|d| *d > ms(33_000)));
    }

    #[test]
    fn jitter_is_capped_at_half_the_interval() {
        // X37: interval 200 ms, jitter 500 ms → ±100 ms; jitter 60 ms → [140, 260].
        let tmp = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let t = load(tmp.path(), &[(ENV_INTERVAL, "200"), (ENV_JITTER, "500")]).unwrap();
        assert_eq!(t.jitter, ms(100));
        let d: Vec<_> = (0..500).map(|_| t.cycle_delay(&mut rng)).collect();
        assert!(d.iter().all(|d| (ms(100)..=ms(300)).contains(d)));
        assert!(d.iter().any(|d| *d < ms(120)) && d.iter().any(|d| *d > ms(280)));

        let t = load(tmp.path(), &[(ENV_INTERVAL, "200"), (ENV_JITTER, "60")]).unwrap();
        let d: Vec<_> = (0..500).map(|_| t.cycle_delay(&mut rng)).collect();
        assert!(d.iter().all(|d| (ms(140)..=ms(260)).contains(d)));
        assert!(d.iter().any(|x| *x != d[0]));

        // A hand-built Tuning with an uncapped jitter is still capped.
        let t = Tuning {
            interval: ms(200),
            jitter: ms(1000),
            ..Tuning::default()
        };
        assert!((0..200).all(|_| (ms(100)..=ms(300)).contains(&t.cycle_delay(&mut rng))));
    }

    #[test]
    fn interval_only_gives_exact_delays() {
        let tmp = tempfile::tempdir().unwrap();
        let t = load(tmp.path(), &[(ENV_INTERVAL, "200")]).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        assert!((0..50).all(|_| t.cycle_delay(&mut rng) == ms(200)));
    }

    #[test]
    fn failure_backoff_doubles_to_the_cap() {
        let t = Tuning {
            interval: ms(100),
            ..Tuning::default()
        };
        assert_eq!(t.failure_backoff(0), ms(100));
        assert_eq!(t.failure_backoff(1), ms(100));
        assert_eq!(t.failure_backoff(2), ms(200));
        assert_eq!(t.failure_backoff(3), ms(400));
        assert_eq!(t.failure_backoff(12), ms(204_800));
        assert_eq!(t.failure_backoff(13), ms(300_000));
        assert_eq!(t.failure_backoff(40), ms(300_000));
        assert_eq!(t.failure_backoff(u32::MAX), ms(300_000));
        let long = Tuning {
            interval: ms(600_000),
            ..Tuning::default()
        };
        assert_eq!(long.failure_backoff(1), ms(600_000));
        assert_eq!(long.failure_backoff(5), ms(600_000));
    }
}
