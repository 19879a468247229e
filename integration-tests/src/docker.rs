//! The docker CLI, run synchronously: simple, and independent of the
//! product's own Docker client.
use std::collections::HashMap;
use std::process::{Command, Output};

/// Runs `docker args` and returns its output; panics if docker cannot be started.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `docker {}`: {e}", args.join(" ")))
}

/// Runs `docker args` and returns stdout; panics with stderr on failure.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "`docker {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Ids of every container (running or not) carrying `label` (`key=value`).
pub fn containers_with_label(label: &str) -> Vec<String> {
    let filter = format!("label={label}");
    docker_ok(&["ps", "-a", "--no-trunc", "-q", "--filter", &filter])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Ids of the containers of one minkube task.
pub fn task_containers(task_id: &str) -> Vec<String> {
    containers_with_label(&format!("minkube.task-id={task_id}"))
}

/// Ids of the running containers of one minkube task.
pub fn running_task_containers(task_id: &str) -> Vec<String> {
    let filter = format!("label=minkube.task-id={task_id}");
    docker_ok(&["ps", "--no-trunc", "-q", "--filter", &filter])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A running container of a task: its id, node label and attempt label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Container id.
    pub container: String,
    /// `minkube.node-id`.
    pub node_id: String,
    /// `minkube.attempt`.
    pub attempt: String,
}

/// The running containers of a task with their placement labels, read in
/// one `docker ps` (a container may vanish between two docker calls).
pub fn running_task_placements(task_id: &str) -> Vec<Placement> {
    let filter = format!("label=minkube.task-id={task_id}");
    let format = r#"{{.ID}} {{.Label "minkube.node-id"}} {{.Label "minkube.attempt"}}"#;
    docker_ok(&["ps", "--no-trunc", "--filter", &filter, "--format", format])
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace().map(str::to_string);
            Some(Placement {
                container: f.next()?,
                node_id: f.next().unwrap_or_default(),
                attempt: f.next().unwrap_or_default(),
            })
        })
        .collect()
}

/// Whether a container is running (false if it is gone).
pub fn is_running(container: &str) -> bool {
    let out = docker(&["inspect", "--format", "{{.State.Running}}", container]);
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "true"
}

/// The labels of a container.
pub fn container_labels(container: &str) -> HashMap<String, String> {
    let json = docker_ok(&["inspect", "--format", "{{json .Config.Labels}}", container]);
    let value: serde_json::Value = serde_json::from_str(json.trim())
        .unwrap_or_else(|e| panic!("labels of {container} are not JSON ({e}): {json}"));
    value
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Force-removes containers, ignoring ones already gone.
pub fn remove_containers(ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let mut args = vec!["rm", "-f", "-v"];
    args.extend(ids.iter().map(String::as_str));
    let _ = docker(&args);
}

/// Waits until Docker lists no container of the task (stop removes it).
pub async fn wait_task_containers_gone(task_id: &str) {
    crate::wait_for(
        &format!("the container of task {task_id} to be removed"),
        crate::WAIT,
        crate::POLL,
        async || {
            let left = task_containers(task_id);
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("docker ps -a still lists {left:?}"))
            }
        },
    )
    .await;
}
