//! JSON output. prost types have no serde support, so each message is
//! converted by hand: keys are the proto field names, enums their short
//! lower-case names, timestamps RFC 3339 strings; absent optional values
//! (unset messages, unset `optional` scalars) are omitted.
use std::collections::HashMap;

use prost_types::Timestamp;
use serde_json::{json, Map, Value};

use minkube::convert::{desired_state_name, node_state_name, task_state_name};
use minkube::pb::{
    HostStats, ListNodesResponse, ListTasksResponse, Node, PortBinding, PortSpec, Resources, Task,
    TaskEvent, TaskSpec, TaskStatus,
};

use super::names::{protocol_name, pull_policy_name, restart_policy_name, sorted};
use super::timefmt::rfc3339;

/// A task.
pub fn task(t: &Task) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(t.id));
    put(&mut m, "spec", t.spec.as_ref().map(spec));
    m.insert(
        "desired_state".into(),
        json!(desired_state_name(t.desired_state())),
    );
    put(&mut m, "status", t.status.as_ref().map(status));
    put(&mut m, "created_at", time(t.created_at.as_ref()));
    put(&mut m, "updated_at", time(t.updated_at.as_ref()));
    if !t.trace_id.is_empty() {
        m.insert("trace_id".into(), json!(t.trace_id));
    }
    Value::Object(m)
}

/// A task spec.
pub fn spec(s: &TaskSpec) -> Value {
    let mut v = json!({
        "name": s.name,
        "image": s.image,
        "command": s.command,
        "env": string_map(&s.env),
        "memory_mb": s.memory_mb,
        "cpu": s.cpu,
        "ports": s.ports.iter().map(port_spec).collect::<Vec<_>>(),
        "pull_policy": pull_policy_name(s.pull_policy()),
        "restart_policy": restart_policy_name(s.restart_policy()),
        "max_restarts": s.max_restarts,
        "max_attempts": s.max_attempts,
        "labels": string_map(&s.labels),
    });
    // Host access and constraints, shown only when asked for.
    if let Some(m) = v.as_object_mut() {
        if !s.constraints.is_empty() {
            m.insert("constraints".into(), json!(s.constraints));
        }
        if s.privileged {
            m.insert("privileged".into(), json!(true));
        }
        if s.host_network {
            m.insert("host_network".into(), json!(true));
        }
        if !s.host_mounts.is_empty() {
            let mounts: Vec<Value> = s
                .host_mounts
                .iter()
                .map(|h| json!({"host_path": h.host_path, "container_path": h.container_path, "read_only": h.read_only}))
                .collect();
            m.insert("host_mounts".into(), Value::Array(mounts));
        }
    }
    v
}

/// The observed state of a task.
pub fn status(s: &TaskStatus) -> Value {
    let mut m = Map::new();
    m.insert("state".into(), json!(task_state_name(s.state())));
    m.insert("reason".into(), json!(s.reason));
    m.insert("node_id".into(), json!(s.node_id));
    m.insert("node_name".into(), json!(s.node_name));
    m.insert("container_id".into(), json!(s.container_id));
    put(&mut m, "exit_code", s.exit_code.map(|c| json!(c)));
    m.insert(
        "ports".into(),
        Value::Array(s.ports.iter().map(port_binding).collect()),
    );
    put(&mut m, "started_at", time(s.started_at.as_ref()));
    put(&mut m, "finished_at", time(s.finished_at.as_ref()));
    m.insert("attempt".into(), json!(s.attempt));
    m.insert("restarts".into(), json!(s.restarts));
    m.insert("transient_failures".into(), json!(s.transient_failures));
    put(&mut m, "next_attempt_at", time(s.next_attempt_at.as_ref()));
    Value::Object(m)
}

/// A port to expose.
pub fn port_spec(p: &PortSpec) -> Value {
    json!({
        "container_port": p.container_port,
        "protocol": protocol_name(p.protocol()),
    })
}

/// A port Docker bound.
pub fn port_binding(b: &PortBinding) -> Value {
    json!({
        "container_port": b.container_port,
        "protocol": protocol_name(b.protocol()),
        "host_ip": b.host_ip,
        "host_port": b.host_port,
    })
}

/// A task event.
pub fn event(e: &TaskEvent) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(e.id));
    m.insert("task_id".into(), json!(e.task_id));
    m.insert("state".into(), json!(task_state_name(e.state())));
    put(&mut m, "timestamp", time(e.timestamp.as_ref()));
    m.insert("reason".into(), json!(e.reason));
    m.insert("node_id".into(), json!(e.node_id));
    m.insert("attempt".into(), json!(e.attempt));
    Value::Object(m)
}

/// A node.
pub fn node(n: &Node) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(n.id));
    m.insert("name".into(), json!(n.name));
    m.insert("address".into(), json!(n.address));
    m.insert("labels".into(), string_map(&n.labels));
    put(&mut m, "capacity", n.capacity.as_ref().map(resources));
    put(&mut m, "allocated", n.allocated.as_ref().map(resources));
    m.insert("state".into(), json!(node_state_name(n.state())));
    m.insert(
        "availability".into(),
        json!(minkube::convert::availability_name(n.availability())),
    );
    m.insert("agent_labels".into(), string_map(&n.agent_labels));
    m.insert("admin_labels".into(), string_map(&n.admin_labels));
    put(&mut m, "registered_at", time(n.registered_at.as_ref()));
    put(&mut m, "last_heartbeat", time(n.last_heartbeat.as_ref()));
    put(
        &mut m,
        "certificate_expires_at",
        time(n.certificate_expires_at.as_ref()),
    );
    m.insert("active_tasks".into(), json!(n.active_tasks));
    m.insert("agent_version".into(), json!(n.agent_version));
    m.insert("lost".into(), json!(n.lost));
    put(&mut m, "stats", n.stats.as_ref().map(host_stats));
    Value::Object(m)
}

/// Host statistics of a node's latest heartbeat.
pub fn host_stats(s: &HostStats) -> Value {
    let mut m = Map::new();
    m.insert("cpu_percent".into(), json!(s.cpu_percent));
    m.insert("memory_total_mb".into(), json!(s.memory_total_mb));
    m.insert("memory_available_mb".into(), json!(s.memory_available_mb));
    m.insert("disk_total_mb".into(), json!(s.disk_total_mb));
    m.insert("disk_available_mb".into(), json!(s.disk_available_mb));
    m.insert("disk_path".into(), json!(s.disk_path));
    m.insert("load1".into(), json!(s.load1));
    m.insert("load5".into(), json!(s.load5));
    m.insert("load15".into(), json!(s.load15));
    put(&mut m, "sampled_at", time(s.sampled_at.as_ref()));
    Value::Object(m)
}

/// CPU and memory amounts.
pub fn resources(r: &Resources) -> Value {
    json!({ "cpu_cores": r.cpu_cores, "memory_mb": r.memory_mb })
}

/// `get`: `{"task": {...}, "events": [...]}`.
pub fn task_with_events(t: Option<&Task>, events: &[TaskEvent]) -> Value {
    let mut m = Map::new();
    put(&mut m, "task", t.map(task));
    m.insert(
        "events".into(),
        Value::Array(events.iter().map(event).collect()),
    );
    Value::Object(m)
}

/// `ps`: a page (or, with --all, the concatenation of every page).
pub fn task_list(r: &ListTasksResponse) -> Value {
    json!({
        "tasks": r.tasks.iter().map(task).collect::<Vec<_>>(),
        "total_count": r.total_count,
        "next_page_token": r.next_page_token,
        "has_next": r.has_next,
    })
}

/// `nodes`: every node.
pub fn node_list(r: &ListNodesResponse) -> Value {
    json!({
        "nodes": r.nodes.iter().map(node).collect::<Vec<_>>(),
        "total_count": r.total_count,
        "next_page_token": r.next_page_token,
        "has_next": r.has_next,
    })
}

fn put(m: &mut Map<String, Value>, key: &str, v: Option<Value>) {
    if let Some(v) = v {
        m.insert(key.to_string(), v);
    }
}

fn time(t: Option<&Timestamp>) -> Option<Value> {
    t.map(|t| Value::String(rfc3339(t)))
}

fn string_map(map: &HashMap<String, String>) -> Value {
    Value::Object(
        sorted(map)
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use minkube::pb::{DesiredState, NodeState, Protocol, PullPolicy, TaskState};

    fn sample_task() -> Task {
        Task {
            id: "t1".into(),
            spec: Some(TaskSpec {
                name: "web".into(),
                image: "busybox".into(),
                command: vec!["httpd".into(), "-f".into()],
                env: [("A".to_string(), "1".to_string())].into_iter().collect(),
                memory_mb: 64,
                cpu: 0.5,
                ports: vec![PortSpec {
                    container_port: 8080,
                    protocol: Protocol::Tcp as i32,
                }],
                pull_policy: PullPolicy::Never as i32,
                labels: HashMap::new(),
                ..Default::default()
            }),
            desired_state: DesiredState::Running as i32,
            status: Some(TaskStatus {
                state: TaskState::Running as i32,
                reason: "started".into(),
                node_id: "n1".into(),
                node_name: "node-a".into(),
                container_id: "c1".into(),
                exit_code: None,
                ports: vec![PortBinding {
                    container_port: 8080,
                    protocol: Protocol::Tcp as i32,
                    host_ip: "0.0.0.0".into(),
                    host_port: 49153,
                }],
                started_at: Some(Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                finished_at: None,
                attempt: 1,
                ..Default::default()
            }),
            created_at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 500_000_000,
            }),
            updated_at: None,
            trace_id: String::new(),
        }
    }

    #[test]
    fn task_uses_proto_names_and_short_enums() {
        let v = task(&sample_task());
        assert_eq!(v["id"], "t1");
        assert_eq!(v["desired_state"], "running");
        assert_eq!(v["spec"]["pull_policy"], "never");
        assert_eq!(v["spec"]["env"]["A"], "1");
        assert_eq!(v["spec"]["memory_mb"], 64);
        assert_eq!(v["spec"]["ports"][0]["protocol"], "tcp");
        assert_eq!(v["status"]["state"], "running");
        assert_eq!(v["status"]["ports"][0]["host_port"], 49153);
        assert_eq!(v["status"]["started_at"], "2023-11-14T22:13:20Z");
        assert_eq!(v["created_at"], "2023-11-14T22:13:20.5Z");
        // Absent optional values are omitted, not null.
        assert!(v["status"].get("exit_code").is_none());
        assert!(v["status"].get("finished_at").is_none());
        assert!(v.get("updated_at").is_none());
    }

    #[test]
    fn exit_code_zero_is_kept() {
        let mut t = sample_task();
        if let Some(s) = t.status.as_mut() {
            s.exit_code = Some(0);
        }
        assert_eq!(task(&t)["status"]["exit_code"], 0);
    }

    #[test]
    fn get_and_lists() {
        let e = TaskEvent {
            id: "e1".into(),
            task_id: "t1".into(),
            state: TaskState::Pending as i32,
            timestamp: None,
            reason: "created".into(),
            node_id: String::new(),
            attempt: 0,
        };
        let v = task_with_events(Some(&sample_task()), &[e]);
        assert_eq!(v["task"]["id"], "t1");
        assert_eq!(v["events"][0]["state"], "pending");
        assert!(v["events"][0].get("timestamp").is_none());

        let l = task_list(&ListTasksResponse {
            tasks: vec![sample_task()],
            next_page_token: "abc".into(),
            total_count: 7,
            has_next: true,
        });
        assert_eq!(l["total_count"], 7);
        assert_eq!(l["has_next"], true);
        assert_eq!(l["next_page_token"], "abc");
        assert_eq!(l["tasks"].as_array().unwrap().len(), 1);

        let n = Node {
            id: "n1".into(),
            name: "node-a".into(),
            state: NodeState::Ready as i32,
            capacity: Some(Resources {
                cpu_cores: 2.0,
                memory_mb: 4096,
            }),
            ..Default::default()
        };
        let l = node_list(&ListNodesResponse {
            nodes: vec![n],
            next_page_token: String::new(),
            total_count: 1,
            has_next: false,
        });
        assert_eq!(l["nodes"][0]["state"], "ready");
        assert_eq!(l["nodes"][0]["capacity"]["memory_mb"], 4096);
        assert!(l["nodes"][0].get("allocated").is_none());
        assert!(l["nodes"][0].get("stats").is_none());
    }

    #[test]
    fn node_stats_use_proto_names() {
        let n = crate::cli::fixtures::node_with_stats(12.5);
        let s = &node(&n)["stats"];
        assert_eq!(s["cpu_percent"], 12.5);
        assert_eq!(s["memory_total_mb"], 3900);
        assert_eq!(s["memory_available_mb"], 2100);
        assert_eq!(s["disk_total_mb"], 100_000);
        assert_eq!(s["disk_available_mb"], 40_000);
        assert_eq!(s["disk_path"], "/var/lib/docker");
        assert_eq!(s["load1"], 0.5);
        assert_eq!(s["load5"], 0.25);
        assert_eq!(s["load15"], 1.0);
        assert_eq!(s["sampled_at"], "2023-11-14T22:13:20Z");
        let mut bare = n.stats.clone().unwrap();
        bare.sampled_at = None;
        assert!(host_stats(&bare).get("sampled_at").is_none());
    }
}
