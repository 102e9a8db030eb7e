//! Fixtures shared by the metadata unit tests: a redactor, a throwaway git repository, and a
//! collector run over a list of lines.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{ChunkMetaCollector, RepoUrlCache};
use crate::config::RedactionConfig;
use crate::redact::Redactor;
use crate::sink::ChunkMetadata;

pub(super) fn redactor() -> Redactor {
    Redactor::from_config(&RedactionConfig {
        enabled: true,
        ..Default::default()
    })
    .unwrap()
    .unwrap()
}

pub(super) fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args([
            "-c",
            "user.name=Ada Lovelace",
            "-c",
            "user.email=ada@example.com",
        ])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

pub(super) fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q"]);
    std::fs::write(dir.path().join("a.txt"), "a").unwrap();
    git(dir.path(), &["add", "a.txt"]);
    git(dir.path(), &["commit", "-q", "-m", "First commit"]);
    git(
        dir.path(),
        &[
            "remote",
            "add",
            "origin",
            "https://user:tok@host.example/r.git",
        ],
    );
    dir
}

pub(super) fn collect(lines: &[String], r: Option<&Redactor>) -> ChunkMetadata {
    let mut c = ChunkMetaCollector::new();
    for l in lines {
        let red = r
            .map(|r| r.redact_line(l).into_owned())
            .unwrap_or_else(|| l.clone());
        c.observe(l, &red);
    }
    c.finish(r, &mut RepoUrlCache::new())
}
