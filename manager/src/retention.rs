//! Retention: finished tasks older than `retention` are deleted with their
//! events, and past `max_finished_tasks` the oldest finished go first.
//! Unfinished tasks are never touched.
//!
//! A pass never holds the state lock for long: it looks at the tasks a
//! chunk at a time, pausing in between, then deletes what it chose a chunk
//! per write (one lock hold and one commit each). Done in one go under the
//! lock, deleting 300,000 of a million finished tasks stopped every request
//! for 0.7 s; a chunk holds it for about a millisecond.
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use minkube::pb::TaskState;
use minkube_common::state_machine;

use crate::cluster::Cluster;
use crate::error::ManagerError;
use crate::state::State;
use crate::store::Mutation;

/// Tasks looked at per hold of the state lock.
const SCAN_CHUNK: usize = 1024;
/// Tasks deleted per write (one hold of the lock, one commit).
const DELETE_CHUNK: usize = 256;
/// Between two chunks of the scan: requests waiting for the lock get it.
const SCAN_PAUSE: Duration = Duration::from_millis(1);
/// The first pass after start: a lowered cap or retention applies soon
/// after a restart, not a whole interval later.
const FIRST_PASS_AFTER: Duration = Duration::from_secs(1);

/// One retention pass while it looks for what to delete.
pub struct Sweep {
    now: SystemTime,
    retention: Duration,
    /// Finished tasks over the cap when the pass began.
    over_cap: usize,
    /// Where the next chunk starts (exclusive); `None` before the first.
    cursor: Option<String>,
    done: bool,
    expired: Vec<String>,
    /// The `over_cap` oldest finished tasks seen so far (a max-heap: the
    /// youngest of them is dropped first).
    oldest: BinaryHeap<(SystemTime, String)>,
    chunk: usize,
}

impl Sweep {
    /// Starts a pass over `st` as it is now.
    pub fn new(st: &State, now: SystemTime, retention: Duration, max_finished: usize) -> Self {
        let finished = st.count_in(TaskState::Completed) + st.count_in(TaskState::Failed);
        Self {
            now,
            retention,
            over_cap: usize::try_from(finished)
                .unwrap_or(usize::MAX)
                .saturating_sub(max_finished),
            cursor: None,
            done: false,
            expired: Vec::new(),
            oldest: BinaryHeap::new(),
            chunk: SCAN_CHUNK,
        }
    }

    /// Looks at the next chunk of tasks; true once all have been seen.
    /// Memory grows with what will be deleted, not with what is kept.
    pub fn scan(&mut self, st: &State) -> bool {
        if self.done {
            return true;
        }
        let mut seen = 0;
        let mut last = None;
        for (id, t) in st.tasks.after(self.cursor.as_deref()) {
            if seen == self.chunk {
                break;
            }
            seen += 1;
            last = Some(id);
            if !state_machine::is_terminal(t.state()) {
                continue;
            }
            let at = t.finished_at().unwrap_or(SystemTime::UNIX_EPOCH);
            if self
                .now
                .duration_since(at)
                .is_ok_and(|age| age >= self.retention)
            {
                self.expired.push(id.clone());
            } else if self.over_cap > 0
                && (self.oldest.len() < self.over_cap
                    || self.oldest.peek().is_some_and(|(t, _)| at < *t))
            {
                self.oldest.push((at, id.clone()));
                if self.oldest.len() > self.over_cap {
                    self.oldest.pop();
                }
            }
        }
        match last {
            Some(id) if seen == self.chunk => self.cursor = Some(id.clone()),
            _ => self.done = true,
        }
        self.done
    }

    /// What the pass chose: past the cap the oldest finished, oldest
    /// first, then every expired task.
    pub fn into_ids(self) -> Vec<String> {
        let from_cap = self.over_cap.saturating_sub(self.expired.len());
        let mut by_age = self.oldest.into_sorted_vec();
        by_age.truncate(from_cap);
        let mut ids: Vec<String> = by_age.into_iter().map(|(_, id)| id).collect();
        ids.extend(self.expired);
        ids
    }
}

/// Deletes those of `ids` that are still stored and finished (the state
/// changed while the pass looked); returns how many.
pub fn delete(st: &mut State, ids: &[String], out: &mut Vec<Mutation>) -> usize {
    let mut n = 0;
    for id in ids {
        if st
            .tasks
            .slot(id)
            .is_some_and(|s| state_machine::is_terminal(s.state()))
        {
            st.remove_task(id, out);
            n += 1;
        }
    }
    n
}

impl Cluster {
    pub(crate) async fn run_retention(self: Arc<Self>) {
        let every =
            (self.config.retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut wait = every.min(FIRST_PASS_AFTER);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = every;
            let started = std::time::Instant::now();
            match self.retention_pass().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    removed = n,
                    took_ms = started.elapsed().as_millis(),
                    "retention removed finished tasks"
                ),
                Err(e) => tracing::error!(error = %e, "retention pass failed"),
            }
        }
    }

    /// One pass; stops early (keeping what it deleted) on shutdown.
    async fn retention_pass(&self) -> Result<usize, ManagerError> {
        let (retention, max) = (self.config.retention, self.config.max_finished_tasks);
        let mut sweep = Sweep::new(&self.lock(), SystemTime::now(), retention, max);
        loop {
            let done = sweep.scan(&self.lock());
            if done {
                break;
            }
            // A pause, not a yield: the mutex is not fair, and a yield let
            // this task take the lock again before a waiting request woke
            // (ListTasks waited 124 ms, the whole scan of a million tasks).
            tokio::time::sleep(SCAN_PAUSE).await;
            if self.shutdown.is_cancelled() {
                return Ok(0);
            }
        }
        let mut removed = 0;
        for chunk in sweep.into_ids().chunks(DELETE_CHUNK) {
            if self.shutdown.is_cancelled() {
                break;
            }
            let n = self.write(|st, out| Ok(delete(st, chunk, out))).await?;
            metrics::counter!("minkube_manager_retention_removed_total").increment(n as u64);
            removed += n;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use minkube::pb::{self, TaskState};

    use super::*;

    /// A whole pass, `chunk` tasks per look.
    fn sweep(
        st: &mut State,
        now: SystemTime,
        retention: Duration,
        max: usize,
        chunk: usize,
        out: &mut Vec<Mutation>,
    ) -> usize {
        let mut s = Sweep::new(st, now, retention, max);
        s.chunk = chunk;
        while !s.scan(st) {}
        delete(st, &s.into_ids(), out)
    }

    fn add(st: &mut State, id: &str, finished_secs_ago: Option<u64>, now: SystemTime) {
        let mut out = Vec::new();
        st.insert_task(
            pb::Task {
                id: id.into(),
                status: Some(pb::TaskStatus {
                    state: TaskState::Pending as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
            &mut out,
        );
        if let Some(ago) = finished_secs_ago {
            st.transition(
                id,
                TaskState::Completed,
                "done",
                |s| {
                    s.finished_at = Some(minkube::convert::to_timestamp(
                        now - Duration::from_secs(ago),
                    ));
                },
                &mut out,
            )
            .unwrap();
        }
    }

    #[test]
    fn removes_only_old_finished_tasks() {
        let now = SystemTime::now();
        let mut st = State::default();
        add(&mut st, "old", Some(100), now);
        add(&mut st, "new", Some(1), now);
        add(&mut st, "running", None, now);
        let mut out = Vec::new();
        assert_eq!(
            sweep(&mut st, now, Duration::from_secs(10), 1000, 1, &mut out),
            1
        );
        assert!(!st.tasks.contains_key("old"));
        assert!(st.tasks.contains_key("new") && st.tasks.contains_key("running"));
        assert!(matches!(&out[..], [Mutation::DeleteTask(id)] if id == "old"));
    }

    #[test]
    fn cap_removes_oldest_finished_first() {
        let now = SystemTime::now();
        let mut st = State::default();
        for (id, ago) in [("a", 40), ("b", 30), ("c", 20), ("d", 10)] {
            add(&mut st, id, Some(ago), now);
        }
        add(&mut st, "running", None, now);
        let mut out = Vec::new();
        assert_eq!(
            sweep(&mut st, now, Duration::from_secs(3600), 2, 2, &mut out),
            2
        );
        let left: Vec<_> = st.tasks.keys().cloned().collect();
        assert_eq!(left, ["c", "d", "running"]);
    }

    fn left(st: &State) -> Vec<String> {
        st.tasks.keys().cloned().collect()
    }

    #[test]
    fn a_pass_in_chunks_chooses_what_a_pass_in_one_go_does() {
        let now = SystemTime::now();
        let fill = |st: &mut State| {
            for i in 0..60u64 {
                // Finish order differs from id (creation) order.
                let ago = match i % 4 {
                    3 => None,
                    _ => Some((i * 37) % 101),
                };
                add(st, &format!("t{i:03}"), ago, now);
            }
        };
        let mut whole = State::default();
        fill(&mut whole);
        let n = sweep(
            &mut whole,
            now,
            Duration::from_secs(90),
            20,
            usize::MAX,
            &mut Vec::new(),
        );
        assert!(
            n > 20,
            "both expiry and the cap should remove tasks, removed {n}"
        );
        for chunk in [1, 3, 7, 59, 60, 61] {
            let mut st = State::default();
            fill(&mut st);
            let mut out = Vec::new();
            assert_eq!(
                sweep(&mut st, now, Duration::from_secs(90), 20, chunk, &mut out),
                n
            );
            assert_eq!(left(&st), left(&whole), "chunk of {chunk}");
            assert_eq!(out.len(), n);
        }
        assert_eq!(whole.count_in(TaskState::Completed), 20);
    }

    #[test]
    fn changes_between_chunks_are_respected() {
        let now = SystemTime::now();
        let mut st = State::default();
        for i in 0..6 {
            add(&mut st, &format!("t{i}"), Some(100), now);
        }
        let mut s = Sweep::new(&st, now, Duration::from_secs(10), 1000);
        s.chunk = 2;
        assert!(!s.scan(&st));
        // Between chunks: a chosen task is deleted by someone else, a new
        // expired one appears after the cursor, a running one before it.
        st.remove_task("t0", &mut Vec::new());
        add(&mut st, "t9", Some(100), now);
        add(&mut st, "s0", None, now);
        while !s.scan(&st) {}
        let mut out = Vec::new();
        assert_eq!(delete(&mut st, &s.into_ids(), &mut out), 6);
        assert_eq!(left(&st), ["s0"]);
        assert!(out.iter().all(|m| matches!(m, Mutation::DeleteTask(_))));
    }

    #[test]
    fn nothing_to_do_finishes_in_one_look_per_chunk() {
        let now = SystemTime::now();
        let mut st = State::default();
        for i in 0..5 {
            add(&mut st, &format!("t{i}"), Some(1), now);
        }
        let mut s = Sweep::new(&st, now, Duration::from_secs(3600), 1000);
        s.chunk = 5;
        // A full chunk cannot tell there is nothing after it; the next look can.
        assert!(!s.scan(&st));
        assert!(s.scan(&st));
        assert!(s.into_ids().is_empty());
    }
}
