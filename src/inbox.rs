//! The session inbox `~/.confab/sync/<ID>.inbox.jsonl` and the hook input it carries (sync-engine §8, §10).
//! STUB.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The hook input, reduced to the known keys (§10).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct HookInput {
    pub session_id: String,
    pub transcript_path: String,
    pub cwd: String,
    pub permission_mode: String,
    pub hook_event_name: String,
    pub reason: String,
}

/// One inbox line.
#[derive(Clone, Debug, PartialEq)]
pub struct InboxEvent {
    pub kind: String,
    pub timestamp: String,
    pub hook_input: Option<HookInput>,
}

pub fn append(path: &Path, event: &InboxEvent) -> std::io::Result<()> {
    let _ = event;
    todo!("{path:?}")
}

/// All events in order; a missing file is empty; bad lines are skipped with a warning.
pub fn read_all(path: &Path) -> Vec<InboxEvent> {
    todo!("{path:?}")
}

impl HookInput {
    pub fn strip_nul(&mut self) {}
    pub fn to_payload(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap()
    }
    pub fn six_keys_only(&self) -> HookInput {
        self.clone()
    }
}

pub fn last_session_end(events: &[InboxEvent]) -> Option<&InboxEvent> {
    events.iter().rev().find(|e| e.kind == "session_end" && e.hook_input.is_some())
}
