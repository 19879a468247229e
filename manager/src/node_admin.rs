//! What an admin changes on a node: its availability (cordon, drain, back
//! to active) and its labels. A drain sets each of the node's tasks MOVING
//! and orders its agent to stop the attempt; the agent's report of the stop
//! then moves the task elsewhere or ends it (policy::decide), so a task never
//! runs on two nodes at once and the node is empty when its count reaches 0.
use std::collections::HashMap;

use minkube::convert::now;
use minkube::pb::{self, DesiredState, NodeAvailability};

use crate::cluster::Cluster;
use crate::error::ManagerError;
use crate::store::Mutation;

use crate::nodes::{label_fits, MAX_NODE_LABELS as MAX_ADMIN_LABELS};

fn check(req: &pb::UpdateNodeRequest) -> Result<NodeAvailability, ManagerError> {
    let availability = NodeAvailability::try_from(req.availability).map_err(|_| {
        ManagerError::BadRequest(format!(
            "availability: unknown value {}: use ACTIVE, CORDONED or DRAINED",
            req.availability
        ))
    })?;
    if req.set_labels.len() > MAX_ADMIN_LABELS {
        return Err(ManagerError::BadRequest(format!(
            "set_labels: at most {MAX_ADMIN_LABELS} labels"
        )));
    }
    for (k, v) in &req.set_labels {
        if !label_fits(k, v) || k.contains(['=', ',']) {
            return Err(ManagerError::BadRequest(format!(
                "set_labels[{k:?}]: keys are 1-128 bytes without '=' or ',', values up to 1024 bytes"
            )));
        }
    }
    if let Some(k) = req.remove_labels.iter().find(|k| k.is_empty()) {
        return Err(ManagerError::BadRequest(format!(
            "remove_labels: {k:?} is not a label key"
        )));
    }
    Ok(availability)
}

/// The labels constraints match: the agent's, with the admin's on top.
pub(crate) fn effective_labels(node: &pb::Node) -> HashMap<String, String> {
    let mut labels = node.agent_labels.clone();
    labels.extend(
        node.admin_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    labels
}

impl Cluster {
    /// Applies an UpdateNode request; answers with the node and how many of
    /// its tasks a drain set moving or stopping.
    pub async fn update_node(
        &self,
        req: pb::UpdateNodeRequest,
    ) -> Result<(pb::Node, u32), ManagerError> {
        let availability = check(&req)?;
        let (node, node_id, orders) = self
            .write(|st, out| {
                let id = st
                    .find_node(&req.node)
                    .map(|n| n.node.id.clone())
                    .ok_or_else(|| ManagerError::NodeNotFound(req.node.clone()))?;
                let Some(entry) = st.nodes_mut().get_mut(&id) else {
                    return Err(ManagerError::NodeNotFound(req.node.clone()));
                };
                let n = &mut entry.node;
                // Checked before anything changes: a refused request leaves
                // the node as it was.
                let mut admin = n.admin_labels.clone();
                for k in &req.remove_labels {
                    admin.remove(k);
                }
                admin.extend(req.set_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
                if admin.len() > MAX_ADMIN_LABELS {
                    return Err(ManagerError::BadRequest(format!(
                        "set_labels: the node would have {} admin labels, at most {MAX_ADMIN_LABELS}",
                        admin.len()
                    )));
                }
                n.admin_labels = admin;
                n.labels = effective_labels(n);
                if availability != NodeAvailability::Unspecified {
                    if n.availability() != availability {
                        tracing::info!(node_id = %id, name = %n.name, availability = %minkube::convert::availability_name(availability), "node availability changed");
                    }
                    n.set_availability(availability);
                }
                let mut stored = n.clone();
                stored.stats = None; // live data, never persisted
                out.push(Mutation::PutNode(Box::new(stored)));
                // A drain moves what is on the node, also tasks a drain
                // already set moving (their stop order is simply sent again).
                let draining: Vec<String> = if availability == NodeAvailability::Drained {
                    st.active_on(&id)
                        .filter(|e| e.task.desired_state() != DesiredState::Stopped)
                        .map(|e| e.task.id.clone())
                        .collect()
                } else {
                    Vec::new()
                };
                let mut orders = Vec::with_capacity(draining.len());
                for task_id in draining {
                    let Some(e) = st.tasks.get_mut(&task_id) else {
                        continue;
                    };
                    e.task.set_desired_state(DesiredState::Moving);
                    e.task.updated_at = Some(now());
                    orders.push(pb::StopOrder {
                        task_id: task_id.clone(),
                        attempt: e.status().attempt,
                        reason: crate::status::stop_reason(&e.task),
                        trace_context: e.trace_context.as_ref().clone(),
                    });
                    st.put_task(&task_id, out);
                }
                let view = st
                    .nodes()
                    .get(&id)
                    .map(|e| st.node_view(e))
                    .ok_or_else(|| ManagerError::NodeNotFound(req.node.clone()))?;
                Ok((view, id, orders))
            })
            .await?;
        let count = u32::try_from(orders.len()).unwrap_or(u32::MAX);
        if count > 0 {
            tracing::info!(node_id = %node_id, tasks = count, "draining node");
        }
        for order in orders {
            // An agent that is away gets them again in its next session.
            self.send(&node_id, pb::manager_message::Msg::Stop(order))
                .await;
        }
        // Active again, or labels that a waiting task's constraints need.
        self.kick_scheduler();
        Ok((node, count))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    use crate::cluster::test_cluster as cluster;

    fn update(node: &str) -> pb::UpdateNodeRequest {
        pb::UpdateNodeRequest {
            node: node.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn labels_and_availability_survive_re_registration_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(dir.path()).await;
        let register = pb::RegisterRequest {
            name: "w1".into(),
            labels: [
                ("zone".to_string(), "a".to_string()),
                ("disk".into(), "hdd".into()),
            ]
            .into(),
            ..Default::default()
        };
        let id = c.register(register.clone(), None).await.unwrap();
        let mut req = update("w1");
        req.set_labels = [
            ("disk".to_string(), "ssd".to_string()),
            ("rack".into(), "7".into()),
        ]
        .into();
        req.availability = NodeAvailability::Cordoned as i32;
        let (node, draining) = c.update_node(req).await.unwrap();
        assert_eq!(draining, 0);
        assert_eq!(node.availability(), NodeAvailability::Cordoned);
        assert_eq!(node.labels["disk"], "ssd", "the admin's label wins");
        assert_eq!(node.labels["zone"], "a");
        assert_eq!(node.labels["rack"], "7");

        // The agent registers again (restart): its labels are replaced, the
        // admin's stay.
        let mut again = register.clone();
        again.node_id = id.clone();
        again.labels = [("zone".to_string(), "b".to_string())].into();
        c.register(again, None).await.unwrap();
        let n = c.get_node("w1").unwrap();
        assert_eq!(n.labels.get("zone").map(String::as_str), Some("b"));
        assert_eq!(n.labels["disk"], "ssd");
        assert_eq!(n.availability(), NodeAvailability::Cordoned);

        let mut req = update(&id);
        req.remove_labels = vec!["disk".into(), "absent".into()];
        req.availability = NodeAvailability::Active as i32;
        let (n, _) = c.update_node(req).await.unwrap();
        assert!(
            !n.labels.contains_key("disk"),
            "the agent no longer reports it"
        );
        c.shutdown(Duration::from_secs(1)).await;
        drop(c);

        let c = cluster(dir.path()).await;
        let n = c.get_node("w1").unwrap();
        assert_eq!(n.availability(), NodeAvailability::Active);
        assert_eq!(n.labels["rack"], "7");
        c.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn bad_requests_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(dir.path()).await;
        let err = c.update_node(update("nope")).await.unwrap_err();
        assert!(matches!(err, ManagerError::NodeNotFound(_)), "{err}");
        c.register(
            pb::RegisterRequest {
                name: "w1".into(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
        let mut bad = update("w1");
        bad.availability = 9;
        let err = c.update_node(bad).await.unwrap_err().to_string();
        assert!(err.contains("ACTIVE, CORDONED or DRAINED"), "{err}");
        let mut bad = update("w1");
        bad.set_labels = [(String::new(), "x".to_string())].into();
        let err = c.update_node(bad).await.unwrap_err().to_string();
        assert!(err.contains("set_labels"), "{err}");
        // Over the cap in total: refused, and the node keeps what it had.
        let mut some = update("w1");
        some.set_labels = (0..40)
            .map(|i| (format!("a{i}"), "x".to_string()))
            .collect();
        c.update_node(some).await.unwrap();
        let mut more = update("w1");
        more.set_labels = (0..40)
            .map(|i| (format!("b{i}"), "x".to_string()))
            .collect();
        let err = c.update_node(more).await.unwrap_err().to_string();
        assert!(err.contains("would have 80 admin labels"), "{err}");
        assert_eq!(c.get_node("w1").unwrap().admin_labels.len(), 40);
        c.shutdown(Duration::from_secs(1)).await;
    }
}
