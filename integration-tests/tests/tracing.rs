//! One trace from the CLI through the manager and the agent into the
//! container: every binary exports to an in-process OTLP collector, and the
//! spans of one `minkube --trace run` (and `stop`) share one trace id with
//! the right parents; the container's TRACEPARENT continues that trace.
//! Without a collector the binaries give spans ids only, and the trace
//! still reaches the container.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use minkube::pb::TaskState;
use minkube_integration_tests::image::RUN_LABEL;
use minkube_integration_tests::otlp::{CollectedSpan, Collector};
use minkube_integration_tests::{Cluster, WAIT};

const SPAN_WAIT: Duration = Duration::from_secs(30);

fn find<'a>(spans: &'a [CollectedSpan], service: &str, name: &str) -> Option<&'a CollectedSpan> {
    spans
        .iter()
        .find(|s| s.service == service && s.name == name)
}

fn must<'a>(spans: &'a [CollectedSpan], service: &str, name: &str) -> &'a CollectedSpan {
    find(spans, service, name).unwrap_or_else(|| {
        let got: Vec<String> = spans
            .iter()
            .map(|s| format!("{}:{}", s.service, s.name))
            .collect();
        panic!("no {service} span {name:?}; spans: {got:?}")
    })
}

fn child_of(child: &CollectedSpan, parent: &CollectedSpan) {
    assert_eq!(
        child.parent_span_id, parent.span_id,
        "{}:{} should be a child of {}:{}",
        child.service, child.name, parent.service, parent.name
    );
}

/// Runs `minkube --trace ARGS` exporting to the collector; returns stdout
/// and the trace id it printed on stderr.
async fn traced_cli(cluster: &Cluster, collector: &Collector, args: &[&str]) -> (String, String) {
    traced_cli_env(cluster, &collector.env(), args).await
}

/// Runs `minkube --trace ARGS` with `env`; returns stdout and the trace id
/// it printed on stderr.
async fn traced_cli_env(
    cluster: &Cluster,
    env: &[(String, String)],
    args: &[&str],
) -> (String, String) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut all = vec!["--trace"];
    all.extend_from_slice(args);
    let out = cluster.cli_env(&env, &all).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "minkube {args:?}: {stdout} {stderr}");
    let trace_id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("trace id: "))
        .unwrap_or_else(|| panic!("no `trace id:` line on stderr: {stderr:?}"))
        .trim()
        .to_string();
    assert_eq!(trace_id.len(), 32, "{trace_id:?}");
    (stdout, trace_id)
}

/// `minkube --trace run NAME -- sh -c SCRIPT` with `env`, then waits until
/// the task completed; returns its id and the CLI's trace id.
async fn run_to_completion(
    cluster: &Cluster,
    env: &[(String, String)],
    name: &str,
    script: &str,
) -> (String, String) {
    let label = format!("{RUN_LABEL}={}", cluster.run_id());
    let args = [
        "run",
        name,
        "--image",
        cluster.image(),
        "--memory",
        "16",
        "--label",
        &label,
        "--",
        "sh",
        "-c",
        script,
    ];
    let (stdout, trace_id) = traced_cli_env(cluster, env, &args).await;
    let task_id = stdout.trim().to_string();
    cluster
        .wait_task_state(&task_id, &[TaskState::Completed], WAIT)
        .await;
    (task_id, trace_id)
}

async fn traced_cluster(collector: &Collector) -> Cluster {
    let mut builder = Cluster::builder();
    for (k, v) in collector.env() {
        builder = builder.manager_env(&k, &v).agent_env(&k, &v);
    }
    builder.agents(&["a"]).start().await
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_from_the_cli_through_manager_and_agent_into_the_container() {
    let collector = Collector::start().await;
    let cluster = traced_cluster(&collector).await;
    let script = "echo TRACEPARENT=$TRACEPARENT; echo OTEL_SERVICE_NAME=$OTEL_SERVICE_NAME; \
                  echo OTEL_RESOURCE_ATTRIBUTES=$OTEL_RESOURCE_ATTRIBUTES";
    let (task_id, trace_id) =
        run_to_completion(&cluster, &collector.env(), "traced-task", script).await;

    // The task remembers its trace.
    let shown = cluster.cli_json(&["get", &task_id]).await;
    assert_eq!(shown["task"]["trace_id"], trace_id.as_str(), "{shown}");

    let spans = collector
        .wait_trace(&trace_id, SPAN_WAIT, |spans| {
            find(spans, "minkube", "minkube run").is_some()
                && find(spans, "minkube-manager", "task.schedule").is_some()
                && find(spans, "minkube-agent", "task.start").is_some()
                && find(spans, "minkube-agent", "docker.start").is_some()
        })
        .await;
    let cli = must(&spans, "minkube", "minkube run");
    assert_eq!(cli.parent_span_id, "", "the CLI starts the trace");
    let create = must(
        &spans,
        "minkube-manager",
        "minkube.v1.ControlService/CreateTask",
    );
    child_of(create, cli);
    let schedule = must(&spans, "minkube-manager", "task.schedule");
    child_of(schedule, create);
    assert_eq!(schedule.attributes["task_id"], task_id);
    assert_eq!(schedule.attributes["node"], "a");
    let start = must(&spans, "minkube-agent", "task.start");
    child_of(start, schedule);
    assert_eq!(start.attributes["task_id"], task_id);
    let create_and_start = must(&spans, "minkube-agent", "docker.create_and_start");
    child_of(create_and_start, start);
    child_of(
        must(&spans, "minkube-agent", "docker.create"),
        create_and_start,
    );
    child_of(
        must(&spans, "minkube-agent", "docker.start"),
        create_and_start,
    );
    // The image is there already: the pull policy's check is traced too.
    child_of(must(&spans, "minkube-agent", "docker.inspect_image"), start);

    // The container continues the trace, as a child of the agent's span.
    let logs = cluster.cli_ok(&["logs", &task_id]).await;
    let var = |name: &str| {
        logs.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in the container's output: {logs:?}"))
            .to_string()
    };
    assert_eq!(
        var("TRACEPARENT"),
        format!("00-{trace_id}-{}-01", start.span_id),
        "container output: {logs}"
    );
    assert_eq!(var("OTEL_SERVICE_NAME"), "traced-task");
    let attrs = var("OTEL_RESOURCE_ATTRIBUTES");
    assert!(
        attrs.contains(&format!("minkube.task.id={task_id}"))
            && attrs.contains("minkube.task.attempt=1"),
        "{attrs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_traced_stop_reaches_the_agent_under_the_callers_trace() {
    let collector = Collector::start().await;
    let cluster = traced_cluster(&collector).await;
    let task = cluster
        .create(cluster.spec("traced-sleeper", &["sleep", "300"]))
        .await;
    cluster
        .wait_task_state(&task.id, &[TaskState::Running], WAIT)
        .await;
    // Created by an untraced client: the manager's span started a trace.
    let shown = cluster.cli_json(&["get", &task.id]).await;
    let created_in = shown["task"]["trace_id"].as_str().unwrap().to_string();

    let (_, trace_id) = traced_cli(&cluster, &collector, &["stop", &task.id]).await;
    assert_ne!(
        trace_id, created_in,
        "the stop is traced under its caller's trace"
    );
    cluster
        .wait_task_state(&task.id, &[TaskState::Completed], WAIT)
        .await;
    let spans = collector
        .wait_trace(&trace_id, SPAN_WAIT, |spans| {
            find(spans, "minkube", "minkube stop").is_some()
                && find(spans, "minkube-agent", "task.stop").is_some()
                && find(spans, "minkube-agent", "docker.stop_and_remove").is_some()
        })
        .await;
    let cli = must(&spans, "minkube", "minkube stop");
    let stop = must(
        &spans,
        "minkube-manager",
        "minkube.v1.ControlService/StopTask",
    );
    child_of(stop, cli);
    let agent_stop = must(&spans, "minkube-agent", "task.stop");
    child_of(agent_stop, stop);
    assert_eq!(agent_stop.attributes["task_id"], task.id);
    child_of(
        must(&spans, "minkube-agent", "docker.stop_and_remove"),
        agent_stop,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_collector_the_trace_still_reaches_the_container() {
    let cluster = Cluster::builder().agents(&["a"]).start().await;
    let (task_id, trace_id) = run_to_completion(
        &cluster,
        &[],
        "untraced-task",
        "echo TRACEPARENT=$TRACEPARENT",
    )
    .await;
    let shown = cluster.cli_json(&["get", &task_id]).await;
    assert_eq!(shown["task"]["trace_id"], trace_id.as_str(), "{shown}");

    // The agent's task.start span is the container's parent: the trace
    // passed the manager and the agent, each with ids of its own.
    let logs = cluster.cli_ok(&["logs", &task_id]).await;
    let tp = logs
        .lines()
        .find_map(|l| l.strip_prefix("TRACEPARENT="))
        .unwrap_or_else(|| panic!("no TRACEPARENT in the container's output: {logs:?}"));
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", trace_id.as_str(), "01"),
        "{tp}"
    );
    assert_eq!(parts[2].len(), 16, "{tp}");
    assert_ne!(parts[2], "0000000000000000", "{tp}");
}
