//! The stored form of a task: the public `Task` plus manager-only fields.
use minkube::pb;

/// A task as stored: the API object plus what only the manager needs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredTask {
    /// The task as clients see it.
    #[prost(message, optional, tag = "1")]
    pub task: Option<pb::Task>,
    /// Highest agent sequence applied for the current attempt; older or
    /// repeated updates are ignored.
    #[prost(uint64, tag = "2")]
    pub last_sequence: u64,
    /// W3C trace context of the request that created the task: the parent
    /// of its scheduling spans and of the agent's work for it.
    #[prost(map = "string, string", tag = "3")]
    pub trace_context: std::collections::HashMap<String, String>,
}
