//! `minkube node rm` on a secured cluster, against the real binaries and
//! Docker: a node in use is kept unless forced; forced out, its task runs
//! elsewhere, its agent is cut off for good and stops its container, and
//! the machine comes back only afresh, joining again with a join token.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use minkube::pb::{RestartPolicy, TaskState};
use minkube_integration_tests::docker::running_task_placements;
use minkube_integration_tests::{AgentOptions, Cluster, WAIT};

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_node_is_cut_off_and_its_task_runs_elsewhere() {
    let mut cluster = Cluster::builder()
        .secure()
        .agents(&["a", "b"])
        .start()
        .await;
    let mut spec = cluster.spec("kept", &["sleep", "300"]);
    spec.set_restart_policy(RestartPolicy::Always);
    let task = cluster.create(spec).await;
    let first = cluster
        .wait_task_state(&task.id, &[TaskState::Running], WAIT)
        .await
        .task
        .unwrap()
        .status
        .unwrap();
    let (gone, kept) = if first.node_name == "a" {
        ("a", "b")
    } else {
        ("b", "a")
    };

    // In use: refused, and it says what to do.
    let out = cluster.cli(&["node", "rm", gone]).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("is connected") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(cluster.nodes().await.unwrap().len(), 2);

    let said = cluster.cli_ok(&["node", "rm", gone, "--force"]).await;
    assert!(
        said.contains(&format!("node {gone} removed")) && said.contains("1 of its tasks"),
        "{said}"
    );

    // The task runs on the other node, and only there: the removed agent,
    // refused at its next Register, stopped its container.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = cluster.get(&task.id).await.task.unwrap().status.unwrap();
        let placements = running_task_placements(&task.id);
        if status.state() == TaskState::Running
            && status.node_name == kept
            && placements.len() == 1
            && placements[0].node_id == status.node_id
        {
            assert_eq!(status.attempt, 2);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{status:?} {placements:?}\n{}",
            cluster.agent_log(gone)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = cluster.agent_log(gone);
    assert!(
        log.contains("was removed from the cluster") && log.contains("--join-token"),
        "{log}"
    );
    let names: Vec<String> = cluster
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, [kept]);
    assert!(
        cluster.manager_log().contains("node removed"),
        "{}",
        cluster.manager_log()
    );

    // The machine joins again with an empty data dir: a new node of the
    // same name.
    cluster.kill_agent(gone);
    let dir = cluster.dir().join(format!("agent-{gone}"));
    std::fs::remove_dir_all(&dir).unwrap();
    let join = cluster.security().join_token.clone();
    cluster.add_agent_with(gone, AgentOptions::new().flag("--join-token", &join));
    cluster.wait_nodes_ready(2).await;
    let back = cluster.nodes().await.unwrap();
    let back = back.iter().find(|n| n.name == gone).unwrap();
    assert_ne!(back.id, first.node_id, "a new node");

    // The removal outlives a manager restart; the new certificate works.
    cluster.restart_manager();
    cluster.wait_nodes_ready(2).await;
}
