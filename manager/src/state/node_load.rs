//! What is placed on each node: the resources its active (SCHEDULED or
//! RUNNING) tasks reserve, and their ids. Both live in one entry per node,
//! so placing or releasing a task is one lookup by node id.
use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;

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

/// What a task holds on its node: enough to add or release it.
pub(super) struct Reservation {
    /// `None` while the task waits for a node: it holds nothing.
    pub node: Option<String>,
    pub id: String,
    pub memory_mb: u64,
    pub cpu: f64,
}

/// One node's share.
#[derive(Debug, Default)]
struct Load {
    usage: Usage,
    /// Ids of the active tasks, so work about one node (its desired set, a
    /// lost node, a list by node) never scans every task.
    active: BTreeSet<String>,
}

/// Every node's [`Load`], by node id.
#[derive(Debug, Default)]
pub(super) struct NodeLoads {
    by_node: HashMap<String, Load>,
}

impl NodeLoads {
    /// Adds a reservation.
    pub fn add(&mut self, r: Reservation) {
        let Some(node) = r.node else { return };
        let load = self.by_node.entry(node).or_default();
        load.active.insert(r.id);
        let u = &mut load.usage;
        u.memory_mb = u.memory_mb.saturating_add(r.memory_mb);
        u.cpu += r.cpu;
        u.tasks = u.tasks.saturating_add(1);
    }

    /// Releases a reservation; whether it held anything (the node has more
    /// room now).
    pub fn release(&mut self, r: Reservation) -> bool {
        let Some(load) = r.node.as_deref().and_then(|n| self.by_node.get_mut(n)) else {
            return false;
        };
        load.active.remove(&r.id);
        let u = &mut load.usage;
        u.memory_mb = u.memory_mb.saturating_sub(r.memory_mb);
        u.cpu = (u.cpu - r.cpu).max(0.0);
        u.tasks = u.tasks.saturating_sub(1);
        true
    }

    /// What the active tasks of a node reserve.
    pub fn usage(&self, node_id: &str) -> Usage {
        self.by_node
            .get(node_id)
            .map(|l| l.usage)
            .unwrap_or_default()
    }

    /// Ids of the active tasks on a node after `after`, in order.
    pub fn active_ids<'a>(
        &'a self,
        node_id: &str,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = &'a String> + 'a {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.by_node
            .get(node_id)
            .into_iter()
            .flat_map(move |l| l.active.range::<str, _>((from, Bound::Unbounded)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(node: Option<&str>, id: &str, mb: u64, cpu: f64) -> Reservation {
        Reservation {
            node: node.map(str::to_string),
            id: id.into(),
            memory_mb: mb,
            cpu,
        }
    }

    #[test]
    fn adds_and_releases_per_node() {
        let mut l = NodeLoads::default();
        l.add(r(Some("n1"), "a", 100, 0.5));
        l.add(r(Some("n1"), "b", 50, 0.25));
        l.add(r(Some("n2"), "c", 10, 0.0));
        assert_eq!(
            l.usage("n1"),
            Usage {
                memory_mb: 150,
                cpu: 0.75,
                tasks: 2
            }
        );
        assert_eq!(l.active_ids("n1", None).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(l.active_ids("n1", Some("a")).collect::<Vec<_>>(), ["b"]);
        assert!(l.release(r(Some("n1"), "a", 100, 0.5)));
        assert_eq!(l.usage("n1").memory_mb, 50);
        assert_eq!(l.usage("n1").tasks, 1);
        assert_eq!(l.active_ids("n1", None).collect::<Vec<_>>(), ["b"]);
        assert_eq!(l.usage("n2").tasks, 1, "other nodes are untouched");
    }

    #[test]
    fn a_task_without_a_node_holds_nothing() {
        let mut l = NodeLoads::default();
        l.add(r(None, "a", 100, 1.0));
        assert!(!l.release(r(None, "a", 100, 1.0)));
        assert!(!l.release(r(Some("unknown"), "a", 100, 1.0)));
        assert_eq!(l.usage("unknown"), Usage::default());
        assert_eq!(l.active_ids("unknown", None).count(), 0);
    }

    #[test]
    fn releases_never_go_below_zero() {
        let mut l = NodeLoads::default();
        l.add(r(Some("n1"), "a", 10, 0.1));
        l.release(r(Some("n1"), "a", 10, 0.1));
        l.release(r(Some("n1"), "a", 10, 0.1));
        assert_eq!(l.usage("n1"), Usage::default());
    }
}
