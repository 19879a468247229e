//! Wiring: store, cluster, gRPC server, graceful shutdown.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use minkube::pb::agent_service_server::AgentServiceServer;
use minkube::pb::control_service_server::ControlServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::access::AccessApi;
use crate::api::{AgentApi, ControlApi};
use crate::auth::layer::AuthLayer;
use crate::cluster::{Cluster, ClusterConfig};
use crate::config::Args;
use crate::error::ManagerError;
use crate::introspection;
use crate::pki::Pki;
use crate::policy::RetryTimings;
use crate::store::{RedbStore, Store};
use metrics_exporter_prometheus::PrometheusHandle;
use minkube::pb::access_service_server::AccessServiceServer;
use minkube_common::admin;
use minkube_common::retry::Backoff;

/// A failure to start or run the manager.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Could not listen.
    #[error("cannot listen on {addr}: {source} (is the port in use? pick another with --port)")]
    Bind {
        /// Requested address.
        addr: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The store or cluster failed to start.
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// The admin endpoint could not start.
    #[error(transparent)]
    Admin(#[from] minkube_common::admin::AdminError),
    /// Reflection could not be set up.
    #[error(transparent)]
    Reflection(#[from] crate::introspection::ReflectionError),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A started manager: store loaded, ports bound, not yet serving.
pub struct Manager {
    cluster: Arc<Cluster>,
    /// The cluster CA; None with `--insecure`.
    pki: Option<Arc<Pki>>,
    listener: TcpListener,
    admin: TcpListener,
    args: Args,
}

impl Manager {
    /// Opens the store in `args.data_dir`, loads it and binds the port.
    pub async fn start(args: Args) -> Result<Self, ServeError> {
        let pki = if args.insecure {
            tracing::warn!(
                "--insecure: serving plaintext gRPC WITHOUT authentication; anyone who reaches {}:{} can run containers",
                args.host,
                args.port
            );
            None
        } else {
            Some(Arc::new(
                Pki::load(&args.data_dir)
                    .map_err(ManagerError::from)?
                    .with_node_cert_ttl(args.node_cert_ttl),
            ))
        };
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&args.data_dir).map_err(ManagerError::from)?);
        let config = ClusterConfig {
            heartbeat_interval: args.heartbeat_interval,
            node_timeout: args.node_timeout,
            reconnect_grace: args.reconnect_grace,
            retry: RetryTimings {
                backoff: Backoff {
                    initial: args.retry_backoff,
                    max: args.retry_backoff_max.max(args.retry_backoff),
                    multiplier: 2.0,
                },
            },
            retention: args.retention,
            join_token_ttl: (!args.join_token_ttl.is_zero()).then_some(args.join_token_ttl),
            max_finished_tasks: args.max_finished_tasks,
            commit_delay: args.commit_delay,
            allowed_host_access: args.allowed_host_access(),
            ..ClusterConfig::default()
        };
        let cluster = Cluster::start(store, config)?;
        let addr = format!("{}:{}", args.host, args.port);
        let listener = TcpListener::bind((args.host.as_str(), args.port))
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let admin = admin::bind(&args.admin_host, args.admin_port).await?;
        Ok(Self {
            cluster,
            pki,
            listener,
            admin,
            args,
        })
    }

    /// The bound admin address (useful with port 0).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `signal` completes, then shuts down gracefully: sessions
    /// end, in-flight requests finish (bounded by the grace period) and the
    /// store is flushed.
    pub async fn serve(
        self,
        metrics: Option<PrometheusHandle>,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Self {
            cluster,
            pki,
            listener,
            admin,
            args,
        } = self;
        let (ready_tx, ready) = tokio::sync::watch::channel(true);
        let systemd = minkube_common::sd_notify::Notifier::from_env();
        let serving_on = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let admin_task = metrics.map(|handle| {
            let c = Arc::clone(&cluster);
            let collect: admin::Collect = Arc::new(move || c.collect_gauges());
            let stop = cluster.shutdown.clone();
            tokio::spawn(admin::serve(admin, handle, ready, collect, async move {
                stop.cancelled().await;
            }))
        });
        let limit = args.max_request_bytes;
        let control = ControlServiceServer::new(ControlApi::new(Arc::clone(&cluster)))
            .max_decoding_message_size(limit);
        let agent = AgentServiceServer::new(AgentApi::new(Arc::clone(&cluster), pki.clone()))
            .max_decoding_message_size(limit);
        let access = AccessServiceServer::new(AccessApi::new(Arc::clone(&cluster)))
            .max_decoding_message_size(limit);
        let (health, health_service) = introspection::health().await;
        let reflection_v1 = introspection::reflection_v1()?;
        let reflection_v1alpha = introspection::reflection_v1alpha()?;
        let stop = cluster.shutdown.clone();
        let c = Arc::clone(&cluster);
        let notifier = systemd.clone();
        let on_signal = async move {
            signal.await;
            notifier.stopping("shutting down: closing agent sessions, flushing the store");
            let _ = ready_tx.send(false);
            introspection::set_all(&health, tonic_health::ServingStatus::NotServing).await;
            tracing::info!("shutting down: closing agent sessions");
            // Ending the sessions lets their streams finish, so the server's
            // graceful stop does not wait on them forever.
            c.shutdown.cancel();
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some(pki) = &pki {
            builder = builder.tls_config(pki.server_tls())?;
        }
        let server = builder
            .trace_fn(minkube_common::trace_context::grpc_server_span)
            .layer(crate::grpc_metrics::GrpcMetricsLayer)
            // Admission after auth: rate limits are per identity.
            .layer(AuthLayer::new(Arc::clone(&cluster), pki.is_some()))
            .layer(crate::limits::AdmissionLayer::new(crate::limits::Limits {
                rate_per_client: args.rate_limit,
                burst: args.rate_burst,
                max_in_flight: args.max_in_flight,
            }))
            .timeout(args.request_timeout)
            .max_concurrent_streams(Some(args.max_streams_per_connection))
            // Flow-control windows bound what one connection can make the
            // manager buffer (a flood waits in the client, not here).
            .initial_stream_window_size(Some(1024 * 1024))
            .initial_connection_window_size(Some(4 * 1024 * 1024))
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(control)
            .add_service(agent)
            .add_service(access)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(nodelay(TcpListenerStream::new(listener)), on_signal);
        tokio::pin!(server);
        // The listener is bound and the store loaded: calls are answered from
        // the first poll of `server` on.
        systemd.ready(&format!("serving gRPC on {serving_on}"));
        let watchdog = systemd.spawn_watchdog();
        let result = tokio::select! {
            r = &mut server => r.map_err(ServeError::from),
            () = async {
                stop.cancelled().await;
                tokio::time::sleep(args.shutdown_grace).await;
            } => {
                tracing::warn!("requests still open after {:?}; stopping anyway", args.shutdown_grace);
                Ok(())
            }
        };
        cluster.shutdown(args.shutdown_grace).await;
        if let Some(t) = admin_task {
            let _ = t.await;
        }
        tracing::info!("manager stopped");
        drop(watchdog);
        result
    }
}

/// Sets TCP_NODELAY on every accepted connection. The builder's
/// `tcp_nodelay` applies only to listeners it binds itself; without it,
/// Nagle's algorithm held multi-segment answers (a ListTasks page) for a
/// delayed ACK, about 40 ms each.
fn nodelay(
    incoming: TcpListenerStream,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    incoming.map(|conn| {
        if let Ok(stream) = &conn {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        }
        conn
    })
}
