//! SIGTERM: the agent leaves its containers running and closes its stream
//! cleanly (the node is DISCONNECTED, not DOWN); the manager drains its
//! streams and flushes its store, and exits by itself.
#![allow(clippy::unwrap_used)]

use minkube::pb::{NodeState, TaskState};
use minkube_integration_tests::docker::running_task_containers;
use minkube_integration_tests::{describe, Cluster, WAIT};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_agent_leaves_work_running_and_is_disconnected_not_down() {
    let mut cluster = Cluster::start(&["a"]).await;
    let task = cluster
        .create(cluster.spec("keeps-running", &["sleep", "300"]))
        .await;
    let before = cluster
        .wait_task_state(&task.id, &[TaskState::Running], WAIT)
        .await
        .task
        .unwrap();
    let container = before.status.as_ref().unwrap().container_id.clone();

    let status = cluster.terminate_agent("a");
    assert!(
        status.success(),
        "agent exit status after SIGTERM: {status}"
    );

    // Default node timeout is 15 s: right after a clean close the node is
    // DISCONNECTED, which only a closed stream (not silence) explains.
    let node = cluster
        .wait_node_state("a", &[NodeState::Disconnected], WAIT)
        .await;
    assert!(!node.lost, "{}", describe::node(&node));
    assert_eq!(
        running_task_containers(&task.id),
        vec![container.clone()],
        "the user's container keeps running without its agent"
    );
    let during = cluster.get(&task.id).await.task.unwrap();
    assert_eq!(during.status.as_ref().unwrap().state(), TaskState::Running);

    cluster.add_agent("a");
    cluster
        .wait_node_state("a", &[NodeState::Ready], WAIT)
        .await;
    let after = cluster.get(&task.id).await;
    let t = after.task.unwrap();
    let s = t.status.as_ref().unwrap();
    assert_eq!(
        (s.state(), s.container_id.as_str(), s.attempt),
        (TaskState::Running, container.as_str(), 1),
        "{}",
        describe::task(&t)
    );
    assert_eq!(running_task_containers(&task.id), vec![container]);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_manager_drains_and_loses_nothing() {
    let mut cluster = Cluster::start(&["a"]).await;
    let running = cluster
        .create(cluster.spec("survivor", &["sleep", "300"]))
        .await;
    let done = cluster
        .create(cluster.spec("finisher", &["sh", "-c", "exit 0"]))
        .await;
    cluster
        .wait_task_state(&running.id, &[TaskState::Running], WAIT)
        .await;
    cluster
        .wait_task_state(&done.id, &[TaskState::Completed], WAIT)
        .await;

    // With an agent stream open, the manager still stops on its own.
    let status = cluster.terminate_manager();
    assert!(
        status.success(),
        "manager exit status after SIGTERM: {status}"
    );

    cluster.start_manager_again();
    cluster
        .wait_node_state("a", &[NodeState::Ready], WAIT)
        .await;
    let r = cluster.get(&running.id).await.task.unwrap();
    assert_eq!(r.status.as_ref().unwrap().state(), TaskState::Running);
    let d = cluster.get(&done.id).await;
    assert_eq!(
        d.task.unwrap().status.as_ref().unwrap().state(),
        TaskState::Completed
    );
    assert!(d.events.len() >= 4, "events kept: {}", d.events.len());
    assert_eq!(running_task_containers(&running.id).len(), 1);
}
