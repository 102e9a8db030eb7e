//! The `confab-sync` command line as clap sees it (cli.md): every subcommand, flag and help text,
//! from which the binary parses its arguments and packaging renders completions and the man page.
//! Part of the binary, not the library; the handlers are in `main.rs`.
//!
//! Invariants: only declarations live here (and their mapping to the library's [`RunOptions`] and
//! [`HookKind`]);
//! `--help`, the completions and the man page all come from them, so they cannot disagree.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use confab_sync::daemon::RunOptions;
use confab_sync::hooks::HookKind;

#[derive(Parser)]
#[command(
    name = "confab-sync",
    version,
    about = "Keeps a live, lossless copy of every Claude Code session"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run one session's sync daemon in the foreground (what the service manager executes).
    Run(RunArgs),
    /// Claude Code hook handlers: read the hook JSON on stdin, always exit 0.
    Hook {
        #[command(subcommand)]
        event: HookEvent,
    },
    /// One row per known session: state, pid, service manager, uptime, lines synced, errors.
    ///
    /// STATE is `running` (its daemon holds the session lock), `stopped` (no daemon holds it, but
    /// the recorded process still runs: starting or stopping) or `stale` (its daemon is gone; the
    /// next session start, or `--prune`, removes the files).
    Status {
        /// Print `{"sessions":[…]}` instead of a table.
        #[arg(long)]
        json: bool,
        /// First remove the files of sessions whose daemon is dead (older than 5 s, lock free),
        /// even if their Claude Code process still runs.
        #[arg(long, visible_alias = "reap")]
        prune: bool,
    },
    /// Stop one session's daemon gracefully (final sync), through the service manager that owns it.
    Stop {
        /// The session id.
        #[arg(allow_hyphen_values = true, value_name = "ID")]
        id: String,
    },
    /// Show one session's log (the journal for systemd daemons, the log file otherwise).
    Logs {
        /// The session id.
        #[arg(allow_hyphen_values = true, value_name = "ID")]
        id: String,
        /// Keep printing new lines until interrupted.
        #[arg(short, long)]
        follow: bool,
    },
    /// Install the service side (systemd unit template, launchd) and, with --hooks, the Claude Code hooks.
    Install {
        /// Also register the hooks in Claude Code's settings.json.
        #[arg(long)]
        hooks: bool,
        /// auto, systemd, launchd or none (default: $CONFAB_SERVICE_MANAGER, else auto).
        #[arg(long, value_name = "MANAGER")]
        service_manager: Option<String>,
    },
    /// Reverse `install`: remove the unit template and, with --hooks, our Claude Code hooks.
    Uninstall {
        /// Also remove our hooks from Claude Code's settings.json.
        #[arg(long)]
        hooks: bool,
    },
    /// Print a shell completion script (for packaging).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page in roff (for packaging).
    #[command(hide = true)]
    Man,
}

#[derive(Args)]
pub struct RunArgs {
    #[arg(long)]
    session_id: String,
    #[arg(long)]
    transcript: Option<PathBuf>,
    #[arg(long)]
    cwd: Option<String>,
    #[arg(long)]
    parent_pid: Option<i64>,
    /// Catch up everything now and exit.
    #[arg(long)]
    once: bool,
}

impl From<RunArgs> for RunOptions {
    fn from(a: RunArgs) -> RunOptions {
        RunOptions {
            session_id: a.session_id,
            transcript: a.transcript,
            cwd: a.cwd,
            parent_pid: a.parent_pid,
            once: a.once,
            service_manager: None,
        }
    }
}

#[derive(Subcommand, Clone, Copy)]
pub enum HookEvent {
    /// SessionStart: start the session's daemon unless one is live.
    SessionStart,
    /// SessionEnd: queue the session_end event and ask the daemon to stop (does not wait).
    SessionEnd,
    /// UserPromptSubmit: start the daemon when none is live (resumed sessions); else nothing.
    UserPromptSubmit,
}

impl From<HookEvent> for HookKind {
    fn from(e: HookEvent) -> HookKind {
        match e {
            HookEvent::SessionStart => HookKind::SessionStart,
            HookEvent::SessionEnd => HookKind::SessionEnd,
            HookEvent::UserPromptSubmit => HookKind::UserPromptSubmit,
        }
    }
}
