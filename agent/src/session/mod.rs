//! The link to the manager: register, open the Connect stream, full sync,
//! then shuttle messages both ways until the stream breaks; reconnect with
//! jittered backoff. Between sessions the reconciler's updates stay in the
//! local records; the next full sync carries them.
mod batch;
mod logs;
mod stream;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use minkube::client::{AgentClient, ConnectError};
use minkube::pb;
use minkube_common::retry::Backoff;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::hoststats::HostSampler;
use crate::identity;
use crate::local_store::StoreError;
use crate::reconciler::{Input, Outbound};

/// Largest manager message accepted (a desired set of many tasks is big).
const MAX_DECODING_BYTES: usize = 64 * 1024 * 1024;
/// Bound of a unary call.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);

/// Who this agent says it is.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Manager address.
    pub manager: String,
    /// Node name.
    pub name: String,
    /// Advertised address.
    pub address: String,
    /// Node labels.
    pub labels: HashMap<String, String>,
    /// Host capacity.
    pub capacity: pb::Resources,
    /// Agent version.
    pub version: String,
    /// Where the node id is kept.
    pub data_dir: PathBuf,
    /// Mutual TLS settings, current as the certificate is renewed; None for
    /// a plaintext (`--insecure`) manager.
    pub tls: Option<tokio::sync::watch::Receiver<tonic::transport::ClientTlsConfig>>,
}

/// The session's ends of the reconciler's channels.
pub struct Links {
    /// Manager messages to the reconciler.
    pub inputs: mpsc::Sender<Input>,
    /// Updates from the reconciler.
    pub outbound: mpsc::Receiver<Outbound>,
    /// Tasks running, for heartbeats.
    pub running: Arc<AtomicU32>,
    /// Host statistics, for heartbeats. Kept across sessions so CPU
    /// utilisation always spans the time since the previous heartbeat.
    pub host: HostSampler,
    /// True while a session is established (drives /readyz).
    pub ready: watch::Sender<bool>,
    /// The container runtime, for reading logs the manager asks for.
    pub runtime: Arc<dyn crate::runtime::Runtime>,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The manager could not be dialled.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The manager answered Register with an error.
    #[error("registration refused: {0}")]
    Register(String),
    /// The node was removed from the cluster: its id and certificate are
    /// refused.
    #[error("this node was removed from the cluster: {0}")]
    NodeRemoved(String),
    /// Register did not reach the manager or got no answer.
    #[error("cannot reach the manager to register: {0}")]
    RegisterUnreachable(String),
    /// The stream failed.
    #[error("session stream failed: {} ({:?})", .0.message(), .0.code())]
    Stream(tonic::Status),
    /// The manager ended the stream.
    #[error("the manager closed the session")]
    Closed,
    /// Sending to the manager failed: it is gone.
    #[error("the manager stopped reading the session")]
    ManagerGone,
    /// Something expected did not arrive in time.
    #[error("no {what} from the manager within {after:?}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// How long.
        after: Duration,
    },
    /// The manager broke the session order.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The node id could not be kept.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The reconciler stopped.
    #[error("the reconciler stopped")]
    ReconcilerGone,
    /// Shutdown was requested.
    #[error("shutting down")]
    Shutdown,
}

fn backoff() -> Backoff {
    Backoff::default()
}

async fn client(cfg: &SessionConfig) -> Result<AgentClient, SessionError> {
    let tls = cfg.tls.as_ref().map(|t| t.borrow().clone());
    let channel = minkube::client::channel_with(&cfg.manager, tls.as_ref()).await?;
    Ok(AgentClient::new(channel).max_decoding_message_size(MAX_DECODING_BYTES))
}

/// Registers (or re-registers with `node_id`) and returns the node id to keep.
pub async fn register(
    client: &mut AgentClient,
    cfg: &SessionConfig,
    node_id: &str,
) -> Result<String, SessionError> {
    let request = pb::RegisterRequest {
        node_id: node_id.to_string(),
        name: cfg.name.clone(),
        address: cfg.address.clone(),
        labels: cfg.labels.clone(),
        capacity: Some(cfg.capacity),
        agent_version: cfg.version.clone(),
    };
    let response = tokio::time::timeout(REQUEST_TIMEOUT, client.register(request))
        .await
        .map_err(|_| SessionError::Timeout {
            what: "answer to Register",
            after: REQUEST_TIMEOUT,
        })?
        .map_err(|status| register_error(cfg, &status))?;
    let id = response.into_inner().node_id;
    if id.is_empty() {
        return Err(SessionError::Protocol(
            "Register returned an empty node id".into(),
        ));
    }
    Ok(id)
}

fn register_error(cfg: &SessionConfig, status: &tonic::Status) -> SessionError {
    if status
        .metadata()
        .get(minkube::NODE_REMOVED_METADATA)
        .is_some()
    {
        return SessionError::NodeRemoved(status.message().to_string());
    }
    let hint = match status.code() {
        tonic::Code::AlreadyExists => format!(
            "; another connected agent holds the name {:?}: give this node a unique --name (MINKUBE_NODE_NAME)",
            cfg.name
        ),
        tonic::Code::InvalidArgument => {
            "; fix the flag it names (--name, --label, --advertise-address)".to_string()
        }
        // Transport trouble, not a refusal: the session loop retries with backoff.
        tonic::Code::Unavailable
        | tonic::Code::Cancelled
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Unknown => {
            return SessionError::RegisterUnreachable(format!(
                "{} ({:?})",
                status.message(),
                status.code()
            ))
        }
        _ => String::new(),
    };
    SessionError::Register(format!("{} ({:?}){hint}", status.message(), status.code()))
}

/// First start: registers until the manager answers, keeps the node id.
/// `None` if shutdown came first.
pub async fn register_first(
    cfg: &SessionConfig,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<String> {
    let mut failures = 0u32;
    loop {
        let attempt = async {
            let mut client = client(cfg).await?;
            let id = register(&mut client, cfg, "").await?;
            identity::save_node_id(&cfg.data_dir, &id)?;
            Ok::<_, SessionError>(id)
        };
        tokio::select! {
            result = attempt => match result {
                Ok(id) => {
                    info!(node_id = %id, name = %cfg.name, "registered");
                    return Some(id);
                }
                Err(e) => warn!(error = %e, "cannot register with the manager; retrying"),
            },
            () = crate::stopped(shutdown) => return None,
        }
        let delay = backoff().delay(failures, &mut rand::rng());
        failures = failures.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = crate::stopped(shutdown) => return None,
        }
    }
}

/// Runs sessions until shutdown. The reconciler must be running: this loop
/// is what drains its outbound channel.
pub async fn run(
    cfg: SessionConfig,
    mut node_id: String,
    mut links: Links,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    let mut session = 0u64;
    let mut removed = false;
    loop {
        session += 1;
        let started = Instant::now();
        if session > 1 {
            metrics::counter!("minkube_agent_reconnects_total").increment(1);
        }
        let result = stream::run_one(&cfg, &mut node_id, session, &mut links, &mut shutdown).await;
        links.ready.send_replace(false);
        metrics::gauge!("minkube_agent_connected").set(0.0);
        match result {
            Ok(()) | Err(SessionError::Shutdown) => break,
            Err(SessionError::ReconcilerGone) => {
                if !*shutdown.borrow() {
                    error!("the reconciler stopped; ending the session loop");
                }
                break;
            }
            // It keeps trying (and saying why) in case the manager's store
            // is restored from before the removal.
            Err(SessionError::NodeRemoved(why)) if removed => {
                warn!(%why, "this node is still refused: it was removed from the cluster");
            }
            Err(SessionError::NodeRemoved(why)) => {
                error!(%why, "this node was removed from the cluster: stopping its containers (the cluster runs its tasks elsewhere)");
                // An empty desired set stops and removes every container
                // of this agent.
                let send = links
                    .inputs
                    .send(Input::DesiredSet(pb::DesiredSet::default()));
                match drain_while(send, &mut links.outbound, &mut shutdown).await {
                    Ok(Ok(())) => removed = true,
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            Err(e) => warn!(session, error = %e, "session ended"),
        }
        if started.elapsed() >= STABLE_SESSION {
            failures = 0;
        }
        let delay = backoff().delay(failures, &mut rand::rng());
        failures = failures.saturating_add(1);
        info!(retry_in = ?delay, "reconnecting to the manager");
        if drain_while(
            tokio::time::sleep(delay),
            &mut links.outbound,
            &mut shutdown,
        )
        .await
        .is_err()
        {
            break;
        }
    }
    info!("session loop ended");
}

/// Runs `fut` while discarding what the reconciler sends (until the next
/// full sync nothing reaches the manager, and the snapshot supersedes it).
async fn drain_while<F: Future>(
    fut: F,
    outbound: &mut mpsc::Receiver<Outbound>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<F::Output, SessionError> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            biased;
            () = crate::stopped(shutdown) => return Err(SessionError::Shutdown),
            out = &mut fut => return Ok(out),
            msg = outbound.recv() => if msg.is_none() {
                return Err(SessionError::ReconcilerGone);
            },
        }
    }
}
