//! Process liveness by pid *and* start token (sync-engine §11, H8), lock probing without taking the
//! lock (§10), and Claude parent detection. STUB.

use std::path::Path;

/// `linux:<boot_id>:<starttime>` for a live pid.
pub fn start_token(pid: i64) -> Option<String> {
    let _ = pid;
    None
}

/// `pid > 0`, `kill(pid,0)` ok or EPERM, and the token (when given) matches.
pub fn alive(pid: i64, token: Option<&str>) -> bool {
    let _ = (pid, token);
    false
}

/// True when some process holds a lock on `lock_path` (read from /proc/locks; never takes it).
pub fn lock_is_held(lock_path: &Path) -> bool {
    let _ = lock_path;
    false
}

pub fn lock_holder_pid(lock_path: &Path) -> Option<i64> {
    let _ = lock_path;
    None
}
