//! Events of tasks changed in journal segments the B-tree does not hold
//! yet, kept in memory so that reads before a checkpoint see them.
//!
//! Each segment's events are kept encoded, back to back in one buffer: a
//! decoded copy costs an allocation per string field (four per event,
//! about three events per task) and as many frees when the checkpointer
//! lets the segment go, on another thread than the one that allocated
//! them. They are decoded only when read, which is rare: a finished task's
//! history asked for within a checkpoint of its end.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;

use minkube::pb;
use prost::Message;

use super::{with_headroom, Mutation, StoreError};

/// The events of one journal segment.
pub(super) struct Generation {
    seq: u64,
    tasks: HashMap<String, TaskEvents>,
    /// Every event of the segment, encoded back to back.
    bytes: Vec<u8>,
}

struct TaskEvents {
    deleted: bool,
    /// (index, where its encoding is in `bytes`) in commit order; a later
    /// entry for the same index wins. A list, not a map: a task has one to
    /// a few events per segment.
    events: Vec<(u32, Range<usize>)>,
}

/// What the journal holds of one task beyond the tree.
#[derive(Debug, PartialEq)]
pub(super) enum Lookup {
    /// Nothing: the tree has all of it.
    Nothing,
    /// Deleted: it has no events.
    Deleted,
    /// Events by index, the latest version of each, to lay over the tree's.
    Events(BTreeMap<u32, pb::TaskEvent>),
}

/// Generations of segments not yet applied, oldest first.
#[derive(Default)]
pub(super) struct Pending {
    generations: VecDeque<Generation>,
    /// Sizes of the newest generation: the next one starts at about these
    /// (most segments are alike; growing by rehashing and copying was a
    /// measurable share of the commit path).
    tasks_last: usize,
    bytes_last: usize,
}

/// Whether `batch` adds events or deletes a task: only then is there
/// anything to note (checked before taking the lock that guards notes).
pub(super) fn brings_events(batch: &[Mutation]) -> bool {
    batch
        .iter()
        .any(|m| matches!(m, Mutation::PutEvent { .. } | Mutation::DeleteTask(_)))
}

impl Pending {
    /// Whether no event waits for a checkpoint.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.generations.is_empty()
    }

    /// Remembers the events and deletions that `batch`, appended to
    /// segment `seq`, brings.
    pub fn note(&mut self, batch: &[Mutation], seq: u64) {
        if !brings_events(batch) {
            return;
        }
        if self.generations.back().is_none_or(|g| g.seq != seq) {
            self.generations.push_back(Generation {
                seq,
                tasks: HashMap::with_capacity(with_headroom(self.tasks_last)),
                bytes: Vec::with_capacity(with_headroom(self.bytes_last)),
            });
        }
        let Some(g) = self.generations.back_mut() else {
            return;
        };
        for m in batch {
            match m {
                Mutation::PutEvent {
                    task_id,
                    index,
                    event,
                } => {
                    let start = g.bytes.len();
                    event.encode_raw(&mut g.bytes);
                    let at = (*index, start..g.bytes.len());
                    match g.tasks.get_mut(task_id.as_str()) {
                        Some(t) => t.events.push(at),
                        None => {
                            let t = TaskEvents {
                                deleted: false,
                                events: vec![at],
                            };
                            g.tasks.insert(task_id.clone(), t);
                        }
                    }
                }
                Mutation::DeleteTask(id) => {
                    g.tasks.insert(
                        id.clone(),
                        TaskEvents {
                            deleted: true,
                            events: Vec::new(),
                        },
                    );
                }
                _ => {}
            }
        }
        self.tasks_last = g.tasks.len();
        self.bytes_last = g.bytes.len();
    }

    /// Takes out the generations of segments up to `seq`, now in the tree,
    /// for the caller to drop outside its lock.
    pub fn take_through(&mut self, seq: u64) -> Vec<Generation> {
        let mut applied = Vec::new();
        while self.generations.front().is_some_and(|g| g.seq <= seq) {
            applied.extend(self.generations.pop_front());
        }
        applied
    }

    /// What the segments not yet applied hold of task `task_id`.
    pub fn lookup(&self, task_id: &str) -> Result<Lookup, StoreError> {
        let mut found = false;
        let mut events = BTreeMap::new();
        for g in &self.generations {
            let Some(t) = g.tasks.get(task_id) else {
                continue;
            };
            if t.deleted {
                return Ok(Lookup::Deleted);
            }
            found = true;
            for (index, range) in &t.events {
                let event = g
                    .bytes
                    .get(range.clone())
                    .and_then(|b| pb::TaskEvent::decode(b).ok())
                    .ok_or_else(|| StoreError::Corrupt {
                        key: format!("events/{task_id}/{index}"),
                        message: "an event kept in memory for the checkpoint does not decode; restart the manager: the journal on disk holds it".into(),
                    })?;
                events.insert(*index, event);
            }
        }
        Ok(if found {
            Lookup::Events(events)
        } else {
            Lookup::Nothing
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(task_id: &str, index: u32, reason: &str) -> Mutation {
        Mutation::PutEvent {
            task_id: task_id.into(),
            index,
            event: Box::new(pb::TaskEvent {
                id: format!("{task_id}-{index}-{reason}"),
                task_id: task_id.into(),
                reason: reason.into(),
                node_id: "node-1".into(),
                ..Default::default()
            }),
        }
    }

    fn reasons(p: &Pending, task_id: &str) -> Vec<(u32, String)> {
        match p.lookup(task_id).unwrap() {
            Lookup::Events(e) => e.into_iter().map(|(i, e)| (i, e.reason)).collect(),
            other => panic!("{task_id}: {other:?}"),
        }
    }

    #[test]
    fn events_read_back_whole_latest_version_first_across_segments() {
        let mut p = Pending::default();
        p.note(&[event("t1", 0, "accepted"), event("t2", 0, "accepted")], 1);
        p.note(&[event("t1", 1, "exited"), event("t1", 1, "exit 0")], 1);
        p.note(&[event("t1", 2, "gone")], 2);
        let want = [(0, "accepted"), (1, "exit 0"), (2, "gone")];
        let want: Vec<_> = want.iter().map(|&(i, r)| (i, r.to_string())).collect();
        assert_eq!(reasons(&p, "t1"), want);
        // The event is whole, not only its reason.
        let Lookup::Events(e) = p.lookup("t2").unwrap() else {
            panic!("t2 has an event");
        };
        assert_eq!(e[&0].id, "t2-0-accepted");
        assert_eq!(e[&0].node_id, "node-1");
        assert_eq!(p.lookup("unknown").unwrap(), Lookup::Nothing);
    }

    #[test]
    fn a_deleted_task_has_no_events_and_applied_segments_are_let_go() {
        let mut p = Pending::default();
        p.note(&[event("t1", 0, "accepted"), event("gone", 0, "x")], 1);
        p.note(&[Mutation::DeleteTask("gone".into())], 2);
        p.note(&[event("t1", 1, "running")], 3);
        assert_eq!(p.lookup("gone").unwrap(), Lookup::Deleted);
        assert_eq!(p.take_through(2).len(), 2);
        assert_eq!(reasons(&p, "t1"), [(1, "running".to_string())]);
        assert_eq!(p.lookup("gone").unwrap(), Lookup::Nothing);
        p.take_through(3);
        assert!(p.is_empty());
    }

    #[test]
    fn a_batch_without_events_starts_no_generation() {
        let mut p = Pending::default();
        p.note(&[Mutation::DeleteToken("t".into())], 1);
        assert!(p.is_empty());
    }
}
