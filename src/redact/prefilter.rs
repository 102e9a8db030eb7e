//! The prefilter behind [`Redactor::redact_line`]: [`Redactor::may_change`] answers "may the
//! reference change this line?" far faster than running it, and may only err towards "maybe".
//!
//! Invariants (a test compares both paths over the whole corpus):
//! 1. Tier 1, on the raw line without parsing. Each built-in value pattern has a gate (mostly a
//!    literal such as `AKIA`) found in every match; the built-in field pattern has its word list,
//!    looked for as `"word"` + `:`. With no backslash in the line, every decoded string is a
//!    verbatim substring of the raw line, so a miss on the raw line is a miss in every string.
//!    With escapes, a gate can still only be hidden by `\u…` or `\/` (the others decode to `"`,
//!    `\` or control characters, which no gate contains), so lines with those skip tier 1. User
//!    value patterns are run as they are, which is sound only on lines without any backslash,
//!    and only without anchors (`^ $ \A \z` see string boundaries; `\b` is fine because the
//!    raw neighbour of a string is `"`, a non-word character). User field patterns skip tier 1.
//! 2. Tier 2, when tier 1 is unsound or hits: a streaming serde_json pass decodes every string
//!    without building a tree and tests it as the reference would (field key, then the gates and
//!    a [`RegexSet`](regex::RegexSet) of all value patterns); it also settles "is this JSON"
//!    exactly as the reference does.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::Redactor;

/// Key under which serde_json (feature `arbitrary_precision`) hands a number's text to a visitor.
const SERDE_NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// Outcome of the streaming probe of one line.
enum Probe {
    /// Valid JSON and no string value could change.
    Clean,
    /// Some string value may change.
    Hit,
    /// Not JSON: the reference treats it as text.
    NotJson,
}

impl Redactor {
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
    pub(super) fn value_may_match(&self, text: &str) -> bool {
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
    use std::borrow::Cow;

    use crate::redact::test_support::{custom, defaults, field, line, value, AKIA};

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
