//! The manager's tasks by id. An unfinished task is a full [`TaskEntry`];
//! a finished one, which never changes again, is kept as its encoded record
//! plus the few fields that lists filter on and retention sorts by. That is
//! ~0.5 KB instead of ~1.4 KB a task, so a million finished tasks fit in
//! well under a gigabyte while lists and watches still never touch the disk.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use minkube::convert::from_timestamp;
use minkube::pb::{self, TaskState};
use minkube_common::state_machine;
use prost::Message;

use crate::state::TaskEntry;
use crate::store::StoredTask;

/// Tasks by id; ids are UUIDv7, so iteration is creation order.
#[derive(Debug, Default)]
pub struct TaskTable {
    map: BTreeMap<String, Slot>,
    /// Node ids of finished tasks, shared: a node runs many tasks.
    node_ids: HashSet<Arc<str>>,
    /// Ids of the [`Slot::Live`] tasks, in id order, with their states:
    /// lists of unfinished states (RUNNING tasks, say) walk these, not a
    /// million finished tasks under the state lock, and look up only the
    /// tasks in a wanted state.
    live: BTreeMap<String, TaskState>,
    /// Finished tasks per node: COMPLETED, FAILED. Counts a list by node
    /// without walking them.
    finished_on: HashMap<Arc<str>, [u64; 2]>,
}

/// What the indexes hold of a slot.
enum Indexed {
    Live(TaskState),
    Finished { node_id: Arc<str>, state: TaskState },
}

/// Place of a finished state in [`TaskTable::finished_on`]'s counts.
fn finished_index(state: TaskState) -> Option<usize> {
    match state {
        TaskState::Completed => Some(0),
        TaskState::Failed => Some(1),
        _ => None,
    }
}

/// One task as the table keeps it.
#[derive(Debug)]
pub enum Slot {
    /// Not finished: the whole entry, events included. Boxed: the tree's
    /// nodes stay small (ordered inserts leave them half full).
    Live(Box<TaskEntry>),
    /// Finished (COMPLETED or FAILED): its events are in the store only.
    Finished(Finished),
}

/// A finished task in compact form.
#[derive(Debug)]
pub struct Finished {
    /// The task's [`StoredTask`] record, protobuf-encoded.
    record: Box<[u8]>,
    node_id: Arc<str>,
    /// Unix time in milliseconds.
    finished_at_ms: i64,
    state: TaskState,
}

impl Slot {
    /// Observed state.
    pub fn state(&self) -> TaskState {
        match self {
            Slot::Live(e) => e.state(),
            Slot::Finished(f) => f.state,
        }
    }

    /// Node of the current (or last) attempt; empty if never placed.
    pub fn node_id(&self) -> &str {
        match self {
            Slot::Live(e) => &e.status().node_id,
            Slot::Finished(f) => &f.node_id,
        }
    }

    /// When a finished task ended (its last update if the time is missing).
    pub fn finished_at(&self) -> Option<SystemTime> {
        match self {
            Slot::Live(e) => finished_at(e),
            Slot::Finished(f) => {
                let ms = u64::try_from(f.finished_at_ms).unwrap_or(0);
                Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
            }
        }
    }

    /// The full entry (decoded if finished; a finished task has no events here).
    pub fn entry(&self) -> Option<Cow<'_, TaskEntry>> {
        match self {
            Slot::Live(e) => Some(Cow::Borrowed(e)),
            Slot::Finished(f) => f.decode().map(Cow::Owned),
        }
    }

    fn indexed(&self) -> Indexed {
        match self {
            Slot::Live(e) => Indexed::Live(e.state()),
            Slot::Finished(f) => Indexed::Finished {
                node_id: Arc::clone(&f.node_id),
                state: f.state,
            },
        }
    }

    /// The API object, owned.
    pub fn to_task(&self) -> Option<pb::Task> {
        match self {
            Slot::Live(e) => Some(e.task.clone()),
            Slot::Finished(f) => f.decode().map(|e| e.task),
        }
    }
}

impl Finished {
    fn decode(&self) -> Option<TaskEntry> {
        match StoredTask::decode(&*self.record) {
            Ok(stored) => Some(TaskEntry {
                task: stored.task?,
                last_sequence: stored.last_sequence,
                events: Vec::new(),
                trace_context: stored.trace_context,
            }),
            Err(e) => {
                // Only this process encodes these bytes: a bug, not bad input.
                tracing::error!(error = %e, "compact task record does not decode");
                None
            }
        }
    }
}

fn finished_at(e: &TaskEntry) -> Option<SystemTime> {
    e.status()
        .finished_at
        .as_ref()
        .or(e.task.updated_at.as_ref())
        .map(from_timestamp)
}

impl TaskTable {
    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no tasks.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether the task exists.
    pub fn contains_key(&self, id: &str) -> bool {
        self.map.contains_key(id)
    }

    /// A task's slot.
    pub fn slot(&self, id: &str) -> Option<&Slot> {
        self.map.get(id)
    }

    /// A task, whatever its state (decoded if finished).
    pub fn get(&self, id: &str) -> Option<Cow<'_, TaskEntry>> {
        self.map.get(id).and_then(Slot::entry)
    }

    /// An unfinished task (None if unknown or finished).
    pub fn live(&self, id: &str) -> Option<&TaskEntry> {
        match self.map.get(id)? {
            Slot::Live(e) => Some(e),
            Slot::Finished(_) => None,
        }
    }

    /// An unfinished task, to change (finished tasks never change).
    pub fn get_mut(&mut self, id: &str) -> Option<&mut TaskEntry> {
        match self.map.get_mut(id)? {
            Slot::Live(e) => Some(e),
            Slot::Finished(_) => None,
        }
    }

    /// Adds or replaces a task; a finished one is stored compact.
    pub fn insert(&mut self, entry: TaskEntry) {
        let id = entry.task.id.clone();
        let slot = if state_machine::is_terminal(entry.state()) {
            Slot::Finished(compact(&mut self.node_ids, entry))
        } else {
            Slot::Live(Box::new(entry))
        };
        let indexed = slot.indexed();
        if let Some(old) = self.map.insert(id.clone(), slot) {
            self.unindex(&id, old.indexed());
        }
        self.index(id, indexed);
    }

    fn index(&mut self, id: String, what: Indexed) {
        match what {
            Indexed::Live(state) => {
                self.live.insert(id, state);
            }
            Indexed::Finished { node_id, state } => {
                if let Some(i) = finished_index(state) {
                    let n = &mut self.finished_on.entry(node_id).or_default()[i];
                    *n = n.saturating_add(1);
                }
            }
        }
    }

    fn unindex(&mut self, id: &str, what: Indexed) {
        match what {
            Indexed::Live(_) => {
                self.live.remove(id);
            }
            Indexed::Finished { node_id, state } => {
                let Some(counts) = self.finished_on.get_mut(&node_id) else {
                    return;
                };
                if let Some(i) = finished_index(state) {
                    counts[i] = counts[i].saturating_sub(1);
                }
                if *counts == [0, 0] {
                    self.finished_on.remove(&node_id);
                }
            }
        }
    }

    /// Turns a task that just finished into its compact form.
    pub fn finish(&mut self, id: &str) {
        let Some(slot) = self.map.get_mut(id) else {
            return;
        };
        if let Slot::Live(e) = slot {
            if state_machine::is_terminal(e.state()) {
                // Taken, not cloned: the entry is consumed by its encoding.
                let entry = std::mem::take(&mut **e);
                *slot = Slot::Finished(compact(&mut self.node_ids, entry));
                let indexed = slot.indexed();
                self.live.remove(id);
                self.index(id.to_string(), indexed);
            }
        }
    }

    /// Removes a task.
    pub fn remove(&mut self, id: &str) -> Option<Slot> {
        let slot = self.map.remove(id)?;
        self.unindex(id, slot.indexed());
        Some(slot)
    }

    /// Every task in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Slot)> {
        self.map.iter()
    }

    /// Tasks after `after` (exclusive), in id order.
    pub fn after(&self, after: Option<&str>) -> impl Iterator<Item = (&String, &Slot)> {
        let start = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_string()));
        self.map.range::<String, _>((start, Bound::Unbounded))
    }

    /// Every task id in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.map.keys()
    }

    /// The unfinished ([`Slot::Live`]) tasks after `after` (exclusive), in
    /// id order, each with its slot if it is in one of `states` (None
    /// otherwise: skipped without a lookup). Every task in a state other
    /// than COMPLETED or FAILED is among them.
    pub fn live_after<'a>(
        &'a self,
        after: Option<&str>,
        states: &'a [TaskState],
    ) -> impl Iterator<Item = (&'a String, Option<&'a Slot>)> + 'a {
        let start = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_string()));
        self.live
            .range::<String, _>((start, Bound::Unbounded))
            .map(|(id, state)| {
                (
                    id,
                    states.contains(state).then(|| self.map.get(id)).flatten(),
                )
            })
    }

    /// Notes an unfinished task's new state (see [`State::transition`]).
    ///
    /// [`State::transition`]: crate::state::State::transition
    pub fn note_state(&mut self, id: &str, state: TaskState) {
        if let Some(s) = self.live.get_mut(id) {
            *s = state;
        }
    }

    /// Number of compact (finished) tasks in `state` whose last attempt ran on
    /// `node_id`; 0 for a state other than COMPLETED or FAILED.
    pub fn finished_on(&self, node_id: &str, state: TaskState) -> u64 {
        let (Some(i), Some(counts)) = (finished_index(state), self.finished_on.get(node_id)) else {
            return 0;
        };
        counts[i]
    }
}

/// The compact form of a finished entry; node ids are shared through `node_ids`.
fn compact(node_ids: &mut HashSet<Arc<str>>, e: TaskEntry) -> Finished {
    let node = e.status().node_id.as_str();
    let node_id = match node_ids.get(node) {
        Some(n) => Arc::clone(n),
        None => {
            let n: Arc<str> = Arc::from(node);
            node_ids.insert(Arc::clone(&n));
            n
        }
    };
    let finished_at_ms = finished_at(&e)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let state = e.state();
    let stored = StoredTask {
        task: Some(e.task),
        last_sequence: e.last_sequence,
        trace_context: crate::state::finished_trace_context(),
    };
    Finished {
        record: stored.encode_to_vec().into_boxed_slice(),
        node_id,
        finished_at_ms,
        state,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(id: &str, state: TaskState, node: &str) -> TaskEntry {
        TaskEntry {
            task: pb::Task {
                id: id.into(),
                spec: Some(pb::TaskSpec {
                    name: format!("name-{id}"),
                    image: "img".into(),
                    ..Default::default()
                }),
                status: Some(pb::TaskStatus {
                    state: state as i32,
                    node_id: node.into(),
                    finished_at: Some(prost_types::Timestamp {
                        seconds: 1_700_000_000,
                        nanos: 5_000_000,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            last_sequence: 3,
            events: vec![pb::TaskEvent::default()],
            trace_context: Arc::new([("traceparent".to_string(), "x".to_string())].into()),
        }
    }

    #[test]
    fn finished_tasks_are_compact_and_read_back_whole_but_for_events_and_trace() {
        let mut t = TaskTable::default();
        t.insert(entry("a", TaskState::Completed, "n1"));
        t.insert(entry("b", TaskState::Running, "n1"));
        assert!(matches!(t.slot("a"), Some(Slot::Finished(_))));
        assert!(t.live("a").is_none() && t.get_mut("a").is_none());
        let a = t.get("a").unwrap();
        let want = entry("a", TaskState::Completed, "n1");
        assert_eq!(a.task, want.task);
        assert_eq!(a.last_sequence, 3);
        // Nothing more is done for a finished task: no parent for new spans.
        assert!(a.trace_context.is_empty() && !want.trace_context.is_empty());
        assert!(a.events.is_empty());
        let b = t.get("b").unwrap();
        assert_eq!(b.trace_context, want.trace_context);
        let slot = t.slot("a").unwrap();
        assert_eq!((slot.state(), slot.node_id()), (TaskState::Completed, "n1"));
        assert_eq!(
            slot.finished_at(),
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_005))
        );
        assert_eq!(t.live("b").unwrap().events.len(), 1);
        let ids: Vec<_> = t.after(Some("a")).map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["b"]);
    }

    #[test]
    fn a_task_that_finishes_is_compacted_and_shares_its_node_id() {
        let mut t = TaskTable::default();
        t.insert(entry("a", TaskState::Completed, "n1"));
        t.insert(entry("b", TaskState::Running, "n1"));
        t.finish("b"); // still running: stays whole
        assert!(matches!(t.slot("b"), Some(Slot::Live(_))));
        t.get_mut("b")
            .unwrap()
            .task
            .status
            .as_mut()
            .unwrap()
            .set_state(TaskState::Failed);
        t.finish("b");
        let (Some(Slot::Finished(a)), Some(Slot::Finished(b))) = (t.slot("a"), t.slot("b")) else {
            panic!("both finished");
        };
        assert!(Arc::ptr_eq(&a.node_id, &b.node_id));
        assert_eq!(t.slot("b").unwrap().state(), TaskState::Failed);
        assert!(t.remove("a").is_some() && !t.contains_key("a"));
        assert_eq!(t.len(), 1);
    }

    const UNFINISHED: [TaskState; 3] =
        [TaskState::Pending, TaskState::Scheduled, TaskState::Running];

    fn live_ids(t: &TaskTable, after: Option<&str>) -> Vec<String> {
        ids_in(t, after, &UNFINISHED)
    }

    fn ids_in(t: &TaskTable, after: Option<&str>, states: &[TaskState]) -> Vec<String> {
        t.live_after(after, states)
            .filter(|(_, slot)| slot.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether the index of unfinished tasks holds exactly each one's state.
    pub(crate) fn live_index_is_right(t: &TaskTable) -> bool {
        let want: Vec<(&String, TaskState)> = t
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Live(_)))
            .map(|(id, s)| (id, s.state()))
            .collect();
        t.live.iter().map(|(id, s)| (id, *s)).eq(want)
    }

    #[test]
    fn indexes_follow_inserts_finishes_replacements_and_removals() {
        use TaskState::{Completed, Failed, Pending, Running};
        let mut t = TaskTable::default();
        t.insert(entry("a", Running, "n1"));
        t.insert(entry("b", Completed, "n1"));
        t.insert(entry("c", Failed, "n2"));
        t.insert(entry("d", Pending, ""));
        assert_eq!(live_ids(&t, None), ["a", "d"]);
        assert_eq!(live_ids(&t, Some("a")), ["d"]);
        assert_eq!(ids_in(&t, None, &[Running]), ["a"]);
        assert!(ids_in(&t, None, &[Completed]).is_empty());

        t.get_mut("d")
            .unwrap()
            .task
            .status
            .as_mut()
            .unwrap()
            .set_state(Running);
        t.note_state("d", Running);
        assert_eq!(ids_in(&t, None, &[Running]), ["a", "d"]);
        assert!(ids_in(&t, None, &[Pending]).is_empty());
        t.note_state("unknown", Running);
        assert!(live_index_is_right(&t));
        let counts = |t: &TaskTable| {
            [
                ("n1", Completed),
                ("n1", Failed),
                ("n2", Completed),
                ("n2", Failed),
            ]
            .map(|(n, s)| t.finished_on(n, s))
        };
        assert_eq!(counts(&t), [1, 0, 0, 1]);
        assert_eq!(t.finished_on("n1", Running), 0);

        let a = t.get_mut("a").unwrap();
        a.task.status.as_mut().unwrap().set_state(Completed);
        t.finish("a");
        assert_eq!(live_ids(&t, None), ["d"]);
        assert_eq!(counts(&t), [2, 0, 0, 1]);

        t.insert(entry("b", Running, "n2")); // replaced by an unfinished one
        assert_eq!(live_ids(&t, None), ["b", "d"]);
        assert_eq!(counts(&t), [1, 0, 0, 1]);
        t.insert(entry("d", Failed, "n2")); // replaced by a finished one
        assert_eq!(live_ids(&t, None), ["b"]);
        assert_eq!(counts(&t), [1, 0, 0, 2]);
        assert!(live_index_is_right(&t));

        for id in ["a", "b", "c", "d", "unknown"] {
            t.remove(id);
        }
        assert!(t.is_empty() && live_ids(&t, None).is_empty());
        assert_eq!(counts(&t), [0; 4]);
        assert!(t.finished_on.is_empty(), "no node keeps an empty count");
    }
}
