//! One test's cluster: a manager on a free loopback port, named agents, a
//! temp dir for their data and logs, and the run's image. Dropping it kills
//! exactly the processes it started and removes the run's containers and image.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use minkube::client::TracedControlClient;
use tempfile::TempDir;

use crate::binaries::{binary, AGENT, MANAGER};
use crate::image::TestImage;
use crate::options::{manager_args, AgentOptions, ClusterBuilder};
use crate::process::ManagedProcess;
use crate::startup::{forward_lines, wait_listening};

/// One agent process and its name.
pub(crate) struct AgentProcess {
    pub(crate) name: String,
    pub(crate) process: ManagedProcess,
}

/// The processes of a cluster, behind a lock so waits can check they are alive.
#[derive(Default)]
pub(crate) struct Processes {
    pub(crate) manager: Option<ManagedProcess>,
    pub(crate) agents: Vec<AgentProcess>,
}

/// What `minkube-manager init` printed for a secured cluster.
#[derive(Debug, Clone)]
pub struct Security {
    /// The cluster CA certificate.
    pub ca_path: PathBuf,
    /// Secret of the `admin` token.
    pub admin_token: String,
    /// The join token.
    pub join_token: String,
}

/// The indented line after the line starting with `label` in `init`'s output.
fn value_after(text: &str, label: &str) -> String {
    let mut lines = text.lines();
    lines
        .by_ref()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} in init's output: {text}"));
    lines
        .next()
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| panic!("nothing after {label:?} in init's output: {text}"))
}

/// A manager, its agents and the run's image.
pub struct Cluster {
    pub(crate) run_id: String,
    port: u16,
    /// The manager's HTTP admin address, as it printed it.
    admin_addr: Option<String>,
    manager_flags: Vec<String>,
    manager_env: Vec<(String, String)>,
    /// Options of every agent ever added, reused when it is restarted.
    pub(crate) agent_options: HashMap<String, AgentOptions>,
    pub(crate) processes: Mutex<Processes>,
    pub(crate) client: Mutex<Option<TracedControlClient>>,
    /// Set for a secured cluster.
    pub(crate) security: Option<Security>,
    // Dropped after the processes are killed (see Drop): removes the run's
    // containers, then the image.
    pub(crate) image: TestImage,
    dir: TempDir,
}

impl Cluster {
    /// Builds the image, starts a manager with default flags and one agent
    /// per name, and waits until every agent's node is READY.
    pub async fn start(agent_names: &[&str]) -> Self {
        Self::builder().agents(agent_names).start().await
    }

    /// A cluster with extra manager flags; see [`ClusterBuilder`].
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Builds the image, starts the manager with `manager_flags` and the
    /// named agents, and waits until they are READY.
    pub(crate) async fn launch(
        manager_flags: Vec<String>,
        manager_env: Vec<(String, String)>,
        agent_names: &[&str],
        agent_options: AgentOptions,
        secure: bool,
    ) -> Self {
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let image = tokio::task::block_in_place(|| TestImage::build(&run_id));
        let dir = tempfile::Builder::new()
            .prefix(&format!("minkube-it-{run_id}-"))
            .tempdir()
            .expect("temp dir for the cluster");
        let mut cluster = Self {
            run_id,
            port: 0,
            admin_addr: None,
            manager_flags,
            manager_env,
            agent_options: HashMap::new(),
            processes: Mutex::default(),
            client: Mutex::new(None),
            security: None,
            image,
            dir,
        };
        if secure {
            cluster.security = Some(cluster.init());
        }
        cluster.start_manager(0);
        for name in agent_names {
            cluster.add_agent_with(name, agent_options.clone());
        }
        cluster.wait_nodes_ready(agent_names.len()).await;
        cluster
    }

    /// The run id: unique to this test, carried by its image and tasks.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The manager's address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The image tasks run.
    pub fn image(&self) -> &str {
        self.image.tag()
    }

    /// The cluster's temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The manager's data dir.
    pub fn manager_data_dir(&self) -> PathBuf {
        self.dir.path().join("manager")
    }

    /// Runs `minkube-manager init` on the manager's data dir.
    fn init(&self) -> Security {
        let out = std::process::Command::new(binary(MANAGER))
            .arg("init")
            .arg("--data-dir")
            .arg(self.manager_data_dir())
            .output()
            .expect("minkube-manager init runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "minkube-manager init failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Security {
            ca_path: self.manager_data_dir().join("pki/ca.pem"),
            admin_token: value_after(&text, "admin token"),
            join_token: value_after(&text, "join token"),
        }
    }

    /// The secured cluster's CA and tokens (panics on a plaintext cluster).
    pub fn security(&self) -> &Security {
        self.security
            .as_ref()
            .expect("the cluster is not secured: build it with .secure()")
    }

    /// Starts the manager on `port` (0: any free port) and records the port
    /// it reports.
    fn start_manager(&mut self, port: u16) {
        let args = manager_args(
            port,
            &self.manager_data_dir(),
            self.security.is_some(),
            &self.manager_flags,
        );
        let log = self.dir.path().join("manager.log");
        let (mut process, stdout) = ManagedProcess::spawn(
            "manager",
            &binary(MANAGER),
            &args,
            &self.manager_env,
            &log,
            true,
        );
        let stdout = stdout.expect("manager stdout is piped");
        let lines = forward_lines(stdout, self.dir.path().join("manager.stdout.log"));
        let addrs = tokio::task::block_in_place(|| wait_listening(&lines, &mut process));
        self.admin_addr = addrs.admin.clone();
        let addr = addrs.grpc;
        let reported: u16 = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("cannot read a port in the manager's line {addr:?}"));
        assert!(
            port == 0 || reported == port,
            "manager restarted on port {port} but reports {reported}"
        );
        self.port = reported;
        self.processes.get_mut().unwrap().manager = Some(process);
        *self.client.lock().unwrap() = None;
    }

    /// The manager's HTTP admin address (`/metrics`, `/healthz`, `/readyz`).
    pub fn admin_addr(&self) -> String {
        self.admin_addr
            .clone()
            .expect("the manager printed no `minkube-manager admin on ADDR` line")
    }

    /// SIGKILLs the manager (only its own pid).
    pub fn kill_manager(&mut self) {
        if let Some(mut m) = self.processes.get_mut().unwrap().manager.take() {
            m.kill();
        }
        *self.client.lock().unwrap() = None;
    }

    /// Starts the manager again on the same data dir, port and flags.
    pub fn restart_manager(&mut self) {
        self.kill_manager();
        let port = self.port;
        self.start_manager(port);
    }

    /// Starts an agent named `name` with its own data dir, with the options
    /// it was last added with (default options the first time).
    pub fn add_agent(&mut self, name: &str) {
        let options = self.agent_options.get(name).cloned().unwrap_or_default();
        self.add_agent_with(name, options);
    }

    /// Starts an agent named `name` with its own data dir and `options`
    /// (kept for [`Cluster::restart_agent`]).
    pub fn add_agent_with(&mut self, name: &str, options: AgentOptions) {
        let data = self.dir.path().join(format!("agent-{name}"));
        let ca = self
            .security
            .as_ref()
            .map(|s| s.ca_path.display().to_string());
        let security = self
            .security
            .as_ref()
            .zip(ca.as_deref())
            .map(|(s, ca)| (ca, s.join_token.as_str()));
        let args = options.args(name, &self.addr(), &data, security);
        let log = self.dir.path().join(format!("agent-{name}.log"));
        let (process, _) = ManagedProcess::spawn(
            &format!("agent {name}"),
            &binary(AGENT),
            &args,
            options.env_vars(),
            &log,
            false,
        );
        self.agent_options.insert(name.to_string(), options);
        self.processes.get_mut().unwrap().agents.push(AgentProcess {
            name: name.to_string(),
            process,
        });
    }

    /// Waits until the agent named `name` exits on its own; its status.
    pub async fn wait_agent_exit(
        &self,
        name: &str,
        timeout: std::time::Duration,
    ) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let mut procs = self.processes.lock().unwrap();
                let agent = procs
                    .agents
                    .iter_mut()
                    .rev()
                    .find(|a| a.name == name)
                    .unwrap_or_else(|| panic!("no agent named {name}"));
                if let Some(status) = agent.process.exit_status() {
                    return status;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "agent {name} still runs after {timeout:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The manager's log so far.
    pub fn manager_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("manager.log")).unwrap_or_default()
    }

    /// The log of the agent named `name` so far.
    pub fn agent_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("agent-{name}.log")))
            .unwrap_or_default()
    }

    /// The pid of the running manager.
    pub fn manager_pid(&self) -> u32 {
        let procs = self.processes.lock().unwrap();
        procs
            .manager
            .as_ref()
            .and_then(ManagedProcess::pid)
            .expect("the manager is not running")
    }

    /// The pid of the running agent named `name`.
    pub fn agent_pid(&self, name: &str) -> u32 {
        let procs = self.processes.lock().unwrap();
        procs
            .agents
            .iter()
            .find(|a| a.name == name)
            .and_then(|a| a.process.pid())
            .unwrap_or_else(|| panic!("no running agent named {name}"))
    }

    /// The HTTP admin address the running agent named `name` printed
    /// (`minkube-agent admin on ADDR`, written to its log); waits up to 10 s.
    pub fn agent_admin_addr(&self, name: &str) -> String {
        const PREFIX: &str = "minkube-agent admin on ";
        let log = self.dir.path().join(format!("agent-{name}.log"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // The last line wins: a restarted agent appends to the same log.
            if let Some(addr) = text
                .lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix(PREFIX))
            {
                return addr.trim().to_string();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "agent {name} printed no `{PREFIX}ADDR` line; log:\n{text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// SIGKILLs the agent named `name` (only its own pid); its data dir stays.
    pub fn kill_agent(&mut self, name: &str) {
        let agents = &mut self.processes.get_mut().unwrap().agents;
        let before = agents.len();
        agents.retain_mut(|a| {
            if a.name == name {
                a.process.kill();
                false
            } else {
                true
            }
        });
        assert!(agents.len() < before, "no agent named {name} to kill");
    }

    /// SIGTERMs the agent named `name` and waits (bounded) for it to exit;
    /// returns how it exited. Its data dir stays.
    pub fn terminate_agent(&mut self, name: &str) -> std::process::ExitStatus {
        let agents = &mut self.processes.get_mut().unwrap().agents;
        let i = agents
            .iter()
            .position(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent named {name} to terminate"));
        let mut agent = agents.remove(i);
        agent
            .process
            .terminate(std::time::Duration::from_secs(20))
            .unwrap_or_else(|| panic!("agent {name} did not exit within 20s of SIGTERM"))
    }

    /// SIGTERMs the manager and waits (bounded) for it to exit.
    pub fn terminate_manager(&mut self) -> std::process::ExitStatus {
        let mut m = self
            .processes
            .get_mut()
            .unwrap()
            .manager
            .take()
            .expect("no manager to terminate");
        *self.client.lock().unwrap() = None;
        m.terminate(std::time::Duration::from_secs(20))
            .expect("manager did not exit within 20s of SIGTERM")
    }

    /// Starts the manager again after [`Cluster::terminate_manager`].
    pub fn start_manager_again(&mut self) {
        let port = self.port;
        self.start_manager(port);
    }

    /// Kills the agent named `name` and starts it again on the same data dir
    /// with the same options.
    pub fn restart_agent(&mut self, name: &str) {
        self.kill_agent(name);
        self.add_agent(name);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs_report());
        }
        // Agents first, so nothing recreates a container while the run's
        // containers are removed (by the image guard, dropped after this).
        let procs = self
            .processes
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for agent in &mut procs.agents {
            agent.process.kill();
        }
        if let Some(manager) = procs.manager.as_mut() {
            manager.kill();
        }
    }
}
