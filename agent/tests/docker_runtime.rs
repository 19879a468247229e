//! The Docker runtime against a real daemon. The test imports its own image
//! from Debian's static busybox (no registry needed); every container it
//! creates carries a node id unique to the run, and the containers and the
//! image are removed at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::time::Duration;

use futures::StreamExt;
use minkube::pb;
use minkube_agent::runtime::docker::DockerRuntime;
use minkube_agent::runtime::{
    ensure_image, ContainerFilter, ContainerSpec, ContainerStatus, EventKind, Runtime,
    RuntimeError, RuntimeEvent,
};

fn assignment(task_id: &str, image: &str, command: &[&str], memory_mb: u64) -> pb::Assignment {
    pb::Assignment {
        task_id: task_id.into(),
        attempt: 1,
        spec: Some(pb::TaskSpec {
            name: "smoke".into(),
            image: image.into(),
            command: command.iter().map(|s| (*s).to_string()).collect(),
            memory_mb,
            cpu: 0.5,
            ports: vec![pb::PortSpec {
                container_port: 80,
                protocol: 0,
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn died(
    events: &mut futures::stream::BoxStream<'static, Result<RuntimeEvent, RuntimeError>>,
    container_id: &str,
) -> EventKind {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let ev = events.next().await.unwrap().unwrap();
            if ev.container_id == container_id && matches!(ev.kind, EventKind::Died { .. }) {
                return ev.kind;
            }
        }
    })
    .await
    .expect("no die event in time")
}

/// Imports a busybox image tagged and labelled for this run only.
fn import_image(run: &str) -> String {
    use std::process::{Command, Stdio};
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .expect("/bin/busybox is missing: apt-get install busybox-static");
    for applet in ["sh", "sleep", "dd", "tr", "true", "echo"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    let tag = format!("minkube-agent-test:{run}");
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(root.path())
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let status = Command::new("docker")
        .args(["import", "--change"])
        .arg(format!("LABEL minkube-agent-test={run}"))
        .args(["-", &tag])
        .stdin(tar.stdout.take().unwrap())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(tar.wait().unwrap().success(), "tar failed");
    assert!(status.success(), "docker import failed");
    tag
}

fn remove_image(tag: &str) {
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", tag])
        .stdout(std::process::Stdio::null())
        .status();
}

async fn remove_all(rt: &DockerRuntime, node_id: &str) {
    for c in rt.list(&ContainerFilter::node(node_id)).await.unwrap() {
        rt.stop_and_remove(&c.id, Duration::from_secs(1))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn docker_runtime_end_to_end() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let node = format!("smoke-{}-{nanos}", std::process::id());
    let image = import_image(&node);
    let rt = DockerRuntime::connect(Duration::from_secs(60))
        .await
        .unwrap();
    rt.ping().await.unwrap();
    let result = std::panic::AssertUnwindSafe(exercise(&rt, &node, &image));
    let outcome = futures::FutureExt::catch_unwind(result).await;
    remove_all(&rt, &node).await;
    assert!(rt
        .list(&ContainerFilter::node(&node))
        .await
        .unwrap()
        .is_empty());
    remove_image(&image);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn exercise(rt: &DockerRuntime, node: &str, image: &str) {
    assert!(rt.image_present(image).await.unwrap());
    assert!(!rt.image_present("minkube-absent:404").await.unwrap());
    let err = ensure_image(
        rt,
        "minkube-absent:404",
        pb::PullPolicy::IfNotPresent,
        || {},
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    eprintln!("pull failure reads: {text}");
    assert!(
        text.starts_with(
            "image \"minkube-absent:404\" is not on this node and could not be pulled: "
        ),
        "{text}"
    );
    // Without a reachable registry (as on a test machine) the pull fails on
    // the network, which is worth retrying; with one, the image is missing.
    let expected = if err.detail().contains("no such host") {
        pb::FailureKind::Transient
    } else {
        pb::FailureKind::Permanent
    };
    assert_eq!(err.failure_kind(), expected, "{text}");
    let since = minkube::convert::now().seconds - 1;
    let mut events = rt.events(node, since);

    // A long runner with a published port.
    let a = assignment("task-sleep", image, &["sleep", "300"], 16);
    let spec = ContainerSpec::for_assignment(node, &a).unwrap();
    let sleeper = rt.create_and_start(&spec).await.unwrap();
    assert_eq!(sleeper.status, ContainerStatus::Running);
    assert_eq!(
        (sleeper.task_id.as_str(), sleeper.attempt),
        ("task-sleep", 1)
    );
    // One binding, or two when Docker gave IPv4 and IPv6 different host
    // ports; the IPv4 one comes first either way.
    assert!(matches!(sleeper.ports.len(), 1 | 2), "{:?}", sleeper.ports);
    assert!(
        !sleeper.ports[0].host_ip.contains(':'),
        "{:?}",
        sleeper.ports
    );
    assert!(sleeper.ports[0].host_port > 0);
    assert!(sleeper.started_at.is_some());
    let listed = rt
        .list(&ContainerFilter::attempt(node, "task-sleep", 1))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, ContainerStatus::Running);

    // Exit codes come with the die event, and the container stays.
    let a = assignment("task-exit", image, &["sh", "-c", "exit 3"], 16);
    let spec = ContainerSpec::for_assignment(node, &a).unwrap();
    let quitter = rt.create_and_start(&spec).await.unwrap();
    assert_eq!(
        died(&mut events, &quitter.id).await,
        EventKind::Died {
            exit_code: 3,
            oom_killed: false
        }
    );
    let info = rt.inspect(&quitter.id).await.unwrap().unwrap();
    assert_eq!(
        (info.status, info.exit_code),
        (ContainerStatus::Exited, Some(3))
    );
    assert!(info.finished_at.is_some());

    // Over the memory limit: OOM killed. The shell grows a 64 MB string in
    // user space (page faults are OOM-killed; a single huge read() could fail
    // with ENOMEM instead, which would not prove the OOM path).
    let a = assignment(
        "task-oom",
        image,
        &[
            "sh",
            "-c",
            "a=$(dd if=/dev/zero bs=1M count=64 2>/dev/null | tr '\\0' x); echo ${#a}",
        ],
        8,
    );
    let spec = ContainerSpec::for_assignment(node, &a).unwrap();
    let hog = rt.create_and_start(&spec).await.unwrap();
    match died(&mut events, &hog.id).await {
        EventKind::Died { oom_killed, .. } => assert!(oom_killed, "expected an OOM kill"),
        other => panic!("{other:?}"),
    }

    // A command that does not exist fails at start and leaves nothing behind.
    let a = assignment("task-bad", image, &["/no/such/binary"], 16);
    let spec = ContainerSpec::for_assignment(node, &a).unwrap();
    let err = rt.create_and_start(&spec).await.unwrap_err();
    eprintln!("start failure reads: {err} (HTTP {:?})", err.status());
    assert!(err.to_string().contains("no/such/binary"), "{err}");
    assert_eq!(err.failure_kind(), pb::FailureKind::Permanent, "{err}");
    assert!(rt
        .list(&ContainerFilter::task(node, "task-bad"))
        .await
        .unwrap()
        .is_empty());

    // Stop and remove: an exit code, then nothing left.
    let code = rt
        .stop_and_remove(&sleeper.id, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(matches!(code, Some(137 | 143)), "{code:?}");
    assert!(rt.inspect(&sleeper.id).await.unwrap().is_none());
    assert_eq!(
        rt.stop_and_remove(&sleeper.id, Duration::from_secs(1))
            .await
            .unwrap(),
        None
    );
}
