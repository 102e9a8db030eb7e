//! `confab-sync install [--hooks] [--service-manager …]` and `uninstall`, as library functions:
//! the service side (the systemd unit template, or the launchd agents directory) and the hook
//! registration in Claude Code's `settings.json`.
//!
//! Invariants for `settings.json` (read-modify-write):
//! - Everything that is not one of our three hook entries is kept as it was: unknown top-level
//!   keys, other events, other tools' hooks, matchers, key order and number spelling
//!   (`serde_json` with `preserve_order` and `arbitrary_precision`).
//! - Idempotent: our entry appears once per event; installing again changes nothing and does
//!   not rewrite the file.
//! - An older confab hook for the same event (the Go client's `confab hook session-start`,
//!   `confab sync start`, or our own binary at another path) is replaced in place, not
//!   duplicated, so two daemons never sync one session.
//! - Uninstall removes exactly our entries, plus the groups, event arrays and `hooks` object that
//!   became empty because of that removal.
//! - A file that is not valid JSON, or whose shape is not Claude Code's, is never touched: one
//!   line of error instead. Writes are atomic (tmp → fsync → rename → fsync dir), keep the
//!   file's mode and go through a symlinked settings.json to its target.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::paths::Paths;
use crate::service::{launchd, systemd, ManagerKind, ServiceContext, ServiceManager};

/// Claude Code hook events we register, with the `confab-sync hook` subcommand for each.
pub const HOOK_EVENTS: [(&str, &str); 3] = [
    ("SessionStart", "session-start"),
    ("SessionEnd", "session-end"),
    ("UserPromptSubmit", "user-prompt-submit"),
];

/// `<claude dir>/settings.json` (`$CONFAB_CLAUDE_DIR` or `~/.claude`).
pub fn settings_path(paths: &Paths) -> PathBuf {
    paths.claude_dir().join("settings.json")
}

/// Quotes `s` for the POSIX shell that runs hook commands, only when it needs it.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:,@=%".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The hook command line: `<binary> hook <subcommand>`.
pub fn hook_command(binary: &Path, subcommand: &str) -> String {
    format!(
        "{} hook {subcommand}",
        shell_quote(&binary.to_string_lossy())
    )
}

/// Splits a command line into words the way a POSIX shell would for simple commands (quotes
/// and backslashes; no expansions). Good enough to recognise a program and its first arguments.
fn shell_words(cmd: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = cmd.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(cur.take()),
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                w.extend(chars.by_ref().take_while(|&c| c != '\''));
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        c => w.push(c),
                    }
                }
            }
            '\\' => cur.get_or_insert_with(String::new).extend(chars.next()),
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(cur);
    words
}

/// The program's base name and its arguments, skipping `VAR=value` prefixes and `env`/`exec`.
fn program_and_args(cmd: &str) -> Option<(String, Vec<String>)> {
    let words = shell_words(cmd);
    let is_assignment = |w: &String| {
        w.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
    };
    let mut it = words
        .into_iter()
        .skip_while(|w| is_assignment(w) || w == "env" || w == "exec");
    let program = it.next()?;
    let base = Path::new(&program)
        .file_name()?
        .to_string_lossy()
        .into_owned();
    Some((base, it.collect()))
}

/// A hook command of ours, at any path: `…/confab-sync hook …`.
fn is_ours(cmd: &str) -> bool {
    matches!(program_and_args(cmd), Some((p, a)) if p == "confab-sync" && a.first().is_some_and(|x| x == "hook"))
}

/// A session hook of the existing Go client: `…/confab hook …` or `…/confab sync …`.
fn is_legacy_confab(cmd: &str) -> bool {
    matches!(program_and_args(cmd), Some((p, a)) if p == "confab"
        && a.first().is_some_and(|x| x == "hook" || x == "sync"))
}

/// The command of a hook entry that runs a command (`type` is `command` or absent).
fn command_of(hook: &Value) -> Option<&str> {
    let obj = hook.as_object()?;
    match obj.get("type") {
        None => {}
        Some(Value::String(t)) if t == "command" => {}
        Some(_) => return None,
    }
    obj.get("command")?.as_str()
}

fn shape_error(what: &str) -> String {
    format!("settings.json: {what}; not changing it")
}

/// The `hooks` object, created when missing.
fn hooks_object(settings: &mut Value) -> Result<&mut Map<String, Value>, String> {
    let root = settings
        .as_object_mut()
        .ok_or_else(|| shape_error("the top level is not an object"))?;
    root.entry("hooks")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| shape_error("\"hooks\" is not an object"))
}

/// Checks the parts of the shape we are about to edit, before editing anything, so a
/// half-applied change is impossible.
fn check_shape(settings: &Value) -> Result<(), String> {
    let root = settings
        .as_object()
        .ok_or_else(|| shape_error("the top level is not an object"))?;
    let Some(hooks) = root.get("hooks") else {
        return Ok(());
    };
    let hooks = hooks
        .as_object()
        .ok_or_else(|| shape_error("\"hooks\" is not an object"))?;
    for (event, _) in HOOK_EVENTS {
        if hooks.get(event).is_some_and(|v| !v.is_array()) {
            return Err(shape_error(&format!("\"hooks.{event}\" is not an array")));
        }
    }
    Ok(())
}

/// Positions `(group, hook)` of the entries in `groups` that `pred` selects.
fn find_entries(groups: &[Value], pred: impl Fn(&str) -> bool) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        let Some(list) = group.get("hooks").and_then(Value::as_array) else {
            continue;
        };
        for (h, hook) in list.iter().enumerate() {
            if command_of(hook).is_some_and(&pred) {
                found.push((g, h));
            }
        }
    }
    found
}

/// Removes the hook entries at `positions` and then every group that this left empty.
fn remove_entries(groups: &mut Vec<Value>, positions: &[(usize, usize)]) {
    let mut emptied = Vec::new();
    for &(g, h) in positions.iter().rev() {
        if let Some(list) = groups[g].get_mut("hooks").and_then(Value::as_array_mut) {
            list.remove(h);
            if list.is_empty() {
                emptied.push(g);
            }
        }
    }
    emptied.sort_unstable();
    emptied.dedup();
    for g in emptied.into_iter().rev() {
        groups.remove(g);
    }
}

/// Registers our three hooks in a parsed settings value. Returns whether it changed.
pub fn add_hooks(settings: &mut Value, binary: &Path) -> Result<bool, String> {
    check_shape(settings)?;
    let before = settings.clone();
    let hooks = hooks_object(settings)?;
    for (event, sub) in HOOK_EVENTS {
        let command = hook_command(binary, sub);
        let groups = hooks
            .entry(event)
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .expect("checked by check_shape");
        let found = find_entries(groups, |c| is_ours(c) || is_legacy_confab(c));
        let Some((&(g, h), duplicates)) = found.split_first() else {
            groups.push(serde_json::json!({"hooks": [{"type": "command", "command": command}]}));
            continue;
        };
        // Replace the first in place (keeping its other keys, e.g. a timeout); drop the rest.
        let entry = groups[g]["hooks"][h]
            .as_object_mut()
            .expect("found as an object");
        entry.insert("type".into(), Value::String("command".into()));
        entry.insert("command".into(), Value::String(command));
        remove_entries(groups, duplicates);
    }
    Ok(*settings != before)
}

/// Removes our hooks from a parsed settings value. Returns whether it changed.
pub fn remove_hooks(settings: &mut Value) -> Result<bool, String> {
    check_shape(settings)?;
    let Some(hooks) = settings.get_mut("hooks").and_then(Value::as_object_mut) else {
        return Ok(false);
    };
    let mut changed = false;
    for (event, _) in HOOK_EVENTS {
        let Some(groups) = hooks.get_mut(event).and_then(Value::as_array_mut) else {
            continue;
        };
        let found = find_entries(groups, is_ours);
        if found.is_empty() {
            continue;
        }
        remove_entries(groups, &found);
        changed = true;
        if groups.is_empty() {
            hooks.remove(event);
        }
    }
    if changed && hooks.is_empty() {
        settings
            .as_object_mut()
            .expect("checked by check_shape")
            .remove("hooks");
    }
    Ok(changed)
}

/// Reads settings.json: a missing or blank file is `{}`; invalid JSON is an error.
fn read_settings(path: &Path) -> Result<Value, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Value::Object(Map::new())),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not valid JSON ({e}); not changing it",
            path.display()
        )
    })
}

/// Writes settings atomically, 2-space indented like Claude Code writes it, keeping the mode of
/// the file it replaces (0600 for a new one: it may hold `env` secrets).
fn write_settings(path: &Path, settings: &Value) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    // A symlinked settings.json (dotfile managers) is updated at its target, not replaced.
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mode = std::fs::metadata(&target)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut text = serde_json::to_string_pretty(settings).map_err(|e| e.to_string())?;
    text.push('\n');
    crate::service::write_atomic(&target, text.as_bytes(), mode)
        .map_err(|e| format!("cannot write {}: {e}", target.display()))
}

fn update_settings(
    path: &Path,
    edit: impl FnOnce(&mut Value) -> Result<bool, String>,
) -> Result<bool, String> {
    let mut settings = read_settings(path)?;
    let changed = edit(&mut settings).map_err(|e| format!("{}: {e}", path.display()))?;
    if changed {
        write_settings(path, &settings)?;
    }
    Ok(changed)
}

/// Registers our hooks in the settings file at `path`. Returns whether the file changed.
pub fn install_hooks(path: &Path, binary: &Path) -> Result<bool, String> {
    update_settings(path, |s| add_hooks(s, binary))
}

/// Removes our hooks from the settings file at `path`. Returns whether the file changed.
pub fn uninstall_hooks(path: &Path) -> Result<bool, String> {
    if !path.exists() {
        return Ok(false);
    }
    update_settings(path, remove_hooks)
}

/// `confab-sync install`: prepares `kind` and, with `hooks`, registers the hooks. Returns
/// human-readable notes (one per line) for the caller to print on stderr.
pub fn install(
    ctx: &ServiceContext,
    kind: ManagerKind,
    hooks: bool,
) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    match kind {
        ManagerKind::Systemd => {
            let path = systemd::unit_path(ctx.home());
            if systemd::install_unit(ctx.home(), &ctx.binary)? {
                notes.push(format!("wrote {}", path.display()));
            } else {
                notes.push(format!("{} is up to date", path.display()));
            }
            notes.push(reload_note(ctx));
        }
        ManagerKind::Launchd => {
            if !cfg!(target_os = "macos") {
                return Err("launchd is only available on macOS".to_string());
            }
            let dir = launchd::agents_dir(ctx.home());
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            notes.push(format!(
                "launchd agents will be written to {}",
                dir.display()
            ));
        }
        ManagerKind::None => notes.push(format!(
            "no service manager: daemons run as detached processes, logging to {}",
            ctx.paths.log_dir.display()
        )),
    }
    if hooks {
        let path = settings_path(&ctx.paths);
        if install_hooks(&path, &ctx.binary)? {
            notes.push(format!("registered the hooks in {}", path.display()));
        } else {
            notes.push(format!("the hooks in {} are up to date", path.display()));
        }
    }
    Ok(notes)
}

/// `daemon-reload` when a user manager answers; otherwise say why it was skipped.
fn reload_note(ctx: &ServiceContext) -> String {
    if !systemd::user_manager_answers(ctx) {
        return "no systemd user manager answered; it reads the unit when it starts \
                (or run `systemctl --user daemon-reload`)"
            .to_string();
    }
    match systemd::daemon_reload(ctx) {
        Ok(()) => "reloaded the systemd user manager".to_string(),
        Err(e) => format!("warning: {e}"),
    }
}

/// `confab-sync uninstall`: removes the unit template (running sessions keep running until
/// they end), launchd plists of sessions that are not running, and with `hooks` our hooks.
pub fn uninstall(ctx: &ServiceContext, hooks: bool) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    if hooks {
        let path = settings_path(&ctx.paths);
        if uninstall_hooks(&path)? {
            notes.push(format!("removed the hooks from {}", path.display()));
        }
    }
    if systemd::uninstall_unit(ctx.home())? {
        notes.push(format!(
            "removed {}",
            systemd::unit_path(ctx.home()).display()
        ));
        notes.push(reload_note(ctx));
    }
    if cfg!(target_os = "macos") {
        let m = launchd::LaunchdManager::new(ctx.clone());
        for p in m.remove_stale(|id| m.is_active(id) == Some(true)) {
            notes.push(format!("removed {}", p.display()));
        }
    }
    if notes.is_empty() {
        notes.push("nothing to uninstall".to_string());
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BIN: &str = "/home/me/.cargo/bin/confab-sync";

    /// A realistic user settings file: permissions, env, a statusLine, a PreToolUse hook with a
    /// matcher, and another tool's SessionStart hook.
    fn fixture() -> Value {
        serde_json::from_str(
            r#"{
  "$schema": "https://json.schemastore.org/claude-code-settings.json",
  "permissions": {"allow": ["Bash(git diff:*)", "Read"], "deny": []},
  "env": {"DISABLE_TELEMETRY": "1", "MAX_THINKING_TOKENS": 31999},
  "statusLine": {"type": "command", "command": "~/.claude/statusline.sh"},
  "hooks": {
    "PreToolUse": [
      {"matcher": "Bash", "hooks": [{"type": "command", "command": "/usr/local/bin/guard", "timeout": 5}]}
    ],
    "SessionStart": [
      {"matcher": "startup", "hooks": [{"type": "command", "command": "direnv export json"}]}
    ]
  },
  "model": "opus",
  "cleanupPeriodDays": 100,
  "feedbackSurveyState": {"lastShownTime": 1754089004345, "ratio": 12345678901234567890.0000001}
}"#,
        )
        .unwrap()
    }

    fn commands(v: &Value, event: &str) -> Vec<String> {
        let mut out = Vec::new();
        for g in v["hooks"][event].as_array().into_iter().flatten() {
            for h in g["hooks"].as_array().into_iter().flatten() {
                out.push(h["command"].as_str().unwrap_or("").to_string());
            }
        }
        out
    }

    #[test]
    fn merge_keeps_everything_else_and_adds_ours_once() {
        let mut v = fixture();
        assert!(add_hooks(&mut v, Path::new(BIN)).unwrap());
        assert_eq!(
            commands(&v, "SessionStart"),
            ["direnv export json", &format!("{BIN} hook session-start")]
        );
        assert_eq!(
            commands(&v, "SessionEnd"),
            [format!("{BIN} hook session-end")]
        );
        assert_eq!(
            commands(&v, "UserPromptSubmit"),
            [format!("{BIN} hook user-prompt-submit")]
        );
        assert_eq!(v["hooks"]["PreToolUse"], fixture()["hooks"]["PreToolUse"]);
        assert_eq!(
            v["hooks"]["SessionEnd"],
            json!([{"hooks": [{"type": "command",
            "command": format!("{BIN} hook session-end")}]}])
        );
        let keys = [
            "$schema",
            "permissions",
            "env",
            "statusLine",
            "model",
            "feedbackSurveyState",
        ];
        for key in keys {
            assert_eq!(v[key], fixture()[key], "{key}");
        }
        // Key order and number spelling survive (preserve_order, arbitrary_precision).
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            fixture()
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        );
        let text = serde_json::to_string(&v).unwrap();
        assert!(
            text.contains("\"ratio\":12345678901234567890.0000001"),
            "{text}"
        );
        assert!(
            !add_hooks(&mut v, Path::new(BIN)).unwrap(),
            "second add changes nothing"
        );
    }

    #[test]
    fn install_twice_gives_the_same_bytes_and_uninstall_restores_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        let original = serde_json::to_string_pretty(&fixture()).unwrap();
        std::fs::write(&path, &original).unwrap();
        assert!(install_hooks(&path, Path::new(BIN)).unwrap());
        let once = std::fs::read(&path).unwrap();
        assert!(!install_hooks(&path, Path::new(BIN)).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), once);
        assert!(uninstall_hooks(&path).unwrap());
        let back: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, fixture());
        assert!(!uninstall_hooks(&path).unwrap());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left");
    }

    #[test]
    fn round_trip_from_no_file_and_from_no_hooks_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("claude/settings.json");
        assert!(install_hooks(&path, Path::new(BIN)).unwrap());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(uninstall_hooks(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");

        let mut v = json!({"model": "sonnet"});
        add_hooks(&mut v, Path::new(BIN)).unwrap();
        remove_hooks(&mut v).unwrap();
        assert_eq!(v, json!({"model": "sonnet"}));
    }

    #[test]
    fn older_confab_hooks_are_replaced_in_place() {
        let mut v = json!({"hooks": {
            "SessionStart": [{"matcher": "*", "hooks": [
                {"type": "command", "command": "/usr/local/bin/confab hook session-start", "timeout": 30},
                {"type": "command", "command": "other-tool start"}
            ]}],
            "SessionEnd": [{"matcher": "*", "hooks": [
                {"type": "command", "command": "confab sync stop"}]}],
            "UserPromptSubmit": [
                {"hooks": [{"type": "command", "command": "'/old path/confab-sync' hook user-prompt-submit"}]},
                {"hooks": [{"type": "command", "command": "/opt/confab-sync hook user-prompt-submit"}]}
            ],
            "PreToolUse": [{"matcher": "Bash", "hooks": [
                {"type": "command", "command": "/usr/local/bin/confab hook pre-tool-use"}]}]
        }});
        assert!(add_hooks(&mut v, Path::new(BIN)).unwrap());
        assert_eq!(
            v["hooks"]["SessionStart"],
            json!([{"matcher": "*", "hooks": [
            {"type": "command", "command": format!("{BIN} hook session-start"), "timeout": 30},
            {"type": "command", "command": "other-tool start"}]}])
        );
        assert_eq!(
            v["hooks"]["SessionEnd"],
            json!([{"matcher": "*", "hooks": [
            {"type": "command", "command": format!("{BIN} hook session-end")}]}])
        );
        // Two of ours at other paths: the first is updated, the duplicate and its group go.
        assert_eq!(
            v["hooks"]["UserPromptSubmit"],
            json!([{"hooks": [
            {"type": "command", "command": format!("{BIN} hook user-prompt-submit")}]}])
        );
        // The Go client's tool hooks are not ours to touch.
        assert_eq!(
            commands(&v, "PreToolUse"),
            ["/usr/local/bin/confab hook pre-tool-use"]
        );
        // Uninstall leaves the other tool's hook and its group.
        remove_hooks(&mut v).unwrap();
        assert_eq!(
            v["hooks"]["SessionStart"],
            json!([{"matcher": "*", "hooks": [
            {"type": "command", "command": "other-tool start"}]}])
        );
        assert!(v["hooks"].get("SessionEnd").is_none());
        assert!(v["hooks"].get("PreToolUse").is_some());
    }

    #[test]
    fn malformed_settings_are_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        for bad in [
            "{\"hooks\": {",
            "[1,2]",
            "{\"hooks\": []}",
            "{\"hooks\": {\"SessionEnd\": {}}}",
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = install_hooks(&path, Path::new(BIN)).unwrap_err();
            assert!(!e.contains('\n') && e.contains("not changing it"), "{e}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), bad);
            assert!(uninstall_hooks(&path).is_err());
            assert_eq!(std::fs::read_to_string(&path).unwrap(), bad);
        }
    }

    #[test]
    fn symlinked_settings_are_updated_at_their_target_with_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("dotfiles-settings.json");
        std::fs::write(&target, "{}").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("settings.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        install_hooks(&link, Path::new(BIN)).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&target).unwrap()).unwrap();
        assert_eq!(
            commands(&v, "SessionEnd"),
            [format!("{BIN} hook session-end")]
        );
    }

    #[test]
    fn commands_are_shell_quoted_and_recognised() {
        let odd = Path::new("/Users/Jo O'Neil/bin/confab-sync");
        let cmd = hook_command(odd, "session-start");
        assert_eq!(
            cmd,
            r"'/Users/Jo O'\''Neil/bin/confab-sync' hook session-start"
        );
        assert_eq!(
            shell_words(&cmd),
            ["/Users/Jo O'Neil/bin/confab-sync", "hook", "session-start"]
        );
        assert!(is_ours(&cmd));
        assert!(is_ours("FOO=1 env /x/confab-sync hook session-end"));
        assert!(is_ours("\"/a b/confab-sync\" hook x"));
        assert!(!is_ours("confab-sync status"));
        assert!(!is_ours("/x/not-confab-sync hook x"));
        assert!(is_legacy_confab("confab hook session-start"));
        assert!(is_legacy_confab("/opt/homebrew/bin/confab sync start"));
        assert!(!is_legacy_confab("confab login"));
        assert!(!is_legacy_confab("echo confab hook"));
    }

    #[test]
    fn install_for_none_and_systemd_in_a_temp_home() {
        let home = tempfile::tempdir().unwrap();
        let ctx = crate::service::tests::ctx_in(home.path());
        let notes = install(&ctx, ManagerKind::None, true).unwrap();
        assert!(notes[0].contains("detached"), "{notes:?}");
        let settings = home.path().join(".claude/settings.json");
        assert!(settings.is_file());
        let notes = install(&ctx, ManagerKind::Systemd, true).unwrap();
        assert!(systemd::unit_path(home.path()).is_file(), "{notes:?}");
        assert!(notes.iter().any(|n| n.contains("up to date")), "{notes:?}");
        if !cfg!(target_os = "macos") {
            assert!(install(&ctx, ManagerKind::Launchd, false).is_err());
        }
        let notes = uninstall(&ctx, true).unwrap();
        assert!(!systemd::unit_path(home.path()).exists(), "{notes:?}");
        assert_eq!(std::fs::read_to_string(&settings).unwrap(), "{}\n");
    }
}
