//! The standard scenarios. Each starts its own manager (fresh data dir,
//! fresh counters), measures, stops everything it started, and returns its
//! figures as a [`Section`].
pub mod api;
pub mod docker;
pub mod fleet;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::load::Submitted;
use crate::report::Section;
use crate::stats::Latencies;
use crate::watcher::Seen;

/// What every scenario needs.
pub struct Ctx {
    /// Directory of the minkube binaries.
    pub bin_dir: PathBuf,
    /// Repository root (scripts/ lives there).
    pub repo: PathBuf,
    /// Scratch space on the real disk (managers' data dirs, logs).
    pub work: PathBuf,
    /// Smaller sizes, for a quick look.
    pub quick: bool,
}

impl Ctx {
    /// A fresh directory under the scratch space.
    pub fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let d = self.work.join(name);
        if d.exists() {
            std::fs::remove_dir_all(&d)?;
        }
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// `full` normally, `quick` with --quick.
    pub fn size(&self, full: usize, quick: usize) -> usize {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// How long one scenario may take before it is given up (the longest, a
/// million stored tasks or the real-Docker rounds, take a few minutes on a
/// slow 2-core machine). Its processes are stopped when it is dropped.
pub const SCENARIO_LIMIT: Duration = Duration::from_secs(20 * 60);

/// Runs a scenario for at most `limit`; a failure or a scenario still
/// running at the limit becomes the section's error instead of ending (or
/// hanging) the whole run.
pub async fn guarded(
    title: &str,
    command: &str,
    limit: Duration,
    f: impl std::future::Future<Output = anyhow::Result<Section>>,
) -> Section {
    println!("\n== {title} ==");
    let result = within(limit, f, |s| {
        format!("did not finish within {s} s; given up, and the processes it started stopped")
    })
    .await
    .and_then(|r| r);
    match result {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("{e:#}");
            println!("  FAILED: {msg}");
            let mut s = Section::new(title, command, "");
            s.error = Some(msg);
            s
        }
    }
}

/// `f`'s output, or the error `on_timeout` words (given the limit in
/// seconds) once `limit` has passed; `f` is then dropped, which stops the
/// processes it started.
pub async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = T>,
    on_timeout: impl FnOnce(u64) -> String,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| anyhow::anyhow!(on_timeout(limit.as_secs())))
}

/// Per-task figures joined from the submitter and the watcher.
pub struct Joined {
    /// submit -> first RUNNING seen.
    pub to_running: Latencies,
    /// Tasks per second submit -> RUNNING: all tasks over the time from
    /// the first send to the last RUNNING.
    pub running_rate: f64,
    /// The same for COMPLETED.
    pub completed_rate: f64,
    /// Container exit -> the watcher saw it.
    pub exit_to_watcher: Latencies,
    /// Tasks the watcher never saw running.
    pub missing: usize,
}

/// Joins submissions with what the watcher saw.
pub fn join(submitted: &[Submitted], seen: &std::collections::HashMap<String, Seen>) -> Joined {
    let first = submitted
        .iter()
        .map(|s| s.sent)
        .min()
        .unwrap_or_else(Instant::now);
    let mut to_running = Vec::with_capacity(submitted.len());
    let mut exits = Vec::new();
    let mut last_running = first;
    let mut last_finished = first;
    let mut missing = 0;
    for s in submitted {
        let Some(w) = seen.get(&s.id) else {
            missing += 1;
            continue;
        };
        if let Some(r) = w.running {
            to_running.push(r.saturating_duration_since(s.sent));
            last_running = last_running.max(r);
        } else {
            missing += 1;
        }
        if let Some(f) = w.finished {
            last_finished = last_finished.max(f);
        }
        if let Some(e) = w.exit_to_watcher {
            exits.push(e);
        }
    }
    let rate = |end: Instant| {
        let secs = end.saturating_duration_since(first).as_secs_f64();
        if secs > 0.0 {
            submitted.len() as f64 / secs
        } else {
            0.0
        }
    };
    Joined {
        to_running: Latencies::new(to_running),
        running_rate: rate(last_running),
        completed_rate: rate(last_finished),
        exit_to_watcher: Latencies::new(exits),
        missing,
    }
}

/// Time allowed for the watcher to see everything after the last submit.
pub fn settle_time(tasks: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(tasks as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_scenario_that_hangs_is_given_up_at_its_limit() {
        let limit = Duration::from_secs(60);
        let hung = std::future::pending::<anyhow::Result<Section>>();
        let sec = guarded("docker", "minkube-bench docker", limit, hung).await;
        let err = sec.error.unwrap_or_default();
        assert!(err.contains("did not finish within 60 s"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_scenario_that_ends_in_time_keeps_its_figures() {
        let quick = async { Ok(Section::new("docker", "minkube-bench docker", "")) };
        let sec = guarded("docker", "cmd", Duration::from_secs(60), quick).await;
        assert!(sec.error.is_none());
    }
}
