//! Transient failures are retried with a growing backoff up to
//! max_attempts; permanent ones fail at once. Docker is made unreachable
//! for the agent with a socket proxy; a missing image comes from a fake
//! registry on 127.0.0.1 that knows no image.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use minkube::convert::millis;
use minkube::pb::{GetTaskResponse, NodeState, TaskEvent, TaskState};
use minkube_common::duration::parse_duration;
use minkube_integration_tests::docker::task_containers;
use minkube_integration_tests::proxy::DockerSocketProxy;
use minkube_integration_tests::registry::FakeRegistry;
use minkube_integration_tests::{describe, AgentOptions, Cluster, WAIT};

/// Longer than any backoff the manager could still be waiting out here
/// (300 ms doubling, three attempts): time for an unwanted retry to show.
const QUIET: Duration = Duration::from_secs(3);

/// The delay a retry event announces: "attempt N/M in <delay>: why".
fn announced_delay(event: &TaskEvent) -> Option<Duration> {
    let rest = event.reason.split(" in ").nth(1)?;
    let delay = rest.split(':').next()?;
    parse_duration(delay).ok()
}

/// The first SCHEDULED event of `attempt`.
fn scheduled(resp: &GetTaskResponse, attempt: u32) -> Option<&TaskEvent> {
    resp.events
        .iter()
        .find(|e| e.attempt == attempt && describe::event_state(e) == TaskState::Scheduled)
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_failures_are_retried_then_permanent_fails_at_once() {
    let mut cluster = Cluster::builder()
        .manager_flag("--retry-backoff", "300ms")
        .start()
        .await;
    let docker = DockerSocketProxy::start(&cluster.dir().join("docker.sock")).await;
    cluster.add_agent_with(
        "a",
        AgentOptions::new().env("DOCKER_HOST", &docker.docker_host()),
    );
    cluster.wait_nodes_ready(1).await;

    docker.fail();
    let mut spec = cluster.spec("no-docker", &["sleep", "300"]);
    spec.max_attempts = 3;
    let task = cluster.create(spec).await;
    let failed = cluster
        .wait_task_state(&task.id, &[TaskState::Failed], WAIT)
        .await;
    let shown = describe::task_with_events(&failed);
    let status = describe::status(failed.task.as_ref().unwrap());
    assert_eq!(status.attempt, 3, "exactly 3 attempts: {shown}");
    assert!(
        status.reason.contains("gave up after 3 attempts"),
        "reason: {shown}"
    );
    let retry2 = scheduled(&failed, 2).unwrap_or_else(|| panic!("no SCHEDULED attempt 2: {shown}"));
    let retry3 = scheduled(&failed, 3).unwrap_or_else(|| panic!("no SCHEDULED attempt 3: {shown}"));
    assert!(
        retry2.reason.contains("attempt 2/3") && retry3.reason.contains("attempt 3/3"),
        "retry reasons count attempts: {shown}"
    );
    let (d2, d3) = (announced_delay(retry2), announced_delay(retry3));
    let (Some(d2), Some(d3)) = (d2, d3) else {
        panic!("retry reasons announce no delay (\"in <delay>:\"): {shown}");
    };
    assert!(d3 >= d2, "the backoff grows: {d2:?} then {d3:?}: {shown}");
    let at = |e: &TaskEvent| e.timestamp.as_ref().map_or(0, millis);
    assert!(at(retry2) <= at(retry3), "events in order: {shown}");
    assert!(!failed.events.iter().any(|e| e.attempt > 3), "{shown}");
    let failed_events = failed
        .events
        .iter()
        .filter(|e| describe::event_state(e) == TaskState::Failed)
        .count();
    assert_eq!(failed_events, 1, "{shown}");

    // No fourth attempt comes later.
    tokio::time::sleep(QUIET).await;
    let later = cluster.get(&task.id).await;
    assert_eq!(
        later.events,
        failed.events,
        "nothing after giving up: {}",
        describe::task_with_events(&later)
    );
    assert!(task_containers(&task.id).is_empty());

    docker.restore();
    cluster
        .wait_node_state("a", &[NodeState::Ready], WAIT)
        .await;
    let registry = FakeRegistry::start().await;
    let mut spec = cluster.spec("no-such-image", &[]);
    spec.image = registry.missing_image();
    let task = cluster.create(spec).await;
    let failed = cluster
        .wait_task_state(&task.id, &[TaskState::Failed], WAIT)
        .await;
    tokio::time::sleep(QUIET).await;
    let later = cluster.get(&task.id).await;
    let shown = describe::task_with_events(&later);
    let status = describe::status(later.task.as_ref().unwrap());
    assert_eq!(later.events, failed.events, "nothing after FAILED: {shown}");
    assert_eq!(
        status.attempt, 1,
        "a permanent failure is not retried: {shown}"
    );
    assert_eq!(status.transient_failures, 0, "{shown}");
    assert!(
        later.events.iter().all(|e| e.attempt <= 1),
        "no second attempt: {shown}"
    );
    assert_eq!(
        later
            .events
            .iter()
            .filter(|e| describe::event_state(e) == TaskState::Failed)
            .count(),
        1,
        "{shown}"
    );
    let reason = status.reason.to_lowercase();
    assert!(
        reason.contains("manifest unknown") || reason.contains("not found"),
        "the reason says the image does not exist: {shown}"
    );
    assert!(task_containers(&task.id).is_empty());
}
