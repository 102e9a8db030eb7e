//! H28: patterns are written in the Go/RE2 dialect, where `\d \s \w` and `\b` are ASCII; Rust's
//! regex makes them Unicode. Every pattern goes through [`rewrite_go_dialect`] before it is
//! compiled.
//!
//! Invariants:
//! - `\d \s \w` (and `\D \S \W`) become explicit ASCII classes, also inside character classes
//!   (POSIX `[:name:]` classes and escaped characters are copied untouched).
//! - `\b \B` become ASCII word boundaries (`(?-u:…)`).
//! - The anchor flag covers only `^ $ \A \z` outside a class: the prefilter relies on it to know
//!   when a match in a decoded string says nothing about the raw line.

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::test_support::{custom, defaults, line, value};

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
}
