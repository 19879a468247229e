//! A task's life on an agent: exit codes, stop on request, published ports,
//! a missing image.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use minkube::pb::{PortSpec, Protocol, PullPolicy, TaskState};
use minkube_integration_tests::docker::{task_containers, wait_task_containers_gone};
use minkube_integration_tests::{describe, wait_for, Cluster, POLL, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The agents resync only every hour: a state change seen within this time
/// came from Docker's event stream.
const EVENT_WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn exit_zero_completes() {
    let cluster = Cluster::start(&["a"]).await;
    let task = cluster
        .create(cluster.spec("exit-zero", &["sh", "-c", "exit 0"]))
        .await;
    let resp = cluster
        .wait_task_state(&task.id, &[TaskState::Completed], EVENT_WAIT)
        .await;
    let status = describe::status(resp.task.as_ref().unwrap());
    assert_eq!(
        status.exit_code,
        Some(0),
        "{}",
        describe::task_with_events(&resp)
    );
    assert!(
        status.finished_at.is_some(),
        "finished_at is set: {status:?}"
    );
    let last = resp.events.last().unwrap();
    assert_eq!(describe::event_state(last), TaskState::Completed);
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_nonzero_fails_with_its_code() {
    let cluster = Cluster::start(&["a"]).await;
    let task = cluster
        .create(cluster.spec("exit-three", &["sh", "-c", "exit 3"]))
        .await;
    let resp = cluster
        .wait_task_state(&task.id, &[TaskState::Failed], EVENT_WAIT)
        .await;
    let status = describe::status(resp.task.as_ref().unwrap());
    assert_eq!(
        status.exit_code,
        Some(3),
        "{}",
        describe::task_with_events(&resp)
    );
    assert!(
        status.reason.contains('3'),
        "the reason names the exit code: {:?}",
        status.reason
    );
    let failed = resp
        .events
        .iter()
        .filter(|e| describe::event_state(e) == TaskState::Failed)
        .count();
    assert_eq!(failed, 1, "{}", describe::task_with_events(&resp));
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_stop_completes_and_removes_the_container() {
    let cluster = Cluster::start(&["a"]).await;
    let task = cluster
        .create(cluster.spec("long", &["sleep", "300"]))
        .await;
    cluster
        .wait_task_state(&task.id, &[TaskState::Running], WAIT)
        .await;
    assert_eq!(
        task_containers(&task.id).len(),
        1,
        "one container while running"
    );

    cluster.cli_ok(&["stop", &task.id]).await;
    let resp = cluster
        .wait_task_state(&task.id, &[TaskState::Completed], WAIT)
        .await;
    let t = resp.task.as_ref().unwrap();
    assert_eq!(
        t.desired_state,
        minkube::pb::DesiredState::Stopped as i32,
        "{}",
        describe::task(t)
    );
    wait_task_containers_gone(&task.id).await;

    // Stopping a finished task is a no-op.
    cluster.cli_ok(&["stop", &task.id]).await;
    let again = cluster.get(&task.id).await;
    assert_eq!(
        describe::state(again.task.as_ref().unwrap()),
        TaskState::Completed
    );
    assert_eq!(again.events.len(), resp.events.len(), "no new event");
}

#[tokio::test(flavor = "multi_thread")]
async fn published_port_answers_http() {
    let cluster = Cluster::start(&["a"]).await;
    let mut spec = cluster.spec("web", &["httpd", "-f", "-p", "8080", "-h", "/"]);
    spec.ports = vec![PortSpec {
        container_port: 8080,
        protocol: Protocol::Tcp as i32,
    }];
    let task = cluster.create(spec).await;
    let resp = cluster
        .wait_task_state(&task.id, &[TaskState::Running], WAIT)
        .await;
    let status = describe::status(resp.task.as_ref().unwrap());
    let binding = status
        .ports
        .iter()
        .find(|p| p.container_port == 8080)
        .unwrap_or_else(|| panic!("no binding for 8080 in status.ports: {:?}", status.ports));
    assert_ne!(binding.host_port, 0, "a host port was picked: {binding:?}");
    let host_port = u16::try_from(binding.host_port).unwrap();

    // httpd may still be starting when the container is reported running.
    let reply = wait_for(
        &format!("an HTTP answer on 127.0.0.1:{host_port}"),
        WAIT,
        POLL,
        async || http_get(host_port).await,
    )
    .await;
    assert!(reply.starts_with("HTTP/1."), "status line: {reply:?}");
}

async fn http_get(port: u16) -> Result<String, String> {
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let first = text.lines().next().unwrap_or_default().to_string();
    if first.starts_with("HTTP/") {
        Ok(first)
    } else {
        Err(format!("not an HTTP status line: {first:?}"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_image_fails_once() {
    let cluster = Cluster::start(&["a"]).await;
    let image_name = format!("minkube-test-missing-{}", cluster.run_id());
    let mut spec = cluster.spec("missing", &["true"]);
    spec.image = format!("{image_name}:nope");
    // With a pull, the unreachable registry (no network here) would be a
    // transient failure and be retried; pull policy never makes an absent
    // image a permanent one.
    spec.pull_policy = PullPolicy::Never as i32;
    let task = cluster.create(spec).await;
    let resp = cluster
        .wait_task_state(&task.id, &[TaskState::Failed], WAIT)
        .await;
    let status = describe::status(resp.task.as_ref().unwrap());
    assert!(
        status.reason.contains(&image_name),
        "the reason names the image {image_name}: {:?}",
        status.reason
    );

    // No retry loop: a while later there is still exactly one FAILED event
    // and the task stays on its first attempt.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = cluster.get(&task.id).await;
    let t = later.task.as_ref().unwrap();
    assert_eq!(
        describe::state(t),
        TaskState::Failed,
        "{}",
        describe::task(t)
    );
    let failed = later
        .events
        .iter()
        .filter(|e| describe::event_state(e) == TaskState::Failed)
        .count();
    assert_eq!(failed, 1, "{}", describe::task_with_events(&later));
    assert_eq!(describe::status(t).attempt, 1, "{}", describe::task(t));
    assert!(
        task_containers(&task.id).is_empty(),
        "no container was created"
    );
}
