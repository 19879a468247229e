//! The `minkube` CLI's outputs, and paging of ListTasks.
#![allow(clippy::unwrap_used)]

use minkube::pb::{CreateTaskRequest, ListTasksRequest, TaskState};
use minkube_integration_tests::image::RUN_LABEL;
use minkube_integration_tests::{Cluster, WAIT};
use serde_json::Value;

const STATE_NAMES: &[&str] = &["pending", "scheduled", "running", "completed", "failed"];

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok() && s.len() == 36
}

/// Checks the documented keys of a task object.
fn check_task_json(task: &Value, id: &str, name: &str) {
    assert_eq!(task["id"], id, "task.id: {task}");
    assert_eq!(task["spec"]["name"], name, "task.spec.name: {task}");
    assert!(task["spec"]["image"].is_string(), "task.spec.image: {task}");
    assert_eq!(
        task["desired_state"], "running",
        "task.desired_state: {task}"
    );
    let state = task["status"]["state"].as_str().unwrap_or_default();
    assert!(STATE_NAMES.contains(&state), "task.status.state: {task}");
    let created = task["created_at"].as_str().unwrap_or_default();
    assert!(
        created.contains('T'),
        "created_at is an RFC 3339 string: {task}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_outputs() {
    let cluster = Cluster::start(&["a"]).await;
    let label = format!("{RUN_LABEL}={}", cluster.run_id());

    // `run` in table mode prints the new id alone on a line.
    let out = cluster
        .cli_ok(&[
            "run",
            "cli-web-task",
            "--image",
            cluster.image(),
            "--memory",
            "16",
            "--label",
            &label,
            "--",
            "sleep",
            "300",
        ])
        .await;
    let id = out
        .lines()
        .map(str::trim)
        .find(|l| is_uuid(l))
        .unwrap_or_else(|| panic!("`minkube run` printed no task id line: {out:?}"))
        .to_string();
    cluster
        .wait_task_state(&id, &[TaskState::Running], WAIT)
        .await;

    // `run -o json` prints the task object.
    let created = cluster
        .cli_json(&[
            "run",
            "cli-json-task",
            "--image",
            cluster.image(),
            "--memory",
            "16",
            "--label",
            &label,
            "--",
            "sleep",
            "300",
        ])
        .await;
    let json_id = created["id"].as_str().unwrap_or_default().to_string();
    assert!(is_uuid(&json_id), "run -o json prints the task: {created}");
    check_task_json(&created, &json_id, "cli-json-task");
    assert_eq!(created["spec"]["memory_mb"], 16, "{created}");
    cluster
        .wait_task_state(&json_id, &[TaskState::Running], WAIT)
        .await;

    // ps -o json
    let ps = cluster.cli_json(&["ps"]).await;
    let tasks = ps["tasks"].as_array().unwrap_or_else(|| panic!("ps: {ps}"));
    let ours = tasks
        .iter()
        .find(|t| t["id"] == id.as_str())
        .unwrap_or_else(|| panic!("ps lists {id}: {ps}"));
    check_task_json(ours, &id, "cli-web-task");
    assert_eq!(ours["status"]["state"], "running", "{ours}");
    assert_eq!(ours["status"]["node_name"], "a", "{ours}");
    assert_eq!(ps["total_count"], 2, "ps.total_count: {ps}");
    assert_eq!(ps["has_next"], false, "ps.has_next: {ps}");
    assert!(
        ps["next_page_token"].is_string(),
        "ps.next_page_token: {ps}"
    );

    // get ID -o json
    let got = cluster.cli_json(&["get", &id]).await;
    check_task_json(&got["task"], &id, "cli-web-task");
    let events = got["events"]
        .as_array()
        .unwrap_or_else(|| panic!("get.events: {got}"));
    assert!(!events.is_empty(), "get.events is not empty: {got}");
    for event in events {
        let state = event["state"].as_str().unwrap_or_default();
        assert!(STATE_NAMES.contains(&state), "event.state: {event}");
        assert_eq!(event["task_id"], id.as_str(), "event.task_id: {event}");
    }
    assert_eq!(events.last().unwrap()["state"], "running", "{got}");

    // nodes -o json
    let nodes = cluster.cli_json(&["nodes"]).await;
    let list = nodes["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("nodes: {nodes}"));
    assert_eq!(list.len(), 1, "{nodes}");
    assert_eq!(list[0]["name"], "a", "{nodes}");
    assert_eq!(list[0]["state"], "ready", "{nodes}");
    assert!(
        is_uuid(list[0]["id"].as_str().unwrap_or_default()),
        "{nodes}"
    );
    assert_eq!(nodes["total_count"], 1, "{nodes}");

    // node get NAME
    let node = cluster.cli_ok(&["node", "get", "a"]).await;
    assert!(node.contains('a'), "node get prints the node: {node:?}");

    // ps in table mode shows the name.
    let table = cluster.cli_ok(&["ps"]).await;
    assert!(
        table.contains("cli-web-task"),
        "the ps table shows the task name: {table}"
    );

    // An unknown id: exit 1, "not found" on stderr.
    let unknown = uuid::Uuid::new_v4().to_string();
    let out = cluster.cli(&["get", &unknown]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "get unknown id: {stderr}");
    assert!(
        stderr.to_lowercase().contains("not found"),
        "stderr says not found: {stderr:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn list_tasks_pages() {
    let cluster = Cluster::start(&[]).await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(
            cluster
                .create(cluster.spec(&format!("page-{i}"), &["true"]))
                .await
                .id,
        );
    }

    let mut seen = Vec::new();
    let mut has_next = Vec::new();
    let mut token = String::new();
    for page in 0..3 {
        let resp = cluster
            .list(ListTasksRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await;
        assert_eq!(resp.total_count, 5, "total_count on page {page}");
        assert_eq!(
            resp.tasks.len(),
            if page < 2 { 2 } else { 1 },
            "size of page {page}"
        );
        assert_eq!(
            resp.has_next,
            !resp.next_page_token.is_empty(),
            "has_next agrees with next_page_token on page {page}"
        );
        has_next.push(resp.has_next);
        seen.extend(resp.tasks.into_iter().map(|t| t.id));
        token = resp.next_page_token;
    }
    assert_eq!(has_next, [true, true, false]);
    assert_eq!(seen, created, "every task once, oldest first");

    // The state filter counts over all pages too.
    let pending = cluster
        .list(ListTasksRequest {
            page_size: 2,
            states: vec![TaskState::Pending as i32],
            ..Default::default()
        })
        .await;
    assert_eq!(pending.total_count, 5);
    let running = cluster
        .list(ListTasksRequest {
            states: vec![TaskState::Running as i32],
            ..Default::default()
        })
        .await;
    assert_eq!(running.total_count, 0);
    assert!(running.tasks.is_empty());
}

/// More tasks than the manager looks at in one ListTasks call (16,384).
const PAST_ONE_CALL: usize = 16_500;

#[tokio::test(flavor = "multi_thread")]
async fn ps_follows_short_pages_of_a_selective_filter() {
    // No agents: every task stays PENDING but the two stopped at the end.
    let cluster = Cluster::builder()
        .manager_flag("--rate-limit", "0")
        .start()
        .await;
    let client = cluster.control().await;
    let spec = cluster.spec("many", &["true"]);
    let workers = 16;
    let mut handles = Vec::new();
    for w in 0..workers {
        let mut c = client.clone();
        let spec = spec.clone();
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in (w..PAST_ONE_CALL).step_by(workers) {
                let req = CreateTaskRequest {
                    spec: Some(spec.clone()),
                };
                let task = c.create_task(req).await.unwrap().into_inner().task.unwrap();
                ids.push(task.id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for h in handles {
        ids.extend(h.await.unwrap());
    }
    ids.sort();
    let last_two = &ids[ids.len() - 2..];
    for id in last_two {
        cluster.stop(id).await;
    }

    // The API: the first call looks at 16,384 tasks, finds none, says more may follow.
    let first = cluster
        .list(ListTasksRequest {
            page_size: 5,
            states: vec![TaskState::Completed as i32],
            ..Default::default()
        })
        .await;
    assert!(first.tasks.is_empty(), "{:?}", first.tasks);
    assert!(first.has_next && !first.next_page_token.is_empty());
    assert_eq!(first.total_count, 2);

    // The CLI follows the pages until it has what was asked for.
    let out = cluster
        .cli_ok(&["ps", "--state", "completed", "--limit", "5"])
        .await;
    for id in last_two {
        assert!(out.contains(id.as_str()), "ps lists {id}: {out}");
    }
    assert!(
        !out.contains("more: --all"),
        "nothing is left to show: {out}"
    );
    let listed = cluster
        .cli_json(&["ps", "--state", "completed", "--all"])
        .await;
    assert_eq!(
        listed["tasks"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    assert_eq!(listed["has_next"], false, "{listed}");
}
