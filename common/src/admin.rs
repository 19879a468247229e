//! The HTTP admin endpoint every binary serves next to its main job:
//! `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (ready for work: the manager serves gRPC, the agent holds its
//! stream). Metrics go through the `metrics` facade into one Prometheus
//! recorder per process.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Latency buckets (seconds) of every `*_seconds` histogram: 100 µs to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

/// Why the admin endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The metrics recorder could not be installed.
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
    /// The port could not be bound.
    #[error(
        "cannot listen on {addr} for the admin endpoint: {source} (pick another with --admin-port)"
    )]
    Bind {
        /// Requested address.
        addr: String,
        /// OS error.
        source: std::io::Error,
    },
}

/// Builds the process's Prometheus recorder (not yet installed).
pub fn recorder() -> Result<metrics_exporter_prometheus::PrometheusRecorder, AdminError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .map(PrometheusBuilder::build_recorder)
        .map_err(|e| AdminError::Recorder(e.to_string()))
}

/// Installs the recorder for the whole process; call once in `main`.
pub fn install_metrics() -> Result<PrometheusHandle, AdminError> {
    let recorder = recorder()?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| AdminError::Recorder(e.to_string()))?;
    Ok(handle)
}

/// Updates gauges computed from live state right before a scrape.
pub type Collect = Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    metrics: PrometheusHandle,
    ready: watch::Receiver<bool>,
    collect: Collect,
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    (s.collect)();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    if *s.ready.borrow() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Binds the admin port (`host:0` picks a free one).
pub async fn bind(host: &str, port: u16) -> Result<TcpListener, AdminError> {
    TcpListener::bind((host, port))
        .await
        .map_err(|source| AdminError::Bind {
            addr: format!("{host}:{port}"),
            source,
        })
}

/// Serves the admin endpoint on `listener` until `shutdown` completes.
/// `ready` drives `/readyz`; `collect` runs before each `/metrics` render.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    ready: watch::Receiver<bool>,
    collect: Collect,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AdminState {
            metrics,
            ready,
            collect,
        });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(?addr, error = %e, "admin endpoint failed");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get_text(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let recorder = recorder().unwrap();
        let handle = recorder.handle();
        let counter = metrics::with_local_recorder(
            &recorder,
            || metrics::counter!("minkube_test_total", "kind" => "x"),
        );
        counter.increment(3);
        let listener = bind("127.0.0.1", 0).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ready_tx, ready) = watch::channel(false);
        let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, handle, ready, Arc::new(|| {}), async {
            let _ = stop.await;
        }));
        assert!(get_text(addr, "/healthz").await.starts_with("HTTP/1.0 200"));
        assert!(get_text(addr, "/readyz").await.contains("503"));
        ready_tx.send(true).unwrap();
        assert!(get_text(addr, "/readyz").await.contains("200 OK"));
        let m = get_text(addr, "/metrics").await;
        assert!(m.contains("minkube_test_total{kind=\"x\"} 3"), "{m}");
        let _ = stop_tx.send(());
        server.await.unwrap();
    }
}
