//! Who may call what. Agents authenticate with a node certificate (mutual
//! TLS), clients with a bearer token whose role decides what they may do;
//! health and reflection are open (they reveal no data), and `Join` checks
//! its join token itself. On a manager started with `--insecure` everyone
//! is an anonymous admin.
pub mod layer;
pub mod tokens;

use minkube::pb::Role;

/// The caller of one request, as authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Plaintext manager (`--insecure`): no authentication at all.
    Anonymous,
    /// A bearer token.
    Token {
        /// Token name.
        name: String,
        /// Its role.
        role: Role,
    },
    /// An agent's certificate.
    Node {
        /// Node name (the certificate's CN).
        name: String,
    },
    /// No credentials (allowed on open methods only).
    Unauthenticated,
}

impl Identity {
    /// How the audit log and WhoAmI name the caller.
    pub fn label(&self) -> String {
        match self {
            Identity::Anonymous => "anonymous".into(),
            Identity::Token { name, .. } => format!("token/{name}"),
            Identity::Node { name } => format!("node/{name}"),
            Identity::Unauthenticated => "unauthenticated".into(),
        }
    }

    /// The role calls are authorised with (nodes have none: they may only
    /// use the agent API).
    pub fn role(&self) -> Role {
        match self {
            Identity::Anonymous => Role::Admin,
            Identity::Token { role, .. } => *role,
            Identity::Node { .. } | Identity::Unauthenticated => Role::Unspecified,
        }
    }
}

/// What a method requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, reflection, Join).
    Open,
    /// A node certificate.
    Node,
    /// A token with at least this role.
    Role(Role),
}

/// The access rule of a method path, and whether the call changes state
/// (mutating calls are always audited).
pub fn access_for(path: &str) -> (Access, bool) {
    match path {
        "/minkube.v1.ControlService/CreateTask" | "/minkube.v1.ControlService/StopTask" => {
            (Access::Role(Role::Operator), true)
        }
        "/minkube.v1.ControlService/GetTask"
        | "/minkube.v1.ControlService/ListTasks"
        | "/minkube.v1.ControlService/ListNodes"
        | "/minkube.v1.ControlService/GetNode"
        | "/minkube.v1.ControlService/WatchTasks"
        | "/minkube.v1.ControlService/TaskLogs"
        | "/minkube.v1.AccessService/WhoAmI" => (Access::Role(Role::Viewer), false),
        "/minkube.v1.AccessService/ListTokens" => (Access::Role(Role::Admin), false),
        "/minkube.v1.AccessService/CreateToken"
        | "/minkube.v1.ControlService/UpdateNode"
        | "/minkube.v1.ControlService/RemoveNode"
        | "/minkube.v1.AccessService/RevokeToken"
        | "/minkube.v1.AccessService/RotateJoinToken" => (Access::Role(Role::Admin), true),
        "/minkube.v1.AgentService/Join" => (Access::Open, true),
        "/minkube.v1.AgentService/Register" | "/minkube.v1.AgentService/RenewCertificate" => {
            (Access::Node, true)
        }
        "/minkube.v1.AgentService/Connect" => (Access::Node, false),
        p if p.starts_with("/grpc.health.v1.Health/")
            || p.starts_with("/grpc.reflection.v1.ServerReflection/")
            || p.starts_with("/grpc.reflection.v1alpha.ServerReflection/") =>
        {
            (Access::Open, false)
        }
        // Unknown methods: any token may learn they do not exist.
        _ => (Access::Role(Role::Viewer), false),
    }
}

/// Whether `identity` may call a method with rule `access`: `Ok`, or the
/// status to answer with (UNAUTHENTICATED without valid credentials,
/// PERMISSION_DENIED with insufficient ones).
pub fn authorize(identity: &Identity, access: Access, method: &str) -> Result<(), tonic::Status> {
    let method = method.trim_start_matches('/');
    match (access, identity) {
        (Access::Open, _) | (_, Identity::Anonymous) => Ok(()),
        (Access::Node, Identity::Node { .. }) => Ok(()),
        (Access::Node, Identity::Unauthenticated) => Err(tonic::Status::unauthenticated(format!(
            "{method} needs a node certificate: an agent gets one with --join-token on its first start"
        ))),
        (Access::Node, _) => Err(tonic::Status::permission_denied(format!(
            "{method} is for agents only (they authenticate with a node certificate, not a token)"
        ))),
        (Access::Role(_), Identity::Unauthenticated) => Err(tonic::Status::unauthenticated(format!(
            "{method} needs a bearer token: pass --token or MINKUBE_TOKEN (tokens come from `minkube-manager init` or `minkube token create`)"
        ))),
        (Access::Role(_), Identity::Node { name }) => Err(tonic::Status::permission_denied(format!(
            "node {name}'s certificate may only call the agent API"
        ))),
        (Access::Role(need), id) if (id.role() as i32) >= (need as i32) => Ok(()),
        (Access::Role(need), id) => Err(tonic::Status::permission_denied(format!(
            "{} has role {}; {method} needs {}",
            id.label(),
            role_name(id.role()),
            role_name(need)
        ))),
    }
}

/// Whether `caller` may have what `spec` asks of the host: each kind must be
/// allowed on this manager, and the caller must be an admin.
pub fn check_host_access(
    spec: &minkube::pb::TaskSpec,
    caller: &Identity,
    allowed: &[minkube_common::host_access::HostAccess],
) -> Result<(), crate::error::ManagerError> {
    use crate::error::ManagerError;
    for kind in minkube_common::host_access::requested(spec) {
        if !allowed.contains(&kind) {
            return Err(ManagerError::PermissionDenied(format!(
                "{}: not allowed on this cluster (the manager runs without {})",
                kind.field(),
                kind.flag()
            )));
        }
        if caller.role() != Role::Admin {
            return Err(ManagerError::PermissionDenied(format!(
                "{}: only admins may ask for this ({} is {})",
                kind.field(),
                caller.label(),
                role_name(caller.role())
            )));
        }
    }
    Ok(())
}

/// Lower-case role name.
pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
        Role::Admin => "admin",
        Role::Unspecified => "none",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn token(role: Role) -> Identity {
        Identity::Token {
            name: "t".into(),
            role,
        }
    }

    #[test]
    fn roles_nest_and_denials_say_why() {
        let create = "/minkube.v1.ControlService/CreateTask";
        let (access, mutating) = access_for(create);
        assert!(mutating);
        let denied = authorize(&token(Role::Viewer), access, create).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("needs operator"), "{denied:?}");
        assert!(authorize(&token(Role::Operator), access, create).is_ok());
        assert!(authorize(&token(Role::Admin), access, create).is_ok());
        let none = authorize(&Identity::Unauthenticated, access, create).unwrap_err();
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        assert!(authorize(&Identity::Anonymous, access, create).is_ok());
    }

    #[test]
    fn host_access_needs_the_flag_and_an_admin() {
        use minkube_common::host_access::HostAccess;
        let spec = minkube::pb::TaskSpec {
            privileged: true,
            ..Default::default()
        };
        let admin = token(Role::Admin);
        let off = check_host_access(&spec, &admin, &[])
            .unwrap_err()
            .to_string();
        assert!(off.contains("--allow-privileged"), "{off}");
        let on = [HostAccess::Privileged];
        assert!(check_host_access(&spec, &admin, &on).is_ok());
        let op = check_host_access(&spec, &token(Role::Operator), &on)
            .unwrap_err()
            .to_string();
        assert!(op.contains("only admins"), "{op}");
        let plain = minkube::pb::TaskSpec::default();
        assert!(check_host_access(&plain, &token(Role::Operator), &[]).is_ok());
    }

    #[test]
    fn agents_and_clients_keep_to_their_apis() {
        let node = Identity::Node { name: "a".into() };
        let (connect, _) = access_for("/minkube.v1.AgentService/Connect");
        assert!(authorize(&node, connect, "Connect").is_ok());
        assert_eq!(
            authorize(&token(Role::Admin), connect, "Connect")
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            authorize(&Identity::Unauthenticated, connect, "Connect")
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        let (list, _) = access_for("/minkube.v1.ControlService/ListTasks");
        assert_eq!(
            authorize(&node, list, "ListTasks").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let (health, _) = access_for("/grpc.health.v1.Health/Check");
        assert!(authorize(&Identity::Unauthenticated, health, "Check").is_ok());
        let (tokens, _) = access_for("/minkube.v1.AccessService/ListTokens");
        assert!(authorize(&token(Role::Operator), tokens, "ListTokens").is_err());
    }
}
