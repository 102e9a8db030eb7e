//! Log set-up: journald with structured fields when systemd runs us (its stdout is the journal),
//! human-readable stderr otherwise. The level comes from `CONFAB_LOG` (a tracing filter), else
//! config.toml's `log_level`, else config.json's `log_level`, else `info`.
//!
//! Invariant: nothing logged anywhere contains the API key or request bodies (H16); the backend
//! module only ever logs statuses and truncated response bodies.

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// True when stderr is connected to the journal (systemd sets `JOURNAL_STREAM` to its dev:ino).
pub fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(meta) = nix::sys::stat::fstat(2) else {
        return false;
    };
    // dev_t and ino_t are not u64 everywhere (macOS: i32 dev_t); the casts are for them.
    #[allow(clippy::unnecessary_cast)]
    let (st_dev, st_ino) = (meta.st_dev as u64, meta.st_ino as u64);
    dev.parse::<u64>().ok() == Some(st_dev) && ino.parse::<u64>().ok() == Some(st_ino)
}

/// syslog priorities as journald users expect them: info is 6 (tracing-journald's default maps it
/// to 5, "notice", which `journalctl` highlights as if every progress line were noteworthy).
fn journal_priorities() -> PriorityMappings {
    PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// Installs the global subscriber. `session` adds `CONFAB_SESSION=<id>` to every journal record.
pub fn init(level: Option<&str>, session: Option<&str>) {
    let filter = std::env::var("CONFAB_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| level.and_then(|l| EnvFilter::try_new(l.to_ascii_lowercase()).ok()))
        .unwrap_or_else(|| EnvFilter::new("info"));
    if stderr_is_journal() {
        if let Ok(layer) = tracing_journald::layer() {
            let fields: Vec<(String, String)> = session
                .map(|s| vec![("CONFAB_SESSION".to_string(), s.to_string())])
                .unwrap_or_default();
            let layer = layer
                .with_syslog_identifier("confab-sync".into())
                .with_priority_mappings(journal_priorities())
                // Span and event fields become CONFAB_BACKEND_SESSION, CONFAB_FILE, CONFAB_LINE...
                .with_field_prefix(Some("CONFAB".into()))
                .with_custom_fields(fields);
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .try_init();
            return;
        }
    }
    // Colour only for a person at a terminal: detached daemons write to a log file.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init();
}
