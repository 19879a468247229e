//! Placement: round robin over READY nodes sorted by name, and tasks that
//! wait PENDING until a node joins.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use minkube::pb::{Task, TaskState};
use minkube_integration_tests::docker::{
    container_labels, task_containers, wait_task_containers_gone,
};
use minkube_integration_tests::image::RUN_LABEL;
use minkube_integration_tests::{describe, Cluster, WAIT};

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_over_three_nodes() {
    let cluster = Cluster::start(&["a", "b", "c"]).await;
    let nodes = cluster.nodes().await.unwrap();
    let node_id = |name: &str| {
        nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("node {name} not listed"))
            .id
            .clone()
    };

    let mut tasks: Vec<Task> = Vec::new();
    for i in 0..9 {
        let task = cluster
            .create(cluster.spec(&format!("rr-{i}"), &["sleep", "300"]))
            .await;
        tasks.push(task);
    }

    let names = ["a", "b", "c"];
    for (i, task) in tasks.iter().enumerate() {
        let resp = cluster
            .wait_task_state(&task.id, &[TaskState::Running], WAIT)
            .await;
        let status = describe::status(resp.task.as_ref().unwrap());
        let expected = names[i % 3];
        assert_eq!(
            status.node_name,
            expected,
            "task {i} should be on node {expected} (round robin over a, b, c): {}",
            describe::task_with_events(&resp)
        );
        assert_eq!(status.node_id, node_id(expected), "node id of task {i}");
        assert_eq!(status.attempt, 1, "first placement is attempt 1");

        let containers = task_containers(&task.id);
        assert_eq!(
            containers.len(),
            1,
            "exactly one container labelled minkube.task-id={}: {containers:?}",
            task.id
        );
        if !status.container_id.is_empty() {
            assert!(
                containers[0].starts_with(&status.container_id)
                    || status.container_id.starts_with(&containers[0]),
                "status.container_id {} is not the labelled container {}",
                status.container_id,
                containers[0]
            );
        }
        let labels = container_labels(&containers[0]);
        assert_eq!(
            labels.get("minkube.managed").map(String::as_str),
            Some("true"),
            "{labels:?}"
        );
        assert_eq!(labels.get("minkube.task-id"), Some(&task.id), "{labels:?}");
        assert_eq!(
            labels.get("minkube.node-id"),
            Some(&node_id(expected)),
            "{labels:?}"
        );
        assert_eq!(
            labels.get(RUN_LABEL).map(String::as_str),
            Some(cluster.run_id()),
            "the spec's labels are copied onto the container: {labels:?}"
        );
    }

    // Three per node, as the nodes themselves report.
    let nodes = cluster.nodes().await.unwrap();
    for node in &nodes {
        assert_eq!(
            node.active_tasks,
            3,
            "active tasks of {}",
            describe::node(node)
        );
    }

    for task in &tasks {
        cluster.stop(&task.id).await;
    }
    for task in &tasks {
        let resp = cluster
            .wait_task_state(&task.id, &[TaskState::Completed], WAIT)
            .await;
        assert_eq!(
            describe::status(resp.task.as_ref().unwrap()).node_id,
            node_id(names[tasks.iter().position(|t| t.id == task.id).unwrap() % 3]),
            "a stopped task keeps its node"
        );
        wait_task_containers_gone(&task.id).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_until_an_agent_joins() {
    let mut cluster = Cluster::start(&[]).await;
    let first = cluster
        .create(cluster.spec("wait-1", &["sleep", "300"]))
        .await;
    let second = cluster
        .create(cluster.spec("wait-2", &["sleep", "300"]))
        .await;

    // Nothing can take them: they must stay PENDING and say why.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for task in [&first, &second] {
        let resp = cluster.get(&task.id).await;
        let t = resp.task.as_ref().unwrap();
        assert_eq!(
            describe::state(t),
            TaskState::Pending,
            "{}",
            describe::task_with_events(&resp)
        );
        let status = describe::status(t);
        assert!(
            !status.reason.trim().is_empty(),
            "a PENDING task says why: {}",
            describe::task(t)
        );
        assert!(
            status.node_id.is_empty(),
            "not placed: {}",
            describe::task(t)
        );
    }

    cluster.add_agent("a");
    cluster.wait_nodes_ready(1).await;
    for task in [&first, &second] {
        let resp = cluster
            .wait_task_state(&task.id, &[TaskState::Running, TaskState::Completed], WAIT)
            .await;
        let status = describe::status(resp.task.as_ref().unwrap());
        assert_eq!(
            status.node_name,
            "a",
            "{}",
            describe::task_with_events(&resp)
        );
        assert_eq!(status.attempt, 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_a_pending_task_completes_it_at_once() {
    let cluster = Cluster::start(&[]).await;
    let task = cluster
        .create(cluster.spec("never", &["sleep", "300"]))
        .await;
    assert_eq!(describe::state(&task), TaskState::Pending);
    let stopped = cluster.stop(&task.id).await;
    assert_eq!(
        stopped.desired_state,
        minkube::pb::DesiredState::Stopped as i32
    );
    let resp = cluster
        .wait_task_state(&task.id, &[TaskState::Completed], WAIT)
        .await;
    let states: Vec<TaskState> = resp.events.iter().map(describe::event_state).collect();
    assert_eq!(
        states.last(),
        Some(&TaskState::Completed),
        "{}",
        describe::task_with_events(&resp)
    );
    assert!(
        !states.contains(&TaskState::Running),
        "it never ran: {}",
        describe::task_with_events(&resp)
    );
}
