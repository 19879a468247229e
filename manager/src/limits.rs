//! Request admission: a per-client rate limit (token bucket) and a cap on
//! unary calls in flight, both answered at once with RESOURCE_EXHAUSTED
//! instead of queueing, so one noisy client cannot slow the others or grow
//! the manager's memory. Also turns tonic's "cannot decode" INTERNAL into
//! INVALID_ARGUMENT: malformed bytes are the caller's fault.
//!
//! Clients are told apart by identity (token name, node name) when the
//! auth layer established one, else by peer IP address.
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use minkube_common::trace_context;

use crate::auth::Identity;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

/// Most distinct clients tracked; beyond it idle buckets are dropped.
const MAX_TRACKED_CLIENTS: usize = 10_000;

/// Admission settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests per second each client may make on average; 0 = no limit.
    pub rate_per_client: u32,
    /// Requests a client may make at once above its rate.
    pub burst: u32,
    /// Unary calls in flight over all clients.
    pub max_in_flight: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Who a bucket belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Client {
    /// An authenticated identity (its audit label).
    Identity(String),
    /// An address, for callers without one.
    Address(IpAddr),
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Client::Identity(who) => f.write_str(who),
            Client::Address(ip) => write!(f, "{ip}"),
        }
    }
}

/// Token buckets by client.
#[derive(Debug)]
struct Buckets {
    rate: f64,
    burst: f64,
    by_client: Mutex<HashMap<Client, Bucket>>,
}

impl Buckets {
    fn take(&self, client: &Client, now: Instant) -> bool {
        let Ok(mut map) = self.by_client.lock() else {
            return true;
        };
        if map.len() >= MAX_TRACKED_CLIENTS && !map.contains_key(client) {
            // Full buckets carry no information: forget them first.
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, b| refill(b, rate, burst, now) < burst);
        }
        let b = map.entry(client.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = refill(b, self.rate, self.burst, now);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn refill(b: &Bucket, rate: f64, burst: f64, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    (b.tokens + elapsed * rate).min(burst)
}

/// Adds [`Admission`] around a service.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    buckets: Option<Arc<Buckets>>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

impl AdmissionLayer {
    /// A layer enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        let buckets = (limits.rate_per_client > 0).then(|| {
            Arc::new(Buckets {
                rate: f64::from(limits.rate_per_client),
                burst: f64::from(limits.burst.max(1)),
                by_client: Mutex::new(HashMap::new()),
            })
        });
        let max = limits.max_in_flight.max(1);
        Self {
            buckets,
            in_flight: Arc::new(Semaphore::new(max)),
            max_in_flight: max,
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            layer: self.clone(),
        }
    }
}

/// Admits or refuses each call; see the module docs.
#[derive(Debug, Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The address of the client of a request, over plaintext or TLS.
pub fn peer_addr(ext: &http::Extensions) -> Option<std::net::SocketAddr> {
    ext.get::<TcpConnectInfo>()
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
        .and_then(TcpConnectInfo::remote_addr)
}

/// A trailers-only gRPC answer with `code` and `message`.
pub fn refusal<RB: Default>(code: tonic::Code, message: &str) -> http::Response<RB> {
    let mut res = http::Response::new(RB::default());
    let headers = res.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", http::HeaderValue::from(code as i32));
    if let Ok(v) = http::HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", v);
    }
    res
}

/// gRPC's percent-encoding of grpc-message (RFC: encode outside 0x20..0x7E and %).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// tonic answers undecodable request bytes with INTERNAL; they are the
/// caller's error, so the code becomes INVALID_ARGUMENT (message kept).
fn fix_decode_error<RB>(res: &mut http::Response<RB>) {
    let internal = res
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"13");
    let decode = res.headers().get("grpc-message").is_some_and(|v| {
        let m = v.as_bytes();
        m.starts_with(b"failed to decode") || m.starts_with(b"failed%20to%20decode")
    });
    if internal && decode {
        res.headers_mut().insert(
            "grpc-status",
            http::HeaderValue::from(tonic::Code::InvalidArgument as i32),
        );
    }
}

impl<S, B, RB> Service<http::Request<B>> for Admission<S>
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

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        // Session- and watch-long calls have caps of their own.
        let stream = trace_context::is_long_lived_stream(path);
        let client = match req.extensions().get::<Identity>() {
            Some(id @ (Identity::Token { .. } | Identity::Node { .. })) => {
                Some(Client::Identity(id.label()))
            }
            _ => peer_addr(req.extensions()).map(|a| Client::Address(a.ip())),
        };
        if let (Some(buckets), Some(client)) = (&self.layer.buckets, client) {
            if !buckets.take(&client, Instant::now()) {
                metrics::counter!("minkube_manager_requests_refused_total", "reason" => "rate_limited")
                    .increment(1);
                let msg = format!(
                    "too many requests from {client}: the limit is {} per second (burst {}); slow down and retry",
                    buckets.rate, buckets.burst
                );
                return Box::pin(async move { Ok(refusal(tonic::Code::ResourceExhausted, &msg)) });
            }
        }
        let permit: Option<OwnedSemaphorePermit> = if stream {
            None
        } else {
            match Arc::clone(&self.layer.in_flight).try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    metrics::counter!("minkube_manager_requests_refused_total", "reason" => "overloaded")
                        .increment(1);
                    let msg = format!(
                        "the manager is serving {} calls already; retry shortly",
                        self.layer.max_in_flight
                    );
                    return Box::pin(
                        async move { Ok(refusal(tonic::Code::ResourceExhausted, &msg)) },
                    );
                }
            }
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut res = fut.await;
            drop(permit);
            if let Ok(r) = &mut res {
                fix_decode_error(r);
            }
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn buckets(rate: f64, burst: f64) -> Buckets {
        Buckets {
            rate,
            burst,
            by_client: Mutex::new(HashMap::new()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_gets_its_burst_then_its_rate() {
        let b = buckets(10.0, 5.0);
        let a = Client::Address([127, 0, 0, 1].into());
        let other = Client::Identity("token/ci".into());
        let now = Instant::now();
        assert_eq!((0..8).filter(|_| b.take(&a, now)).count(), 5);
        // Another client is not affected.
        assert!(b.take(&other, now));
        // 10 per second: after 300 ms, three more.
        tokio::time::advance(Duration::from_millis(300)).await;
        let later = Instant::now();
        assert_eq!((0..8).filter(|_| b.take(&a, later)).count(), 3);
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("a b%é"), "a b%25%C3%A9");
    }

    #[test]
    fn decode_errors_become_invalid_argument() {
        let mut res = refusal::<()>(
            tonic::Code::Internal,
            "failed to decode Protobuf message: x",
        );
        fix_decode_error(&mut res);
        assert_eq!(res.headers()["grpc-status"], "3");
        let mut other = refusal::<()>(tonic::Code::Internal, "store failed");
        fix_decode_error(&mut other);
        assert_eq!(other.headers()["grpc-status"], "13");
    }
}
