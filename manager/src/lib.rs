//! minkube-manager: the control plane. gRPC API for users and agents, the
//! scheduler, the dispatcher (one stream per agent) and the durable store.

pub mod access;
pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod dispatcher;
pub mod error;
pub mod grpc_metrics;
pub mod init;
pub mod introspection;
pub mod limits;
pub mod liveness;
pub mod logs;
pub mod memory;
pub mod node_admin;
pub mod node_removal;
pub mod nodes;
pub mod pki;
pub mod policy;
pub mod release;
pub mod retention;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod status;
pub mod store;
pub mod task_table;
pub mod tasks;
pub mod watch;

#[cfg(test)]
mod fuzz_tests;

pub use config::Args;
pub use server::{Manager, ServeError};
