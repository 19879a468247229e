//! Bad specs are refused with INVALID_ARGUMENT naming the field, and nothing
//! is stored.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use minkube::pb::{CreateTaskRequest, ListTasksRequest, PortSpec, Protocol, TaskSpec};
use minkube_integration_tests::Cluster;

async fn expect_invalid(cluster: &Cluster, spec: TaskSpec, field: &str) {
    let err = cluster
        .control()
        .await
        .create_task(CreateTaskRequest { spec: Some(spec) })
        .await
        .expect_err(&format!("a spec with a bad {field} must be refused"));
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "bad {field}: {err:?}"
    );
    assert!(
        err.message().contains(field),
        "the message names {field}: {:?}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_specs_are_refused_and_not_stored() {
    let cluster = Cluster::start(&[]).await;

    let mut spec = cluster.spec("small", &["true"]);
    spec.memory_mb = 4;
    expect_invalid(&cluster, spec, "spec.memory_mb").await;

    let mut spec = cluster.spec("no-image", &["true"]);
    spec.image = String::new();
    expect_invalid(&cluster, spec, "spec.image").await;

    let mut spec = cluster.spec("big-env", &["true"]);
    spec.env = HashMap::from([("BIG".to_string(), "x".repeat(2 * 1024 * 1024))]);
    expect_invalid(&cluster, spec, "spec.env").await;

    let mut spec = cluster.spec("bad-port", &["true"]);
    spec.ports = vec![PortSpec {
        container_port: 70000,
        protocol: Protocol::Tcp as i32,
    }];
    expect_invalid(&cluster, spec, "spec.ports").await;

    let spec = cluster.spec("Not_A_Label", &["true"]);
    expect_invalid(&cluster, spec, "spec.name").await;

    let mut spec = cluster.spec("reserved-label", &["true"]);
    spec.labels
        .insert("minkube.task-id".to_string(), "forged".to_string());
    expect_invalid(&cluster, spec, "spec.labels").await;

    let out = cluster.cli(&["run", "x", "--image", ""]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "`minkube run x --image ''` must fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("image"),
        "stderr names the image field: {stderr:?}"
    );

    let list = cluster.list(ListTasksRequest::default()).await;
    assert_eq!(list.total_count, 0, "nothing was stored: {:?}", list.tasks);
    assert!(list.tasks.is_empty());
}
