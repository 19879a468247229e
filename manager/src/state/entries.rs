//! The entries of the model: a task with its history, a node with its
//! stream.
use std::collections::HashMap;
use std::sync::Arc;

use minkube::pb::{self, TaskState};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::StoredTask;

/// A task with its history.
#[derive(Debug, Clone, Default)]
pub struct TaskEntry {
    /// The API object.
    pub task: pb::Task,
    /// Highest agent sequence applied for the current attempt.
    pub last_sequence: u64,
    /// Every event, oldest first.
    pub events: Vec<pb::TaskEvent>,
    /// W3C trace context of the create request (empty if untraced). Set
    /// once, shared with every record of the task put since.
    pub trace_context: Arc<HashMap<String, String>>,
}

impl TaskEntry {
    /// Observed state.
    pub fn state(&self) -> TaskState {
        self.status().state()
    }

    /// Observed status (always present on stored tasks).
    pub fn status(&self) -> &pb::TaskStatus {
        static EMPTY: std::sync::LazyLock<pb::TaskStatus> =
            std::sync::LazyLock::new(pb::TaskStatus::default);
        self.task.status.as_ref().unwrap_or(&EMPTY)
    }

    /// Memory the task reserves on its node.
    pub fn memory_mb(&self) -> u64 {
        self.task.spec.as_ref().map_or(0, |s| s.memory_mb)
    }

    pub(super) fn stored(&self) -> StoredTask {
        let trace_context = if minkube_common::state_machine::is_terminal(self.state()) {
            finished_trace_context()
        } else {
            self.trace_context.clone()
        };
        StoredTask {
            task: Some(self.task.clone()),
            last_sequence: self.last_sequence,
            trace_context,
        }
    }
}

/// The trace context a finished task keeps: none. It is the parent of the
/// spans of work still to do for the task (placement, the agent's start
/// and stop), and a finished task gets none; its trace id stays in the
/// task. Dropping it saves ~70 bytes per finished task in memory and on
/// disk.
pub fn finished_trace_context() -> Arc<HashMap<String, String>> {
    static EMPTY: std::sync::LazyLock<Arc<HashMap<String, String>>> =
        std::sync::LazyLock::new(Arc::default);
    Arc::clone(&EMPTY)
}

/// The live stream to a node's agent.
#[derive(Debug, Clone)]
pub struct Session {
    /// Distinguishes a session from the one that replaced it.
    pub id: u64,
    /// Down-stream messages; bounded: a full or closed channel means the agent is gone.
    pub tx: mpsc::Sender<Result<pb::ManagerMessage, tonic::Status>>,
    /// Cancels the session's reader task.
    pub cancel: CancellationToken,
}

/// A node and its session, if connected.
#[derive(Debug)]
pub struct NodeEntry {
    /// The API object (allocated / active_tasks are filled in on read).
    pub node: pb::Node,
    /// The open session.
    pub session: Option<Session>,
    /// Last message from the agent, on the monotonic clock (node timeout and
    /// reconnect grace are measured from it).
    pub last_seen: tokio::time::Instant,
}
