//! Retention: finished tasks older than `retention` are deleted with their
//! events, and past `max_finished_tasks` the oldest finished go first.
//! Unfinished tasks are never touched.
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use minkube::convert::from_timestamp;
use minkube_common::state_machine;

use crate::cluster::Cluster;
use crate::state::State;
use crate::store::Mutation;

/// Deletes what retention says must go; returns how many tasks.
pub fn sweep(
    st: &mut State,
    now: SystemTime,
    retention: Duration,
    max_finished: usize,
    out: &mut Vec<Mutation>,
) -> usize {
    let mut finished: Vec<(SystemTime, String)> = st
        .tasks
        .values()
        .filter(|e| state_machine::is_terminal(e.state()))
        .map(|e| {
            let at = e
                .status()
                .finished_at
                .as_ref()
                .or(e.task.updated_at.as_ref())
                .map_or(SystemTime::UNIX_EPOCH, from_timestamp);
            (at, e.task.id.clone())
        })
        .collect();
    finished.sort();
    let expired = finished
        .iter()
        .take_while(|(at, _)| now.duration_since(*at).is_ok_and(|age| age >= retention))
        .count();
    let over_cap = finished.len().saturating_sub(max_finished);
    let remove = expired.max(over_cap);
    for (_, id) in finished.iter().take(remove) {
        st.remove_task(id, out);
    }
    remove
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
