//! Turns an assignment into the container to create: limits in Docker's
//! units, the port list, minkube's labels and a readable name.
use std::collections::HashMap;

use minkube::pb;
use minkube_common::labels;
use minkube_common::validate::validate_spec;

use super::RuntimeError;

/// A container port and its protocol, e.g. `80/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortKey {
    /// Port inside the container.
    pub port: u32,
    /// TCP or UDP (never Unspecified).
    pub protocol: pb::Protocol,
}

impl PortKey {
    /// Docker's spelling: `80/tcp`.
    pub fn docker_key(&self) -> String {
        let proto = match self.protocol {
            pb::Protocol::Udp => "udp",
            pb::Protocol::Tcp | pb::Protocol::Unspecified => "tcp",
        };
        format!("{}/{proto}", self.port)
    }

    /// Parses Docker's `80/tcp` spelling.
    pub fn parse(key: &str) -> Option<Self> {
        let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
        let protocol = match proto {
            "tcp" => pb::Protocol::Tcp,
            "udp" => pb::Protocol::Udp,
            _ => return None,
        };
        Some(Self {
            port: port.parse().ok()?,
            protocol,
        })
    }
}

/// Everything needed to create one container for one attempt of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Container name, for people; lookups go by label.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Command; empty keeps the image's default.
    pub command: Vec<String>,
    /// `KEY=value` entries, sorted.
    pub env: Vec<String>,
    /// Memory limit in bytes.
    pub memory_bytes: i64,
    /// CPU limit in units of 1e-9 cores; 0 means no limit.
    pub nano_cpus: i64,
    /// Ports to publish on automatically chosen host ports.
    pub ports: Vec<PortKey>,
    /// User labels plus minkube's own.
    pub labels: HashMap<String, String>,
    /// Privileged mode (the manager allowed it).
    pub privileged: bool,
    /// The host's network stack instead of a bridge.
    pub host_network: bool,
    /// Docker binds, `host:container[:ro]`.
    pub binds: Vec<String>,
}

impl ContainerSpec {
    /// Adds the OpenTelemetry variables an instrumented program in the
    /// container reads: `TRACEPARENT`/`TRACESTATE` (the agent span that
    /// started it, so the program continues the task's trace),
    /// `OTEL_SERVICE_NAME` (the task's name) and `OTEL_RESOURCE_ATTRIBUTES`
    /// naming the task, attempt and node. A variable the task's spec sets
    /// itself is kept as given.
    #[must_use]
    pub fn with_telemetry_env(mut self, trace_context: &HashMap<String, String>) -> Self {
        let label = |k: &str| self.labels.get(k).cloned().unwrap_or_default();
        let name = label(labels::TASK_NAME);
        let resource = [
            ("minkube.task.id", label(labels::TASK_ID)),
            ("minkube.task.name", name.clone()),
            ("minkube.task.attempt", label(labels::ATTEMPT)),
            ("minkube.node.id", label(labels::NODE_ID)),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={}", encode_attribute(v)))
        .collect::<Vec<_>>()
        .join(",");
        let mut add = vec![
            (
                "OTEL_SERVICE_NAME".to_string(),
                if name.is_empty() {
                    "minkube-task".into()
                } else {
                    name
                },
            ),
            ("OTEL_RESOURCE_ATTRIBUTES".to_string(), resource),
        ];
        for (header, var) in [("traceparent", "TRACEPARENT"), ("tracestate", "TRACESTATE")] {
            if let Some(v) = trace_context.get(header).filter(|v| !v.is_empty()) {
                add.push((var.to_string(), v.clone()));
            }
        }
        for (k, v) in add {
            let taken = self
                .env
                .iter()
                .any(|e| e.split_once('=').is_some_and(|(name, _)| name == k));
            if !taken {
                self.env.push(format!("{k}={v}"));
            }
        }
        self.env.sort();
        self
    }
}

/// Percent-encodes the characters `OTEL_RESOURCE_ATTRIBUTES` reserves.
fn encode_attribute(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            ',' | '=' | '%' | ' ' | '"' | ';' | '\\' => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// `minkube-<name>-<8 chars of the task id>-<attempt>`. The id's tail is used
/// because UUIDv7 ids share their leading (time) digits for about a minute,
/// and exited containers are kept, so a leading prefix would collide.
pub fn container_name(task_name: &str, task_id: &str, attempt: u32) -> String {
    let id: Vec<char> = task_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let short: String = id[id.len().saturating_sub(8)..].iter().collect();
    format!("minkube-{task_name}-{short}-{attempt}")
}

impl ContainerSpec {
    /// Builds the container for an assignment. The spec is validated again
    /// here: the agent does not hand Docker anything the manager would refuse.
    pub fn for_assignment(
        node_id: &str,
        assignment: &pb::Assignment,
    ) -> Result<Self, RuntimeError> {
        let spec = assignment
            .spec
            .as_ref()
            .ok_or_else(|| RuntimeError::InvalidSpec("the assignment carries no spec".into()))?;
        validate_spec(spec).map_err(|e| RuntimeError::InvalidSpec(e.to_string()))?;
        let memory_bytes = spec
            .memory_mb
            .checked_mul(1024 * 1024)
            .and_then(|b| i64::try_from(b).ok())
            .ok_or_else(|| {
                RuntimeError::InvalidSpec(format!("memory_mb {} is too large", spec.memory_mb))
            })?;
        // Validated above as finite and within 0..=1024 cores.
        #[allow(clippy::cast_possible_truncation)]
        let nano_cpus = (spec.cpu * 1e9).round() as i64;

        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.sort();
        let ports = spec
            .ports
            .iter()
            .map(|p| PortKey {
                port: p.container_port,
                protocol: match pb::Protocol::try_from(p.protocol) {
                    Ok(pb::Protocol::Udp) => pb::Protocol::Udp,
                    _ => pb::Protocol::Tcp,
                },
            })
            .collect();

        let mut all_labels = spec.labels.clone();
        all_labels.insert(labels::MANAGED.into(), "true".into());
        all_labels.insert(labels::TASK_ID.into(), assignment.task_id.clone());
        all_labels.insert(labels::TASK_NAME.into(), spec.name.clone());
        all_labels.insert(labels::NODE_ID.into(), node_id.to_string());
        all_labels.insert(labels::ATTEMPT.into(), assignment.attempt.to_string());

        Ok(Self {
            name: container_name(&spec.name, &assignment.task_id, assignment.attempt),
            image: spec.image.clone(),
            command: spec.command.clone(),
            env,
            memory_bytes,
            nano_cpus,
            ports,
            labels: all_labels,
            privileged: spec.privileged,
            host_network: spec.host_network,
            binds: spec
                .host_mounts
                .iter()
                .map(|m| {
                    let ro = if m.read_only { ":ro" } else { "" };
                    format!("{}:{}{ro}", m.host_path, m.container_path)
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn assignment() -> pb::Assignment {
        let mut spec = pb::TaskSpec {
            name: "web".into(),
            image: "busybox:latest".into(),
            command: vec!["httpd".into(), "-f".into()],
            memory_mb: 64,
            cpu: 0.5,
            ports: vec![
                pb::PortSpec {
                    container_port: 80,
                    protocol: 0,
                },
                pb::PortSpec {
                    container_port: 53,
                    protocol: pb::Protocol::Udp as i32,
                },
            ],
            ..Default::default()
        };
        spec.env.insert("B".into(), "2".into());
        spec.env.insert("A".into(), "1=x".into());
        spec.labels.insert("team".into(), "red".into());
        pb::Assignment {
            task_id: "0190b6c2-1d2e-7abc-8def-0123456789ab".into(),
            attempt: 2,
            spec: Some(spec),
            ..Default::default()
        }
    }

    #[test]
    fn converts_limits_ports_env_and_labels() {
        let c = ContainerSpec::for_assignment("node-1", &assignment()).unwrap();
        assert_eq!(c.memory_bytes, 64 * 1024 * 1024);
        assert_eq!(c.nano_cpus, 500_000_000);
        assert_eq!(c.env, vec!["A=1=x".to_string(), "B=2".to_string()]);
        let keys: Vec<String> = c.ports.iter().map(PortKey::docker_key).collect();
        assert_eq!(keys, vec!["80/tcp".to_string(), "53/udp".to_string()]);
        assert_eq!(c.labels["minkube.managed"], "true");
        assert_eq!(
            c.labels["minkube.task-id"],
            "0190b6c2-1d2e-7abc-8def-0123456789ab"
        );
        assert_eq!(c.labels["minkube.task-name"], "web");
        assert_eq!(c.labels["minkube.node-id"], "node-1");
        assert_eq!(c.labels["minkube.attempt"], "2");
        assert_eq!(c.labels["team"], "red");
        assert_eq!(c.name, "minkube-web-456789ab-2");
    }

    #[test]
    fn refuses_a_missing_or_invalid_spec() {
        let mut a = assignment();
        a.spec = None;
        assert!(matches!(
            ContainerSpec::for_assignment("n", &a),
            Err(RuntimeError::InvalidSpec(_))
        ));
        let mut a = assignment();
        if let Some(s) = a.spec.as_mut() {
            s.memory_mb = 1;
        }
        let err = ContainerSpec::for_assignment("n", &a).unwrap_err();
        assert!(err.to_string().contains("spec.memory_mb"), "{err}");
    }

    #[test]
    fn port_keys_round_trip() {
        for k in ["80/tcp", "53/udp"] {
            assert_eq!(PortKey::parse(k).unwrap().docker_key(), k);
        }
        assert_eq!(PortKey::parse("8080").unwrap().docker_key(), "8080/tcp");
        assert!(PortKey::parse("1/sctp").is_none());
        assert!(PortKey::parse("x/tcp").is_none());
    }

    #[test]
    fn short_names_use_the_random_tail_of_the_id() {
        assert_eq!(container_name("a", "abc", 1), "minkube-a-abc-1");
    }

    #[test]
    fn telemetry_env_continues_the_trace_and_names_the_task() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = HashMap::from([("traceparent".to_string(), tp.to_string())]);
        let c = ContainerSpec::for_assignment("node-1", &assignment())
            .unwrap()
            .with_telemetry_env(&trace);
        assert!(c.env.contains(&format!("TRACEPARENT={tp}")));
        assert!(c.env.contains(&"OTEL_SERVICE_NAME=web".to_string()));
        let attrs = c
            .env
            .iter()
            .find_map(|e| e.strip_prefix("OTEL_RESOURCE_ATTRIBUTES="))
            .unwrap();
        assert_eq!(
            attrs,
            "minkube.task.id=0190b6c2-1d2e-7abc-8def-0123456789ab,minkube.task.name=web,\
             minkube.task.attempt=2,minkube.node.id=node-1"
        );
        assert!(c.env.windows(2).all(|w| w[0] <= w[1]), "env stays sorted");
    }

    #[test]
    fn telemetry_env_keeps_what_the_spec_sets_and_skips_missing_trace() {
        let mut a = assignment();
        if let Some(s) = a.spec.as_mut() {
            s.env.insert("OTEL_SERVICE_NAME".into(), "mine".into());
        }
        let c = ContainerSpec::for_assignment("n", &a)
            .unwrap()
            .with_telemetry_env(&HashMap::new());
        assert!(c.env.contains(&"OTEL_SERVICE_NAME=mine".to_string()));
        assert_eq!(
            c.env
                .iter()
                .filter(|e| e.starts_with("OTEL_SERVICE_NAME="))
                .count(),
            1
        );
        assert!(!c.env.iter().any(|e| e.starts_with("TRACEPARENT=")));
    }

    #[test]
    fn resource_attribute_values_are_encoded() {
        assert_eq!(encode_attribute("a,b=c d%"), "a%2Cb%3Dc%20d%25");
    }
}
