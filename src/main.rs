//! The `confab-sync` command line (cli.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use confab_sync::config::Tuning;
use confab_sync::daemon::{Daemon, Exit, RunOptions};
use confab_sync::paths::Paths;

#[derive(Parser)]
#[command(name = "confab-sync", version, about = "Keeps a live, lossless copy of every Claude Code session")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one session's sync daemon in the foreground (what the service manager executes).
    Run {
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { session_id, transcript, cwd, parent_pid, once } => {
            apply_launch_env(&session_id);
            let paths = Paths::from_env();
            let tuning = match Tuning::load(&paths, |k| std::env::var(k).ok()) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("confab-sync: {e}");
                    return ExitCode::from(78);
                }
            };
            confab_sync::logging::init(tuning.log_level.as_deref(), Some(&session_id));
            let opts = RunOptions { session_id, transcript, cwd, parent_pid, once, service_manager: None };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            let exit = rt.block_on(async move {
                let daemon = Daemon::new(opts, paths, tuning);
                daemon.run(signals()).await
            });
            report_exit(exit)
        }
    }
}

fn report_exit(exit: Exit) -> ExitCode {
    match &exit {
        Exit::Clean(why) => tracing::info!("exiting: {why}"),
        Exit::AlreadyRunning(msg) => eprintln!("{msg}"),
        Exit::Invalid(msg) | Exit::Failed(msg) => eprintln!("confab-sync: {msg}"),
    }
    ExitCode::from(exit.code() as u8)
}

/// SIGTERM or SIGINT; SIGHUP is ignored.
async fn signals() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let _hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// A service manager does not pass Claude Code's environment: the hook saved the `CONFAB_*` (and
/// `XDG_DATA_HOME`) variables in the state's `launch_env`; apply each one we lack. Runs before any
/// thread exists, as `set_var` requires.
fn apply_launch_env(id: &str) {
    if confab_sync::paths::validate_session_id(id).is_err() {
        return;
    }
    let paths = Paths::from_env();
    if let Ok(Some(state)) = confab_sync::state::load(&paths.state_file(id)) {
        for (k, v) in state.confab_sync.launch_env {
            if (k.starts_with("CONFAB_") || k == "XDG_DATA_HOME") && std::env::var_os(&k).is_none() {
                std::env::set_var(k, v);
            }
        }
    }
}
