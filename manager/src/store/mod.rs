//! Durable storage of tasks, events and nodes behind a small trait, so the
//! embedded redb store (the default) and an etcd store can be swapped.
//!
//! Writes are whole-record puts grouped into batches: the [`Committer`]
//! commits every batch waiting at once in ONE transaction (group commit), so
//! throughput grows with load instead of paying one fsync per request. The
//! embedded store makes a transaction durable by appending it to a journal;
//! the B-tree catches up at checkpoints (see [`RedbStore`]).
use minkube::pb;

mod btree;
pub mod committer;
mod event_record;
mod journal;
mod pending;
mod record;
mod redb_store;

pub use committer::{CommitPermit, Committer};
pub use record::{StoredTask, StoredToken};
pub use redb_store::RedbStore;

/// One change to persist.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// Insert or replace a task record.
    PutTask(Box<StoredTask>),
    /// Remove a task and all of its events.
    DeleteTask(String),
    /// Append (or replace) event number `index` of a task.
    PutEvent {
        /// Task id.
        task_id: String,
        /// Position in the task's history, from 0.
        index: u32,
        /// The event.
        event: Box<pb::TaskEvent>,
    },
    /// Insert or replace a node.
    PutNode(Box<pb::Node>),
    /// Insert or replace an API token.
    PutToken(Box<StoredToken>),
    /// Remove an API token by name.
    DeleteToken(String),
    /// Replace the join token.
    PutJoinToken {
        /// Hex SHA-256 of the secret.
        sha256: String,
        /// When it was made, in Unix seconds (it expires by `--join-token-ttl`).
        issued_at: u64,
    },
    /// Remove a node and record that its id is gone for good and its name's
    /// certificates issued until `removed_at` are revoked.
    RemoveNode {
        /// Node id.
        id: String,
        /// Node name (the CN of its certificates).
        name: String,
        /// When it was removed, in Unix seconds.
        removed_at: u64,
    },
}

/// The small records the store holds, read once at start-up (tasks are
/// streamed by [`Store::load_tasks`]).
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Nodes.
    pub nodes: Vec<pb::Node>,
    /// API tokens, by name.
    pub tokens: Vec<StoredToken>,
    /// Hex SHA-256 of the join token, once `init` made one.
    pub join_token_sha256: Option<String>,
    /// When the join token was made, in Unix seconds (absent in stores
    /// written before join tokens expired).
    pub join_token_issued_at: Option<u64>,
    /// Names of removed nodes and when each was removed, in Unix seconds.
    pub removed_nodes: Vec<(String, u64)>,
    /// Ids of removed nodes and when each was removed.
    pub removed_node_ids: Vec<(String, u64)>,
}

/// A storage failure. The message says which operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The underlying database failed.
    #[error("store {op} failed: {message}")]
    Backend {
        /// What was being done.
        op: &'static str,
        /// The backend's error.
        message: String,
    },
    /// A stored record could not be decoded.
    #[error("stored record {key} is corrupt: {message}")]
    Corrupt {
        /// Key of the record.
        key: String,
        /// Decoder error.
        message: String,
    },
    /// The committer has stopped (the manager is shutting down).
    #[error("the store is shutting down")]
    Closed,
}

/// A durable key-value store for minkube's records.
pub trait Store: Send + Sync + 'static {
    /// Reads nodes, tokens and settings (start-up only).
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Streams every task in id order (creation order: ids are UUIDv7) to
    /// `on_task` (start-up only). Unfinished tasks come with their events;
    /// finished ones with none: their history is read on demand with
    /// [`Store::task_events`], so a store of a million finished tasks loads
    /// fast and costs little memory.
    fn load_tasks(
        &self,
        on_task: &mut dyn FnMut(StoredTask, Vec<pb::TaskEvent>),
    ) -> Result<(), StoreError>;
    /// The events of one task, oldest first (empty for an unknown task).
    fn task_events(&self, task_id: &str) -> Result<Vec<pb::TaskEvent>, StoreError>;
    /// Applies all mutations in one durable transaction: all or none.
    fn commit(&self, batch: &[Mutation]) -> Result<(), StoreError>;
}

/// A little over `last`: sizes a list or map from the one before it (most
/// journal segments are alike).
fn with_headroom(last: usize) -> usize {
    last + last / 8
}
