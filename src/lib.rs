//! confab-sync: keeps a live, lossless copy of every Claude Code session on a confab backend (or
//! a local archive). Data flows one way: files → reader → chunker → sink → checkpoint.
//!
//! Module map:
//! - [`paths`], [`config`]: where things are and how the daemon is tuned.
//! - [`state`], [`inbox`], [`lock`], [`liveness`]: the on-disk session files and process liveness.
//! - [`reader`], [`chunker`], [`discovery`]: reading complete lines, cutting chunks, finding agents.
//! - [`redact`], [`metadata`], [`summary_link`]: what gets changed or attached before sending.
//! - [`sink`], [`backend`], [`archive`]: where lines go.
//! - [`filesync`]: one file's position and chunk loop; [`engine`]: one sync cycle over a session;
//!   [`checkpoint`]: the state file's writes, off the request path; [`daemon`]: the `run`
//!   lifecycle; [`sdnotify`]: systemd readiness, status and watchdog; [`memory`]: what an idle
//!   daemon gives back.
//! - [`hooks`], [`reaper`], [`status`]: the Claude Code hooks, stale-file clean-up, and session
//!   status and control (`status`, `stop`).
//! - [`service`], [`install`]: systemd, launchd and detached launching, and `install`/`uninstall`;
//!   [`watch`]: file-change wake-ups; [`logging`], [`progress`]: journald/terminal output.

pub mod archive;
pub mod backend;
pub mod checkpoint;
pub mod chunker;
pub mod config;
pub mod daemon;
pub mod discovery;
pub mod engine;
pub mod filesync;
pub mod hooks;
pub mod inbox;
pub mod install;
pub mod liveness;
pub mod lock;
pub mod logging;
pub mod memory;
pub mod metadata;
pub mod paths;
pub mod progress;
pub mod reader;
pub mod reaper;
pub mod redact;
pub mod sdnotify;
pub mod service;
pub mod sink;
pub mod state;
pub mod status;
pub mod summary_link;
pub mod watch;
