//! Shared harness for the end-to-end tests: real binaries, real Docker, real
//! gRPC on loopback. Each test builds its own [`Cluster`] (manager, agents,
//! temp dir, image and run id) and everything it started is removed on drop.
#![allow(clippy::unwrap_used)]

mod api;
pub mod binaries;
mod cli;
pub mod cluster;
pub mod compose;
pub mod describe;
pub mod docker;
pub mod image;
mod nodes;
pub mod options;
pub mod otlp;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod registry;
mod report;
pub mod signal;
mod startup;
pub mod wait;

pub use cluster::Cluster;
pub use options::{AgentOptions, ClusterBuilder};
pub use wait::{wait_for, POLL, WAIT};
