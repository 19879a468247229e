//! Reconciler flows around restarts, full syncs and re-lists.
#![allow(clippy::unwrap_used)]
use std::time::Duration;

use minkube::pb::{self, TaskState};

use super::test_harness::{assignment, settings, Harness, IMAGE, NODE};
use super::{Input, Settings};
use crate::local_store::{LocalStore, TaskRecord};
use crate::runtime::fake::FakeRuntime;
use crate::runtime::ContainerStatus;

fn runtime() -> FakeRuntime {
    let rt = FakeRuntime::new();
    rt.add_image(IMAGE);
    rt
}

/// A record as an earlier agent run would have left it.
fn record(task_id: &str, state: TaskState, container_id: &str, sequence: u64) -> TaskRecord {
    let mut rec = TaskRecord::new(assignment(task_id, 1));
    rec.sequence = sequence;
    rec.last_update = Some(pb::TaskStatusUpdate {
        task_id: task_id.into(),
        attempt: 1,
        sequence,
        state: state as i32,
        container_id: container_id.into(),
        ..Default::default()
    });
    rec
}

#[tokio::test(start_paused = true)]
async fn startup_reconciles_records_with_the_containers_found() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let alive = rt.insert_container(NODE, "alive", 1, ContainerStatus::Running, None);
    let exited = rt.insert_container(NODE, "exited", 1, ContainerStatus::Exited, Some(2));
    let created = rt.insert_container(NODE, "created", 1, ContainerStatus::Running, None);
    let store = LocalStore::open(dir.path()).unwrap();
    store
        .save_task(&record("alive", TaskState::Running, &alive, 5))
        .unwrap();
    store
        .save_task(&record("exited", TaskState::Running, &exited, 5))
        .unwrap();
    store
        .save_task(&record("gone", TaskState::Running, "c99", 5))
        .unwrap();
    store
        .save_task(&record("fresh", TaskState::Scheduled, "", 1))
        .unwrap();
    // Crashed between create and the RUNNING report: found by label.
    store
        .save_task(&record("created", TaskState::Scheduled, "", 1))
        .unwrap();
    drop(store); // the agent's store takes the data dir's lock

    let mut h = Harness::start(&rt, dir.path());
    let synced = h.full_sync(1).await;
    let view: Vec<(&str, TaskState, u64, &str)> = synced
        .iter()
        .map(|u| (u.task_id.as_str(), u.state(), u.sequence, u.reason.as_str()))
        .collect();
    assert_eq!(view[0], ("alive", TaskState::Running, 5, ""));
    assert_eq!(view[1].0, "created");
    assert_eq!((view[1].1, view[1].2), (TaskState::Running, 2));
    assert_eq!(synced[1].container_id, created);
    assert_eq!(
        view[2],
        ("exited", TaskState::Failed, 6, "exited with code 2")
    );
    assert_eq!(synced[2].exit_code, Some(2));
    assert_eq!(view[3], ("fresh", TaskState::Scheduled, 1, ""));
    assert_eq!(view[4].0, "gone");
    assert_eq!((view[4].1, view[4].2), (TaskState::Failed, 6));
    assert!(view[4].3.contains("disappeared"), "{}", view[4].3);
    assert_eq!(h.running(), 2);

    // The desired set gets the never-started task going.
    h.send(Input::DesiredSet(pb::DesiredSet {
        assignments: vec![assignment("alive", 1), assignment("fresh", 1)],
    }))
    .await;
    h.expect_ack("alive", 1).await;
    h.expect_ack("fresh", 1).await;
    let running = h.expect("fresh", TaskState::Running).await;
    assert_eq!(running.sequence, 2);
    assert_eq!(
        rt.calls_starting("create"),
        vec!["create fresh/1".to_string()]
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn sequences_keep_increasing_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    let running = h.run_task("t1").await;
    assert_eq!(running.sequence, 2);
    h.shutdown().await;
    assert!(
        rt.container(&running.container_id)
            .unwrap()
            .info
            .status
            .is_live(),
        "containers keep running over an agent restart"
    );

    let mut h = Harness::start(&rt, dir.path());
    let synced = h.full_sync(1).await;
    assert_eq!(synced, vec![running.clone()]);
    rt.exit(&running.container_id, 0, false).await;
    let done = h.expect("t1", TaskState::Completed).await;
    assert_eq!(done.sequence, 3);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_broken_event_stream_leads_to_a_relist() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    let running = h.run_task("t1").await;
    // Missed while the stream was down.
    rt.vanish(&running.container_id);
    rt.break_events().await;
    let failed = h.expect("t1", TaskState::Failed).await;
    assert!(failed.reason.contains("disappeared"), "{}", failed.reason);
    assert!(rt.calls_starting("subscribe").len() >= 2, "resubscribed");
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn events_after_a_resubscription_still_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    let running = h.run_task("t1").await;
    rt.break_events().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    rt.exit(&running.container_id, 4, false).await;
    let failed = h.expect("t1", TaskState::Failed).await;
    assert_eq!(failed.reason, "exited with code 4");
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_periodic_resync_catches_silent_changes() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let settings = Settings {
        resync_interval: Duration::from_secs(20),
        ..settings()
    };
    let mut h = Harness::start_with(&rt, dir.path(), settings);
    let running = h.run_task("t1").await;
    let lists_before = rt.calls_starting("list").len();
    rt.vanish(&running.container_id);
    let failed = h.expect("t1", TaskState::Failed).await;
    assert!(failed.reason.contains("disappeared"), "{}", failed.reason);
    assert!(rt.calls_starting("list").len() > lists_before);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_terminal_task_the_manager_still_lists_is_reported_again() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    let running = h.run_task("t1").await;
    rt.exit(&running.container_id, 0, false).await;
    let done = h.expect("t1", TaskState::Completed).await;
    h.full_sync(1).await;
    h.send(Input::DesiredSet(pb::DesiredSet {
        assignments: vec![assignment("t1", 1)],
    }))
    .await;
    h.expect_ack("t1", 1).await;
    let again = h.expect("t1", TaskState::Completed).await;
    assert_eq!(again.sequence, done.sequence + 1);
    assert_eq!(again.reason, done.reason);
    assert_eq!(rt.calls_starting("create").len(), 1, "never restarted");
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn released_finished_attempts_are_dropped_and_others_kept() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    let done = h.run_task("done").await;
    rt.exit(&done.container_id, 0, false).await;
    h.expect("done", TaskState::Completed).await;
    h.run_task("live").await;
    let release = |task_id: &str, attempt: u32| pb::ReleasedAttempt {
        task_id: task_id.into(),
        attempt,
    };
    // Another attempt, a running task, and one the agent never had stay
    // as they are; only the finished attempt goes.
    h.send(Input::Release(pb::Release {
        attempts: vec![
            release("done", 2),
            release("live", 1),
            release("unknown", 1),
        ],
    }))
    .await;
    h.expect_quiet().await;
    assert!(h.record("done").is_some());
    h.send(Input::Release(pb::Release {
        attempts: vec![release("done", 1)],
    }))
    .await;
    h.expect_quiet().await;
    assert!(h.record("done").is_none(), "released");
    assert!(h.record("live").is_some());
    assert_eq!(h.running(), 1);
    // Kept for its logs: a released record is not a removed container.
    assert!(rt.container(&done.container_id).is_some());
    h.shutdown().await;
    assert_eq!(
        crate::local_store::stored_ids(dir.path()),
        ["live"],
        "the drop reached the disk"
    );
}
