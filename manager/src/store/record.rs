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

/// An API token as stored: never its secret, only the secret's SHA-256.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredToken {
    /// Unique name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `pb::Role` value.
    #[prost(int32, tag = "2")]
    pub role: i32,
    /// Hex SHA-256 of the secret.
    #[prost(string, tag = "3")]
    pub sha256: String,
    /// When it was created.
    #[prost(message, optional, tag = "4")]
    pub created_at: Option<prost_types::Timestamp>,
}
