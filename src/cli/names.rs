//! Short display names of protocol values shared by the JSON and text output.
use std::collections::HashMap;

use minkube::pb::{PortBinding, PortSpec, Protocol, PullPolicy, RestartPolicy};

/// "tcp" or "udp"; unspecified means TCP per the protocol.
pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Udp => "udp",
        Protocol::Tcp | Protocol::Unspecified => "tcp",
    }
}

/// The `--pull-policy` spelling; unspecified means if-not-present per the protocol.
pub fn pull_policy_name(p: PullPolicy) -> &'static str {
    match p {
        PullPolicy::Always => "always",
        PullPolicy::Never => "never",
        PullPolicy::IfNotPresent | PullPolicy::Unspecified => "if-not-present",
    }
}

/// Short name of a restart policy.
pub fn restart_policy_name(p: RestartPolicy) -> &'static str {
    match p {
        RestartPolicy::Always => "always",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Never | RestartPolicy::Unspecified => "never",
    }
}

/// "8080/tcp".
pub fn port_spec(p: &PortSpec) -> String {
    format!("{}/{}", p.container_port, protocol_name(p.protocol()))
}

/// "0.0.0.0:49153->8080/tcp" (`with_ip`) or "49153->8080/tcp".
pub fn port_binding(b: &PortBinding, with_ip: bool) -> String {
    let proto = protocol_name(b.protocol());
    if with_ip && !b.host_ip.is_empty() {
        format!(
            "{}:{}->{}/{proto}",
            b.host_ip, b.host_port, b.container_port
        )
    } else {
        format!("{}->{}/{proto}", b.host_port, b.container_port)
    }
}

/// Map entries sorted by key, so output does not depend on hash order.
pub fn sorted(map: &HashMap<String, String>) -> Vec<(&str, &str)> {
    let mut v: Vec<(&str, &str)> = map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    v.sort_unstable();
    v
}

/// "a=1,b=2", or "-" when empty.
pub fn key_values(map: &HashMap<String, String>) -> String {
    if map.is_empty() {
        return "-".to_string();
    }
    sorted(map)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A number of CPU cores without a useless ".0": "2", "0.5".
pub fn cores(c: f64) -> String {
    format!("{c}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_render() {
        let b = PortBinding {
            container_port: 8080,
            protocol: Protocol::Tcp as i32,
            host_ip: "0.0.0.0".into(),
            host_port: 49153,
        };
        assert_eq!(port_binding(&b, true), "0.0.0.0:49153->8080/tcp");
        assert_eq!(port_binding(&b, false), "49153->8080/tcp");
        let s = PortSpec {
            container_port: 53,
            protocol: Protocol::Udp as i32,
        };
        assert_eq!(port_spec(&s), "53/udp");
        let s = PortSpec {
            container_port: 80,
            protocol: 0,
        };
        assert_eq!(port_spec(&s), "80/tcp");
    }

    #[test]
    fn maps_and_numbers() {
        let m: HashMap<String, String> = [("b", "2"), ("a", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(key_values(&m), "a=1,b=2");
        assert_eq!(key_values(&HashMap::new()), "-");
        assert_eq!(cores(2.0), "2");
        assert_eq!(cores(0.5), "0.5");
        assert_eq!(pull_policy_name(PullPolicy::Unspecified), "if-not-present");
    }
}
