//! Docker label keys that mark a container as minkube's. The agent finds its
//! containers by these, never by name.

/// Present (value "true") on every container minkube creates.
pub const MANAGED: &str = "minkube.managed";
/// Task id of the container.
pub const TASK_ID: &str = "minkube.task-id";
/// Task name, for people reading `docker ps`.
pub const TASK_NAME: &str = "minkube.task-name";
/// Node id of the agent that created the container.
pub const NODE_ID: &str = "minkube.node-id";
/// Placement attempt of the task.
pub const ATTEMPT: &str = "minkube.attempt";
/// Prefix reserved for minkube's own labels; user labels may not use it.
pub const RESERVED_PREFIX: &str = "minkube.";
