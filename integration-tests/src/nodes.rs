//! Node look-ups and bounded waits on a node's state.
use std::time::Duration;

use minkube::pb::{Node, NodeState};

use crate::cluster::Cluster;
use crate::describe;
use crate::wait::{wait_for, POLL};

impl Cluster {
    /// The node named `name`; panics if the manager does not list it.
    pub async fn node(&self, name: &str) -> Node {
        let nodes = self
            .nodes()
            .await
            .unwrap_or_else(|s| panic!("ListNodes failed: {s:?}"));
        nodes
            .into_iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("node {name} is not listed"))
    }

    /// Waits until the node named `name` satisfies `check` (described by
    /// `what` in the timeout message) and returns it.
    pub async fn wait_node(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Node) -> bool,
    ) -> Node {
        wait_for(&format!("node {name} {what}"), timeout, POLL, async || {
            self.assert_alive();
            let nodes = self.nodes().await.map_err(|s| format!("{s:?}"))?;
            match nodes.iter().find(|n| n.name == name) {
                Some(n) if check(n) => Ok(n.clone()),
                _ => Err(nodes
                    .iter()
                    .map(describe::node)
                    .collect::<Vec<_>>()
                    .join("; ")),
            }
        })
        .await
    }

    /// Waits until the node named `name` is in one of `states`.
    pub async fn wait_node_state(
        &self,
        name: &str,
        states: &[NodeState],
        timeout: Duration,
    ) -> Node {
        let names: Vec<&str> = states
            .iter()
            .map(|s| minkube::convert::node_state_name(*s))
            .collect();
        self.wait_node(
            name,
            &format!("to be {}", names.join(" or ")),
            timeout,
            |n| states.contains(&describe::node_state(n)),
        )
        .await
    }
}
