//! Redaction (sync-engine §7): the 34 default patterns plus the user's, Go/RE2 dialect (H28),
//! applied to JSON string values with field patterns, byte-exact output for unchanged lines (H27).
//! STUB: filled in by the redaction work.

use std::borrow::Cow;

use crate::config::{ConfigError, RedactionConfig};

pub struct Redactor {}

impl Redactor {
    /// `Ok(None)` when redaction is disabled or there are no patterns.
    pub fn from_config(cfg: &RedactionConfig) -> Result<Option<Redactor>, ConfigError> {
        let _ = cfg;
        Ok(None)
    }

    /// Redacts one transcript line (JSON walk, or value patterns on the raw text when not JSON).
    pub fn redact_line<'a>(&self, line: &'a str) -> Cow<'a, str> {
        Cow::Borrowed(line)
    }

    /// Value patterns only, on plain text (summary, first user message, PATCH text).
    pub fn redact_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        Cow::Borrowed(text)
    }
}
