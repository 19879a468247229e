//! A frozen agent (SIGSTOP): its stream may look open, but no heartbeat
//! arrives, so the node goes DOWN; SIGCONT brings it back to READY.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use minkube::pb::{NodeState, TaskState};
use minkube_integration_tests::docker::running_task_containers;
use minkube_integration_tests::signal::Paused;
use minkube_integration_tests::{describe, wait_for, Cluster, POLL, WAIT};

#[tokio::test(flavor = "multi_thread")]
async fn stopped_agent_goes_down_and_comes_back() {
    let cluster = Cluster::builder()
        .manager_flag("--heartbeat-interval", "300ms")
        .manager_flag("--node-timeout", "1500ms")
        .manager_flag("--reconnect-grace", "10m")
        .agents(&["a"])
        .start()
        .await;
    let task = cluster
        .create(cluster.spec("through-it", &["sleep", "300"]))
        .await;
    let before = cluster
        .wait_task_state(&task.id, &[TaskState::Running], WAIT)
        .await;
    let status_before = describe::status(before.task.as_ref().unwrap());

    // Resumed on drop, even if an assertion below fails.
    let paused = Paused::stop(cluster.agent_pid("a"));
    let down = cluster
        .wait_node_state("a", &[NodeState::Down], Duration::from_secs(20))
        .await;
    assert!(!down.lost, "{}", describe::node(&down));
    // The CLI shows it too (HTTP/2 keepalive may later end the stream and
    // turn it DISCONNECTED, hence a bounded look right away).
    wait_for(
        "`minkube nodes -o json` to show node a down",
        Duration::from_secs(10),
        POLL,
        async || {
            let nodes = cluster.cli_json(&["nodes"]).await;
            let a = nodes["nodes"]
                .as_array()
                .and_then(|l| l.iter().find(|n| n["name"] == "a"))
                .cloned()
                .unwrap_or_default();
            if a["state"] == "down" && a["last_heartbeat"].is_string() {
                Ok(())
            } else {
                Err(nodes.to_string())
            }
        },
    )
    .await;

    paused.resume();
    // The agent may have to notice a closed stream and reconnect first.
    cluster
        .wait_node_state("a", &[NodeState::Ready], WAIT)
        .await;
    assert_eq!(status_before.attempt, 1);
    cluster
        .assert_same_running_attempt(&task.id, &status_before)
        .await;
    assert_eq!(running_task_containers(&task.id).len(), 1);
}
