//! Hook input parsing (sync-engine §10, H19, H26).
//!
//! `HookInput::from_json` never panics on any bytes. When it accepts the input:
//! - the payload is an object that starts with the six base keys as strings, in order, and holds
//!   only known keys, the optional ones only when non-empty;
//! - the payload parses back to the same `HookInput`;
//! - after `strip_nul` no string, key or nested value contains U+0000;
//! - `validate_session_id` accepts exactly `^[A-Za-z0-9_-]{1,128}$`.
#![no_main]

use confab_sync::inbox::HookInput;
use confab_sync::paths::validate_session_id;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const SIX: [&str; 6] = [
    "session_id",
    "transcript_path",
    "cwd",
    "permission_mode",
    "hook_event_name",
    "reason",
];
const OPTIONAL: [&str; 6] = [
    "parent_pid",
    "prompt",
    "tool_name",
    "tool_input",
    "tool_use_id",
    "tool_response",
];

fn check_payload(payload: &Value) {
    let obj = payload.as_object().expect("payload is an object");
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    assert!(keys.len() >= 6, "payload keys {keys:?}");
    assert_eq!(keys[..6], SIX, "payload starts with the six keys");
    for k in SIX {
        assert!(obj[k].is_string(), "{k} is a string");
    }
    for k in &keys[6..] {
        assert!(OPTIONAL.contains(k), "unknown key {k} in payload");
        match &obj[*k] {
            Value::String(s) => assert!(!s.is_empty(), "{k} empty"),
            Value::Object(m) => assert!(!m.is_empty(), "{k} empty"),
            Value::Number(n) => assert_ne!(n.as_i64(), Some(0), "{k} zero"),
            other => panic!("{k} has unexpected value {other}"),
        }
    }
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn valid_id_by_rule(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut hi) = HookInput::from_json(data) else {
        return;
    };
    let payload = hi.to_payload();
    check_payload(&payload);
    assert_eq!(
        HookInput::from_value(&payload).as_ref(),
        Ok(&hi),
        "round trip"
    );
    let text = serde_json::to_string(&payload).unwrap();
    assert_eq!(HookInput::from_json(text.as_bytes()).as_ref(), Ok(&hi));

    assert_eq!(
        validate_session_id(&hi.session_id).is_ok(),
        valid_id_by_rule(&hi.session_id),
        "session id {:?}",
        hi.session_id
    );

    hi.strip_nul();
    let stripped = hi.to_payload();
    check_payload(&stripped);
    assert!(!has_nul(&stripped), "NUL survived strip_nul: {stripped}");
});
