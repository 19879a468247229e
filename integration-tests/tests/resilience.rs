//! Failures around a running task: the agent crashes and comes back, the
//! container dies behind the agent's back.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use minkube::pb::TaskState;
// is_running tolerates a container removed between two docker calls.
use minkube_integration_tests::docker::{
    docker_ok, is_running, task_containers, wait_task_containers_gone,
};
use minkube_integration_tests::{describe, wait_for, Cluster, POLL, WAIT};

#[tokio::test(flavor = "multi_thread")]
async fn agent_restart_keeps_node_and_running_task() {
    let mut cluster = Cluster::start(&["a"]).await;
    let node_before = cluster.nodes().await.unwrap().remove(0);
    let task = cluster
        .create(cluster.spec("survivor", &["sleep", "300"]))
        .await;
    let running = cluster
        .wait_task_state(&task.id, &[TaskState::Running], WAIT)
        .await;
    let before = describe::status(running.task.as_ref().unwrap());
    let containers_before = task_containers(&task.id);
    assert_eq!(containers_before.len(), 1);

    cluster.restart_agent("a");
    // The old session must be gone and the new one READY again.
    wait_for(
        "node a to be READY again under the same id",
        WAIT,
        POLL,
        async || {
            cluster.assert_alive();
            let nodes = cluster.nodes().await.map_err(|s| format!("{s:?}"))?;
            match nodes.as_slice() {
                [n] if n.id == node_before.id
                    && describe::node_state(n) == minkube::pb::NodeState::Ready
                    && n.last_heartbeat != node_before.last_heartbeat =>
                {
                    Ok(())
                }
                _ => Err(nodes
                    .iter()
                    .map(describe::node)
                    .collect::<Vec<_>>()
                    .join("; ")),
            }
        },
    )
    .await;

    // Give the new session's full sync time to land, then compare.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = cluster.get(&task.id).await;
    let status = describe::status(after.task.as_ref().unwrap());
    assert_eq!(
        describe::state(after.task.as_ref().unwrap()),
        TaskState::Running,
        "{}",
        describe::task_with_events(&after)
    );
    assert_eq!(status.node_id, before.node_id);
    assert_eq!(status.attempt, before.attempt, "no re-placement");
    assert_eq!(status.container_id, before.container_id, "same container");
    assert_eq!(
        task_containers(&task.id),
        containers_before,
        "the container was adopted, not replaced"
    );

    // The new session still takes orders.
    cluster.stop(&task.id).await;
    cluster
        .wait_task_state(&task.id, &[TaskState::Completed], WAIT)
        .await;
    wait_task_containers_gone(&task.id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn container_killed_outside_fails_the_task() {
    let cluster = Cluster::start(&["a"]).await;
    let task = cluster
        .create(cluster.spec("victim", &["sleep", "300"]))
        .await;
    cluster
        .wait_task_state(&task.id, &[TaskState::Running], WAIT)
        .await;
    let containers = task_containers(&task.id);
    assert_eq!(containers.len(), 1);
    docker_ok(&["kill", &containers[0]]);

    // Seen through Docker's event stream (the agent resyncs only hourly).
    let resp = cluster
        .wait_task_state(&task.id, &[TaskState::Failed], Duration::from_secs(30))
        .await;
    let status = describe::status(resp.task.as_ref().unwrap());
    assert_eq!(
        status.exit_code,
        Some(137),
        "{}",
        describe::task_with_events(&resp)
    );
    assert!(!status.reason.is_empty(), "a reason is given");
}

/// Starts a `sleep 300` container from the test image with minkube's labels
/// for `node_id`, outside any manager; returns its id.
fn start_stray_container(cluster: &Cluster, node_id: &str, task_id: &str) -> String {
    let run_label = format!(
        "{}={}",
        minkube_integration_tests::image::RUN_LABEL,
        cluster.run_id()
    );
    let node_label = format!("minkube.node-id={node_id}");
    let task_label = format!("minkube.task-id={task_id}");
    docker_ok(&[
        "run",
        "-d",
        "--label",
        "minkube.managed=true",
        "--label",
        &node_label,
        "--label",
        &task_label,
        "--label",
        "minkube.attempt=1",
        "--label",
        &run_label,
        cluster.image(),
        "sleep",
        "300",
    ])
    .trim()
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_of_other_nodes_are_left_alone() {
    let mut cluster = Cluster::start(&[]).await;
    // Another node's container (another test, another cluster): not ours.
    let other_node = uuid::Uuid::new_v4().to_string();
    let other_task = uuid::Uuid::now_v7().to_string();
    let stray = start_stray_container(&cluster, &other_node, &other_task);

    cluster.add_agent("a");
    cluster.wait_nodes_ready(1).await;
    let task = cluster
        .create(cluster.spec("mine", &["sleep", "300"]))
        .await;
    cluster
        .wait_task_state(&task.id, &[TaskState::Running], WAIT)
        .await;
    // Past the agent's start-up reconciliation: the foreign container runs on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        is_running(&stray),
        "the agent stopped a container labelled for node {other_node}, not its own"
    );
    assert_eq!(task_containers(&other_task), vec![stray]);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_container_of_the_node_is_stopped() {
    let mut cluster = Cluster::start(&["a"]).await;
    let node_id = cluster.nodes().await.unwrap().remove(0).id;
    cluster.kill_agent("a");
    // A container of this node for a task the manager never placed.
    let unknown_task = uuid::Uuid::now_v7().to_string();
    let stray = start_stray_container(&cluster, &node_id, &unknown_task);

    cluster.add_agent("a");
    wait_for(
        "the agent to stop a container of its node that is in no desired set",
        WAIT,
        POLL,
        async || {
            cluster.assert_alive();
            if task_containers(&unknown_task).is_empty() || !is_running(&stray) {
                Ok(())
            } else {
                Err(format!("container {stray} still running"))
            }
        },
    )
    .await;
}
