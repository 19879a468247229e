//! Retention: finished tasks older than `retention` are deleted with their
//! events, and past `max_finished_tasks` the oldest finished go first.
//! Unfinished tasks are never touched.
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use minkube::pb::TaskState;
use minkube_common::state_machine;

use crate::cluster::Cluster;
use crate::state::State;
use crate::store::Mutation;

/// Deletes what retention says must go; returns how many tasks.
///
/// One pass over the tasks without copying them: memory is proportional to
/// what is removed, not to what is kept.
pub fn sweep(
    st: &mut State,
    now: SystemTime,
    retention: Duration,
    max_finished: usize,
    out: &mut Vec<Mutation>,
) -> usize {
    let finished_count: u64 = [TaskState::Completed, TaskState::Failed]
        .into_iter()
        .map(|s| st.count_in(s))
        .sum();
    let over_cap = usize::try_from(finished_count)
        .unwrap_or(usize::MAX)
        .saturating_sub(max_finished);
    // Expired tasks all go; past the cap, the oldest finished go first (a
    // max-heap keeps the `over_cap` oldest seen so far).
    let mut expired = Vec::new();
    let mut oldest: BinaryHeap<(SystemTime, &str)> = BinaryHeap::new();
    for (id, t) in st.tasks.iter() {
        if !state_machine::is_terminal(t.state()) {
            continue;
        }
        let at = t.finished_at().unwrap_or(SystemTime::UNIX_EPOCH);
        if now.duration_since(at).is_ok_and(|age| age >= retention) {
            expired.push(id.clone());
        } else if over_cap > 0 {
            oldest.push((at, id.as_str()));
            if oldest.len() > over_cap {
                oldest.pop();
            }
        }
    }
    let from_cap = over_cap.saturating_sub(expired.len());
    let mut by_age = oldest.into_sorted_vec();
    by_age.truncate(from_cap);
    let mut remove: Vec<String> = by_age.into_iter().map(|(_, id)| id.to_string()).collect();
    remove.append(&mut expired);
    for id in &remove {
        st.remove_task(id, out);
    }
    remove.len()
}

impl Cluster {
    pub(crate) async fn run_retention(self: Arc<Self>) {
        let every =
            (self.config.retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let (retention, max) = (self.config.retention, self.config.max_finished_tasks);
            let now = SystemTime::now();
            match self
                .write(|st, out| Ok(sweep(st, now, retention, max, out)))
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "retention removed finished tasks"),
                Err(e) => tracing::error!(error = %e, "retention sweep failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use minkube::pb::{self, TaskState};

    use super::*;

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
            sweep(&mut st, now, Duration::from_secs(10), 1000, &mut out),
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
            sweep(&mut st, now, Duration::from_secs(3600), 2, &mut out),
            2
        );
        let left: Vec<_> = st.tasks.keys().cloned().collect();
        assert_eq!(left, ["c", "d", "running"]);
    }
}
