//! The sink session: building the sink from config.json, noticing when config.json changes, and
//! init (full, or a refresh with cached metadata) adopting the sink's positions for every file
//! (sync-engine §2, §8, §13; protocol.md §5).
//!
//! Invariants:
//! - no chunk is sent before an init succeeded; every recovery goes through init (protocol.md §5);
//! - checkpoints from disk are trusted only when init returns the same session id from the same
//!   sink (sync-engine §8); the sink's positions always win;
//! - only file names that pass the init-key rule (the transcript's, or a valid agent file name) are
//!   tracked, whether they come from the state file or from the sink;
//! - a sink switch or an auth failure drops the session: the next cycle re-reads config.json and
//!   sends a full init, and the cursors kept are revalidated by it.

use std::collections::BTreeSet;

use super::Engine;
use crate::archive::ArchiveSink;
use crate::backend::HttpSink;
use crate::config::{self, SinkChoice};
use crate::filesync::{self, StatKey};
use crate::metadata;
use crate::redact::Redactor;
use crate::sink::{InitRequest, Sink, SinkError, PROVIDER};

/// The [`StatKey`] of config.json; None when it does not exist.
pub(super) type ConfigStamp = Option<StatKey>;

impl Engine {
    /// Forgets the sink session (auth failure, sink switch): the next cycle re-reads the config
    /// and sends a full init. Cursors are kept; that init revalidates them.
    pub fn drop_session(&mut self) {
        self.session_id = None;
        self.sink = None;
    }

    fn config_stamp(&self) -> ConfigStamp {
        std::fs::metadata(&self.paths.config_json)
            .ok()
            .map(|m| filesync::stat_key(&m))
    }

    /// Re-reads config.json when it changed; a change of sink drops the session (sync-engine §13).
    pub(super) fn check_config(&mut self) {
        let stamp = self.config_stamp();
        if self.config_stamp == Some(stamp) {
            return;
        }
        self.config_stamp = Some(stamp);
        if self.sink.is_none() {
            return;
        }
        let current = self.sink.as_ref().map(|s| s.identity());
        match self.build_sink() {
            Ok((sink, redactor)) => {
                if Some(sink.identity()) != current {
                    tracing::info!(
                        "config.json now selects {}; re-initialising",
                        sink.identity()
                    );
                    self.drop_session();
                } else {
                    self.redactor = redactor;
                }
            }
            Err(e) => {
                tracing::warn!("config.json changed and is invalid: {e}; re-initialising");
                self.drop_session();
            }
        }
    }

    fn build_sink(&self) -> Result<(Box<dyn Sink>, Option<Redactor>), SinkError> {
        let creds = config::read_credentials(&self.paths.config_json)
            .map_err(|e| SinkError::Config(e.0))?;
        let choice =
            config::choose_sink(creds.as_ref(), &self.paths).map_err(|e| SinkError::Config(e.0))?;
        let redactor = match &creds {
            Some(c) => Redactor::from_config(&c.redaction).map_err(|e| SinkError::Config(e.0))?,
            None => None,
        };
        let sink: Box<dyn Sink> = match choice {
            SinkChoice::Http { base_url, api_key } => Box::new(
                HttpSink::new(
                    &base_url,
                    &api_key,
                    self.tuning.http_timeout,
                    self.cancel.clone(),
                )
                .map_err(|e| SinkError::Config(e.0))?,
            ),
            SinkChoice::Archive { root } => Box::new(ArchiveSink::new(root)),
        };
        Ok((sink, redactor))
    }

    /// Full init when there is no session (re-reading the config), else a refresh with the cached
    /// metadata (H20). Adopts the sink's positions for every file.
    pub(super) async fn init(&mut self) -> Result<(), SinkError> {
        let full = self.session_id.is_none();
        if full {
            let (sink, redactor) = match self.build_sink() {
                Ok(x) => x,
                Err(e) => {
                    if self.last_config_error.as_deref() != Some(&e.to_string()) {
                        tracing::error!("{e}");
                        self.last_config_error = Some(e.to_string());
                    }
                    return Err(e);
                }
            };
            self.last_config_error = None;
            self.sink = Some(sink);
            self.redactor = redactor;
            let (cwd, transcript) = (self.session.cwd.clone(), self.session.transcript.clone());
            let meta =
                tokio::task::spawn_blocking(move || metadata::init_metadata(&cwd, &transcript))
                    .await
                    .unwrap_or_default();
            self.init_meta = Some(meta);
        }
        let sink = self
            .sink
            .as_ref()
            .expect("sink built above or kept from the session");
        let req = InitRequest {
            external_id: self.session.external_id.clone(),
            transcript_path: self.session.transcript.display().to_string(),
            provider: PROVIDER,
            metadata: self.init_meta.clone().unwrap_or_default(),
        };
        let resp = crate::sdnotify::keepalive(sink.init(&req)).await?;
        let identity = sink.identity();
        if full {
            let same = self.state.confab_session_id.as_deref() == Some(resp.session_id.as_str())
                && self.state.confab_sync.backend_url.as_deref() == Some(identity.as_str());
            if let Some(entries) = self.disk_entries.take() {
                if same {
                    for (name, e) in &entries {
                        // The state file is input too: only names that pass the init-key rule.
                        if self.is_ours(name) {
                            self.track_named(name, e.file_type.as_str()).restore(e);
                        }
                    }
                }
            }
            tracing::info!(backend_session = %resp.session_id, sink = %identity, "session initialised");
        }
        tracing::Span::current().record("backend_session", resp.session_id.as_str());
        self.session_id = Some(resp.session_id.clone());
        self.init_succeeded = true;
        self.release_pending = true;
        self.state.confab_session_id = Some(resp.session_id);
        self.state.confab_sync.backend_url = Some(identity);
        let mut named = BTreeSet::new();
        for (key, &pos) in &resp.files {
            if self.is_ours(key) {
                named.insert(key.clone());
                let kind = if *key == self.transcript_name {
                    "transcript"
                } else {
                    "agent"
                };
                self.track_named(key, kind).adopt(pos);
            } else {
                tracing::debug!(key = %key, "ignoring a file name from init that is not ours");
            }
        }
        for t in self.files.values_mut().filter(|t| !named.contains(&t.name)) {
            t.adopt(0);
        }
        self.save_state();
        Ok(())
    }
}
