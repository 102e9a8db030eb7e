//! Bytes read per file name, shared by the engine with tests, benchmarks and the `--once`
//! progress display (E5, E6, X3).
//!
//! Invariants: one [`FileCounters`] per file name for the whole run, created on first use and
//! never replaced, so a handle taken early keeps counting.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::filesync::FileCounters;

/// Bytes read per file name, for tests and benchmarks (E5, E6, X3).
#[derive(Default, Debug)]
pub struct ReadCounters(Mutex<BTreeMap<String, Arc<FileCounters>>>);

impl ReadCounters {
    pub fn counter(&self, name: &str) -> Arc<FileCounters> {
        self.0
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .clone()
    }
    /// Bytes read from `name` so far.
    pub fn get(&self, name: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.bytes_read.load(Ordering::Relaxed))
    }
    pub fn total(&self) -> u64 {
        self.0
            .lock()
            .unwrap()
            .values()
            .map(|c| c.bytes_read.load(Ordering::Relaxed))
            .sum()
    }
    /// `(file name, counters)` of every file seen, in name order.
    pub fn snapshot(&self) -> Vec<(String, Arc<FileCounters>)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
