//! The JSON walk of the reference semantics: re-serializing a line while redacting its string
//! values, without going through a parsed `Value`.
//!
//! Invariants (H27):
//! - Only called on lines serde_json already accepted, so the scanner can assume valid JSON.
//! - Key order, duplicate keys and number text survive verbatim (a `Value` would normalize
//!   `1e3` to `1e+3`); keys and strings are re-encoded exactly as serde_json does, compactly.
//! - A string value gets the field rules of its nearest key (array elements inherit it), then
//!   the value rules; keys themselves never change.
//! - The caller gets `None` unless some string value actually changed, so it can hand back the
//!   original line byte for byte.

use std::borrow::Cow;

use regex::SetMatches;

use super::Redactor;

impl Redactor {
    /// Re-serializes a line already known to be valid JSON compactly, redacting string values on
    /// the way. `None` when no string changed. Works on the raw text rather than on a parsed
    /// `Value` so that number text is copied verbatim (serde_json rewrites `1e3` as `1e+3`) and
    /// duplicate keys survive; keys and strings are re-encoded as serde_json does. `gated`: skip
    /// the value patterns on strings the prefilter clears.
    pub(super) fn rewrite_json(&self, line: &str, gated: bool) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use crate::redact::test_support::{custom, defaults, field, line, value, AKIA};

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
}
