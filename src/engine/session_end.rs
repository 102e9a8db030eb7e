//! The session_end event, sent once at shutdown when the SessionEnd hook queued one
//! (protocol.md §3.3).
//!
//! Invariants:
//! - the engine never retries it: events are not idempotent (the daemon asks once, at shutdown);
//! - it goes out only within an initialised session (an init is tried first when there is none);
//! - a body over [`EVENT_BODY_LIMIT`] goes out with only the six hook keys.

use super::Engine;
use crate::inbox::InboxEvent;
use crate::sink::{EventRequest, SinkError};

/// Payloads over this are cut to the six hook keys (protocol.md §3.3).
const EVENT_BODY_LIMIT: usize = 120 * 1024;

impl Engine {
    /// Sends the session_end event once (never retried: events are not idempotent).
    pub async fn send_session_end(&mut self, ev: &InboxEvent) -> Result<(), SinkError> {
        if self.session_id.is_none() {
            self.init().await?;
        }
        let mut input = ev.hook_input.clone().unwrap_or_default();
        input.strip_nul();
        let mut req = EventRequest {
            session_id: self.session_id.clone().unwrap_or_default(),
            event_type: "session_end",
            timestamp: ev.timestamp.clone(),
            payload: input.to_payload(),
        };
        if serde_json::to_vec(&req).map_or(0, |b| b.len()) > EVENT_BODY_LIMIT {
            req.payload = input.six_keys_only().to_payload();
        }
        let sink = self
            .sink
            .as_ref()
            .ok_or_else(|| SinkError::Config("no sink".into()))?;
        crate::sdnotify::keepalive(sink.event(&req)).await
    }
}
