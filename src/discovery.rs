//! Sub-agent discovery (sync-engine §3): which `agent-<id>.jsonl` files belong to a session.
//!
//! Three sources, all validated by the same id rule so no name from content or from the backend
//! can ever become a path outside the subagents directory (H6): ids referenced in `"type":"user"`
//! lines, a scan of the subagents directory, and file names the backend reports at init.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// `…/<uuid>.jsonl` → `…/<uuid>/subagents`.
pub fn subagents_dir(transcript: &Path) -> PathBuf {
    transcript.with_extension("").join("subagents")
}

/// `^[A-Za-z0-9_-]{6,200}$`
pub fn is_valid_agent_id(id: &str) -> bool {
    (6..=200).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub fn agent_file_name(id: &str) -> String {
    format!("agent-{id}.jsonl")
}

/// The id in a file name matching `^agent-[A-Za-z0-9_-]{6,200}\.jsonl$`.
pub fn agent_id_from_file_name(name: &str) -> Option<&str> {
    let id = name.strip_prefix("agent-")?.strip_suffix(".jsonl")?;
    is_valid_agent_id(id).then_some(id)
}

/// Adds the agent ids a line references to `out`. Only `"type":"user"` lines count; a cheap
/// substring test keeps the JSON parser off the vast majority of lines.
pub fn extract_agent_ids(line: &str, out: &mut BTreeSet<String>) {
    if !line.contains("\"agentId\"") || !line.contains("\"user\"") {
        return;
    }
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return;
    };
    if v.get("type").and_then(Value::as_str) != Some("user") {
        return;
    }
    let mut add = |id: Option<&Value>| {
        if let Some(id) = id.and_then(Value::as_str) {
            if is_valid_agent_id(id) {
                out.insert(id.to_string());
            }
        }
    };
    add(v.pointer("/toolUseResult/agentId"));
    if let Some(items) = v.pointer("/message/content").and_then(Value::as_array) {
        for item in items {
            if item.get("type").and_then(Value::as_str) != Some("tool_result") {
                continue;
            }
            if let Some(content) = item.get("content").filter(|c| c.is_object()) {
                add(content.pointer("/toolUseResult/agentId"));
                add(content.get("agentId"));
            }
            add(item.pointer("/toolUseResult/agentId"));
        }
    }
}

/// Ids of the regular files named `agent-<valid id>.jsonl` in `dir` (symlinks and directories are
/// not files here). A missing directory has none.
pub fn scan_dir(dir: &Path) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return ids;
    };
    for entry in entries.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        if !ft.is_file() {
            continue;
        }
        if let Some(id) = entry.file_name().to_str().and_then(agent_id_from_file_name) {
            ids.insert(id.to_string());
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subagents_dir_of_transcript() {
        assert_eq!(
            subagents_dir(Path::new("/x/dir/transcript.jsonl")),
            PathBuf::from("/x/dir/transcript/subagents")
        );
    }

    #[test]
    fn ids_validated() {
        for ok in [
            "a3eaf63159a07953f",
            "acompact-2aaa241e456ebc94",
            "aprompt_suggestion-ba74af",
            "abcd1234",
        ] {
            assert!(is_valid_agent_id(ok), "{ok}");
            assert_eq!(agent_id_from_file_name(&agent_file_name(ok)), Some(ok));
        }
        for bad in ["abc12", "a/b", "", "../../x", "agent id", &"a".repeat(201)] {
            assert!(!is_valid_agent_id(bad), "{bad}");
        }
        assert_eq!(agent_id_from_file_name("agent-../x.jsonl"), None);
        assert_eq!(agent_id_from_file_name("../../x.jsonl"), None);
        assert_eq!(
            agent_id_from_file_name("subagents/workflows/r/agent-a.jsonl"),
            None
        );
    }

    #[test]
    fn ids_from_both_forms_and_only_user_lines() {
        let mut ids = BTreeSet::new();
        extract_agent_ids(
            r#"{"type":"user","toolUseResult":{"agentId":"abc12345"}}"#,
            &mut ids,
        );
        extract_agent_ids(
            r#"{"type":"user","message":{"content":[{"type":"tool_result","content":{"toolUseResult":{"agentId":"def67890"}}}]}}"#,
            &mut ids,
        );
        extract_agent_ids(
            r#"{"type":"assistant","toolUseResult":{"agentId":"zzz99999"}}"#,
            &mut ids,
        );
        extract_agent_ids(
            r#"{"type":"user","toolUseResult":{"agentId":"abc12"}}"#,
            &mut ids,
        );
        extract_agent_ids(
            r#"{"type":"user","toolUseResult":{"agentId":"a/b/c/d/e"}}"#,
            &mut ids,
        );
        extract_agent_ids("not json \"agentId\" \"user\"", &mut ids);
        assert_eq!(
            ids.into_iter().collect::<Vec<_>>(),
            vec!["abc12345", "def67890"]
        );
    }

    #[test]
    fn corpus_reference_is_found() {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/corpus/4d5611e5-241a-462a-8d15-5122611a9569.jsonl"
        );
        let text = std::fs::read_to_string(p).unwrap();
        let mut ids = BTreeSet::new();
        for line in text.lines() {
            extract_agent_ids(line, &mut ids);
        }
        assert!(ids.contains("a2898e3"), "{ids:?}");
        let dir = subagents_dir(Path::new(p));
        let scanned = scan_dir(&dir);
        assert!(
            scanned.contains("a2898e3") && scanned.contains("acompact-e1f845"),
            "{scanned:?}"
        );
    }

    #[test]
    fn scan_ignores_symlinks_dirs_and_bad_names() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("agent-aaaaaaaa.jsonl"), "").unwrap();
        std::fs::write(d.path().join("agent-abc.jsonl"), "").unwrap();
        std::fs::write(d.path().join("other.jsonl"), "").unwrap();
        std::fs::create_dir(d.path().join("agent-dddddddd.jsonl")).unwrap();
        std::os::unix::fs::symlink(
            d.path().join("agent-aaaaaaaa.jsonl"),
            d.path().join("agent-llllllll.jsonl"),
        )
        .unwrap();
        assert_eq!(
            scan_dir(d.path()).into_iter().collect::<Vec<_>>(),
            vec!["aaaaaaaa"]
        );
        assert!(scan_dir(&d.path().join("missing")).is_empty());
    }
}
