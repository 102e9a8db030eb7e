//! Metadata (sync-engine §5): init metadata (git, hostname, username, caps) and per-chunk metadata
//! (git_info, summary, first_user_message with sanitize → redact → strip NUL → truncate).
//!
//! Invariants:
//! - Init metadata is never redacted; every string in it is free of U+0000 (H19) and a field over
//!   the backend's cap is omitted with a warning (H33), never sent truncated.
//! - A `repo_url` never carries a password or an http(s) user/token (H29).
//! - git runs with a 5 s timeout, `GIT_TERMINAL_PROMPT=0` and `GIT_OPTIONAL_LOCKS=0` (it must never
//!   prompt or take `index.lock` away from the user); any git failure just leaves fields out.
//! - `summary` and `first_user_message` go through [`process_text`]: the redaction happens before the
//!   truncation (H18), so no fragment of a secret cut at the limit survives.
//! - [`ChunkMetaCollector::observe`] runs on every line during catch-up: it parses a line only when
//!   a cheap substring test says it may matter, and stops looking for what it already has.
//!
//! Where the pieces live: `init` (init metadata and its caps), `git` (running git, repo URLs and
//! their credentials), `chunk` (the per-chunk collector), `text` (the text pipeline and U+0000).

mod chunk;
mod git;
mod init;
#[cfg(test)]
mod test_support;
mod text;

pub use chunk::ChunkMetaCollector;
pub use git::{strip_url_credentials, RepoUrlCache};
pub use init::{apply_init_caps, init_metadata};
pub use text::process_text;

/// `summary` limit in bytes, `...` included (H18).
pub const SUMMARY_LIMIT: usize = 2048;
/// `first_user_message` limit in bytes, `...` included (H18).
pub const FIRST_USER_MESSAGE_LIMIT: usize = 4096;
/// Backend caps on init metadata (protocol.md §3.1, H33).
pub const CWD_CAP: usize = 8192;
pub const HOSTNAME_CAP: usize = 255;
pub const USERNAME_CAP: usize = 255;
