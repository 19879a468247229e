//! A secured cluster (`minkube-manager init`, TLS, join token, node
//! certificates, bearer tokens with roles): who gets in, who may do what,
//! and the audit log of it, against the real binaries.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use minkube::pb::agent_message::Msg;
use minkube::pb::{self, agent_service_client::AgentServiceClient, TaskState};
use minkube_integration_tests::{AgentOptions, Cluster, WAIT};
use tokio_stream::StreamExt as _;
use tonic::Code;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs the CLI with `token` (empty: none); (success, stdout, stderr).
async fn as_token(cluster: &Cluster, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = cluster.cli_env(&[("MINKUBE_TOKEN", token)], args).await;
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_roles_decide_what_a_client_may_do_and_the_audit_log_says_so() {
    let cluster = Cluster::builder().secure().agents(&["a"]).start().await;
    let admin = cluster.security().admin_token.clone();

    // No token: UNAUTHENTICATED, with what to do.
    let (ok, _, err) = as_token(&cluster, "", &["ps"]).await;
    assert!(
        !ok && err.contains("UNAUTHENTICATED") && err.contains("--token"),
        "{err}"
    );
    let (ok, _, err) = as_token(&cluster, "mkt_forged", &["ps"]).await;
    assert!(!ok && err.contains("UNAUTHENTICATED"), "{err}");

    // The admin makes a viewer and an operator.
    let (ok, viewer, err) = as_token(
        &cluster,
        &admin,
        &["token", "create", "viewer-1", "--role", "viewer"],
    )
    .await;
    assert!(ok, "{err}");
    let viewer = viewer.trim().to_string();
    let (ok, operator, err) = as_token(
        &cluster,
        &admin,
        &["token", "create", "op-1", "--role", "operator"],
    )
    .await;
    assert!(ok, "{err}");
    let operator = operator.trim().to_string();
    let (_, who, _) = as_token(&cluster, &viewer, &["whoami"]).await;
    assert_eq!(who.trim(), "token/viewer-1 (viewer)");

    // A viewer reads but may not run.
    let (ok, _, err) = as_token(&cluster, &viewer, &["ps"]).await;
    assert!(ok, "{err}");
    let run = [
        "run",
        "sec-task",
        "--image",
        cluster.image(),
        "--memory",
        "16",
        "--",
        "true",
    ];
    let (ok, _, err) = as_token(&cluster, &viewer, &run).await;
    assert!(
        !ok && err.contains("PERMISSION_DENIED") && err.contains("needs operator"),
        "{err}"
    );

    // An operator runs a task: it goes over mutual TLS to the agent and completes.
    let (ok, id, err) = as_token(&cluster, &operator, &run).await;
    assert!(ok, "{err}");
    let id = id.trim().to_string();
    cluster
        .wait_task_state(&id, &[TaskState::Completed], WAIT)
        .await;
    // ...but may not manage tokens.
    let (ok, _, err) = as_token(&cluster, &operator, &["token", "list"]).await;
    assert!(!ok && err.contains("PERMISSION_DENIED"), "{err}");

    // The admin lists and revokes; a revoked token stops working at once.
    let (ok, list, err) = as_token(&cluster, &admin, &["token", "list"]).await;
    assert!(ok, "{err}");
    for name in ["admin", "viewer-1", "op-1"] {
        assert!(list.contains(name), "{list}");
    }
    assert!(!list.contains(&viewer), "secrets are never listed: {list}");
    let (ok, _, err) = as_token(&cluster, &admin, &["token", "revoke", "viewer-1"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = as_token(&cluster, &viewer, &["ps"]).await;
    assert!(!ok && err.contains("UNAUTHENTICATED"), "{err}");

    // The audit log has the denials and the mutating calls, with who.
    let log = cluster.manager_log();
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("minkube_audit"))
        .collect();
    let has = |who: &str, method: &str, outcome: &str| {
        audit.iter().any(|l| {
            l.contains(&format!("who={who}"))
                && l.contains(method)
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
    };
    assert!(
        has("token/viewer-1", "CreateTask", "PERMISSION_DENIED"),
        "{audit:#?}"
    );
    assert!(has("token/op-1", "CreateTask", "OK"), "{audit:#?}");
    assert!(
        has("token/op-1", "ListTokens", "PERMISSION_DENIED"),
        "{audit:#?}"
    );
    assert!(has("token/admin", "RevokeToken", "OK"), "{audit:#?}");
    assert!(
        has("unauthenticated", "ListTasks", "UNAUTHENTICATED"),
        "{audit:#?}"
    );
}

/// A client of the agent API presenting node `name`'s certificate (taken
/// from that agent's data dir).
async fn agent_client_as(
    cluster: &Cluster,
    name: &str,
) -> AgentServiceClient<tonic::transport::Channel> {
    let dir = cluster.dir().join(format!("agent-{name}"));
    let cert = std::fs::read_to_string(dir.join("node.pem")).unwrap();
    let key = std::fs::read_to_string(dir.join("node.key")).unwrap();
    let ca = std::fs::read_to_string(&cluster.security().ca_path).unwrap();
    let tls = minkube_common::tls::client_config(&ca, Some((&cert, &key)));
    let channel = minkube::client::channel_with(&cluster.addr(), Some(&tls))
        .await
        .unwrap();
    AgentServiceClient::new(channel)
}

/// Node certificates are renewed before they expire: with 15 s certificates
/// the agent gets a new one after about 10 s, and once the first one has
/// expired (and is refused) the agent still reconnects to a restarted
/// manager, as the same node, with the new one.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_renews_its_certificate_before_it_expires() {
    let mut cluster = Cluster::builder()
        .secure()
        .manager_flag("--node-cert-ttl", "15s")
        .agents(&["a"])
        .start()
        .await;
    let dir = cluster.dir().join("agent-a");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let (first_cert, first_key) = (read("node.pem"), read("node.key"));
    let (_, first_expiry) = minkube_common::tls::validity_of_pem(&first_cert).unwrap();
    let node = cluster.nodes().await.unwrap().remove(0);
    let node_id = node.id.clone();
    assert_eq!(
        node.certificate_expires_at.map(|t| t.seconds),
        Some(first_expiry),
        "the manager shows the expiry of the certificate the agent registered with"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while read("node.pem") == first_cert {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no renewal: {}",
            cluster.agent_log("a")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let renewed = read("node.pem");
    assert_eq!(
        minkube_common::tls::node_name_of_pem(&renewed).as_deref(),
        Some("a")
    );
    let (_, expiry) = minkube_common::tls::validity_of_pem(&renewed).unwrap();
    assert!(expiry > first_expiry, "{expiry} > {first_expiry}");
    assert!(cluster.manager_log().contains("node certificate renewed"));

    // Past the first certificate's expiry: it is refused now.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    while now() <= u64::try_from(first_expiry).unwrap() + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ca = std::fs::read_to_string(&cluster.security().ca_path).unwrap();
    let expired = minkube_common::tls::client_config(&ca, Some((&first_cert, &first_key)));
    let refused = match minkube::client::channel_with(&cluster.addr(), Some(&expired)).await {
        Err(_) => true,
        Ok(channel) => AgentServiceClient::new(channel)
            .register(register("a"))
            .await
            .is_err(),
    };
    assert!(refused, "an expired node certificate is refused");

    // A new connection of the agent uses its current certificate.
    cluster.restart_manager();
    cluster.wait_nodes_ready(1).await;
    let nodes = cluster.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!((nodes[0].name.as_str(), &nodes[0].id), ("a", &node_id));
    // The manager shows when the certificate the agent came back with
    // expires: a renewed one.
    let shown = nodes[0].certificate_expires_at.as_ref().unwrap().seconds;
    assert!(shown > first_expiry, "{shown} > {first_expiry}");
}

fn register(name: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        name: name.into(),
        capacity: Some(pb::Resources {
            cpu_cores: 1.0,
            memory_mb: 1024,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_need_a_certificate_and_one_node_cannot_act_for_another() {
    let mut cluster = Cluster::builder()
        .secure()
        .agents(&["a", "b"])
        .start()
        .await;
    let node_b = cluster
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.name == "b")
        .unwrap();
    let task = cluster
        .create(cluster.spec("on-b", &["sleep", "300"]))
        .await;
    let placed = cluster
        .wait_task_state(&task.id, &[TaskState::Running], WAIT)
        .await;
    let on = placed.task.unwrap().status.unwrap().node_name;

    // TLS without a client certificate: the agent API refuses.
    let (tls, _) = cluster.credentials("");
    let channel = minkube::client::channel_with(&cluster.addr(), tls.as_ref())
        .await
        .unwrap();
    let err = AgentServiceClient::new(channel.clone())
        .register(register("intruder"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // Plaintext does not even get that far.
    let plaintext = async {
        let mut c = minkube::client::agent(&cluster.addr()).await.ok()?;
        c.register(register("x")).await.ok()
    };
    assert!(
        plaintext.await.is_none(),
        "a plaintext call must not get through"
    );

    // A forged join token is refused, also for a real agent process.
    let err = AgentServiceClient::new(channel)
        .join(pb::JoinRequest {
            join_token: "mkj_forged".into(),
            name: "intruder".into(),
            csr_pem: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    cluster.add_agent_with(
        "forger",
        AgentOptions::new().flag("--join-token", "mkj_forged"),
    );
    let status = cluster
        .wait_agent_exit("forger", Duration::from_secs(30))
        .await;
    assert!(!status.success());
    assert!(
        cluster.agent_log("forger").contains("join token is wrong"),
        "{}",
        cluster.agent_log("forger")
    );

    // Node a's certificate cannot register as b, nor open b's session.
    let mut as_a = agent_client_as(&cluster, "a").await;
    let err = as_a.register(register("b")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("cannot register as"), "{err:?}");
    let hello = pb::AgentMessage {
        msg: Some(Msg::Hello(pb::Hello {
            node_id: node_b.id.clone(),
        })),
    };
    let err = as_a
        .connect(tokio_stream::iter(vec![hello]).chain(tokio_stream::pending()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Nor report a status for a task placed on b (or on a, when it runs on b).
    let other = if on == "a" { "b" } else { "a" };
    let mut as_other = agent_client_as(&cluster, other).await;
    let other_id = cluster
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.name == other)
        .unwrap()
        .id;
    let forged = pb::AgentMessage {
        msg: Some(Msg::Status(pb::StatusBatch {
            updates: vec![pb::TaskStatusUpdate {
                task_id: task.id.clone(),
                attempt: 1,
                sequence: 1_000,
                state: TaskState::Failed as i32,
                reason: "forged".into(),
                ..Default::default()
            }],
            full_sync: false,
        })),
    };
    let hello = pb::AgentMessage {
        msg: Some(Msg::Hello(pb::Hello { node_id: other_id })),
    };
    // The real agent holds this node's session; take it over (same identity).
    cluster.kill_agent(other);
    let mut down = as_other
        .connect(tokio_stream::iter(vec![hello, forged]).chain(tokio_stream::pending()))
        .await
        .unwrap()
        .into_inner();
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match down.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the session ended without a status"),
                Err(s) => return s,
            }
        }
    })
    .await
    .expect("the forged session ends");
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
    let still = cluster.get(&task.id).await.task.unwrap();
    assert_eq!(
        still.status.unwrap().state(),
        TaskState::Running,
        "the forged report changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_rotation_the_old_join_token_stops_working() {
    let mut cluster = Cluster::builder().secure().agents(&["a"]).start().await;
    let old = cluster.security().join_token.clone();
    let new = cluster
        .cli_ok(&["token", "rotate-join"])
        .await
        .trim()
        .to_string();
    assert!(new.starts_with("mkj_") && new != old);

    cluster.add_agent_with("late", AgentOptions::new().flag("--join-token", &old));
    let status = cluster
        .wait_agent_exit("late", Duration::from_secs(30))
        .await;
    assert!(!status.success());
    assert!(
        cluster.agent_log("late").contains("rotated"),
        "{}",
        cluster.agent_log("late")
    );

    cluster.add_agent_with("fresh", AgentOptions::new().flag("--join-token", &new));
    cluster.wait_nodes_ready(2).await;
    // Joined once, it restarts on its certificate alone.
    cluster.kill_agent("fresh");
    cluster.add_agent_with(
        "fresh",
        AgentOptions::new().flag("--join-token", "mkj_no-longer-needed"),
    );
    cluster.wait_nodes_ready(2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_join_token_is_refused_until_rotated() {
    let mut cluster = Cluster::builder()
        .secure()
        .manager_flag("--join-token-ttl", "3s")
        .start()
        .await;
    let old = cluster.security().join_token.clone();
    // `init` made the token before the manager started: let it age.
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    cluster.add_agent_with("late", AgentOptions::new().flag("--join-token", &old));
    let status = cluster
        .wait_agent_exit("late", Duration::from_secs(30))
        .await;
    assert!(!status.success());
    let log = cluster.agent_log("late");
    assert!(
        log.contains("join token expired") && log.contains("rotate-join"),
        "{log}"
    );

    // A fresh token works while it is fresh.
    let new = cluster
        .cli_ok(&["token", "rotate-join"])
        .await
        .trim()
        .to_string();
    cluster.add_agent_with("fresh", AgentOptions::new().flag("--join-token", &new));
    cluster.wait_nodes_ready(1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_are_per_identity() {
    let cluster = Cluster::builder()
        .secure()
        .manager_flag("--rate-limit", "50")
        .manager_flag("--rate-burst", "20")
        .start()
        .await;
    let admin = cluster.security().admin_token.clone();
    let (_, noisy, _) = as_token(
        &cluster,
        &admin,
        &["token", "create", "noisy", "--role", "viewer"],
    )
    .await;
    let (_, quiet, _) = as_token(
        &cluster,
        &admin,
        &["token", "create", "quiet", "--role", "viewer"],
    )
    .await;
    let client = |token: String| {
        let (tls, metadata) = cluster.credentials(token.trim());
        let addr = cluster.addr();
        async move {
            let channel = minkube::client::channel_with(&addr, tls.as_ref())
                .await
                .unwrap();
            pb::control_service_client::ControlServiceClient::with_interceptor(channel, metadata)
        }
    };
    // Same address, different tokens: the noisy one is limited...
    let mut noisy = client(noisy).await;
    let mut limited = 0;
    for _ in 0..200 {
        match noisy.list_nodes(pb::ListNodesRequest::default()).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::ResourceExhausted => limited += 1,
            Err(s) => panic!("unexpected {s:?}"),
        }
    }
    assert!(limited > 0, "200 quick calls were never limited");
    // ...the quiet one is not.
    let mut quiet = client(quiet).await;
    for _ in 0..10 {
        quiet
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .expect("another identity is served");
    }
}
