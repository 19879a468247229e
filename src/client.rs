//! Typed client helpers: turn a user-supplied manager address into a channel
//! and the two service clients.
use std::time::Duration;

use std::collections::HashMap;
use std::sync::Arc;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::pb::agent_service_client::AgentServiceClient;
use crate::pb::control_service_client::ControlServiceClient;

/// Client of the user-facing API.
pub type ControlClient = ControlServiceClient<Channel>;
/// Client of the user-facing API that adds [`CallMetadata`] to each call.
pub type TracedControlClient = ControlServiceClient<InterceptedService<Channel, CallMetadata>>;
/// Client of the access API that adds [`CallMetadata`] to each call.
pub type AccessClient = crate::pb::access_service_client::AccessServiceClient<
    InterceptedService<Channel, CallMetadata>,
>;

/// Metadata added to every call of a client: the bearer token and the W3C
/// trace context of the caller's span.
#[derive(Debug, Clone, Default)]
pub struct CallMetadata(Arc<HashMap<String, String>>);

impl CallMetadata {
    /// Makes `cx` the parent of the manager's spans (nothing if `cx` holds
    /// no valid span).
    pub fn with_trace(self, cx: &opentelemetry::Context) -> Self {
        let mut map = (*self.0).clone();
        map.extend(crate::trace::to_map(cx));
        Self(Arc::new(map))
    }

    /// Authenticates calls with `token` (`authorization: Bearer <token>`).
    pub fn with_bearer(self, token: &str) -> Self {
        let mut map = (*self.0).clone();
        map.insert("authorization".into(), format!("Bearer {}", token.trim()));
        Self(Arc::new(map))
    }
}

impl tonic::service::Interceptor for CallMetadata {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        crate::trace::insert_all(&self.0, req.metadata_mut());
        Ok(req)
    }
}
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

/// Like [`endpoint_uri`], with the `https` scheme for TLS.
fn tls_uri(address: &str) -> String {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    format!("https://{rest}")
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
    channel_with(address, None).await
}

/// Dials the manager, over TLS when `tls` is given (the server is verified
/// against its CA; an identity in `tls` is presented as client certificate).
pub async fn channel_with(
    address: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Channel, ConnectError> {
    let err = |source| ConnectError {
        address: address.to_string(),
        source,
    };
    let endpoint = match tls {
        None => endpoint(address)?,
        Some(tls) => endpoint(&tls_uri(address))?
            .tls_config(tls.clone())
            .map_err(err)?,
    };
    endpoint.connect().await.map_err(err)
}

/// Dials the manager and returns a client of the user-facing API.
pub async fn control(address: &str) -> Result<ControlClient, ConnectError> {
    Ok(ControlServiceClient::new(channel(address).await?))
}

/// Dials the manager and returns a client of the agent API.
pub async fn agent(address: &str) -> Result<AgentClient, ConnectError> {
    Ok(AgentServiceClient::new(channel(address).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_addresses_get_https_scheme() {
        assert_eq!(tls_uri("127.0.0.1:7070"), "https://127.0.0.1:7070");
        assert_eq!(tls_uri("http://h:1"), "https://h:1");
    }

    #[test]
    fn call_metadata_adds_bearer_and_traceparent() {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
        };
        use tonic::service::Interceptor as _;
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex"),
            SpanId::from_hex("00f067aa0ba902b7").expect("hex"),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sc);
        let mut m = CallMetadata::default()
            .with_trace(&cx)
            .with_bearer(" s3cret\n");
        let req = m.call(tonic::Request::new(())).expect("ok");
        assert_eq!(
            req.metadata().get("authorization").expect("auth"),
            "Bearer s3cret"
        );
        assert!(req.metadata().get("traceparent").is_some());
        let mut none = CallMetadata::default();
        assert!(none
            .call(tonic::Request::new(()))
            .expect("ok")
            .metadata()
            .is_empty());
    }

    #[test]
    fn bare_address_gets_http_scheme() {
        assert_eq!(endpoint_uri("127.0.0.1:7070"), "http://127.0.0.1:7070");
        assert_eq!(endpoint_uri("http://h:1"), "http://h:1");
    }
}
