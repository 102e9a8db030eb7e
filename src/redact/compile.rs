//! Config → compiled patterns: each [`PatternConfig`] becomes a [`Rule`] (value pattern) or a
//! [`FieldRule`] (field pattern), and the [`Builder`] gathers them, their [`RegexSet`]s and the
//! prefilter's gates into a [`Redactor`].
//!
//! Invariants:
//! - Every source goes through the H28 dialect rewrite before it is compiled.
//! - Markers are literal text: `[REDACTED:<TYPE>]` with the type upper-cased, never `$`-expanded.
//! - An error about one pattern names it (`pattern #N (name)`); every error fits on one line.
//! - Rules keep the config order (defaults first); the sets are built from the same sources in
//!   the same order, so set index `i` is rule `i`.

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use super::defaults::Gate;
use super::dialect::rewrite_go_dialect;
use super::Redactor;
use crate::config::{ConfigError, PatternConfig};

/// A compiled pattern: what to find and what to put in its place.
pub(super) struct Rule {
    pub(super) regex: Regex,
    /// 0 = replace the whole match; N = replace only group N's span.
    group: usize,
    pub(super) marker: String,
}

impl Rule {
    /// Replaces every match (leftmost-first, non-overlapping). `None` when no replacement was made.
    pub(super) fn apply(&self, text: &str) -> Option<String> {
        let mut out = String::new();
        let mut last = 0;
        let mut replace = |start: usize, end: usize| {
            out.push_str(&text[last..start]);
            out.push_str(&self.marker);
            last = end;
        };
        let mut replaced = false;
        if self.group == 0 {
            for m in self.regex.find_iter(text) {
                replace(m.start(), m.end());
                replaced = true;
            }
        } else {
            // A match where the group did not participate is left alone.
            for g in self
                .regex
                .captures_iter(text)
                .filter_map(|c| c.get(self.group))
            {
                replace(g.start(), g.end());
                replaced = true;
            }
        }
        if !replaced {
            return None;
        }
        out.push_str(&text[last..]);
        Some(out)
    }
}

/// A field pattern: applies to string values whose nearest key matches `key`.
pub(super) struct FieldRule {
    /// `None`: the whole value becomes `marker`.
    pub(super) inner: Option<Rule>,
    pub(super) marker: String,
}

/// Collects the pieces of a [`Redactor`] while patterns are compiled in order.
#[derive(Default)]
pub(super) struct Builder {
    value_rules: Vec<Rule>,
    value_srcs: Vec<String>,
    field_rules: Vec<FieldRule>,
    field_srcs: Vec<String>,
    gates: Vec<String>,
    lone_gates: Vec<Regex>,
    key_words: Vec<&'static str>,
    custom_srcs: Vec<String>,
    custom_anchored: bool,
    custom_fields: bool,
}

impl Builder {
    pub(super) fn add(
        &mut self,
        i: usize,
        p: &PatternConfig,
        gate: Gate,
    ) -> Result<(), ConfigError> {
        let label = pattern_label(i, p);
        let marker = format!("[REDACTED:{}]", p.kind.to_uppercase());
        let group = p.capture_group.unwrap_or(0);
        match (&p.pattern, &p.field_pattern) {
            (None, None) => {
                return Err(ConfigError(format!(
                    "redaction {label}: needs `pattern` or `field_pattern`"
                )))
            }
            (Some(pat), None) => {
                let (src, anchored) = rewrite_go_dialect(pat);
                self.value_rules
                    .push(compile_rule(&label, &src, group, marker)?);
                match gate {
                    Gate::Raw(gate) => self.gates.push(gate.to_string()),
                    Gate::RawAlone(gate) => self.lone_gates.push(compile_regex(&label, gate)?),
                    Gate::Pattern | Gate::KeyWords(_) => {
                        self.custom_anchored |= anchored;
                        self.custom_srcs.push(src.clone());
                    }
                }
                self.value_srcs.push(src);
            }
            (inner, Some(field)) => {
                let (key_src, _) = rewrite_go_dialect(field);
                compile_regex(&label, &key_src)?;
                let inner = match inner {
                    Some(pat) => {
                        let (src, _) = rewrite_go_dialect(pat);
                        Some(compile_rule(&label, &src, group, marker.clone())?)
                    }
                    None => None,
                };
                match gate {
                    Gate::KeyWords(words) => self.key_words.extend_from_slice(words),
                    Gate::Pattern | Gate::Raw(_) | Gate::RawAlone(_) => self.custom_fields = true,
                }
                self.field_rules.push(FieldRule { inner, marker });
                self.field_srcs.push(key_src);
            }
        }
        Ok(())
    }

    pub(super) fn build(mut self) -> Result<Redactor, ConfigError> {
        self.gates.sort();
        self.gates.dedup();
        let mut value_gates: Vec<Regex> = compile_alternation(&self.gates)?.into_iter().collect();
        value_gates.extend(self.lone_gates);
        Ok(Redactor {
            value_rules: self.value_rules,
            value_set: compile_set(&self.value_srcs)?,
            field_rules: self.field_rules,
            field_keys: compile_set(&self.field_srcs)?,
            value_gates,
            key_words: self.key_words,
            custom_values: compile_set(&self.custom_srcs)?,
            custom_anchored: self.custom_anchored,
            custom_fields: self.custom_fields,
        })
    }
}

fn pattern_label(i: usize, p: &PatternConfig) -> String {
    if p.name.is_empty() {
        format!("pattern #{}", i + 1)
    } else {
        format!("pattern #{} ({})", i + 1, p.name)
    }
}

fn compile_regex(label: &str, src: &str) -> Result<Regex, ConfigError> {
    RegexBuilder::new(src).build().map_err(|e| {
        ConfigError(format!(
            "redaction {label}: invalid regex: {}",
            one_line(&e)
        ))
    })
}

fn compile_rule(label: &str, src: &str, group: usize, marker: String) -> Result<Rule, ConfigError> {
    let regex = compile_regex(label, src)?;
    if group >= regex.captures_len() {
        return Err(ConfigError(format!(
            "redaction {label}: capture_group {group} but the pattern has {} group(s)",
            regex.captures_len() - 1
        )));
    }
    Ok(Rule {
        regex,
        group,
        marker,
    })
}

/// One regex matching any of `alts` (already regex syntax); `None` when there are none.
fn compile_alternation(alts: &[String]) -> Result<Option<Regex>, ConfigError> {
    if alts.is_empty() {
        return Ok(None);
    }
    compile_regex("prefilter", &alts.join("|")).map(Some)
}

fn compile_set(srcs: &[String]) -> Result<RegexSet, ConfigError> {
    RegexSetBuilder::new(srcs).build().map_err(|e| {
        ConfigError(format!(
            "redaction: patterns too large together: {}",
            one_line(&e)
        ))
    })
}

fn one_line(e: &regex::Error) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use crate::redact::test_support::{custom, defaults, value, AKIA};

    #[test]
    fn exact_replacements_and_capture_groups() {
        let r = defaults();
        assert_eq!(
            r.redact_text(&format!("a {AKIA} b {AKIA}")),
            "a [REDACTED:AWS_KEY] b [REDACTED:AWS_KEY]"
        );
        assert_eq!(
            r.redact_text(&format!("aws_secret_access_key = {}!", "A".repeat(40))),
            "aws_secret_access_key = [REDACTED:AWS_SECRET]!"
        );
        assert_eq!(
            r.redact_text(&format!("AWS_SECRET_ACCESS_KEY='{}'", "c".repeat(40))),
            "AWS_SECRET_ACCESS_KEY='[REDACTED:AWS_SECRET]'"
        );
        assert_eq!(
            r.redact_text("postgres://bob:hunter2@db/x and mysql://al:pw@h"),
            "postgres://bob:[REDACTED:PASSWORD]@db/x and mysql://al:[REDACTED:PASSWORD]@h"
        );
        // #2 before #3: an Anthropic key is one API_KEY marker, not half-eaten by #3.
        let k = format!("sk-ant-api03-{}", "Z".repeat(95));
        assert_eq!(r.redact_text(&format!("[{k}]")), "[[REDACTED:API_KEY]]");
        // Unchanged text is borrowed.
        assert!(matches!(r.redact_text("nothing here"), Cow::Borrowed(_)));

        // A group that did not participate leaves that match alone; other matches still change.
        let r = custom(false, vec![value("t", "x(a)?y", 1)]);
        assert_eq!(r.redact_text("xy xay"), "xy x[REDACTED:T]y");
        assert!(matches!(r.redact_text("xy xy"), Cow::Borrowed(_)));
        // The marker is literal: no `$` expansion, type in upper case.
        let r = custom(false, vec![value("a$1b", "(s)ecret", 0)]);
        assert_eq!(r.redact_text("my secret"), "my [REDACTED:A$1B]");
        // Later patterns run on earlier output.
        let r = custom(
            false,
            vec![value("one", "abc", 0), value("two", r"ONE\]", 0)],
        );
        assert_eq!(r.redact_text("abc"), "[REDACTED:[REDACTED:TWO]");
    }
}
