//! Readable one-line views of tasks and nodes, for assertion messages.
use minkube::convert::{node_state_name, task_state_name};
use minkube::pb::{GetTaskResponse, Node, NodeState, Task, TaskEvent, TaskState, TaskStatus};

/// The observed state of a task.
pub fn state(task: &Task) -> TaskState {
    task.status
        .as_ref()
        .and_then(|s| TaskState::try_from(s.state).ok())
        .unwrap_or(TaskState::Unspecified)
}

/// The status of a task (default if absent).
pub fn status(task: &Task) -> TaskStatus {
    task.status.clone().unwrap_or_default()
}

/// The state an event records.
pub fn event_state(event: &TaskEvent) -> TaskState {
    TaskState::try_from(event.state).unwrap_or(TaskState::Unspecified)
}

/// The connection state of a node.
pub fn node_state(node: &Node) -> NodeState {
    NodeState::try_from(node.state).unwrap_or(NodeState::Unspecified)
}

/// `id state "reason" node=.. exit=.. attempt=..`.
pub fn task(task: &Task) -> String {
    let s = status(task);
    format!(
        "{} {} {:?} node={}({}) exit={:?} attempt={} restarts={} transient={} container={} ports={:?}",
        task.id,
        task_state_name(state(task)),
        s.reason,
        s.node_name,
        s.node_id,
        s.exit_code,
        s.attempt,
        s.restarts,
        s.transient_failures,
        s.container_id,
        s.ports
            .iter()
            .map(|p| (p.container_port, p.host_port))
            .collect::<Vec<_>>(),
    )
}

/// A task with its events.
pub fn task_with_events(resp: &GetTaskResponse) -> String {
    let head = resp
        .task
        .as_ref()
        .map(task)
        .unwrap_or_else(|| "<no task in response>".to_string());
    let events: Vec<String> = resp
        .events
        .iter()
        .map(|e| {
            format!(
                "{}(attempt {}, {:?}, at {})",
                task_state_name(event_state(e)),
                e.attempt,
                e.reason,
                e.timestamp
                    .as_ref()
                    .map(|t| format!("{}.{:03}", t.seconds, t.nanos / 1_000_000))
                    .unwrap_or_default()
            )
        })
        .collect();
    format!("{head}; events: [{}]", events.join(", "))
}

/// `name state [lost] id`.
pub fn node(node: &Node) -> String {
    format!(
        "{} {}{} {}",
        node.name,
        node_state_name(node_state(node)),
        if node.lost { " lost" } else { "" },
        node.id
    )
}
