//! Bad and hostile input against a real manager: oversized and malformed
//! messages get clear status codes; a flooding client is rate limited while
//! another client is served; a fake agent pushing 10,000 stream messages
//! leaves the manager's memory bounded. In every case the stored tasks are
//! intact afterwards.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use minkube::pb::agent_message::Msg;
use minkube::pb::{
    self, AgentMessage, CreateTaskRequest, Hello, ListTasksRequest, RegisterRequest, StatusBatch,
    TaskState, TaskStatusUpdate,
};
use minkube_integration_tests::raw::{peak_rss_kib, unary};
use minkube_integration_tests::Cluster;
use prost::Message as _;
use tokio_stream::StreamExt as _;
use tonic::Code;

/// Creates `n` tasks (they stay pending: the cluster has no agent).
async fn seed(cluster: &Cluster, n: usize) -> Vec<pb::Task> {
    let mut tasks = Vec::new();
    for i in 0..n {
        tasks.push(
            cluster
                .create(cluster.spec(&format!("keep-{i}"), &["true"]))
                .await,
        );
    }
    tasks
}

async fn assert_intact(cluster: &Cluster, seeded: &[pb::Task]) {
    for t in seeded {
        let got = cluster.get(&t.id).await.task.unwrap();
        assert_eq!(got.spec, t.spec, "task {} changed", t.id);
        assert_eq!(got.status.unwrap().state(), TaskState::Pending);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_malformed_messages_get_clear_codes_and_lose_nothing() {
    let mut cluster = Cluster::builder()
        .manager_flag("--max-request-bytes", "65536")
        .start()
        .await;
    let seeded = seed(&cluster, 3).await;

    // Larger than --max-request-bytes.
    let mut spec = cluster.spec("too-big", &["true"]);
    spec.env.insert("BLOB".into(), "x".repeat(200_000));
    let err = cluster
        .control()
        .await
        .create_task(CreateTaskRequest { spec: Some(spec) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too large"), "{err:?}");

    // Bytes that are not a CreateTaskRequest.
    let garbage = vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x80];
    let err = unary(
        &cluster.addr(),
        "/minkube.v1.ControlService/CreateTask",
        garbage,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("decode"), "{err:?}");

    // A valid message with a field of the wrong wire type.
    let mut wrong = Vec::new();
    pb::GetTaskRequest { id: "x".into() }
        .encode(&mut wrong)
        .unwrap();
    wrong[0] = 0x0d; // field 1 as fixed32 instead of length-delimited
    let err = unary(&cluster.addr(), "/minkube.v1.ControlService/GetTask", wrong)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Still serving, nothing lost, also after a restart from the store.
    cluster.create(cluster.spec("after", &["true"])).await;
    assert_intact(&cluster, &seeded).await;
    cluster.restart_manager();
    assert_intact(&cluster, &seeded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_client_is_limited_while_another_is_served() {
    let cluster = Cluster::builder()
        .manager_flag("--rate-limit", "100")
        .manager_flag("--rate-burst", "50")
        .start()
        .await;
    let seeded = seed(&cluster, 2).await;

    // The flood: 1,000 calls, 32 at a time, from 127.0.0.1.
    let flood = {
        let client = cluster.control().await;
        tokio::spawn(async move {
            let calls = list_calls(client, 1000);
            let mut codes: HashMap<Code, usize> = HashMap::new();
            for c in calls.await {
                *codes.entry(c).or_default() += 1;
            }
            codes
        })
    };

    // Meanwhile a client from another address (127.0.0.2) is served.
    let endpoint = minkube::client::endpoint(&cluster.addr())
        .unwrap()
        .local_address(Some([127, 0, 0, 2].into()));
    let mut other =
        pb::control_service_client::ControlServiceClient::new(endpoint.connect().await.unwrap());
    for _ in 0..20 {
        other
            .list_tasks(ListTasksRequest::default())
            .await
            .expect("the other client is served during the flood");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let codes = flood.await.unwrap();
    let limited = codes.get(&Code::ResourceExhausted).copied().unwrap_or(0);
    let ok = codes.get(&Code::Ok).copied().unwrap_or(0);
    assert!(limited > 0, "the flood was never limited: {codes:?}");
    assert!(ok >= 50, "the flood's burst was served: {codes:?}");
    assert_eq!(
        limited + ok,
        1000,
        "only OK or RESOURCE_EXHAUSTED: {codes:?}"
    );
    // The flood left 127.0.0.1's bucket empty; like any client told to slow
    // down, wait for it to refill (burst 50 at 100/s: 0.5 s) before checking.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_intact(&cluster, &seeded).await;
}

/// `n` ListTasks calls on `client`, 32 in flight; their status codes.
async fn list_calls(client: minkube::client::TracedControlClient, n: usize) -> Vec<Code> {
    let mut codes = Vec::with_capacity(n);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        if set.len() >= 32 {
            if let Some(r) = set.join_next().await {
                codes.push(r.unwrap());
            }
        }
        let mut c = client.clone();
        set.spawn(async move {
            match c.list_tasks(ListTasksRequest::default()).await {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            }
        });
    }
    while let Some(r) = set.join_next().await {
        codes.push(r.unwrap());
    }
    codes
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fake_agent_pushing_ten_thousand_messages_leaves_memory_bounded() {
    let cluster = Cluster::start(&[]).await;
    let seeded = seed(&cluster, 3).await;
    let pid = cluster.manager_pid();
    let before = peak_rss_kib(pid);

    let channel = minkube::client::channel(&cluster.addr()).await.unwrap();
    let mut agent = pb::agent_service_client::AgentServiceClient::new(channel);
    let node_id = agent
        .register(RegisterRequest {
            name: "fake".into(),
            capacity: Some(pb::Resources {
                cpu_cores: 1.0,
                memory_mb: 1,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .node_id;

    // 10,000 messages, each a batch of updates about made-up tasks with
    // 1 KiB of text each, sent as fast as the manager takes them. (Naming a
    // real task of another node would end the session: security.rs.)
    let first = AgentMessage {
        msg: Some(Msg::Hello(Hello { node_id })),
    };
    let junk = move |i: u32| AgentMessage {
        msg: Some(Msg::Status(StatusBatch {
            updates: (0..10)
                .map(|j| TaskStatusUpdate {
                    task_id: format!("made-up-{i}-{j}"),
                    attempt: 1,
                    sequence: u64::from(i) + 1,
                    state: TaskState::Failed as i32,
                    reason: "r".repeat(1024),
                    container_id: "c".repeat(64),
                    ..Default::default()
                })
                .collect(),
            full_sync: false,
        })),
    };
    // Then a full sync: the manager answers it with the desired set, and it
    // reads messages in order, so that answer means all 10,000 were taken in.
    // The stream then stays open.
    let sync = AgentMessage {
        msg: Some(Msg::Status(StatusBatch {
            updates: Vec::new(),
            full_sync: true,
        })),
    };
    let outbound = tokio_stream::iter(
        std::iter::once(first)
            .chain((0..10_000).map(junk))
            .chain(std::iter::once(sync)),
    )
    .chain(tokio_stream::pending());
    let mut down = agent.connect(outbound).await.unwrap().into_inner();
    let got_desired_set = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(m) = down.next().await {
            if matches!(
                m.unwrap().msg,
                Some(pb::manager_message::Msg::DesiredSet(_))
            ) {
                return;
            }
        }
        panic!("the stream ended before the desired set");
    })
    .await;
    assert!(got_desired_set.is_ok(), "no desired set within 120s");
    let node = cluster
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.name == "fake");
    assert_eq!(node.unwrap().state(), pb::NodeState::Ready);
    let after = peak_rss_kib(pid);
    eprintln!("manager peak RSS: {before} KiB before, {after} KiB after 10,000 junk messages");
    // ~11 MB of junk went up; the manager keeps none of it.
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "manager peak RSS grew from {before} KiB to {after} KiB"
    );
    assert_intact(&cluster, &seeded).await;
}
