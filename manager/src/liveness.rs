//! Node liveness: READY -> DOWN after `node_timeout` without a message, and
//! "lost" after `reconnect_grace` away, when the node's tasks are handed to
//! the retry policy. Deadlines come from the monotonic clock; the loop sleeps
//! until the next one, so nothing is scanned while nothing can change.
use std::sync::Arc;
use std::time::Duration;

use minkube::pb::{DesiredState, NodeState, TaskState};
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::policy::{self, Outcome, RetryTimings};
use crate::state::State;
use crate::store::Mutation;

/// Longest sleep between passes, so a changed deadline is noticed soon.
const MAX_NAP: Duration = Duration::from_secs(1);

/// Timings of a liveness pass.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Silence before DOWN.
    pub node_timeout: Duration,
    /// Absence before the node's tasks are handled.
    pub reconnect_grace: Duration,
}

/// What a pass found.
#[derive(Debug, Default)]
pub struct Pass {
    /// Next time something may change.
    pub next: Option<Instant>,
    /// Tasks now wait for placement.
    pub reschedule: bool,
}

/// Marks silent nodes DOWN and handles the tasks of lost nodes.
pub fn pass(
    st: &mut State,
    now: Instant,
    t: Timeouts,
    retry: &RetryTimings,
    out: &mut Vec<Mutation>,
) -> Pass {
    let mut result = Pass::default();
    // Looked at read-only: a node is changed (which moves the room epoch
    // on) only when it goes down or is lost.
    let due: Vec<String> = st
        .nodes()
        .values()
        .filter_map(|e| {
            // A READY node goes down after the node timeout, a down one is
            // lost after the reconnect grace; a lost one waits for nothing.
            let limit = match (e.node.state() == NodeState::Ready, e.node.lost) {
                (true, _) => t.node_timeout,
                (false, false) => t.reconnect_grace,
                (false, true) => return None,
            };
            if now.saturating_duration_since(e.last_seen) >= limit {
                return Some(e.node.id.clone());
            }
            let d = e.last_seen + limit;
            result.next = Some(result.next.map_or(d, |n| n.min(d)));
            None
        })
        .collect();
    for id in due {
        let Some(entry) = st.nodes_mut().get_mut(&id) else {
            continue;
        };
        let silent = now.saturating_duration_since(entry.last_seen);
        let deadline = if entry.node.state() == NodeState::Ready {
            tracing::warn!(node_id = %id, name = %entry.node.name, ?silent, "no heartbeat: node is down");
            entry.node.set_state(NodeState::Down);
            Some(entry.last_seen + t.reconnect_grace)
        } else {
            tracing::warn!(node_id = %id, name = %entry.node.name, ?silent, "node lost: handling its tasks");
            entry.node.lost = true;
            let mut stored = entry.node.clone();
            stored.stats = None; // live data, never persisted
            out.push(Mutation::PutNode(Box::new(stored)));
            result.reschedule |= handle_lost_node(st, &id, retry, out);
            None
        };
        if let Some(d) = deadline {
            result.next = Some(result.next.map_or(d, |n| n.min(d)));
        }
    }
    result
}

/// Every active task of a lost node: a new attempt elsewhere, or an end.
pub(crate) fn handle_lost_node(
    st: &mut State,
    node_id: &str,
    retry: &RetryTimings,
    out: &mut Vec<Mutation>,
) -> bool {
    let ids: Vec<String> = st.active_on(node_id).map(|e| e.task.id.clone()).collect();
    let mut reschedule = false;
    for id in ids {
        let Some(e) = st.tasks.live(&id) else {
            continue;
        };
        let outcome = if e.state() == TaskState::Running {
            Outcome::NodeLostRunning
        } else {
            Outcome::NodeLostBeforeStart
        };
        let decision = if e.task.desired_state() == DesiredState::Stopped {
            policy::Decision::Finish(
                TaskState::Completed,
                "stopped by user; its node was lost before confirming (the agent removes the container when it returns)".into(),
            )
        } else {
            policy::decide(&e.task, &outcome, retry, &mut rand::rng())
        };
        reschedule |= matches!(decision, policy::Decision::Again { .. });
        if let Err(err) = st.apply_decision(&id, &outcome, decision, out) {
            tracing::error!(task_id = %id, error = %err, "cannot handle task of a lost node");
        }
    }
    reschedule
}

impl Cluster {
    pub(crate) async fn run_liveness(self: Arc<Self>) {
        let t = Timeouts {
            node_timeout: self.config.node_timeout,
            reconnect_grace: self.config.reconnect_grace,
        };
        loop {
            let now = Instant::now();
            let retry = self.config.retry;
            let next = match self
                .write(|st, out| Ok(pass(st, now, t, &retry, out)))
                .await
            {
                Ok(p) => {
                    if p.reschedule {
                        self.kick_scheduler();
                    }
                    p.next
                }
                Err(e) => {
                    tracing::error!(error = %e, "liveness pass failed");
                    None
                }
            };
            let wake = next.unwrap_or(now + MAX_NAP).min(Instant::now() + MAX_NAP);
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use minkube::pb;

    use super::*;
    use crate::state::NodeEntry;

    const T: Timeouts = Timeouts {
        node_timeout: Duration::from_secs(3),
        reconnect_grace: Duration::from_secs(10),
    };

    fn retry() -> RetryTimings {
        RetryTimings {
            backoff: minkube_common::retry::Backoff::default(),
        }
    }

    fn setup(now: Instant) -> State {
        let mut st = State::default();
        st.nodes_mut().insert(
            "n1".into(),
            NodeEntry {
                node: pb::Node {
                    id: "n1".into(),
                    state: NodeState::Ready as i32,
                    ..Default::default()
                },
                session: None,
                last_seen: now,
            },
        );
        let mut out = Vec::new();
        for (id, policy, state) in [
            ("always", pb::RestartPolicy::Always, TaskState::Running),
            ("never", pb::RestartPolicy::Never, TaskState::Running),
            ("unstarted", pb::RestartPolicy::Never, TaskState::Scheduled),
        ] {
            crate::state::fixtures::placed(&mut st, id, "n1", policy);
            st.unplaced.remove(id);
            if state == TaskState::Running {
                st.transition(id, TaskState::Running, "started", |_| {}, &mut out)
                    .unwrap();
            }
        }
        st
    }

    #[test]
    fn silent_node_goes_down_then_lost() {
        let start = Instant::now();
        let mut st = setup(start);
        let mut out = Vec::new();
        let p = pass(
            &mut st,
            start + Duration::from_secs(1),
            T,
            &retry(),
            &mut out,
        );
        assert_eq!(st.nodes()["n1"].node.state(), NodeState::Ready);
        assert_eq!(p.next, Some(start + T.node_timeout));

        let p = pass(
            &mut st,
            start + Duration::from_secs(4),
            T,
            &retry(),
            &mut out,
        );
        assert_eq!(st.nodes()["n1"].node.state(), NodeState::Down);
        assert_eq!(p.next, Some(start + T.reconnect_grace));
        assert_eq!(
            st.tasks.get("always").unwrap().state(),
            TaskState::Running,
            "down is not lost"
        );

        let p = pass(
            &mut st,
            start + Duration::from_secs(11),
            T,
            &retry(),
            &mut out,
        );
        assert!(p.reschedule);
        assert!(st.nodes()["n1"].node.lost);
        let always = &st.tasks.get("always").unwrap();
        assert_eq!(always.state(), TaskState::Scheduled);
        assert_eq!(always.status().attempt, 2);
        assert!(always.status().node_id.is_empty());
        assert!(st.unplaced.contains_key("always"));
        let never = &st.tasks.get("never").unwrap();
        assert_eq!(never.state(), TaskState::Failed);
        assert_eq!(never.status().reason, "node lost");
        let unstarted = &st.tasks.get("unstarted").unwrap();
        assert_eq!(unstarted.state(), TaskState::Scheduled);
        assert_eq!(unstarted.status().attempt, 2);
        assert_eq!(unstarted.status().transient_failures, 1);
        assert_eq!(st.usage("n1").tasks, 0, "nothing reserved on a lost node");
    }
}
