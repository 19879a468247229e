//! One session on the Connect stream, in the order agent.proto prescribes:
//! Register, Hello, Welcome, full sync, then both directions at once.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use minkube::pb::{self, agent_message, manager_message};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use super::batch::{collect, to_messages, MAX_BATCH};
use super::logs::LogReaders;
use super::{client, drain_while, register, Links, SessionConfig, SessionError};
use crate::identity;
use crate::reconciler::{Input, Outbound};

/// Messages queued towards the manager before sends wait.
const STREAM_CAPACITY: usize = 256;
/// Bound on opening the stream and on the Welcome.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Used when the Welcome leaves the interval at 0.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a closing session waits for the manager to end its side.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

fn msg(m: agent_message::Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(m) }
}

/// The heartbeat interval with ±10% jitter, so agents do not beat in step.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::rng().random_range(0.9..=1.1))
}

fn to_input(m: pb::ManagerMessage) -> Option<Input> {
    match m.msg? {
        manager_message::Msg::Assignment(a) => Some(Input::Assignment(Box::new(a))),
        manager_message::Msg::Stop(s) => Some(Input::Stop(s)),
        manager_message::Msg::DesiredSet(d) => Some(Input::DesiredSet(d)),
        manager_message::Msg::Release(r) => Some(Input::Release(r)),
        manager_message::Msg::Welcome(_) => {
            debug!("ignoring a second Welcome");
            None
        }
        // Served by the session's log readers, never by the reconciler.
        manager_message::Msg::LogsRequest(_) | manager_message::Msg::LogsCancel(_) => None,
    }
}

async fn timed<F: std::future::Future>(
    what: &'static str,
    fut: F,
) -> Result<F::Output, SessionError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| SessionError::Timeout {
            what,
            after: HANDSHAKE_TIMEOUT,
        })
}

/// Ends the request stream, the clean goodbye, and gives the manager a
/// moment to close its side too.
async fn close(
    tx: mpsc::Sender<pb::AgentMessage>,
    mut inbound: tonic::Streaming<pb::ManagerMessage>,
) -> Result<(), SessionError> {
    info!("closing the session");
    drop(tx);
    let drain = async { while let Ok(Some(_)) = inbound.message().await {} };
    let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
    Ok(())
}

/// One session, start to end. `Ok` only on shutdown.
pub(super) async fn run_one(
    cfg: &SessionConfig,
    node_id: &mut String,
    session: u64,
    links: &mut Links,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let mut client = drain_while(client(cfg), &mut links.outbound, shutdown).await??;
    let registered = register(&mut client, cfg, node_id);
    let id = drain_while(registered, &mut links.outbound, shutdown).await??;
    if id != *node_id {
        identity::save_node_id(&cfg.data_dir, &id)?;
        let send = links.inputs.send(Input::NodeId(id.clone()));
        drain_while(send, &mut links.outbound, shutdown)
            .await?
            .map_err(|_| SessionError::ReconcilerGone)?;
        *node_id = id;
    }

    let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
    let hello = msg(agent_message::Msg::Hello(pb::Hello {
        node_id: node_id.clone(),
    }));
    tx.try_send(hello).map_err(|_| SessionError::ManagerGone)?;
    let open = timed("answer to Connect", client.connect(ReceiverStream::new(rx)));
    let mut inbound = drain_while(open, &mut links.outbound, shutdown)
        .await??
        .map_err(SessionError::Stream)?
        .into_inner();

    let first = timed("Welcome", inbound.message());
    let welcome = match drain_while(first, &mut links.outbound, shutdown)
        .await??
        .map_err(SessionError::Stream)?
    {
        Some(pb::ManagerMessage {
            msg: Some(manager_message::Msg::Welcome(w)),
        }) => w,
        Some(other) => {
            return Err(SessionError::Protocol(format!(
                "expected Welcome first, got {other:?}"
            )))
        }
        None => return Err(SessionError::Closed),
    };
    let heartbeat = match welcome.heartbeat_interval_ms {
        0 => DEFAULT_HEARTBEAT,
        ms => Duration::from_millis(ms),
    };
    info!(session, heartbeat = ?heartbeat, manager = %cfg.manager, "connected to the manager");

    // Full sync: ask the reconciler for its snapshot; everything it sent
    // before the snapshot is older than it and is dropped.
    let ask = links.inputs.send(Input::FullSync { session });
    drain_while(ask, &mut links.outbound, shutdown)
        .await?
        .map_err(|_| SessionError::ReconcilerGone)?;
    let updates = loop {
        tokio::select! {
            out = links.outbound.recv() => match out {
                Some(Outbound::FullSync { session: s, updates }) if s == session => break updates,
                Some(_) => {}
                None => return Err(SessionError::ReconcilerGone),
            },
            () = crate::stopped(shutdown) => return Err(SessionError::Shutdown),
        }
    };
    let sync = msg(agent_message::Msg::Status(pb::StatusBatch {
        updates,
        full_sync: true,
    }));
    tx.send(sync).await.map_err(|_| SessionError::ManagerGone)?;
    links.ready.send_replace(true);
    metrics::gauge!("minkube_agent_connected").set(1.0);

    let mut logs = LogReaders::new(Arc::clone(&links.runtime), node_id, tx.clone());
    let mut pending: Option<Input> = None;
    // Made once, not per message: each would register a waker and a timer.
    let mut stop_rx = shutdown.clone();
    let stop = crate::stopped(&mut stop_rx);
    tokio::pin!(stop);
    // The first heartbeat goes at once, so host stats are on the node from the start.
    let beat_due = tokio::time::sleep_until(Instant::now());
    tokio::pin!(beat_due);
    loop {
        tokio::select! {
            () = &mut stop => {
                // Readers hold senders too; they must go for the stream to end.
                drop(logs);
                return close(tx, inbound).await;
            }
            permit = links.inputs.reserve(), if pending.is_some() => match permit {
                Ok(permit) => {
                    if let Some(input) = pending.take() {
                        permit.send(input);
                    }
                }
                Err(_) if *shutdown.borrow() => {
                    drop(logs);
                    return close(tx, inbound).await;
                }
                Err(_) => return Err(SessionError::ReconcilerGone),
            },
            // Read the next message only once the previous one is handed on.
            received = inbound.message(), if pending.is_none() => match received {
                Ok(Some(m)) => pending = logs.take(m).and_then(to_input),
                Ok(None) => return Err(SessionError::Closed),
                Err(status) => return Err(SessionError::Stream(status)),
            },
            out = links.outbound.recv() => {
                let Some(first) = out else {
                    // The reconciler closes its channel when it stops for shutdown.
                    if *shutdown.borrow() {
                        drop(logs);
                        return close(tx, inbound).await;
                    }
                    return Err(SessionError::ReconcilerGone);
                };
                let batch = collect(first, &mut links.outbound, MAX_BATCH).await;
                for m in to_messages(batch, session) {
                    tx.send(m).await.map_err(|_| SessionError::ManagerGone)?;
                }
            }
            () = logs.reap() => {}
            () = &mut beat_due => {
                let beat = msg(agent_message::Msg::Heartbeat(pb::Heartbeat {
                    timestamp: Some(minkube::convert::now()),
                    running_tasks: links.running.load(Ordering::Relaxed),
                    stats: Some(links.host.sample()),
                }));
                if tx.send(beat).await.is_err() {
                    warn!("heartbeat could not be sent");
                    return Err(SessionError::ManagerGone);
                }
                beat_due.as_mut().reset(Instant::now() + jittered(heartbeat));
            }
        }
    }
}
