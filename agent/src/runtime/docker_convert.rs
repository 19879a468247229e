//! Conversions between Docker's API models and the runtime's types, kept
//! apart from the I/O so they can be tested on literal values.
use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;

use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary,
    ContainerSummaryStateEnum, EventMessage, PortMap,
};
use minkube::pb;
use minkube_common::labels;
use prost_types::Timestamp;

use super::{error_chain, ContainerInfo, ContainerRef, ContainerStatus, PortKey, RuntimeError};

/// Maps a bollard error onto the runtime's classes; `action` says what was attempted.
pub(super) fn classify(action: &'static str, err: DockerError) -> RuntimeError {
    match err {
        DockerError::DockerResponseServerError {
            status_code: 404,
            message,
        } => RuntimeError::NotFound(message),
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => RuntimeError::Daemon {
            action,
            status: Some(status_code),
            message,
        },
        DockerError::DockerStreamError { error } => RuntimeError::Daemon {
            action,
            status: None,
            message: error,
        },
        DockerError::RequestTimeoutError => {
            RuntimeError::Unavailable(format!("no answer in time while trying to {action}"))
        }
        e @ (DockerError::IOError { .. }
        | DockerError::HyperResponseError { .. }
        | DockerError::HyperLegacyError { .. }
        | DockerError::SocketNotFoundError(_)) => RuntimeError::Unavailable(error_chain(&e)),
        other => RuntimeError::Daemon {
            action,
            status: None,
            message: error_chain(&other),
        },
    }
}

pub(super) fn status_from_inspect(s: Option<&ContainerStateStatusEnum>) -> ContainerStatus {
    use ContainerStateStatusEnum as S;
    match s {
        Some(S::CREATED) => ContainerStatus::Created,
        Some(S::RUNNING) => ContainerStatus::Running,
        Some(S::PAUSED) => ContainerStatus::Paused,
        Some(S::RESTARTING) => ContainerStatus::Restarting,
        Some(S::REMOVING) => ContainerStatus::Removing,
        Some(S::EXITED) => ContainerStatus::Exited,
        Some(S::DEAD) => ContainerStatus::Dead,
        _ => ContainerStatus::Unknown,
    }
}

pub(super) fn status_from_summary(s: Option<&ContainerSummaryStateEnum>) -> ContainerStatus {
    use ContainerSummaryStateEnum as S;
    match s {
        Some(S::CREATED) => ContainerStatus::Created,
        Some(S::RUNNING) => ContainerStatus::Running,
        Some(S::PAUSED) => ContainerStatus::Paused,
        Some(S::RESTARTING) => ContainerStatus::Restarting,
        Some(S::REMOVING) => ContainerStatus::Removing,
        Some(S::EXITED) => ContainerStatus::Exited,
        Some(S::DEAD) => ContainerStatus::Dead,
        _ => ContainerStatus::Unknown,
    }
}

/// Parses Docker's RFC 3339 times; its "zero" time (year 1) means unset.
pub(super) fn parse_time(s: Option<&str>) -> Option<Timestamp> {
    let t = Timestamp::from_str(s?).ok()?;
    (t.seconds > 0).then_some(t)
}

/// Task id and attempt from minkube's labels.
pub(super) fn task_labels(labels_map: Option<&HashMap<String, String>>) -> (String, u32) {
    let get = |k: &str| labels_map.and_then(|m| m.get(k)).cloned();
    let task_id = get(labels::TASK_ID).unwrap_or_default();
    let attempt = get(labels::ATTEMPT)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    (task_id, attempt)
}

/// The host ports Docker bound, one per (container port, protocol, host
/// port): Docker binds IPv4 and IPv6 separately and IPv4 is reported.
pub(super) fn ports_from_map(map: Option<&PortMap>) -> Vec<pb::PortBinding> {
    let Some(map) = map else {
        return Vec::new();
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    for key in keys {
        let Some(pk) = PortKey::parse(key) else {
            continue;
        };
        let Some(Some(bindings)) = map.get(key) else {
            continue;
        };
        let mut bindings: Vec<_> = bindings.iter().collect();
        // IPv4 first, so it wins over the IPv6 twin of the same host port.
        bindings.sort_by_key(|b| b.host_ip.as_deref().unwrap_or("").contains(':'));
        for b in bindings {
            let Some(host_port) = b.host_port.as_deref().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if seen.insert((pk.port, pk.protocol as i32, host_port)) {
                out.push(pb::PortBinding {
                    container_port: pk.port,
                    protocol: pk.protocol as i32,
                    host_ip: b.host_ip.clone().unwrap_or_default(),
                    host_port,
                });
            }
        }
    }
    // IPv4 first for each port: when Docker picked different host ports for
    // the two families (it allocates them separately), the first binding
    // listed is the one 127.0.0.1 and most clients reach.
    out.sort_by_key(|p| {
        (
            p.container_port,
            p.protocol,
            p.host_ip.contains(':'),
            p.host_port,
        )
    });
    out
}

pub(super) fn info_from_inspect(r: ContainerInspectResponse) -> ContainerInfo {
    let (task_id, attempt) = task_labels(r.config.as_ref().and_then(|c| c.labels.as_ref()));
    let state = r.state.unwrap_or_default();
    let status = status_from_inspect(state.status.as_ref());
    let exit_code = if status.is_exited() {
        state
            .exit_code
            .map(|c| i32::try_from(c).unwrap_or(i32::MIN))
    } else {
        None
    };
    ContainerInfo {
        id: r.id.unwrap_or_default(),
        task_id,
        attempt,
        status,
        exit_code,
        oom_killed: state.oom_killed.unwrap_or(false),
        ports: ports_from_map(r.network_settings.as_ref().and_then(|n| n.ports.as_ref())),
        started_at: parse_time(state.started_at.as_deref()),
        finished_at: if status.is_exited() {
            parse_time(state.finished_at.as_deref())
        } else {
            None
        },
    }
}

pub(super) fn ref_from_summary(s: ContainerSummary) -> Option<ContainerRef> {
    let (task_id, attempt) = task_labels(s.labels.as_ref());
    Some(ContainerRef {
        id: s.id?,
        task_id,
        attempt,
        status: status_from_summary(s.state.as_ref()),
    })
}

/// Splits an image reference into the `fromImage` and `tag` of a pull. An
/// untagged reference means `latest` (an empty tag would pull every tag).
pub(super) fn pull_parts(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_string(), None);
    }
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].rfind(':') {
        Some(i) => {
            let split = name_start + i;
            (
                image[..split].to_string(),
                Some(image[split + 1..].to_string()),
            )
        }
        None => (image.to_string(), Some("latest".to_string())),
    }
}

/// When the daemon saw an event.
pub(super) fn event_time(ev: &EventMessage) -> Timestamp {
    if let Some(nanos) = ev.time_nano.filter(|n| *n > 0) {
        Timestamp {
            seconds: nanos.div_euclid(1_000_000_000),
            nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
        }
    } else if let Some(secs) = ev.time.filter(|s| *s > 0) {
        Timestamp {
            seconds: secs,
            nanos: 0,
        }
    } else {
        minkube::convert::now()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use bollard::models::{ContainerConfig, ContainerState, NetworkSettings, PortBinding};

    use super::*;

    fn binding(ip: &str, port: &str) -> PortBinding {
        PortBinding {
            host_ip: Some(ip.into()),
            host_port: Some(port.into()),
        }
    }

    #[test]
    fn ipv4_comes_first_when_the_families_got_different_ports() {
        let mut map: PortMap = HashMap::new();
        map.insert(
            "8080/tcp".into(),
            Some(vec![binding("::", "32781"), binding("0.0.0.0", "32782")]),
        );
        let ports = ports_from_map(Some(&map));
        let got: Vec<(&str, u32)> = ports
            .iter()
            .map(|p| (p.host_ip.as_str(), p.host_port))
            .collect();
        assert_eq!(got, vec![("0.0.0.0", 32782), ("::", 32781)]);
    }

    #[test]
    fn ports_prefer_ipv4_and_skip_unbound() {
        let mut map: PortMap = HashMap::new();
        map.insert(
            "80/tcp".into(),
            Some(vec![binding("::", "49153"), binding("0.0.0.0", "49153")]),
        );
        map.insert("53/udp".into(), Some(vec![binding("0.0.0.0", "49154")]));
        map.insert("90/tcp".into(), None);
        let ports = ports_from_map(Some(&map));
        assert_eq!(
            ports,
            vec![
                pb::PortBinding {
                    container_port: 53,
                    protocol: pb::Protocol::Udp as i32,
                    host_ip: "0.0.0.0".into(),
                    host_port: 49154
                },
                pb::PortBinding {
                    container_port: 80,
                    protocol: pb::Protocol::Tcp as i32,
                    host_ip: "0.0.0.0".into(),
                    host_port: 49153
                },
            ]
        );
        assert!(ports_from_map(None).is_empty());
    }

    #[test]
    fn zero_time_is_unset() {
        assert_eq!(parse_time(Some("0001-01-01T00:00:00Z")), None);
        assert_eq!(parse_time(None), None);
        let t = parse_time(Some("2024-05-01T10:00:00.123456789Z")).unwrap();
        assert_eq!(t.seconds, 1_714_557_600);
        assert_eq!(t.nanos, 123_456_789);
    }

    #[test]
    fn inspect_maps_state_labels_and_exit_code() {
        let mut labels_map = HashMap::new();
        labels_map.insert("minkube.task-id".to_string(), "t1".to_string());
        labels_map.insert("minkube.attempt".to_string(), "3".to_string());
        let r = ContainerInspectResponse {
            id: Some("c1".into()),
            config: Some(ContainerConfig {
                labels: Some(labels_map),
                ..Default::default()
            }),
            state: Some(ContainerState {
                status: Some(ContainerStateStatusEnum::EXITED),
                exit_code: Some(137),
                oom_killed: Some(true),
                started_at: Some("2024-05-01T10:00:00Z".into()),
                finished_at: Some("2024-05-01T10:00:05Z".into()),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings::default()),
            ..Default::default()
        };
        let info = info_from_inspect(r);
        assert_eq!(info.id, "c1");
        assert_eq!(info.task_id, "t1");
        assert_eq!(info.attempt, 3);
        assert_eq!(info.status, ContainerStatus::Exited);
        assert_eq!(info.exit_code, Some(137));
        assert!(info.oom_killed);
        assert_eq!(info.finished_at.unwrap().seconds, 1_714_557_605);
    }

    #[test]
    fn running_containers_have_no_exit_code() {
        let r = ContainerInspectResponse {
            state: Some(ContainerState {
                status: Some(ContainerStateStatusEnum::RUNNING),
                exit_code: Some(0),
                finished_at: Some("0001-01-01T00:00:00Z".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let info = info_from_inspect(r);
        assert_eq!(info.exit_code, None);
        assert_eq!(info.finished_at, None);
        assert_eq!(info.attempt, 0);
    }

    #[test]
    fn pull_parts_default_to_latest() {
        assert_eq!(
            pull_parts("busybox"),
            ("busybox".into(), Some("latest".into()))
        );
        assert_eq!(
            pull_parts("busybox:1.36"),
            ("busybox".into(), Some("1.36".into()))
        );
        assert_eq!(
            pull_parts("localhost:5000/app"),
            ("localhost:5000/app".into(), Some("latest".into()))
        );
        assert_eq!(
            pull_parts("localhost:5000/app:v2"),
            ("localhost:5000/app".into(), Some("v2".into()))
        );
        assert_eq!(
            pull_parts("app@sha256:abc"),
            ("app@sha256:abc".into(), None)
        );
    }

    #[test]
    fn errors_are_classified() {
        let e = classify(
            "start the container",
            DockerError::DockerResponseServerError {
                status_code: 404,
                message: "No such container: x".into(),
            },
        );
        assert!(matches!(e, RuntimeError::NotFound(_)));
        let e = classify(
            "start the container",
            DockerError::DockerResponseServerError {
                status_code: 400,
                message: "executable file not found".into(),
            },
        );
        assert_eq!(
            e.to_string(),
            "Docker could not start the container: executable file not found"
        );
        assert!(classify("ping", DockerError::RequestTimeoutError).is_unavailable());
    }

    #[test]
    fn event_time_prefers_nanos() {
        let ev = EventMessage {
            time: Some(10),
            time_nano: Some(10_500_000_000),
            ..Default::default()
        };
        assert_eq!(
            event_time(&ev),
            Timestamp {
                seconds: 10,
                nanos: 500_000_000
            }
        );
    }
}
