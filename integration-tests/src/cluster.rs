//! One test's cluster: a manager on a free loopback port, named agents, a
//! temp dir for their data and logs, and the run's image. Dropping it kills
//! exactly the processes it started and removes the run's containers and image.
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use minkube::client::ControlClient;
use tempfile::TempDir;

use crate::binaries::{binary, AGENT, MANAGER};
use crate::image::TestImage;
use crate::process::{tail, ManagedProcess, LOG_TAIL};
use crate::startup::{forward_lines, wait_listening};

/// The processes of a cluster, behind a lock so waits can check they are alive.
#[derive(Default)]
struct Processes {
    manager: Option<ManagedProcess>,
    agents: Vec<(String, ManagedProcess)>,
}

/// A manager, its agents and the run's image.
pub struct Cluster {
    pub(crate) run_id: String,
    port: u16,
    processes: Mutex<Processes>,
    pub(crate) client: Mutex<Option<ControlClient>>,
    // Dropped after the processes are killed (see Drop): removes the run's
    // containers, then the image.
    pub(crate) image: TestImage,
    dir: TempDir,
}

impl Cluster {
    /// Builds the image, starts a manager and one agent per name, and waits
    /// until every agent's node is READY.
    pub async fn start(agent_names: &[&str]) -> Self {
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let image = tokio::task::block_in_place(|| TestImage::build(&run_id));
        let dir = tempfile::Builder::new()
            .prefix(&format!("minkube-it-{run_id}-"))
            .tempdir()
            .expect("temp dir for the cluster");
        let mut cluster = Self {
            run_id,
            port: 0,
            processes: Mutex::default(),
            client: Mutex::new(None),
            image,
            dir,
        };
        cluster.start_manager(0);
        for name in agent_names {
            cluster.add_agent(name);
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

    fn manager_data_dir(&self) -> PathBuf {
        self.dir.path().join("manager")
    }

    /// Starts the manager on `port` (0: any free port) and records the port
    /// it reports.
    fn start_manager(&mut self, port: u16) {
        let args = vec![
            "--host".to_string(),
            "127.0.0.1".to_string(),
            "--port".to_string(),
            port.to_string(),
            "--data-dir".to_string(),
            self.manager_data_dir().display().to_string(),
        ];
        let log = self.dir.path().join("manager.log");
        let (mut process, stdout) =
            ManagedProcess::spawn("manager", &binary(MANAGER), &args, &log, true);
        let stdout = stdout.expect("manager stdout is piped");
        let lines = forward_lines(stdout, self.dir.path().join("manager.stdout.log"));
        let addr = tokio::task::block_in_place(|| wait_listening(&lines, &mut process));
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

    /// SIGKILLs the manager (only its own pid).
    pub fn kill_manager(&mut self) {
        if let Some(mut m) = self.processes.get_mut().unwrap().manager.take() {
            m.kill();
        }
        *self.client.lock().unwrap() = None;
    }

    /// Starts the manager again on the same data dir and port.
    pub fn restart_manager(&mut self) {
        self.kill_manager();
        let port = self.port;
        self.start_manager(port);
    }

    /// Starts an agent named `name` with its own data dir. The resync
    /// interval is an hour so that every update the tests see comes from
    /// Docker's event stream, not from a periodic re-list.
    pub fn add_agent(&mut self, name: &str) {
        let data = self.dir.path().join(format!("agent-{name}"));
        let args: Vec<String> = [
            "--manager",
            &self.addr(),
            "--name",
            name,
            "--data-dir",
            &data.display().to_string(),
            "--resync-interval",
            "1h",
            // busybox as PID 1 ignores SIGTERM: keep stops short.
            "--stop-timeout",
            "2s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = self.dir.path().join(format!("agent-{name}.log"));
        let (process, _) =
            ManagedProcess::spawn(&format!("agent {name}"), &binary(AGENT), &args, &log, false);
        self.processes
            .get_mut()
            .unwrap()
            .agents
            .push((name.to_string(), process));
    }

    /// SIGKILLs the agent named `name` (only its own pid); its data dir stays.
    pub fn kill_agent(&mut self, name: &str) {
        let agents = &mut self.processes.get_mut().unwrap().agents;
        let before = agents.len();
        agents.retain_mut(|(n, p)| {
            if n == name {
                p.kill();
                false
            } else {
                true
            }
        });
        assert!(agents.len() < before, "no agent named {name} to kill");
    }

    /// Kills the agent named `name` and starts it again on the same data dir.
    pub fn restart_agent(&mut self, name: &str) {
        self.kill_agent(name);
        self.add_agent(name);
    }

    /// Panics if a process this cluster started (and did not kill) exited.
    pub fn assert_alive(&self) {
        let mut procs = self.processes.lock().unwrap();
        let Processes { manager, agents } = &mut *procs;
        for p in manager.iter_mut().chain(agents.iter_mut().map(|(_, p)| p)) {
            if let Some(status) = p.exit_status() {
                panic!(
                    "{} exited unexpectedly ({status}); its log:\n{}",
                    p.label(),
                    tail(p.log_path(), LOG_TAIL)
                );
            }
        }
    }

    /// The tail of every log, with the exit status of processes that died.
    pub fn logs_report(&self) -> String {
        let mut report = format!("=== cluster {} (run {}) ===\n", self.addr(), self.run_id);
        let mut section = |label: &str, status: Option<String>, path: &Path| {
            report.push_str(&format!(
                "--- {label} ({}){} ---\n{}\n",
                path.display(),
                status.map(|s| format!(", exited: {s}")).unwrap_or_default(),
                tail(path, LOG_TAIL)
            ));
        };
        // A panic while the lock was held must not hide the logs.
        let mut procs = self
            .processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let manager_status = procs
            .manager
            .as_mut()
            .and_then(ManagedProcess::exit_status)
            .map(|s| s.to_string());
        section(
            "manager",
            manager_status,
            &self.dir.path().join("manager.log"),
        );
        for (_, agent) in &mut procs.agents {
            let status = agent.exit_status().map(|s| s.to_string());
            section(agent.label(), status, agent.log_path());
        }
        report
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
        for (_, agent) in &mut procs.agents {
            agent.kill();
        }
        if let Some(manager) = procs.manager.as_mut() {
            manager.kill();
        }
    }
}
