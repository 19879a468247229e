//! The standard gRPC services tools expect: `grpc.health.v1.Health` (per
//! service and overall, "") and server reflection in both `v1` and `v1alpha`,
//! so every grpcurl version can `list` and `describe` without proto files.
use minkube::pb::agent_service_server::AgentServiceServer;
use minkube::pb::control_service_server::ControlServiceServer;
use tonic::server::NamedService;
use tonic_health::server::{health_reporter, HealthReporter};
use tonic_health::ServingStatus;

use crate::api::{AgentApi, ControlApi};

/// Health names: the overall status ("") and each minkube service.
fn service_names() -> [&'static str; 4] {
    [
        "",
        <minkube::pb::access_service_server::AccessServiceServer<crate::access::AccessApi> as NamedService>::NAME,
        <ControlServiceServer<ControlApi> as NamedService>::NAME,
        <AgentServiceServer<AgentApi> as NamedService>::NAME,
    ]
}

/// The health service, with every name SERVING, and its reporter.
pub async fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = health_reporter();
    set_all(&reporter, ServingStatus::Serving).await;
    (reporter, service)
}

/// Sets every name to `status` (NOT_SERVING when shutting down, so load
/// balancers and probes stop sending before the port closes).
pub async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for name in service_names() {
        reporter.set_service_status(name, status).await;
    }
}

/// A reflection service could not be built from the descriptor sets.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the reflection service: {0}")]
pub struct ReflectionError(String);

fn builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(minkube::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Reflection, v1.
pub fn reflection_v1() -> Result<
    tonic_reflection::pb::v1::server_reflection_server::ServerReflectionServer<
        impl tonic_reflection::pb::v1::server_reflection_server::ServerReflection,
    >,
    ReflectionError,
> {
    builder()
        .build_v1()
        .map_err(|e| ReflectionError(e.to_string()))
}

/// Reflection, v1alpha (older grpcurl and client libraries).
pub fn reflection_v1alpha() -> Result<
    tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflectionServer<
        impl tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflection,
    >,
    ReflectionError,
> {
    builder()
        .build_v1alpha()
        .map_err(|e| ReflectionError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_proto_services() {
        assert_eq!(
            service_names(),
            [
                "",
                "minkube.v1.AccessService",
                "minkube.v1.ControlService",
                "minkube.v1.AgentService"
            ]
        );
    }

    #[test]
    fn reflection_builds_from_the_embedded_descriptors() {
        assert!(reflection_v1().is_ok());
        assert!(reflection_v1alpha().is_ok());
    }
}
