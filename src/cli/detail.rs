//! `key: value` blocks for `get` and `node get`.
use prost_types::Timestamp;

use minkube::convert::{desired_state_name, node_state_name, task_state_name};
use minkube::pb::{Node, Task, TaskEvent};

use super::names::{
    cores, key_values, port_binding, port_spec, pull_policy_name, restart_policy_name,
};
use super::table::{self, load_average};
use super::timefmt::rfc3339;

/// Lines of `Key: value` with values aligned after the longest key.
#[derive(Debug, Default)]
struct Block(Vec<(&'static str, String)>);

impl Block {
    fn add(&mut self, key: &'static str, value: impl Into<String>) {
        let v = value.into();
        self.0
            .push((key, if v.is_empty() { "-".into() } else { v }));
    }

    fn render(&self) -> String {
        let width = self.0.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in &self.0 {
            out.push_str(&format!("{:<width$} {v}\n", format!("{k}:")));
        }
        out
    }
}

fn time(t: Option<&Timestamp>) -> String {
    t.map(rfc3339).unwrap_or_default()
}

/// Joins a command line, single-quoting words a shell would split or expand.
pub fn shell_join(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            let plain = !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `get` output: the task, then its events.
pub fn task(t: &Task, events: &[TaskEvent]) -> String {
    let spec = t.spec.clone().unwrap_or_default();
    let status = t.status.clone().unwrap_or_default();
    let mut b = Block::default();
    b.add("ID", t.id.clone());
    b.add("Name", spec.name.clone());
    b.add("Image", spec.image.clone());
    b.add(
        "Command",
        if spec.command.is_empty() {
            "(image default)".to_string()
        } else {
            shell_join(&spec.command)
        },
    );
    b.add("Env", key_values(&spec.env));
    b.add("Memory", format!("{} MB", spec.memory_mb));
    b.add(
        "CPU",
        if spec.cpu > 0.0 {
            cores(spec.cpu)
        } else {
            "no limit".to_string()
        },
    );
    b.add(
        "Ports",
        spec.ports
            .iter()
            .map(port_spec)
            .collect::<Vec<_>>()
            .join(","),
    );
    b.add("Pull policy", pull_policy_name(spec.pull_policy()));
    b.add("Restart", restart_policy_name(spec.restart_policy()));
    b.add("Labels", key_values(&spec.labels));
    b.add("Desired state", desired_state_name(t.desired_state()));
    b.add("State", task_state_name(status.state()));
    b.add("Reason", status.reason.clone());
    b.add(
        "Node",
        match (status.node_name.is_empty(), status.node_id.is_empty()) {
            (_, true) => String::new(),
            (true, false) => status.node_id.clone(),
            (false, false) => format!("{} ({})", status.node_name, status.node_id),
        },
    );
    b.add("Attempt", status.attempt.to_string());
    b.add("Restarts", status.restarts.to_string());
    if status.next_attempt_at.is_some() {
        b.add("Next attempt", time(status.next_attempt_at.as_ref()));
    }
    b.add("Container ID", status.container_id.clone());
    b.add(
        "Host ports",
        status
            .ports
            .iter()
            .map(|p| port_binding(p, true))
            .collect::<Vec<_>>()
            .join(","),
    );
    b.add(
        "Exit code",
        status.exit_code.map(|c| c.to_string()).unwrap_or_default(),
    );
    b.add("Created", time(t.created_at.as_ref()));
    b.add("Updated", time(t.updated_at.as_ref()));
    b.add("Started", time(status.started_at.as_ref()));
    b.add("Finished", time(status.finished_at.as_ref()));
    b.add("Trace", t.trace_id.clone());
    format!("{}\nEVENTS\n{}", b.render(), table::events(events))
}

/// The `node get` output.
pub fn node(n: &Node) -> String {
    let cap = n.capacity.unwrap_or_default();
    let alloc = n.allocated.unwrap_or_default();
    let mut b = Block::default();
    b.add("Name", n.name.clone());
    b.add("ID", n.id.clone());
    b.add(
        "State",
        if n.lost {
            format!(
                "{} (lost: its tasks were moved or failed)",
                node_state_name(n.state())
            )
        } else {
            node_state_name(n.state()).to_string()
        },
    );
    b.add(
        "Availability",
        minkube::convert::availability_name(n.availability()),
    );
    b.add("Address", n.address.clone());
    b.add("Labels", key_values(&n.labels));
    if !n.admin_labels.is_empty() {
        b.add("Set by admin", key_values(&n.admin_labels));
    }
    b.add("CPU", format!("{} cores", cores(cap.cpu_cores)));
    b.add("Memory", format!("{} MB", cap.memory_mb));
    b.add(
        "Allocated",
        format!("{} MB, {} cores", alloc.memory_mb, cores(alloc.cpu_cores)),
    );
    b.add("Active tasks", n.active_tasks.to_string());
    match &n.stats {
        Some(s) => {
            b.add("CPU usage", format!("{:.1}%", s.cpu_percent));
            b.add(
                "Mem available",
                format!("{} MB of {} MB", s.memory_available_mb, s.memory_total_mb),
            );
            b.add(
                "Disk available",
                format!(
                    "{} MB of {} MB ({})",
                    s.disk_available_mb,
                    s.disk_total_mb,
                    if s.disk_path.is_empty() {
                        "-"
                    } else {
                        &s.disk_path
                    }
                ),
            );
            b.add("Load average", load_average(s));
            b.add("Stats sampled", time(s.sampled_at.as_ref()));
        }
        None => b.add("Host stats", "none reported yet"),
    }
    b.add("Agent version", n.agent_version.clone());
    if n.certificate_expires_at.is_some() {
        b.add("Cert expires", time(n.certificate_expires_at.as_ref()));
    }
    b.add("Registered", time(n.registered_at.as_ref()));
    b.add("Last heartbeat", time(n.last_heartbeat.as_ref()));
    b.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use minkube::pb::{
        DesiredState, NodeState, PortBinding, PortSpec, Protocol, Resources, TaskSpec, TaskState,
        TaskStatus,
    };

    #[test]
    fn shell_quoting() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(shell_join(&w(&["sleep", "300"])), "sleep 300");
        assert_eq!(
            shell_join(&w(&["sh", "-c", "echo it's; exit 3"])),
            r"sh -c 'echo it'\''s; exit 3'"
        );
        assert_eq!(shell_join(&w(&["echo", ""])), "echo ''");
    }

    #[test]
    fn task_block() {
        let t = Task {
            id: "t1".into(),
            spec: Some(TaskSpec {
                name: "web".into(),
                image: "busybox".into(),
                command: vec!["httpd".into(), "-f".into()],
                memory_mb: 64,
                ports: vec![PortSpec {
                    container_port: 8080,
                    protocol: Protocol::Tcp as i32,
                }],
                ..Default::default()
            }),
            desired_state: DesiredState::Stopped as i32,
            status: Some(TaskStatus {
                state: TaskState::Failed as i32,
                reason: "exited with code 3".into(),
                node_id: "n1".into(),
                node_name: "node-a".into(),
                container_id: "abc".into(),
                exit_code: Some(3),
                ports: vec![PortBinding {
                    container_port: 8080,
                    protocol: Protocol::Tcp as i32,
                    host_ip: "0.0.0.0".into(),
                    host_port: 49153,
                }],
                attempt: 1,
                ..Default::default()
            }),
            created_at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..Default::default()
        };
        let out = task(&t, &[]);
        let has = |line: &str| out.lines().any(|l| l == line);
        assert!(has("ID:            t1"), "{out}");
        assert!(has("Command:       httpd -f"), "{out}");
        assert!(has("CPU:           no limit"), "{out}");
        assert!(has("Desired state: stopped"), "{out}");
        assert!(has("State:         failed"), "{out}");
        assert!(has("Node:          node-a (n1)"), "{out}");
        assert!(has("Host ports:    0.0.0.0:49153->8080/tcp"), "{out}");
        assert!(has("Exit code:     3"), "{out}");
        assert!(has("Created:       2023-11-14T22:13:20Z"), "{out}");
        assert!(has("Finished:      -"), "{out}");
        assert!(
            out.ends_with("\nEVENTS\nTIME   STATE   ATTEMPT   REASON\n"),
            "{out}"
        );
    }

    #[test]
    fn node_block() {
        let n = Node {
            id: "n1".into(),
            name: "node-a".into(),
            state: NodeState::Down as i32,
            capacity: Some(Resources {
                cpu_cores: 2.0,
                memory_mb: 1024,
            }),
            ..Default::default()
        };
        let out = node(&n);
        assert!(out.contains("State:          down\n"), "{out}");
        assert!(out.contains("CPU:            2 cores\n"), "{out}");
        assert!(out.contains("Allocated:      0 MB, 0 cores\n"), "{out}");
        assert!(out.contains("Host stats:     none reported yet\n"), "{out}");
        assert!(!out.contains("CPU usage"), "{out}");
        assert!(!out.contains("Cert expires"), "plaintext: {out}");

        let secured = Node {
            certificate_expires_at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..n
        };
        let out = node(&secured);
        assert!(
            out.contains("Cert expires:   2023-11-14T22:13:20Z\n"),
            "{out}"
        );
    }

    #[test]
    fn node_block_with_stats() {
        let n = crate::cli::fixtures::node_with_stats(7.25);
        let out = node(&n);
        let has = |line: &str| out.lines().any(|l| l == line);
        assert!(has("CPU usage:      7.2%"), "{out}");
        assert!(has("Mem available:  2100 MB of 3900 MB"), "{out}");
        assert!(
            has("Disk available: 40000 MB of 100000 MB (/var/lib/docker)"),
            "{out}"
        );
        assert!(has("Load average:   0.50 0.25 1.00"), "{out}");
        assert!(has("Stats sampled:  2023-11-14T22:13:20Z"), "{out}");
        assert!(!out.contains("Host stats"), "{out}");
    }
}
