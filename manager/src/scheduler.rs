//! Placement: round robin over READY, active (not cordoned or drained) nodes
//! in name order, skipping nodes without the memory a task reserves or that
//! miss one of its constraints. A task no node can take stays PENDING with a
//! reason and is retried whenever capacity appears (a node connects or is
//! made active, a task ends), so nothing waits forever for a poll.
use std::collections::HashMap;
use std::time::SystemTime;

use minkube::pb::{self, NodeAvailability, NodeState, TaskState};
use minkube_common::constraints::{self, Constraint};
use minkube_common::trace_context;
use minkube_common::validate::MIN_MEMORY_MB;

use crate::state::State;
use crate::store::Mutation;

/// Node names in order with their ids: the round-robin ring. Rebuilt only
/// when the node set changes (nodes are added or renamed, which is rare);
/// readiness and free memory are read live at each pick, so a pass costs
/// nothing per node that it does not look at.
#[derive(Debug, Default)]
pub struct NodeRing {
    /// (node count, renames) the ring was built for.
    built_for: Option<(usize, u64)>,
    /// (name, id), sorted by name.
    names: Vec<(String, String)>,
}

impl NodeRing {
    fn refresh(&mut self, nodes: &HashMap<String, crate::state::NodeEntry>, renames: u64) {
        let key = (nodes.len(), renames);
        if self.built_for == Some(key) {
            return;
        }
        self.names = nodes
            .values()
            .map(|n| (n.node.name.clone(), n.node.id.clone()))
            .collect();
        self.names.sort_unstable();
        self.built_for = Some(key);
    }
}

/// Whether new tasks may go to the node: READY with a live session, and
/// neither cordoned nor drained.
fn takes_tasks(n: &crate::state::NodeEntry) -> bool {
    n.node.state() == NodeState::Ready
        && n.session.is_some()
        && matches!(
            n.node.availability(),
            NodeAvailability::Active | NodeAvailability::Unspecified
        )
}

/// Memory a node can still give, if it takes tasks and meets `constraints`.
fn free_mb(st: &State, id: &str, constraints: &[Constraint]) -> Option<u64> {
    let n = st.nodes.get(id)?;
    if !takes_tasks(n)
        || !constraints
            .iter()
            .all(|c| c.matches(&n.node.name, &n.node.labels))
    {
        return None;
    }
    let cap = n.node.capacity.as_ref().map_or(0, |c| c.memory_mb);
    Some(cap.saturating_sub(st.usage(id).memory_mb))
}

/// The next node after the cursor (by name, wrapping) with `need_mb` free
/// that meets `constraints`: its (id, name).
fn pick(st: &State, need_mb: u64, constraints: &[Constraint]) -> Option<(String, String)> {
    next_with_room(st, need_mb, constraints).map(|(name, id)| (id.clone(), name.clone()))
}

/// [`pick`] without the copies: the ring's (name, id) of the node.
fn next_with_room<'a>(
    st: &'a State,
    need_mb: u64,
    constraints: &[Constraint],
) -> Option<&'a (String, String)> {
    let ring = &st.ring.names;
    if ring.is_empty() {
        return None;
    }
    // The first name after the cursor (which may name a node that left).
    let start = st.rr_cursor.as_deref().map_or(0, |c| {
        let i = ring.partition_point(|(name, _)| name.as_str() <= c);
        if i == ring.len() {
            0
        } else {
            i
        }
    });
    (0..ring.len())
        .map(|i| &ring[(start + i) % ring.len()])
        .find(|(_, id)| free_mb(st, id, constraints).is_some_and(|free| free >= need_mb))
}

/// Why a new task would wait if the scheduler looked now, or `None` when a
/// node has room for it (the next pass places it). Given at creation, a
/// cluster without room stores a new task once, reason included, instead
/// of storing it and then, from the scheduler, its reason: under a burst
/// that second write was as much work as the first.
pub fn reason_to_wait(st: &mut State, spec: &pb::TaskSpec) -> Option<String> {
    let renames = st.node_renames;
    st.ring.refresh(&st.nodes, renames);
    // Checked by validation before this: a spec's constraints parse.
    let parsed = constraints::parse_all(&spec.constraints).unwrap_or_default();
    if next_with_room(st, spec.memory_mb, &parsed).is_some() {
        return None;
    }
    Some(unplaceable_reason(st, spec.memory_mb, &parsed))
}

/// A placement made by [`schedule`]: send `assignment` to `node_id` once durable.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Node the task went to.
    pub node_id: String,
    /// What to send it.
    pub assignment: pb::Assignment,
}

/// Why a task waits: no node has the memory, or none meets its constraints
/// (then: whether any would, given the memory). Looks at every node, so it
/// runs only for tasks that found none.
fn unplaceable_reason(st: &State, need_mb: u64, constraints: &[Constraint]) -> String {
    let held_back = st
        .nodes
        .values()
        .filter(|n| n.node.state() == NodeState::Ready && n.session.is_some() && !takes_tasks(n))
        .count();
    let aside = match held_back {
        0 => String::new(),
        1 => " (1 ready node is cordoned or drained)".to_string(),
        k => format!(" ({k} ready nodes are cordoned or drained)"),
    };
    if constraints.is_empty() {
        return format!("no ready node with {need_mb} MB free{aside}");
    }
    let wanted = constraints::describe(constraints);
    let meeting = st
        .nodes
        .keys()
        .any(|id| free_mb(st, id, constraints).is_some());
    if meeting {
        format!("no ready node meeting {wanted} has {need_mb} MB free{aside}")
    } else {
        format!("no ready node meets {wanted}{aside}")
    }
}

/// Result of a scheduling pass.
#[derive(Debug, Default)]
pub struct Pass {
    /// Tasks placed; send their assignments once the pass is durable.
    pub placements: Vec<Placement>,
    /// Earliest time a task waiting out a backoff may be placed.
    pub wake_at: Option<SystemTime>,
}

fn not_before(status: &pb::TaskStatus) -> Option<SystemTime> {
    status
        .next_attempt_at
        .as_ref()
        .map(minkube::convert::from_timestamp)
}

/// Places every waiting task it can, oldest first: PENDING tasks and new
/// attempts whose backoff has passed.
pub fn schedule(st: &mut State, now: SystemTime, out: &mut Vec<Mutation>) -> Pass {
    let mut pass = Pass::default();
    let fresh = std::mem::take(&mut st.fresh);
    if st.unplaced.is_empty() {
        return pass; // nothing waits (a kick after a task ended, say)
    }
    let renames = st.node_renames;
    st.ring.refresh(&st.nodes, renames);
    // With no room for even the smallest task, nothing in the queue can be
    // placed: only the new tasks need a look (for their reason). Whatever
    // adds room (a node connecting, a task ending) kicks a full pass.
    let queue: Vec<String> = if pick(st, MIN_MEMORY_MB, &[]).is_none() {
        fresh
    } else {
        st.unplaced.iter().cloned().collect()
    };
    // Room only shrinks during a pass: once a task needing N MB found no
    // node, no later task needing N or more will (with the same constraints).
    let mut smallest_refused: HashMap<Vec<String>, u64> = HashMap::new();
    for id in queue {
        if !st.unplaced.contains(&id) {
            continue;
        }
        let Some(entry) = st.tasks.live(&id) else {
            st.unplaced.remove(&id);
            continue;
        };
        if let Some(t) = not_before(entry.status()).filter(|t| *t > now) {
            pass.wake_at = Some(pass.wake_at.map_or(t, |w| w.min(t)));
            continue;
        }
        let need = entry.memory_mb();
        let attempt = entry.status().attempt.max(1);
        let wanted = entry
            .task
            .spec
            .as_ref()
            .map(|s| s.constraints.clone())
            .unwrap_or_default();
        // Checked when the task was created: a stored one parses.
        let parsed = constraints::parse_all(&wanted).unwrap_or_default();
        let refused = smallest_refused.get(&wanted).copied().unwrap_or(u64::MAX);
        let picked = if need >= refused {
            None
        } else {
            pick(st, need, &parsed)
        };
        let Some((node_id, node_name)) = picked else {
            smallest_refused.insert(wanted, refused.min(need));
            metrics::counter!("minkube_manager_scheduling_decisions_total", "result" => "unplaceable")
                .increment(1);
            if entry.state() != TaskState::Pending {
                continue;
            }
            let reason = unplaceable_reason(st, need, &parsed);
            if st
                .tasks
                .live(&id)
                .is_some_and(|e| e.status().reason != reason)
            {
                if let Some(e) = st.tasks.get_mut(&id) {
                    e.task.status.get_or_insert_with(Default::default).reason = reason;
                }
                st.put_task(&id, out);
            }
            continue;
        };
        let reason = if attempt > 1 {
            format!("attempt {attempt} placed on node {node_name}")
        } else {
            format!("placed on node {node_name}")
        };
        let placed = st.transition(
            &id,
            TaskState::Scheduled,
            &reason,
            |s| {
                s.node_id = node_id.clone();
                s.node_name = node_name.clone();
                s.attempt = attempt;
                s.next_attempt_at = None;
            },
            out,
        );
        if let Err(e) = placed {
            tracing::error!(task_id = %id, error = %e, "cannot place task");
            continue;
        }
        st.unplaced.remove(&id);
        metrics::counter!("minkube_manager_scheduling_decisions_total", "result" => "placed")
            .increment(1);
        // The reservation is in `State::usage` now: the next pick sees it.
        st.rr_cursor = Some(node_name.clone());
        if let Some(e) = st.tasks.live(&id) {
            // The decision is a span of the task's trace; the agent's work
            // for this attempt continues from it.
            let span =
                tracing::info_span!("task.schedule", task_id = %id, attempt, node = %node_name);
            trace_context::set_parent(&span, &e.trace_context);
            pass.placements.push(Placement {
                node_id,
                assignment: assignment_of(&e.task, trace_context::context_of(&span)),
            });
        }
    }
    pass
}

/// The assignment message for a placed task, under the given trace context.
pub fn assignment_of(task: &pb::Task, trace_context: HashMap<String, String>) -> pb::Assignment {
    pb::Assignment {
        task_id: task.id.clone(),
        attempt: task.status.as_ref().map_or(0, |s| s.attempt),
        spec: task.spec.clone(),
        trace_context,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::state::{NodeEntry, Session};

    fn ring_of(nodes: &[(&str, u64)]) -> State {
        let mut st = State::default();
        for (name, mb) in nodes {
            ready_node(&mut st, name, *mb);
        }
        let renames = st.node_renames;
        st.ring.refresh(&st.nodes, renames);
        st
    }

    fn picked(st: &State, need: u64) -> Option<String> {
        pick(st, need, &[]).map(|(_, name)| name)
    }

    #[test]
    fn round_robin_wraps_in_name_order() {
        let mut st = ring_of(&[("b", 100), ("a", 100), ("c", 100)]);
        let mut got = Vec::new();
        for _ in 0..7 {
            let name = picked(&st, 10).unwrap();
            st.rr_cursor = Some(name.clone());
            got.push(name);
        }
        assert_eq!(got, ["a", "b", "c", "a", "b", "c", "a"]);
    }

    #[test]
    fn skips_nodes_without_memory_or_session_and_handles_vanished_cursor() {
        let mut st = ring_of(&[("a", 100), ("b", 5), ("c", 100)]);
        st.rr_cursor = Some("a".into());
        assert_eq!(picked(&st, 10).as_deref(), Some("c"));
        // Cursor names a node that left: continue with the next name after it.
        st.rr_cursor = Some("bb".into());
        assert_eq!(picked(&st, 10).as_deref(), Some("c"));
        st.rr_cursor = Some("z".into());
        assert_eq!(picked(&st, 10).as_deref(), Some("a"));
        assert_eq!(picked(&st, 1000), None);
        st.nodes.get_mut("id-a").unwrap().session = None;
        assert_eq!(picked(&st, 10).as_deref(), Some("c"));
        assert_eq!(picked(&State::default(), 1), None);
    }

    fn ready_node(st: &mut State, name: &str, mb: u64) {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        st.nodes.insert(
            format!("id-{name}"),
            NodeEntry {
                node: pb::Node {
                    id: format!("id-{name}"),
                    name: name.into(),
                    state: NodeState::Ready as i32,
                    capacity: Some(pb::Resources {
                        cpu_cores: 1.0,
                        memory_mb: mb,
                    }),
                    ..Default::default()
                },
                session: Some(Session {
                    id: 1,
                    tx,
                    cancel: Default::default(),
                }),
                last_seen: tokio::time::Instant::now(),
            },
        );
    }

    fn pending(st: &mut State, id: &str, mb: u64, out: &mut Vec<Mutation>) {
        constrained(st, id, mb, &[], out);
    }

    fn constrained(st: &mut State, id: &str, mb: u64, cs: &[&str], out: &mut Vec<Mutation>) {
        st.insert_task(
            pb::Task {
                id: id.into(),
                spec: Some(pb::TaskSpec {
                    memory_mb: mb,
                    constraints: cs.iter().map(|c| c.to_string()).collect(),
                    ..Default::default()
                }),
                status: Some(pb::TaskStatus {
                    state: TaskState::Pending as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
            out,
        );
    }

    #[test]
    fn places_in_order_and_explains_what_waits() {
        let mut st = State::default();
        let mut out = Vec::new();
        ready_node(&mut st, "b", 100);
        ready_node(&mut st, "a", 100);
        for (i, mb) in [60, 60, 60].iter().enumerate() {
            pending(&mut st, &format!("t{i}"), *mb, &mut out);
        }
        let placed = schedule(&mut st, SystemTime::now(), &mut out).placements;
        let nodes: Vec<_> = placed.iter().map(|p| p.node_id.as_str()).collect();
        assert_eq!(nodes, ["id-a", "id-b"]);
        assert_eq!(placed[0].assignment.attempt, 1);
        assert!(st.unplaced.contains("t2"));
        assert_eq!(
            st.tasks.get("t2").unwrap().status().reason,
            "no ready node with 60 MB free"
        );
        assert_eq!(st.tasks.get("t0").unwrap().status().node_name, "a");
    }

    #[test]
    fn a_reason_given_at_creation_is_what_the_pass_would_write() {
        let mut st = State::default();
        let mut out = Vec::new();
        let spec = |mb, cs: &[&str]| pb::TaskSpec {
            memory_mb: mb,
            constraints: cs.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(
            reason_to_wait(&mut st, &spec(8, &[])).as_deref(),
            Some("no ready node with 8 MB free")
        );
        // A node that joined since the last pass counts (the ring is refreshed).
        ready_node(&mut st, "a", 100);
        assert_eq!(reason_to_wait(&mut st, &spec(8, &[])), None);
        assert_eq!(
            reason_to_wait(&mut st, &spec(200, &[])).as_deref(),
            Some("no ready node with 200 MB free")
        );
        assert_eq!(
            reason_to_wait(&mut st, &spec(8, &["node.label.zone==z"])).as_deref(),
            Some("no ready node meets node.label.zone==z")
        );
        // Stored with that reason, the task costs the pass no second write.
        let reason = reason_to_wait(&mut st, &spec(200, &[])).unwrap();
        st.insert_task(
            pb::Task {
                id: "big".into(),
                spec: Some(spec(200, &[])),
                status: Some(pb::TaskStatus {
                    state: TaskState::Pending as i32,
                    reason: reason.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &mut out,
        );
        out.clear();
        assert!(schedule(&mut st, SystemTime::now(), &mut out)
            .placements
            .is_empty());
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(st.tasks.get("big").unwrap().status().reason, reason);
    }

    #[test]
    fn without_room_a_pass_looks_only_at_new_tasks_and_a_node_places_them_all() {
        let mut st = State::default();
        let mut out = Vec::new();
        pending(&mut st, "t0", 8, &mut out);
        schedule(&mut st, SystemTime::now(), &mut out);
        assert_eq!(
            st.tasks.get("t0").unwrap().status().reason,
            "no ready node with 8 MB free"
        );
        // A pass with no room and nothing new writes nothing.
        out.clear();
        assert!(schedule(&mut st, SystemTime::now(), &mut out)
            .placements
            .is_empty());
        assert!(out.is_empty(), "{out:?}");
        pending(&mut st, "t1", 8, &mut out);
        schedule(&mut st, SystemTime::now(), &mut out);
        assert_eq!(
            st.tasks.get("t1").unwrap().status().reason,
            "no ready node with 8 MB free"
        );
        // Room appears: the full queue is looked at, oldest first; a large
        // task that does not fit does not stop smaller ones behind it.
        pending(&mut st, "t2", 500, &mut out);
        pending(&mut st, "t3", 8, &mut out);
        ready_node(&mut st, "a", 100);
        let placed = schedule(&mut st, SystemTime::now(), &mut out).placements;
        let ids: Vec<_> = placed
            .iter()
            .map(|p| p.assignment.task_id.as_str())
            .collect();
        assert_eq!(ids, ["t0", "t1", "t3"]);
        assert_eq!(st.unplaced.iter().collect::<Vec<_>>(), ["t2"]);
    }

    fn placed_on(st: &State, id: &str) -> String {
        st.tasks.get(id).unwrap().status().node_name.clone()
    }

    #[test]
    fn cordoned_and_drained_nodes_take_no_new_tasks() {
        let mut st = State::default();
        let mut out = Vec::new();
        ready_node(&mut st, "a", 100);
        ready_node(&mut st, "b", 100);
        st.nodes
            .get_mut("id-a")
            .unwrap()
            .node
            .set_availability(NodeAvailability::Cordoned);
        for i in 0..3 {
            pending(&mut st, &format!("t{i}"), 10, &mut out);
        }
        schedule(&mut st, SystemTime::now(), &mut out);
        for i in 0..3 {
            assert_eq!(placed_on(&st, &format!("t{i}")), "b");
        }
        st.nodes
            .get_mut("id-b")
            .unwrap()
            .node
            .set_availability(NodeAvailability::Drained);
        pending(&mut st, "t3", 10, &mut out);
        schedule(&mut st, SystemTime::now(), &mut out);
        assert_eq!(
            st.tasks.get("t3").unwrap().status().reason,
            "no ready node with 10 MB free (2 ready nodes are cordoned or drained)"
        );
        st.nodes
            .get_mut("id-a")
            .unwrap()
            .node
            .set_availability(NodeAvailability::Active);
        schedule(&mut st, SystemTime::now(), &mut out);
        assert_eq!(placed_on(&st, "t3"), "a");
    }

    #[test]
    fn constraints_pick_matching_nodes_and_say_why_none_does() {
        let mut st = State::default();
        let mut out = Vec::new();
        for (name, zone) in [("a", "x"), ("b", "y"), ("c", "y")] {
            ready_node(&mut st, name, 100);
            let n = &mut st.nodes.get_mut(&format!("id-{name}")).unwrap().node;
            n.labels.insert("zone".into(), zone.into());
        }
        for i in 0..4 {
            constrained(
                &mut st,
                &format!("y{i}"),
                10,
                &["node.label.zone==y"],
                &mut out,
            );
        }
        constrained(
            &mut st,
            "not-b",
            10,
            &["node.label.zone==y", "node.name!=b"],
            &mut out,
        );
        constrained(&mut st, "nowhere", 10, &["node.label.zone==z"], &mut out);
        constrained(&mut st, "too-big", 200, &["node.label.zone==y"], &mut out);
        schedule(&mut st, SystemTime::now(), &mut out);
        let ys: Vec<String> = (0..4).map(|i| placed_on(&st, &format!("y{i}"))).collect();
        assert_eq!(ys, ["b", "c", "b", "c"]);
        assert_eq!(placed_on(&st, "not-b"), "c");
        assert_eq!(
            st.tasks.get("nowhere").unwrap().status().reason,
            "no ready node meets node.label.zone==z"
        );
        assert_eq!(
            st.tasks.get("too-big").unwrap().status().reason,
            "no ready node meeting node.label.zone==y has 200 MB free"
        );
        // (ids are queued in order: not-b went first, to c.)
        // A label appears: the waiting task is placed by the next pass.
        let n = &mut st.nodes.get_mut("id-a").unwrap().node;
        n.labels.insert("zone".into(), "z".into());
        schedule(&mut st, SystemTime::now(), &mut out);
        assert_eq!(placed_on(&st, "nowhere"), "a");
    }
}
