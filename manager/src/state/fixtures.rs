//! Builders shared by the unit tests of the manager.
#![allow(clippy::unwrap_used)]
use super::*;

/// A valid 16 MB spec named `name`, as `CreateTask` takes it.
pub(crate) fn spec(name: &str) -> pb::TaskSpec {
    pb::TaskSpec {
        name: name.into(),
        image: "busybox".into(),
        memory_mb: 16,
        ..Default::default()
    }
}

/// A new 10 MB PENDING task named "t".
pub(crate) fn pending_task(id: &str) -> pb::Task {
    pb::Task {
        id: id.into(),
        spec: Some(pb::TaskSpec {
            name: "t".into(),
            memory_mb: 10,
            ..Default::default()
        }),
        status: Some(pb::TaskStatus {
            state: TaskState::Pending as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Adds a 10 MB task with `policy` and places it on `node` as attempt 1.
pub(crate) fn placed(st: &mut State, id: &str, node: &str, policy: pb::RestartPolicy) {
    let mut out = Vec::new();
    st.insert_task(
        pb::Task {
            id: id.into(),
            spec: Some(pb::TaskSpec {
                memory_mb: 10,
                restart_policy: policy as i32,
                ..Default::default()
            }),
            desired_state: pb::DesiredState::Running as i32,
            status: Some(pb::TaskStatus {
                state: TaskState::Pending as i32,
                ..Default::default()
            }),
            ..Default::default()
        },
        &mut out,
    );
    st.transition(
        id,
        TaskState::Scheduled,
        "placed",
        |s| {
            s.node_id = node.into();
            s.attempt = 1;
        },
        &mut out,
    )
    .unwrap();
}
