//! Removing a node for good (`minkube node rm`). The node leaves the
//! cluster's records; its id, and every certificate issued to its name
//! until now, are refused (Register and the auth layer ask
//! [`AccessState`]): a retired or stolen machine cannot come back with what
//! it holds. A node still in use
//! (connected, or with tasks) is removed only with `force`; its stream is
//! then closed and its tasks handled as on a lost node, by their policy.
//!
//! [`AccessState`]: crate::auth::tokens::AccessState
use std::time::{SystemTime, UNIX_EPOCH};

use minkube::pb;

use crate::cluster::Cluster;
use crate::error::ManagerError;
use crate::store::Mutation;

/// Why a node may not be removed without force (it is connected, or has
/// tasks), if it may not.
fn in_use(connected: bool, tasks: usize) -> Option<String> {
    match (connected, tasks) {
        (true, _) => Some("is connected".into()),
        (false, 0) => None,
        (false, 1) => Some("still has 1 task".into()),
        (false, n) => Some(format!("still has {n} tasks")),
    }
}

impl Cluster {
    /// Removes a node; answers with it as it was and how many of its tasks
    /// were handed to their restart policy.
    pub async fn remove_node(
        &self,
        req: pb::RemoveNodeRequest,
    ) -> Result<(pb::Node, u32), ManagerError> {
        let retry = self.config.retry;
        let removed_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (node, moved, reschedule) = self
            .write(|st, out| {
                let entry = st
                    .find_node(&req.node)
                    .ok_or_else(|| ManagerError::NodeNotFound(req.node.clone()))?;
                let (id, name) = (entry.node.id.clone(), entry.node.name.clone());
                let view = st.node_view(entry);
                let tasks = st.active_on(&id).count();
                if let Some(why) = in_use(entry.session.is_some(), tasks).filter(|_| !req.force) {
                    return Err(ManagerError::NodeInUse { node: name, why });
                }
                let reschedule = crate::liveness::handle_lost_node(st, &id, &retry, out);
                if let Some(session) = st.nodes_mut().remove(&id).and_then(|e| e.session) {
                    // Its stream ends now; the agent's next call is refused.
                    session.cancel.cancel();
                }
                // The scheduler's ring of names is rebuilt without it.
                st.node_renames = st.node_renames.wrapping_add(1);
                st.access.remove_node(&id, &name, removed_at);
                out.push(Mutation::RemoveNode {
                    id,
                    name,
                    removed_at,
                });
                Ok((view, u32::try_from(tasks).unwrap_or(u32::MAX), reschedule))
            })
            .await?;
        tracing::warn!(node_id = %node.id, name = %node.name, tasks = moved, "node removed: its id and certificates are refused from now on");
        if reschedule {
            self.kick_scheduler();
        }
        Ok((node, moved))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use minkube::pb::TaskState;

    use super::*;
    use crate::cluster::{test_cluster as cluster, test_node};
    use crate::state::fixtures::spec;

    fn remove(node: &str, force: bool) -> pb::RemoveNodeRequest {
        pb::RemoveNodeRequest {
            node: node.into(),
            force,
        }
    }

    #[tokio::test]
    async fn a_node_in_use_is_removed_only_with_force_and_its_tasks_move() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(dir.path()).await;
        let err = c.remove_node(remove("nope", false)).await.unwrap_err();
        assert!(matches!(err, ManagerError::NodeNotFound(_)), "{err}");

        let (a, _a_stream) = test_node(&c, "a", 1000, 8).await;
        let task = c.create_task(Some(spec("t"))).await.unwrap();
        assert_eq!(task.status.as_ref().unwrap().node_id, a);
        let err = c.remove_node(remove("a", false)).await.unwrap_err();
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status.message().contains("is connected") && status.message().contains("--force"),
            "{}",
            status.message()
        );

        // Disconnected, but its task is still placed there.
        let session = c.lock().nodes()[&a].session.as_ref().unwrap().id;
        c.detach_session(&a, session);
        let err = c.remove_node(remove(&a, false)).await.unwrap_err();
        assert!(err.to_string().contains("still has 1 task"), "{err}");
        assert_eq!(c.list_nodes(0, "").nodes.len(), 1, "nothing removed");

        // Forced: the node goes, the task is handed to its policy and
        // placed on the node that is left.
        let (b, _b_stream) = test_node(&c, "b", 1000, 8).await;
        let (node, moved) = c.remove_node(remove("a", true)).await.unwrap();
        assert_eq!((node.name.as_str(), moved), ("a", 1));
        assert!(c.get_node("a").is_err());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (t, _) = c.get_task(&task.id).await.unwrap();
            let s = t.status.unwrap();
            if s.node_id == b {
                assert_eq!(s.state(), TaskState::Scheduled);
                assert_eq!(s.attempt, 2);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "not moved: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c.shutdown(Duration::from_secs(1)).await;
        drop(c);

        // After a restart: still gone, and its certificates still revoked.
        let c = cluster(dir.path()).await;
        assert!(c.get_node("a").is_err());
        assert!(c.get_node("b").is_ok());
        let at = c.lock().access.node_removed("a", 0);
        assert!(at.is_some_and(|t| t > 0));
        assert_eq!(c.lock().access.node_removed("b", 0), None);
        c.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn forcing_a_connected_node_out_closes_its_stream() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(dir.path()).await;
        let (a, _stream) = test_node(&c, "a", 1000, 8).await;
        let cancel = c.lock().nodes()[&a]
            .session
            .as_ref()
            .unwrap()
            .cancel
            .clone();
        let (_, moved) = c.remove_node(remove("a", true)).await.unwrap();
        assert_eq!(moved, 0);
        assert!(cancel.is_cancelled(), "the session is ended");
        assert!(c.list_nodes(0, "").nodes.is_empty());

        // Its agent may not register under the old id (a plaintext manager
        // has no certificate to refuse), and learns it was removed.
        let again = |node_id: &str| pb::RegisterRequest {
            name: "a".into(),
            node_id: node_id.into(),
            ..Default::default()
        };
        let status = tonic::Status::from(c.register(again(&a), None).await.unwrap_err());
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status
            .metadata()
            .get(minkube::NODE_REMOVED_METADATA)
            .is_some());
        assert!(
            status.message().contains("empty its data dir"),
            "{}",
            status.message()
        );
        assert!(c.list_nodes(0, "").nodes.is_empty());
        // Started afresh it is a new node.
        let fresh = c.register(again(""), None).await.unwrap();
        assert_ne!(fresh, a);
        c.shutdown(Duration::from_secs(1)).await;
    }

    #[test]
    fn what_keeps_a_node_is_said() {
        assert_eq!(in_use(false, 0), None);
        assert_eq!(in_use(true, 0).as_deref(), Some("is connected"));
        assert_eq!(in_use(false, 3).as_deref(), Some("still has 3 tasks"));
    }
}
