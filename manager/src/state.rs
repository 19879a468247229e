//! The manager's in-memory model: every task, its events and every node.
//! Reads are served from here; every change goes through [`State::transition`]
//! (the state machine) and yields the [`Mutation`]s that make it durable.
use std::collections::HashMap;
use std::sync::Arc;

use minkube::convert::now;
use minkube::pb::{self, TaskState};
use minkube_common::state_machine::{self, IllegalTransition};

use crate::scheduler::queue::{Queue, Waiting};
use crate::scheduler::refusals::WaitReasons;
use crate::store::{Mutation, Snapshot, StoredTask};
use crate::task_table::{Slot, TaskTable};

mod entries;
mod node_load;

pub use entries::{finished_trace_context, NodeEntry, Session, TaskEntry};
pub use node_load::Usage;
use node_load::{NodeLoads, Reservation};

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;

/// Whether a task waits for the scheduler.
fn needs_node(e: &TaskEntry) -> bool {
    match e.state() {
        TaskState::Pending => true,
        TaskState::Scheduled => e.status().node_id.is_empty(),
        _ => false,
    }
}

/// Why a transition could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    /// Unknown task.
    #[error("task {0} not found")]
    NotFound(String),
    /// Forbidden by the state machine.
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
}

/// Everything the manager knows.
#[derive(Debug, Default)]
pub struct State {
    /// Tasks by id; ids are UUIDv7, so this is creation order. Finished
    /// tasks are kept compact, without their events (see [`TaskTable`]).
    pub tasks: TaskTable,
    /// Nodes by id. Changed only through [`State::nodes_mut`] (or
    /// [`State::note_alive`]), which keeps [`State::room_epoch`] right.
    nodes: HashMap<String, NodeEntry>,
    /// See [`State::room_epoch`].
    room_epoch: u64,
    /// Tasks waiting for a node, creation order: the scheduler's queue.
    /// PENDING tasks, and SCHEDULED ones whose next attempt is not placed
    /// yet (retries, restarts, tasks of a lost node).
    pub unplaced: Queue,
    /// Why the waiting PENDING tasks wait, by constraints and size, as the
    /// last scheduling pass over the whole queue left them: a pass skips
    /// those that already say what it would (see [`crate::scheduler`]).
    pub wait_reasons: WaitReasons,
    /// What admission learned of new tasks no node had room for.
    pub refused_at_creation: crate::scheduler::RefusedAtCreation,
    /// Tasks queued since the last scheduling pass. When no node has room
    /// for even the smallest task, a pass looks only at these (to give them
    /// their "why pending" reason) instead of walking the whole queue.
    pub fresh: Vec<String>,
    /// What the active (SCHEDULED or RUNNING) tasks reserve on each node,
    /// and their ids.
    loads: NodeLoads,
    /// Tasks per state (indexed by the state's number), so a count by
    /// state never scans every task.
    counts: [u64; 6],
    /// Name of the node that got the last placement (round-robin cursor).
    pub rr_cursor: Option<String>,
    /// Node names in order, for the scheduler's round robin.
    pub ring: crate::scheduler::NodeRing,
    /// Bumped when a node's name changes (the ring is rebuilt then, and
    /// when the number of nodes changes).
    pub node_renames: u64,
    /// API tokens and the join token.
    pub access: crate::auth::tokens::AccessState,
}

/// What `entry` holds on its node.
fn reservation_of(entry: &TaskEntry) -> Reservation {
    let node = &entry.status().node_id;
    Reservation {
        node: (!node.is_empty()).then(|| node.clone()),
        id: entry.task.id.clone(),
        memory_mb: entry.memory_mb(),
        cpu: entry.task.spec.as_ref().map_or(0.0, |s| s.cpu),
    }
}

impl State {
    /// Nodes by id.
    pub fn nodes(&self) -> &HashMap<String, NodeEntry> {
        &self.nodes
    }

    /// Brings the scheduler's ring of node names up to date.
    pub fn refresh_ring(&mut self) {
        self.ring.refresh(&self.nodes, self.node_renames);
    }

    /// Nodes by id, to change. Anything about a node may change where tasks
    /// fit, or why they wait: the room epoch moves on.
    pub fn nodes_mut(&mut self) -> &mut HashMap<String, NodeEntry> {
        self.room_epoch = self.room_epoch.wrapping_add(1);
        &mut self.nodes
    }

    /// Notes a sign of life from a node: when it was last heard from and,
    /// with a heartbeat, its host statistics (sanitized by the caller).
    /// Nothing placement depends on changes.
    pub fn note_alive(&mut self, id: &str, stats: Option<pb::HostStats>) -> Option<&NodeEntry> {
        let e = self.nodes.get_mut(id)?;
        e.last_seen = tokio::time::Instant::now();
        e.node.last_heartbeat = Some(now());
        if let Some(s) = stats {
            e.node.stats = Some(s);
        }
        Some(e)
    }

    /// Moves on whenever a node may have more room than before (a task
    /// released its reservation, a node changed): while it stands still,
    /// room only shrinks (placements), so a task size found to fit nowhere
    /// still fits nowhere, and the reason given for it still holds.
    pub fn room_epoch(&self) -> u64 {
        self.room_epoch
    }

    /// Rebuilds nodes and tokens from the store (tasks follow through
    /// [`State::load_task`]). Nodes start disconnected: no stream survives
    /// a manager restart.
    pub fn from_snapshot(snap: Snapshot) -> Self {
        let mut st = State {
            access: crate::auth::tokens::AccessState::from_stored(
                snap.tokens,
                snap.join_token_sha256,
                snap.join_token_issued_at,
            ),
            ..State::default()
        };
        st.access
            .set_removed_nodes(snap.removed_nodes, snap.removed_node_ids);
        for mut node in snap.nodes {
            node.set_state(pb::NodeState::Disconnected);
            st.nodes.insert(
                node.id.clone(),
                NodeEntry {
                    node,
                    session: None,
                    // A restart counts as contact: agents get a full grace
                    // period to reconnect before their tasks are handled.
                    last_seen: tokio::time::Instant::now(),
                },
            );
        }
        st
    }

    /// Adds a task read from the store at start-up (see [`Store::load_tasks`]).
    ///
    /// [`Store::load_tasks`]: crate::store::Store::load_tasks
    pub fn load_task(&mut self, stored: StoredTask, events: Vec<pb::TaskEvent>) {
        let Some(task) = stored.task else { return };
        let entry = TaskEntry {
            task,
            last_sequence: stored.last_sequence,
            events,
            trace_context: stored.trace_context,
        };
        if needs_node(&entry) {
            self.unplaced
                .insert(entry.task.id.clone(), Waiting::of(&entry));
        }
        if state_machine::is_active_on_node(entry.state()) {
            self.loads.add(reservation_of(&entry));
        }
        self.count(entry.state(), 1);
        self.tasks.insert(entry);
    }

    fn count(&mut self, state: TaskState, sign: i8) {
        if let Some(n) = self.counts.get_mut(state as usize) {
            *n = if sign > 0 {
                n.saturating_add(1)
            } else {
                n.saturating_sub(1)
            };
        }
    }

    /// Number of tasks in `state`.
    pub fn count_in(&self, state: TaskState) -> u64 {
        self.counts.get(state as usize).copied().unwrap_or(0)
    }

    /// Releases what `r` holds: its node has more room now.
    fn release(&mut self, r: Reservation) {
        if self.loads.release(r) {
            self.room_epoch = self.room_epoch.wrapping_add(1);
        }
    }

    /// What the active tasks of a node reserve.
    pub fn usage(&self, node_id: &str) -> Usage {
        self.loads.usage(node_id)
    }

    /// The active (SCHEDULED or RUNNING) tasks placed on a node, by id order.
    pub fn active_on(&self, node_id: &str) -> impl Iterator<Item = &TaskEntry> {
        self.unfinished_on(node_id, None)
            .filter_map(|(_, slot)| match slot {
                Slot::Live(e) => Some(&**e),
                Slot::Finished(_) => None,
            })
    }

    /// Every unfinished task on a node, ids after `after`, in id order: the
    /// active ones, since a PENDING task, or a SCHEDULED one waiting for
    /// its next placement, has no node. Lists by node walk these, not every
    /// unfinished task in the cluster.
    pub fn unfinished_on<'a>(
        &'a self,
        node_id: &str,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a String, &'a Slot)> + 'a {
        self.loads
            .active_ids(node_id, after)
            .filter_map(|id| self.tasks.slot(id).map(|slot| (id, slot)))
    }

    /// Adds a new PENDING task with its creation event.
    pub fn insert_task(&mut self, task: pb::Task, out: &mut Vec<Mutation>) {
        self.insert_traced_task(task, HashMap::new(), out);
    }

    /// Adds a new task created under a trace (W3C context of the request).
    pub fn insert_traced_task(
        &mut self,
        task: pb::Task,
        trace_context: HashMap<String, String>,
        out: &mut Vec<Mutation>,
    ) {
        let event = pb::TaskEvent {
            id: uuid::Uuid::new_v4().to_string(),
            task_id: task.id.clone(),
            state: TaskState::Pending as i32,
            timestamp: task.created_at,
            reason: "accepted".into(),
            node_id: String::new(),
            attempt: 0,
        };
        let entry = TaskEntry {
            task,
            last_sequence: 0,
            events: vec![event.clone()],
            trace_context: Arc::new(trace_context),
        };
        let id = entry.task.id.clone();
        out.push(Mutation::PutTask(Box::new(entry.stored())));
        out.push(Mutation::PutEvent {
            task_id: id.clone(),
            index: 0,
            event: Box::new(event),
        });
        self.unplaced.insert(id.clone(), Waiting::of(&entry));
        self.fresh.push(id.clone());
        self.count(entry.state(), 1);
        self.tasks.insert(entry);
    }

    /// Starts a new attempt of an active task: back to SCHEDULED without a
    /// node, placed by the scheduler once `delay` has passed.
    pub fn new_attempt(
        &mut self,
        id: &str,
        reason: &str,
        delay: std::time::Duration,
        kind: crate::policy::AttemptKind,
        out: &mut Vec<Mutation>,
    ) -> Result<(), TransitionError> {
        let not_before = std::time::SystemTime::now() + delay;
        self.transition(
            id,
            TaskState::Scheduled,
            reason,
            |s| {
                s.node_id.clear();
                s.node_name.clear();
                s.container_id.clear();
                s.ports.clear();
                s.started_at = None;
                s.finished_at = None;
                s.attempt = s.attempt.saturating_add(1);
                s.next_attempt_at = Some(minkube::convert::to_timestamp(not_before));
                match kind {
                    crate::policy::AttemptKind::Restart => {
                        s.restarts = s.restarts.saturating_add(1);
                        s.transient_failures = 0;
                    }
                    crate::policy::AttemptKind::Retry => {
                        s.transient_failures = s.transient_failures.saturating_add(1);
                    }
                    crate::policy::AttemptKind::Move => {}
                }
            },
            out,
        )?;
        if let Some(e) = self.tasks.get_mut(id) {
            // The agent numbers the new attempt's updates afresh.
            e.last_sequence = 0;
            if e.task.desired_state() == pb::DesiredState::Moving {
                // Off the drained node: the new attempt simply runs.
                e.task.set_desired_state(pb::DesiredState::Running);
            }
        }
        self.put_task(id, out);
        if let Some(e) = self.tasks.live(id) {
            self.unplaced.insert(id.to_string(), Waiting::of(e));
        }
        Ok(())
    }

    /// Carries out a retry-policy decision for an active task.
    pub fn apply_decision(
        &mut self,
        id: &str,
        outcome: &crate::policy::Outcome,
        decision: crate::policy::Decision,
        out: &mut Vec<Mutation>,
    ) -> Result<(), TransitionError> {
        match decision {
            crate::policy::Decision::Finish(state, reason) => {
                let transient = outcome.is_transient();
                self.transition(
                    id,
                    state,
                    &reason,
                    |s| {
                        if transient {
                            // The last attempt counts too: "gave up after N".
                            s.transient_failures = s.transient_failures.saturating_add(1);
                        }
                    },
                    out,
                )
            }
            crate::policy::Decision::Again {
                kind,
                delay,
                reason,
            } => self.new_attempt(id, &reason, delay, kind, out),
        }
    }

    /// Deletes a task and its events (retention).
    pub fn remove_task(&mut self, id: &str, out: &mut Vec<Mutation>) {
        if let Some(slot) = self.tasks.remove(id) {
            if let Slot::Live(e) = &slot {
                if state_machine::is_active_on_node(e.state()) {
                    self.release(reservation_of(e));
                }
            }
            self.count(slot.state(), -1);
            self.unplaced.remove(id);
            out.push(Mutation::DeleteTask(id.to_string()));
        }
    }

    /// Persists a task's current record (after a change that is not a
    /// transition). Finished tasks never change: nothing to persist.
    pub fn put_task(&self, id: &str, out: &mut Vec<Mutation>) {
        if let Some(e) = self.tasks.live(id) {
            out.push(Mutation::PutTask(Box::new(e.stored())));
        }
    }

    /// THE way a task's observed state changes: checks the state machine,
    /// applies `update` (node, container, exit code, ...), records the event,
    /// keeps reservations and the pending queue right, and emits the mutations.
    pub fn transition(
        &mut self,
        id: &str,
        to: TaskState,
        reason: &str,
        update: impl FnOnce(&mut pb::TaskStatus),
        out: &mut Vec<Mutation>,
    ) -> Result<(), TransitionError> {
        let slot = self
            .tasks
            .slot(id)
            .ok_or_else(|| TransitionError::NotFound(id.to_string()))?;
        let from = slot.state();
        state_machine::check(from, to)?;
        if let (true, Slot::Live(entry)) = (state_machine::is_active_on_node(from), slot) {
            // Only what the reservation needs: a whole-entry clone per
            // transition was a measurable share of the manager's time.
            self.release(reservation_of(entry));
        }
        let Some(entry) = self.tasks.get_mut(id) else {
            return Err(TransitionError::NotFound(id.to_string()));
        };
        let ts = now();
        let status = entry.task.status.get_or_insert_with(Default::default);
        update(status);
        status.set_state(to);
        status.reason = reason.to_string();
        if state_machine::is_terminal(to) && status.finished_at.is_none() {
            status.finished_at = Some(ts);
        }
        let event = pb::TaskEvent {
            id: uuid::Uuid::new_v4().to_string(),
            task_id: id.to_string(),
            state: to as i32,
            timestamp: Some(ts),
            reason: reason.to_string(),
            node_id: status.node_id.clone(),
            attempt: status.attempt,
        };
        entry.task.updated_at = Some(ts);
        entry.events.push(event.clone());
        let index = u32::try_from(entry.events.len() - 1).unwrap_or(u32::MAX);
        out.push(Mutation::PutTask(Box::new(entry.stored())));
        out.push(Mutation::PutEvent {
            task_id: id.to_string(),
            index,
            event: Box::new(event),
        });
        if from == TaskState::Pending || state_machine::is_terminal(to) {
            self.unplaced.remove(id);
        }
        let placed = state_machine::is_active_on_node(to).then(|| reservation_of(entry));
        self.tasks.note_state(id, to);
        self.count(from, -1);
        self.count(to, 1);
        if let Some(r) = placed {
            self.loads.add(r);
        }
        if state_machine::is_terminal(to) {
            // A finished task never changes again: kept compact, its history
            // in the store alone (GetTask reads it there).
            self.tasks.finish(id);
        }
        tracing::info!(
            task_id = id,
            from = minkube::convert::task_state_name(from),
            to = minkube::convert::task_state_name(to),
            reason,
            "task state changed"
        );
        Ok(())
    }

    /// Finds a node by id, then by name.
    pub fn find_node(&self, id_or_name: &str) -> Option<&NodeEntry> {
        self.nodes
            .get(id_or_name)
            .or_else(|| self.nodes.values().find(|n| n.node.name == id_or_name))
    }

    /// The node as clients see it, with reservations filled in.
    pub fn node_view(&self, entry: &NodeEntry) -> pb::Node {
        let mut n = entry.node.clone();
        let u = self.usage(&n.id);
        n.allocated = Some(pb::Resources {
            cpu_cores: u.cpu,
            memory_mb: u.memory_mb,
        });
        n.active_tasks = u.tasks;
        n
    }
}
