//! The `confab-sync` command line (cli.md): `run` (the daemon), the Claude Code `hook`s, and the
//! user commands `status`, `stop`, `logs`, `install` and `uninstall`, plus hidden `completions`
//! and `man` for packaging.
//!
//! Invariants: every command but `hook` exits 0 on success and non-zero with one line on stderr
//! otherwise; `hook` always exits 0 and prints exactly its one JSON response line on stdout, even
//! when it panics; nothing but that response and the data a user asked for reaches stdout.
//!
//! Layout: `cli` declares the command line; this file dispatches it and holds the handlers.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};

use confab_sync::config::Tuning;
use confab_sync::daemon::{Daemon, Exit, RunOptions};
use confab_sync::hooks::{self, HookEnv, HookKind};
use confab_sync::paths::Paths;
use confab_sync::service::{self, ManagerKind, ServiceContext};
use confab_sync::{reaper, state, status};

mod cli;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => cmd_run(args.into()),
        Command::Hook { event } => hook(event.into()),
        other => {
            confab_sync::logging::init(Some("warn"), None);
            let result = match other {
                Command::Status { json, prune } => cmd_status(json, prune),
                Command::Stop { id } => cmd_stop(&id),
                Command::Logs { id, follow } => cmd_logs(&id, follow),
                Command::Install {
                    hooks,
                    service_manager,
                } => cmd_install(hooks, service_manager.as_deref()),
                Command::Uninstall { hooks } => cmd_uninstall(hooks),
                Command::Completions { shell } => cmd_completions(shell),
                Command::Man => cmd_man(),
                Command::Run(_) | Command::Hook { .. } => unreachable!("handled above"),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("confab-sync: {}", e.replace('\n', " "));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `run`: the daemon in the foreground, on a single-threaded runtime, until a shutdown reason.
fn cmd_run(opts: RunOptions) -> ExitCode {
    apply_launch_env(&opts.session_id);
    let paths = Paths::from_env();
    let tuning = match Tuning::load(&paths, |k| std::env::var(k).ok()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("confab-sync: {e}");
            return ExitCode::from(78);
        }
    };
    // config.toml's level wins; config.json's applies only when the TOML sets none (§8).
    let json_level = confab_sync::config::read_credentials(&paths.config_json)
        .ok()
        .flatten()
        .and_then(|c| c.log_level);
    let level = tuning.log_level.clone().or(json_level);
    confab_sync::logging::init(level.as_deref(), Some(&opts.session_id));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let exit = rt.block_on(async move {
        // Handlers first: a SIGTERM that arrives while the daemon starts up must still
        // mean a clean shutdown, not the default action (death without clean-up).
        let shutdown = signals();
        let daemon = Daemon::new(opts, paths, tuning);
        daemon.run(shutdown).await
    });
    report_exit(exit)
}

/// Runs a hook; whatever happens (a panic included) prints the response and exits 0.
fn hook(kind: HookKind) -> ExitCode {
    confab_sync::logging::init(Some("warn"), None);
    let notes = std::panic::catch_unwind(|| {
        hooks::run(kind, std::io::stdin().lock(), &HookEnv::from_env())
    })
    .unwrap_or_else(|_| {
        vec![format!(
            "hook {} failed unexpectedly; nothing more done",
            kind.name()
        )]
    });
    for n in notes {
        eprintln!("confab-sync: {n}");
    }
    // A closed stdout must not turn into a failure either.
    let _ = writeln!(std::io::stdout(), "{}", kind.response());
    ExitCode::SUCCESS
}

fn cmd_status(json: bool, prune: bool) -> Result<(), String> {
    let paths = Paths::from_env();
    if prune {
        for r in reaper::reap(
            &paths,
            None,
            &reaper::Policy::prune(),
            std::time::SystemTime::now(),
        ) {
            eprintln!("removed the stale files of session {}", r.session_id);
        }
    }
    let rows = status::collect(&paths);
    let out = if json {
        format!("{}\n", status::to_json(&rows))
    } else {
        status::render_table(&rows)
    };
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| format!("cannot write: {e}"))
}

fn valid_id(id: &str) -> Result<(), String> {
    confab_sync::paths::validate_session_id(id)
}

/// The manager the environment asks for (`auto` resolved), for sessions without a state.
fn configured_kind(paths: &Paths) -> Result<ManagerKind, String> {
    let choice = service::requested_choice(None, |k| std::env::var(k).ok())?;
    let ctx = ServiceContext::new(paths.clone())
        .map_err(|e| format!("cannot locate the confab-sync binary: {e}"))?;
    Ok(service::resolve_kind(choice, &ctx))
}

fn cmd_stop(id: &str) -> Result<(), String> {
    valid_id(id)?;
    let paths = Paths::from_env();
    let loaded = state::load(&paths.state_file(id)).unwrap_or_else(|e| {
        eprintln!("confab-sync: {e}");
        None
    });
    if !status::daemon_is_live(&paths, id, loaded.as_ref()) {
        eprintln!("confab-sync: session {id} is not running");
        return Ok(());
    }
    let fallback = loaded
        .is_none()
        .then(|| configured_kind(&paths))
        .transpose()?
        .unwrap_or(ManagerKind::None);
    let kind = status::owning_manager(loaded.as_ref(), fallback);
    eprintln!("confab-sync: {}", status::request_stop(&paths, id, kind)?);
    let budget = Tuning::load(&paths, |k| std::env::var(k).ok())
        .map(|t| t.shutdown_budget)
        .unwrap_or_default();
    let within = budget.max(Tuning::default().shutdown_budget) + Duration::from_secs(5);
    if status::wait_until_stopped(&paths, id, within) {
        eprintln!("confab-sync: session {id} stopped");
        Ok(())
    } else {
        Err(format!(
            "session {id} is still running {}s after the stop request",
            within.as_secs()
        ))
    }
}

fn cmd_logs(id: &str, follow: bool) -> Result<(), String> {
    valid_id(id)?;
    let paths = Paths::from_env();
    let from_state = state::load(&paths.state_file(id))
        .ok()
        .flatten()
        .and_then(|s| s.confab_sync.service_manager.parse::<ManagerKind>().ok());
    let log = paths.log_file(id);
    let journal = match from_state {
        Some(k) => k == ManagerKind::Systemd,
        None => !log.exists() && configured_kind(&paths).is_ok_and(|k| k == ManagerKind::Systemd),
    };
    if journal {
        return exec_journalctl(id, follow);
    }
    if !log.exists() {
        return Err(format!(
            "no log for session {id} ({} does not exist)",
            log.display()
        ));
    }
    if follow {
        follow_file(&log)
    } else {
        let mut f =
            std::fs::File::open(&log).map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        std::io::copy(&mut f, &mut std::io::stdout().lock())
            .map(drop)
            .map_err(|e| format!("cannot read {}: {e}", log.display()))
    }
}

/// Replaces this process with [`status::journal_argv`].
fn exec_journalctl(id: &str, follow: bool) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let argv = status::journal_argv(id, follow);
    let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
    Err(format!("cannot run journalctl: {err}"))
}

/// `tail -f`: prints the file, then what is appended (starting over when the file is truncated or
/// replaced), polling every 200 ms until SIGINT or SIGTERM.
fn follow_file(path: &std::path::Path) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut tail = Tail::default();
        loop {
            tail.poll(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            tokio::select! {
                _ = int.recv() => return Ok(()),
                _ = term.recv() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    })
}

/// Where `logs -f` is in the file.
#[derive(Default)]
struct Tail {
    ino: Option<u64>,
    pos: u64,
}

impl Tail {
    fn poll(&mut self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        use std::os::unix::fs::MetadataExt;
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let meta = f.metadata()?;
        if self.ino != Some(meta.ino()) || meta.len() < self.pos {
            self.ino = Some(meta.ino());
            self.pos = 0;
        }
        if meta.len() > self.pos {
            f.seek(SeekFrom::Start(self.pos))?;
            let n = std::io::copy(
                &mut Read::by_ref(&mut f).take(meta.len() - self.pos),
                &mut std::io::stdout().lock(),
            )?;
            self.pos += n;
            std::io::stdout().flush()?;
        }
        Ok(())
    }
}

fn service_context() -> Result<ServiceContext, String> {
    ServiceContext::new(Paths::from_env())
        .map_err(|e| format!("cannot locate the confab-sync binary: {e}"))
}

fn cmd_install(hooks: bool, manager: Option<&str>) -> Result<(), String> {
    let ctx = service_context()?;
    let choice = service::requested_choice(manager, |k| std::env::var(k).ok())?;
    let kind = service::resolve_kind(choice, &ctx);
    for note in confab_sync::install::install(&ctx, kind, hooks)? {
        eprintln!("{note}");
    }
    Ok(())
}

fn cmd_uninstall(hooks: bool) -> Result<(), String> {
    for note in confab_sync::install::uninstall(&service_context()?, hooks)? {
        eprintln!("{note}");
    }
    Ok(())
}

fn cmd_completions(shell: clap_complete::Shell) -> Result<(), String> {
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "confab-sync",
        &mut std::io::stdout(),
    );
    Ok(())
}

fn cmd_man() -> Result<(), String> {
    clap_mangen::Man::new(Cli::command())
        .render(&mut std::io::stdout())
        .map_err(|e| format!("cannot write the man page: {e}"))
}

fn report_exit(exit: Exit) -> ExitCode {
    match &exit {
        Exit::Clean(why) => tracing::info!("exiting: {why}"),
        Exit::AlreadyRunning(msg) => eprintln!("{msg}"),
        Exit::Invalid(msg) | Exit::Failed(msg) => eprintln!("confab-sync: {msg}"),
    }
    ExitCode::from(exit.code() as u8)
}

/// Installs the handlers now and returns the future of SIGTERM or SIGINT; SIGHUP is ignored.
fn signals() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    async move {
        let _hup = hup;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
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
            if (k.starts_with("CONFAB_") || k == "XDG_DATA_HOME") && std::env::var_os(&k).is_none()
            {
                std::env::set_var(k, v);
            }
        }
    }
}
