//! Placement: round robin over READY nodes in name order, skipping nodes
//! without the memory a task reserves. A task no node can take stays PENDING
//! with a reason and is retried whenever capacity appears (a node connects,
//! a task ends), so nothing waits forever for a poll.
use std::collections::HashMap;
use std::time::SystemTime;

use minkube::pb::{self, NodeState, TaskState};
use minkube_common::trace_context;
use minkube_common::validate::MIN_MEMORY_MB;

use crate::state::State;
use crate::store::Mutation;

/// A node the scheduler may use.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Node id.
    pub id: String,
    /// Node name (the round-robin order).
    pub name: String,
    /// Memory not reserved by active tasks.
    pub free_mb: u64,
}

/// Picks the next node after `cursor` (by name, wrapping) with `need_mb` free.
/// `candidates` must be sorted by name.
pub fn pick_round_robin(
    candidates: &[Candidate],
    cursor: Option<&str>,
    need_mb: u64,
) -> Option<usize> {
    if candidates.is_empty() {
        return None;
    }
    // Candidates are sorted by name: the first one after the cursor.
    let start = cursor.map_or(0, |c| {
        let i = candidates.partition_point(|n| n.name.as_str() <= c);
        if i == candidates.len() {
            0
        } else {
            i
        }
    });
    (0..candidates.len())
        .map(|i| (start + i) % candidates.len())
        .find(|&i| candidates[i].free_mb >= need_mb)
}

/// A placement made by [`schedule`]: send `assignment` to `node_id` once durable.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Node the task went to.
    pub node_id: String,
    /// What to send it.
    pub assignment: pb::Assignment,
}

/// Why a task waits.
pub fn unplaceable_reason(need_mb: u64) -> String {
    format!("no ready node with {need_mb} MB free")
}

fn candidates(st: &State) -> Vec<Candidate> {
    let mut c: Vec<Candidate> = st
        .nodes
        .values()
        .filter(|n| n.node.state() == NodeState::Ready && n.session.is_some())
        .map(|n| {
            let cap = n.node.capacity.as_ref().map_or(0, |c| c.memory_mb);
            Candidate {
                id: n.node.id.clone(),
                name: n.node.name.clone(),
                free_mb: cap.saturating_sub(st.usage(&n.node.id).memory_mb),
            }
        })
        .collect();
    c.sort_by(|a, b| a.name.cmp(&b.name));
    c
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
    let mut cands = candidates(st);
    let mut pass = Pass::default();
    let fresh = std::mem::take(&mut st.fresh);
    let room = cands.iter().map(|c| c.free_mb).max().unwrap_or(0);
    // With no room for even the smallest task, nothing in the queue can be
    // placed: only the new tasks need a look (for their reason). Whatever
    // adds room (a node connecting, a task ending) kicks a full pass.
    let queue: Vec<String> = if room < MIN_MEMORY_MB {
        fresh
    } else {
        st.unplaced.iter().cloned().collect()
    };
    // Room only shrinks during a pass: once a task needing N MB found no
    // node, no later task needing N or more will.
    let mut smallest_refused = u64::MAX;
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
        let pick = if need >= smallest_refused {
            None
        } else {
            pick_round_robin(&cands, st.rr_cursor.as_deref(), need)
        };
        let Some(i) = pick else {
            smallest_refused = smallest_refused.min(need);
            metrics::counter!("minkube_manager_scheduling_decisions_total", "result" => "unplaceable")
                .increment(1);
            let reason = unplaceable_reason(need);
            if entry.state() == TaskState::Pending && entry.status().reason != reason {
                if let Some(e) = st.tasks.get_mut(&id) {
                    e.task.status.get_or_insert_with(Default::default).reason = reason;
                }
                st.put_task(&id, out);
            }
            continue;
        };
        let node = cands[i].clone();
        let reason = if attempt > 1 {
            format!("attempt {attempt} placed on node {}", node.name)
        } else {
            format!("placed on node {}", node.name)
        };
        let placed = st.transition(
            &id,
            TaskState::Scheduled,
            &reason,
            |s| {
                s.node_id = node.id.clone();
                s.node_name = node.name.clone();
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
        cands[i].free_mb = cands[i].free_mb.saturating_sub(need);
        st.rr_cursor = Some(node.name.clone());
        if let Some(e) = st.tasks.live(&id) {
            // The decision is a span of the task's trace; the agent's work
            // for this attempt continues from it.
            let span =
                tracing::info_span!("task.schedule", task_id = %id, attempt, node = %node.name);
            trace_context::set_parent(&span, &e.trace_context);
            pass.placements.push(Placement {
                node_id: node.id,
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

    fn cand(name: &str, free: u64) -> Candidate {
        Candidate {
            id: format!("id-{name}"),
            name: name.into(),
            free_mb: free,
        }
    }

    #[test]
    fn round_robin_wraps_in_name_order() {
        let c = [cand("a", 100), cand("b", 100), cand("c", 100)];
        let mut cursor: Option<String> = None;
        let mut got = Vec::new();
        for _ in 0..7 {
            let i = pick_round_robin(&c, cursor.as_deref(), 10).unwrap();
            cursor = Some(c[i].name.clone());
            got.push(c[i].name.clone());
        }
        assert_eq!(got, ["a", "b", "c", "a", "b", "c", "a"]);
    }

    #[test]
    fn skips_nodes_without_memory_and_handles_vanished_cursor() {
        let c = [cand("a", 100), cand("b", 5), cand("c", 100)];
        assert_eq!(pick_round_robin(&c, Some("a"), 10), Some(2));
        // Cursor names a node that left: continue with the next name after it.
        assert_eq!(pick_round_robin(&c, Some("bb"), 10), Some(2));
        assert_eq!(pick_round_robin(&c, Some("z"), 10), Some(0));
        assert_eq!(pick_round_robin(&c, None, 1000), None);
        assert_eq!(pick_round_robin(&[], None, 1), None);
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
        st.insert_task(
            pb::Task {
                id: id.into(),
                spec: Some(pb::TaskSpec {
                    memory_mb: mb,
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
}
