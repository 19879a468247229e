//! Every FAILED update says what kind of failure it was, and failures are
//! reported at once: the manager decides about another attempt.
#![allow(clippy::unwrap_used)]
use std::time::Duration;

use minkube::pb::{self, FailureKind, TaskState};
use tokio::time::Instant;

use super::test_harness::{assignment, spec, Harness, IMAGE, NODE};
use super::Input;
use crate::local_store::{LocalStore, TaskRecord};
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{ContainerStatus, RuntimeError};

fn runtime() -> FakeRuntime {
    let rt = FakeRuntime::new();
    rt.add_image(IMAGE);
    rt
}

/// Assigns `a` and returns the FAILED update that follows its SCHEDULED
/// report(s).
async fn fails(h: &mut Harness, a: pb::Assignment) -> pb::TaskStatusUpdate {
    let task_id = a.task_id.clone();
    h.send(Input::Assignment(Box::new(a))).await;
    loop {
        let u = h.update().await;
        assert_eq!(u.task_id, task_id);
        match u.state() {
            TaskState::Scheduled => {}
            TaskState::Failed => return u,
            other => panic!("expected a failure, got {other:?}: {u:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn containers_that_ran_and_failed_are_exited_and_successes_carry_no_kind() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    let a = h.run_task("t1").await;
    let b = h.run_task("t2").await;
    let c = h.run_task("t3").await;
    assert_eq!(a.failure(), FailureKind::Unspecified);
    rt.exit(&a.container_id, 3, false).await;
    let failed = h.expect("t1", TaskState::Failed).await;
    assert_eq!(failed.failure(), FailureKind::Exited);
    rt.exit(&b.container_id, 137, true).await;
    let oom = h.expect("t2", TaskState::Failed).await;
    assert_eq!(
        (oom.failure(), oom.reason.as_str()),
        (FailureKind::Exited, "out of memory (OOM killed)")
    );
    rt.exit(&c.container_id, 0, false).await;
    let done = h.expect("t3", TaskState::Completed).await;
    assert_eq!(done.failure(), FailureKind::Unspecified);
    // Kept in the record, so a full sync carries the kind too.
    assert_eq!(
        h.record("t1").unwrap().last_update.unwrap().failure(),
        FailureKind::Exited
    );
    let synced = h.full_sync(1).await;
    assert_eq!(synced[0].failure(), FailureKind::Exited);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_vanished_container_is_exited() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    let running = h.run_task("t1").await;
    rt.vanish(&running.container_id);
    rt.break_events().await;
    let failed = h.expect("t1", TaskState::Failed).await;
    assert!(failed.reason.contains("disappeared"), "{}", failed.reason);
    assert_eq!(failed.failure(), FailureKind::Exited);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_container_found_exited_after_a_restart_is_exited() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let id = rt.insert_container(NODE, "t1", 1, ContainerStatus::Exited, Some(2));
    let mut rec = TaskRecord::new(assignment("t1", 1));
    rec.sequence = 2;
    rec.last_update = Some(pb::TaskStatusUpdate {
        task_id: "t1".into(),
        attempt: 1,
        sequence: 2,
        state: TaskState::Running as i32,
        container_id: id,
        ..Default::default()
    });
    LocalStore::open(dir.path())
        .unwrap()
        .save_task(&rec)
        .unwrap();
    let mut h = Harness::start(&rt, dir.path());
    let synced = h.full_sync(1).await;
    assert_eq!(
        (synced[0].state(), synced[0].failure()),
        (TaskState::Failed, FailureKind::Exited)
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn what_will_not_work_next_time_is_permanent() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());

    let mut missing = assignment("missing", 1);
    missing.spec = Some(spec("nope:1"));
    let failed = fails(&mut h, missing).await;
    assert!(
        failed.reason.contains("pull access denied"),
        "{}",
        failed.reason
    );
    assert_eq!(failed.failure(), FailureKind::Permanent);

    let mut never = assignment("never", 1);
    let mut s = spec("absent:1");
    s.pull_policy = pb::PullPolicy::Never as i32;
    never.spec = Some(s);
    assert_eq!(fails(&mut h, never).await.failure(), FailureKind::Permanent);

    let mut invalid = assignment("invalid", 1);
    invalid.spec.as_mut().unwrap().memory_mb = 1;
    assert_eq!(
        fails(&mut h, invalid).await.failure(),
        FailureKind::Permanent
    );

    rt.fail_create(RuntimeError::Daemon {
        action: "create the container",
        status: Some(400),
        message: "invalid port specification: \"99999\"".into(),
    });
    let refused = fails(&mut h, assignment("refused", 1)).await;
    assert_eq!(refused.failure(), FailureKind::Permanent);
    assert!(refused
        .reason
        .starts_with("Docker could not create the container: "));
    h.expect_quiet().await;
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn what_may_work_next_time_is_transient_and_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());

    rt.fail_create(RuntimeError::Unavailable(
        "error trying to connect: Connection refused (os error 111)".into(),
    ));
    let before = Instant::now();
    let down = fails(&mut h, assignment("down", 1)).await;
    assert!(
        before.elapsed() < Duration::from_millis(100),
        "no waiting before the report"
    );
    assert_eq!(down.failure(), FailureKind::Transient);
    assert!(
        down.reason.starts_with("cannot reach Docker: "),
        "{}",
        down.reason
    );

    rt.fail_create(RuntimeError::Unavailable(
        "no answer in time while trying to create the container".into(),
    ));
    let slow = fails(&mut h, assignment("slow", 1)).await;
    assert_eq!(slow.failure(), FailureKind::Transient);

    rt.heal();
    rt.fail_pull(RuntimeError::Daemon {
        action: "pull the image",
        status: Some(500),
        message: "Get \"https://registry-1.docker.io/v2/\": dial tcp: lookup registry-1.docker.io on 10.0.0.1:53: no such host".into(),
    });
    let mut offline = assignment("offline", 1);
    offline.spec = Some(spec("elsewhere:1"));
    let failed = fails(&mut h, offline).await;
    assert_eq!(failed.failure(), FailureKind::Transient);
    assert!(failed.reason.contains("no such host"), "{}", failed.reason);

    // Tried once each, nothing more however long one waits: a new attempt
    // comes from the manager.
    h.expect_quiet().await;
    assert_eq!(
        rt.calls_starting("create"),
        vec!["create down/1".to_string(), "create slow/1".to_string()]
    );
    assert_eq!(rt.pulls(), vec!["elsewhere:1".to_string()]);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_attempt_after_a_transient_failure_runs_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut h = Harness::start(&rt, dir.path());
    rt.fail_create(RuntimeError::Unavailable("connection refused".into()));
    let failed = fails(&mut h, assignment("t1", 1)).await;
    assert_eq!(
        (failed.attempt, failed.failure()),
        (1, FailureKind::Transient)
    );
    rt.heal();
    h.send(Input::Assignment(Box::new(assignment("t1", 2))))
        .await;
    h.expect_ack("t1", 2).await;
    let scheduled = h.expect("t1", TaskState::Scheduled).await;
    assert_eq!(
        (
            scheduled.attempt,
            scheduled.reason.as_str(),
            scheduled.failure()
        ),
        (2, "preparing", FailureKind::Unspecified)
    );
    assert_eq!(scheduled.exit_code, None);
    let running = h.expect("t1", TaskState::Running).await;
    assert_eq!(
        (running.attempt, running.failure()),
        (2, FailureKind::Unspecified)
    );
    h.expect_quiet().await;
    h.shutdown().await;
}
