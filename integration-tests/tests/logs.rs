//! `minkube logs`: a container's stdout and stderr, relayed from its node
//! through the manager; readable after the container exited; `--tail`;
//! `--follow` until the container exits; clear errors when the container
//! was removed or the node is offline.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use minkube::pb::{NodeState, TaskState};
use minkube_integration_tests::{describe, wait_for, Cluster, POLL, WAIT};

/// The agents resync only every hour: a state change seen within this time
/// came from Docker's event stream.
const EVENT_WAIT: Duration = Duration::from_secs(30);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn stdout_and_stderr_of_an_exited_container_go_to_their_own_streams() {
    let cluster = Cluster::start(&["a"]).await;
    let script = "echo out-line; echo err-line >&2; exit 0";
    let task = cluster
        .create(cluster.spec("two-streams", &["sh", "-c", script]))
        .await;
    cluster
        .wait_task_state(&task.id, &[TaskState::Completed], EVENT_WAIT)
        .await;

    let out = cluster.cli(&["logs", &task.id]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{}: {stdout} / {stderr}", out.status);
    assert_eq!(stdout, "out-line\n", "stderr: {stderr}");
    assert_eq!(stderr, "err-line\n", "stdout: {stdout}");

    // The last line only. Docker reads the two pipes concurrently, so which
    // of the two lines it logged last is not fixed; each keeps its stream.
    let out = cluster.cli(&["logs", "--tail", "1", &task.id]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = (text(&out.stdout), text(&out.stderr));
    assert!(
        got == ("out-line\n".into(), String::new()) || got == (String::new(), "err-line\n".into()),
        "{got:?}"
    );

    // Timestamps come first on every line.
    let out = cluster.cli(&["logs", "-t", &task.id]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    let (time, rest) = line.split_once(' ').unwrap();
    assert!(time.ends_with('Z') && time.contains('T'), "{line:?}");
    assert_eq!(rest, "out-line\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_prints_new_lines_and_ends_when_the_container_exits() {
    let cluster = Cluster::start(&["a"]).await;
    let script = "echo one; sleep 2; echo two";
    let task = cluster
        .create(cluster.spec("follow", &["sh", "-c", script]))
        .await;
    cluster
        .wait_task_state(
            &task.id,
            &[TaskState::Running, TaskState::Completed],
            EVENT_WAIT,
        )
        .await;
    // Ends by itself once the container exits (the CLI helper's wait is bounded).
    let out = cluster.cli(&["logs", "--follow", &task.id]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "one\ntwo\n", "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_tasks_and_offline_nodes_are_clear_errors() {
    let mut cluster = Cluster::start(&["a"]).await;
    let out = cluster
        .cli(&["logs", "0190a6a4-0000-7000-8000-000000000000"])
        .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );

    let task = cluster
        .create(cluster.spec("offline", &["sh", "-c", "echo hi"]))
        .await;
    cluster
        .wait_task_state(&task.id, &[TaskState::Completed], EVENT_WAIT)
        .await;
    // A stop removes the container, and its logs with it.
    let stopped = cluster
        .create(cluster.spec("stopped", &["sleep", "300"]))
        .await;
    cluster
        .wait_task_state(&stopped.id, &[TaskState::Running], EVENT_WAIT)
        .await;
    cluster.stop(&stopped.id).await;
    cluster
        .wait_task_state(&stopped.id, &[TaskState::Completed], WAIT)
        .await;
    let out = cluster.cli(&["logs", &stopped.id]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no container"), "{stderr}");

    cluster.kill_agent("a");
    wait_for("node a to be disconnected", WAIT, POLL, async || {
        let nodes = cluster.nodes().await.map_err(|s| format!("{s:?}"))?;
        match nodes.iter().find(|n| n.name == "a") {
            Some(n) if describe::node_state(n) != NodeState::Ready => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let out = cluster.cli(&["logs", &task.id]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("offline"), "{stderr}");
    assert!(stderr.contains("node a"), "{stderr}");
}
