//! The HTTP admin endpoints of the manager and the agent: /healthz and
//! /readyz answer, and /metrics parses with the reference Prometheus parser
//! (Python prometheus_client) and its counters move as tasks run.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};

use minkube::pb::TaskState;
use minkube_integration_tests::{wait_for, Cluster, POLL, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Plain HTTP/1.0 GET: (status line, body).
async fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// Samples as (name, labels, value), parsed by prometheus_client.
fn parse(text: &str) -> Vec<(String, serde_json::Map<String, serde_json::Value>, f64)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/parse_metrics.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed (.ci/run installs prometheus-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n(needs: pip install prometheus-client)\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["name"].as_str().unwrap().to_string(),
                v["labels"].as_object().unwrap().clone(),
                v["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Sum of the samples called `name` whose labels include `want`.
fn value(
    samples: &[(String, serde_json::Map<String, serde_json::Value>, f64)],
    name: &str,
    want: &[(&str, &str)],
) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).and_then(|x| x.as_str()) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoint_health_and_moving_metrics() {
    let cluster = Cluster::start(&["a"]).await;
    let admin = cluster.admin_addr();
    assert!(http_get(&admin, "/healthz").await.0.contains("200"));
    assert!(http_get(&admin, "/readyz").await.0.contains("200"));

    let before = parse(&http_get(&admin, "/metrics").await.1);
    let completed0 = value(&before, "minkube_manager_tasks", &[("state", "completed")]);
    let placed0 = value(
        &before,
        "minkube_manager_scheduling_decisions_total",
        &[("result", "placed")],
    );
    let commits0 = value(&before, "minkube_manager_store_commits_total", &[]);

    for i in 0..2 {
        let t = cluster
            .create(cluster.spec(&format!("metric-{i}"), &["sh", "-c", "exit 0"]))
            .await;
        cluster
            .wait_task_state(&t.id, &[TaskState::Completed], WAIT)
            .await;
    }

    let after = parse(&http_get(&admin, "/metrics").await.1);
    assert_eq!(
        value(&after, "minkube_manager_tasks", &[("state", "completed")]),
        completed0 + 2.0
    );
    assert!(
        value(
            &after,
            "minkube_manager_scheduling_decisions_total",
            &[("result", "placed")]
        ) >= placed0 + 2.0
    );
    assert!(value(&after, "minkube_manager_store_commits_total", &[]) > commits0);
    assert_eq!(value(&after, "minkube_manager_connected_agents", &[]), 1.0);
    assert!(
        value(
            &after,
            "minkube_manager_submit_to_running_seconds_count",
            &[]
        ) >= 2.0
    );
    assert!(
        value(
            &after,
            "minkube_manager_grpc_request_duration_seconds_count",
            &[
                ("method", "/minkube.v1.ControlService/CreateTask"),
                ("code", "OK")
            ]
        ) >= 2.0
    );
    // Both ways on the agent stream: the assignments down; the agent's
    // Hello and each task's reports up.
    for (direction, kind, at_least) in [
        ("out", "assignment", 2.0),
        ("in", "hello", 1.0),
        ("in", "status", 2.0),
    ] {
        let labels = [("direction", direction), ("kind", kind)];
        let n = value(&after, "minkube_manager_stream_messages_total", &labels);
        assert!(n >= at_least, "{labels:?}: {n}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_admin_endpoint_reports_docker_calls_and_host() {
    // Host gauges are refreshed with every heartbeat.
    let cluster = Cluster::builder()
        .manager_flag("--heartbeat-interval", "300ms")
        .agents(&["a"])
        .start()
        .await;
    let admin = cluster.agent_admin_addr("a");
    assert!(http_get(&admin, "/healthz").await.0.contains("200"));
    // Ready once its session is established (the cluster waited for READY).
    assert!(http_get(&admin, "/readyz").await.0.contains("200"));
    let t = cluster
        .create(cluster.spec("agent-metric", &["sleep", "300"]))
        .await;
    cluster
        .wait_task_state(&t.id, &[TaskState::Running], WAIT)
        .await;
    let m = wait_for("host gauges after a heartbeat", WAIT, POLL, async || {
        let m = parse(&http_get(&admin, "/metrics").await.1);
        if value(&m, "minkube_agent_host_memory_total_mb", &[]) > 0.0 {
            Ok(m)
        } else {
            Err("no host sample yet".to_string())
        }
    })
    .await;
    assert_eq!(value(&m, "minkube_agent_running_containers", &[]), 1.0);
    assert_eq!(value(&m, "minkube_agent_connected", &[]), 1.0);
    // The assignment's record was synced before its container was made.
    assert!(value(&m, "minkube_agent_store_syncs_total", &[]) >= 1.0);
    assert!(
        value(
            &m,
            "minkube_agent_docker_request_duration_seconds_count",
            &[("op", "create_and_start"), ("outcome", "ok")]
        ) >= 1.0
    );
    assert!(value(&m, "minkube_agent_host_memory_total_mb", &[]) > 0.0);
    assert!(value(&m, "minkube_agent_host_disk_total_mb", &[]) > 0.0);
    let load = value(&m, "minkube_agent_host_load", &[("window", "1m")]);
    assert!(load >= 0.0);
}

/// An agent drops the records of finished tasks once the manager has
/// stored their ends (32 at a time), so what it holds follows its live work.
#[tokio::test(flavor = "multi_thread")]
async fn agent_records_of_finished_tasks_are_released() {
    const TASKS: usize = 40;
    let cluster = Cluster::start(&["a"]).await;
    let admin = cluster.agent_admin_addr("a");
    let mut ids = Vec::new();
    for i in 0..TASKS {
        let t = cluster
            .create(cluster.spec(&format!("release-{i}"), &["true"]))
            .await;
        ids.push(t.id);
    }
    for id in &ids {
        cluster
            .wait_task_state(id, &[TaskState::Completed], WAIT)
            .await;
    }
    // 32 are released together (a repeated report of an end could take a
    // place in the batch, so this asks for most of them, not all).
    let held = wait_for("finished records released", WAIT, POLL, async || {
        let m = parse(&http_get(&admin, "/metrics").await.1);
        let n = value(&m, "minkube_agent_task_records", &[]);
        if n <= (TASKS - 24) as f64 {
            Ok(n)
        } else {
            Err(format!("{n} records held"))
        }
    })
    .await;
    assert!(held >= 1.0, "the last few wait for the next batch: {held}");
    let m = parse(&http_get(&cluster.admin_addr(), "/metrics").await.1);
    let releases = value(
        &m,
        "minkube_manager_stream_messages_total",
        &[("direction", "out"), ("kind", "release")],
    );
    assert!(releases >= 1.0, "{releases} releases sent");
}
