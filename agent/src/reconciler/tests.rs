//! Reconciler flows driven by manager messages and container events.
#![allow(clippy::unwrap_used)]
use std::time::Duration;

use minkube::pb::{self, TaskState};

use super::test_harness::{assignment, spec, stop_order, Harness, IMAGE, NODE};
use super::Input;
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{ContainerStatus, RuntimeError};

fn runtime() -> FakeRuntime {
    let rt = FakeRuntime::new();
    rt.add_image(IMAGE);
    rt
}

#[tokio::test(start_paused = true)]
async fn assignment_is_recorded_acked_and_reported_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    let mut a = assignment("t1", 1);
    a.spec.as_mut().unwrap().ports = vec![pb::PortSpec {
        container_port: 80,
        protocol: 0,
    }];
    h.send(Input::Assignment(Box::new(a))).await;

    h.expect_ack("t1", 1).await;
    let scheduled = h.expect("t1", TaskState::Scheduled).await;
    assert_eq!(
        (scheduled.sequence, scheduled.reason.as_str()),
        (1, "preparing")
    );
    let running = h.expect("t1", TaskState::Running).await;
    assert_eq!(running.sequence, 2);
    assert_eq!(running.container_id, "c1");
    assert_eq!(running.ports.len(), 1);
    assert_eq!(running.ports[0].container_port, 80);
    assert!(running.ports[0].host_port > 0);
    assert!(running.started_at.is_some());
    assert!(running.observed_at.is_some());
    assert_eq!(h.running(), 1);

    let created = rt.container("c1").unwrap();
    let labels = &created.spec.unwrap().labels;
    assert_eq!(labels["minkube.node-id"], NODE);
    assert_eq!(labels["minkube.task-id"], "t1");

    rt.exit("c1", 0, false).await;
    let done = h.expect("t1", TaskState::Completed).await;
    assert_eq!(done.reason, "exited with code 0");
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(done.sequence, 3);
    assert_eq!(done.container_id, "c1");
    assert!(done.finished_at.is_some());
    assert!(done.ports.is_empty(), "a finished container holds no ports");
    assert_eq!(done.started_at, running.started_at);
    assert_eq!(h.running(), 0);
    // Kept for its logs.
    assert!(rt.container("c1").is_some());

    let rec = h.record("t1").unwrap();
    assert_eq!(rec.sequence, 3);
    assert_eq!(rec.last_update.unwrap(), done);
    h.expect_quiet().await;
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_known_assignment_is_only_acked_again() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    h.run_task("t1").await;
    h.send(Input::Assignment(Box::new(assignment("t1", 1))))
        .await;
    h.expect_ack("t1", 1).await;
    h.expect_quiet().await;
    assert_eq!(rt.calls_starting("create").len(), 1);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn non_zero_exits_and_oom_kills_fail() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    let a = h.run_task("t1").await;
    let b = h.run_task("t2").await;
    rt.exit(&a.container_id, 3, false).await;
    let failed = h.expect("t1", TaskState::Failed).await;
    assert_eq!(
        (failed.reason.as_str(), failed.exit_code),
        ("exited with code 3", Some(3))
    );
    rt.exit(&b.container_id, 137, true).await;
    let oom = h.expect("t2", TaskState::Failed).await;
    assert_eq!(oom.reason, "out of memory (OOM killed)");
    assert_eq!(oom.exit_code, Some(137));
    h.shutdown().await;
}

#[tokio::test]
async fn containers_ending_together_share_one_sync_of_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    let mut containers = Vec::new();
    for i in 0..10 {
        containers.push(h.run_task(&format!("t{i}")).await.container_id);
    }
    let before = h.store.syncs();
    for c in &containers {
        rt.exit(c, 0, false).await;
    }
    for i in 0..10 {
        h.expect(&format!("t{i}"), TaskState::Completed).await;
    }
    let syncs = h.store.syncs() - before;
    // The exits queue up together, so one round (one sync) takes them all;
    // one more is slack for a runtime that splits them.
    assert!(syncs <= 2, "10 exits took {syncs} syncs");
    // The records say so too.
    for i in 0..10 {
        let rec = h.record(&format!("t{i}")).unwrap();
        assert_eq!(rec.state(), TaskState::Completed);
    }
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_missing_image_that_cannot_be_pulled_fails_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    let mut a = assignment("t1", 1);
    a.spec = Some(spec("nope:1"));
    h.send(Input::Assignment(Box::new(a))).await;
    h.expect("t1", TaskState::Scheduled).await;
    let pulling = h.expect("t1", TaskState::Scheduled).await;
    assert_eq!(pulling.reason, "pulling image \"nope:1\"");
    let failed = h.expect("t1", TaskState::Failed).await;
    assert!(
        failed
            .reason
            .starts_with("image \"nope:1\" is not on this node and could not be pulled: "),
        "{}",
        failed.reason
    );
    assert!(
        failed.reason.contains("pull access denied"),
        "{}",
        failed.reason
    );
    h.expect_quiet().await;
    assert_eq!(rt.pulls(), vec!["nope:1".to_string()]);
    assert!(rt.calls_starting("create").is_empty());
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn pull_policy_never_fails_without_pulling() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    let mut a = assignment("t1", 1);
    let mut s = spec("absent:1");
    s.pull_policy = pb::PullPolicy::Never as i32;
    a.spec = Some(s);
    h.send(Input::Assignment(Box::new(a))).await;
    h.expect("t1", TaskState::Scheduled).await;
    let failed = h.expect("t1", TaskState::Failed).await;
    assert!(failed.reason.contains("\"absent:1\""), "{}", failed.reason);
    assert!(
        failed.reason.contains("pull policy is never"),
        "{}",
        failed.reason
    );
    assert!(rt.pulls().is_empty());
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn create_errors_and_invalid_specs_fail_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    let mut bad = assignment("t1", 1);
    bad.spec.as_mut().unwrap().memory_mb = 1;
    h.send(Input::Assignment(Box::new(bad))).await;
    h.expect("t1", TaskState::Scheduled).await;
    let failed = h.expect("t1", TaskState::Failed).await;
    assert!(
        failed
            .reason
            .starts_with("invalid task spec: spec.memory_mb"),
        "{}",
        failed.reason
    );

    rt.fail_create(RuntimeError::Daemon {
        action: "start the container",
        status: Some(400),
        message: "exec: \"nope\": executable file not found".into(),
    });
    h.send(Input::Assignment(Box::new(assignment("t2", 1))))
        .await;
    h.expect("t2", TaskState::Scheduled).await;
    let failed = h.expect("t2", TaskState::Failed).await;
    assert_eq!(
        failed.reason,
        "Docker could not start the container: exec: \"nope\": executable file not found"
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn stop_order_stops_removes_and_completes_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    let running = h.run_task("t1").await;
    h.send(Input::Stop(stop_order("t1", 1))).await;
    let done = h.expect("t1", TaskState::Completed).await;
    assert_eq!(done.reason, "stopped by user");
    assert_eq!(done.exit_code, Some(143));
    assert_eq!(done.container_id, running.container_id);
    assert!(rt.container(&running.container_id).is_none(), "removed");
    assert!(h.record("t1").unwrap().stop_requested);
    // The die event of the stop adds nothing; a repeated order neither.
    h.send(Input::Stop(stop_order("t1", 1))).await;
    h.expect_quiet().await;
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn stop_while_preparing_completes_without_a_container() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new();
    rt.set_pullable(IMAGE);
    rt.set_pull_delay(Duration::from_secs(300));
    let mut h = Harness::start(&rt, dir.path());
    h.send(Input::Assignment(Box::new(assignment("t1", 1))))
        .await;
    h.expect("t1", TaskState::Scheduled).await;
    let pulling = h.expect("t1", TaskState::Scheduled).await;
    assert!(pulling.reason.starts_with("pulling image"));
    h.send(Input::Stop(stop_order("t1", 1))).await;
    let done = h.expect("t1", TaskState::Completed).await;
    assert_eq!(done.reason, "stopped by user");
    assert_eq!(done.exit_code, None);
    assert_eq!(done.container_id, "");
    assert!(rt.calls_starting("create").is_empty());
    h.expect_quiet().await;
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_stop_order_for_an_unknown_task_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let leftover = rt.insert_container(NODE, "t9", 2, ContainerStatus::Running, None);
    let mut h = Harness::start(&rt, dir.path());
    h.send(Input::Stop(stop_order("t9", 2))).await;
    let done = h.expect("t9", TaskState::Completed).await;
    assert_eq!((done.attempt, done.sequence), (2, 1));
    assert_eq!(done.exit_code, Some(143));
    assert!(rt.container(&leftover).is_none());
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_new_attempt_replaces_the_old_one_and_keeps_the_sequence_going() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    let first = h.run_task("t1").await;
    h.send(Input::Assignment(Box::new(assignment("t1", 2))))
        .await;
    h.expect_ack("t1", 2).await;
    let scheduled = h.expect("t1", TaskState::Scheduled).await;
    assert_eq!((scheduled.attempt, scheduled.sequence), (2, 3));
    let running = h.expect("t1", TaskState::Running).await;
    assert_eq!((running.attempt, running.sequence), (2, 4));
    assert_ne!(running.container_id, first.container_id);
    // An older attempt's assignment is ignored.
    h.send(Input::Assignment(Box::new(assignment("t1", 1))))
        .await;
    h.expect_quiet().await;
    assert!(
        rt.container(&first.container_id).is_none(),
        "old attempt removed"
    );
    assert_eq!(rt.containers().len(), 1);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn desired_set_starts_adopts_and_sweeps() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let adopted = rt.insert_container(NODE, "a", 1, ContainerStatus::Running, None);
    let stray = rt.insert_container(NODE, "c", 1, ContainerStatus::Running, None);
    let finished = rt.insert_container(NODE, "d", 1, ContainerStatus::Exited, Some(0));
    let foreign = rt.insert_container("node-2", "e", 1, ContainerStatus::Running, None);
    let mut h = Harness::start(&rt, dir.path());
    assert!(h.full_sync(1).await.is_empty());
    h.send(Input::DesiredSet(pb::DesiredSet {
        assignments: vec![assignment("a", 1), assignment("b", 1)],
    }))
    .await;
    h.expect_ack("a", 1).await;
    h.expect("a", TaskState::Scheduled).await;
    h.expect_ack("b", 1).await;
    h.expect("b", TaskState::Scheduled).await;
    let mut running = [h.update().await, h.update().await];
    running.sort_by(|x, y| x.task_id.cmp(&y.task_id));
    assert_eq!(running[0].state(), TaskState::Running);
    assert_eq!(running[0].container_id, adopted, "adopted, not recreated");
    assert_eq!(running[1].state(), TaskState::Running);
    assert_eq!(rt.calls_starting("create"), vec!["create b/1".to_string()]);
    h.expect_quiet().await;
    assert!(rt.container(&stray).is_none(), "stray container removed");
    assert!(
        rt.container(&finished).is_some(),
        "exited containers are the user's"
    );
    assert!(
        rt.container(&foreign).is_some(),
        "other nodes' containers untouched"
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn desired_set_stops_unlisted_tasks_and_forgets_synced_terminal_ones() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    let x = h.run_task("x").await;
    let y = h.run_task("y").await;
    rt.exit(&y.container_id, 0, false).await;
    h.expect("y", TaskState::Completed).await;

    let synced = h.full_sync(7).await;
    assert_eq!(
        synced
            .iter()
            .map(|u| (u.task_id.as_str(), u.state()))
            .collect::<Vec<_>>(),
        vec![("x", TaskState::Running), ("y", TaskState::Completed)]
    );
    h.send(Input::DesiredSet(pb::DesiredSet::default())).await;
    let stopped = h.expect("x", TaskState::Completed).await;
    assert!(
        stopped.reason.starts_with("stopped: no longer wanted"),
        "{}",
        stopped.reason
    );
    assert!(rt.container(&x.container_id).is_none());
    assert!(h.record("y").is_none(), "synced terminal record deleted");
    assert!(
        rt.container(&y.container_id).is_some(),
        "its container stays for logs"
    );
    // x ended after the snapshot: kept until a later desired set.
    assert!(h.record("x").is_some());
    let synced = h.full_sync(8).await;
    assert_eq!(synced.len(), 1);
    h.send(Input::DesiredSet(pb::DesiredSet::default())).await;
    h.expect_quiet().await;
    assert!(h.record("x").is_none());
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_exit_does_not_wait_for_the_start_call_to_return() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.exit_at_once(3);
    rt.set_start_return_delay(Duration::from_secs(30));
    let mut h = Harness::start(&rt, dir.path());
    let t0 = tokio::time::Instant::now();
    h.send(Input::Assignment(Box::new(assignment("t1", 1))))
        .await;
    h.expect("t1", TaskState::Scheduled).await;
    let running = h.expect("t1", TaskState::Running).await;
    let failed = h.expect("t1", TaskState::Failed).await;
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "reported only when the start call returned"
    );
    assert!(!running.container_id.is_empty());
    assert_eq!(failed.container_id, running.container_id);
    assert_eq!(failed.exit_code, Some(3));
    assert!(running.started_at.is_some());
    // Released while the start call is still out: the record goes only
    // when the job ends, and the container stays for its logs.
    h.send(Input::Release(pb::Release {
        attempts: vec![pb::ReleasedAttempt {
            task_id: "t1".into(),
            attempt: 1,
        }],
    }))
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(h.record("t1").is_some(), "dropped while its start job ran");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(h.record("t1").is_none(), "the held release was not applied");
    assert!(rt.container(&running.container_id).is_some());
    h.expect_quiet().await;
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_container_exiting_at_once_reports_running_then_its_exit() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.exit_at_once(0);
    let mut h = Harness::start(&rt, dir.path());
    h.send(Input::Assignment(Box::new(assignment("t1", 1))))
        .await;
    h.expect("t1", TaskState::Scheduled).await;
    let running = h.expect("t1", TaskState::Running).await;
    let done = h.expect("t1", TaskState::Completed).await;
    assert_eq!(done.sequence, running.sequence + 1);
    assert_eq!(done.reason, "exited with code 0");
    h.expect_quiet().await;
    h.shutdown().await;
}
