//! The set of tracked files: the transcript, then agent files found in its subagents directory or
//! referenced in the lines read (sync-engine §3).
//!
//! Invariants:
//! - each file name has exactly one [`Tracked`], created on first sight and kept for the run (H10);
//! - files are visited in a deterministic order: transcript first, then agents by name (H14);
//! - an agent referenced in content is tracked only once its file exists; a directory-scan hit
//!   is tracked right away.

use super::Engine;
use crate::discovery;
use crate::filesync::Tracked;
use crate::sink::FileType;

impl Engine {
    /// The init-key rule: the transcript's own name, or a valid agent file name. Names from the
    /// state file and from init are input too; only these are tracked.
    pub(super) fn is_ours(&self, name: &str) -> bool {
        name == self.transcript_name || discovery::agent_id_from_file_name(name).is_some()
    }

    /// The tracked file for a valid name, created if needed.
    pub(super) fn track_named(&mut self, name: &str, kind: &str) -> &mut Tracked {
        if !self.files.contains_key(name) {
            let file_type = if name == self.transcript_name || kind == "transcript" {
                FileType::Transcript
            } else {
                FileType::Agent
            };
            let path = if file_type == FileType::Transcript {
                self.session.transcript.clone()
            } else {
                discovery::subagents_dir(&self.session.transcript).join(name)
            };
            let t = Tracked::new(
                name.to_string(),
                file_type,
                path,
                self.counters.counter(name),
            );
            self.files.insert(name.to_string(), t);
        }
        self.files.get_mut(name).expect("inserted above")
    }

    /// Transcript first, then agents by name (H14).
    pub(super) fn ordered_names(&self) -> Vec<String> {
        let mut names = vec![self.transcript_name.clone()];
        names.extend(
            self.files
                .keys()
                .filter(|n| **n != self.transcript_name)
                .cloned(),
        );
        names
    }

    /// Tracks agents referenced in content whose file now exists, and every directory-scan hit.
    pub(super) fn discover(&mut self) {
        let dir = discovery::subagents_dir(&self.session.transcript);
        let mut ids = discovery::scan_dir(&dir);
        for id in &self.known_ids {
            if !ids.contains(id) && dir.join(discovery::agent_file_name(id)).is_file() {
                ids.insert(id.clone());
            }
        }
        for id in ids {
            let name = discovery::agent_file_name(&id);
            if !self.files.contains_key(&name) {
                self.track_named(&name, "agent");
            }
        }
    }
}
