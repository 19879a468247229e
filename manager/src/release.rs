//! Releasing agents' records of finished attempts (`Release` in
//! agent.proto). An agent keeps a record of every task it ran until it
//! knows the manager has that task's end; without a release it would only
//! learn so at its next session, and a long session's records would grow
//! with every task the node ever ran. Attempts are released in batches once
//! their end is durable here, so a busy node gets one small message per
//! [`RELEASE_BATCH`] finished tasks instead of one per task.
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use minkube::pb;

/// Finished attempts a node collects before they are sent as one Release.
pub const RELEASE_BATCH: usize = 32;

/// Durably finished attempts per node, not yet released.
#[derive(Default)]
pub(crate) struct Releases {
    by_node: Mutex<HashMap<String, Vec<pb::ReleasedAttempt>>>,
}

impl Releases {
    /// Notes attempts of `node_id` whose end is durable; returns the batch
    /// to send once the node has [`RELEASE_BATCH`] of them.
    pub(crate) fn note(
        &self,
        node_id: &str,
        ended: Vec<pb::ReleasedAttempt>,
    ) -> Option<Vec<pb::ReleasedAttempt>> {
        if ended.is_empty() {
            return None;
        }
        let mut by_node = self.by_node.lock().unwrap_or_else(PoisonError::into_inner);
        let list = match by_node.get_mut(node_id) {
            Some(list) => list,
            None => by_node.entry(node_id.to_string()).or_default(),
        };
        list.extend(ended);
        (list.len() >= RELEASE_BATCH).then(|| std::mem::take(list))
    }

    /// Drops what a node had not been sent: at a new session the agent
    /// reports every record, and the DesiredSet that answers settles them.
    pub(crate) fn session_synced(&self, node_id: &str) {
        self.by_node
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(node_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(n: usize) -> Vec<pb::ReleasedAttempt> {
        (0..n)
            .map(|i| pb::ReleasedAttempt {
                task_id: format!("t{i}"),
                attempt: 1,
            })
            .collect()
    }

    #[test]
    fn a_node_gets_a_batch_once_enough_attempts_ended() {
        let r = Releases::default();
        assert_eq!(r.note("n1", Vec::new()), None);
        assert_eq!(r.note("n1", ended(RELEASE_BATCH - 1)), None);
        assert_eq!(r.note("n2", ended(1)), None, "counted per node");
        let batch = r.note("n1", ended(2)).unwrap_or_default();
        assert_eq!(batch.len(), RELEASE_BATCH + 1);
        assert_eq!(
            r.note("n1", ended(RELEASE_BATCH - 1)),
            None,
            "a fresh batch"
        );
        r.session_synced("n1");
        assert_eq!(r.note("n1", ended(1)), None, "a new session starts empty");
        assert_eq!(r.note("n1", ended(RELEASE_BATCH - 2)), None);
        assert_eq!(r.note("n1", ended(1)).map(|b| b.len()), Some(RELEASE_BATCH));
    }

    async fn next(rx: &mut crate::cluster::TestStream) -> Option<pb::manager_message::Msg> {
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|e| panic!("no message: {e}"));
        got.and_then(Result::ok).and_then(|m| m.msg)
    }

    #[tokio::test]
    async fn an_agent_gets_its_finished_attempts_released_once_stored() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let c = crate::cluster::test_cluster(dir.path()).await;
        let (node_id, mut rx) = crate::cluster::test_node(&c, "a", 100_000, 256).await;
        for i in 0..RELEASE_BATCH {
            let spec = pb::TaskSpec {
                name: format!("t{i}"),
                image: "busybox".into(),
                memory_mb: 16,
                ..Default::default()
            };
            c.create_task(Some(spec))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let mut ended = Vec::new();
        while ended.len() < RELEASE_BATCH {
            let Some(pb::manager_message::Msg::Assignment(a)) = next(&mut rx).await else {
                continue;
            };
            let update = |state: pb::TaskState, sequence: u64| pb::TaskStatusUpdate {
                task_id: a.task_id.clone(),
                attempt: a.attempt,
                sequence,
                state: state as i32,
                ..Default::default()
            };
            let batch = pb::StatusBatch {
                updates: vec![
                    update(pb::TaskState::Running, 1),
                    update(pb::TaskState::Completed, 2),
                ],
                full_sync: false,
            };
            c.apply_status(&node_id, batch)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            ended.push((a.task_id.clone(), a.attempt));
        }
        let Some(pb::manager_message::Msg::Release(r)) = next(&mut rx).await else {
            panic!("no Release after {RELEASE_BATCH} finished tasks");
        };
        let mut released: Vec<(String, u32)> = r
            .attempts
            .into_iter()
            .map(|a| (a.task_id, a.attempt))
            .collect();
        released.sort();
        ended.sort();
        assert_eq!(released, ended);
        for (id, _) in &ended {
            let (t, _) = c.get_task(id).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(t.status.map(|s| s.state()), Some(pb::TaskState::Completed));
        }
        c.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn ends_the_manager_no_longer_wants_are_released_too() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let c = crate::cluster::test_cluster(dir.path()).await;
        let (node_id, mut rx) = crate::cluster::test_node(&c, "a", 100_000, 256).await;
        // E.g. tasks deleted while the node was away: their ends change
        // nothing here, and the agent need not keep them for a next session.
        let gone = |i: usize, state: pb::TaskState| pb::TaskStatusUpdate {
            task_id: format!("gone{i}"),
            attempt: 1,
            sequence: 1,
            state: state as i32,
            ..Default::default()
        };
        let batch = pb::StatusBatch {
            updates: (0..RELEASE_BATCH)
                .map(|i| gone(i, pb::TaskState::Failed))
                .chain([gone(RELEASE_BATCH, pb::TaskState::Running)])
                .collect(),
            full_sync: false,
        };
        c.apply_status(&node_id, batch)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let Some(pb::manager_message::Msg::Release(r)) = next(&mut rx).await else {
            panic!("no Release for {RELEASE_BATCH} superseded ends");
        };
        let mut released: Vec<String> = r.attempts.into_iter().map(|a| a.task_id).collect();
        released.sort();
        let mut want: Vec<String> = (0..RELEASE_BATCH).map(|i| format!("gone{i}")).collect();
        want.sort();
        assert_eq!(released, want, "a running report is not an end");
        c.shutdown(Duration::from_secs(1)).await;
    }
}
