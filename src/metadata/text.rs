//! The text pipeline for `summary`, `first_user_message` and the summary PATCH, and the U+0000
//! removal every metadata string goes through.
//!
//! Invariants:
//! - The order is fixed: sanitize → value-redact → remove U+0000 → truncate. Redaction happens
//!   before the truncation (H18), so no fragment of a secret cut at the limit survives.
//! - Truncation counts the `...` inside the limit and cuts on a UTF-8 boundary.
//! - [`process_text`] never returns a U+0000 (H19), whatever the redactor put in.

use std::borrow::Cow;
use std::sync::OnceLock;

use regex::Regex;

use crate::redact::Redactor;
use crate::sink::GitInfo;

pub(super) fn strip_nul_git(g: &mut GitInfo) {
    for s in [
        &mut g.repo_url,
        &mut g.branch,
        &mut g.commit_sha,
        &mut g.commit_message,
        &mut g.author,
    ] {
        strip_nul(s);
    }
}

/// H19: removes every U+0000.
pub(super) fn strip_nul(s: &mut String) {
    if s.contains('\0') {
        s.retain(|c| c != '\0');
    }
}

/// Sanitize → value-redact → remove U+0000 → truncate to `limit` bytes on a UTF-8 boundary with
/// `...` counted inside the limit (sync-engine §5). Used for `summary`, `first_user_message` and
/// the summary PATCH.
pub fn process_text(text: &str, redactor: Option<&Redactor>, limit: usize) -> String {
    let clean = sanitize(text);
    let mut out = match redactor {
        Some(r) => match r.redact_text(&clean) {
            Cow::Borrowed(_) => clean,
            Cow::Owned(o) => o,
        },
        None => clean,
    };
    strip_nul(&mut out);
    truncate_with_ellipsis(&mut out, limit);
    out
}

/// Drops `<…>` tags, decodes HTML entities, collapses Unicode whitespace runs to one space, trims.
pub(super) fn sanitize(text: &str) -> String {
    static TAG: OnceLock<Regex> = OnceLock::new();
    let tag = TAG.get_or_init(|| Regex::new(r"<[^>]*>").expect("static regex"));
    let untagged = tag.replace_all(text, "");
    let decoded = html_escape::decode_html_entities(&untagged);
    decoded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Cuts `s` to at most `limit` bytes, ending in `...` when cut.
fn truncate_with_ellipsis(s: &mut String, limit: usize) {
    const ELLIPSIS: &str = "...";
    if s.len() <= limit {
        return;
    }
    let mut keep = limit.saturating_sub(ELLIPSIS.len());
    while !s.is_char_boundary(keep) {
        keep -= 1;
    }
    s.truncate(keep);
    if limit >= ELLIPSIS.len() {
        s.push_str(ELLIPSIS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::test_support::{collect, redactor};
    use crate::metadata::{FIRST_USER_MESSAGE_LIMIT, SUMMARY_LIMIT};

    #[test]
    fn x26_truncation_after_redaction() {
        let r = redactor();
        let long = "word ".repeat(1000);
        let s = process_text(&long, Some(&r), SUMMARY_LIMIT);
        assert!(
            s.len() <= SUMMARY_LIMIT && s.ends_with("..."),
            "{}",
            s.len()
        );
        // An AWS key straddling byte 4,096 of the first user message.
        let key = "AKIAIOSFODNN7EXAMPLE";
        let text = format!("{}{key} tail", "a".repeat(4090));
        let lines = vec![serde_json::json!({"type":"user","message":{"content":text}}).to_string()];
        let m = collect(&lines, Some(&r));
        let f = &m.first_user_message;
        assert!(f.len() <= FIRST_USER_MESSAGE_LIMIT && f.ends_with("..."));
        for frag in ["AKI", "IOSF", "EXAMPLE"] {
            assert!(!f.contains(frag), "{frag} survived");
        }
        // Without redaction the cut would have left a fragment: the test is meaningful.
        assert!(process_text(&text, None, FIRST_USER_MESSAGE_LIMIT).contains("AKI"));
        // Cuts fall on a UTF-8 boundary, `...` inside the limit.
        let t = process_text(&"é".repeat(10), None, 8);
        assert_eq!(t, "éé...");
        assert_eq!(process_text("short", None, 8), "short");
        assert_eq!(process_text("exactly8", None, 8), "exactly8");
    }
}
