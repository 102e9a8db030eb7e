//! Summary linking (sync-engine §6): a `summary` line acknowledged in this transcript names the
//! leaf of another session; that session's title is patched with the summary text.
//!
//! Invariants:
//! - a `(leafUuid, summary)` pair is linked at most once per run, and only after its line was
//!   acknowledged;
//! - the text sent is redacted and cut like metadata text ([`metadata::process_text`]);
//! - a failed link is logged and dropped: it never fails the cycle nor blocks a chunk.

use super::Engine;
use crate::metadata;
use crate::summary_link;

impl Engine {
    /// Summary linking for acknowledged summary lines, once per `(leafUuid, summary)` (§6).
    pub(super) async fn link_summaries(&mut self, pairs: Vec<(String, String)>) {
        for (leaf, summary) in pairs {
            if !self.summaries_sent.insert((leaf.clone(), summary.clone())) {
                continue;
            }
            let transcript = self.session.transcript.clone();
            let leaf2 = leaf.clone();
            let Ok(Some(stem)) = tokio::task::spawn_blocking(move || {
                summary_link::find_linked_session(&transcript, &leaf2)
            })
            .await
            else {
                continue;
            };
            let text = metadata::process_text(&summary, self.redactor.as_ref(), 2048);
            if text.is_empty() {
                continue;
            }
            if let Some(sink) = &self.sink {
                match sink.patch_summary(&stem, &text).await {
                    Ok(()) => tracing::debug!(session = %stem, "linked summary sent"),
                    Err(e) => tracing::debug!(session = %stem, "summary link failed: {e}"),
                }
            }
        }
    }
}
