//! Redaction (sync-engine §7): the 34 default patterns plus the user's, in the Go/RE2 dialect (H28),
//! applied to the decoded JSON string values of each line with field patterns, and byte-exact output
//! for unchanged lines (H27).
//!
//! Invariants:
//! - Semantics are defined by [`Redactor::redact_line_reference`]: if serde_json accepts the line,
//!   every decoded string value (keys never change) gets the field patterns of its nearest key,
//!   then the value patterns in list order; the line is re-serialized compactly (number text
//!   verbatim) only if some string value actually changed, else it is returned borrowed, byte for
//!   byte. Other lines get the value patterns on the raw text.
//! - [`Redactor::redact_line`] gives the same output through a prefilter ([`Redactor::may_change`])
//!   that may only err towards "maybe": a test compares both over the whole corpus.
//!
//! Where the pieces live: `defaults` (the 34 built-in patterns and their prefilter gates),
//! `dialect` (the H28 rewrite), `compile` (config → rules, markers), `json` (the H27 walk and
//! re-serialization), `prefilter` (the two tiers behind [`Redactor::may_change`]).

use std::borrow::Cow;
use std::fmt;

use regex::{Regex, RegexSet, SetMatches};
use serde_json::Value;

use crate::config::{ConfigError, RedactionConfig};

mod compile;
mod defaults;
mod dialect;
mod json;
mod prefilter;
#[cfg(test)]
mod test_support;

use compile::{Builder, FieldRule, Rule};
use defaults::{Builtin, Gate, DEFAULT_PATTERNS};

pub use defaults::default_patterns;
pub use dialect::rewrite_go_dialect;

/// A compiled redaction configuration. Cheap to share (`Send + Sync`).
pub struct Redactor {
    value_rules: Vec<Rule>,
    /// All value rules' regexes: exactly "does some value rule match this text?".
    value_set: RegexSet,
    field_rules: Vec<FieldRule>,
    /// The field rules' key regexes, same order.
    field_keys: RegexSet,
    /// Prefilter for decoded text: some built-in value pattern's [`Gate::Raw`] matches.
    value_gates: Vec<Regex>,
    /// Keys the built-in field pattern matches (in any case): the raw-line prefilter looks for
    /// them as keys without running a regex per key.
    key_words: Vec<&'static str>,
    /// The user's value patterns, run as they are by the prefilter.
    custom_values: RegexSet,
    /// Some user value pattern uses a text/line anchor, so a match in the raw line is not implied
    /// by a match in a decoded string.
    custom_anchored: bool,
    /// Some user field pattern: keys need decoding and testing one by one.
    custom_fields: bool,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("value_patterns", &self.value_rules.len())
            .field("field_patterns", &self.field_rules.len())
            .finish()
    }
}

impl Redactor {
    /// `Ok(None)` when redaction is disabled or there are no patterns. A pattern with neither
    /// `pattern` nor `field_pattern`, a regex that does not compile, or a `capture_group` the
    /// pattern does not have is a [`ConfigError`].
    pub fn from_config(cfg: &RedactionConfig) -> Result<Option<Redactor>, ConfigError> {
        if !cfg.enabled {
            return Ok(None);
        }
        let defaults: &[Builtin] = if cfg.use_default_patterns == Some(false) {
            &[]
        } else {
            &DEFAULT_PATTERNS
        };
        if defaults.is_empty() && cfg.patterns.is_empty() {
            return Ok(None);
        }
        let mut b = Builder::default();
        for (i, d) in defaults.iter().enumerate() {
            b.add(i, &d.config(), d.gate)?;
        }
        for (i, p) in cfg.patterns.iter().enumerate() {
            b.add(defaults.len() + i, p, Gate::Pattern)?;
        }
        b.build().map(Some)
    }

    /// Redacts one transcript line (JSON walk, or value patterns on the raw text when not JSON).
    /// Returns the line borrowed, byte for byte, when nothing changed (H27).
    pub fn redact_line<'a>(&self, line: &'a str) -> Cow<'a, str> {
        if !self.may_change(line) {
            return Cow::Borrowed(line);
        }
        self.redact_line_with(line, true)
    }

    /// The straightforward definition of [`Redactor::redact_line`], without any prefilter: if the
    /// line is JSON (serde_json accepts it), redact every decoded string value and re-serialize the
    /// line compactly when one changed; otherwise apply the value patterns to the raw text.
    /// Public so tests can check that the prefiltered path gives the same output.
    pub fn redact_line_reference<'a>(&self, line: &'a str) -> Cow<'a, str> {
        self.redact_line_with(line, false)
    }

    fn redact_line_with<'a>(&self, line: &'a str, gated: bool) -> Cow<'a, str> {
        if serde_json::from_str::<Value>(line).is_err() {
            return self.redact_values(line, gated);
        }
        match self.rewrite_json(line, gated) {
            Some(out) => Cow::Owned(out),
            None => Cow::Borrowed(line),
        }
    }

    /// Value patterns only, in list order, on plain text (summary, first user message, PATCH text).
    pub fn redact_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        self.redact_values(text, true)
    }

    /// The value patterns in list order, each on the previous output. `gated`: first ask the
    /// prefilter whether any of them can match; if none matches the input, none changes it, so no
    /// later one sees anything but the input either.
    fn redact_values<'a>(&self, text: &'a str, gated: bool) -> Cow<'a, str> {
        if gated && !self.value_may_match(text) {
            return Cow::Borrowed(text);
        }
        let mut cur = Cow::Borrowed(text);
        for rule in &self.value_rules {
            if let Some(next) = rule.apply(&cur) {
                cur = Cow::Owned(next);
            }
        }
        cur
    }

    /// Field patterns of the nearest key, then value patterns, on one decoded string value.
    fn redact_string<'a>(
        &self,
        s: &'a str,
        fields: Option<&SetMatches>,
        gated: bool,
    ) -> Cow<'a, str> {
        let mut cur = Cow::Borrowed(s);
        for i in fields.into_iter().flat_map(|m| m.iter()) {
            let rule = &self.field_rules[i];
            match &rule.inner {
                None => cur = Cow::Owned(rule.marker.clone()),
                Some(inner) => {
                    if let Some(next) = inner.apply(&cur) {
                        cur = Cow::Owned(next);
                    }
                }
            }
        }
        match cur {
            Cow::Borrowed(b) => self.redact_values(b, gated),
            Cow::Owned(o) => Cow::Owned(self.redact_values(&o, gated).into_owned()),
        }
    }

    /// Which field rules apply under `key` (`None` when none does).
    fn field_matches(&self, key: &str) -> Option<SetMatches> {
        if self.field_rules.is_empty() {
            return None;
        }
        let m = self.field_keys.matches(key);
        m.matched_any().then_some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PatternConfig;
    use crate::redact::test_support::{defaults, field, value};

    #[test]
    fn redactor_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Redactor>();
        let r = defaults();
        assert_eq!(
            format!("{r:?}"),
            "Redactor { value_patterns: 33, field_patterns: 1 }"
        );
    }

    #[test]
    fn from_config_enablement_and_errors() {
        assert!(Redactor::from_config(&RedactionConfig::default())
            .unwrap()
            .is_none());
        let off = RedactionConfig {
            enabled: true,
            use_default_patterns: Some(false),
            patterns: vec![],
        };
        assert!(Redactor::from_config(&off).unwrap().is_none());
        let r = defaults();
        assert_eq!((r.value_rules.len(), r.field_rules.len()), (33, 1));
        // null/missing means the defaults are on; custom patterns come after them.
        let both = RedactionConfig {
            enabled: true,
            use_default_patterns: None,
            patterns: vec![value("mine", "zzz", 0)],
        };
        let r = Redactor::from_config(&both).unwrap().unwrap();
        assert_eq!(r.value_rules.len(), 34);
        assert_eq!(r.value_rules[33].marker, "[REDACTED:MINE]");
        assert_eq!(r.value_rules[0].marker, "[REDACTED:API_KEY]");

        let bad = |p: PatternConfig| {
            let cfg = RedactionConfig {
                enabled: true,
                use_default_patterns: Some(false),
                patterns: vec![p],
            };
            Redactor::from_config(&cfg).unwrap_err()
        };
        let e = bad(PatternConfig {
            name: "empty".into(),
            kind: "x".into(),
            ..Default::default()
        });
        assert!(e.0.contains("needs `pattern` or `field_pattern`"), "{e}");
        let e = bad(value("x", "a(b", 0));
        assert!(e.0.contains("invalid regex") && !e.0.contains('\n'), "{e}");
        let e = bad(field("x", "(", None));
        assert!(e.0.contains("invalid regex"), "{e}");
        let e = bad(value("x", "a(b)", 2));
        assert!(e.0.contains("capture_group 2"), "{e}");
    }
}
