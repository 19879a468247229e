//! Retention: finished tasks are deleted after --retention, and past
//! --max-finished-tasks the oldest finished go first; unfinished tasks stay.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use minkube::pb::TaskState;
use minkube_integration_tests::{describe, wait_for, Cluster, POLL, WAIT};

/// How long a sweep may take to remove what it should.
const SWEEP_WAIT: Duration = Duration::from_secs(30);

/// Waits until GetTask of every id answers NOT_FOUND.
async fn wait_gone(cluster: &Cluster, ids: &[String]) {
    wait_for(
        &format!("tasks {ids:?} to be deleted"),
        SWEEP_WAIT,
        POLL,
        async || {
            cluster.assert_alive();
            let mut left = Vec::new();
            for id in ids {
                match cluster.try_get(id).await {
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    Err(s) => return Err(format!("GetTask {id}: {s:?}")),
                    Ok(r) => left.push(describe::task_with_events(&r)),
                }
            }
            if left.is_empty() {
                Ok(())
            } else {
                Err(left.join("; "))
            }
        },
    )
    .await;
}

/// Asserts ListTasks lists none of `gone` and all of `kept`.
async fn assert_listed(cluster: &Cluster, gone: &[String], kept: &[String]) {
    let listed: Vec<String> = cluster
        .list_all(&[])
        .await
        .into_iter()
        .map(|t| t.id)
        .collect();
    for id in gone {
        assert!(!listed.contains(id), "{id} still listed: {listed:?}");
    }
    for id in kept {
        assert!(listed.contains(id), "{id} not listed: {listed:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_tasks_expire_after_the_retention() {
    let cluster = Cluster::builder()
        .manager_flag("--retention", "2s")
        .agents(&["a"])
        .start()
        .await;
    let running = cluster
        .create(cluster.spec("keeps-running", &["sleep", "300"]))
        .await;
    cluster
        .wait_task_state(&running.id, &[TaskState::Running], WAIT)
        .await;
    let done = cluster
        .create(cluster.spec("done", &["sh", "-c", "exit 0"]))
        .await;
    let failed = cluster
        .create(cluster.spec("failed", &["sh", "-c", "exit 3"]))
        .await;
    cluster
        .wait_task_state(&done.id, &[TaskState::Completed], WAIT)
        .await;
    cluster
        .wait_task_state(&failed.id, &[TaskState::Failed], WAIT)
        .await;

    let gone = [done.id.clone(), failed.id.clone()];
    wait_gone(&cluster, &gone).await;
    // Several sweeps later the running task (older than 2 s) is still there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = cluster.get(&running.id).await;
    assert_eq!(
        describe::state(still.task.as_ref().unwrap()),
        TaskState::Running,
        "{}",
        describe::task_with_events(&still)
    );
    assert_listed(&cluster, &gone, std::slice::from_ref(&running.id)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oldest_finished_tasks_go_first_past_the_cap() {
    let cluster = Cluster::builder()
        .manager_flag("--max-finished-tasks", "2")
        // Long enough that age alone removes nothing during the test; the
        // sweep runs more often than the retention (a tenth of it here).
        .manager_flag("--retention", "2m")
        .agents(&["a"])
        .start()
        .await;
    let running = cluster
        .create(cluster.spec("keeps-running", &["sleep", "300"]))
        .await;
    cluster
        .wait_task_state(&running.id, &[TaskState::Running], WAIT)
        .await;
    // One after the other, so they finish in this order.
    let mut finished = Vec::new();
    for i in 0..4 {
        let task = cluster
            .create(cluster.spec(&format!("done-{i}"), &["sh", "-c", "exit 0"]))
            .await;
        cluster
            .wait_task_state(&task.id, &[TaskState::Completed], WAIT)
            .await;
        finished.push(task.id);
    }

    let (oldest, newest) = finished.split_at(2);
    wait_gone(&cluster, oldest).await;
    // A few more sweeps: the cap is met, nothing else goes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut kept = newest.to_vec();
    kept.push(running.id.clone());
    for id in &kept {
        let resp = cluster
            .try_get(id)
            .await
            .unwrap_or_else(|s| panic!("{id} was deleted: {s:?}"));
        assert!(resp.task.is_some());
    }
    assert_listed(&cluster, oldest, &kept).await;
}
