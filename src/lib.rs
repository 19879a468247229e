//! The minkube protocol crate: generated gRPC stubs and messages from
//! `proto/minkube/v1` plus small typed helpers for clients.

/// Generated code for package `minkube.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("minkube.v1");
}

pub mod client;
pub mod convert;
pub mod trace;

/// Response metadata key of the UNAUTHENTICATED status a removed node's
/// agent gets (value: when the node was removed, Unix seconds). The agent
/// then stops its containers: the cluster runs its tasks elsewhere.
pub const NODE_REMOVED_METADATA: &str = "minkube-node-removed";

/// Encoded `FileDescriptorSet` of every minkube proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("minkube_descriptor");
