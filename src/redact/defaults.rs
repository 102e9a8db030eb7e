//! The 34 default patterns of sync-engine §7, each with the gate the prefilter tests instead of
//! running the pattern.
//!
//! Invariants:
//! - The table is in the spec's order, which matters: #2 must run before #3.
//! - Every [`Gate::Raw`] / [`Gate::RawAlone`] gate matches inside every match of its pattern and
//!   can never match `"`, `\` or a control character; a test checks both. The prefilter's tier 1
//!   is sound only because of this.

use crate::config::PatternConfig;

/// How the prefilter can test for a built-in pattern without running it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Gate {
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
pub(super) struct Builtin {
    name: &'static str,
    kind: &'static str,
    pattern: Option<&'static str>,
    group: usize,
    field: Option<&'static str>,
    pub(super) gate: Gate,
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
pub(super) const DEFAULT_PATTERNS: [Builtin; 34] = [
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
    pub(super) fn config(&self) -> PatternConfig {
        PatternConfig {
            name: self.name.to_string(),
            kind: self.kind.to_string(),
            pattern: self.pattern.map(str::to_string),
            capture_group: (self.group > 0).then_some(self.group),
            field_pattern: self.field.map(str::to_string),
        }
    }
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;
    use crate::redact::test_support::{defaults, line, AKIA};

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
}
