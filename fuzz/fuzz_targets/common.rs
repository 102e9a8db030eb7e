//! Helpers shared by the fuzz targets: one scratch directory per fuzzing process, files in it
//! overwritten on every input (so a long run never fills the disk), and a little-endian reader for
//! the parameter bytes that precede a target's payload.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `$TMPDIR/confab-fuzz-<pid>`, created once. `fuzz/run.sh` points TMPDIR at a directory it
/// removes afterwards.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("confab-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    })
}

/// Writes `bytes` to `<scratch>/<name>` (replacing it) and returns the path.
pub fn write_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, bytes).expect("write scratch file");
    path
}

/// Splits `n` parameter bytes off the front of the input (zero-padded when it is shorter).
pub fn params<const N: usize>(data: &[u8]) -> ([u8; N], &[u8]) {
    let mut p = [0u8; N];
    let n = data.len().min(N);
    p[..n].copy_from_slice(&data[..n]);
    (p, &data[n..])
}
