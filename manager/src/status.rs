//! Applying what agents report: the state machine is driven by their
//! updates, never by the manager guessing. Stale and duplicate updates are
//! dropped by (attempt, sequence).
use minkube::convert::task_state_name;
use minkube::pb::{self, DesiredState, TaskState};
use minkube_common::state_machine;

use crate::cluster::Cluster;
use crate::error::ManagerError;
use crate::state::State;
use crate::store::Mutation;

/// What applying one update did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The task changed.
    Changed,
    /// Known, current, but nothing new (e.g. a repeated report).
    Unchanged,
    /// Ignored: unknown task, other node, old attempt or stale sequence.
    Ignored(&'static str),
}

fn fill(status: &mut pb::TaskStatus, u: &pb::TaskStatusUpdate) {
    if !u.container_id.is_empty() {
        status.container_id = u.container_id.clone();
    }
    // Ports of a finished container are no longer bound: drop them.
    if !u.ports.is_empty() || state_machine::is_terminal(u.state()) {
        status.ports = u.ports.clone();
    }
    if u.exit_code.is_some() {
        status.exit_code = u.exit_code;
    }
    if u.started_at.is_some() {
        status.started_at = u.started_at;
    }
    if u.finished_at.is_some() {
        status.finished_at = u.finished_at;
    }
}

/// Applies one update from `node_id` to the state.
pub fn apply_update(
    st: &mut State,
    node_id: &str,
    u: &pb::TaskStatusUpdate,
    out: &mut Vec<Mutation>,
) -> Applied {
    let Some(e) = st.tasks.get_mut(&u.task_id) else {
        return Applied::Ignored("unknown task");
    };
    let status = e.status();
    if status.node_id != node_id {
        return Applied::Ignored("task is placed on another node");
    }
    if u.attempt != status.attempt {
        return Applied::Ignored("update for another attempt");
    }
    if u.sequence <= e.last_sequence {
        return Applied::Ignored("stale sequence");
    }
    let same_facts = (status.container_id == u.container_id || u.container_id.is_empty())
        && status.reason == u.reason;
    e.last_sequence = u.sequence;
    let from = e.state();
    let to = TaskState::try_from(u.state).unwrap_or(TaskState::Unspecified);
    if from == to && (state_machine::is_terminal(to) || same_facts) {
        st.put_task(&u.task_id, out);
        return Applied::Unchanged;
    }
    if !state_machine::can_transition(from, to) {
        tracing::warn!(
            task_id = %u.task_id,
            from = task_state_name(from),
            to = task_state_name(to),
            "agent reported an impossible state change; keeping the current state"
        );
        st.put_task(&u.task_id, out);
        return Applied::Ignored("illegal transition");
    }
    match st.transition(&u.task_id, to, &u.reason, |s| fill(s, u), out) {
        Ok(()) => Applied::Changed,
        Err(_) => Applied::Ignored("illegal transition"),
    }
}

/// What the node should run (DesiredSet) and what it must stop, for a new session.
pub fn desired_for(st: &State, node_id: &str) -> (pb::DesiredSet, Vec<pb::StopOrder>) {
    let mut set = pb::DesiredSet::default();
    let mut stops = Vec::new();
    for e in st.tasks.values() {
        let s = e.status();
        if s.node_id != node_id || !state_machine::is_active_on_node(e.state()) {
            continue;
        }
        if e.task.desired_state() == DesiredState::Stopped {
            stops.push(pb::StopOrder {
                task_id: e.task.id.clone(),
                attempt: s.attempt,
                reason: "stopped by user".into(),
                trace_context: Default::default(),
            });
        } else {
            set.assignments
                .push(crate::scheduler::assignment_of(&e.task));
        }
    }
    (set, stops)
}

impl Cluster {
    /// Applies a batch of updates in one durable write. After a session's
    /// full sync, tells the agent what it should run.
    pub async fn apply_status(
        &self,
        node_id: &str,
        batch: pb::StatusBatch,
    ) -> Result<(), ManagerError> {
        let full_sync = batch.full_sync;
        let (freed, follow_up) = self
            .write(|st, out| {
                let mut freed = false;
                for u in &batch.updates {
                    let applied = apply_update(st, node_id, u, out);
                    if let Applied::Ignored(why) = applied {
                        tracing::debug!(node_id, task_id = %u.task_id, why, "update ignored");
                    }
                    freed |= applied == Applied::Changed
                        && state_machine::is_terminal(
                            TaskState::try_from(u.state).unwrap_or_default(),
                        );
                }
                let follow_up = full_sync.then(|| desired_for(st, node_id));
                Ok((freed, follow_up))
            })
            .await?;
        if freed {
            self.kick_scheduler();
        }
        if let Some((set, stops)) = follow_up {
            self.send(node_id, pb::manager_message::Msg::DesiredSet(set));
            for s in stops {
                self.send(node_id, pb::manager_message::Msg::Stop(s));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn placed(st: &mut State, id: &str, node: &str) {
        let mut out = Vec::new();
        st.insert_task(
            pb::Task {
                id: id.into(),
                spec: Some(pb::TaskSpec {
                    memory_mb: 10,
                    ..Default::default()
                }),
                desired_state: DesiredState::Running as i32,
                status: Some(pb::TaskStatus {
                    state: TaskState::Pending as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
            &mut out,
        );
        st.transition(
            id,
            TaskState::Scheduled,
            "placed",
            |s| {
                s.node_id = node.into();
                s.attempt = 1;
            },
            &mut out,
        )
        .unwrap();
    }

    fn update(id: &str, seq: u64, state: TaskState) -> pb::TaskStatusUpdate {
        pb::TaskStatusUpdate {
            task_id: id.into(),
            attempt: 1,
            sequence: seq,
            state: state as i32,
            reason: format!("r{seq}"),
            container_id: "c1".into(),
            exit_code: (state == TaskState::Completed).then_some(0),
            ..Default::default()
        }
    }

    #[test]
    fn applies_in_sequence_and_drops_stale() {
        let mut st = State::default();
        placed(&mut st, "t", "n1");
        let mut out = Vec::new();
        assert_eq!(
            apply_update(&mut st, "n1", &update("t", 1, TaskState::Running), &mut out),
            Applied::Changed
        );
        assert_eq!(st.tasks["t"].status().container_id, "c1");
        assert_eq!(
            apply_update(
                &mut st,
                "n1",
                &update("t", 3, TaskState::Completed),
                &mut out
            ),
            Applied::Changed
        );
        // Arrives late: must not resurrect the task.
        assert_eq!(
            apply_update(&mut st, "n1", &update("t", 2, TaskState::Running), &mut out),
            Applied::Ignored("stale sequence")
        );
        assert_eq!(st.tasks["t"].state(), TaskState::Completed);
        assert_eq!(st.tasks["t"].status().exit_code, Some(0));
    }

    #[test]
    fn ignores_other_nodes_attempts_and_impossible_changes() {
        let mut st = State::default();
        placed(&mut st, "t", "n1");
        let mut out = Vec::new();
        let u = update("t", 1, TaskState::Running);
        assert_eq!(
            apply_update(&mut st, "n2", &u, &mut out),
            Applied::Ignored("task is placed on another node")
        );
        let mut old = u.clone();
        old.attempt = 7;
        assert_eq!(
            apply_update(&mut st, "n1", &old, &mut out),
            Applied::Ignored("update for another attempt")
        );
        let mut bad = update("t", 2, TaskState::Pending);
        bad.reason = "x".into();
        assert_eq!(
            apply_update(&mut st, "n1", &bad, &mut out),
            Applied::Ignored("illegal transition")
        );
        assert_eq!(st.tasks["t"].state(), TaskState::Scheduled);
        assert_eq!(
            apply_update(
                &mut st,
                "n1",
                &update("nope", 1, TaskState::Running),
                &mut out
            ),
            Applied::Ignored("unknown task")
        );
    }

    #[test]
    fn desired_set_lists_running_work_and_stops_unwanted() {
        let mut st = State::default();
        placed(&mut st, "keep", "n1");
        placed(&mut st, "stop", "n1");
        placed(&mut st, "other", "n2");
        st.tasks
            .get_mut("stop")
            .unwrap()
            .task
            .set_desired_state(DesiredState::Stopped);
        let (set, stops) = desired_for(&st, "n1");
        let ids: Vec<_> = set.assignments.iter().map(|a| a.task_id.as_str()).collect();
        assert_eq!(ids, ["keep"]);
        assert_eq!(stops.len(), 1);
        assert_eq!(stops[0].task_id, "stop");
    }
}
