//! Builders and checks shared by the redaction unit tests.

use std::borrow::Cow;

use super::Redactor;
use crate::config::{PatternConfig, RedactionConfig};

pub(super) const AKIA: &str = "AKIAIOSFODNN7EXAMPLE";

pub(super) fn defaults() -> Redactor {
    let cfg = RedactionConfig {
        enabled: true,
        ..Default::default()
    };
    Redactor::from_config(&cfg).unwrap().unwrap()
}

pub(super) fn custom(use_defaults: bool, patterns: Vec<PatternConfig>) -> Redactor {
    let cfg = RedactionConfig {
        enabled: true,
        use_default_patterns: Some(use_defaults),
        patterns,
    };
    Redactor::from_config(&cfg).unwrap().unwrap()
}

pub(super) fn value(kind: &str, pattern: &str, group: usize) -> PatternConfig {
    PatternConfig {
        name: kind.into(),
        kind: kind.into(),
        pattern: Some(pattern.into()),
        capture_group: (group > 0).then_some(group),
        field_pattern: None,
    }
}

pub(super) fn field(kind: &str, field_pattern: &str, pattern: Option<&str>) -> PatternConfig {
    PatternConfig {
        name: kind.into(),
        kind: kind.into(),
        pattern: pattern.map(Into::into),
        capture_group: None,
        field_pattern: Some(field_pattern.into()),
    }
}

/// Both paths agree, and the result is returned.
pub(super) fn line(r: &Redactor, l: &str) -> String {
    let fast = r.redact_line(l);
    let reference = r.redact_line_reference(l);
    assert_eq!(fast, reference, "fast and reference differ on {l}");
    assert_eq!(
        matches!(fast, Cow::Borrowed(_)),
        matches!(reference, Cow::Borrowed(_))
    );
    fast.into_owned()
}
