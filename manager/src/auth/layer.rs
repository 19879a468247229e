//! The tower layer that authenticates every call (node certificate or
//! bearer token), enforces the access table, hands the [`Identity`] to the
//! handlers (request extension) and writes the audit log: one record per
//! mutating call and per denial, to the `minkube_audit` target.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use super::{access_for, authorize, role_name, Identity};
use crate::cluster::Cluster;
use crate::limits::{peer_addr, refusal};

/// Adds [`Auth`] around a service.
#[derive(Clone)]
pub struct AuthLayer {
    cluster: Arc<Cluster>,
    /// False with `--insecure`: no authentication, everyone is admin.
    secure: bool,
}

impl AuthLayer {
    /// Authenticates against `cluster`'s tokens, or not at all when `secure` is false.
    pub fn new(cluster: Arc<Cluster>, secure: bool) -> Self {
        Self { cluster, secure }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

/// The bearer token of a request, if any.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The node named by the client certificate, if one was presented, and
/// when that certificate was issued (Unix seconds).
fn node_of(ext: &http::Extensions) -> Option<(String, i64)> {
    let certs = ext.get::<TlsConnectInfo<TcpConnectInfo>>()?.peer_certs()?;
    let (name, not_before, not_after) =
        minkube_common::tls::node_certificate_of(certs.first()?.as_ref())?;
    Some((name, crate::pki::issued_at(not_before, not_after)))
}

impl AuthLayer {
    fn identify<B>(&self, req: &http::Request<B>) -> Result<Identity, tonic::Status> {
        if !self.secure {
            return Ok(Identity::Anonymous);
        }
        if let Some((name, issued_at)) = node_of(req.extensions()) {
            if let Some(at) = self.cluster.lock().access.node_removed(&name, issued_at) {
                let node = format!("{name:?} (its certificate is revoked)");
                return Err(crate::error::ManagerError::NodeRemoved { node, at }.into());
            }
            return Ok(Identity::Node { name });
        }
        match bearer(req.headers()) {
            None => Ok(Identity::Unauthenticated),
            Some(secret) => match self.cluster.lock().access.authenticate(secret) {
                Some((name, role)) => Ok(Identity::Token { name, role }),
                None => Err(tonic::Status::unauthenticated(
                    "the bearer token is not valid (mistyped, or revoked): ask an admin for one (`minkube token create`)",
                )),
            },
        }
    }
}

/// One audit record.
fn audit(who: &Identity, method: &str, code: &str, detail: &str, peer: &str, trace_id: &str) {
    tracing::info!(
        target: "minkube_audit",
        who = %who.label(),
        role = role_name(who.role()),
        method,
        outcome = code,
        detail,
        peer,
        trace_id,
        "audit"
    );
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_string();
        let (access, mutating) = access_for(&method);
        let peer = peer_addr(req.extensions())
            .map(|a| a.to_string())
            .unwrap_or_default();
        let trace_id = req
            .headers()
            .get(minkube::trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(minkube::trace::trace_id_of_traceparent)
            .unwrap_or_default()
            .to_string();
        let verdict = match self.layer.identify(&req) {
            Ok(id) => authorize(&id, access, &method)
                .map(|()| id.clone())
                .map_err(|s| (id, s)),
            Err(s) => Err((Identity::Unauthenticated, s)),
        };
        let identity = match verdict {
            Ok(id) => id,
            Err((who, status)) => {
                let code =
                    crate::grpc_metrics::code_label(Some(&(status.code() as i32).to_string()));
                audit(&who, &method, code, status.message(), &peer, &trace_id);
                metrics::counter!("minkube_manager_requests_refused_total", "reason" => "unauthorized")
                    .increment(1);
                let mut res = refusal(status.code(), status.message());
                // A removed node's agent learns it is removed from this key.
                let removed = status.metadata().get(minkube::NODE_REMOVED_METADATA);
                if let Some(v) = removed.and_then(|v| v.to_str().ok()) {
                    if let Ok(v) = http::HeaderValue::from_str(v) {
                        res.headers_mut().insert(minkube::NODE_REMOVED_METADATA, v);
                    }
                }
                return Box::pin(async move { Ok(res) });
            }
        };
        req.extensions_mut().insert(identity.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            if mutating {
                let code = match &res {
                    Ok(r) => crate::grpc_metrics::code_label(
                        r.headers().get("grpc-status").and_then(|v| v.to_str().ok()),
                    ),
                    Err(_) => "UNKNOWN",
                };
                audit(&identity, &method, code, "", &peer, &trace_id);
            }
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            "authorization",
            http::HeaderValue::from_static("Bearer mkt_abc "),
        );
        assert_eq!(bearer(&h), Some("mkt_abc"));
        h.insert("authorization", http::HeaderValue::from_static("Basic xyz"));
        assert_eq!(bearer(&h), None);
    }
}
