//! Tokens, the join token and joining: the AccessService and the checks
//! behind AgentService.Join.
use std::sync::Arc;

use minkube::pb::{self, access_service_server::AccessService, Role};
use tonic::{Request, Response, Status};

use crate::auth::tokens::JoinRefusal;
use crate::auth::Identity;
use crate::cluster::Cluster;
use crate::error::ManagerError;

/// A duration for a message: "40s", "25 min", "26 h".
fn roughly(d: std::time::Duration) -> String {
    match d.as_secs() {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

impl Cluster {
    /// Creates a token; returns its details and secret.
    pub async fn create_token(&self, name: &str, role: Role) -> Result<String, ManagerError> {
        self.write(|st, out| st.access.create(name, role, out))
            .await
    }

    /// Revokes a token.
    pub async fn revoke_token(&self, name: &str) -> Result<(), ManagerError> {
        self.write(|st, out| st.access.revoke(name, out)).await
    }

    /// Replaces the join token; returns the new one.
    pub async fn rotate_join_token(&self) -> Result<String, ManagerError> {
        self.write(|st, out| Ok(st.access.rotate_join(out))).await
    }

    /// Every token.
    pub fn list_tokens(&self) -> Vec<pb::TokenInfo> {
        self.lock().access.list()
    }

    /// Checks a join request: the join token must be the current one, the
    /// name valid, and no connected agent may hold it (a node that lost its
    /// data dir may join again under its name once it is disconnected).
    pub fn check_join(&self, token: &str, name: &str) -> Result<(), ManagerError> {
        minkube_common::validate::validate_name("name", name)?;
        let st = self.lock();
        let checked = st.access.check_join_token(
            token,
            std::time::SystemTime::now(),
            self.config.join_token_ttl,
        );
        match checked {
            Ok(()) => {}
            Err(JoinRefusal::Wrong) => {
                return Err(ManagerError::Unauthenticated(
                    "the join token is wrong or was rotated: get the current one from an admin (`minkube token rotate-join` prints a new one)".into(),
                ))
            }
            Err(JoinRefusal::Expired { age }) => {
                return Err(ManagerError::Unauthenticated(format!(
                    "the join token expired: it was made {} ago and join tokens last {} (--join-token-ttl); an admin makes a new one with `minkube token rotate-join`",
                    roughly(age),
                    roughly(self.config.join_token_ttl.unwrap_or_default())
                )))
            }
        }
        if let Some(n) = st.find_node(name) {
            if n.session.is_some() {
                return Err(ManagerError::NameTaken {
                    name: name.to_string(),
                    id: n.node.id.clone(),
                });
            }
        }
        Ok(())
    }
}

/// The AccessService.
#[derive(Clone)]
pub struct AccessApi {
    cluster: Arc<Cluster>,
}

impl AccessApi {
    /// Wraps the cluster.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }
}

/// The caller, as the auth layer identified it.
pub fn identity_of<T>(req: &Request<T>) -> Identity {
    req.extensions()
        .get::<Identity>()
        .cloned()
        .unwrap_or(Identity::Unauthenticated)
}

#[tonic::async_trait]
impl AccessService for AccessApi {
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let r = req.into_inner();
        let role = Role::try_from(r.role).unwrap_or(Role::Unspecified);
        let secret = self.cluster.create_token(&r.name, role).await?;
        let token = self
            .cluster
            .list_tokens()
            .into_iter()
            .find(|t| t.name == r.name);
        Ok(Response::new(pb::CreateTokenResponse { token, secret }))
    }

    async fn list_tokens(
        &self,
        _req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        Ok(Response::new(pb::ListTokensResponse {
            tokens: self.cluster.list_tokens(),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.cluster.revoke_token(&req.into_inner().name).await?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn rotate_join_token(
        &self,
        _req: Request<pb::RotateJoinTokenRequest>,
    ) -> Result<Response<pb::RotateJoinTokenResponse>, Status> {
        let join_token = self.cluster.rotate_join_token().await?;
        Ok(Response::new(pb::RotateJoinTokenResponse { join_token }))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let id = identity_of(&req);
        Ok(Response::new(pb::WhoAmIResponse {
            name: id.label(),
            role: id.role() as i32,
        }))
    }
}
