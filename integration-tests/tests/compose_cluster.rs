//! The compose cluster of deploy/compose: a manager and three agent hosts,
//! each a container with its own address on a private Docker network. Cutting
//! one host off the network and stopping another prove the failure behaviour
//! across real addresses: tasks move, and once every host is back each task
//! has exactly one live container.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use minkube_integration_tests::compose::{self, ComposeCluster};
use minkube_integration_tests::docker::{docker_ok, running_task_placements};
use minkube_integration_tests::image::{TestImage, RUN_LABEL};
use minkube_integration_tests::{wait_for, POLL};

/// Liveness in the compose file: DOWN after 3 s, lost after 8 s.
const MOVE: Duration = Duration::from_secs(60);

/// Task id -> (state, node name), from `minkube ps`.
async fn tasks(c: &ComposeCluster) -> BTreeMap<String, (String, String)> {
    let json = c.cli_json(&["ps"]).await;
    json["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let s = &t["status"];
            (
                t["id"].as_str().unwrap().to_string(),
                (
                    s["state"].as_str().unwrap_or_default().to_string(),
                    s["node_name"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect()
}

async fn node_ids(c: &ComposeCluster) -> BTreeMap<String, String> {
    let json = c.cli_json(&["nodes"]).await;
    json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Waits until every task runs, none on `avoid`; where each runs.
async fn all_running_avoiding(c: &ComposeCluster, avoid: &str) -> BTreeMap<String, String> {
    wait_for(
        &format!("every task running, none on {avoid}"),
        MOVE,
        POLL,
        async || {
            let t = tasks(c).await;
            if t.values().all(|(s, n)| s == "running" && n != avoid) {
                Ok(t.into_iter().map(|(id, (_, n))| (id, n)).collect())
            } else {
                Err(format!("{t:?}"))
            }
        },
    )
    .await
}

/// Waits until each task has exactly one running container, made by the
/// agent of the node the manager has it on.
async fn one_live_container_each(c: &ComposeCluster) {
    wait_for(
        "exactly one live container per task",
        MOVE,
        POLL,
        async || {
            let ids = node_ids(c).await;
            let t = tasks(c).await;
            for (id, (state, node)) in &t {
                let placements = running_task_placements(id);
                if state != "running" || placements.len() != 1 {
                    return Err(format!(
                        "{id}: {state} on {node}, containers {placements:?}"
                    ));
                }
                if ids.get(node) != Some(&placements[0].node_id) {
                    return Err(format!(
                        "{id}: on {node} but its container is {placements:?}"
                    ));
                }
            }
            Ok(())
        },
    )
    .await;
}

async fn node_field(c: &ComposeCluster, name: &str, field: &str) -> serde_json::Value {
    c.cli_json(&["node", "get", name]).await[field].clone()
}

async fn wait_ready(c: &ComposeCluster, name: &str) {
    wait_for(
        &format!("{name} ready again"),
        MOVE,
        POLL,
        async || match node_field(c, name, "state").await.as_str() {
            Some("ready") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_cut_off_or_stopped_leaves_exactly_one_live_container_per_task() {
    if !compose::available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "docker-compose is missing: .ci/run installs Debian's docker-compose package"
        );
        eprintln!("docker-compose not installed: install it to run this test");
        return;
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let image = TestImage::build(&run_id);
    let cluster = ComposeCluster::up(&run_id);
    let label = format!("{RUN_LABEL}={run_id}");

    // Six tasks spread over the three hosts, round robin.
    for i in 0..6 {
        cluster
            .cli_json(&[
                "run",
                &format!("spread-{i}"),
                "--image",
                image.tag(),
                "--memory",
                "16",
                "--restart",
                "always",
                "--label",
                &label,
                "--",
                "sleep",
                "600",
            ])
            .await;
    }
    let placed = all_running_avoiding(&cluster, "none").await;
    let mut per_host: BTreeMap<&str, usize> = BTreeMap::new();
    for node in placed.values() {
        *per_host.entry(node.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_host,
        BTreeMap::from([("host-1", 2), ("host-2", 2), ("host-3", 2)]),
        "{}",
        cluster.logs()
    );
    one_live_container_each(&cluster).await;

    // host-2 loses its network: DOWN, then lost; its tasks restart elsewhere
    // while its own containers keep running, cut off.
    cluster.disconnect("host-2");
    all_running_avoiding(&cluster, "host-2").await;
    assert_eq!(node_field(&cluster, "host-2", "lost").await, true);
    // Back on the network: the agent reconnects and removes what was moved.
    cluster.reconnect("host-2");
    wait_ready(&cluster, "host-2").await;
    one_live_container_each(&cluster).await;

    // host-3 stops (its agent gets SIGTERM); a real host takes its
    // containers down with it, which on this shared engine means removing
    // the ones host-3's agent made.
    let ids = node_ids(&cluster).await;
    cluster.compose(&["stop", "host-3"]);
    let host3 = format!("label=minkube.node-id={}", ids["host-3"]);
    let gone: Vec<String> = docker_ok(&["ps", "-q", "--filter", &host3])
        .lines()
        .map(str::to_string)
        .collect();
    for c in &gone {
        docker_ok(&["rm", "-f", c]);
    }
    all_running_avoiding(&cluster, "host-3").await;
    one_live_container_each(&cluster).await;
    // And it comes back empty-handed, ready for work.
    cluster.compose(&["start", "host-3"]);
    wait_ready(&cluster, "host-3").await;
    one_live_container_each(&cluster).await;
    drop(cluster);
    drop(image);
}
