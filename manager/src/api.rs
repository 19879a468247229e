//! gRPC services: thin adapters from protobuf requests to [`Cluster`] calls.
use std::sync::Arc;

use minkube::convert::task_state_name;
use minkube::pb::TaskState;
use minkube::pb::{
    self, agent_service_server::AgentService, control_service_server::ControlService,
};
use tonic::{Request, Response, Status, Streaming};

use crate::access::identity_of;
use crate::auth::Identity;
use crate::cluster::Cluster;
use crate::dispatcher::{self, DownStream};
use crate::error::ManagerError;
use crate::logs::TaskLogStream;
use crate::pki::Pki;
use crate::tasks::TaskFilter;
use crate::watch::{WatchFilter, WatchStream};

/// Most state filters in one ListTasks or WatchTasks request.
const MAX_STATE_FILTERS: usize = 8;

/// The user-facing service.
#[derive(Clone)]
pub struct ControlApi {
    cluster: Arc<Cluster>,
}

impl ControlApi {
    /// Wraps the cluster.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }

    fn filter(&self, req: &pb::ListTasksRequest) -> Result<TaskFilter, ManagerError> {
        Ok(TaskFilter {
            states: parse_states(&req.states)?,
            node_id: self.node_filter(&req.node)?,
        })
    }

    fn node_filter(&self, node: &str) -> Result<Option<String>, ManagerError> {
        if node.is_empty() {
            Ok(None)
        } else {
            self.cluster.resolve_node_id(node).map(Some)
        }
    }

    fn watch_filter(&self, req: &pb::WatchTasksRequest) -> Result<WatchFilter, ManagerError> {
        let task_id = if req.task_id.is_empty() {
            None
        } else if uuid::Uuid::parse_str(&req.task_id).is_err() {
            return Err(ManagerError::BadRequest(format!(
                "task_id: {:?} is not a task id (ids are UUIDs, see `minkube ps`)",
                req.task_id
            )));
        } else {
            Some(req.task_id.clone())
        };
        Ok(WatchFilter {
            task_id,
            node_id: self.node_filter(&req.node)?,
            states: parse_states(&req.states)?,
        })
    }
}

/// Validates a states filter; UNSPECIFIED entries are ignored.
fn parse_states(raw: &[i32]) -> Result<Vec<TaskState>, ManagerError> {
    if raw.len() > MAX_STATE_FILTERS {
        return Err(ManagerError::BadRequest(format!(
            "states: at most {MAX_STATE_FILTERS} filters"
        )));
    }
    let mut states = Vec::with_capacity(raw.len());
    for s in raw {
        match TaskState::try_from(*s) {
            Ok(TaskState::Unspecified) => {}
            Ok(st) => states.push(st),
            Err(_) => {
                return Err(ManagerError::BadRequest(format!(
                    "states: {s} is not a task state (use {}..{})",
                    task_state_name(TaskState::Pending),
                    task_state_name(TaskState::Failed)
                )))
            }
        }
    }
    Ok(states)
}

#[tonic::async_trait]
impl ControlService for ControlApi {
    async fn create_task(
        &self,
        req: Request<pb::CreateTaskRequest>,
    ) -> Result<Response<pb::CreateTaskResponse>, Status> {
        let caller = identity_of(&req);
        if let Some(spec) = &req.get_ref().spec {
            crate::auth::check_host_access(
                spec,
                &caller,
                &self.cluster.config.allowed_host_access,
            )?;
        }
        let task = self.cluster.create_task(req.into_inner().spec).await?;
        Ok(Response::new(pb::CreateTaskResponse { task: Some(task) }))
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let (task, events) = self.cluster.get_task(&req.into_inner().id).await?;
        Ok(Response::new(pb::GetTaskResponse {
            task: Some(task),
            events,
        }))
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let req = req.into_inner();
        let filter = self.filter(&req)?;
        Ok(Response::new(self.cluster.list_tasks(
            &filter,
            req.page_size,
            &req.page_token,
        )?))
    }

    async fn update_node(
        &self,
        req: Request<pb::UpdateNodeRequest>,
    ) -> Result<Response<pb::UpdateNodeResponse>, Status> {
        let (node, tasks_draining) = self.cluster.update_node(req.into_inner()).await?;
        Ok(Response::new(pb::UpdateNodeResponse {
            node: Some(node),
            tasks_draining,
        }))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let (node, tasks_moved) = self.cluster.remove_node(req.into_inner()).await?;
        Ok(Response::new(pb::RemoveNodeResponse {
            node: Some(node),
            tasks_moved,
        }))
    }

    async fn stop_task(
        &self,
        req: Request<pb::StopTaskRequest>,
    ) -> Result<Response<pb::StopTaskResponse>, Status> {
        let task = self.cluster.stop_task(&req.into_inner().id).await?;
        Ok(Response::new(pb::StopTaskResponse { task: Some(task) }))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let req = req.into_inner();
        Ok(Response::new(
            self.cluster.list_nodes(req.page_size, &req.page_token),
        ))
    }

    async fn get_node(
        &self,
        req: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::GetNodeResponse>, Status> {
        let node = self.cluster.get_node(&req.into_inner().node)?;
        Ok(Response::new(pb::GetNodeResponse { node: Some(node) }))
    }

    type WatchTasksStream = WatchStream;

    async fn watch_tasks(
        &self,
        req: Request<pb::WatchTasksRequest>,
    ) -> Result<Response<Self::WatchTasksStream>, Status> {
        let filter = self.watch_filter(&req.into_inner())?;
        Ok(Response::new(self.cluster.watch_tasks(filter)))
    }

    type TaskLogsStream = TaskLogStream;

    async fn task_logs(
        &self,
        req: Request<pb::TaskLogsRequest>,
    ) -> Result<Response<Self::TaskLogsStream>, Status> {
        let stream = self.cluster.task_logs(req.into_inner()).await?;
        Ok(Response::new(stream))
    }
}

/// The agent-facing service.
#[derive(Clone)]
pub struct AgentApi {
    cluster: Arc<Cluster>,
    /// The cluster CA; None on a plaintext (`--insecure`) manager.
    pki: Option<Arc<Pki>>,
}

impl AgentApi {
    /// Wraps the cluster; `pki` signs the certificates of joining nodes.
    pub fn new(cluster: Arc<Cluster>, pki: Option<Arc<Pki>>) -> Self {
        Self { cluster, pki }
    }

    /// The cluster CA, or the error for a plaintext manager: `what` says
    /// what agents do there instead.
    fn pki(&self, what: &str) -> Result<&Pki, ManagerError> {
        self.pki.as_deref().ok_or_else(|| {
            ManagerError::NotSecured(format!(
                "this manager serves plaintext without authentication (--insecure): {what}"
            ))
        })
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let pki = self.pki("agents connect with --insecure, no join needed")?;
        let r = req.into_inner();
        self.cluster.check_join(&r.join_token, &r.name)?;
        let certificate_pem = pki
            .sign_node(&r.csr_pem, &r.name)
            .map_err(ManagerError::from)?;
        tracing::info!(node = %r.name, "node joined: certificate issued");
        Ok(Response::new(pb::JoinResponse {
            certificate_pem,
            ca_pem: pki.ca_pem().to_string(),
        }))
    }

    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        if let Identity::Node { name } = identity_of(&req) {
            if req.get_ref().name != name {
                return Err(ManagerError::PermissionDenied(format!(
                    "this agent's certificate names node {name:?}; it cannot register as {:?}",
                    req.get_ref().name
                ))
                .into());
            }
        }
        // The expiry of the certificate presented, for operators to see
        // that renewal works (checked by TLS already; this only reads it).
        let certificate_expires_at = req
            .peer_certs()
            .and_then(|certs| minkube_common::tls::validity_of(certs.first()?.as_ref()))
            .map(|(_, not_after)| prost_types::Timestamp {
                seconds: not_after,
                nanos: 0,
            });
        let node_id = self
            .cluster
            .register(req.into_inner(), certificate_expires_at)
            .await?;
        Ok(Response::new(pb::RegisterResponse { node_id }))
    }

    async fn renew_certificate(
        &self,
        req: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, Status> {
        let pki = self.pki("agents have no certificate to renew")?;
        // The auth layer let only node certificates through; the new
        // certificate names the node of the one presented.
        let Identity::Node { name } = identity_of(&req) else {
            return Err(Status::unauthenticated(
                "renewing a node certificate needs the node's current certificate: join again with a join token if it expired",
            ));
        };
        let certificate_pem = pki
            .sign_node(&req.into_inner().csr_pem, &name)
            .map_err(ManagerError::from)?;
        tracing::info!(node = %name, "node certificate renewed");
        Ok(Response::new(pb::RenewCertificateResponse {
            certificate_pem,
        }))
    }

    type ConnectStream = DownStream;

    async fn connect(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let certified = match identity_of(&req) {
            Identity::Node { name } => Some(name),
            _ => None,
        };
        let stream =
            dispatcher::open_session(Arc::clone(&self.cluster), req.into_inner(), certified)
                .await?;
        Ok(Response::new(stream))
    }
}
