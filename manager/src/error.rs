//! The manager's error type and its one mapping to gRPC status codes.
use minkube_common::state_machine::IllegalTransition;
use minkube_common::validate::ValidationError;
use tonic::{Code, Status};

use crate::store::StoreError;

/// Everything a manager operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The request breaks a validation rule; the message names the field.
    #[error("invalid request: {0}")]
    Invalid(#[from] ValidationError),
    /// A malformed request outside the spec (page token, id format, ...).
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// No task with that id.
    #[error("task {0} not found (list tasks with `minkube ps`)")]
    TaskNotFound(String),
    /// No node with that id or name.
    #[error("node {0:?} not found (list nodes with `minkube nodes`)")]
    NodeNotFound(String),
    /// Another connected agent holds the node name.
    #[error("node name {name:?} is held by node {id}, which is connected: give this agent another --name")]
    NameTaken {
        /// The contested name.
        name: String,
        /// Node currently holding it.
        id: String,
    },
    /// An agent opened a stream without registering, or broke the session protocol.
    #[error("agent protocol violation: {0}")]
    Protocol(String),
    /// A state change the state machine forbids.
    #[error(transparent)]
    Transition(#[from] IllegalTransition),
    /// The task has no container to read logs from.
    #[error("task {0} has no container yet (it is pending, or its container was never created): see `minkube get ID`")]
    NoContainer(String),
    /// The task's node is not connected; its logs are on that node.
    #[error("node {node} is offline (disconnected, last heard from {silent_secs}s ago): logs are read from the node; try again once it reconnects")]
    NodeOffline {
        /// Node name.
        node: String,
        /// Seconds since the node was last heard from.
        silent_secs: u64,
    },
    /// The node already serves as many log streams as allowed.
    #[error("node {node} already serves {limit} log streams: close one, or try again later")]
    TooManyLogStreams {
        /// Node id.
        node: String,
        /// The limit.
        limit: usize,
    },
    /// A node still in use was asked to be removed without force.
    #[error("node {node:?} {why}: drain it and stop its agent first (`minkube node drain`), or remove it anyway with --force (its tasks are then handled as on a lost node)")]
    NodeInUse {
        /// Node name.
        node: String,
        /// What keeps it: connected, or its tasks.
        why: String,
    },
    /// The node (by certificate or id) was removed from the cluster.
    #[error("node {node} was removed from the cluster (at {at}, Unix seconds) and cannot come back as it was: to bring this machine back, stop its agent, empty its data dir and start it again (with --join-token on a secured cluster); it joins as a new node")]
    NodeRemoved {
        /// Node name or id.
        node: String,
        /// When it was removed, Unix seconds.
        at: u64,
    },
    /// A token with that name exists.
    #[error("a token named {0:?} exists: pick another name, or revoke it first")]
    TokenExists(String),
    /// No token with that name.
    #[error("no token named {0:?} (list them with `minkube token list`)")]
    TokenNotFound(String),
    /// Credentials missing or wrong (e.g. a rotated join token).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this (e.g. a node acting for another node).
    #[error("{0}")]
    PermissionDenied(String),
    /// The operation needs TLS, and the manager serves plaintext.
    #[error("{0}")]
    NotSecured(String),
    /// The cluster CA failed.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// Storage failed or is shutting down.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ManagerError> for Status {
    fn from(e: ManagerError) -> Self {
        let code = match &e {
            ManagerError::Invalid(_) | ManagerError::BadRequest(_) => Code::InvalidArgument,
            ManagerError::TaskNotFound(_) | ManagerError::NodeNotFound(_) => Code::NotFound,
            ManagerError::NameTaken { .. } | ManagerError::TokenExists(_) => Code::AlreadyExists,
            ManagerError::TokenNotFound(_) => Code::NotFound,
            ManagerError::Unauthenticated(_) | ManagerError::NodeRemoved { .. } => {
                Code::Unauthenticated
            }
            ManagerError::PermissionDenied(_) => Code::PermissionDenied,
            ManagerError::NotSecured(_) | ManagerError::NodeInUse { .. } => {
                Code::FailedPrecondition
            }
            ManagerError::Pki(crate::pki::PkiError::BadCsr(_)) => Code::InvalidArgument,
            ManagerError::Pki(_) => Code::Internal,
            ManagerError::Protocol(_)
            | ManagerError::Transition(_)
            | ManagerError::NoContainer(_) => Code::FailedPrecondition,
            ManagerError::NodeOffline { .. } => Code::Unavailable,
            ManagerError::TooManyLogStreams { .. } => Code::ResourceExhausted,
            ManagerError::Store(StoreError::Closed) => Code::Unavailable,
            ManagerError::Store(_) => Code::Internal,
        };
        let mut status = Status::new(code, e.to_string());
        if let ManagerError::NodeRemoved { at, .. } = e {
            // What the agent acts on: it stops its containers.
            status
                .metadata_mut()
                .insert(minkube::NODE_REMOVED_METADATA, at.into());
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        let v = ValidationError {
            field: "spec.memory_mb".into(),
            message: "too small".into(),
        };
        let s = Status::from(ManagerError::from(v));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "invalid request: spec.memory_mb: too small");
        let s = Status::from(ManagerError::TaskNotFound("x".into()));
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().contains("not found"));
        let s = Status::from(ManagerError::Store(StoreError::Closed));
        assert_eq!(s.code(), Code::Unavailable);
    }
}
