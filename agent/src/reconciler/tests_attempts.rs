//! New attempts of a task the node already has: the older attempt's
//! containers go before the new one starts, only the newest attempt keeps a
//! container, and nothing more is reported for a replaced attempt.
#![allow(clippy::unwrap_used)]
use std::time::Duration;

use minkube::pb::{self, TaskState};

use super::test_harness::{assignment, stop_order, Harness, IMAGE, NODE};
use super::Input;
use crate::local_store::{LocalStore, TaskRecord};
use crate::runtime::fake::FakeRuntime;
use crate::runtime::ContainerStatus;

fn runtime() -> FakeRuntime {
    let rt = FakeRuntime::new();
    rt.add_image(IMAGE);
    rt
}

/// Ids of the task's containers, by attempt.
fn containers_of(rt: &FakeRuntime, task_id: &str) -> Vec<(u32, String)> {
    let mut v: Vec<(u32, String)> = rt
        .containers()
        .into_iter()
        .filter(|c| c.info.task_id == task_id)
        .map(|c| (c.info.attempt, c.info.id))
        .collect();
    v.sort();
    v
}

fn position(calls: &[String], call: &str) -> usize {
    calls
        .iter()
        .position(|c| c == call)
        .unwrap_or_else(|| panic!("no call {call:?} in {calls:?}"))
}

/// Sends attempt `attempt` of `task_id` and checks that it starts over
/// from SCHEDULED "preparing" and runs; returns the RUNNING update.
async fn run_attempt(h: &mut Harness, task_id: &str, attempt: u32) -> pb::TaskStatusUpdate {
    h.send(Input::Assignment(Box::new(assignment(task_id, attempt))))
        .await;
    h.expect_ack(task_id, attempt).await;
    let scheduled = h.expect(task_id, TaskState::Scheduled).await;
    assert_eq!(
        (scheduled.attempt, scheduled.reason.as_str()),
        (attempt, "preparing")
    );
    assert_eq!(scheduled.container_id, "", "nothing of the old attempt");
    assert_eq!(scheduled.exit_code, None);
    assert_eq!(scheduled.started_at, None);
    let running = h.expect(task_id, TaskState::Running).await;
    assert_eq!(running.attempt, attempt);
    running
}

#[tokio::test(start_paused = true)]
async fn the_running_attempt_is_stopped_and_removed_before_the_new_one_starts() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    let first = h.run_task("t1").await;
    assert_eq!(h.running(), 1);
    let second = run_attempt(&mut h, "t1", 2).await;
    assert!(second.sequence > first.sequence);
    // The replaced attempt no longer counts as running; the new one does.
    assert_eq!(h.running(), 1);
    let calls = rt.calls();
    assert!(
        position(&calls, &format!("stop {}", first.container_id)) < position(&calls, "create t1/2"),
        "{calls:?}"
    );
    assert_eq!(containers_of(&rt, "t1"), vec![(2, second.container_id)]);
    // The old container's die event (from the stop) is not reported.
    h.expect_quiet().await;
    assert_eq!(h.record("t1").unwrap().attempt(), 2);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn only_the_newest_attempt_keeps_its_exited_container() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    let first = h.run_task("t1").await;
    rt.exit(&first.container_id, 3, false).await;
    h.expect("t1", TaskState::Failed).await;
    assert_eq!(containers_of(&rt, "t1").len(), 1, "kept for its logs");

    let second = run_attempt(&mut h, "t1", 2).await;
    assert_eq!(
        containers_of(&rt, "t1"),
        vec![(2, second.container_id.clone())]
    );
    rt.exit(&second.container_id, 1, false).await;
    let failed = h.expect("t1", TaskState::Failed).await;
    assert_eq!(failed.attempt, 2);

    // A leftover of an even older attempt (e.g. from before an agent crash).
    rt.insert_container(NODE, "t1", 1, ContainerStatus::Exited, Some(3));
    let third = run_attempt(&mut h, "t1", 3).await;
    rt.exit(&third.container_id, 0, false).await;
    let done = h.expect("t1", TaskState::Completed).await;
    assert_eq!(done.sequence, 9, "one sequence across all attempts");
    assert_eq!(containers_of(&rt, "t1"), vec![(3, third.container_id)]);
    h.expect_quiet().await;
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_replaced_attempt_that_was_still_preparing_reports_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new();
    rt.set_pullable(IMAGE);
    rt.set_pull_delay(Duration::from_secs(40));
    let mut h = Harness::start(&rt, dir.path());
    h.send(Input::Assignment(Box::new(assignment("t1", 1))))
        .await;
    h.expect_ack("t1", 1).await;
    h.expect("t1", TaskState::Scheduled).await;
    let pulling = h.expect("t1", TaskState::Scheduled).await;
    assert_eq!(pulling.attempt, 1);

    h.send(Input::Assignment(Box::new(assignment("t1", 2))))
        .await;
    h.expect_ack("t1", 2).await;
    let mut seen = Vec::new();
    loop {
        let u = h.update().await;
        assert_eq!(u.attempt, 2, "no report of the replaced attempt: {u:?}");
        seen.push((u.state(), u.reason.clone()));
        if u.state() == TaskState::Running {
            break;
        }
    }
    assert_eq!(seen[0], (TaskState::Scheduled, "preparing".to_string()));
    assert_eq!(rt.calls_starting("create"), vec!["create t1/2".to_string()]);
    h.expect_quiet().await;
    assert_eq!(containers_of(&rt, "t1").len(), 1);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_newer_attempt_in_the_desired_set_replaces_the_one_found_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let old = rt.insert_container(NODE, "t1", 1, ContainerStatus::Running, None);
    let mut rec = TaskRecord::new(assignment("t1", 1));
    rec.sequence = 4;
    rec.last_update = Some(pb::TaskStatusUpdate {
        task_id: "t1".into(),
        attempt: 1,
        sequence: 4,
        state: TaskState::Running as i32,
        container_id: old.clone(),
        ..Default::default()
    });
    LocalStore::open(dir.path())
        .unwrap()
        .save_task(&rec)
        .unwrap();

    let mut h = Harness::start(&rt, dir.path());
    let synced = h.full_sync(1).await;
    assert_eq!((synced[0].attempt, synced[0].sequence), (1, 4));
    assert_eq!(h.running(), 1, "the loaded record counts");
    h.send(Input::DesiredSet(pb::DesiredSet {
        assignments: vec![assignment("t1", 2)],
    }))
    .await;
    h.expect_ack("t1", 2).await;
    let scheduled = h.expect("t1", TaskState::Scheduled).await;
    assert_eq!((scheduled.attempt, scheduled.sequence), (2, 5));
    let running = h.expect("t1", TaskState::Running).await;
    assert_eq!((running.attempt, running.sequence), (2, 6));
    h.expect_quiet().await;
    assert_eq!(h.running(), 1);
    assert!(rt.container(&old).is_none(), "the old attempt was removed");
    assert_eq!(containers_of(&rt, "t1"), vec![(2, running.container_id)]);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_sweep_removes_older_attempts_but_keeps_other_exited_containers() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let older = rt.insert_container(NODE, "t1", 1, ContainerStatus::Exited, Some(1));
    let finished = rt.insert_container(NODE, "gone", 4, ContainerStatus::Exited, Some(0));
    let mut h = Harness::start(&rt, dir.path());
    h.full_sync(1).await;
    // Placed straight as attempt 2 (attempt 1 ran here before a crash).
    h.send(Input::DesiredSet(pb::DesiredSet {
        assignments: vec![assignment("t1", 2)],
    }))
    .await;
    h.expect_ack("t1", 2).await;
    h.expect("t1", TaskState::Scheduled).await;
    let running = h.expect("t1", TaskState::Running).await;
    h.expect_quiet().await;
    assert!(rt.container(&older).is_none());
    assert!(rt.container(&finished).is_some(), "the user's logs");
    assert_eq!(containers_of(&rt, "t1"), vec![(2, running.container_id)]);

    // An older attempt's container showing up later goes with the next sweep.
    let late = rt.insert_container(NODE, "t1", 1, ContainerStatus::Exited, Some(1));
    h.send(Input::DesiredSet(pb::DesiredSet {
        assignments: vec![assignment("t1", 2)],
    }))
    .await;
    h.expect_ack("t1", 2).await;
    h.expect_quiet().await;
    assert!(rt.container(&late).is_none());
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_stop_removes_every_container_of_the_task_up_to_its_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    h.send(Input::Assignment(Box::new(assignment("t1", 2))))
        .await;
    h.expect_ack("t1", 2).await;
    h.expect("t1", TaskState::Scheduled).await;
    let running = h.expect("t1", TaskState::Running).await;
    let older = rt.insert_container(NODE, "t1", 1, ContainerStatus::Exited, Some(1));
    // Not this attempt's to remove: it belongs to whatever replaced it.
    let newer = rt.insert_container(NODE, "t1", 3, ContainerStatus::Running, None);
    h.send(Input::Stop(stop_order("t1", 2))).await;
    let done = h.expect("t1", TaskState::Completed).await;
    assert_eq!((done.attempt, done.reason.as_str()), (2, "stopped by user"));
    assert!(rt.container(&running.container_id).is_none());
    assert!(rt.container(&older).is_none());
    assert!(rt.container(&newer).is_some());
    h.shutdown().await;
}
