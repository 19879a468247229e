//! Hollow agents: the real agent code (session, stream, batching, local
//! records, heartbeats) with the simulated runtime, many per process, each
//! with its own gRPC connection and stream to the manager.
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use minkube::pb;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::manager;

/// Agents started at once before pausing, so the manager's accept queue
/// is not flooded by thousands of simultaneous handshakes.
const WAVE: usize = 250;

/// A set of hollow agents in this process.
pub struct Fleet {
    stop: watch::Sender<bool>,
    agents: JoinSet<Result<(), minkube_agent::AgentError>>,
    _dirs: tempfile::TempDir,
    /// Time until every agent was READY.
    pub connect_time: Duration,
}

/// Where the agents' data dirs go: tmpfs when there is one. The bench
/// measures the control plane; the agent host's disk is not under test.
fn scratch_root() -> &'static Path {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        Path::new("/tmp")
    }
}

impl Fleet {
    /// Starts `n` agents named `PREFIX-N` against `manager_addr` and waits
    /// until all are READY. Simulated tasks exit `exit_after` their start
    /// ("never" if `None`).
    pub async fn start(
        n: usize,
        manager_addr: &str,
        prefix: &str,
        exit_after: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let dirs = tempfile::Builder::new()
            .prefix("minkube-bench-agents.")
            .tempdir_in(scratch_root())
            .context("cannot make the agents' data dirs")?;
        let (stop, stop_rx) = watch::channel(false);
        let mut agents = JoinSet::new();
        let exit_after =
            exit_after.map_or_else(|| "never".to_string(), |d| format!("{}ms", d.as_millis()));
        let started = Instant::now();
        let mut control = manager::client(manager_addr).await?;
        for i in 0..n {
            let name = format!("{prefix}-{i}");
            let data_dir = dirs.path().join(&name);
            let args = minkube_agent::Args::try_parse_from([
                "minkube-agent",
                "--insecure",
                "--manager",
                manager_addr,
                "--name",
                &name,
                "--data-dir",
                data_dir.to_str().context("data dir is not UTF-8")?,
                "--runtime",
                "simulated",
                "--simulated-exit-after",
                &exit_after,
                "--stop-timeout",
                "1s",
            ])
            .context("hollow agent flags")?;
            let mut rx = stop_rx.clone();
            agents.spawn(minkube_agent::run(args, None, async move {
                let _ = rx.wait_for(|s| *s).await;
            }));
            if (i + 1) % WAVE == 0 {
                wait_ready(&mut control, i + 1, Duration::from_secs(60)).await?;
            }
        }
        wait_ready(&mut control, n, Duration::from_secs(120)).await?;
        Ok(Self {
            stop,
            agents,
            _dirs: dirs,
            connect_time: started.elapsed(),
        })
    }

    /// Stops every agent and waits for them (at most 30 s).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while self.agents.join_next().await.is_some() {}
        })
        .await;
        self.agents.abort_all();
    }
}

/// Number of READY nodes.
pub async fn ready_nodes(control: &mut minkube::client::ControlClient) -> anyhow::Result<usize> {
    let mut ready = 0;
    let mut token = String::new();
    loop {
        let page = control
            .list_nodes(pb::ListNodesRequest {
                page_size: 1000,
                page_token: token,
            })
            .await?
            .into_inner();
        ready += page
            .nodes
            .iter()
            .filter(|n| n.state == pb::NodeState::Ready as i32)
            .count();
        if !page.has_next {
            return Ok(ready);
        }
        token = page.next_page_token;
    }
}

/// Waits until at least `n` nodes are READY.
pub async fn wait_ready(
    control: &mut minkube::client::ControlClient,
    n: usize,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let ready = ready_nodes(control).await?;
        if ready >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {n} agents became READY within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
