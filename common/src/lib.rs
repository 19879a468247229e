//! Shared by the manager, the agent and the CLI: the task state machine,
//! spec validation, retry policy, label names and telemetry setup.

pub mod admin;
pub mod duration;
pub mod labels;
pub mod paging;
pub mod retry;
pub mod state_machine;
pub mod telemetry;
pub mod validate;

pub use minkube::pb;
