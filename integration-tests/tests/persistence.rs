//! The manager's store survives a crash: kill -9, restart on the same data
//! dir and port, and every task is there with its status and events.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use minkube::pb::{CreateTaskRequest, GetTaskResponse, ListTasksRequest, TaskState};
use minkube_integration_tests::{describe, Cluster, WAIT};

/// What must survive a restart, per task.
fn snapshot(resp: &GetTaskResponse) -> String {
    let task = resp.task.as_ref().unwrap();
    let s = describe::status(task);
    let events: Vec<String> = resp
        .events
        .iter()
        .map(|e| {
            format!(
                "{} {:?} attempt={} node={} reason={:?} at={:?}",
                e.id,
                describe::event_state(e),
                e.attempt,
                e.node_id,
                e.reason,
                e.timestamp
            )
        })
        .collect();
    format!(
        "spec={:?} desired={} state={:?} node={} exit={:?} attempt={} container={} \
         ports={:?} started={:?} finished={:?} created={:?} events={events:#?}",
        task.spec,
        task.desired_state,
        describe::state(task),
        s.node_id,
        s.exit_code,
        s.attempt,
        s.container_id,
        s.ports,
        s.started_at,
        s.finished_at,
        task.created_at,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_and_events_survive_a_manager_crash() {
    let mut cluster = Cluster::start(&["a"]).await;

    let done = cluster
        .create(cluster.spec("done", &["sh", "-c", "exit 0"]))
        .await;
    let failed = cluster
        .create(cluster.spec("failed", &["sh", "-c", "exit 3"]))
        .await;
    let running = cluster
        .create(cluster.spec("running", &["sleep", "300"]))
        .await;
    // Larger than any node: stays PENDING.
    let mut huge = cluster.spec("huge", &["true"]);
    huge.memory_mb = 16 * 1024 * 1024;
    let pending = cluster.create(huge).await;

    cluster
        .wait_task_state(&done.id, &[TaskState::Completed], WAIT)
        .await;
    cluster
        .wait_task_state(&failed.id, &[TaskState::Failed], WAIT)
        .await;
    cluster
        .wait_task_state(&running.id, &[TaskState::Running], WAIT)
        .await;
    let ids = [&done.id, &failed.id, &running.id, &pending.id];

    let mut before = BTreeMap::new();
    for id in ids {
        before.insert(id.clone(), cluster.get(id).await);
    }
    assert_eq!(
        describe::state(before[&pending.id].task.as_ref().unwrap()),
        TaskState::Pending,
        "{}",
        describe::task_with_events(&before[&pending.id])
    );
    let list_before = cluster.list(ListTasksRequest::default()).await;
    assert_eq!(list_before.total_count, 4);

    cluster.kill_manager();
    cluster.restart_manager();

    let list_after = cluster.list(ListTasksRequest::default()).await;
    assert_eq!(list_after.total_count, 4, "{:?}", list_after.tasks);
    let listed: Vec<&str> = list_after.tasks.iter().map(|t| t.id.as_str()).collect();
    let listed_before: Vec<&str> = list_before.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(listed, listed_before, "same tasks, same order");

    for id in ids {
        let after = cluster.get(id).await;
        let was = &before[id];
        assert_eq!(
            after.events.len(),
            was.events.len(),
            "events of {id} before: {} after: {}",
            describe::task_with_events(was),
            describe::task_with_events(&after)
        );
        assert_eq!(
            snapshot(&after),
            snapshot(was),
            "task {id} changed across the restart"
        );
        let reason_after = describe::status(after.task.as_ref().unwrap()).reason;
        let reason_before = describe::status(was.task.as_ref().unwrap()).reason;
        if id != &pending.id {
            // A PENDING task's reason may be recomputed; the others are final.
            assert_eq!(reason_after, reason_before, "reason of {id}");
        } else {
            assert!(!reason_after.is_empty(), "pending task keeps a reason");
        }
    }

    // The agent comes back on its own and the cluster keeps working.
    cluster.wait_nodes_ready(1).await;
    let next = cluster
        .create(cluster.spec("after-restart", &["sleep", "300"]))
        .await;
    assert!(!ids.contains(&&next.id), "a fresh id");
    cluster
        .wait_task_state(&next.id, &[TaskState::Running], WAIT)
        .await;
    let still = cluster.get(&running.id).await;
    assert_eq!(
        describe::state(still.task.as_ref().unwrap()),
        TaskState::Running,
        "{}",
        describe::task_with_events(&still)
    );
    assert_eq!(
        still.events.len(),
        before[&running.id].events.len(),
        "reconnecting adds no event to an unchanged task: {}",
        describe::task_with_events(&still)
    );
}

/// Number of the newest journal segment in the manager's data dir (0: none).
fn newest_segment(cluster: &Cluster) -> u64 {
    std::fs::read_dir(cluster.manager_data_dir().join("journal"))
        .map(|dir| {
            dir.filter_map(|e| {
                let path = e.ok()?.path();
                (path.extension()? == "log")
                    .then(|| path.file_stem()?.to_str()?.parse().ok())
                    .flatten()
            })
            .max()
            .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Every CreateTask the manager answered is durable, even when it is killed
/// in the middle of a stream of them: concurrent callers, kill -9, restart.
/// Killed once the journal is on its fifth segment (~8 MiB of commits): by
/// then new segments are made from the files of applied ones, and what is
/// read back after the restart includes such reused files.
#[tokio::test(flavor = "multi_thread")]
async fn every_acknowledged_create_survives_a_kill_mid_load() {
    const CALLERS: usize = 16;
    const MAX_PER_CALLER: usize = 4_000;
    const KILL_AT_SEGMENT: u64 = 5;
    // No agent: the tasks stay PENDING, so only the store is exercised.
    let mut cluster = Cluster::start(&[]).await;
    let client = cluster.control().await;
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut callers = Vec::new();
    for c in 0..CALLERS {
        let mut client = client.clone();
        let acknowledged = Arc::clone(&acknowledged);
        let spec = cluster.spec(&format!("load-{c}"), &["true"]);
        callers.push(tokio::spawn(async move {
            // Until the manager dies under it (bounded either way).
            for _ in 0..MAX_PER_CALLER {
                let req = CreateTaskRequest {
                    spec: Some(spec.clone()),
                };
                match client.create_task(req).await {
                    Ok(resp) => {
                        let id = resp.into_inner().task.map(|t| t.id).unwrap_or_default();
                        acknowledged.lock().unwrap().push(id);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill while requests are in flight.
    let deadline = tokio::time::Instant::now() + WAIT;
    while acknowledged.lock().unwrap().len() < 500 || newest_segment(&cluster) < KILL_AT_SEGMENT {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the journal did not reach segment {KILL_AT_SEGMENT}: {} creates acknowledged, newest segment {}",
            acknowledged.lock().unwrap().len(),
            newest_segment(&cluster)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.kill_manager();
    for caller in callers {
        tokio::time::timeout(WAIT, caller)
            .await
            .expect("a caller did not stop after the kill")
            .unwrap();
    }
    let acknowledged: Vec<String> = acknowledged.lock().unwrap().clone();

    cluster.restart_manager();
    let stored: HashSet<String> = cluster
        .list_all(&[])
        .await
        .into_iter()
        .map(|t| t.id)
        .collect();
    eprintln!(
        "{} creates acknowledged before the kill, {} tasks stored after it",
        acknowledged.len(),
        stored.len()
    );
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged tasks lost across kill -9, e.g. {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(5)]
    );
    // At most the calls cut off by the kill were stored unanswered.
    assert!(
        stored.len() <= acknowledged.len() + CALLERS,
        "{} stored, {} acknowledged",
        stored.len(),
        acknowledged.len()
    );
}
