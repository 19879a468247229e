//! The scheduler's queue: what a pass needs to know of each waiting task,
//! kept next to its id so that a pass over a backlog no node can take
//! walks this map instead of looking up every task, and what a pass
//! learns about the tasks it could not place.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::time::SystemTime;

use minkube::pb::TaskState;

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

/// Why the PENDING tasks of a size (MB) and constraints wait, as the last
/// pass over the whole queue left every one of them that was not new.
pub type WaitReasons = HashMap<Vec<String>, HashMap<u64, String>>;

/// What a pass learned about tasks no node could take, by constraints.
/// Room only shrinks during a pass: once a task needing N MB found no node,
/// no later task with the same constraints needing N or more will, and all
/// of them wait for the same reason.
#[derive(Debug, Default)]
pub struct Refusals {
    by_constraints: HashMap<Vec<String>, Refused>,
    /// The most memory a node has in all (it does not change in a pass).
    largest_capacity: Option<u64>,
}

#[derive(Debug)]
struct Refused {
    smallest_mb: u64,
    reasons: HashMap<u64, String>,
}

impl Refusals {
    /// Whether no task was refused yet.
    pub fn is_empty(&self) -> bool {
        self.by_constraints.is_empty()
    }

    /// Whether a task of this size and constraints is sure to find no node
    /// for the rest of the pass.
    pub fn refuses(&self, need_mb: u64, constraints: &[String]) -> bool {
        self.by_constraints
            .get(constraints)
            .is_some_and(|r| need_mb >= r.smallest_mb)
    }

    /// The most memory a node that takes tasks has in all, worked out by
    /// `work_out` once a pass.
    pub fn largest_capacity(&mut self, work_out: impl FnOnce() -> u64) -> u64 {
        *self.largest_capacity.get_or_insert_with(work_out)
    }

    /// Notes that a task of this size and constraints found no node.
    pub fn note(&mut self, need_mb: u64, constraints: &[String]) {
        match self.by_constraints.get_mut(constraints) {
            Some(r) => r.smallest_mb = r.smallest_mb.min(need_mb),
            None => {
                self.by_constraints.insert(
                    constraints.to_vec(),
                    Refused {
                        smallest_mb: need_mb,
                        reasons: HashMap::new(),
                    },
                );
            }
        }
    }

    /// Why a refused task of this size and constraints waits: `work_out`
    /// runs (it looks at every node) once per size and constraints a pass.
    /// Call [`Refusals::note`] first.
    pub fn reason(
        &mut self,
        need_mb: u64,
        constraints: &[String],
        work_out: impl FnOnce() -> String,
    ) -> &str {
        self.by_constraints
            .entry(constraints.to_vec())
            .or_insert(Refused {
                smallest_mb: need_mb,
                reasons: HashMap::new(),
            })
            .reasons
            .entry(need_mb)
            .or_insert_with(work_out)
    }

    /// Whether refused PENDING tasks of this size and constraints already
    /// say why they wait: the reason of this pass is the one `before` (the
    /// last whole pass) left them with.
    pub fn settled(
        &mut self,
        need_mb: u64,
        constraints: &[String],
        before: &WaitReasons,
        work_out: impl FnOnce() -> String,
    ) -> bool {
        let Some(was) = before.get(constraints).and_then(|m| m.get(&need_mb)) else {
            return false;
        };
        // Known already for all but the first task of a size and constraints.
        let known = self
            .by_constraints
            .get(constraints)
            .and_then(|r| r.reasons.get(&need_mb));
        match known {
            Some(now) => now == was,
            None => self.reason(need_mb, constraints, work_out) == was,
        }
    }

    /// The reasons given in this pass, by constraints and size.
    pub fn into_reasons(self) -> WaitReasons {
        self.by_constraints
            .into_iter()
            .filter(|(_, r)| !r.reasons.is_empty())
            .map(|(c, r)| (c, r.reasons))
            .collect()
    }

    /// Forgets in `recorded` each reason this pass gave that differs from
    /// it: some tasks now say otherwise, so it no longer speaks for all.
    pub fn unsettle(&self, recorded: &mut WaitReasons) {
        for (c, r) in &self.by_constraints {
            if let Some(m) = recorded.get_mut(c) {
                for (need, reason) in &r.reasons {
                    if m.get(need).is_some_and(|was| was != reason) {
                        m.remove(need);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| (*s).to_string()).collect()
    }

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

    #[test]
    fn refusals_are_by_constraints_and_smallest_size() {
        let mut r = Refusals::default();
        assert!(!r.refuses(10, &[]));
        r.note(100, &[]);
        assert!(r.refuses(100, &[]) && r.refuses(200, &[]) && !r.refuses(99, &[]));
        r.note(50, &[]);
        assert!(r.refuses(60, &[]));
        assert!(!r.refuses(60, &v(&["zone==a"])), "other constraints");
    }

    #[test]
    fn a_reason_is_worked_out_once_per_size_and_constraints() {
        let mut r = Refusals::default();
        r.note(100, &[]);
        let mut calls = 0;
        for _ in 0..3 {
            let got = r.reason(100, &[], || {
                calls += 1;
                "no room".into()
            });
            assert_eq!(got, "no room");
        }
        assert_eq!(calls, 1);
        assert_eq!(
            r.reason(200, &[], || "no room for 200".into()),
            "no room for 200"
        );
        let reasons = r.into_reasons();
        assert_eq!(reasons[&Vec::new()].len(), 2);
    }

    #[test]
    fn settled_only_when_the_last_whole_pass_gave_the_same_reason() {
        let mut before = WaitReasons::new();
        let mut r = Refusals::default();
        r.note(100, &[]);
        assert!(
            !r.settled(100, &[], &before, || "no room".into()),
            "nothing recorded"
        );
        before
            .entry(Vec::new())
            .or_default()
            .insert(100, "no room".into());
        assert!(r.settled(100, &[], &before, || "no room".into()));
        assert!(r.settled(100, &[], &before, || unreachable!("worked out above")));
        before
            .entry(Vec::new())
            .or_default()
            .insert(100, "other".into());
        assert!(!r.settled(100, &[], &before, || unreachable!()));

        r.unsettle(&mut before);
        assert!(
            before[&Vec::new()].is_empty(),
            "a differing reason is forgotten"
        );
    }
}
