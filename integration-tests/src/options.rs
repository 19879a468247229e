//! How a test's manager and agents are started: extra manager flags (kept
//! for restarts), and per-agent manager address, flags and environment.
use std::path::Path;

use crate::cluster::Cluster;

/// Builds a [`Cluster`] with extra manager flags.
#[derive(Debug, Default, Clone)]
pub struct ClusterBuilder {
    manager_flags: Vec<String>,
    manager_env: Vec<(String, String)>,
    agents: Vec<String>,
    agent_options: AgentOptions,
    secure: bool,
}

impl ClusterBuilder {
    /// Adds `--flag value` to the manager's command line (also on restarts),
    /// e.g. `.manager_flag("--node-timeout", "2s")`.
    pub fn manager_flag(mut self, flag: &str, value: &str) -> Self {
        self.manager_flags.push(flag.to_string());
        self.manager_flags.push(value.to_string());
        self
    }

    /// A secured cluster: `minkube-manager init` first, then the manager
    /// serves TLS with authentication, agents join with the join token, and
    /// the cluster's client and CLI use the CA and the admin token.
    pub fn secure(mut self) -> Self {
        self.secure = true;
        self
    }

    /// Sets an environment variable of the manager (also on restarts).
    pub fn manager_env(mut self, key: &str, value: &str) -> Self {
        self.manager_env.push((key.to_string(), value.to_string()));
        self
    }

    /// Sets an environment variable of every agent the builder starts.
    pub fn agent_env(mut self, key: &str, value: &str) -> Self {
        self.agent_options = self.agent_options.env(key, value);
        self
    }

    /// Adds a flag without a value (e.g. `--allow-privileged`) to the manager.
    pub fn manager_switch(mut self, flag: &str) -> Self {
        self.manager_flags.push(flag.to_string());
        self
    }

    /// Agents started with default options once the manager listens; the
    /// cluster waits until all of them are READY.
    pub fn agents(mut self, names: &[&str]) -> Self {
        self.agents.extend(names.iter().map(|s| s.to_string()));
        self
    }

    /// Builds the image, starts the manager and the agents.
    pub async fn start(self) -> Cluster {
        let names: Vec<&str> = self.agents.iter().map(String::as_str).collect();
        Cluster::launch(
            self.manager_flags.clone(),
            self.manager_env.clone(),
            &names,
            self.agent_options.clone(),
            self.secure,
        )
        .await
    }
}

/// How one agent is started. The default dials the cluster's manager
/// directly and uses the local Docker socket.
#[derive(Debug, Default, Clone)]
pub struct AgentOptions {
    manager: Option<String>,
    env: Vec<(String, String)>,
    flags: Vec<String>,
}

impl AgentOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Dials `addr` (e.g. a [`crate::proxy::TcpProxy`]) instead of the manager.
    pub fn manager(mut self, addr: &str) -> Self {
        self.manager = Some(addr.to_string());
        self
    }

    /// Sets an environment variable of the agent, e.g. `DOCKER_HOST`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds `--flag value` to the agent's command line.
    pub fn flag(mut self, flag: &str, value: &str) -> Self {
        self.flags.push(flag.to_string());
        self.flags.push(value.to_string());
        self
    }

    /// The agent's environment additions.
    pub(crate) fn env_vars(&self) -> &[(String, String)] {
        &self.env
    }

    /// The agent's command line. The resync interval is an hour so that
    /// every update the tests see comes from Docker's event stream, not
    /// from a periodic re-list; busybox as PID 1 ignores SIGTERM, so stops
    /// are kept short. Flags set with [`AgentOptions::flag`] replace these
    /// defaults (clap refuses a flag given twice).
    /// `security` holds the secured cluster's `(--ca-cert, --join-token)`;
    /// without it the agent gets `--insecure`.
    pub(crate) fn args(
        &self,
        name: &str,
        manager: &str,
        data_dir: &Path,
        security: Option<(&str, &str)>,
    ) -> Vec<String> {
        let data_dir = data_dir.display().to_string();
        let mut defaults = vec![
            ("--manager", self.manager.as_deref().unwrap_or(manager)),
            ("--name", name),
            ("--data-dir", data_dir.as_str()),
            ("--resync-interval", "1h"),
            ("--stop-timeout", "2s"),
            // Tests run in parallel: any free port for the admin endpoint.
            ("--admin-port", "0"),
        ];
        if let Some((ca, join)) = security {
            defaults.extend([("--ca-cert", ca), ("--join-token", join)]);
        }
        let overridden = |flag: &str| self.flags.iter().step_by(2).any(|f| f == flag);
        let mut args: Vec<String> = defaults
            .iter()
            .filter(|(flag, _)| !overridden(flag))
            .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
            .collect();
        if security.is_none() {
            args.push("--insecure".into());
        }
        args.extend(self.flags.iter().cloned());
        args
    }
}

/// The manager's command line: loopback, `port`, `data_dir`, plaintext
/// unless `secure`, then `extra`.
pub(crate) fn manager_args(
    port: u16,
    data_dir: &Path,
    secure: bool,
    extra: &[String],
) -> Vec<String> {
    let mut args = vec![
        "--host".to_string(),
        "127.0.0.1".to_string(),
        "--port".to_string(),
        port.to_string(),
        "--data-dir".to_string(),
        data_dir.display().to_string(),
    ];
    if !secure {
        args.push("--insecure".to_string());
    }
    // Tests run in parallel: the admin endpoint takes any free port too.
    if !extra.iter().any(|a| a == "--admin-port") {
        args.extend(["--admin-port".to_string(), "0".to_string()]);
    }
    args.extend(extra.iter().cloned());
    args
}
