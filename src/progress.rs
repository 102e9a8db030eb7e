//! The `run --once` progress display: one bar per file (bytes read of its size, lines acknowledged)
//! and a one-line summary, only when stderr is a terminal and no service manager runs us.
//!
//! It only reads the engine's shared counters, so it never slows or changes the sync itself.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::discovery;
use crate::engine::ReadCounters;

/// Whether to show progress: an interactive stderr, not under systemd or launchd.
pub fn wanted() -> bool {
    let managed = [
        "INVOCATION_ID",
        "NOTIFY_SOCKET",
        "JOURNAL_STREAM",
        "XPC_SERVICE_NAME",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty() && x != "0"));
    std::io::stderr().is_terminal() && !managed
}

pub struct Progress {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
    counters: Arc<ReadCounters>,
    started: Instant,
}

fn file_path(transcript: &Path, name: &str) -> PathBuf {
    if transcript.file_name().is_some_and(|n| n == name) {
        transcript.to_path_buf()
    } else {
        discovery::subagents_dir(transcript).join(name)
    }
}

impl Progress {
    /// Starts redrawing every 200 ms.
    pub fn start(counters: Arc<ReadCounters>, transcript: PathBuf) -> Progress {
        let stop = tokio_util::sync::CancellationToken::new();
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style =
            ProgressStyle::with_template("{prefix:>32} {wide_bar} {bytes}/{total_bytes} {msg}")
                .expect("valid template");
        let c = counters.clone();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut bars: Vec<(String, ProgressBar)> = Vec::new();
            loop {
                for (name, fc) in c.snapshot() {
                    let bar = match bars.iter().find(|(n, _)| *n == name) {
                        Some((_, b)) => b.clone(),
                        None => {
                            let b = multi.add(
                                ProgressBar::new(0)
                                    .with_style(style.clone())
                                    .with_prefix(name.clone()),
                            );
                            bars.push((name.clone(), b.clone()));
                            b
                        }
                    };
                    let size =
                        std::fs::metadata(file_path(&transcript, &name)).map_or(0, |m| m.len());
                    bar.set_length(size);
                    bar.set_position(fc.bytes_read.load(Ordering::Relaxed).min(size));
                    bar.set_message(format!("{} lines", fc.lines_acked.load(Ordering::Relaxed)));
                }
                tokio::select! {
                    _ = s.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            for (_, b) in bars {
                b.finish_and_clear();
            }
        });
        Progress {
            stop,
            task,
            counters,
            started: Instant::now(),
        }
    }

    /// Clears the bars and prints the summary line.
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
        let snap = self.counters.snapshot();
        let lines: u64 = snap
            .iter()
            .map(|(_, c)| c.lines_acked.load(Ordering::Relaxed))
            .sum();
        let bytes: u64 = snap
            .iter()
            .map(|(_, c)| c.bytes_read.load(Ordering::Relaxed))
            .sum();
        let secs = self.started.elapsed().as_secs_f64();
        eprintln!(
            "confab-sync: {} files, {lines} lines synced; read {:.1} MB in {secs:.1} s ({:.1} MB/s)",
            snap.len(),
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / secs.max(1e-3)
        );
    }
}
