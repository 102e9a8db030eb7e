//! The session inbox `~/.confab/sync/<ID>.inbox.jsonl` and the hook input it carries (sync-engine §8, §10).
//!
//! Invariants: each event is appended with a single `write()` of one compact JSON line (0600,
//! `O_APPEND`), so concurrent hooks never interleave; the reader never fails: a missing file is
//! empty, bad or oversized lines are skipped with a warning; a [`HookInput`] only ever carries the
//! known keys (§10), the six base keys always present as strings.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Longest inbox line the reader accepts (without its `\n`).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// The event type the daemon acts on.
pub const SESSION_END: &str = "session_end";

fn is_empty_opt(v: &Option<String>) -> bool {
    v.as_deref().is_none_or(str::is_empty)
}

fn is_zero_opt(v: &Option<i64>) -> bool {
    v.is_none_or(|p| p == 0)
}

fn is_empty_obj(v: &Option<Map<String, Value>>) -> bool {
    v.as_ref().is_none_or(Map::is_empty)
}

/// The hook input, reduced to the known keys (§10).
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct HookInput {
    pub session_id: String,
    pub transcript_path: String,
    pub cwd: String,
    pub permission_mode: String,
    pub hook_event_name: String,
    pub reason: String,
    /// The Claude process we watch; set by us, never taken from Claude's input.
    #[serde(skip_serializing_if = "is_zero_opt")]
    pub parent_pid: Option<i64>,
    #[serde(skip_serializing_if = "is_empty_opt")]
    pub prompt: Option<String>,
    #[serde(skip_serializing_if = "is_empty_opt")]
    pub tool_name: Option<String>,
    #[serde(skip_serializing_if = "is_empty_obj")]
    pub tool_input: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "is_empty_opt")]
    pub tool_use_id: Option<String>,
    #[serde(skip_serializing_if = "is_empty_obj")]
    pub tool_response: Option<Map<String, Value>>,
}

/// Deserializing is as lenient as [`HookInput::from_value`].
impl<'de> Deserialize<'de> for HookInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        HookInput::from_value(&v).map_err(serde::de::Error::custom)
    }
}

impl HookInput {
    /// Parses the hook's stdin. Only a non-object (or non-JSON) input is an error; a known key with a
    /// value of the wrong type reads as absent (`""` for the six base keys).
    pub fn from_json(bytes: &[u8]) -> Result<HookInput, String> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("hook input is not JSON: {e}"))?;
        HookInput::from_value(&v)
    }

    /// [`HookInput::from_json`] on an already parsed value.
    pub fn from_value(v: &Value) -> Result<HookInput, String> {
        let obj = v.as_object().ok_or("hook input is not a JSON object")?;
        let string = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let opt_string = |k: &str| Some(string(k)).filter(|s| !s.is_empty());
        let object = |k: &str| {
            obj.get(k)
                .and_then(Value::as_object)
                .filter(|m| !m.is_empty())
                .cloned()
        };
        Ok(HookInput {
            session_id: string("session_id"),
            transcript_path: string("transcript_path"),
            cwd: string("cwd"),
            permission_mode: string("permission_mode"),
            hook_event_name: string("hook_event_name"),
            reason: string("reason"),
            parent_pid: obj
                .get("parent_pid")
                .and_then(Value::as_i64)
                .filter(|&p| p != 0),
            prompt: opt_string("prompt"),
            tool_name: opt_string("tool_name"),
            tool_input: object("tool_input"),
            tool_use_id: opt_string("tool_use_id"),
            tool_response: object("tool_response"),
        })
    }

    /// Removes U+0000 from every string, object keys and nested values included (H19: the backend's
    /// database rejects NUL after storing the lines).
    pub fn strip_nul(&mut self) {
        for s in [
            &mut self.session_id,
            &mut self.transcript_path,
            &mut self.cwd,
            &mut self.permission_mode,
            &mut self.hook_event_name,
            &mut self.reason,
        ] {
            strip_str(s);
        }
        for s in [&mut self.prompt, &mut self.tool_name, &mut self.tool_use_id]
            .into_iter()
            .flatten()
        {
            strip_str(s);
        }
        for m in [&mut self.tool_input, &mut self.tool_response]
            .into_iter()
            .flatten()
        {
            strip_map(m);
        }
    }

    /// The JSON object sent as the event payload (and stored in the inbox).
    pub fn to_payload(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| Value::Object(Map::new()))
    }

    /// Only the six base keys (used where the optional ones must not travel, e.g. an oversized line).
    pub fn six_keys_only(&self) -> HookInput {
        HookInput {
            session_id: self.session_id.clone(),
            transcript_path: self.transcript_path.clone(),
            cwd: self.cwd.clone(),
            permission_mode: self.permission_mode.clone(),
            hook_event_name: self.hook_event_name.clone(),
            reason: self.reason.clone(),
            ..HookInput::default()
        }
    }
}

fn strip_str(s: &mut String) {
    if s.contains('\0') {
        s.retain(|c| c != '\0');
    }
}

fn strip_map(m: &mut Map<String, Value>) {
    if m.keys().any(|k| k.contains('\0')) {
        let old = std::mem::take(m);
        for (mut k, v) in old {
            strip_str(&mut k);
            m.insert(k, v);
        }
    }
    m.values_mut().for_each(strip_value);
}

fn strip_value(v: &mut Value) {
    match v {
        Value::String(s) => strip_str(s),
        Value::Array(a) => a.iter_mut().for_each(strip_value),
        Value::Object(m) => strip_map(m),
        _ => {}
    }
}

/// One inbox line.
#[derive(Clone, Debug, PartialEq)]
pub struct InboxEvent {
    pub kind: String,
    pub timestamp: String,
    pub hook_input: Option<HookInput>,
}

/// The on-disk form of an [`InboxEvent`].
#[derive(Serialize)]
struct Line<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    hook_input: Option<&'a HookInput>,
}

impl InboxEvent {
    /// A `session_end` event stamped now.
    pub fn session_end(hook_input: Option<HookInput>) -> InboxEvent {
        InboxEvent {
            kind: SESSION_END.to_string(),
            timestamp: crate::state::now_rfc3339(),
            hook_input,
        }
    }

    /// The compact JSON line, without the `\n`. A line the reader would refuse (over 1 MiB) keeps
    /// only the six base keys of the hook input.
    pub fn to_line(&self) -> String {
        let line = self.encode(self.hook_input.as_ref());
        if line.len() <= MAX_LINE_BYTES {
            return line;
        }
        let reduced = self.hook_input.as_ref().map(HookInput::six_keys_only);
        self.encode(reduced.as_ref())
    }

    fn encode(&self, hook_input: Option<&HookInput>) -> String {
        let line = Line {
            kind: &self.kind,
            timestamp: &self.timestamp,
            hook_input,
        };
        serde_json::to_string(&line).expect("strings and JSON values always serialize")
    }

    /// Parses one line; `Err` says why it is skipped.
    pub fn from_line(line: &[u8]) -> Result<InboxEvent, String> {
        let v: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
        let obj = v.as_object().ok_or("not a JSON object")?;
        let kind = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or("no \"type\" string")?;
        let timestamp = obj.get("timestamp").and_then(Value::as_str).unwrap_or("");
        let hook_input = match obj.get("hook_input") {
            None | Some(Value::Null) => None,
            Some(h) => Some(HookInput::from_value(h).map_err(|e| format!("hook_input: {e}"))?),
        };
        Ok(InboxEvent {
            kind: kind.to_string(),
            timestamp: timestamp.to_string(),
            hook_input,
        })
    }
}

/// Appends one event: `O_APPEND|O_CREAT`, mode 0600, one `write()` of the line plus `\n`.
pub fn append(path: &Path, event: &InboxEvent) -> std::io::Result<()> {
    let mut buf = event.to_line().into_bytes();
    buf.push(b'\n');
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    // A regular-file write of this size is complete in one call; write_all only loops if the
    // kernel ever returns short, which is still better than losing the event.
    f.write_all(&buf)
}

/// All events in order; a missing file is empty; bad lines are skipped with a warning.
pub fn read_all(path: &Path) -> Vec<InboxEvent> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!("cannot read inbox {}: {e}", path.display());
            return Vec::new();
        }
    };
    let mut reader = BufReader::new(file);
    let mut events = Vec::new();
    let mut line_no = 0usize;
    loop {
        line_no += 1;
        match read_bounded_line(&mut reader) {
            Ok(None) => break,
            Ok(Some(BoundedLine::TooLong)) => {
                tracing::warn!(
                    "inbox {} line {line_no}: longer than 1 MiB, skipped",
                    path.display()
                );
            }
            Ok(Some(BoundedLine::Line(bytes))) => {
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match InboxEvent::from_line(&bytes) {
                    Ok(ev) => events.push(ev),
                    Err(why) => {
                        tracing::warn!("inbox {} line {line_no}: {why}; skipped", path.display())
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    "inbox {}: read error after line {line_no}: {e}",
                    path.display()
                );
                break;
            }
        }
    }
    events
}

enum BoundedLine {
    Line(Vec<u8>),
    TooLong,
}

/// Reads one `\n`-terminated line (the last may lack it), never buffering more than
/// [`MAX_LINE_BYTES`] + 1 bytes of it. `None` at end of file.
fn read_bounded_line(reader: &mut impl BufRead) -> std::io::Result<Option<BoundedLine>> {
    let mut buf = Vec::new();
    let limit = MAX_LINE_BYTES as u64 + 1;
    let n = reader.by_ref().take(limit).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Some(BoundedLine::Line(buf)));
    }
    if buf.len() <= MAX_LINE_BYTES {
        return Ok(Some(BoundedLine::Line(buf)));
    }
    // Too long: discard the rest of the line in bounded pieces.
    loop {
        buf.clear();
        let n = reader.by_ref().take(limit).read_until(b'\n', &mut buf)?;
        if n == 0 || buf.last() == Some(&b'\n') {
            return Ok(Some(BoundedLine::TooLong));
        }
    }
}

/// The last `session_end` event that carries a hook input (sync-engine §1 step 8.2).
pub fn last_session_end(events: &[InboxEvent]) -> Option<&InboxEvent> {
    events
        .iter()
        .rev()
        .find(|e| e.kind == SESSION_END && e.hook_input.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn input(id: &str, reason: &str) -> HookInput {
        HookInput {
            session_id: id.into(),
            transcript_path: "/t/x.jsonl".into(),
            cwd: "/c".into(),
            permission_mode: "default".into(),
            hook_event_name: "SessionEnd".into(),
            reason: reason.into(),
            ..HookInput::default()
        }
    }

    #[test]
    fn six_keys_always_present_optional_only_when_set() {
        let h = HookInput::from_json(br#"{"session_id":"s","extra":1,"prompt":"","parent_pid":0}"#)
            .unwrap();
        let v = h.to_payload();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "session_id",
                "transcript_path",
                "cwd",
                "permission_mode",
                "hook_event_name",
                "reason"
            ]
        );
        assert_eq!(v["session_id"], "s");
        assert_eq!(v["reason"], "");
    }

    #[test]
    fn optional_keys_round_trip_and_unknown_keys_drop() {
        let raw = br#"{"session_id":"s","transcript_path":"/t","cwd":"/c","permission_mode":"p",
            "hook_event_name":"UserPromptSubmit","reason":"r","parent_pid":4321,"prompt":"hi",
            "tool_name":"Bash","tool_input":{"command":"ls"},"tool_use_id":"tu1",
            "tool_response":{"ok":true},"secret_future_key":"x"}"#;
        let h = HookInput::from_json(raw).unwrap();
        assert_eq!(h.parent_pid, Some(4321));
        assert_eq!(h.prompt.as_deref(), Some("hi"));
        assert_eq!(h.tool_input.as_ref().unwrap()["command"], "ls");
        let v = h.to_payload();
        assert!(v.get("secret_future_key").is_none());
        assert_eq!(v["tool_response"]["ok"], true);
        let back: HookInput = serde_json::from_value(v).unwrap();
        assert_eq!(back, h);
        let six = h.six_keys_only();
        assert_eq!(six.to_payload().as_object().unwrap().len(), 6);
        assert_eq!(six.reason, "r");
    }

    #[test]
    fn wrong_types_are_lenient_but_non_objects_fail() {
        let h = HookInput::from_json(
            br#"{"session_id":5,"cwd":null,"reason":["x"],"parent_pid":"12","tool_input":"str","prompt":7}"#,
        )
        .unwrap();
        assert_eq!(h, HookInput::default());
        for bad in [&b"[]"[..], b"\"s\"", b"12", b"null", b"{", b""] {
            assert!(
                HookInput::from_json(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn strip_nul_everywhere() {
        // H19
        let mut h = HookInput::from_json(
            br#"{"session_id":"a\u0000b","reason":"\u0000","prompt":"p\u0000",
                "tool_input":{"k\u0000":["x\u0000",{"y":"\u0000z"}]}}"#,
        )
        .unwrap();
        h.strip_nul();
        assert_eq!(h.session_id, "ab");
        assert_eq!(h.reason, "");
        assert_eq!(h.prompt.as_deref(), Some("p"));
        let text = serde_json::to_string(&h.to_payload()).unwrap();
        assert!(!text.contains("\\u0000"), "{text}");
        assert_eq!(h.tool_input.unwrap()["k"][1]["y"], "z");
    }

    #[test]
    fn line_format() {
        let ev = InboxEvent {
            kind: "session_end".into(),
            timestamp: "2025-01-02T03:04:05Z".into(),
            hook_input: Some(input("s", "exit")),
        };
        assert_eq!(
            ev.to_line(),
            r#"{"type":"session_end","timestamp":"2025-01-02T03:04:05Z","hook_input":{"session_id":"s","transcript_path":"/t/x.jsonl","cwd":"/c","permission_mode":"default","hook_event_name":"SessionEnd","reason":"exit"}}"#
        );
        let none = InboxEvent {
            hook_input: None,
            ..ev.clone()
        };
        assert_eq!(
            none.to_line(),
            r#"{"type":"session_end","timestamp":"2025-01-02T03:04:05Z"}"#
        );
        assert_eq!(InboxEvent::from_line(ev.to_line().as_bytes()), Ok(ev));
    }

    #[test]
    fn session_end_is_stamped_now() {
        let ev = InboxEvent::session_end(None);
        assert_eq!(ev.kind, "session_end");
        chrono::DateTime::parse_from_rfc3339(&ev.timestamp).unwrap();
    }

    #[test]
    fn oversized_event_keeps_six_keys() {
        let mut h = input("s", "r");
        h.prompt = Some("x".repeat(MAX_LINE_BYTES + 10));
        let ev = InboxEvent::session_end(Some(h));
        let line = ev.to_line();
        assert!(line.len() < 1000);
        let back = InboxEvent::from_line(line.as_bytes()).unwrap();
        assert_eq!(back.hook_input, Some(input("s", "r")));
    }

    #[test]
    fn b6_b7_appends_are_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.inbox.jsonl");
        for i in 0..3 {
            append(
                &path,
                &InboxEvent::session_end(Some(input("s", &format!("r{i}")))),
            )
            .unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches('\n').count(), 3);
        assert!(text.ends_with('\n'));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let events = read_all(&path);
        assert_eq!(events.len(), 3);
        let reasons: Vec<&str> = events
            .iter()
            .map(|e| e.hook_input.as_ref().unwrap().reason.as_str())
            .collect();
        assert_eq!(reasons, ["r0", "r1", "r2"]);
        // B6: session_id and reason round-trip.
        assert_eq!(events[0].hook_input.as_ref().unwrap().session_id, "s");
    }

    #[test]
    fn b8_events_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("i.jsonl");
        std::fs::write(
            &path,
            "{\"type\":\"session_end\",\"timestamp\":\"2025-01-01T00:00:00Z\",\"hook_input\":{\"session_id\":\"a\",\"reason\":\"clear\"}}\n\
             {\"type\":\"other_event\",\"timestamp\":\"2025-01-01T00:00:01Z\"}\n",
        )
        .unwrap();
        let ev = read_all(&path);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].kind, "session_end");
        assert_eq!(ev[0].timestamp, "2025-01-01T00:00:00Z");
        assert_eq!(ev[0].hook_input.as_ref().unwrap().reason, "clear");
        assert_eq!(ev[1].kind, "other_event");
        assert_eq!(ev[1].timestamp, "2025-01-01T00:00:01Z");
        assert_eq!(ev[1].hook_input, None);
    }

    #[test]
    fn b9_missing_inbox_is_empty() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(read_all(&tmp.path().join("nope.jsonl")).is_empty());
    }

    #[test]
    fn corrupt_and_oversized_lines_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("i.jsonl");
        let good = |r: &str| InboxEvent {
            kind: "session_end".into(),
            timestamp: "t".into(),
            hook_input: Some(input("s", r)),
        };
        let mut text = String::new();
        text += &(good("1").to_line() + "\n");
        text += "{not json\n";
        text += "[1,2]\n";
        text += "{\"timestamp\":\"no type\"}\n";
        text += "{\"type\":\"session_end\",\"hook_input\":\"str\"}\n";
        text += "\n";
        text += &format!(
            "{{\"type\":\"x\",\"pad\":\"{}\"}}\n",
            "y".repeat(MAX_LINE_BYTES + 5)
        );
        text += &(good("2").to_line() + "\n");
        // A torn last line (no newline, incomplete JSON).
        text += "{\"type\":\"sess";
        std::fs::write(&path, text).unwrap();
        let ev = read_all(&path);
        assert_eq!(ev, vec![good("1"), good("2")]);
    }

    #[test]
    fn line_of_exactly_the_limit_is_read_and_last_line_without_newline_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("i.jsonl");
        let head = "{\"type\":\"big\",\"pad\":\"";
        let pad = "p".repeat(MAX_LINE_BYTES - head.len() - 2);
        let line = format!("{head}{pad}\"}}");
        assert_eq!(line.len(), MAX_LINE_BYTES);
        std::fs::write(
            &path,
            format!("{line}\n{{\"type\":\"last\",\"timestamp\":\"t\"}}"),
        )
        .unwrap();
        let kinds: Vec<String> = read_all(&path).into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["big", "last"]);
    }

    #[test]
    fn last_session_end_with_input() {
        let mk = |kind: &str, h: Option<HookInput>| InboxEvent {
            kind: kind.into(),
            timestamp: "t".into(),
            hook_input: h,
        };
        let events = vec![
            mk("session_end", Some(input("s", "first"))),
            mk("session_end", Some(input("s", "second"))),
            mk("session_end", None),
            mk("other_event", Some(input("s", "other"))),
        ];
        let last = last_session_end(&events).unwrap();
        assert_eq!(last.hook_input.as_ref().unwrap().reason, "second");
        assert!(last_session_end(&events[2..]).is_none());
        assert!(last_session_end(&[]).is_none());
    }
}
