//! What tools and other languages expect of a gRPC server: the standard
//! health service, server reflection (v1 and v1alpha), and stubs generated
//! from proto/ in Python (run by integration-tests/python/clients.py).
#![allow(clippy::unwrap_used)]

use std::process::Command;

use minkube_integration_tests::Cluster;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

#[tokio::test(flavor = "multi_thread")]
async fn python_generated_client_and_reflection_client() {
    let cluster = Cluster::start(&[]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/clients.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(cluster.addr())
        .arg(cluster.run_id())
        .output()
        .expect(
            "python3 must be installed (.ci/run installs grpcio, grpcio-tools, grpcio-reflection)",
        );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("python clients: ok"),
        "python clients failed ({}):\n{stdout}\n{stderr}\n(needs: pip install grpcio grpcio-tools grpcio-reflection)",
        out.status
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_every_service() {
    let cluster = Cluster::start(&[]).await;
    let channel = minkube::client::channel(&cluster.addr()).await.unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "minkube.v1.ControlService", "minkube.v1.AgentService"] {
        let resp = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.status(), ServingStatus::Serving, "service {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_v1_lists_and_describes() {
    let cluster = Cluster::start(&[]).await;
    let channel = minkube::client::channel(&cluster.addr()).await.unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let requests = tokio_stream::iter([
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "minkube.v1.ControlService".into(),
            )),
        },
    ]);
    let mut responses = client
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let first = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("expected a service list, got {first:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "minkube.v1.ControlService",
        "minkube.v1.AgentService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let second = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = second.message_response else {
        panic!("expected file descriptors, got {second:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}
