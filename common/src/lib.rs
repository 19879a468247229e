//! Shared by the manager, the agent and the CLI: the task state machine,
//! spec validation, retry policy, label names, telemetry setup and trace-context propagation.

pub mod admin;
pub mod config_file;
pub mod constraints;
pub mod duration;
pub mod host_access;
pub mod labels;
pub mod paging;
pub mod retry;
pub mod runtime;
pub mod sd_notify;
pub mod signals;
pub mod state_machine;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
pub mod trace_ids;
pub mod validate;

#[cfg(test)]
mod fuzz_tests;

pub use minkube::pb;
