//! Summary linking (sync-engine §6): find the earlier session whose last 10 lines hold `leafUuid`.
//! STUB.

use std::path::Path;

/// Returns the stem of the first sibling transcript (sorted by name) whose last 10 lines contain a
/// line with top-level `uuid == leaf_uuid`.
pub fn find_linked_session(transcript: &Path, leaf_uuid: &str) -> Option<String> {
    let _ = (transcript, leaf_uuid);
    None
}

/// `(leafUuid, summary)` of a `{"type":"summary",...}` line with both non-empty.
pub fn summary_links(line: &str) -> Option<(String, String)> {
    let _ = line;
    None
}
