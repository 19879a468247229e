//! Spec validation. Every rule names the field it is about, so a user can fix
//! the request without reading the source. Every string and list is bounded.
use minkube::pb::{PortSpec, Protocol, TaskSpec};

use crate::labels::RESERVED_PREFIX;

/// Docker refuses memory limits below 6 MiB.
pub const MIN_MEMORY_MB: u64 = 6;
/// 16 TiB: anything larger is a typo.
pub const MAX_MEMORY_MB: u64 = 16 * 1024 * 1024;
/// Largest CPU limit accepted, in cores.
pub const MAX_CPU: f64 = 1024.0;
/// Longest DNS label.
pub const MAX_NAME_LEN: usize = 63;
/// Longest image reference.
pub const MAX_IMAGE_LEN: usize = 512;
/// Most command arguments.
pub const MAX_COMMAND_ARGS: usize = 256;
/// Largest total size of the command, in bytes.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Most environment variables.
pub const MAX_ENV_VARS: usize = 256;
/// Longest environment variable name.
pub const MAX_ENV_KEY_LEN: usize = 256;
/// Largest environment variable value, in bytes.
pub const MAX_ENV_VALUE_LEN: usize = 32 * 1024;
/// Most exposed ports.
pub const MAX_PORTS: usize = 64;
/// Most restarts a spec may ask for under the on-failure policy.
pub const MAX_RESTARTS: u32 = 1000;
/// Most attempts after transient errors a spec may ask for.
pub const MAX_ATTEMPTS: u32 = 100;
/// Most labels.
pub const MAX_LABELS: usize = 64;
/// Longest label key.
pub const MAX_LABEL_KEY_LEN: usize = 128;
/// Longest label value.
pub const MAX_LABEL_VALUE_LEN: usize = 1024;

/// A request field that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Path of the field, e.g. `spec.memory_mb` or `spec.env["A"]`.
    pub field: String,
    /// What is wrong and what is accepted.
    pub message: String,
}

pub(crate) fn err(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks a DNS-label-like name: 1-63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn validate_name(field: &str, name: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(err(field, "is required"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(err(
            field,
            format!(
                "is {} characters long; at most {MAX_NAME_LEN} allowed",
                name.len()
            ),
        ));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !name.chars().all(ok_char) || !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return Err(err(
            field,
            format!(
                "{name:?} is not a DNS label: use lower-case letters, digits and '-', starting and ending with a letter or digit"
            ),
        ));
    }
    Ok(())
}

fn validate_image(image: &str) -> Result<(), ValidationError> {
    if image.is_empty() {
        return Err(err("spec.image", "is required (e.g. \"busybox:latest\")"));
    }
    if image.len() > MAX_IMAGE_LEN {
        return Err(err(
            "spec.image",
            format!(
                "is {} bytes long; at most {MAX_IMAGE_LEN} allowed",
                image.len()
            ),
        ));
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err(
            "spec.image",
            format!("{image:?} must not contain whitespace"),
        ));
    }
    Ok(())
}

fn validate_command(command: &[String]) -> Result<(), ValidationError> {
    if command.len() > MAX_COMMAND_ARGS {
        return Err(err(
            "spec.command",
            format!(
                "has {} arguments; at most {MAX_COMMAND_ARGS} allowed",
                command.len()
            ),
        ));
    }
    let total: usize = command.iter().map(String::len).sum();
    if total > MAX_COMMAND_BYTES {
        return Err(err(
            "spec.command",
            format!("is {total} bytes long; at most {MAX_COMMAND_BYTES} allowed"),
        ));
    }
    if command.iter().any(|a| a.contains('\0')) {
        return Err(err("spec.command", "arguments must not contain NUL bytes"));
    }
    Ok(())
}

fn validate_env<'a>(
    env: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), ValidationError> {
    if env.len() > MAX_ENV_VARS {
        return Err(err(
            "spec.env",
            format!(
                "has {} variables; at most {MAX_ENV_VARS} allowed",
                env.len()
            ),
        ));
    }
    for (k, v) in env {
        let field = format!("spec.env[{k:?}]");
        if k.is_empty() {
            return Err(err("spec.env", "variable names must not be empty"));
        }
        if k.len() > MAX_ENV_KEY_LEN {
            return Err(err(
                field,
                format!("name is longer than {MAX_ENV_KEY_LEN} bytes"),
            ));
        }
        if k.contains('=') || k.contains('\0') {
            return Err(err(field, "name must not contain '=' or NUL"));
        }
        if v.len() > MAX_ENV_VALUE_LEN {
            return Err(err(
                field,
                format!(
                    "value is {} bytes; at most {MAX_ENV_VALUE_LEN} allowed",
                    v.len()
                ),
            ));
        }
        if v.contains('\0') {
            return Err(err(field, "value must not contain NUL"));
        }
    }
    Ok(())
}

fn validate_ports(ports: &[PortSpec]) -> Result<(), ValidationError> {
    if ports.len() > MAX_PORTS {
        return Err(err(
            "spec.ports",
            format!("has {} ports; at most {MAX_PORTS} allowed", ports.len()),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}].container_port");
        if p.container_port == 0 || p.container_port > 65535 {
            return Err(err(
                field,
                format!("{} is not a port: use 1-65535", p.container_port),
            ));
        }
        let proto = Protocol::try_from(p.protocol).map_err(|_| {
            err(
                format!("spec.ports[{i}].protocol"),
                "unknown protocol: use TCP or UDP",
            )
        })?;
        let proto = if proto == Protocol::Unspecified {
            Protocol::Tcp
        } else {
            proto
        };
        if !seen.insert((p.container_port, proto)) {
            return Err(err(
                field,
                format!("port {} is listed twice", p.container_port),
            ));
        }
    }
    Ok(())
}

fn validate_labels<'a>(
    labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), ValidationError> {
    if labels.len() > MAX_LABELS {
        return Err(err(
            "spec.labels",
            format!("has {} labels; at most {MAX_LABELS} allowed", labels.len()),
        ));
    }
    for (k, v) in labels {
        let field = format!("spec.labels[{k:?}]");
        if k.is_empty() {
            return Err(err("spec.labels", "label keys must not be empty"));
        }
        if k.len() > MAX_LABEL_KEY_LEN || v.len() > MAX_LABEL_VALUE_LEN {
            return Err(err(
                field,
                format!(
                    "key at most {MAX_LABEL_KEY_LEN} and value at most {MAX_LABEL_VALUE_LEN} bytes"
                ),
            ));
        }
        if k.starts_with(RESERVED_PREFIX) {
            return Err(err(
                field,
                format!("keys starting with {RESERVED_PREFIX:?} are reserved"),
            ));
        }
    }
    Ok(())
}

/// Checks a task spec against every rule; the first broken rule is returned.
pub fn validate_spec(spec: &TaskSpec) -> Result<(), ValidationError> {
    validate_name("spec.name", &spec.name)?;
    validate_image(&spec.image)?;
    validate_command(&spec.command)?;
    if spec.memory_mb < MIN_MEMORY_MB {
        return Err(err(
            "spec.memory_mb",
            format!(
                "{} MB is below the minimum of {MIN_MEMORY_MB} MB",
                spec.memory_mb
            ),
        ));
    }
    if spec.memory_mb > MAX_MEMORY_MB {
        return Err(err(
            "spec.memory_mb",
            format!(
                "{} MB is above the maximum of {MAX_MEMORY_MB} MB",
                spec.memory_mb
            ),
        ));
    }
    if !spec.cpu.is_finite() || spec.cpu < 0.0 || spec.cpu > MAX_CPU {
        return Err(err(
            "spec.cpu",
            format!(
                "{} is not a CPU limit: use 0 (no limit) up to {MAX_CPU} cores",
                spec.cpu
            ),
        ));
    }
    validate_env(spec.env.iter())?;
    validate_ports(&spec.ports)?;
    if minkube::pb::PullPolicy::try_from(spec.pull_policy).is_err() {
        return Err(err(
            "spec.pull_policy",
            "unknown pull policy: use IF_NOT_PRESENT, ALWAYS or NEVER",
        ));
    }
    validate_labels(spec.labels.iter())?;
    if minkube::pb::RestartPolicy::try_from(spec.restart_policy).is_err() {
        return Err(err(
            "spec.restart_policy",
            "unknown restart policy: use NEVER, ON_FAILURE or ALWAYS",
        ));
    }
    if spec.max_restarts > MAX_RESTARTS {
        return Err(err(
            "spec.max_restarts",
            format!(
                "{} is above the maximum of {MAX_RESTARTS}",
                spec.max_restarts
            ),
        ));
    }
    if spec.max_attempts > MAX_ATTEMPTS {
        return Err(err(
            "spec.max_attempts",
            format!(
                "{} is above the maximum of {MAX_ATTEMPTS}",
                spec.max_attempts
            ),
        ));
    }
    crate::constraints::parse_all(&spec.constraints)?;
    crate::host_access::validate(spec)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn good() -> TaskSpec {
        TaskSpec {
            name: "web-1".into(),
            image: "busybox:latest".into(),
            memory_mb: 64,
            ..Default::default()
        }
    }

    fn field_of(spec: &TaskSpec) -> String {
        validate_spec(spec)
            .expect_err("spec should be rejected")
            .field
    }

    #[test]
    fn a_good_spec_passes() {
        assert_eq!(validate_spec(&good()), Ok(()));
    }

    #[test]
    fn names_must_be_dns_labels() {
        for bad in ["", "Web", "-a", "a-", "a_b", "a.b", &"x".repeat(64)] {
            let mut s = good();
            s.name = bad.to_string();
            assert_eq!(field_of(&s), "spec.name", "{bad:?}");
        }
        for ok in ["a", "a-1", "0", &"x".repeat(63)] {
            assert!(validate_name("n", ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn image_is_required_and_bounded() {
        let mut s = good();
        s.image.clear();
        assert_eq!(field_of(&s), "spec.image");
        s.image = "a b".into();
        assert_eq!(field_of(&s), "spec.image");
        s.image = "x".repeat(MAX_IMAGE_LEN + 1);
        assert_eq!(field_of(&s), "spec.image");
    }

    #[test]
    fn memory_bounds() {
        let mut s = good();
        s.memory_mb = 4;
        let e = validate_spec(&s).unwrap_err();
        assert_eq!(e.field, "spec.memory_mb");
        assert!(e.message.contains("minimum of 6"), "{e}");
        s.memory_mb = 6;
        assert!(validate_spec(&s).is_ok());
        s.memory_mb = MAX_MEMORY_MB + 1;
        assert_eq!(field_of(&s), "spec.memory_mb");
    }

    #[test]
    fn cpu_bounds() {
        for bad in [-0.5, f64::NAN, f64::INFINITY, MAX_CPU + 1.0] {
            let mut s = good();
            s.cpu = bad;
            assert_eq!(field_of(&s), "spec.cpu", "{bad}");
        }
    }

    #[test]
    fn env_rules() {
        let mut s = good();
        s.env.insert(String::new(), "v".into());
        assert_eq!(field_of(&s), "spec.env");
        let mut s = good();
        s.env.insert("BIG".into(), "x".repeat(2 * 1024 * 1024));
        assert_eq!(field_of(&s), "spec.env[\"BIG\"]");
        let mut s = good();
        s.env.insert("A=B".into(), "v".into());
        assert_eq!(field_of(&s), "spec.env[\"A=B\"]");
        let mut s = good();
        for i in 0..=MAX_ENV_VARS {
            s.env.insert(format!("K{i}"), String::new());
        }
        assert_eq!(field_of(&s), "spec.env");
    }

    #[test]
    fn port_rules() {
        let port = |p| PortSpec {
            container_port: p,
            protocol: 0,
        };
        let mut s = good();
        s.ports = vec![port(70000)];
        assert_eq!(field_of(&s), "spec.ports[0].container_port");
        s.ports = vec![port(80), port(0)];
        assert_eq!(field_of(&s), "spec.ports[1].container_port");
        s.ports = vec![port(80), port(80)];
        assert_eq!(field_of(&s), "spec.ports[1].container_port");
        s.ports = vec![
            port(80),
            PortSpec {
                container_port: 80,
                protocol: Protocol::Udp as i32,
            },
        ];
        assert!(validate_spec(&s).is_ok());
        s.ports = vec![PortSpec {
            container_port: 80,
            protocol: 9,
        }];
        assert_eq!(field_of(&s), "spec.ports[0].protocol");
    }

    #[test]
    fn label_and_command_rules() {
        let mut s = good();
        s.labels.insert("minkube.task-id".into(), "x".into());
        assert_eq!(field_of(&s), "spec.labels[\"minkube.task-id\"]");
        let mut s = good();
        s.command = vec!["x".into(); MAX_COMMAND_ARGS + 1];
        assert_eq!(field_of(&s), "spec.command");
        let mut s = good();
        s.pull_policy = 42;
        assert_eq!(field_of(&s), "spec.pull_policy");
        let mut s = good();
        s.restart_policy = 42;
        assert_eq!(field_of(&s), "spec.restart_policy");
        let mut s = good();
        s.max_restarts = MAX_RESTARTS + 1;
        assert_eq!(field_of(&s), "spec.max_restarts");
        let mut s = good();
        s.max_attempts = MAX_ATTEMPTS + 1;
        assert_eq!(field_of(&s), "spec.max_attempts");
    }
}
