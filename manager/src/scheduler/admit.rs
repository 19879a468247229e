//! Placement at creation. A new task that a node has room for, when no
//! waiting task could want that room, is placed in the very write that
//! creates it: one commit, and no scheduler pass before its assignment
//! leaves. Otherwise it joins the queue like any other, with the reason it
//! waits when no node has room. Under heavy load new tasks are left to the
//! scheduler, whose passes place many in one go.
use std::collections::HashMap;

use minkube::pb;
use minkube_common::constraints::{self, Constraint};

use super::refusals::Refusals;
use super::{free_mb, next_with_room, place, unplaceable_reason, Placement};
use crate::state::{NodeEntry, State};
use crate::store::Mutation;

/// A slot held in a node's stream for an assignment, so that sending it
/// once durable never waits (and a slow agent never holds up the caller).
pub type StreamSlot = tokio::sync::mpsc::OwnedPermit<Result<pb::ManagerMessage, tonic::Status>>;

/// Kinds of waiting tasks looked at for a claim on a node's room; a queue
/// with more leaves new tasks to the scheduler.
const MAX_SHAPES: usize = 64;

/// What becomes of a new task.
#[derive(Debug)]
pub enum Admission {
    /// Placed at once on this node, with a slot of its stream held.
    Place {
        /// Node id.
        node_id: String,
        /// Node name.
        node_name: String,
        /// Where its assignment goes.
        slot: StreamSlot,
    },
    /// No node has room for it: why it waits.
    Waits(String),
    /// The scheduler's to place: a waiting task may want the room first,
    /// or the node's stream is full.
    Queue,
}

/// Adds a new task (created under `trace_context`): PENDING, with the
/// reason it waits when no node has room, or placed at once (only if
/// `place_now`). Returns the task as it now stands and, when placed, the
/// assignment to send through the held slot once the change is durable.
pub fn admit_task(
    st: &mut State,
    mut task: pb::Task,
    trace_context: HashMap<String, String>,
    place_now: bool,
    out: &mut Vec<Mutation>,
) -> (pb::Task, Option<(Placement, StreamSlot)>) {
    let admission = task
        .spec
        .as_ref()
        .map_or(Admission::Queue, |s| admit(st, s, place_now));
    let mut target = None;
    match admission {
        Admission::Place {
            node_id,
            node_name,
            slot,
        } => target = Some((node_id, node_name, slot)),
        Admission::Waits(reason) => {
            task.status.get_or_insert_with(Default::default).reason = reason;
        }
        Admission::Queue => {}
    }
    st.insert_traced_task(task.clone(), trace_context, out);
    let Some((node_id, node_name, slot)) = target else {
        return (task, None);
    };
    let placed = place_new(st, &task.id, node_id, node_name, out);
    let now = st.tasks.live(&task.id).map(|e| e.task.clone());
    (now.unwrap_or(task), placed.map(|p| (p, slot)))
}

/// Decides, before a task with `spec` is inserted, whether it is placed at
/// once (only if `place_now`), waits (and why), or goes to the scheduler.
pub fn admit(st: &mut State, spec: &pb::TaskSpec, place_now: bool) -> Admission {
    let mut memo = std::mem::take(&mut st.refused_at_creation);
    if memo.epoch != st.room_epoch() || memo.reasons >= MAX_REMEMBERED {
        memo = RefusedAtCreation {
            epoch: st.room_epoch(),
            ..RefusedAtCreation::default()
        };
    }
    let admission = decide(st, spec, place_now, &mut memo);
    st.refused_at_creation = memo;
    admission
}

/// Reasons worked out for new tasks that are remembered at most, until the
/// room epoch moves on.
const MAX_REMEMBERED: usize = 1024;

/// What admission learned of tasks no node had room for, while no room was
/// freed and no node changed ([`State::room_epoch`]): room only shrank
/// since, so such tasks still fit nowhere, for the same reason. In a full
/// cluster a new task is then told why it waits without a look at every
/// node.
#[derive(Debug, Default)]
pub struct RefusedAtCreation {
    epoch: u64,
    refusals: Refusals,
    reasons: usize,
}

fn decide(
    st: &mut State,
    spec: &pb::TaskSpec,
    place_now: bool,
    memo: &mut RefusedAtCreation,
) -> Admission {
    let need = spec.memory_mb;
    // Checked by validation before this: a spec's constraints parse.
    let parsed = constraints::parse_all(&spec.constraints).unwrap_or_default();
    if !memo.refusals.refuses(need, &spec.constraints) {
        st.refresh_ring();
        if let Some((node_name, node_id)) = next_with_room(st, need, &parsed) {
            return place_or_queue(st, node_id, node_name, place_now);
        }
        memo.refusals.note(need, &spec.constraints);
    }
    let mut worked_out = false;
    let reason = memo.refusals.reason(need, &spec.constraints, || {
        worked_out = true;
        unplaceable_reason(st, need, &parsed)
    });
    let reason = reason.to_string();
    memo.reasons += usize::from(worked_out);
    Admission::Waits(reason)
}

/// For a new task that `node_id` has room for: placed there, unless that
/// is not to be done now or could take the room from a waiting task.
fn place_or_queue(st: &State, node_id: &str, node_name: &str, place_now: bool) -> Admission {
    if !place_now {
        return Admission::Queue;
    }
    let Some(node) = st.nodes().get(node_id) else {
        return Admission::Queue;
    };
    let free = free_mb(st, node_id, &[]).unwrap_or(0);
    if claimed(st, node, free) {
        return Admission::Queue;
    }
    let Some(slot) = node
        .session
        .as_ref()
        .and_then(|s| s.tx.clone().try_reserve_owned().ok())
    else {
        return Admission::Queue;
    };
    Admission::Place {
        node_id: node_id.to_string(),
        node_name: node_name.to_string(),
        slot,
    }
}

/// Whether a waiting task could take `free` MB on `node`: then it goes
/// first, and a new task must not take the room from under it. Tasks in
/// their backoff count too (conservatively).
fn claimed(st: &State, node: &NodeEntry, free: u64) -> bool {
    let Some(mut shapes) = st.unplaced.shapes(MAX_SHAPES) else {
        return true;
    };
    shapes.any(|(need, wanted)| {
        need <= free
            && constraints::parse_all(wanted).map_or(true, |cs: Vec<Constraint>| {
                cs.iter()
                    .all(|c| c.matches(&node.node.name, &node.node.labels))
            })
    })
}

/// Places the task just inserted with id `id` as [`admit`] decided: the
/// assignment to send through the held slot once durable.
fn place_new(
    st: &mut State,
    id: &str,
    node_id: String,
    node_name: String,
    out: &mut Vec<Mutation>,
) -> Option<Placement> {
    // Never looked at by a pass: not new to the scheduler either.
    if st.fresh.last().is_some_and(|f| f == id) {
        st.fresh.pop();
    }
    place(st, id, node_id, node_name, 1, out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::SystemTime;

    use minkube::pb::{manager_message::Msg, TaskState};
    use tokio::sync::mpsc;

    use super::*;
    use crate::scheduler::schedule;
    use crate::scheduler::tests::{connected_node, constrained, new_task, pending};

    type Rx = mpsc::Receiver<Result<pb::ManagerMessage, tonic::Status>>;

    fn node(st: &mut State, name: &str, mb: u64, buffer: usize) -> Rx {
        let (tx, rx) = mpsc::channel(buffer);
        connected_node(st, name, mb, tx);
        rx
    }

    fn label(st: &mut State, name: &str, zone: &str) {
        let n = &mut st.nodes_mut().get_mut(&format!("id-{name}")).unwrap().node;
        n.labels.insert("zone".into(), zone.into());
    }

    /// Creates a task as CreateTask does (and sends its assignment through
    /// the held slot): the node it went to at once.
    fn create(st: &mut State, id: &str, mb: u64, cs: &[&str]) -> Option<String> {
        let task = new_task(id, mb, cs);
        let (task, placed) = admit_task(st, task, HashMap::new(), true, &mut Vec::new());
        let (p, slot) = placed?;
        slot.send(Ok(pb::ManagerMessage {
            msg: Some(Msg::Assignment(p.assignment)),
        }));
        Some(task.status.unwrap().node_name)
    }

    fn state(st: &State, id: &str) -> TaskState {
        st.tasks.get(id).unwrap().state()
    }

    #[test]
    fn a_task_with_room_is_placed_at_creation_and_never_queued() {
        let mut st = State::default();
        let mut rx = node(&mut st, "a", 100, 4);
        assert_eq!(create(&mut st, "t1", 10, &[]).as_deref(), Some("a"));
        let e = st.tasks.get("t1").unwrap();
        assert_eq!(e.state(), TaskState::Scheduled);
        assert_eq!(e.status().reason, "placed on node a");
        assert_eq!(st.usage("id-a").memory_mb, 10);
        assert!(st.unplaced.is_empty() && st.fresh.is_empty());
        let sent = rx.try_recv().unwrap().unwrap();
        assert!(
            matches!(&sent.msg, Some(Msg::Assignment(a)) if a.task_id == "t1" && a.attempt == 1),
            "{sent:?}"
        );
        let mut out = Vec::new();
        let pass = schedule(&mut st, SystemTime::now(), &mut out);
        assert!(pass.placements.is_empty() && out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_waiting_task_that_fits_goes_first() {
        let mut st = State::default();
        let _rx = node(&mut st, "a", 100, 4);
        // Ids are in creation order.
        pending(&mut st, "t1-old", 60, &mut Vec::new());
        assert_eq!(create(&mut st, "t2-new", 10, &[]), None);
        assert_eq!(state(&st, "t2-new"), TaskState::Pending);
        let pass = schedule(&mut st, SystemTime::now(), &mut Vec::new());
        let ids: Vec<_> = pass
            .placements
            .iter()
            .map(|p| p.assignment.task_id.as_str())
            .collect();
        assert_eq!(ids, ["t1-old", "t2-new"]);
    }

    #[test]
    fn waiting_tasks_that_cannot_use_the_room_do_not_hold_up_new_ones() {
        let mut st = State::default();
        let _rx = node(&mut st, "a", 100, 8);
        label(&mut st, "a", "x");
        let mut out = Vec::new();
        for i in 0..3 {
            pending(&mut st, &format!("big{i}"), 1000, &mut out);
        }
        constrained(&mut st, "elsewhere", 10, &["node.label.zone==y"], &mut out);
        assert_eq!(create(&mut st, "small", 10, &[]).as_deref(), Some("a"));
        // One that could run here is another matter.
        constrained(&mut st, "here", 10, &["node.label.zone==x"], &mut out);
        assert_eq!(create(&mut st, "small2", 10, &[]), None);
        assert_eq!(state(&st, "small2"), TaskState::Pending);
    }

    #[test]
    fn too_many_kinds_of_waiting_tasks_leave_new_ones_to_the_scheduler() {
        let mut st = State::default();
        let _rx = node(&mut st, "a", 100, 4);
        let mut out = Vec::new();
        for i in 0..MAX_SHAPES as u64 {
            pending(&mut st, &format!("big{i:03}"), 1000 + i, &mut out);
        }
        assert_eq!(create(&mut st, "small", 10, &[]).as_deref(), Some("a"));
        pending(&mut st, "one-more-kind", 2000, &mut out);
        assert_eq!(create(&mut st, "small2", 10, &[]), None);
    }

    /// Why a new task would wait (None: it would not).
    fn waits(st: &mut State, mb: u64, cs: &[&str]) -> Option<String> {
        let spec = pb::TaskSpec {
            memory_mb: mb,
            constraints: cs.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        };
        match admit(st, &spec, true) {
            Admission::Waits(reason) => Some(reason),
            Admission::Place { .. } | Admission::Queue => None,
        }
    }

    #[test]
    fn a_reason_remembered_in_a_full_cluster_is_dropped_once_room_is_freed() {
        let mut st = State::default();
        let _rx = node(&mut st, "a", 100, 8);
        assert_eq!(create(&mut st, "t1", 60, &[]).as_deref(), Some("a"));
        let full = Some("no ready node with 60 MB free".to_string());
        assert_eq!(waits(&mut st, 60, &[]), full);
        assert_eq!(
            waits(&mut st, 70, &[]).unwrap(),
            "no ready node with 70 MB free"
        );
        assert_eq!(create(&mut st, "t2", 30, &[]).as_deref(), Some("a"));
        assert_eq!(waits(&mut st, 60, &[]), full, "less room still refuses");
        let mut out = Vec::new();
        for to in [TaskState::Running, TaskState::Completed] {
            st.transition("t1", to, "", |_| {}, &mut out).unwrap();
        }
        assert_eq!(waits(&mut st, 60, &[]), None, "t1 freed its 60 MB");
    }

    #[test]
    fn a_reason_remembered_in_a_full_cluster_is_dropped_when_a_node_changes() {
        let mut st = State::default();
        let _rx = node(&mut st, "a", 100, 8);
        let nowhere = Some("no ready node meets node.label.zone==y".to_string());
        assert_eq!(waits(&mut st, 10, &["node.label.zone==y"]), nowhere);
        assert_eq!(waits(&mut st, 10, &["node.label.zone==y"]), nowhere);
        label(&mut st, "a", "y");
        assert_eq!(waits(&mut st, 10, &["node.label.zone==y"]), None);
        assert_eq!(
            waits(&mut st, 200, &[]).unwrap(),
            "no ready node with 200 MB free"
        );
        let _rx_b = node(&mut st, "b", 300, 8);
        assert_eq!(waits(&mut st, 200, &[]), None, "b joined");
    }

    #[test]
    fn under_heavy_load_new_tasks_are_left_to_the_scheduler() {
        let mut st = State::default();
        let _rx = node(&mut st, "a", 100, 4);
        let spec = pb::TaskSpec {
            memory_mb: 10,
            ..Default::default()
        };
        assert!(matches!(admit(&mut st, &spec, false), Admission::Queue));
        assert!(matches!(
            admit(
                &mut st,
                &pb::TaskSpec {
                    memory_mb: 200,
                    ..spec
                },
                false
            ),
            Admission::Waits(_)
        ));
    }

    #[test]
    fn a_full_stream_leaves_the_task_to_the_scheduler() {
        let mut st = State::default();
        let mut rx = node(&mut st, "a", 100, 1);
        assert_eq!(create(&mut st, "t1", 10, &[]).as_deref(), Some("a"));
        assert_eq!(create(&mut st, "t2", 10, &[]), None);
        assert_eq!(state(&st, "t2"), TaskState::Pending);
        assert!(st.fresh.contains(&"t2".to_string()));
        let pass = schedule(&mut st, SystemTime::now(), &mut Vec::new());
        assert_eq!(pass.placements.len(), 1);
        assert_eq!(pass.placements[0].assignment.task_id, "t2");
        assert!(rx.try_recv().is_ok(), "t1's assignment");
    }
}
