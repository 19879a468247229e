//! The agent stream: one `Connect` per agent. The manager's half is a
//! bounded channel (down) and one reader task (up) owned by the cluster's
//! task tracker; either side ending ends the session.
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use minkube::pb::{self, agent_message::Msg};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::cluster::Cluster;
use crate::error::ManagerError;

/// How long an agent has to send Hello after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest interval between two notes of a talking node's liveness.
const MAX_NOTE_INTERVAL: Duration = Duration::from_secs(1);

/// The down-stream half handed to tonic.
pub type DownStream = ReceiverStream<Result<pb::ManagerMessage, Status>>;

/// Opens a session: waits for Hello, attaches the stream, sends Welcome and
/// starts the reader task.
pub async fn open_session(
    cluster: Arc<Cluster>,
    mut inbound: Streaming<pb::AgentMessage>,
    certified_name: Option<String>,
) -> Result<DownStream, ManagerError> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| ManagerError::Protocol("no Hello within 10s of opening the stream".into()))?
        .map_err(|s| {
            ManagerError::Protocol(format!("stream failed before Hello: {}", s.message()))
        })?;
    if let Some(m) = &first {
        count_inbound(m);
    }
    let node_id = match first.and_then(|m| m.msg) {
        Some(Msg::Hello(h)) => h.node_id,
        _ => {
            return Err(ManagerError::Protocol(
                "the first message on Connect must be Hello".into(),
            ))
        }
    };
    if let Some(cert_name) = &certified_name {
        // The session is bound to the node the certificate names.
        let named = cluster
            .lock()
            .nodes()
            .get(&node_id)
            .map(|n| n.node.name.clone());
        if named.as_ref() != Some(cert_name) {
            return Err(ManagerError::PermissionDenied(format!(
                "this agent's certificate names node {cert_name:?}; it cannot open a session for node id {node_id:?}"
            )));
        }
    }
    let (tx, rx) = mpsc::channel(cluster.config.session_buffer.max(1));
    let welcome = pb::Welcome {
        node_id: node_id.clone(),
        heartbeat_interval_ms: u64::try_from(cluster.config.heartbeat_interval.as_millis())
            .unwrap_or(u64::MAX),
    };
    // Queued before the session is visible to anyone else, so it is always
    // the first message (the scheduler may send as soon as it is attached).
    tx.try_send(Ok(pb::ManagerMessage {
        msg: Some(pb::manager_message::Msg::Welcome(welcome)),
    }))
    .map_err(|_| ManagerError::Protocol("could not queue Welcome".into()))?;
    let down = tx.clone();
    let session = cluster.attach_session(&node_id, tx)?;
    tracing::info!(node_id = %node_id, session = session.id, "agent session open");
    let c = Arc::clone(&cluster);
    cluster.tasks.spawn(async move {
        if let Err(status) = read_loop(&c, &node_id, &mut inbound, &session.cancel).await {
            tracing::warn!(node_id = %node_id, error = %status.message(), "agent session closed for a protocol violation");
            let _ = down.send(Err(status)).await;
        }
        drop(down);
        c.detach_session(&node_id, session.id);
        c.logs.session_ended(&node_id, session.id);
    });
    Ok(ReceiverStream::new(rx))
}

/// Reads the agent's messages until the stream or the session ends; an
/// error is the status to end the session with.
async fn read_loop(
    cluster: &Cluster,
    node_id: &str,
    inbound: &mut Streaming<pb::AgentMessage>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(), Status> {
    // Any message shows the node alive, but noting it takes the state lock:
    // a busy agent's status batches note it at most this often (heartbeats
    // always, for their stats). A tenth of the node timeout keeps a node
    // that keeps talking far from being marked down.
    let note_every = (cluster.config.node_timeout / 10).min(MAX_NOTE_INTERVAL);
    let mut noted: Option<tokio::time::Instant> = None;
    // Made once, not per message: each would join the token's waiter list.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        let next = tokio::select! {
            () = &mut cancelled => return Ok(()),
            m = inbound.message() => m,
        };
        let mut msg = match next {
            Ok(Some(m)) => m,
            Ok(None) => {
                tracing::info!(node_id, "agent closed its stream");
                return Ok(());
            }
            Err(s) => {
                tracing::info!(node_id, error = %s.message(), "agent stream broke");
                return Ok(());
            }
        };
        count_inbound(&msg);
        let (is_heartbeat, stats) = match &mut msg.msg {
            Some(Msg::Heartbeat(h)) => (true, h.stats.take()),
            _ => (false, None),
        };
        if is_heartbeat || noted.is_none_or(|at| at.elapsed() >= note_every) {
            noted = Some(tokio::time::Instant::now());
            if cluster.heartbeat(node_id, stats) {
                cluster.resend_desired(node_id).await;
            }
        }
        match msg.msg {
            Some(Msg::Heartbeat(_)) | None => {}
            Some(Msg::Status(batch)) => match cluster.apply_status(node_id, batch).await {
                Ok(()) => {}
                Err(e @ ManagerError::PermissionDenied(_)) => return Err(e.into()),
                Err(e) => tracing::error!(node_id, error = %e, "cannot apply status batch"),
            },
            Some(Msg::Ack(a)) => {
                tracing::debug!(node_id, task_id = %a.task_id, attempt = a.attempt, "assignment acknowledged");
            }
            Some(Msg::Logs(data)) => {
                let request_id = data.request_id;
                if cluster.logs.deliver(node_id, data) {
                    let cancel =
                        pb::manager_message::Msg::LogsCancel(pb::LogsCancel { request_id });
                    cluster.send(node_id, cancel).await;
                }
            }
            Some(Msg::Hello(_)) => {
                tracing::warn!(node_id, "repeated Hello ignored");
            }
        }
    }
}

/// The `kind` label of an agent's message in the stream message counter.
/// Counts a message from an agent. The handles are looked up once (the
/// recorder is installed before the server starts): the macro would hash
/// the name and labels and search the registry for every message.
fn count_inbound(msg: &pb::AgentMessage) {
    static COUNTERS: [OnceLock<metrics::Counter>; 6] = [const { OnceLock::new() }; 6];
    let i = inbound_index(msg);
    COUNTERS[i]
        .get_or_init(|| {
            metrics::counter!("minkube_manager_stream_messages_total", "direction" => "in", "kind" => INBOUND_KINDS[i])
        })
        .increment(1);
}

/// `kind` labels of messages from agents.
const INBOUND_KINDS: [&str; 6] = ["hello", "heartbeat", "status", "ack", "logs", "empty"];

fn inbound_index(msg: &pb::AgentMessage) -> usize {
    match &msg.msg {
        Some(Msg::Hello(_)) => 0,
        Some(Msg::Heartbeat(_)) => 1,
        Some(Msg::Status(_)) => 2,
        Some(Msg::Ack(_)) => 3,
        Some(Msg::Logs(_)) => 4,
        None => 5,
    }
}
