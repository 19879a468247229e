//! Node registration, sessions and the node half of the user API.
use minkube::convert::now;
use minkube::pb::{self, NodeState};
use minkube_common::{paging, validate};

use crate::cluster::Cluster;
use crate::error::ManagerError;
use crate::state::{NodeEntry, Session};
use crate::store::Mutation;

/// Longest advertised address or version string accepted.
const MAX_FIELD_LEN: usize = 256;
/// Most node labels (the agent's, and separately the admin's).
pub(crate) const MAX_NODE_LABELS: usize = 64;

/// A node label's key is 1-128 bytes, its value at most 1024.
pub(crate) fn label_fits(k: &str, v: &str) -> bool {
    !k.is_empty() && k.len() <= 128 && v.len() <= 1024
}

fn check_register(req: &pb::RegisterRequest) -> Result<(), ManagerError> {
    validate::validate_name("name", &req.name)?;
    if req.address.len() > MAX_FIELD_LEN || req.agent_version.len() > MAX_FIELD_LEN {
        return Err(ManagerError::BadRequest(format!(
            "address and agent_version: at most {MAX_FIELD_LEN} bytes each"
        )));
    }
    if req.labels.len() > MAX_NODE_LABELS || req.labels.iter().any(|(k, v)| !label_fits(k, v)) {
        return Err(ManagerError::BadRequest(format!(
            "labels: at most {MAX_NODE_LABELS}, keys 1-128 bytes, values up to 1024 bytes"
        )));
    }
    if !req.node_id.is_empty() && uuid::Uuid::parse_str(&req.node_id).is_err() {
        return Err(ManagerError::BadRequest(format!(
            "node_id {:?} is not a node id this manager issued: remove the agent's node-id file",
            req.node_id
        )));
    }
    Ok(())
}

/// Host statistics as clients may rely on them: a percentage within 0-100,
/// finite numbers, available amounts not above the totals. An agent is
/// trusted to measure, not to be free of bugs.
fn sanitized(mut s: pb::HostStats) -> pb::HostStats {
    let finite = |x: f64| if x.is_finite() { x.max(0.0) } else { 0.0 };
    s.cpu_percent = finite(s.cpu_percent).min(100.0);
    s.load1 = finite(s.load1);
    s.load5 = finite(s.load5);
    s.load15 = finite(s.load15);
    s.memory_available_mb = s.memory_available_mb.min(s.memory_total_mb);
    s.disk_available_mb = s.disk_available_mb.min(s.disk_total_mb);
    if s.disk_path.len() > MAX_FIELD_LEN {
        s.disk_path.clear();
    }
    s
}

impl Cluster {
    /// Registers a node, or refreshes a known one. An agent that lost its
    /// data dir gets its old id back by name, unless that node is connected.
    /// `certificate_expires_at`: when the client certificate the agent
    /// presented expires (None on a plaintext manager).
    pub async fn register(
        &self,
        req: pb::RegisterRequest,
        certificate_expires_at: Option<prost_types::Timestamp>,
    ) -> Result<String, ManagerError> {
        check_register(&req)?;
        let id = self
            .write(|st, out| {
                if let Some(at) = st.access.node_id_removed(&req.node_id) {
                    return Err(ManagerError::NodeRemoved {
                        node: format!("{:?} ({:?})", req.name, req.node_id),
                        at,
                    });
                }
                let by_name = st
                    .nodes()
                    .values()
                    .find(|n| n.node.name == req.name)
                    .map(|n| (n.node.id.clone(), n.session.is_some()));
                let id = match (&by_name, req.node_id.is_empty()) {
                    (Some((other, true)), _) if *other != req.node_id => {
                        return Err(ManagerError::NameTaken {
                            name: req.name.clone(),
                            id: other.clone(),
                        })
                    }
                    (Some((other, _)), true) => other.clone(),
                    (Some((other, _)), false) if *other != req.node_id => {
                        return Err(ManagerError::NameTaken {
                            name: req.name.clone(),
                            id: other.clone(),
                        })
                    }
                    (_, false) => req.node_id.clone(),
                    (None, true) => uuid::Uuid::new_v4().to_string(),
                };
                let ts = now();
                let entry = st
                    .nodes_mut()
                    .entry(id.clone())
                    .or_insert_with(|| NodeEntry {
                        node: pb::Node {
                            id: id.clone(),
                            state: NodeState::Disconnected as i32,
                            registered_at: Some(ts),
                            ..Default::default()
                        },
                        session: None,
                        last_seen: tokio::time::Instant::now(),
                    });
                let n = &mut entry.node;
                let renamed = n.name != req.name;
                n.name = req.name.clone();
                n.address = req.address.clone();
                n.agent_labels = req.labels.clone();
                n.labels = crate::node_admin::effective_labels(n);
                n.capacity = req.capacity;
                n.agent_version = req.agent_version.clone();
                n.certificate_expires_at = certificate_expires_at;
                n.last_heartbeat = Some(ts);
                // Host statistics are live data: memory only, never stored.
                let mut stored = n.clone();
                stored.stats = None;
                out.push(Mutation::PutNode(Box::new(stored)));
                if renamed {
                    st.node_renames = st.node_renames.wrapping_add(1);
                }
                Ok(id)
            })
            .await?;
        tracing::info!(node_id = %id, name = %req.name, "node registered");
        Ok(id)
    }

    /// Makes `tx` the node's stream (replacing an older one) and marks it READY.
    pub(crate) fn attach_session(
        &self,
        node_id: &str,
        tx: tokio::sync::mpsc::Sender<Result<pb::ManagerMessage, tonic::Status>>,
    ) -> Result<Session, ManagerError> {
        let mut st = self.lock();
        let entry = st.nodes_mut().get_mut(node_id).ok_or_else(|| {
            ManagerError::Protocol(format!(
                "node {node_id} is not registered: call Register before Connect"
            ))
        })?;
        let id = entry.session.as_ref().map_or(1, |s| s.id.wrapping_add(1));
        let session = Session {
            id,
            tx,
            cancel: self.shutdown.child_token(),
        };
        if let Some(old) = entry.session.replace(session.clone()) {
            tracing::info!(node_id, "a new session replaces the previous one");
            old.cancel.cancel();
        }
        entry.node.set_state(NodeState::Ready);
        entry.node.lost = false;
        entry.node.last_heartbeat = Some(now());
        entry.last_seen = tokio::time::Instant::now();
        drop(st);
        self.kick_scheduler();
        Ok(session)
    }

    /// Ends a session if it is still the node's current one.
    pub(crate) fn detach_session(&self, node_id: &str, session_id: u64) {
        let mut st = self.lock();
        if let Some(entry) = st.nodes_mut().get_mut(node_id) {
            if entry.session.as_ref().is_some_and(|s| s.id == session_id) {
                if let Some(s) = entry.session.take() {
                    s.cancel.cancel();
                }
                entry.node.set_state(NodeState::Disconnected);
                tracing::warn!(node_id, "node disconnected");
            }
        }
    }

    /// Records a sign of life; a DOWN node that speaks again is READY.
    /// `stats` (from a Heartbeat) replace the node's host statistics. They
    /// are live data that change every few seconds and mean nothing after a
    /// restart, so they stay in memory: no store write per heartbeat.
    ///
    /// True when the node was lost and is back on the same session: its
    /// tasks were moved meanwhile, so it must be told what it should run
    /// now ([`Cluster::resend_desired`]); a new session does that anyway.
    pub(crate) fn heartbeat(&self, node_id: &str, stats: Option<pb::HostStats>) -> bool {
        let mut st = self.lock();
        let Some(e) = st.note_alive(node_id, stats.map(sanitized)) else {
            return false;
        };
        if e.node.state() == NodeState::Down && e.session.is_some() {
            let Some(e) = st.nodes_mut().get_mut(node_id) else {
                return false;
            };
            let was_lost = e.node.lost;
            tracing::info!(node_id, was_lost, "node is heard from again: ready");
            e.node.set_state(NodeState::Ready);
            e.node.lost = false;
            drop(st);
            self.kick_scheduler();
            return was_lost;
        }
        false
    }

    /// One page of nodes in name order; the token is the last name.
    pub fn list_nodes(&self, page_size: u32, page_token: &str) -> pb::ListNodesResponse {
        let size = paging::page_size(page_size);
        let st = self.lock();
        let mut all: Vec<&NodeEntry> = st.nodes().values().collect();
        all.sort_by(|a, b| a.node.name.cmp(&b.node.name));
        let total = all.len();
        let mut page: Vec<pb::Node> = all
            .into_iter()
            .filter(|n| page_token.is_empty() || n.node.name.as_str() > page_token)
            .take(size + 1)
            .map(|n| st.node_view(n))
            .collect();
        let has_next = page.len() > size;
        page.truncate(size);
        pb::ListNodesResponse {
            next_page_token: if has_next {
                page.last().map(|n| n.name.clone()).unwrap_or_default()
            } else {
                String::new()
            },
            nodes: page,
            total_count: u64::try_from(total).unwrap_or(u64::MAX),
            has_next,
        }
    }

    /// A node by id or name.
    pub fn get_node(&self, id_or_name: &str) -> Result<pb::Node, ManagerError> {
        let st = self.lock();
        st.find_node(id_or_name)
            .map(|n| st.node_view(n))
            .ok_or_else(|| ManagerError::NodeNotFound(id_or_name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    use crate::cluster::test_cluster as cluster;

    fn stats(cpu: f64) -> pb::HostStats {
        pb::HostStats {
            cpu_percent: cpu,
            memory_total_mb: 4096,
            memory_available_mb: 1024,
            disk_total_mb: 100_000,
            disk_available_mb: 40_000,
            disk_path: "/var/lib/docker".into(),
            load1: 0.5,
            load5: 0.25,
            load15: 0.125,
            sampled_at: Some(now()),
        }
    }

    #[test]
    fn stats_are_clamped_to_what_clients_rely_on() {
        let mut s = stats(f64::NAN);
        s.load1 = f64::INFINITY;
        s.load5 = -1.0;
        s.memory_available_mb = 9999;
        s.disk_available_mb = 200_000;
        let s = sanitized(s);
        assert_eq!(s.cpu_percent, 0.0);
        assert_eq!((s.load1, s.load5, s.load15), (0.0, 0.0, 0.125));
        assert_eq!(s.memory_available_mb, 4096);
        assert_eq!(s.disk_available_mb, 100_000);
        assert_eq!(sanitized(stats(250.0)).cpu_percent, 100.0);
        let fine = stats(42.5);
        assert_eq!(sanitized(fine.clone()), fine);
    }

    #[tokio::test]
    async fn heartbeat_stats_live_in_memory_only() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(dir.path()).await;
        let id = c
            .register(
                pb::RegisterRequest {
                    name: "node-a".into(),
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap();
        assert!(c.get_node("node-a").unwrap().stats.is_none());

        c.heartbeat(&id, Some(stats(12.5)));
        let n = c.get_node("node-a").unwrap();
        assert_eq!(n.stats.as_ref().unwrap().cpu_percent, 12.5);
        // A message without stats keeps the last sample.
        c.heartbeat(&id, None);
        assert_eq!(c.get_node(&id).unwrap().stats, n.stats);
        c.heartbeat(&id, Some(stats(50.0)));
        let listed = c.list_nodes(0, "");
        assert_eq!(listed.nodes[0].stats.as_ref().unwrap().cpu_percent, 50.0);

        // Re-registering writes the node to the store, without its stats.
        c.register(
            pb::RegisterRequest {
                node_id: id.clone(),
                name: "node-a".into(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
        assert!(c.get_node(&id).unwrap().stats.is_some());
        c.shutdown(Duration::from_secs(1)).await;
        drop(c);

        let c = cluster(dir.path()).await;
        let n = c.get_node(&id).unwrap();
        assert_eq!(n.name, "node-a");
        assert!(n.stats.is_none(), "{n:?}");
        c.shutdown(Duration::from_secs(1)).await;
    }
}
