//! The manager's in-memory model: every task, its events and every node.
//! Reads are served from here; every change goes through [`State::transition`]
//! (the state machine) and yields the [`Mutation`]s that make it durable.
use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use minkube::convert::now;
use minkube::pb::{self, TaskState};
use minkube_common::state_machine::{self, IllegalTransition};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::scheduler::queue::{Queue, Waiting};
use crate::scheduler::refusals::WaitReasons;
use crate::store::{Mutation, Snapshot, StoredTask};
use crate::task_table::{Slot, TaskTable};

/// A task with its history.
#[derive(Debug, Clone, Default)]
pub struct TaskEntry {
    /// The API object.
    pub task: pb::Task,
    /// Highest agent sequence applied for the current attempt.
    pub last_sequence: u64,
    /// Every event, oldest first.
    pub events: Vec<pb::TaskEvent>,
    /// W3C trace context of the create request (empty if untraced). Set
    /// once, shared with every record of the task put since.
    pub trace_context: Arc<HashMap<String, String>>,
}

impl TaskEntry {
    /// Observed state.
    pub fn state(&self) -> TaskState {
        self.status().state()
    }

    /// Observed status (always present on stored tasks).
    pub fn status(&self) -> &pb::TaskStatus {
        static EMPTY: std::sync::LazyLock<pb::TaskStatus> =
            std::sync::LazyLock::new(pb::TaskStatus::default);
        self.task.status.as_ref().unwrap_or(&EMPTY)
    }

    /// Memory the task reserves on its node.
    pub fn memory_mb(&self) -> u64 {
        self.task.spec.as_ref().map_or(0, |s| s.memory_mb)
    }

    fn stored(&self) -> StoredTask {
        StoredTask {
            task: Some(self.task.clone()),
            last_sequence: self.last_sequence,
            trace_context: self.trace_context.clone(),
        }
    }
}

/// Whether a task waits for the scheduler.
fn needs_node(e: &TaskEntry) -> bool {
    match e.state() {
        TaskState::Pending => true,
        TaskState::Scheduled => e.status().node_id.is_empty(),
        _ => false,
    }
}

/// The live stream to a node's agent.
#[derive(Debug, Clone)]
pub struct Session {
    /// Distinguishes a session from the one that replaced it.
    pub id: u64,
    /// Down-stream messages; bounded: a full or closed channel means the agent is gone.
    pub tx: mpsc::Sender<Result<pb::ManagerMessage, tonic::Status>>,
    /// Cancels the session's reader task.
    pub cancel: CancellationToken,
}

/// A node and its session, if connected.
#[derive(Debug)]
pub struct NodeEntry {
    /// The API object (allocated / active_tasks are filled in on read).
    pub node: pb::Node,
    /// The open session.
    pub session: Option<Session>,
    /// Last message from the agent, on the monotonic clock (node timeout and
    /// reconnect grace are measured from it).
    pub last_seen: tokio::time::Instant,
}

/// What the active tasks of a node reserve.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Usage {
    /// Memory in MB.
    pub memory_mb: u64,
    /// CPU cores.
    pub cpu: f64,
    /// Number of active tasks.
    pub tasks: u32,
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
    /// Reservations per node id.
    usage: HashMap<String, Usage>,
    /// Ids of the active (SCHEDULED or RUNNING) tasks per node id, so work
    /// about one node (its desired set, a lost node) never scans every task.
    active: HashMap<String, BTreeSet<String>>,
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

/// What a task holds on its node: enough to add or release it.
struct Reservation {
    node: Option<String>,
    id: String,
    memory_mb: u64,
    cpu: f64,
}

impl Reservation {
    fn of(entry: &TaskEntry) -> Self {
        let node = &entry.status().node_id;
        Self {
            node: (!node.is_empty()).then(|| node.clone()),
            id: entry.task.id.clone(),
            memory_mb: entry.memory_mb(),
            cpu: entry.task.spec.as_ref().map_or(0.0, |s| s.cpu),
        }
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
            self.reserve(&entry, 1);
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

    fn reserve(&mut self, entry: &TaskEntry, sign: i8) {
        self.reserve_for(Reservation::of(entry), sign);
    }

    fn reserve_for(&mut self, r: Reservation, sign: i8) {
        let Some(node) = r.node else {
            return; // waiting for a node: nothing reserved anywhere
        };
        let ids = self.active.entry(node.clone()).or_default();
        if sign > 0 {
            ids.insert(r.id);
        } else {
            ids.remove(&r.id);
            self.room_epoch = self.room_epoch.wrapping_add(1);
        }
        let u = self.usage.entry(node).or_default();
        if sign > 0 {
            u.memory_mb = u.memory_mb.saturating_add(r.memory_mb);
            u.cpu += r.cpu;
            u.tasks = u.tasks.saturating_add(1);
        } else {
            u.memory_mb = u.memory_mb.saturating_sub(r.memory_mb);
            u.cpu = (u.cpu - r.cpu).max(0.0);
            u.tasks = u.tasks.saturating_sub(1);
        }
    }

    /// What the active tasks of a node reserve.
    pub fn usage(&self, node_id: &str) -> Usage {
        self.usage.get(node_id).copied().unwrap_or_default()
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
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.active
            .get(node_id)
            .into_iter()
            .flat_map(move |ids| ids.range::<str, _>((from, Bound::Unbounded)))
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
                    self.reserve(e, -1);
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
            self.reserve_for(Reservation::of(entry), -1);
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
        let placed = state_machine::is_active_on_node(to).then(|| Reservation::of(entry));
        self.tasks.note_state(id, to);
        self.count(from, -1);
        self.count(to, 1);
        if let Some(r) = placed {
            self.reserve_for(r, 1);
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

/// Builders shared by the unit tests of the manager.
#[cfg(test)]
pub(crate) mod fixtures {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A new 10 MB PENDING task named "t".
    pub(crate) fn pending_task(id: &str) -> pb::Task {
        pb::Task {
            id: id.into(),
            spec: Some(pb::TaskSpec {
                name: "t".into(),
                memory_mb: 10,
                ..Default::default()
            }),
            status: Some(pb::TaskStatus {
                state: TaskState::Pending as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Adds a 10 MB task with `policy` and places it on `node` as attempt 1.
    pub(crate) fn placed(st: &mut State, id: &str, node: &str, policy: pb::RestartPolicy) {
        let mut out = Vec::new();
        st.insert_task(
            pb::Task {
                id: id.into(),
                spec: Some(pb::TaskSpec {
                    memory_mb: 10,
                    restart_policy: policy as i32,
                    ..Default::default()
                }),
                desired_state: pb::DesiredState::Running as i32,
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
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn task(id: &str, mb: u64) -> pb::Task {
        pb::Task {
            id: id.into(),
            spec: Some(pb::TaskSpec {
                name: "t".into(),
                memory_mb: mb,
                ..Default::default()
            }),
            status: Some(pb::TaskStatus {
                state: TaskState::Pending as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn place(node: &str) -> impl FnOnce(&mut pb::TaskStatus) + '_ {
        move |s| {
            s.node_id = node.into();
            s.attempt = 1;
        }
    }

    #[test]
    fn transitions_record_events_and_reservations() {
        let mut st = State::default();
        let mut out = Vec::new();
        st.insert_task(task("t1", 100), &mut out);
        assert!(st.unplaced.contains_key("t1"));
        assert_eq!(st.count_in(TaskState::Pending), 1);
        st.transition("t1", TaskState::Scheduled, "placed", place("n1"), &mut out)
            .unwrap();
        assert_eq!(st.count_in(TaskState::Pending), 0);
        assert_eq!(st.count_in(TaskState::Scheduled), 1);
        assert!(st.unplaced.is_empty());
        assert_eq!(st.usage("n1").memory_mb, 100);
        assert_eq!(st.active_on("n1").count(), 1);
        st.transition("t1", TaskState::Running, "started", |_| {}, &mut out)
            .unwrap();
        assert_eq!(st.usage("n1").tasks, 1);
        st.transition("t1", TaskState::Completed, "exit 0", |_| {}, &mut out)
            .unwrap();
        assert_eq!(st.usage("n1"), Usage::default());
        assert_eq!(
            st.active_on("n1").count(),
            0,
            "finished tasks leave the index"
        );
        assert_eq!(st.count_in(TaskState::Completed), 1);
        assert_eq!(st.count_in(TaskState::Running), 0);
        st.remove_task("t1", &mut Vec::new());
        assert_eq!(st.count_in(TaskState::Completed), 0);
        st.insert_task(task("t1", 100), &mut Vec::new());
        st.transition(
            "t1",
            TaskState::Scheduled,
            "placed",
            place("n1"),
            &mut Vec::new(),
        )
        .unwrap();
        st.transition("t1", TaskState::Running, "started", |_| {}, &mut Vec::new())
            .unwrap();
        st.transition(
            "t1",
            TaskState::Completed,
            "exit 0",
            |_| {},
            &mut Vec::new(),
        )
        .unwrap();
        let e = &st.tasks.get("t1").unwrap();
        assert!(
            e.events.is_empty(),
            "a finished task's history is in the store only"
        );
        assert!(e.status().finished_at.is_some());
        // 2 for insert + 2 per transition.
        assert_eq!(out.len(), 8);
    }

    #[test]
    fn illegal_transitions_change_nothing() {
        let mut st = State::default();
        let mut out = Vec::new();
        st.insert_task(task("t1", 10), &mut out);
        out.clear();
        let err = st
            .transition("t1", TaskState::Running, "x", |_| {}, &mut out)
            .unwrap_err();
        assert!(matches!(err, TransitionError::Illegal(_)));
        assert!(out.is_empty());
        assert_eq!(st.tasks.get("t1").unwrap().events.len(), 1);
        assert!(matches!(
            st.transition("nope", TaskState::Running, "x", |_| {}, &mut out),
            Err(TransitionError::NotFound(_))
        ));
    }

    #[test]
    fn snapshot_rebuilds_queue_and_reservations() {
        let mut st = State::default();
        let mut out = Vec::new();
        st.insert_task(task("a", 10), &mut out);
        st.insert_task(task("b", 20), &mut out);
        st.transition("b", TaskState::Scheduled, "placed", place("n1"), &mut out)
            .unwrap();
        let snap = Snapshot {
            nodes: vec![pb::Node {
                id: "n1".into(),
                state: pb::NodeState::Ready as i32,
                ..Default::default()
            }],
            ..Snapshot::default()
        };
        let mut re = State::from_snapshot(snap);
        for (_, t) in st.tasks.iter() {
            let e = t.entry().unwrap();
            re.load_task(e.stored(), e.events.clone());
        }
        assert!(re.unplaced.contains_key("a") && !re.unplaced.contains_key("b"));
        assert_eq!(re.usage("n1").memory_mb, 20);
        let active: Vec<_> = re.active_on("n1").map(|e| e.task.id.as_str()).collect();
        assert_eq!(active, ["b"]);
        assert_eq!(re.nodes["n1"].node.state(), pb::NodeState::Disconnected);
    }
}
