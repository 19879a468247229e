//! Typed client helpers: turn a user-supplied manager address into a channel
//! and the two service clients.
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::trace::TraceHeaders;

use crate::pb::agent_service_client::AgentServiceClient;
use crate::pb::control_service_client::ControlServiceClient;

/// Client of the user-facing API.
pub type ControlClient = ControlServiceClient<Channel>;
/// Client of the user-facing API that sends W3C trace headers with each call.
pub type TracedControlClient = ControlServiceClient<InterceptedService<Channel, TraceHeaders>>;
/// Client of the agent API.
pub type AgentClient = AgentServiceClient<Channel>;

/// Error building or dialling a manager address.
#[derive(Debug)]
pub struct ConnectError {
    /// The address as given.
    pub address: String,
    /// What went wrong.
    pub source: tonic::transport::Error,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot reach the manager at {}: {} (is minkube-manager running? set --manager or MINKUBE_MANAGER)",
            self.address, self.source
        )
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Accepts `host:port` or a full `http://host:port` URL.
pub fn endpoint_uri(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// Builds an endpoint with the timeouts every minkube client uses.
pub fn endpoint(address: &str) -> Result<Endpoint, ConnectError> {
    Endpoint::from_shared(endpoint_uri(address))
        .map(|e| {
            e.connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
        })
        .map_err(|source| ConnectError {
            address: address.to_string(),
            source,
        })
}

/// Dials the manager.
pub async fn channel(address: &str) -> Result<Channel, ConnectError> {
    endpoint(address)?
        .connect()
        .await
        .map_err(|source| ConnectError {
            address: address.to_string(),
            source,
        })
}

/// Dials the manager and returns a client of the user-facing API.
pub async fn control(address: &str) -> Result<ControlClient, ConnectError> {
    Ok(ControlServiceClient::new(channel(address).await?))
}

/// Dials the manager and returns a client of the user-facing API whose
/// calls carry `headers` (see [`crate::trace`]).
pub async fn control_traced(
    address: &str,
    headers: TraceHeaders,
) -> Result<TracedControlClient, ConnectError> {
    Ok(ControlServiceClient::with_interceptor(
        channel(address).await?,
        headers,
    ))
}

/// Dials the manager and returns a client of the agent API.
pub async fn agent(address: &str) -> Result<AgentClient, ConnectError> {
    Ok(AgentServiceClient::new(channel(address).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_address_gets_http_scheme() {
        assert_eq!(endpoint_uri("127.0.0.1:7070"), "http://127.0.0.1:7070");
        assert_eq!(endpoint_uri("http://h:1"), "http://h:1");
    }
}
