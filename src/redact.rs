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
//!   1. Tier 1, on the raw line without parsing. Each built-in value pattern has a gate (mostly a
//!      literal such as `AKIA`) found in every match; the built-in field pattern has its word list,
//!      looked for as `"word"` + `:`. With no backslash in the line, every decoded string is a
//!      verbatim substring of the raw line, so a miss on the raw line is a miss in every string.
//!      With escapes, a gate can still only be hidden by `\u…` or `\/` (the others decode to `"`,
//!      `\` or control characters, which no gate contains), so lines with those skip tier 1. User
//!      value patterns are run as they are, which is sound only on lines without any backslash,
//!      and only without anchors (`^ $ \A \z` see string boundaries; `\b` is fine because the
//!      raw neighbour of a string is `"`, a non-word character). User field patterns skip tier 1.
//!   2. Tier 2, when tier 1 is unsound or hits: a streaming serde_json pass decodes every string
//!      without building a tree and tests it as the reference would (field key, then the gates and
//!      a [`RegexSet`] of all value patterns); it also settles "is this JSON" exactly as the
//!      reference does.
//! - The dialect rewrite (H28) makes `\d \s \w` (and negations) ASCII and `\b \B` ASCII word
//!   boundaries, also inside character classes, before anything is compiled.
//! - Markers are literal text: `[REDACTED:<TYPE>]`, never `$`-expanded.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder, SetMatches};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::config::{ConfigError, PatternConfig, RedactionConfig};

/// How the prefilter can test for a built-in pattern without running it.
#[derive(Clone, Copy, Debug)]
enum Gate {
    /// A user pattern: the prefilter runs the pattern itself.
    Pattern,
    /// A regex that matches inside every match of the pattern, built only from literals and
    /// classes of ASCII letters, digits and `-_.:/` plus a space (checked by a test): it never
    /// matches `"`, `\` or a control character, the only characters a JSON escape other than
    /// `\u…` and `\/` decodes to. Mostly a literal prefix, so all of them together run as a
    /// fast multi-literal search.
    Raw(&'static str),
    /// As `Raw`, but run as a regex of its own: a short literal (`SK`) or a class would slow the
    /// shared multi-literal search down, while alone it is a fast substring search.
    RawAlone(&'static str),
    /// A field pattern that matches exactly these words, in any case, as a whole key.
    KeyWords(&'static [&'static str]),
}

/// A built-in pattern (sync-engine §7).
struct Builtin {
    name: &'static str,
    kind: &'static str,
    pattern: Option<&'static str>,
    group: usize,
    field: Option<&'static str>,
    gate: Gate,
}

/// The words of default #1 (its `field_pattern` is `(?i)^(<these joined by |>)$`).
const SENSITIVE_KEYS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "api_key",
    "apikey",
    "api_secret",
    "token",
    "auth_token",
    "access_token",
    "refresh_token",
    "private_key",
    "credential",
    "credentials",
];

/// The 34 default patterns of sync-engine §7, in order (#2 must run before #3).
const DEFAULT_PATTERNS: [Builtin; 34] = [
    Builtin {
        name: "Sensitive field",
        kind: "sensitive_field",
        pattern: None,
        group: 0,
        field: Some(
            r"(?i)^(password|passwd|secret|api_key|apikey|api_secret|token|auth_token|access_token|refresh_token|private_key|credential|credentials)$",
        ),
        gate: Gate::KeyWords(SENSITIVE_KEYS),
    },
    Builtin {
        name: "Anthropic API key",
        kind: "api_key",
        pattern: Some(r"sk-ant-api\d{2}-[A-Za-z0-9_-]{80,120}"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"sk-ant-api"),
    },
    Builtin {
        name: "OpenAI API key",
        kind: "api_key",
        pattern: Some(r"sk-(?:proj-)?[A-Za-z0-9_-]{20,200}"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"sk-"),
    },
    Builtin {
        name: "AWS access key",
        kind: "aws_key",
        pattern: Some(r"AKIA[0-9A-Z]{16}"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"AKIA"),
    },
    Builtin {
        name: "AWS secret key",
        kind: "aws_secret",
        pattern: Some(r"aws_secret_access_key\s*=\s*([A-Za-z0-9/+=]{40})"),
        group: 1,
        field: None,
        gate: Gate::Raw(r"aws_secret_access_key"),
    },
    Builtin {
        name: "AWS secret key env",
        kind: "aws_secret",
        pattern: Some(r#"AWS_SECRET_ACCESS_KEY\s*=\s*["']?([A-Za-z0-9/+=]{40})["']?"#),
        group: 1,
        field: None,
        gate: Gate::Raw(r"AWS_SECRET_ACCESS_KEY"),
    },
    Builtin {
        name: "GitHub personal token",
        kind: "github_token",
        pattern: Some(r"ghp_[A-Za-z0-9]{36,255}"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"ghp_"),
    },
    Builtin {
        name: "GitHub fine-grained token",
        kind: "github_token",
        pattern: Some(r"github_pat_[A-Za-z0-9]{22,255}"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"github_pat_"),
    },
    Builtin {
        name: "GitHub OAuth token",
        kind: "github_token",
        pattern: Some(r"gho_[A-Za-z0-9]{36,255}"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"gho_"),
    },
    Builtin {
        name: "GitHub app token",
        kind: "github_token",
        pattern: Some(r"(?:ghu|ghs)_[A-Za-z0-9]{36,255}"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"ghu_|ghs_"),
    },
    Builtin {
        name: "GitHub refresh token",
        kind: "github_token",
        pattern: Some(r"ghr_[A-Za-z0-9]{36,255}"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"ghr_"),
    },
    Builtin {
        name: "JWT",
        kind: "jwt",
        pattern: Some(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"eyJ"),
    },
    Builtin {
        name: "Bearer token",
        kind: "bearer_token",
        pattern: Some(r"Bearer\s+[A-Za-z0-9_.~+/=-]{20,}"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"Bearer"),
    },
    Builtin {
        name: "RSA private key",
        kind: "private_key",
        pattern: Some(r"(?s)-----BEGIN RSA PRIVATE KEY-----.*?-----END RSA PRIVATE KEY-----"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"-----BEGIN "),
    },
    Builtin {
        name: "EC private key",
        kind: "private_key",
        pattern: Some(r"(?s)-----BEGIN EC PRIVATE KEY-----.*?-----END EC PRIVATE KEY-----"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"-----BEGIN "),
    },
    Builtin {
        name: "OpenSSH private key",
        kind: "private_key",
        pattern: Some(
            r"(?s)-----BEGIN OPENSSH PRIVATE KEY-----.*?-----END OPENSSH PRIVATE KEY-----",
        ),
        group: 0,
        field: None,
        gate: Gate::Raw(r"-----BEGIN "),
    },
    Builtin {
        name: "Private key",
        kind: "private_key",
        pattern: Some(r"(?s)-----BEGIN PRIVATE KEY-----.*?-----END PRIVATE KEY-----"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"-----BEGIN "),
    },
    Builtin {
        name: "PostgreSQL password",
        kind: "password",
        pattern: Some(r"(postgres(?:ql)?://[^:]+:)([^@\s]+)(@[^\s]+)"),
        group: 2,
        field: None,
        gate: Gate::Raw(r"://"),
    },
    Builtin {
        name: "MySQL password",
        kind: "password",
        pattern: Some(r"(mysql://[^:]+:)([^@\s]+)(@[^\s]+)"),
        group: 2,
        field: None,
        gate: Gate::Raw(r"://"),
    },
    Builtin {
        name: "MongoDB password",
        kind: "password",
        pattern: Some(r"(mongodb(?:\+srv)?://[^:]+:)([^@\s]+)(@[^\s]+)"),
        group: 2,
        field: None,
        gate: Gate::Raw(r"://"),
    },
    Builtin {
        name: "Redis password",
        kind: "password",
        pattern: Some(r"(redis://[^:/@\s]*:)([^@\s]+)(@[^\s]+)"),
        group: 2,
        field: None,
        gate: Gate::Raw(r"://"),
    },
    Builtin {
        name: "URL password",
        kind: "password",
        pattern: Some(r"(://[^:/@\s]+:)([^@\s]+)(@)"),
        group: 2,
        field: None,
        gate: Gate::Raw(r"://"),
    },
    Builtin {
        name: "Slack token",
        kind: "slack_token",
        pattern: Some(r"xox[baprs]-[0-9a-zA-Z-]{10,255}"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"xox"),
    },
    Builtin {
        name: "Slack config token",
        kind: "slack_token",
        pattern: Some(r"xoxe(?:\.[a-zA-Z0-9-]+)?-[0-9a-zA-Z-]{10,255}"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"xoxe"),
    },
    Builtin {
        name: "Slack app token",
        kind: "slack_token",
        pattern: Some(r"xapp-[0-9a-zA-Z-]{10,255}"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"xapp-"),
    },
    Builtin {
        name: "Stripe secret key",
        kind: "stripe_key",
        pattern: Some(r"sk_(?:live|test)_[0-9a-zA-Z]{24,}"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"sk_live_|sk_test_"),
    },
    Builtin {
        name: "Stripe restricted key",
        kind: "stripe_key",
        pattern: Some(r"rk_(?:live|test)_[0-9a-zA-Z]{24,}"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"rk_live_|rk_test_"),
    },
    Builtin {
        name: "Google API key",
        kind: "google_api_key",
        pattern: Some(r"AIza[0-9A-Za-z_-]{35}"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"AIza"),
    },
    Builtin {
        name: "Twilio key",
        kind: "twilio_key",
        pattern: Some(r"SK[0-9a-fA-F]{32}"),
        group: 0,
        field: None,
        gate: Gate::RawAlone(r"SK[0-9a-fA-F]{32}"),
    },
    Builtin {
        name: "SendGrid key",
        kind: "sendgrid_key",
        pattern: Some(r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"SG\."),
    },
    Builtin {
        name: "Mailchimp key",
        kind: "mailchimp_key",
        pattern: Some(r"[0-9a-f]{32}-us[0-9]{1,2}"),
        group: 0,
        field: None,
        gate: Gate::RawAlone(r"-us[0-9]"),
    },
    Builtin {
        name: "npm token",
        kind: "npm_token",
        pattern: Some(r"npm_[A-Za-z0-9]{36}"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"npm_"),
    },
    Builtin {
        name: "PyPI token",
        kind: "pypi_token",
        pattern: Some(r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{70,}"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"pypi-AgEIcHlwaS5vcmc"),
    },
    Builtin {
        name: "Confab key",
        kind: "confab_key",
        pattern: Some(r"cfb_[A-Za-z0-9]{40}"),
        group: 0,
        field: None,
        gate: Gate::Raw(r"cfb_"),
    },
];

/// The default patterns as config entries (in order), e.g. to show them to a user.
pub fn default_patterns() -> Vec<PatternConfig> {
    DEFAULT_PATTERNS.iter().map(Builtin::config).collect()
}

impl Builtin {
    fn config(&self) -> PatternConfig {
        PatternConfig {
            name: self.name.to_string(),
            kind: self.kind.to_string(),
            pattern: self.pattern.map(str::to_string),
            capture_group: (self.group > 0).then_some(self.group),
            field_pattern: self.field.map(str::to_string),
        }
    }
}

/// Key under which serde_json (feature `arbitrary_precision`) hands a number's text to a visitor.
const SERDE_NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// A compiled pattern: what to find and what to put in its place.
struct Rule {
    regex: Regex,
    /// 0 = replace the whole match; N = replace only group N's span.
    group: usize,
    marker: String,
}

impl Rule {
    /// Replaces every match (leftmost-first, non-overlapping). `None` when no replacement was made.
    fn apply(&self, text: &str) -> Option<String> {
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
struct FieldRule {
    /// `None`: the whole value becomes `marker`.
    inner: Option<Rule>,
    marker: String,
}

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

/// Outcome of the streaming probe of one line.
enum Probe {
    /// Valid JSON and no string value could change.
    Clean,
    /// Some string value may change.
    Hit,
    /// Not JSON: the reference treats it as text.
    NotJson,
}

/// Collects the pieces of a [`Redactor`] while patterns are compiled in order.
#[derive(Default)]
struct Builder {
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
    fn add(&mut self, i: usize, p: &PatternConfig, gate: Gate) -> Result<(), ConfigError> {
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

    fn build(mut self) -> Result<Redactor, ConfigError> {
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

    /// Re-serializes a line already known to be valid JSON compactly, redacting string values on
    /// the way. `None` when no string changed. Works on the raw text rather than on a parsed
    /// `Value` so that number text is copied verbatim (serde_json rewrites `1e3` as `1e+3`) and
    /// duplicate keys survive; keys and strings are re-encoded as serde_json does. `gated`: skip
    /// the value patterns on strings the prefilter clears.
    fn rewrite_json(&self, line: &str, gated: bool) -> Option<String> {
        let b = line.as_bytes();
        let mut out = Vec::with_capacity(line.len() + 64);
        let mut stack: Vec<Frame> = Vec::new();
        let mut changed = false;
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            i += 1;
            match c {
                b' ' | b'\t' | b'\n' | b'\r' => continue,
                b'{' => stack.push(Frame {
                    in_object: true,
                    key_next: true,
                    fields: None,
                }),
                b'[' => {
                    let fields = stack.last().and_then(|f| f.fields.clone());
                    stack.push(Frame {
                        in_object: false,
                        key_next: false,
                        fields,
                    });
                }
                b'}' | b']' => {
                    stack.pop();
                }
                b',' => {
                    if let Some(f) = stack.last_mut() {
                        f.key_next = f.in_object;
                    }
                }
                b':' => {}
                b'"' => {
                    let start = i - 1;
                    i = string_end(b, start);
                    let lit = &line[start..i];
                    let decoded: Cow<str> = if lit.contains('\\') {
                        Cow::Owned(serde_json::from_str::<String>(lit).ok()?)
                    } else {
                        Cow::Borrowed(&lit[1..lit.len() - 1])
                    };
                    match stack.last_mut() {
                        Some(f) if f.key_next => {
                            f.fields = self.field_matches(&decoded);
                            f.key_next = false;
                            write_json_str(&mut out, &decoded);
                        }
                        top => {
                            let fields = top.and_then(|f| f.fields.as_ref());
                            let red = self.redact_string(&decoded, fields, gated);
                            changed |= red != decoded;
                            write_json_str(&mut out, &red);
                        }
                    }
                    continue;
                }
                _ => {
                    // A number or a literal: copied verbatim.
                    let start = i - 1;
                    while i < b.len()
                        && !matches!(b[i], b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
                    {
                        i += 1;
                    }
                    out.extend_from_slice(&b[start..i]);
                    continue;
                }
            }
            out.push(c);
        }
        if !changed {
            return None;
        }
        String::from_utf8(out).ok()
    }

    /// Prefilter: false only if [`Redactor::redact_line_reference`] surely returns the line
    /// unchanged. See the module docs for why each tier is a superset test.
    pub fn may_change(&self, line: &str) -> bool {
        if self.raw_gate_is_sound(line) && !self.raw_gate(line) {
            return false;
        }
        match self.probe(line) {
            Probe::Clean => false,
            Probe::Hit => true,
            Probe::NotJson => self.value_may_match(line),
        }
    }

    /// Whether a miss of [`Redactor::raw_gate`] on the raw line proves that no decoded string
    /// can change (module docs, tier 1).
    fn raw_gate_is_sound(&self, line: &str) -> bool {
        if self.custom_anchored || self.custom_fields {
            return false;
        }
        if !line.as_bytes().contains(&b'\\') {
            return true;
        }
        // Escapes other than `\u…` and `\/` decode to `"`, `\` or control characters, which no
        // built-in literal or sensitive key contains; user patterns may match anything.
        self.custom_values.is_empty() && !line.contains("\\u") && !line.contains("\\/")
    }

    /// Tier 1 on a raw line: a built-in value gate, a user value pattern, or a built-in
    /// sensitive word written as a key.
    fn raw_gate(&self, line: &str) -> bool {
        self.value_gates.iter().any(|r| r.is_match(line))
            || self.custom_values.is_match(line)
            || self.raw_key_words(line)
    }

    /// Whether some `"…"` followed by JSON whitespace and `:` may decode to a key the built-in
    /// field pattern matches. Every key ends that way; a `:` inside a string only adds
    /// candidates. The key is the text back to the previous `"`: an escaped quote there would
    /// only shorten it, and a key with an escape cannot be one of the words anyway (tier 1 has no
    /// `\u`). Non-ASCII keys (Unicode case folding, e.g. the Kelvin sign) go to the real regex.
    fn raw_key_words(&self, line: &str) -> bool {
        let Some(longest) = self.key_words.iter().map(|w| w.len()).max() else {
            return false;
        };
        let b = line.as_bytes();
        for (colon, _) in line.match_indices(':') {
            let mut close = colon;
            while close > 0 && matches!(b[close - 1], b' ' | b'\t' | b'\n' | b'\r') {
                close -= 1;
            }
            if close == 0 || b[close - 1] != b'"' {
                continue;
            }
            let close = close - 1;
            // A character folds to an ASCII letter from at most 4 bytes: longer keys cannot match.
            let lo = close.saturating_sub(4 * longest + 1);
            let Some(open) = b[lo..close].iter().rposition(|&c| c == b'"') else {
                continue;
            };
            let key = &line[lo + open + 1..close];
            let hit = if key.is_ascii() {
                self.key_words.iter().any(|w| w.eq_ignore_ascii_case(key))
            } else {
                self.field_keys.is_match(key)
            };
            if hit {
                return true;
            }
        }
        false
    }

    /// Exactly "some value pattern matches `text`", with the cheap literal test first.
    fn value_may_match(&self, text: &str) -> bool {
        let maybe =
            self.value_gates.iter().any(|r| r.is_match(text)) || self.custom_values.is_match(text);
        maybe && self.value_set.is_match(text)
    }

    /// Tier 2: one streaming serde_json pass that tests every decoded string exactly as the walk
    /// would, stopping at the first possible change.
    fn probe(&self, line: &str) -> Probe {
        let hit = Cell::new(false);
        let mut de = serde_json::Deserializer::from_str(line);
        let seed = ProbeSeed {
            r: self,
            field: false,
            hit: &hit,
        };
        let parsed = seed.deserialize(&mut de).and_then(|()| de.end());
        if hit.get() {
            Probe::Hit
        } else if parsed.is_err() {
            Probe::NotJson
        } else {
            Probe::Clean
        }
    }
}

/// One open container while re-serializing: in an object, whether a key comes next and the
/// field rules of the current key; in an array, the field rules it inherited.
struct Frame {
    in_object: bool,
    key_next: bool,
    fields: Option<SetMatches>,
}

/// Index just past the closing quote of the JSON string starting at `start` (valid JSON assumed).
fn string_end(b: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// Appends `s` as a JSON string literal, escaped exactly as serde_json does.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(out, s);
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

/// H28: rewrites a Go/RE2 pattern so Rust's regex gives the same ASCII meaning to `\d \s \w`
/// (and `\D \S \W`), inside character classes too, and to `\b \B`. Also reports whether the
/// pattern has a text or line anchor (`^ $ \A \z` outside a class).
pub fn rewrite_go_dialect(pattern: &str) -> (String, bool) {
    const DIGIT: &str = "0-9";
    const SPACE: &str = r"\t\n\x0C\r\x20";
    const WORD: &str = "0-9A-Za-z_";
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut anchored = false;
    let mut depth = 0usize; // character class nesting (Rust allows nested classes)
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(e) = chars.next() else {
                    out.push('\\'); // dangling: let the compiler report it
                    break;
                };
                let set = match e {
                    'd' | 'D' => Some(DIGIT),
                    's' | 'S' => Some(SPACE),
                    'w' | 'W' => Some(WORD),
                    _ => None,
                };
                match (set, depth > 0) {
                    (Some(set), true) if e.is_ascii_lowercase() => out.push_str(set),
                    (Some(set), _) if e.is_ascii_uppercase() => {
                        out.push_str("[^");
                        out.push_str(set);
                        out.push(']');
                    }
                    (Some(set), _) => {
                        out.push('[');
                        out.push_str(set);
                        out.push(']');
                    }
                    (None, false) if e == 'b' || e == 'B' => {
                        out.push_str("(?-u:\\");
                        out.push(e);
                        out.push(')');
                    }
                    (None, inside) => {
                        anchored |= !inside && (e == 'A' || e == 'z');
                        out.push('\\');
                        out.push(e);
                    }
                }
            }
            '[' => {
                if depth > 0 && chars.peek() == Some(&':') {
                    // POSIX class `[:name:]`: copy it whole.
                    out.push('[');
                    for p in chars.by_ref() {
                        out.push(p);
                        if p == ']' {
                            break;
                        }
                    }
                    continue;
                }
                depth += 1;
                out.push('[');
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
                // A `]` first in a class is a literal.
                if chars.peek() == Some(&']') {
                    out.push(']');
                    chars.next();
                }
            }
            ']' if depth > 0 => {
                depth -= 1;
                out.push(']');
            }
            '^' | '$' if depth == 0 => {
                anchored = true;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    (out, anchored)
}

/// Streaming probe over one JSON value. `field`: the nearest key matches some field pattern.
/// On the first string that may change, sets `hit` and aborts the parse with an error.
#[derive(Clone, Copy)]
struct ProbeSeed<'r> {
    r: &'r Redactor,
    field: bool,
    hit: &'r Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for ProbeSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl ProbeSeed<'_> {
    fn string<E: de::Error>(self, s: &str) -> Result<(), E> {
        if self.field || self.r.value_may_match(s) {
            self.hit.set(true);
            return Err(E::custom("redaction may apply"));
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for ProbeSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.string(s)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed(self.r))? {
            match key {
                // serde_json (arbitrary_precision) hands a number over as this one-key map with
                // the number's text. Value parsing rejects a non-number here, and so must we to
                // agree on "not JSON". The text is tested like a string under that key: the
                // rewrite treats a literal `{"$serde_json::private::Number":"…"}` as a string.
                Key::Number(field) => {
                    let text: String = map.next_value()?;
                    text.parse::<serde_json::Number>()
                        .map_err(de::Error::custom)?;
                    ProbeSeed { field, ..self }.string(&text)?;
                }
                Key::Field(field) => map.next_value_seed(ProbeSeed { field, ..self })?,
            }
        }
        Ok(())
    }
}

/// A decoded key: whether some field pattern matches it, and whether it is serde_json's number token.
enum Key {
    Number(bool),
    Field(bool),
}

struct KeySeed<'r>(&'r Redactor);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, k: &str) -> Result<Key, E> {
        let field = !self.0.field_rules.is_empty() && self.0.field_keys.is_match(k);
        Ok(if k == SERDE_NUMBER_TOKEN {
            Key::Number(field)
        } else {
            Key::Field(field)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Redactor {
        let cfg = RedactionConfig {
            enabled: true,
            ..Default::default()
        };
        Redactor::from_config(&cfg).unwrap().unwrap()
    }

    fn custom(use_defaults: bool, patterns: Vec<PatternConfig>) -> Redactor {
        let cfg = RedactionConfig {
            enabled: true,
            use_default_patterns: Some(use_defaults),
            patterns,
        };
        Redactor::from_config(&cfg).unwrap().unwrap()
    }

    fn value(kind: &str, pattern: &str, group: usize) -> PatternConfig {
        PatternConfig {
            name: kind.into(),
            kind: kind.into(),
            pattern: Some(pattern.into()),
            capture_group: (group > 0).then_some(group),
            field_pattern: None,
        }
    }

    fn field(kind: &str, field_pattern: &str, pattern: Option<&str>) -> PatternConfig {
        PatternConfig {
            name: kind.into(),
            kind: kind.into(),
            pattern: pattern.map(Into::into),
            capture_group: None,
            field_pattern: Some(field_pattern.into()),
        }
    }

    /// Both paths agree, and the result is returned.
    fn line(r: &Redactor, l: &str) -> String {
        let fast = r.redact_line(l);
        let reference = r.redact_line_reference(l);
        assert_eq!(fast, reference, "fast and reference differ on {l}");
        assert_eq!(
            matches!(fast, Cow::Borrowed(_)),
            matches!(reference, Cow::Borrowed(_))
        );
        fast.into_owned()
    }

    const AKIA: &str = "AKIAIOSFODNN7EXAMPLE";

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

    #[test]
    fn every_default_pattern_has_a_positive_example() {
        let r = defaults();
        let key80 = "a".repeat(90);
        let samples: Vec<(usize, String, &str)> = vec![
            (2, format!("key sk-ant-api03-{key80} end"), "API_KEY"),
            (
                3,
                "key sk-proj-abcdefghijklmnopqrstuvwxyz end".into(),
                "API_KEY",
            ),
            (3, "key sk-abcdefghijklmnopqrstuvwx end".into(), "API_KEY"),
            (4, format!("id {AKIA} end"), "AWS_KEY"),
            (
                5,
                format!("aws_secret_access_key = {}", "A".repeat(40)),
                "AWS_SECRET",
            ),
            (
                6,
                format!("AWS_SECRET_ACCESS_KEY=\"{}\"", "b".repeat(40)),
                "AWS_SECRET",
            ),
            (7, format!("ghp_{}", "x".repeat(36)), "GITHUB_TOKEN"),
            (8, format!("github_pat_{}", "x".repeat(22)), "GITHUB_TOKEN"),
            (9, format!("gho_{}", "x".repeat(36)), "GITHUB_TOKEN"),
            (10, format!("ghs_{}", "x".repeat(36)), "GITHUB_TOKEN"),
            (10, format!("ghu_{}", "x".repeat(36)), "GITHUB_TOKEN"),
            (11, format!("ghr_{}", "x".repeat(36)), "GITHUB_TOKEN"),
            (
                12,
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl".into(),
                "JWT",
            ),
            (
                13,
                "Authorization: Bearer abcdefghijklmnopqrstuvwxyz".into(),
                "BEARER_TOKEN",
            ),
            (
                14,
                "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----".into(),
                "PRIVATE_KEY",
            ),
            (
                15,
                "-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----".into(),
                "PRIVATE_KEY",
            ),
            (
                16,
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n-----END OPENSSH PRIVATE KEY-----"
                    .into(),
                "PRIVATE_KEY",
            ),
            (
                17,
                "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----".into(),
                "PRIVATE_KEY",
            ),
            (
                18,
                "postgresql://bob:hunter2@db.example/x".into(),
                "PASSWORD",
            ),
            (19, "mysql://bob:hunter2@db.example/x".into(), "PASSWORD"),
            (
                20,
                "mongodb+srv://bob:hunter2@db.example/x".into(),
                "PASSWORD",
            ),
            (21, "redis://:hunter2@cache.example:6379".into(), "PASSWORD"),
            (22, "https://bob:hunter2@example.com/".into(), "PASSWORD"),
            (23, "xoxb-1234567890-abcdef".into(), "SLACK_TOKEN"),
            (24, "xoxe.xoxp-1-abcdefghijklmnop".into(), "SLACK_TOKEN"),
            (25, "xapp-1-A0123456789-abc".into(), "SLACK_TOKEN"),
            (26, format!("sk_live_{}", "a".repeat(24)), "STRIPE_KEY"),
            (27, format!("rk_test_{}", "a".repeat(24)), "STRIPE_KEY"),
            (28, format!("AIza{}", "B".repeat(35)), "GOOGLE_API_KEY"),
            (
                29,
                format!("SK{}", "0123456789abcdef".repeat(2)),
                "TWILIO_KEY",
            ),
            (
                30,
                format!("SG.{}.{}", "a".repeat(22), "b".repeat(43)),
                "SENDGRID_KEY",
            ),
            (
                31,
                format!("{}-us12", "0123456789abcdef".repeat(2)),
                "MAILCHIMP_KEY",
            ),
            (32, format!("npm_{}", "a".repeat(36)), "NPM_TOKEN"),
            (
                33,
                format!("pypi-AgEIcHlwaS5vcmc{}", "a".repeat(70)),
                "PYPI_TOKEN",
            ),
            (34, format!("cfb_{}", "a".repeat(40)), "CONFAB_KEY"),
        ];
        let mut covered = std::collections::BTreeSet::new();
        for (n, sample, kind) in &samples {
            // The pattern itself matches (so the example is for the right pattern)…
            let rule = &r.value_rules[n - 2];
            let m = rule
                .regex
                .find(sample)
                .unwrap_or_else(|| panic!("#{n} does not match {sample:?}"));
            // The prefilter gate is found inside the match.
            if let Gate::Raw(g) | Gate::RawAlone(g) = DEFAULT_PATTERNS[n - 1].gate {
                assert!(
                    Regex::new(g).unwrap().is_match(m.as_str()),
                    "#{n}: gate {g} misses {sample:?}"
                );
            }
            // …and the chain redacts it.
            let out = r.redact_text(sample);
            let marker = format!("[REDACTED:{kind}]");
            assert!(out.contains(&marker), "#{n}: {sample:?} -> {out:?}");
            covered.insert(*n);
        }
        assert_eq!(covered.len(), 33);
        // #1, the field pattern: the whole value goes, whatever the case of the key.
        let out = line(
            &r,
            r#"{"Password":"hunter2","api_key":["a","b"],"other":"hunter2"}"#,
        );
        assert_eq!(
            out,
            r#"{"Password":"[REDACTED:SENSITIVE_FIELD]","api_key":["[REDACTED:SENSITIVE_FIELD]","[REDACTED:SENSITIVE_FIELD]"],"other":"hunter2"}"#
        );
    }

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

    #[test]
    fn json_walk_fields_arrays_and_untouched_values() {
        let r = custom(
            true,
            vec![
                field("pin", "^pin$", Some(r"\d{4}")),
                value("word", "classified", 0),
            ],
        );
        // Field pattern with a pattern: only matches inside the value; nearest key rules.
        assert_eq!(
            line(
                &r,
                r#"{"pin":"code 1234 and 99","x":{"pin":["5678","ab"]},"y":"1234"}"#
            ),
            r#"{"pin":"code [REDACTED:PIN] and 99","x":{"pin":["[REDACTED:PIN]","ab"]},"y":"1234"}"#
        );
        // Array elements inherit the parent's key, nested objects use their own keys.
        assert_eq!(
            line(&r, r#"{"token":[["a"],{"k":"b"},"c"],"n":1}"#),
            r#"{"token":[["[REDACTED:SENSITIVE_FIELD]"],{"k":"b"},"[REDACTED:SENSITIVE_FIELD]"],"n":1}"#
        );
        // Non-string values under a field key are untouched; keys never change.
        let l = format!(r#"{{"password":123,"token":null,"secret":true,"{AKIA}":1}}"#);
        assert_eq!(line(&r, &l), l);
        // Top-level strings and arrays have no key.
        assert_eq!(line(&r, r#""classified""#), r#""[REDACTED:WORD]""#);
        assert_eq!(
            line(&r, r#"["1234","classified"]"#),
            r#"["1234","[REDACTED:WORD]"]"#
        );
        // Field patterns then value patterns on the same string.
        assert_eq!(
            line(&r, r#"{"pin":"1234 classified"}"#),
            r#"{"pin":"[REDACTED:PIN] [REDACTED:WORD]"}"#
        );
        // Non-JSON lines get value patterns on the raw text (never field patterns).
        assert_eq!(
            line(&r, "password: classified {"),
            "password: [REDACTED:WORD] {"
        );
        assert_eq!(line(&r, ""), "");
        assert_eq!(line(&r, r#"{"a":"unterminated"#), r#"{"a":"unterminated"#);
    }

    #[test]
    fn h27_byte_exact_unless_changed_then_order_and_numbers_kept() {
        let r = defaults();
        // X35: keys out of order, a big number, odd spacing and escapes, no secret: borrowed.
        let clean = r#"{"z":1,"a":12345678901234567890,"m": "x\/y \u00e9","f":1.50e3}"#;
        assert!(matches!(r.redact_line(clean), Cow::Borrowed(s) if s == clean));
        assert!(matches!(r.redact_line_reference(clean), Cow::Borrowed(_)));
        // With a secret: compact, same key order, same number text.
        let dirty =
            format!(r#"{{"z":1, "a":12345678901234567890,"m":"{AKIA}","f":1.50e3,"b":-0.0}}"#);
        assert_eq!(
            line(&r, &dirty),
            r#"{"z":1,"a":12345678901234567890,"m":"[REDACTED:AWS_KEY]","f":1.50e3,"b":-0.0}"#
        );
        // Number text is kept verbatim even where serde_json would normalize it; duplicate keys stay.
        let nums = format!(r#"{{"a":1E5,"b":1e3,"c":-0.5e-3,"a":"{AKIA}"}}"#);
        assert_eq!(
            line(&r, &nums),
            r#"{"a":1E5,"b":1e3,"c":-0.5e-3,"a":"[REDACTED:AWS_KEY]"}"#
        );
        // Unchanged strings are re-encoded as serde_json does (compact output).
        let esc = format!(r#"{{ "k\u0041" : "a\/b\u00e9\n\u0001", "v": ["{AKIA}", true, null] }}"#);
        assert_eq!(
            line(&r, &esc),
            r#"{"kA":"a/bé\n\u0001","v":["[REDACTED:AWS_KEY]",true,null]}"#
        );
        // serde_json's private number token is handled like any other key.
        let tok = r#"{"$serde_json::private::Number":"1234567890123456"}"#;
        let digits = custom(false, vec![value("n", r"\d{16}", 0)]);
        assert_eq!(
            line(&digits, tok),
            r#"{"$serde_json::private::Number":"[REDACTED:N]"}"#
        );
        assert_eq!(
            line(&digits, r#"{"n":1234567890123456}"#),
            r#"{"n":1234567890123456}"#
        );
        // A field value already equal to its marker is not a change.
        let same = r#"{"token" : "[REDACTED:SENSITIVE_FIELD]"}"#;
        assert!(matches!(r.redact_line(same), Cow::Borrowed(_)));
        assert_eq!(line(&r, same), same);
    }

    #[test]
    fn h28_dialect_rewrite() {
        let rw = |p: &str| rewrite_go_dialect(p).0;
        assert_eq!(rw(r"\d{2}"), "[0-9]{2}");
        assert_eq!(rw(r"[^@\s]+"), r"[^@\t\n\x0C\r\x20]+");
        assert_eq!(rw(r"\w\W"), "[0-9A-Za-z_][^0-9A-Za-z_]");
        assert_eq!(rw(r"[\D]"), "[[^0-9]]");
        assert_eq!(rw(r"\S"), r"[^\t\n\x0C\r\x20]");
        assert_eq!(rw(r"\bx\B"), r"(?-u:\b)x(?-u:\B)");
        assert_eq!(rw(r"\\d"), r"\\d");
        assert_eq!(rw(r"\\\d"), r"\\[0-9]");
        assert_eq!(rw(r"[]\d]"), "[]0-9]");
        assert_eq!(rw(r"[[:alpha:]\w]"), "[[:alpha:]0-9A-Za-z_]");
        assert_eq!(rw(r"\p{Greek}\d"), r"\p{Greek}[0-9]");
        assert_eq!(rw(r"[\[]\d"), r"[\[][0-9]");
        // Anchors are reported (outside classes only).
        assert!(!rewrite_go_dialect(r"[^@\s]\$").1);
        assert!(rewrite_go_dialect(r"^a").1);
        assert!(rewrite_go_dialect(r"a$").1);
        assert!(rewrite_go_dialect(r"\Aa").1);
        assert!(rewrite_go_dialect(r"a\z").1);

        // X36: Arabic-Indic digits are not `\d`; U+00A0 is not `\s`.
        let r = defaults();
        let arabic = format!("sk-ant-api\u{0660}\u{0663}-{}", "a".repeat(90));
        assert_eq!(r.redact_text(&arabic), arabic);
        let nbsp = format!("AWS_SECRET_ACCESS_KEY\u{00A0}={}", "A".repeat(40));
        assert_eq!(r.redact_text(&nbsp), nbsp);
        let l = serde_json::json!({ "a": arabic, "b": nbsp }).to_string();
        assert_eq!(line(&r, &l), l);
        // Sanity: the ASCII forms are matched.
        assert_ne!(
            r.redact_text(&format!("sk-ant-api03-{}", "a".repeat(90))),
            ""
        );
        assert!(r
            .redact_text(&format!("AWS_SECRET_ACCESS_KEY ={}", "A".repeat(40)))
            .contains("[REDACTED:"));
        // `\w` and `\b` are ASCII in custom patterns too.
        let r = custom(false, vec![value("w", r"\bx\w+", 0)]);
        assert_eq!(
            r.redact_text("x\u{e9}t xab éxab"),
            "x\u{e9}t [REDACTED:W] é[REDACTED:W]"
        );
    }

    #[test]
    fn escaped_secrets_inside_json_strings_are_found() {
        let r = defaults();
        let cases = [
            // `\u0041` is `A`: the raw text has no `AKIA`.
            r#"{"m":"key \u0041KIAIOSFODNN7EXAMPLE"}"#,
            // `\/` inside a bearer token.
            r#"{"m":"Bearer abcdefghij\/klmnopqrstuvwxyz"}"#,
            // `\n` is the whitespace `\s+` needs.
            r#"{"m":"Bearer\nabcdefghijklmnopqrstuvwxyz"}"#,
            // `\"` between `=` and the secret.
            r#"{"m":"AWS_SECRET_ACCESS_KEY=\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\""}"#,
            // An escaped key that decodes to a field name.
            r#"{"pass\u0077ord":"hunter2"}"#,
        ];
        for c in cases {
            let out = line(&r, c);
            assert!(out.contains("[REDACTED:"), "{c} -> {out}");
        }
    }

    #[test]
    fn anchored_patterns_apply_per_string() {
        let r = custom(
            false,
            vec![value("whole", r"^secret$", 0), field("k", "^k$", None)],
        );
        assert_eq!(
            line(&r, r#"{"a":"secret","b":"a secret"}"#),
            r#"{"a":"[REDACTED:WHOLE]","b":"a secret"}"#
        );
        assert_eq!(line(&r, r#"["x","secret"]"#), r#"["x","[REDACTED:WHOLE]"]"#);
        assert_eq!(line(&r, "secret"), "[REDACTED:WHOLE]");
        assert_eq!(
            line(&r, r#"{"k" :"v","kk":"v"}"#),
            r#"{"k":"[REDACTED:K]","kk":"v"}"#
        );
    }

    fn corpus_files() -> Vec<std::path::PathBuf> {
        let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus"));
        let mut files = vec![
            root.join("4d5611e5-241a-462a-8d15-5122611a9569.jsonl"),
            root.join("python-to-rust-port.jsonl"),
            root.join("session_comprehensive.jsonl"),
        ];
        let sub = root.join("4d5611e5-241a-462a-8d15-5122611a9569/subagents");
        for e in std::fs::read_dir(sub).unwrap() {
            files.push(e.unwrap().path());
        }
        files
    }

    /// Variants of a raw line with secrets injected in raw (escaped) form after string openers.
    fn injected(l: &str, n: usize) -> Vec<String> {
        let secrets = [
            AKIA.to_string(),
            r"\u0041KIAIOSFODNN7EXAMPLE".to_string(),
            r"Bearer\nabcdefghij\/klmnopqrstuvwxyz".to_string(),
            r#"AWS_SECRET_ACCESS_KEY=\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\""#.to_string(),
            format!("ghp_{}", "Q".repeat(40)),
            "postgres://u:pw@h/db".to_string(),
            "-----BEGIN PRIVATE KEY-----\\nabc\\n-----END PRIVATE KEY-----".to_string(),
        ];
        let mut out = Vec::new();
        let openers: Vec<usize> = l.match_indices("\":\"").map(|(i, _)| i + 3).collect();
        if !openers.is_empty() {
            let at = openers[n % openers.len()];
            let s = &secrets[n % secrets.len()];
            out.push(format!("{}{}{}", &l[..at], s, &l[at..]));
        }
        if let Some(rest) = l.strip_prefix('{') {
            out.push(format!("{{\"password\":\"x\",{rest}"));
            out.push(format!("{{\"toke\\u006e\":[\"x\"],{rest}"));
        }
        out
    }

    /// The fast path equals the reference on every corpus line, clean and with secrets injected,
    /// under several configurations.
    #[test]
    fn fast_path_equals_reference_on_corpus() {
        let configs = [
            defaults(),
            custom(
                true,
                vec![
                    field("pin", "(?i)id$", Some(r"[0-9a-f]{8}")),
                    value("user", "USER", 0),
                ],
            ),
            custom(
                false,
                vec![
                    value("anch", r"^[a-z]+$", 0),
                    value("ts", r"\d{4}-\d\d-\d\dT", 0),
                ],
            ),
        ];
        let mut lines = 0;
        let mut changed = 0;
        let mut skipped_parse = 0;
        for f in corpus_files() {
            let text = std::fs::read_to_string(&f).unwrap();
            for (n, l) in text.lines().enumerate() {
                let mut variants = vec![l.to_string()];
                variants.extend(injected(l, n));
                for v in &variants {
                    for r in &configs {
                        let fast = r.redact_line(v);
                        let reference = r.redact_line_reference(v);
                        assert_eq!(fast, reference, "{}:{}", f.display(), n + 1);
                        lines += 1;
                        changed += matches!(reference, Cow::Owned(_)) as usize;
                    }
                }
                // Clean corpus lines never need a parse under the defaults when they have no
                // backslash (tier 1).
                if !l.contains('\\') && !configs[0].may_change(l) {
                    skipped_parse += 1;
                }
            }
        }
        assert!(lines > 1900 * 3, "{lines}");
        assert!(changed > 1000, "{changed}");
        assert!(skipped_parse > 1400, "{skipped_parse}");
    }

    #[test]
    fn injected_secrets_never_survive() {
        let r = defaults();
        for f in corpus_files() {
            let text = std::fs::read_to_string(&f).unwrap();
            for (n, l) in text.lines().enumerate() {
                for v in injected(l, n) {
                    let out = r.redact_line(&v);
                    assert!(
                        matches!(out, Cow::Owned(_)),
                        "{}:{} not redacted",
                        f.display(),
                        n + 1
                    );
                    for frag in [
                        "AKIAIOSFODNN7",
                        "hunter2",
                        "klmnopqrstuvwxyz",
                        "AAAAAAAAAAAAAAAAAAAA",
                        "QQQQQQQQ",
                    ] {
                        assert!(!out.contains(frag), "{}:{} kept {frag}", f.display(), n + 1);
                    }
                }
            }
        }
    }

    /// The gates the prefilter relies on keep the promises tier 1's soundness rests on.
    #[test]
    fn builtin_gates_are_safe_and_consistent() {
        for (n, d) in DEFAULT_PATTERNS.iter().enumerate() {
            match d.gate {
                Gate::Raw(g) | Gate::RawAlone(g) => {
                    // Only literals, classes of safe characters, alternation and counts: nothing
                    // that can match `"`, `\` or a control character.
                    let mut chars = g.chars();
                    while let Some(c) = chars.next() {
                        let ok = match c {
                            '\\' => chars.next() == Some('.'),
                            c => c.is_ascii_alphanumeric() || "_-:/ |[]{},".contains(c),
                        };
                        assert!(ok, "default #{}: unsafe gate {g:?}", n + 1);
                    }
                    Regex::new(g).unwrap();
                }
                Gate::KeyWords(words) => {
                    assert_eq!(d.field.unwrap(), format!("(?i)^({})$", words.join("|")));
                }
                Gate::Pattern => panic!("default #{} has no gate", n + 1),
            }
        }
    }

    #[test]
    fn sensitive_keys_found_in_raw_lines() {
        let r = defaults();
        let cases = [
            (r#"{"token" : "x"}"#, true),
            (r#"{"TOKEN":"x"}"#, true),
            (r#"{"a":"token","b":"x"}"#, false),
            (r#"{"a":"token:","b":"x"}"#, false),
            (r#"{"tokens":"x"}"#, false),
            ("{\"to\u{212A}en\":\"x\"}", true),
            ("{\"pa\u{017F}\u{017F}word\":\"x\"}", true),
            ("{\"m\":\"line\\nbreak\",\"secret\":\"s\"}", true),
            ("{\"m\":\"a\\\"secret\\\":1\"}", false),
        ];
        for (l, redacted) in cases {
            let out = line(&r, l);
            assert_eq!(
                out.contains("[REDACTED:SENSITIVE_FIELD]"),
                redacted,
                "{l} -> {out}"
            );
        }
    }
}
