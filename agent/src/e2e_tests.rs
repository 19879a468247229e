//! The whole agent (session loop + reconciler) against an in-process fake
//! manager on loopback and the fake runtime.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use minkube::pb::agent_service_server::{AgentService, AgentServiceServer};
use minkube::pb::{self, agent_message, manager_message, TaskState};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::local_store::LocalStore;
use crate::runtime::fake::FakeRuntime;
use crate::{identity, serve, Args};

const IMAGE: &str = "minkube-test:1";
const WAIT: Duration = Duration::from_secs(10);

type ToAgent = mpsc::Sender<Result<pb::ManagerMessage, Status>>;

struct FakeManager {
    registers: mpsc::Sender<pb::RegisterRequest>,
    sessions: mpsc::Sender<(Streaming<pb::AgentMessage>, ToAgent)>,
}

#[tonic::async_trait]
impl AgentService for FakeManager {
    async fn join(
        &self,
        _request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        Err(Status::failed_precondition(
            "this test manager is plaintext",
        ))
    }

    async fn renew_certificate(
        &self,
        _request: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, Status> {
        Err(Status::failed_precondition(
            "this test manager is plaintext",
        ))
    }

    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        self.registers.send(request.into_inner()).await.unwrap();
        Ok(Response::new(pb::RegisterResponse {
            node_id: "node-A".into(),
        }))
    }

    type ConnectStream = ReceiverStream<Result<pb::ManagerMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        self.sessions
            .send((request.into_inner(), tx))
            .await
            .unwrap();
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn recv<T>(rx: &mut mpsc::Receiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("nothing arrived in time")
        .expect("channel closed")
}

async fn next_msg(inbound: &mut Streaming<pb::AgentMessage>) -> agent_message::Msg {
    tokio::time::timeout(WAIT, inbound.message())
        .await
        .expect("no agent message in time")
        .expect("stream failed")
        .expect("stream ended")
        .msg
        .expect("empty message")
}

/// Skips heartbeats; returns the next message of another kind.
async fn next_non_heartbeat(inbound: &mut Streaming<pb::AgentMessage>) -> agent_message::Msg {
    loop {
        match next_msg(inbound).await {
            agent_message::Msg::Heartbeat(_) => {}
            other => return other,
        }
    }
}

/// Collects incremental updates (skipping heartbeats and acks) until one
/// for `task_id` reaches `state`.
async fn until_state(
    inbound: &mut Streaming<pb::AgentMessage>,
    task_id: &str,
    state: TaskState,
) -> Vec<pb::TaskStatusUpdate> {
    let mut seen = Vec::new();
    loop {
        if let agent_message::Msg::Status(batch) = next_non_heartbeat(inbound).await {
            assert!(!batch.full_sync);
            let done = batch
                .updates
                .iter()
                .any(|u| u.task_id == task_id && u.state() == state);
            seen.extend(batch.updates);
            if done {
                return seen;
            }
        }
    }
}

fn to_agent(m: manager_message::Msg) -> Result<pb::ManagerMessage, Status> {
    Ok(pb::ManagerMessage { msg: Some(m) })
}

/// Hello, Welcome, full sync; returns the full-sync updates.
async fn handshake(
    inbound: &mut Streaming<pb::AgentMessage>,
    tx: &ToAgent,
) -> Vec<pb::TaskStatusUpdate> {
    match next_msg(inbound).await {
        agent_message::Msg::Hello(h) => assert_eq!(h.node_id, "node-A"),
        other => panic!("expected Hello, got {other:?}"),
    }
    tx.send(to_agent(manager_message::Msg::Welcome(pb::Welcome {
        node_id: "node-A".into(),
        heartbeat_interval_ms: 100,
    })))
    .await
    .unwrap();
    match next_msg(inbound).await {
        agent_message::Msg::Status(batch) => {
            assert!(batch.full_sync);
            batch.updates
        }
        other => panic!("expected the full sync, got {other:?}"),
    }
}

#[tokio::test]
async fn sessions_register_sync_run_stop_and_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new();
    rt.add_image(IMAGE);

    let (registers, mut register_rx) = mpsc::channel(8);
    let (sessions, mut session_rx) = mpsc::channel(8);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(FakeManager {
                registers,
                sessions,
            }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let data_dir = dir.path().to_str().unwrap();
    let args = Args::try_parse_from([
        "minkube-agent",
        "--manager",
        &addr.to_string(),
        "--name",
        "w1",
        "--data-dir",
        data_dir,
        "--label",
        "zone=a",
        "--advertise-address",
        "10.0.0.7",
    ])
    .unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let store = LocalStore::open(dir.path()).unwrap();
    let records = store.clone();
    let agent = tokio::spawn(serve(
        args,
        "w1".into(),
        None,
        store,
        Arc::new(rt.clone()),
        PathBuf::from("/"),
        None,
        stop_rx,
    ));

    // First start: no node id yet.
    let first = recv(&mut register_rx).await;
    assert_eq!(first.node_id, "");
    assert_eq!(first.name, "w1");
    assert_eq!(first.address, "10.0.0.7");
    assert_eq!(first.labels.get("zone").map(String::as_str), Some("a"));
    assert!(first.capacity.unwrap().memory_mb > 0);
    assert_eq!(first.agent_version, env!("CARGO_PKG_VERSION"));
    let again = recv(&mut register_rx).await;
    assert_eq!(again.node_id, "node-A");
    assert_eq!(
        identity::load_node_id(dir.path()).unwrap().as_deref(),
        Some("node-A")
    );

    // Session 1.
    let (mut inbound, tx) = recv(&mut session_rx).await;
    assert!(handshake(&mut inbound, &tx).await.is_empty());
    let mut assignment = pb::Assignment {
        task_id: "t1".into(),
        attempt: 1,
        spec: Some(pb::TaskSpec {
            name: "web".into(),
            image: IMAGE.into(),
            memory_mb: 64,
            ..Default::default()
        }),
        ..Default::default()
    };
    assignment
        .trace_context
        .insert("traceparent".into(), "00-x".into());
    tx.send(to_agent(manager_message::Msg::DesiredSet(pb::DesiredSet {
        assignments: vec![assignment],
    })))
    .await
    .unwrap();
    // The assignment is confirmed by an ack, or by a report of its attempt
    // when both go up together; the "preparing" note may be left out when
    // RUNNING goes up with it.
    let seen = until_state(&mut inbound, "t1", TaskState::Running).await;
    let states: Vec<(TaskState, u32, u64)> = seen
        .iter()
        .map(|u| (u.state(), u.attempt, u.sequence))
        .collect();
    let running = (TaskState::Running, 1, 2);
    assert!(
        states == [(TaskState::Scheduled, 1, 1), running] || states == [running],
        "{states:?}"
    );

    // Heartbeats carry the running count and the host's statistics.
    let beat = loop {
        if let agent_message::Msg::Heartbeat(b) = next_msg(&mut inbound).await {
            break b;
        }
    };
    assert_eq!(beat.running_tasks, 1);
    assert!(beat.timestamp.is_some());
    let stats = beat.stats.unwrap();
    assert!(stats.memory_total_mb > 0, "{stats:?}");
    assert!(stats.disk_total_mb > 0, "{stats:?}");
    assert_eq!(stats.disk_path, "/");
    assert!((0.0..=100.0).contains(&stats.cpu_percent), "{stats:?}");
    assert!(stats.sampled_at.is_some());

    tx.send(to_agent(manager_message::Msg::Stop(pb::StopOrder {
        task_id: "t1".into(),
        attempt: 1,
        reason: "stopped by user".into(),
        ..Default::default()
    })))
    .await
    .unwrap();
    let seen = until_state(&mut inbound, "t1", TaskState::Completed).await;
    let done = seen.last().unwrap();
    assert_eq!(
        (done.reason.as_str(), done.sequence),
        ("stopped by user", 3)
    );

    // The manager goes away; the agent comes back with its node id.
    drop(tx);
    drop(inbound);
    let reg = recv(&mut register_rx).await;
    assert_eq!(reg.node_id, "node-A");
    let (mut inbound, tx) = recv(&mut session_rx).await;
    let synced = handshake(&mut inbound, &tx).await;
    assert_eq!(synced.len(), 1);
    assert_eq!(
        (synced[0].state(), synced[0].sequence),
        (TaskState::Completed, 3)
    );

    // No longer listed and already synced as finished: forgotten.
    tx.send(to_agent(manager_message::Msg::DesiredSet(
        pb::DesiredSet::default(),
    )))
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !records.load_tasks().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "record not deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Shutdown ends the stream cleanly and leaves containers alone.
    let containers_before = rt.containers().len();
    stop_tx.send(true).unwrap();
    tokio::time::timeout(WAIT, agent)
        .await
        .expect("agent did not stop")
        .unwrap()
        .unwrap();
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => {}
                other => return other,
            }
        }
    })
    .await
    .expect("stream did not end");
    assert!(matches!(end, Ok(None)), "clean end of stream, got {end:?}");
    assert_eq!(rt.containers().len(), containers_before);
    server.abort();
}
