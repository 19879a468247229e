//! The scheduler's queue: what a pass needs to know of each waiting task,
//! kept next to its id so that a pass over a backlog no node can take
//! walks this map instead of looking up every task, and what a pass
//! learns about the tasks it could not place.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::time::SystemTime;

use minkube::pb::TaskState;

use super::refusals::{Refusals, WaitReasons};
use crate::state::TaskEntry;

/// A task waiting for a node, as the scheduler sees it. None of it changes
/// while the task waits: a spec never changes, and a new wait (a new
/// attempt) enters the queue afresh.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    /// Memory it reserves.
    pub need_mb: u64,
    /// Its placement constraints, as written.
    pub constraints: Vec<String>,
    /// PENDING: it is told why it waits. Otherwise a new attempt.
    pub pending: bool,
    /// Not to be placed before (a new attempt's backoff).
    pub not_before: Option<SystemTime>,
}

impl Waiting {
    /// What the queue keeps of a task.
    pub fn of(e: &TaskEntry) -> Self {
        Self {
            need_mb: e.memory_mb(),
            constraints: e
                .task
                .spec
                .as_ref()
                .map(|s| s.constraints.clone())
                .unwrap_or_default(),
            pending: e.state() == TaskState::Pending,
            not_before: e
                .status()
                .next_attempt_at
                .as_ref()
                .map(minkube::convert::from_timestamp),
        }
    }
}

/// Size (MB) and constraints: tasks alike in both are placed, or refused,
/// alike.
type Shape = (u64, Vec<String>);

/// Waiting tasks of one [`Shape`].
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Count {
    pending: usize,
    other: usize,
}

/// The tasks waiting for a node, in id (creation) order, with how many
/// there are of each shape and when new attempts in their backoff are due.
#[derive(Debug, Default)]
pub struct Queue {
    tasks: BTreeMap<String, Waiting>,
    shapes: HashMap<Shape, Count>,
    backoffs: BTreeSet<(SystemTime, String)>,
}

impl Queue {
    /// Adds (or replaces) a waiting task.
    pub fn insert(&mut self, id: String, w: Waiting) {
        self.remove(&id);
        let c = self
            .shapes
            .entry((w.need_mb, w.constraints.clone()))
            .or_default();
        if w.pending {
            c.pending += 1;
        } else {
            c.other += 1;
        }
        if let Some(t) = w.not_before {
            self.backoffs.insert((t, id.clone()));
        }
        self.tasks.insert(id, w);
    }

    /// Takes a task out of the queue.
    pub fn remove(&mut self, id: &str) -> Option<Waiting> {
        let w = self.tasks.remove(id)?;
        let shape = (w.need_mb, w.constraints.clone());
        if let Some(c) = self.shapes.get_mut(&shape) {
            if w.pending {
                c.pending = c.pending.saturating_sub(1);
            } else {
                c.other = c.other.saturating_sub(1);
            }
            if *c == Count::default() {
                self.shapes.remove(&shape);
            }
        }
        if let Some(t) = w.not_before {
            self.backoffs.remove(&(t, id.to_string()));
        }
        Some(w)
    }

    /// Whether the task waits.
    pub fn contains_key(&self, id: &str) -> bool {
        self.tasks.contains_key(id)
    }

    /// Number of waiting tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task waits.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The sizes and constraints of the waiting tasks, each once, while
    /// there are at most `limit` of them (`None`: more).
    pub fn shapes(&self, limit: usize) -> Option<impl Iterator<Item = (u64, &[String])>> {
        (self.shapes.len() <= limit).then(|| {
            self.shapes
                .keys()
                .map(|(need, constraints)| (*need, constraints.as_slice()))
        })
    }

    /// Waiting task ids in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.tasks.keys()
    }

    /// Waiting tasks after `after` (exclusive), in order.
    pub fn after<'a>(
        &'a self,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a String, &'a Waiting)> + 'a {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.tasks.range::<str, _>((from, Bound::Unbounded))
    }

    /// The earliest backoff that ends after `now`.
    pub fn next_due(&self, now: SystemTime) -> Option<SystemTime> {
        self.backoffs
            .range((Bound::Excluded((now, String::new())), Bound::Unbounded))
            .map(|(t, _)| *t)
            .find(|t| *t > now)
    }

    /// Whether every waiting task but the new ones is sure to find no node
    /// for the rest of the pass and already says why (or need not): then
    /// the pass can stop, once it has looked at the new ones. Only worth
    /// asking with a few shapes; false with many.
    pub fn all_refused(
        &self,
        fresh: &Fresh,
        refusals: &mut Refusals,
        before: &WaitReasons,
        mut work_out: impl FnMut(u64, &[String]) -> String,
    ) -> bool {
        const MAX_SHAPES: usize = 64;
        self.shapes.len() <= MAX_SHAPES
            && self.shapes.iter().all(|(shape @ (need, c), count)| {
                let all_fresh = fresh.shapes.get(shape) == Some(&(count.pending + count.other));
                all_fresh
                    || (refusals.refuses(*need, c)
                        && (count.pending == 0
                            || refusals.settled(*need, c, before, || work_out(*need, c))))
            })
    }
}

/// The tasks queued since the last pass: they are looked at one by one
/// (they may not say why they wait yet).
#[derive(Debug, Default)]
pub struct Fresh {
    ids: HashSet<String>,
    /// The smallest id: new tasks have the newest ids, so most of a
    /// backlog is told apart without hashing.
    min: Option<String>,
    shapes: HashMap<Shape, usize>,
}

impl Fresh {
    /// The new tasks of `ids` that still wait in `queue`.
    pub fn new(ids: Vec<String>, queue: &Queue) -> Self {
        let mut fresh = Fresh::default();
        for id in ids {
            let Some(w) = queue.tasks.get(&id) else {
                continue;
            };
            if fresh.ids.contains(&id) {
                continue;
            }
            *fresh
                .shapes
                .entry((w.need_mb, w.constraints.clone()))
                .or_default() += 1;
            if fresh.min.as_ref().is_none_or(|m| id < *m) {
                fresh.min = Some(id.clone());
            }
            fresh.ids.insert(id);
        }
        fresh
    }

    /// Whether a task is new.
    pub fn contains(&self, id: &str) -> bool {
        self.min.as_deref().is_some_and(|m| id >= m) && self.ids.contains(id)
    }

    /// The new tasks, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &String> {
        self.ids.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(need_mb: u64, pending: bool, not_before: Option<SystemTime>) -> Waiting {
        Waiting {
            need_mb,
            constraints: Vec::new(),
            pending,
            not_before,
        }
    }

    #[test]
    fn the_queue_counts_shapes_and_knows_when_backoffs_end() {
        let now = SystemTime::now();
        let soon = now + std::time::Duration::from_secs(5);
        let later = now + std::time::Duration::from_secs(50);
        let mut q = Queue::default();
        q.insert("a".into(), waiting(100, true, None));
        q.insert("b".into(), waiting(100, false, Some(later)));
        q.insert("c".into(), waiting(200, false, Some(soon)));
        q.insert("c".into(), waiting(200, false, Some(soon))); // again: replaced
        assert_eq!(q.len(), 3);
        assert_eq!(q.shapes.len(), 2);
        assert_eq!(q.next_due(now), Some(soon));
        assert_eq!(q.next_due(soon), Some(later));
        assert_eq!(q.next_due(later), None);
        let ids: Vec<_> = q.after(Some("a")).map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
        assert!(q.remove("c").is_some() && q.remove("c").is_none());
        assert_eq!(q.next_due(now), Some(later));
        assert_eq!(q.shapes.len(), 1);
        q.remove("a");
        q.remove("b");
        assert!(q.is_empty() && q.shapes.is_empty() && q.backoffs.is_empty());
    }

    #[test]
    fn the_whole_queue_is_refused_only_when_every_shape_is_and_says_why() {
        let mut q = Queue::default();
        q.insert("a".into(), waiting(100, true, None));
        q.insert("b".into(), waiting(300, false, None));
        let mut before = WaitReasons::new();
        let work_out = |need: u64, _: &[String]| format!("no room for {need}");
        let mut r = Refusals::default();
        assert!(!q.all_refused(&Fresh::default(), &mut r, &before, work_out));
        r.note(100, &[]);
        assert!(
            !q.all_refused(&Fresh::default(), &mut r, &before, work_out),
            "a's reason is new"
        );
        before
            .entry(Vec::new())
            .or_default()
            .insert(100, "no room for 100".into());
        assert!(q.all_refused(&Fresh::default(), &mut r, &before, work_out));
        // A shape whose every task is new is looked at one by one anyway.
        q.insert("n1".into(), waiting(8, true, None));
        q.insert("n2".into(), waiting(8, true, None));
        let fresh = Fresh::new(vec!["n2".into(), "n1".into(), "gone".into()], &q);
        assert!(fresh.contains("n1") && fresh.contains("n2") && !fresh.contains("a"));
        assert_eq!(fresh.min.as_deref(), Some("n1"));
        assert!(q.all_refused(&fresh, &mut r, &before, work_out));
        let one = Fresh::new(vec!["n2".into()], &q);
        assert!(
            !q.all_refused(&one, &mut r, &before, work_out),
            "n1 is not new"
        );
        q.remove("n1");
        q.remove("n2");
        q.insert("c".into(), waiting(50, false, None));
        assert!(
            !q.all_refused(&Fresh::default(), &mut r, &before, work_out),
            "50 MB may fit"
        );
        q.remove("c");
        for i in 0..100 {
            q.insert(format!("x{i}"), waiting(1000 + i, false, None));
        }
        assert!(
            !q.all_refused(&Fresh::default(), &mut r, &before, work_out),
            "too many shapes to ask"
        );
    }
}
