//! State and inbox parsing (sync-engine §8): arbitrary bytes never make the daemon panic.
//!
//! - `state::load` on a file holding the input returns `Ok` or `Err`, and a state it accepts,
//!   written back in `state::save`'s format, loads back equal (so a daemon never loses a cursor by
//!   rewriting its own state). The write is a plain one: `save`'s fsyncs would make each run 100×
//!   slower and are not what is being tested;
//! - `InboxEvent::from_line` on the input never panics, and an accepted event survives
//!   `to_line` → `from_line` unchanged;
//! - `inbox::read_all` on a file holding the input returns exactly the lines `from_line` accepts,
//!   in order (blank lines skipped).
#![no_main]

#[path = "common.rs"]
mod common;

use confab_sync::inbox::{self, InboxEvent, MAX_LINE_BYTES};
use confab_sync::state;
use libfuzzer_sys::fuzz_target;

fn check_state(data: &[u8]) {
    let path = common::write_file("s.json", data);
    let Ok(Some(st)) = state::load(&path) else {
        return;
    };
    let mut text = serde_json::to_vec_pretty(&st).expect("an accepted state serializes");
    text.push(b'\n');
    let again = common::write_file("s2.json", &text);
    let back = state::load(&again).expect("reload").expect("present");
    assert_eq!(back, st, "state changed on save/load");
}

fn check_event_line(line: &[u8]) {
    let Ok(ev) = InboxEvent::from_line(line) else {
        return;
    };
    let text = ev.to_line();
    assert!(!text.contains('\n'));
    if text.len() <= MAX_LINE_BYTES {
        assert_eq!(InboxEvent::from_line(text.as_bytes()).as_ref(), Ok(&ev));
    }
}

fn check_inbox(data: &[u8]) {
    let path = common::write_file("i.inbox.jsonl", data);
    let events = inbox::read_all(&path);
    let expected: Vec<InboxEvent> = data
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .filter_map(|l| InboxEvent::from_line(l).ok())
        .collect();
    assert_eq!(events, expected);
    let _ = inbox::last_session_end(&events);
}

fuzz_target!(|data: &[u8]| {
    check_state(data);
    check_event_line(data);
    check_inbox(data);
});
