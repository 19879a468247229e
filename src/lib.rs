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

/// Encoded `FileDescriptorSet` of every minkube proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("minkube_descriptor");
