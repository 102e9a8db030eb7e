//! The redactor (sync-engine §7, H27, H28) and agent-id extraction (§3, H6).
//!
//! Input: one selector byte (which redaction config), then the line (invalid UTF-8 replaced, as
//! the reader does). Checked:
//! - the prefiltered `redact_line` equals the plain `redact_line_reference`;
//! - an unchanged JSON line comes back borrowed (byte for byte); a changed JSON line is valid
//!   compact JSON with the same keys in the same order, the same number text and the same literals;
//! - `redact_text` never panics;
//! - every agent id `extract_agent_ids` returns is valid (`^[A-Za-z0-9_-]{6,200}$`).
#![no_main]

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::OnceLock;

use confab_sync::config::{PatternConfig, RedactionConfig};
use confab_sync::discovery::{extract_agent_ids, is_valid_agent_id};
use confab_sync::redact::Redactor;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn pattern(kind: &str, pattern: Option<&str>, group: usize, field: Option<&str>) -> PatternConfig {
    PatternConfig {
        name: kind.to_string(),
        kind: kind.to_string(),
        pattern: pattern.map(str::to_string),
        capture_group: (group > 0).then_some(group),
        field_pattern: field.map(str::to_string),
    }
}

/// User patterns that take the paths the defaults do not: anchors, `\w`/`\b` rewriting, capture
/// groups, field patterns with and without an inner pattern.
fn custom_patterns() -> Vec<PatternConfig> {
    vec![
        pattern("anchored", Some(r"^secret-[a-z]+$"), 0, None),
        pattern("user", Some(r"user=(\w+)"), 1, None),
        pattern("word", Some(r"\bhunter2\b"), 0, None),
        pattern("digits", Some(r"\d{4}"), 0, Some(r"(?i)^note$")),
        pattern("pin", None, 0, Some(r"^pin\d*$")),
        pattern("unicode", Some(r"[^\s@]+@[^\s@]+\.ex"), 0, None),
    ]
}

fn redactors() -> &'static [Redactor; 3] {
    static R: OnceLock<[Redactor; 3]> = OnceLock::new();
    R.get_or_init(|| {
        let build = |defaults: bool, patterns: Vec<PatternConfig>| {
            Redactor::from_config(&RedactionConfig {
                enabled: true,
                use_default_patterns: Some(defaults),
                patterns,
            })
            .expect("config compiles")
            .expect("redaction enabled")
        };
        [
            build(true, Vec::new()),
            build(true, custom_patterns()),
            build(false, custom_patterns()),
        ]
    })
}

/// Same shape: object keys in the same order, same array lengths, same numbers (text) and
/// literals; strings may differ (that is the redaction).
fn same_shape(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| ka == kb && same_shape(va, vb))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(va, vb)| same_shape(va, vb))
        }
        (Value::String(_), Value::String(_)) => true,
        (Value::Number(x), Value::Number(y)) => x.to_string() == y.to_string(),
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let line = String::from_utf8_lossy(rest);
    let r = &redactors()[usize::from(sel % 3)];

    let fast = r.redact_line(&line);
    let reference = r.redact_line_reference(&line);
    assert_eq!(
        fast, reference,
        "prefiltered redaction differs from the reference"
    );
    // A text (non-JSON) line may come back owned but equal: a match replaced by an identical
    // marker (`postgres://u:[REDACTED:PASSWORD]@h`). Equal bytes are all H27 asks for.
    if let Ok(input) = serde_json::from_str::<Value>(&line) {
        if fast == line {
            assert!(
                matches!(fast, Cow::Borrowed(_)),
                "unchanged JSON line was copied"
            );
        } else {
            let output: Value = serde_json::from_str(&fast).expect("redacted JSON line is JSON");
            assert!(
                same_shape(&input, &output),
                "shape changed:\n{line}\n{fast}"
            );
            assert!(!fast.contains('\n'), "redacted line is not compact");
        }
    }
    let _ = r.redact_text(&line);

    let mut ids = BTreeSet::new();
    extract_agent_ids(&line, &mut ids);
    assert!(ids.iter().all(|id| is_valid_agent_id(id)), "{ids:?}");
});
