//! Placement: round robin over READY, active (not cordoned or drained) nodes
//! in name order, skipping nodes without the memory a task reserves or that
//! miss one of its constraints. A task no node can take stays PENDING with a
//! reason and is retried whenever capacity appears (a node connects or is
//! made active, a task ends), so nothing waits forever for a poll.
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::SystemTime;

use minkube::pb::{self, NodeAvailability, NodeState, TaskState};
use minkube_common::constraints::{self, Constraint};
use minkube_common::trace_context;
use minkube_common::validate::MIN_MEMORY_MB;

use crate::state::State;
use crate::store::Mutation;

mod admit;
pub mod queue;
pub mod refusals;

pub use admit::{admit, admit_task, Admission, RefusedAtCreation, StreamSlot};

use queue::Fresh;
use refusals::Refusals;

/// Placements made. Looked up once: the macro would search the registry
/// for every placement.
static PLACED: LazyLock<metrics::Counter> = LazyLock::new(
    || metrics::counter!("minkube_manager_scheduling_decisions_total", "result" => "placed"),
);

/// Tasks looked at that no node could take, looked up once as [`PLACED`].
static UNPLACEABLE: LazyLock<metrics::Counter> = LazyLock::new(
    || metrics::counter!("minkube_manager_scheduling_decisions_total", "result" => "unplaceable"),
);

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
    pub(crate) fn refresh(
        &mut self,
        nodes: &HashMap<String, crate::state::NodeEntry>,
        renames: u64,
    ) {
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
    let n = st.nodes().get(id)?;
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

/// The most memory any node that takes tasks has in all: a task asking
/// more waits without a walk over every node to find that out.
fn largest_capacity(st: &State) -> u64 {
    st.nodes()
        .values()
        .filter(|n| takes_tasks(n))
        .filter_map(|n| n.node.capacity.as_ref().map(|c| c.memory_mb))
        .max()
        .unwrap_or(0)
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
        .nodes()
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
        .nodes()
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

/// Tasks taken from the queue per look at it; the rest of the pass goes
/// on from the last one seen.
const CHUNK: usize = 64;

/// Places every waiting task it can, oldest first: PENDING tasks and new
/// attempts whose backoff has passed.
pub fn schedule(st: &mut State, now: SystemTime, out: &mut Vec<Mutation>) -> Pass {
    let mut pass = Pass::default();
    let fresh = std::mem::take(&mut st.fresh);
    if st.unplaced.is_empty() {
        return pass; // nothing waits (a kick after a task ended, say)
    }
    st.refresh_ring();
    let mut refusals = Refusals::default();
    // With no room for even the smallest task, nothing in the queue can be
    // placed: only the new tasks need a look (for their reason). Whatever
    // adds room (a node connecting, a task ending) kicks a full pass.
    if pick(st, MIN_MEMORY_MB, &[]).is_none() {
        for id in &fresh {
            consider(st, id, now, &mut refusals, &mut pass, out);
        }
        refusals.unsettle(&mut st.wait_reasons);
        return pass;
    }
    let fresh = Fresh::new(fresh, &st.unplaced);
    let mut cursor: Option<String> = None;
    loop {
        let chunk = next_chunk(st, cursor.as_deref(), now, &fresh, &mut refusals);
        UNPLACEABLE.increment(chunk.passed_over);
        for id in &chunk.batch {
            consider(st, id, now, &mut refusals, &mut pass, out);
        }
        match chunk.rest {
            Rest::From(after) => cursor = Some(after),
            Rest::End => break,
            Rest::AllRefused(after) => {
                // Every task left is sure to wait and already says why,
                // but for new ones: those, oldest first.
                let mut left: Vec<&String> = fresh
                    .iter()
                    .filter(|id| after.as_deref().is_none_or(|a| id.as_str() > a))
                    .collect();
                left.sort_unstable();
                for id in left {
                    consider(st, id, now, &mut refusals, &mut pass, out);
                }
                break;
            }
        }
    }
    // Every PENDING task left waiting was refused in this pass: each now
    // says what this pass found.
    st.wait_reasons = refusals.into_reasons();
    pass.wake_at = st.unplaced.next_due(now);
    pass
}

/// Tasks of the queue looked at by [`next_chunk`].
struct Chunk {
    /// Tasks that need a look, in order.
    batch: Vec<String>,
    /// Tasks passed over: sure to find no node and saying why already (or
    /// needing no reason: new attempts).
    passed_over: u64,
    rest: Rest,
}

/// Where a pass goes on after a [`Chunk`].
enum Rest {
    /// After this task.
    From(String),
    /// Nowhere: the end of the queue.
    End,
    /// Nowhere: every task after this one (None: every task) is sure to
    /// find no node, and all but new ones already say why.
    AllRefused(Option<String>),
}

/// How many tasks a pass passes over between checks of whether the rest of
/// the queue can be passed over as a whole.
const CHECK_EVERY: usize = 1024;

/// The next tasks of the queue after `after` that need a look. Tasks in
/// their backoff are passed over (the queue knows when they are due).
fn next_chunk(
    st: &State,
    after: Option<&str>,
    now: SystemTime,
    fresh: &Fresh,
    refusals: &mut Refusals,
) -> Chunk {
    // A pass's first tasks show what cannot be placed; a small first chunk
    // lets the rest of the walk use that.
    let size = if refusals.is_empty() { 8 } else { CHUNK };
    let mut chunk = Chunk {
        batch: Vec::with_capacity(size),
        passed_over: 0,
        rest: Rest::End,
    };
    let work_out = |need: u64, c: &[String]| {
        // Checked when the task was created: a stored one parses.
        let parsed = constraints::parse_all(c).unwrap_or_default();
        unplaceable_reason(st, need, &parsed)
    };
    // The size and constraints last passed over: a backlog is mostly runs
    // of alike tasks, and once passed over, always passed over this pass.
    // With whether a PENDING one may be passed over too (it already says
    // why it waits), or only new attempts.
    let mut passed_over: Option<(u64, &[String], bool)> = None;
    let mut last: Option<&String> = None;
    for (scanned, (id, w)) in st.unplaced.after(after).enumerate() {
        if scanned % CHECK_EVERY == 0
            && !refusals.is_empty()
            && st
                .unplaced
                .all_refused(fresh, refusals, &st.wait_reasons, work_out)
        {
            chunk.rest = Rest::AllRefused(last.cloned().or_else(|| after.map(str::to_string)));
            return chunk;
        }
        last = Some(id);
        if w.not_before.is_some_and(|t| t > now) {
            continue;
        }
        let alike = passed_over.filter(|(mb, c, _)| *mb == w.need_mb && *c == w.constraints);
        if alike.is_some_and(|(_, _, settled)| !w.pending || (settled && !fresh.contains(id))) {
            chunk.passed_over += 1;
            continue;
        }
        if refusals.refuses(w.need_mb, &w.constraints)
            && (!w.pending
                || (!fresh.contains(id)
                    && refusals.settled(w.need_mb, &w.constraints, &st.wait_reasons, || {
                        work_out(w.need_mb, &w.constraints)
                    })))
        {
            chunk.passed_over += 1;
            passed_over = Some((w.need_mb, &w.constraints, w.pending));
            continue;
        }
        chunk.batch.push(id.clone());
        if chunk.batch.len() == size {
            chunk.rest = Rest::From(id.clone());
            return chunk;
        }
    }
    chunk
}

/// Places one waiting task if a node has room, else records why it waits.
fn consider(
    st: &mut State,
    id: &str,
    now: SystemTime,
    refusals: &mut Refusals,
    pass: &mut Pass,
    out: &mut Vec<Mutation>,
) {
    if !st.unplaced.contains_key(id) {
        return; // placed or ended since it was queued
    }
    let Some(entry) = st.tasks.live(id) else {
        st.unplaced.remove(id);
        return;
    };
    if let Some(t) = not_before(entry.status()).filter(|t| *t > now) {
        pass.wake_at = Some(pass.wake_at.map_or(t, |w| w.min(t)));
        return;
    }
    let need = entry.memory_mb();
    let attempt = entry.status().attempt.max(1);
    let pending = entry.state() == TaskState::Pending;
    let wanted = entry
        .task
        .spec
        .as_ref()
        .map(|s| s.constraints.clone())
        .unwrap_or_default();
    // Checked when the task was created: a stored one parses.
    let parsed = constraints::parse_all(&wanted).unwrap_or_default();
    let picked = if refusals.refuses(need, &wanted)
        || need > refusals.largest_capacity(|| largest_capacity(st))
    {
        None
    } else {
        pick(st, need, &parsed)
    };
    let Some((node_id, node_name)) = picked else {
        UNPLACEABLE.increment(1);
        refusals.note(need, &wanted);
        if !pending {
            return;
        }
        let reason = refusals.reason(need, &wanted, || unplaceable_reason(st, need, &parsed));
        if let Some(e) = st.tasks.get_mut(id) {
            let status = e.task.status.get_or_insert_with(Default::default);
            if status.reason != reason {
                reason.clone_into(&mut status.reason);
                st.put_task(id, out);
            }
        }
        return;
    };
    if let Some(p) = place(st, id, node_id, node_name, attempt, out) {
        pass.placements.push(p);
    }
}

/// Places a waiting task on a node that has room for it: SCHEDULED there,
/// out of the queue, the round-robin cursor on that node. Returns the
/// assignment to send once the change is durable.
fn place(
    st: &mut State,
    id: &str,
    node_id: String,
    node_name: String,
    attempt: u32,
    out: &mut Vec<Mutation>,
) -> Option<Placement> {
    let reason = if attempt > 1 {
        format!("attempt {attempt} placed on node {node_name}")
    } else {
        format!("placed on node {node_name}")
    };
    let placed = st.transition(
        id,
        TaskState::Scheduled,
        &reason,
        |s| {
            s.node_id.clone_from(&node_id);
            s.node_name.clone_from(&node_name);
            s.attempt = attempt;
            s.next_attempt_at = None;
        },
        out,
    );
    if let Err(e) = placed {
        tracing::error!(task_id = %id, error = %e, "cannot place task");
        return None;
    }
    st.unplaced.remove(id);
    PLACED.increment(1);
    // The reservation is in `State::usage` now: the next pick sees it.
    st.rr_cursor = Some(node_name.clone());
    let e = st.tasks.live(id)?;
    // The decision is a span of the task's trace; the agent's work for
    // this attempt continues from it.
    let span = tracing::info_span!("task.schedule", task_id = %id, attempt, node = %node_name);
    trace_context::set_parent(&span, &e.trace_context);
    Some(Placement {
        node_id,
        assignment: assignment_of(&e.task, trace_context::context_of(&span)),
    })
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
mod tests;
