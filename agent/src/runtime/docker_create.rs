//! The Docker create request for a [`ContainerSpec`]: image, command, env,
//! labels, limits, published ports and the host access the manager allowed.
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding, PortMap};

use super::{ContainerSpec, PortKey};

/// The body of `POST /containers/create` for `spec`.
pub fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let exposed: Vec<String> = spec.ports.iter().map(PortKey::docker_key).collect();
    // An empty host port asks Docker to pick a free one.
    let bindings: PortMap = exposed
        .iter()
        .map(|k| {
            (
                k.clone(),
                Some(vec![PortBinding {
                    host_ip: None,
                    host_port: Some(String::new()),
                }]),
            )
        })
        .collect();
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: Some(spec.env.clone()),
        labels: Some(spec.labels.clone()),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(HostConfig {
            memory: Some(spec.memory_bytes),
            // Same as memory: no swap on top, so the limit is the limit.
            memory_swap: Some(spec.memory_bytes),
            nano_cpus: (spec.nano_cpus > 0).then_some(spec.nano_cpus),
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            privileged: spec.privileged.then_some(true),
            network_mode: spec.host_network.then(|| "host".to_string()),
            binds: (!spec.binds.is_empty()).then(|| spec.binds.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use minkube::pb;

    fn spec(f: impl FnOnce(&mut pb::TaskSpec)) -> ContainerSpec {
        let mut s = pb::TaskSpec {
            name: "t".into(),
            image: "img".into(),
            memory_mb: 16,
            ..Default::default()
        };
        f(&mut s);
        let a = pb::Assignment {
            task_id: "0190b6c2-1d2e-7abc-8def-0123456789ab".into(),
            attempt: 1,
            spec: Some(s),
            ..Default::default()
        };
        ContainerSpec::for_assignment("n", &a).unwrap()
    }

    #[test]
    fn an_ordinary_task_asks_for_nothing_of_the_host() {
        let h = create_body(&spec(|_| {})).host_config.unwrap();
        assert_eq!(h.privileged, None);
        assert_eq!(h.network_mode, None);
        assert_eq!(h.binds, None);
        assert_eq!(h.memory, Some(16 * 1024 * 1024));
    }

    #[test]
    fn allowed_host_access_reaches_docker() {
        let h = create_body(&spec(|s| {
            s.privileged = true;
            s.host_network = true;
            s.host_mounts = vec![pb::HostMount {
                host_path: "/srv".into(),
                container_path: "/data".into(),
                read_only: true,
            }];
        }))
        .host_config
        .unwrap();
        assert_eq!(h.privileged, Some(true));
        assert_eq!(h.network_mode.as_deref(), Some("host"));
        assert_eq!(h.binds, Some(vec!["/srv:/data:ro".to_string()]));
    }
}
