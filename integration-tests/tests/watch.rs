//! WatchTasks: the snapshot marker, a task's life as a stream of changes,
//! filter validation, and `minkube get ID --watch`.
#![allow(clippy::unwrap_used)]

use minkube::pb::watch_tasks_response::Kind;
use minkube::pb::{TaskState, WatchTasksRequest, WatchTasksResponse};
use minkube_integration_tests::{Cluster, WAIT};
use tonic::{Code, Streaming};

/// The next message of a watch, within a bounded wait.
async fn next(stream: &mut Streaming<WatchTasksResponse>) -> Kind {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap_or_else(|_| panic!("no watch message within {WAIT:?}"))
        .unwrap_or_else(|s| panic!("watch failed: {s:?}"))
        .unwrap_or_else(|| panic!("the watch stream ended"))
        .kind
        .unwrap_or_else(|| panic!("a watch message without kind"))
}

async fn watch(cluster: &Cluster, req: WatchTasksRequest) -> Streaming<WatchTasksResponse> {
    cluster
        .control()
        .await
        .watch_tasks(req)
        .await
        .unwrap_or_else(|s| panic!("WatchTasks failed: {s:?}"))
        .into_inner()
}

/// Reads live changes of `id` until it is completed; returns the states of
/// their events with repeats collapsed.
async fn states_until_completed(
    stream: &mut Streaming<WatchTasksResponse>,
    id: &str,
) -> Vec<TaskState> {
    let mut states: Vec<TaskState> = Vec::new();
    loop {
        match next(stream).await {
            Kind::Change(c) => {
                let task = c.task.unwrap();
                if task.id != id {
                    continue;
                }
                if let Some(e) = c.event {
                    assert_eq!(e.task_id, id, "the event belongs to the task");
                    if states.last() != Some(&e.state()) {
                        states.push(e.state());
                    }
                }
                let state = task.status.unwrap().state();
                assert_ne!(state, TaskState::Failed, "{states:?}");
                if state == TaskState::Completed {
                    return states;
                }
            }
            other => panic!("only changes after the snapshot, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_life_is_streamed_after_the_snapshot() {
    let cluster = Cluster::start(&["a"]).await;

    // Opened before the task exists: an empty snapshot, then everything.
    let mut all = watch(&cluster, WatchTasksRequest::default()).await;
    assert!(
        matches!(next(&mut all).await, Kind::SnapshotDone(_)),
        "no task yet: the marker comes first"
    );

    let task = cluster
        .create(cluster.spec("watched", &["sh", "-c", "exit 0"]))
        .await;
    // Opened right after creating, filtered on the task: its current state,
    // the marker, then the rest of its life.
    let mut one = watch(
        &cluster,
        WatchTasksRequest {
            task_id: task.id.clone(),
            ..Default::default()
        },
    )
    .await;

    let states = states_until_completed(&mut all, &task.id).await;
    assert_eq!(
        states,
        [
            TaskState::Pending,
            TaskState::Scheduled,
            TaskState::Running,
            TaskState::Completed
        ]
    );

    let Kind::Change(first) = next(&mut one).await else {
        panic!("the snapshot holds the task")
    };
    assert_eq!(first.task.as_ref().unwrap().id, task.id);
    assert!(first.event.is_none(), "snapshot entries carry no event");
    let first_state = first.task.unwrap().status.unwrap().state();
    if first_state != TaskState::Completed {
        assert!(matches!(next(&mut one).await, Kind::SnapshotDone(_)));
        let rest = states_until_completed(&mut one, &task.id).await;
        assert_eq!(rest.last(), Some(&TaskState::Completed), "{rest:?}");
        // What follows the snapshot continues from it, in order.
        let order = |s: &TaskState| *s as i32;
        assert!(
            rest.windows(2).all(|w| order(&w[0]) < order(&w[1])),
            "{first_state:?} then {rest:?}"
        );
        assert!(
            order(&rest[0]) >= order(&first_state),
            "{first_state:?} then {rest:?}"
        );
    } else {
        assert!(matches!(next(&mut one).await, Kind::SnapshotDone(_)));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_filters_are_validated() {
    let cluster = Cluster::start(&["a"]).await;
    let mut client = cluster.control().await;
    let err = client
        .watch_tasks(WatchTasksRequest {
            states: vec![42],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = client
        .watch_tasks(WatchTasksRequest {
            node: "no-such-node".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // A known node by name is fine.
    let mut on_a = watch(
        &cluster,
        WatchTasksRequest {
            node: "a".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(matches!(next(&mut on_a).await, Kind::SnapshotDone(_)));
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_get_watch_exits_zero_once_the_task_completes() {
    let cluster = Cluster::start(&["a"]).await;
    let task = cluster
        .create(cluster.spec("watched-cli", &["sh", "-c", "sleep 2; exit 0"]))
        .await;
    let out = cluster.cli(&["get", &task.id, "--watch"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "get --watch failed ({}): stdout: {stdout} stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.contains(&task.id) && last.contains("completed"),
        "the last line is the completion: {stdout}"
    );
    // Already finished: prints the task and exits at once.
    let again = cluster.cli_ok(&["get", &task.id, "--watch"]).await;
    assert!(again.contains("completed"), "{again}");
}
