//! What a scheduling pass learns about the tasks it cannot place, and the
//! reasons the last whole pass left waiting tasks with.
use std::collections::HashMap;

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
