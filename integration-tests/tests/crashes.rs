//! kill -9 of the manager or of an agent while tasks run: nothing is lost,
//! nothing is duplicated, and what happened while a process was down is
//! picked up when it comes back.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use minkube::pb::{NodeState, TaskState};
use minkube_integration_tests::docker::{docker_ok, running_task_containers, task_containers};
use minkube_integration_tests::proxy::TcpProxy;
use minkube_integration_tests::{describe, wait_for, AgentOptions, Cluster, POLL, WAIT};

/// Asserts every task has exactly one container, and that it runs.
fn assert_one_running_container_each(ids: &[String]) {
    for id in ids {
        let all = task_containers(id);
        let running = running_task_containers(id);
        assert!(
            all.len() == 1 && running == all,
            "task {id}: containers {all:?}, running {running:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn manager_crash_keeps_running_and_pending_tasks() {
    let mut cluster = Cluster::builder()
        // The agent is cut off for a while: far from being lost.
        .manager_flag("--reconnect-grace", "10m")
        .start()
        .await;
    // The agent dials through a proxy so it can be cut off without being
    // killed, and reconnect on its own afterwards.
    let proxy = TcpProxy::start(&cluster.addr()).await;
    cluster.add_agent_with("a", AgentOptions::new().manager(&proxy.addr()));
    cluster.wait_nodes_ready(1).await;

    let started = cluster.run_sleepers("run", 10).await;
    let running: Vec<String> = started.iter().map(|(id, _)| id.clone()).collect();
    assert_one_running_container_each(&running);

    // No READY node: these stay PENDING.
    proxy.cut();
    cluster
        .wait_node_state(
            "a",
            &[NodeState::Disconnected, NodeState::Down],
            Duration::from_secs(30),
        )
        .await;
    let mut pending = Vec::new();
    for i in 0..5 {
        let task = cluster
            .create(cluster.spec(&format!("wait-{i}"), &["sleep", "300"]))
            .await;
        assert_eq!(
            describe::state(&task),
            TaskState::Pending,
            "{}",
            describe::task(&task)
        );
        pending.push(task.id);
    }
    // Right after the last CreateTask returned (stored durably).
    cluster.kill_manager();
    cluster.restart_manager();

    let created: BTreeSet<String> = running.iter().chain(&pending).cloned().collect();
    let listed = cluster.list_all(&[]).await;
    let listed_ids: Vec<String> = listed.iter().map(|t| t.id.clone()).collect();
    let unique: BTreeSet<String> = listed_ids.iter().cloned().collect();
    assert_eq!(
        listed_ids.len(),
        15,
        "no task lost or duplicated: {listed_ids:?}"
    );
    assert_eq!(unique, created, "the same 15 tasks");
    for task in &listed {
        let expected = if pending.contains(&task.id) {
            TaskState::Pending
        } else {
            TaskState::Running
        };
        assert_eq!(describe::state(task), expected, "{}", describe::task(task));
    }

    proxy.heal();
    cluster.wait_nodes_ready(1).await;
    for id in &pending {
        let resp = cluster
            .wait_task_state(id, &[TaskState::Running], WAIT)
            .await;
        let status = describe::status(resp.task.as_ref().unwrap());
        assert_eq!(status.attempt, 1, "{}", describe::task_with_events(&resp));
    }
    for (id, before) in &started {
        assert_eq!(before.attempt, 1);
        cluster.assert_same_running_attempt(id, before).await;
    }
    let all: Vec<String> = created.iter().cloned().collect();
    assert_one_running_container_each(&all);
    assert_eq!(cluster.list_all(&[]).await.len(), 15);
}

/// Whether Docker says the container ran and exited with `code`.
fn exited_with(container: &str, code: i32) -> Result<(), String> {
    let out = docker_ok(&[
        "inspect",
        "--format",
        "{{.State.Running}} {{.State.ExitCode}}",
        container,
    ]);
    if out.trim() == format!("false {code}") {
        Ok(())
    } else {
        Err(format!("running/exit code: {}", out.trim()))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_crash_then_restart_picks_up_what_happened() {
    let mut cluster = Cluster::builder()
        .manager_flag("--reconnect-grace", "10m")
        .agents(&["a"])
        .start()
        .await;
    let started = cluster.run_sleepers("sleeper", 2).await;
    let sleepers: Vec<String> = started.iter().map(|(id, _)| id.clone()).collect();
    // Created last, so the agent is killed well within its 3 seconds.
    let short = cluster
        .create(cluster.spec("exit-seven", &["sh", "-c", "sleep 3; exit 7"]))
        .await;
    cluster
        .wait_task_state(&short.id, &[TaskState::Running], WAIT)
        .await;
    cluster.kill_agent("a");

    let seen = cluster.get(&short.id).await;
    assert_eq!(
        describe::state(seen.task.as_ref().unwrap()),
        TaskState::Running,
        "the container ended before the agent was killed, so this test proves nothing: {}",
        describe::task_with_events(&seen)
    );
    let short_containers = task_containers(&short.id);
    assert_eq!(short_containers.len(), 1, "{short_containers:?}");
    wait_for(
        "the exit-7 container to exit while its agent is down",
        Duration::from_secs(30),
        POLL,
        async || exited_with(&short_containers[0], 7),
    )
    .await;

    cluster.add_agent("a");
    cluster.wait_nodes_ready(1).await;
    let failed = cluster
        .wait_task_state(&short.id, &[TaskState::Failed], WAIT)
        .await;
    let status = describe::status(failed.task.as_ref().unwrap());
    let shown = describe::task_with_events(&failed);
    assert_eq!(status.exit_code, Some(7), "{shown}");
    assert_eq!(status.attempt, 1, "{shown}");
    assert!(
        !failed.events.iter().any(|e| e.attempt > 1),
        "restart policy NEVER: no new attempt: {shown}"
    );

    // Adopted, not replaced.
    for (id, before) in &started {
        assert_eq!(before.attempt, 1);
        cluster.assert_same_running_attempt(id, before).await;
    }
    assert_one_running_container_each(&sleepers);
}
