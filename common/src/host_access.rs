//! What a task may ask of its host beyond an ordinary container:
//! privileged mode, the host's network, host directories. Each is off
//! unless the manager allows it, and then only for admins; here the shape
//! of the request is checked, and the kinds it asks for are named.
use std::path::{Component, Path};

use minkube::pb::TaskSpec;

use crate::validate::{err, ValidationError};

/// Most host mounts per task.
pub const MAX_HOST_MOUNTS: usize = 16;
/// Longest mount path.
pub const MAX_MOUNT_PATH_LEN: usize = 1024;

/// A kind of host access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAccess {
    /// `privileged`.
    Privileged,
    /// `host_network`.
    HostNetwork,
    /// `host_mounts`.
    HostMounts,
}

impl HostAccess {
    /// The spec field, for messages.
    pub fn field(self) -> &'static str {
        match self {
            HostAccess::Privileged => "spec.privileged",
            HostAccess::HostNetwork => "spec.host_network",
            HostAccess::HostMounts => "spec.host_mounts",
        }
    }

    /// The manager flag that allows it.
    pub fn flag(self) -> &'static str {
        match self {
            HostAccess::Privileged => "--allow-privileged",
            HostAccess::HostNetwork => "--allow-host-network",
            HostAccess::HostMounts => "--allow-host-mounts",
        }
    }
}

/// The kinds of host access a spec asks for.
pub fn requested(spec: &TaskSpec) -> Vec<HostAccess> {
    let mut v = Vec::new();
    if spec.privileged {
        v.push(HostAccess::Privileged);
    }
    if spec.host_network {
        v.push(HostAccess::HostNetwork);
    }
    if !spec.host_mounts.is_empty() {
        v.push(HostAccess::HostMounts);
    }
    v
}

fn check_path(field: &str, p: &str) -> Result<(), ValidationError> {
    if p.len() > MAX_MOUNT_PATH_LEN {
        return Err(err(
            field,
            format!("is longer than {MAX_MOUNT_PATH_LEN} bytes"),
        ));
    }
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(err(field, format!("{p:?} is not an absolute path")));
    }
    if path.components().any(|c| c == Component::ParentDir) || p.contains(':') || p.contains('\0') {
        return Err(err(
            field,
            format!("{p:?} may not contain '..', ':' or NUL"),
        ));
    }
    Ok(())
}

/// Checks the shape of the host-access fields (not whether they are allowed).
pub fn validate(spec: &TaskSpec) -> Result<(), ValidationError> {
    if spec.host_network && !spec.ports.is_empty() {
        return Err(err(
            "spec.ports",
            "cannot be used with host_network: the container listens on the host's ports directly",
        ));
    }
    if spec.host_mounts.len() > MAX_HOST_MOUNTS {
        return Err(err(
            "spec.host_mounts",
            format!(
                "has {} mounts; at most {MAX_HOST_MOUNTS} allowed",
                spec.host_mounts.len()
            ),
        ));
    }
    for (i, m) in spec.host_mounts.iter().enumerate() {
        check_path(&format!("spec.host_mounts[{i}].host_path"), &m.host_path)?;
        check_path(
            &format!("spec.host_mounts[{i}].container_path"),
            &m.container_path,
        )?;
        if m.container_path == "/" {
            return Err(err(
                format!("spec.host_mounts[{i}].container_path"),
                "cannot be / (the container's root)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use minkube::pb::{HostMount, PortSpec};

    fn mount(host: &str, ctr: &str) -> HostMount {
        HostMount {
            host_path: host.into(),
            container_path: ctr.into(),
            read_only: true,
        }
    }

    #[test]
    fn requests_are_named_and_shapes_checked() {
        let mut s = TaskSpec::default();
        assert!(requested(&s).is_empty() && validate(&s).is_ok());
        s.privileged = true;
        s.host_mounts = vec![mount("/srv/data", "/data")];
        assert_eq!(
            requested(&s),
            [HostAccess::Privileged, HostAccess::HostMounts]
        );
        assert!(validate(&s).is_ok());
        for (host, ctr, field) in [
            ("srv", "/data", "host_path"),
            ("/srv/../etc", "/data", "host_path"),
            ("/srv", "/a:b", "container_path"),
            ("/srv", "/", "container_path"),
        ] {
            s.host_mounts = vec![mount(host, ctr)];
            let e = validate(&s).unwrap_err();
            assert!(e.field.ends_with(field), "{host} {ctr}: {e}");
        }
        s.host_mounts.clear();
        s.host_network = true;
        s.ports = vec![PortSpec {
            container_port: 80,
            protocol: 0,
        }];
        assert_eq!(validate(&s).unwrap_err().field, "spec.ports");
    }
}
