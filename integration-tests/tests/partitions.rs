//! Network partitions between an agent and the manager, made with a TCP
//! proxy the agent dials: shorter than the reconnect grace nothing moves;
//! longer, the node is lost, its tasks restart elsewhere or fail, and when
//! it comes back it stops its stale containers.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use minkube::convert::millis;
use minkube::pb::{NodeState, RestartPolicy, TaskState};
use minkube_integration_tests::docker::{
    running_task_containers, running_task_placements, task_containers,
};
use minkube_integration_tests::proxy::TcpProxy;
use minkube_integration_tests::{describe, wait_for, AgentOptions, Cluster, POLL, WAIT};

/// Starts agent `name` dialling the manager through a new proxy.
async fn agent_behind_proxy(cluster: &mut Cluster, name: &str) -> TcpProxy {
    let proxy = TcpProxy::start(&cluster.addr()).await;
    cluster.add_agent_with(name, AgentOptions::new().manager(&proxy.addr()));
    proxy
}

#[tokio::test(flavor = "multi_thread")]
async fn partition_shorter_than_the_grace_changes_nothing() {
    let mut cluster = Cluster::builder()
        .manager_flag("--reconnect-grace", "30s")
        .manager_flag("--heartbeat-interval", "500ms")
        .manager_flag("--node-timeout", "2s")
        .start()
        .await;
    let proxy = agent_behind_proxy(&mut cluster, "a").await;
    cluster.wait_nodes_ready(1).await;
    let task = cluster
        .create(cluster.spec("steady", &["sleep", "300"]))
        .await;
    let before = cluster
        .wait_task_state(&task.id, &[TaskState::Running], WAIT)
        .await;
    let status_before = describe::status(before.task.as_ref().unwrap());
    let containers_before = running_task_containers(&task.id);
    assert_eq!(containers_before.len(), 1, "{containers_before:?}");

    proxy.cut();
    let away = cluster
        .wait_node_state(
            "a",
            &[NodeState::Disconnected, NodeState::Down],
            Duration::from_secs(20),
        )
        .await;
    assert!(
        !away.lost,
        "lost right after the cut: {}",
        describe::node(&away)
    );
    // Keep the partition a while, well below the 30 s grace.
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.heal();

    let heartbeat = |n: &minkube::pb::Node| n.last_heartbeat.as_ref().map_or(0, millis);
    let last_seen = heartbeat(&away);
    let back = cluster
        .wait_node("a", "to be READY again with a newer heartbeat", WAIT, |n| {
            describe::node_state(n) == NodeState::Ready && heartbeat(n) > last_seen
        })
        .await;
    assert!(!back.lost, "{}", describe::node(&back));
    // Let the new session's full sync land before comparing.
    tokio::time::sleep(Duration::from_secs(2)).await;

    assert_eq!(status_before.attempt, 1);
    let after = cluster
        .assert_same_running_attempt(&task.id, &status_before)
        .await;
    let shown = describe::task_with_events(&after);
    assert_eq!(
        after.events,
        before.events,
        "a short partition adds no event: before {} after {shown}",
        describe::task_with_events(&before)
    );
    assert_eq!(
        running_task_containers(&task.id),
        containers_before,
        "the same single container still runs"
    );
    assert_eq!(
        task_containers(&task.id),
        containers_before,
        "no other container, running or not"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn partition_longer_than_the_grace_moves_or_fails_tasks() {
    let mut cluster = Cluster::builder()
        .manager_flag("--reconnect-grace", "3s")
        .manager_flag("--node-timeout", "1s")
        .manager_flag("--heartbeat-interval", "300ms")
        .manager_flag("--retry-backoff", "200ms")
        .start()
        .await;
    let proxy = agent_behind_proxy(&mut cluster, "a").await;
    cluster.wait_nodes_ready(1).await;
    let node_a = cluster.node("a").await.id;

    // Created while a is the only node: both land on a.
    let mut always = cluster.spec("always", &["sleep", "300"]);
    always.restart_policy = RestartPolicy::Always as i32;
    let always = cluster.create(always).await;
    let mut never = cluster.spec("never", &["sleep", "300"]);
    never.restart_policy = RestartPolicy::Never as i32;
    let never = cluster.create(never).await;
    for id in [&always.id, &never.id] {
        let resp = cluster
            .wait_task_state(id, &[TaskState::Running], WAIT)
            .await;
        let status = describe::status(resp.task.as_ref().unwrap());
        assert_eq!(
            status.node_id,
            node_a,
            "{}",
            describe::task_with_events(&resp)
        );
    }
    let stale_always = running_task_containers(&always.id);
    let stale_never = running_task_containers(&never.id);
    assert_eq!(stale_always.len(), 1, "{stale_always:?}");
    assert_eq!(stale_never.len(), 1, "{stale_never:?}");

    cluster.add_agent("b");
    cluster.wait_nodes_ready(2).await;
    let node_b = cluster.node("b").await.id;

    proxy.cut();
    let moved = cluster
        .wait_task(&always.id, "attempt 2 RUNNING on b", WAIT, |r| {
            let t = r.task.as_ref().unwrap();
            let s = describe::status(t);
            describe::state(t) == TaskState::Running && s.attempt == 2 && s.node_id == node_b
        })
        .await;
    let events = describe::task_with_events(&moved);
    assert!(
        moved
            .events
            .iter()
            .any(|e| e.attempt == 2 && describe::event_state(e) == TaskState::Scheduled),
        "the new attempt was recorded as SCHEDULED: {events}"
    );
    assert!(
        !moved.events.iter().any(|e| e.attempt > 2),
        "exactly one new attempt: {events}"
    );

    let failed = cluster
        .wait_task_state(&never.id, &[TaskState::Failed], WAIT)
        .await;
    let status = describe::status(failed.task.as_ref().unwrap());
    assert!(
        status.reason.to_lowercase().contains("node lost"),
        "reason names the lost node: {}",
        describe::task_with_events(&failed)
    );
    assert_eq!(status.attempt, 1, "{}", describe::task_with_events(&failed));

    let lost = cluster
        .wait_node("a", "to be lost and not READY", WAIT, |n| {
            n.lost && describe::node_state(n) != NodeState::Ready
        })
        .await;
    assert_eq!(lost.id, node_a);

    proxy.heal();
    cluster
        .wait_node("a", "to be READY and no longer lost", WAIT, |n| {
            describe::node_state(n) == NodeState::Ready && !n.lost
        })
        .await;

    // a's full sync reports the old attempts; the desired set omits them, so
    // a stops them: one live copy of the ALWAYS task, none of the NEVER task.
    wait_for(
        "node a to stop its stale containers",
        WAIT,
        POLL,
        async || {
            cluster.assert_alive();
            let live_always = running_task_placements(&always.id);
            let live_never = running_task_placements(&never.id);
            let always_ok = matches!(
                live_always.as_slice(),
                [p] if p.node_id == node_b && p.attempt == "2"
            );
            if always_ok && live_never.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "running: always {live_always:?}, never {live_never:?}"
                ))
            }
        },
    )
    .await;
    // ...and removes them (the design: stopped and removed).
    wait_for(
        "node a to remove its stale containers",
        WAIT,
        POLL,
        async || {
            let left: Vec<String> = task_containers(&always.id)
                .into_iter()
                .chain(task_containers(&never.id))
                .filter(|c| stale_always.contains(c) || stale_never.contains(c))
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("docker ps -a still lists {left:?}"))
            }
        },
    )
    .await;

    // The stale reports changed nothing.
    let always_after = cluster.get(&always.id).await;
    let s = describe::status(always_after.task.as_ref().unwrap());
    assert_eq!(
        (
            describe::state(always_after.task.as_ref().unwrap()),
            s.attempt,
            s.node_id
        ),
        (TaskState::Running, 2, node_b.clone()),
        "{}",
        describe::task_with_events(&always_after)
    );
    let never_after = cluster.get(&never.id).await;
    assert_eq!(
        describe::state(never_after.task.as_ref().unwrap()),
        TaskState::Failed,
        "{}",
        describe::task_with_events(&never_after)
    );
    assert_eq!(
        never_after.events.len(),
        failed.events.len(),
        "no event after FAILED: {}",
        describe::task_with_events(&never_after)
    );
}
