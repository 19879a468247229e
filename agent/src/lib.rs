//! minkube worker agent: registers with the manager, holds one bidirectional
//! stream to it, and runs the tasks placed on this node as Docker containers.
//! State is pushed both ways: Docker events drive status updates, the
//! manager's messages drive container operations; nothing polls.
//!
//! Pieces: [`session`] (the manager link), [`reconciler`] (the actor that owns
//! the task records), [`runtime`] (Docker), [`local_store`] and [`identity`]
//! (the data dir), [`hoststats`] (capacity and live host statistics),
//! [`config`] (flags).
pub mod config;
pub mod hoststats;
pub mod identity;
pub mod join;
pub mod local_store;
pub mod reconciler;
pub mod renew;
pub mod runtime;
pub mod session;

#[cfg(test)]
mod e2e_tests;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use minkube_common::retry::Backoff;
use minkube_common::validate::validate_name;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn, Instrument};

pub use config::{Args, RuntimeKind};

use local_store::{LocalStore, StoreError};
use minkube_common::admin;
use reconciler::{Reconciler, Settings};
use runtime::docker::DockerRuntime;
use runtime::metered::Metered;
use runtime::simulated::SimulatedRuntime;
use runtime::{Runtime, RuntimeError};
use session::{Links, SessionConfig};

/// Capacity of the channels between the session and the reconciler.
const CHANNEL_CAPACITY: usize = 256;
/// Docker requests may take this long on top of the stop timeout.
const DOCKER_REQUEST_SLACK: Duration = Duration::from_secs(120);

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A flag is wrong.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data dir is unusable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Docker refused to work with the agent.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// An internal part stopped on its own.
    #[error("{0} stopped unexpectedly; see the log above")]
    Crashed(&'static str),
}

/// Completes once `rx` turns true (or its sender is gone). The guard of the
/// watch value is dropped inside, so callers stay `Send`.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Aborts a helper task when the owner returns, whichever way it returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the agent until `shutdown` completes. Containers are left running
/// on shutdown: they are the user's work, and the next start adopts them.
pub async fn run(
    args: Args,
    admin: Option<AdminEndpoint>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let _signal = AbortOnDrop(tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    }));

    let name = args.node_name().ok_or_else(|| {
        AgentError::Config("cannot read the host name: set --name or MINKUBE_NODE_NAME".into())
    })?;
    validate_name("--name", &name).map_err(|e| {
        AgentError::Config(format!(
            "{e}; set --name or MINKUBE_NODE_NAME to a valid node name"
        ))
    })?;
    let store = LocalStore::open(&args.data_dir)?;
    let (tls, renewer) = match join::transport(&args, &name, &mut stop_rx).await? {
        join::Transport::Plaintext => (None, None),
        join::Transport::Tls { config, ca_pem } => {
            let (tx, rx) = watch::channel(*config);
            let renewer = renew::Renewer {
                manager: args.manager.clone(),
                ca_pem,
                data_dir: args.data_dir.clone(),
                tls: tx,
            };
            (Some(rx), Some(renewer))
        }
        join::Transport::Stopped => return Ok(()),
    };
    let _renewer = renewer.map(|r| AbortOnDrop(tokio::spawn(r.run(stop_rx.clone()))));
    let (runtime, disk_path): (Arc<dyn Runtime>, PathBuf) = match args.runtime {
        RuntimeKind::Docker => {
            let Some(docker) = connect_docker(&args, &mut stop_rx).await? else {
                return Ok(());
            };
            // Asked once: the data root does not move while the daemon runs.
            let disk_path = tokio::select! {
                root = docker.root_dir() => hoststats::disk_path(root.as_deref()),
                () = stopped(&mut stop_rx) => return Ok(()),
            };
            (Arc::new(Metered::new(Arc::new(docker))), disk_path)
        }
        RuntimeKind::Simulated => {
            warn!(exit_after = ?args.simulated_exit_after.0, "simulated runtime: no containers are run; this agent is for benchmarks only");
            let sim = SimulatedRuntime::new(args.simulated_exit_after.0);
            (Arc::new(sim), args.data_dir.clone())
        }
    };
    serve(args, name, tls, store, runtime, disk_path, admin, stop_rx).await
}

/// The HTTP admin endpoint (/metrics, /healthz, /readyz), bound by `main`
/// so it can print the address before the agent starts.
pub struct AdminEndpoint {
    /// The bound port.
    pub listener: tokio::net::TcpListener,
    /// The process's metrics recorder.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// Serves the admin endpoint until `stop_rx` turns true. `/readyz` follows
/// `ready` (a session is established); each scrape refreshes the gauge of
/// running containers.
fn spawn_admin(
    admin: AdminEndpoint,
    ready: watch::Receiver<bool>,
    running: Arc<AtomicU32>,
    mut stop_rx: watch::Receiver<bool>,
) -> AbortOnDrop {
    let collect: admin::Collect = Arc::new(move || {
        metrics::gauge!("minkube_agent_running_containers").set(f64::from(
            running.load(std::sync::atomic::Ordering::Relaxed),
        ));
    });
    AbortOnDrop(tokio::spawn(admin::serve(
        admin.listener,
        admin.metrics,
        ready,
        collect,
        async move { stopped(&mut stop_rx).await },
    )))
}

/// Follows the session for systemd: READY=1 when the first stream to the
/// manager is established, a status line on every loss and return, and
/// STOPPING=1 on shutdown.
async fn tell_systemd(
    systemd: minkube_common::sd_notify::Notifier,
    manager: String,
    mut ready: watch::Receiver<bool>,
    mut stop_rx: watch::Receiver<bool>,
) {
    let mut told_ready = false;
    loop {
        let up = *ready.borrow_and_update();
        let line = if up {
            format!("connected to the manager at {manager}")
        } else {
            format!("connecting to the manager at {manager}")
        };
        if up && !told_ready {
            systemd.ready(&line);
            told_ready = true;
        } else {
            systemd.status(&line);
        }
        tokio::select! {
            changed = ready.changed() => if changed.is_err() { break },
            () = stopped(&mut stop_rx) => break,
        }
    }
    systemd.stopping("stopping; containers keep running");
}

/// Everything after the checks: registration, the reconciler and the
/// session loop, until `stop_rx` turns true. `disk_path` is the directory
/// whose filesystem the heartbeats' disk statistics describe.
#[allow(clippy::too_many_arguments)]
async fn serve(
    args: Args,
    name: String,
    tls: Option<watch::Receiver<tonic::transport::ClientTlsConfig>>,
    store: LocalStore,
    runtime: Arc<dyn Runtime>,
    disk_path: PathBuf,
    admin: Option<AdminEndpoint>,
    mut stop_rx: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let capacity = hoststats::capacity();
    info!(name = %name, cpu_cores = capacity.cpu_cores, memory_mb = capacity.memory_mb, data_dir = %args.data_dir.display(), disk_stats_of = %disk_path.display(), "starting agent");
    let cfg = SessionConfig {
        manager: args.manager.clone(),
        name,
        address: args.advertise_address.clone(),
        labels: args.labels.iter().cloned().collect(),
        capacity,
        version: env!("CARGO_PKG_VERSION").to_string(),
        data_dir: args.data_dir.clone(),
        tls,
    };
    let node_id = match identity::load_node_id(&args.data_dir)? {
        Some(id) => id,
        None => match session::register_first(&cfg, &mut stop_rx).await {
            Some(id) => id,
            None => return Ok(()),
        },
    };

    let (input_tx, input_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (out_tx, out_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let running = Arc::new(AtomicU32::new(0));
    let (ready_tx, ready_rx) = watch::channel(false);
    let systemd = minkube_common::sd_notify::Notifier::from_env();
    let _watchdog = systemd.spawn_watchdog();
    let _systemd = systemd.is_enabled().then(|| {
        AbortOnDrop(tokio::spawn(tell_systemd(
            systemd,
            args.manager.clone(),
            ready_rx.clone(),
            stop_rx.clone(),
        )))
    });
    let _admin = admin.map(|a| spawn_admin(a, ready_rx, Arc::clone(&running), stop_rx.clone()));
    let settings = Settings {
        stop_timeout: args.stop_timeout,
        resync_interval: args.resync_interval,
    };
    let reconciler = Reconciler::new(
        node_id.clone(),
        Arc::clone(&runtime),
        store,
        settings,
        out_tx,
        Arc::clone(&running),
    )?;
    let span = tracing::info_span!("agent", node_id = %node_id);
    let reconciler = tokio::spawn(
        reconciler
            .run(input_rx, stop_rx.clone())
            .instrument(span.clone()),
    );
    let links = Links {
        inputs: input_tx,
        outbound: out_rx,
        running,
        host: hoststats::HostSampler::new(disk_path),
        ready: ready_tx,
        runtime,
    };
    let sessions =
        tokio::spawn(session::run(cfg, node_id, links, stop_rx.clone()).instrument(span));

    let (reconciler, sessions) = tokio::join!(reconciler, sessions);
    for (part, joined) in [("reconciler", reconciler), ("session loop", sessions)] {
        if let Err(e) = joined {
            error!(part, error = %e, "task failed");
        }
    }
    if *stop_rx.borrow() {
        info!("agent stopped");
        Ok(())
    } else {
        Err(AgentError::Crashed("the reconciler or the session loop"))
    }
}

/// Connects to Docker, retrying while the daemon is unreachable. `None` if
/// shutdown came first.
async fn connect_docker(
    args: &Args,
    stop_rx: &mut watch::Receiver<bool>,
) -> Result<Option<DockerRuntime>, AgentError> {
    let backoff = Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(30),
        multiplier: 2.0,
    };
    let mut failures = 0u32;
    loop {
        let attempt = DockerRuntime::connect(args.stop_timeout + DOCKER_REQUEST_SLACK);
        tokio::select! {
            result = attempt => match result {
                Ok(docker) => return Ok(Some(docker)),
                Err(e) if e.is_unavailable() => {
                    warn!(error = %e, "Docker is not reachable yet; retrying");
                }
                Err(e) => return Err(e.into()),
            },
            () = stopped(stop_rx) => return Ok(None),
        }
        let delay = backoff.delay(failures, &mut rand::rng());
        failures = failures.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stopped(stop_rx) => return Ok(None),
        }
    }
}
