//! Node lifecycle through the CLI: cordon keeps new tasks off a node, drain
//! empties it (tasks that may restart move, one with restart policy never
//! ends), and constraints place tasks only on nodes whose labels match, with
//! a reason when none does.
#![allow(clippy::unwrap_used)]

use minkube::pb::{NodeState, RestartPolicy, TaskState};
use minkube_integration_tests::docker::{docker_ok, running_task_placements};
use minkube_integration_tests::{describe, AgentOptions, Cluster, POLL, WAIT};

async fn node_id(cluster: &Cluster, name: &str) -> String {
    cluster
        .wait_node_state(name, &[NodeState::Ready], WAIT)
        .await
        .id
}

/// Every minkube container of a node, running or not.
fn containers_of_node(node_id: &str) -> Vec<String> {
    docker_ok(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=minkube.node-id={node_id}"),
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn cordon_keeps_new_tasks_off_and_drain_empties_the_node() {
    let cluster = Cluster::start(&["a", "b"]).await;
    let a = node_id(&cluster, "a").await;
    let b = node_id(&cluster, "b").await;

    let out = cluster.cli_ok(&["node", "cordon", "a"]).await;
    assert!(out.contains("node a cordoned"), "{out}");
    let nodes = cluster.cli_ok(&["nodes"]).await;
    assert!(nodes.contains("ready,cordoned"), "{nodes}");

    // Everything goes to b while a is cordoned.
    let mut movers = Vec::new();
    for i in 0..2 {
        let mut spec = cluster.spec(&format!("mover-{i}"), &["sleep", "300"]);
        spec.set_restart_policy(RestartPolicy::Always);
        movers.push(cluster.create(spec).await.id);
    }
    let stayer = cluster
        .create(cluster.spec("stayer", &["sleep", "300"]))
        .await
        .id;
    for id in movers.iter().chain([&stayer]) {
        let t = cluster
            .wait_task_state(id, &[TaskState::Running], WAIT)
            .await;
        let status = describe::status(t.task.as_ref().unwrap());
        assert_eq!(status.node_name, "b", "{}", describe::task_with_events(&t));
    }

    cluster.cli_ok(&["node", "uncordon", "a"]).await;
    let out = cluster
        .cli_ok(&["node", "drain", "b", "--timeout", "60s"])
        .await;
    assert!(out.contains("node b drained: no task left on it"), "{out}");
    assert!(
        out.contains("draining node b: 3 tasks being moved or stopped"),
        "{out}"
    );

    // Moved: a new attempt runs on a, and only there.
    for id in &movers {
        let t = cluster
            .wait_task_state(id, &[TaskState::Running], WAIT)
            .await;
        let task = t.task.as_ref().unwrap();
        let status = describe::status(task);
        assert_eq!(status.node_name, "a", "{}", describe::task_with_events(&t));
        assert_eq!(status.attempt, 2);
        assert_eq!(status.restarts, 0, "a move is not a restart");
        let placements = running_task_placements(id);
        assert_eq!(placements.len(), 1, "{placements:?}");
        assert_eq!(placements[0].node_id, a);
        assert!(
            t.events
                .iter()
                .any(|e| e.reason == "moving as attempt 2: node b was drained"),
            "{}",
            describe::task_with_events(&t)
        );
    }
    // Restart policy never: stopped, not moved.
    let t = cluster
        .wait_task_state(&stayer, &[TaskState::Completed], WAIT)
        .await;
    let status = describe::status(t.task.as_ref().unwrap());
    assert_eq!(
        status.reason,
        "stopped: node b was drained and the restart policy is never"
    );
    assert!(running_task_placements(&stayer).is_empty());
    assert!(
        containers_of_node(&b).is_empty(),
        "node b keeps no minkube container: {:?}",
        containers_of_node(&b)
    );

    // A drained node takes nothing new until it is made active again.
    let fresh = cluster
        .create(cluster.spec("fresh", &["sleep", "300"]))
        .await
        .id;
    let t = cluster
        .wait_task_state(&fresh, &[TaskState::Running], WAIT)
        .await;
    assert_eq!(describe::status(t.task.as_ref().unwrap()).node_name, "a");
    let json = cluster.cli_json(&["node", "get", "b"]).await;
    assert_eq!(json["availability"], "drained", "{json}");
    cluster.cli_ok(&["node", "uncordon", "b"]).await;
    let json = cluster.cli_json(&["node", "get", "b"]).await;
    assert_eq!(json["availability"], "active", "{json}");
}

#[tokio::test(flavor = "multi_thread")]
async fn constraints_place_only_on_matching_nodes_and_say_why_none_matches() {
    let mut cluster = Cluster::start(&["a"]).await;
    cluster.add_agent_with(
        "b",
        AgentOptions::new().env("MINKUBE_NODE_LABELS", "zone=x,disk=ssd"),
    );
    cluster.wait_nodes_ready(2).await;
    let b = node_id(&cluster, "b").await;

    let created = cluster
        .cli_json(&[
            "run",
            "in-x",
            "--image",
            cluster.image(),
            "--label",
            &format!("minkube-test-run={}", cluster.run_id()),
            "--constraint",
            "node.label.zone==x",
            "--constraint",
            "node.label.disk!=hdd",
            "--",
            "sleep",
            "300",
        ])
        .await;
    let in_x = created["id"].as_str().unwrap().to_string();
    let t = cluster
        .wait_task_state(&in_x, &[TaskState::Running], WAIT)
        .await;
    assert_eq!(describe::status(t.task.as_ref().unwrap()).node_name, "b");
    assert_eq!(running_task_placements(&in_x)[0].node_id, b);

    // No node is in zone y: the task waits and says why.
    let mut spec = cluster.spec("in-y", &["sleep", "300"]);
    spec.constraints = vec!["node.label.zone==y".into()];
    let in_y = cluster.create(spec).await.id;
    let reason = "no ready node meets node.label.zone==y";
    minkube_integration_tests::wait_for("in-y pending with its reason", WAIT, POLL, async || {
        let t = cluster.get(&in_y).await.task.unwrap();
        if describe::state(&t) == TaskState::Pending && describe::status(&t).reason == reason {
            Ok(())
        } else {
            Err(describe::task(&t))
        }
    })
    .await;

    // An admin label puts a into zone y: the waiting task is placed there.
    let out = cluster
        .cli_ok(&["node", "label", "a", "zone=y", "rack=7"])
        .await;
    assert!(out.contains("zone=y"), "{out}");
    let t = cluster
        .wait_task_state(&in_y, &[TaskState::Running], WAIT)
        .await;
    assert_eq!(describe::status(t.task.as_ref().unwrap()).node_name, "a");
    let json = cluster.cli_json(&["node", "get", "a"]).await;
    assert_eq!(json["admin_labels"]["zone"], "y", "{json}");
    cluster.cli_ok(&["node", "label", "a", "rack-"]).await;
    let json = cluster.cli_json(&["node", "get", "a"]).await;
    assert!(json["labels"].get("rack").is_none(), "{json}");

    // A malformed constraint is refused, naming the field and the forms.
    let bad = cluster
        .cli(&[
            "run",
            "bad",
            "--image",
            cluster.image(),
            "--constraint",
            "zone=x",
        ])
        .await;
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("spec.constraints[0]"), "{err}");
    assert!(err.contains("node.label.KEY==VALUE"), "{err}");
}
