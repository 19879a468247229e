//! What watchers see: the changes of a write, and the filter they pass.
use std::collections::HashMap;

use minkube::pb::{self, TaskState};

use crate::store::Mutation;

/// Whether a mutation can give watchers a change (a task written or
/// deleted); events alone belong to their task's change.
pub fn is_watched(m: &Mutation) -> bool {
    match m {
        Mutation::PutTask(stored) => stored.task.is_some(),
        Mutation::DeleteTask(_) => true,
        _ => false,
    }
}

/// Where a mutation's content goes: the task or the event of change `k`.
#[derive(Clone, Copy)]
enum Slot {
    Task(usize),
    Event(usize),
    Unused,
}

/// The changes a write's mutations make, one per recorded event. A task
/// rewritten without an event is folded into its last change of the batch.
/// Relies on `State`: a transition pushes its `PutTask` right before its `PutEvent`.
/// Consumes the mutations: tasks and events move into the changes (a first
/// pass over borrowed ids plans where each goes, a second moves them).
pub fn changes_from(mutations: Vec<Mutation>) -> Vec<pb::TaskChange> {
    // Sized once: at most one change per mutation (a task and its event
    // make one), so none of these grows while the plan is made.
    let n = mutations.len();
    let mut changes: Vec<pb::TaskChange> = Vec::with_capacity(n);
    let mut slots = vec![Slot::Unused; n];
    {
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(n);
        let mut has_event: Vec<bool> = Vec::with_capacity(n);
        let mut i = 0;
        while i < mutations.len() {
            match &mutations[i] {
                Mutation::PutTask(stored) => {
                    if let Some(task) = &stored.task {
                        let paired = matches!(
                            mutations.get(i + 1),
                            Some(Mutation::PutEvent { task_id, .. }) if *task_id == task.id
                        );
                        match (paired, last.get(task.id.as_str())) {
                            // A later version of the task replaces the earlier one.
                            (false, Some(&k)) => slots[i] = Slot::Task(k),
                            _ => {
                                let k = changes.len();
                                last.insert(&task.id, k);
                                changes.push(pb::TaskChange::default());
                                has_event.push(paired);
                                slots[i] = Slot::Task(k);
                                if paired {
                                    slots[i + 1] = Slot::Event(k);
                                    i += 1;
                                }
                            }
                        }
                    }
                }
                Mutation::PutEvent { task_id, .. } => {
                    // Not right after its task: attach it to the task's last change.
                    if let Some(&k) = last.get(task_id.as_str()) {
                        if !has_event[k] {
                            has_event[k] = true;
                            slots[i] = Slot::Event(k);
                        }
                    }
                }
                Mutation::DeleteTask(id) => {
                    last.remove(id.as_str());
                    changes.push(pb::TaskChange {
                        task: Some(pb::Task {
                            id: id.clone(),
                            ..Default::default()
                        }),
                        event: None,
                        deleted: true,
                    });
                    has_event.push(false);
                }
                Mutation::PutNode(_)
                | Mutation::PutToken(_)
                | Mutation::DeleteToken(_)
                | Mutation::PutJoinToken { .. }
                | Mutation::RemoveNode { .. } => {}
            }
            i += 1;
        }
    }
    for (m, slot) in mutations.into_iter().zip(slots) {
        match (slot, m) {
            (Slot::Task(k), Mutation::PutTask(stored)) => changes[k].task = stored.task,
            (Slot::Event(k), Mutation::PutEvent { event, .. }) => changes[k].event = Some(*event),
            _ => {}
        }
    }
    changes
}

/// What a watcher wants to see.
#[derive(Debug, Default, Clone)]
pub struct WatchFilter {
    /// Only this task.
    pub task_id: Option<String>,
    /// Only tasks placed on this node id.
    pub node_id: Option<String>,
    /// Only tasks in one of these states; empty keeps all.
    pub states: Vec<TaskState>,
}

impl WatchFilter {
    /// Whether a task (as it is now) passes.
    pub fn matches_task(&self, t: &pb::Task) -> bool {
        let status = t.status.as_ref();
        let state = status.map_or(TaskState::Unspecified, |s| s.state());
        let node_id = status.map_or("", |s| s.node_id.as_str());
        self.matches_parts(&t.id, state, node_id)
    }

    /// Whether a task with this id, state and node passes.
    pub fn matches_parts(&self, id: &str, state: TaskState, node_id: &str) -> bool {
        self.task_id.as_ref().is_none_or(|t| t == id)
            && (self.states.is_empty() || self.states.contains(&state))
            && self.node_id.as_ref().is_none_or(|n| n == node_id)
    }

    /// Whether a change passes. Deletions carry no state: only the task
    /// filter applies to them.
    pub fn matches(&self, c: &pb::TaskChange) -> bool {
        let Some(t) = c.task.as_ref() else {
            return false;
        };
        if c.deleted {
            return self.task_id.as_ref().is_none_or(|id| *id == t.id);
        }
        self.matches_task(t)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::state::State;

    fn task(id: &str) -> pb::Task {
        crate::state::fixtures::pending_task(id)
    }

    fn states(changes: &[pb::TaskChange]) -> Vec<(String, TaskState, Option<TaskState>)> {
        changes
            .iter()
            .map(|c| {
                let t = c.task.as_ref().unwrap();
                (
                    t.id.clone(),
                    t.status
                        .as_ref()
                        .map_or(TaskState::Unspecified, |s| s.state()),
                    c.event.as_ref().map(|e| e.state()),
                )
            })
            .collect()
    }

    #[test]
    fn one_change_per_event_with_the_task_after_it() {
        let mut st = State::default();
        let mut out = Vec::new();
        st.insert_task(task("a"), &mut out);
        st.transition(
            "a",
            TaskState::Scheduled,
            "placed",
            |s| {
                s.node_id = "n1".into();
                s.attempt = 1;
            },
            &mut out,
        )
        .unwrap();
        st.insert_task(task("b"), &mut out);
        st.transition("a", TaskState::Running, "started", |_| {}, &mut out)
            .unwrap();
        let changes = changes_from(out.clone());
        use TaskState::*;
        assert_eq!(
            states(&changes),
            [
                ("a".into(), Pending, Some(Pending)),
                ("a".into(), Scheduled, Some(Scheduled)),
                ("b".into(), Pending, Some(Pending)),
                ("a".into(), Running, Some(Running)),
            ]
        );
    }

    #[test]
    fn rewrites_without_event_fold_and_deletes_and_nodes_are_handled() {
        let mut st = State::default();
        let mut out = Vec::new();
        st.insert_task(task("a"), &mut out);
        out.clear();
        // A rewrite alone (e.g. desired state STOPPED) is one change without event.
        st.tasks.get_mut("a").unwrap().task.desired_state = pb::DesiredState::Stopped as i32;
        st.put_task("a", &mut out);
        st.put_task("a", &mut out);
        out.push(Mutation::PutNode(Box::default()));
        let changes = changes_from(out.clone());
        assert_eq!(changes.len(), 1);
        assert!(changes[0].event.is_none());
        assert_eq!(
            changes[0].task.as_ref().unwrap().desired_state(),
            pb::DesiredState::Stopped
        );
        // A transition followed by a rewrite: the rewrite folds into it.
        out.clear();
        st.transition("a", TaskState::Completed, "stopped", |_| {}, &mut out)
            .unwrap();
        st.put_task("a", &mut out);
        st.remove_task("a", &mut out);
        let changes = changes_from(out.clone());
        assert_eq!(changes.len(), 2);
        assert_eq!(
            changes[0].event.as_ref().unwrap().state(),
            TaskState::Completed
        );
        assert!(changes[1].deleted);
        assert_eq!(changes[1].task.as_ref().unwrap().id, "a");
    }

    #[test]
    fn filters() {
        let mut t = task("a");
        t.status.as_mut().unwrap().node_id = "n1".into();
        let change = |t: &pb::Task, deleted| pb::TaskChange {
            task: Some(t.clone()),
            event: None,
            deleted,
        };
        assert!(WatchFilter::default().matches(&change(&t, false)));
        let by_task = WatchFilter {
            task_id: Some("a".into()),
            ..Default::default()
        };
        assert!(by_task.matches(&change(&t, false)));
        assert!(!by_task.matches(&change(&task("b"), false)));
        let by_state = WatchFilter {
            states: vec![TaskState::Running, TaskState::Pending],
            ..Default::default()
        };
        assert!(by_state.matches(&change(&t, false)));
        let running = WatchFilter {
            states: vec![TaskState::Running],
            ..Default::default()
        };
        assert!(!running.matches(&change(&t, false)));
        let by_node = |n: &str| WatchFilter {
            node_id: Some(n.into()),
            ..Default::default()
        };
        assert!(by_node("n1").matches(&change(&t, false)));
        assert!(!by_node("n2").matches(&change(&t, false)));
        // Deletions carry no state: only the task filter applies.
        let gone = pb::Task {
            id: "a".into(),
            ..Default::default()
        };
        assert!(running.matches(&change(&gone, true)));
        assert!(by_task.matches(&change(&gone, true)));
        assert!(!by_task.matches(&change(&task("b"), true)));
        assert!(!WatchFilter::default().matches(&pb::TaskChange::default()));
    }
}
