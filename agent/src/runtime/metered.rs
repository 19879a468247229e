//! A [`Runtime`] wrapper that times every Docker call by operation and
//! outcome (`minkube_agent_docker_request_duration_seconds`), so the agent's
//! view of the engine's latency is on /metrics.
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::BoxStream;
use minkube::pb::FailureKind;
use minkube_common::trace_context;
use tracing::{Instrument as _, Span};

use super::{
    ContainerFilter, ContainerInfo, ContainerRef, ContainerSpec, LogOptions, Runtime, RuntimeError,
    RuntimeEvent,
};

/// Outcome label of a call.
fn outcome<T>(r: &Result<T, RuntimeError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => match e.failure_kind() {
            FailureKind::Transient => "transient_error",
            FailureKind::Permanent => "permanent_error",
            _ => "error",
        },
    }
}

/// A `docker.<op>` span, inside a task's start or stop only (see
/// [`trace_context::inside_exported_span`]); a disabled span otherwise.
pub(crate) fn docker_span(op: &'static str) -> Span {
    if !trace_context::inside_exported_span() {
        return Span::none();
    }
    tracing::info_span!(
        "docker",
        otel.name = %format_args!("docker.{op}"),
        docker.operation = op,
        otel.status_code = tracing::field::Empty,
        error = tracing::field::Empty,
    )
}

async fn timed<T>(
    op: &'static str,
    call: impl Future<Output = Result<T, RuntimeError>>,
) -> Result<T, RuntimeError> {
    let span = docker_span(op);
    let start = Instant::now();
    let r = call.instrument(span.clone()).await;
    if let Err(e) = &r {
        span.record("otel.status_code", "ERROR");
        span.record("error", tracing::field::display(e));
    }
    metrics::histogram!(
        "minkube_agent_docker_request_duration_seconds",
        "op" => op,
        "outcome" => outcome(&r)
    )
    .record(start.elapsed().as_secs_f64());
    r
}

/// Times the calls of the runtime it wraps.
pub struct Metered {
    inner: Arc<dyn Runtime>,
}

impl Metered {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Runtime>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl Runtime for Metered {
    async fn ping(&self) -> Result<(), RuntimeError> {
        timed("ping", self.inner.ping()).await
    }
    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        timed("inspect_image", self.inner.image_present(image)).await
    }
    async fn pull_image(&self, image: &str) -> Result<(), RuntimeError> {
        timed("pull", self.inner.pull_image(image)).await
    }
    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<ContainerInfo, RuntimeError> {
        timed("create_and_start", self.inner.create_and_start(spec)).await
    }
    async fn start_existing(&self, container_id: &str) -> Result<ContainerInfo, RuntimeError> {
        timed("start", self.inner.start_existing(container_id)).await
    }
    async fn stop_and_remove(
        &self,
        container_id: &str,
        timeout: Duration,
    ) -> Result<Option<i32>, RuntimeError> {
        timed(
            "stop_and_remove",
            self.inner.stop_and_remove(container_id, timeout),
        )
        .await
    }
    async fn list(&self, filter: &ContainerFilter) -> Result<Vec<ContainerRef>, RuntimeError> {
        timed("list", self.inner.list(filter)).await
    }
    async fn inspect(&self, container_id: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        timed("inspect", self.inner.inspect(container_id)).await
    }
    fn events(
        &self,
        node_id: &str,
        since_secs: i64,
    ) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        metrics::counter!("minkube_agent_docker_event_subscriptions_total").increment(1);
        self.inner.events(node_id, since_secs)
    }
    fn logs(
        &self,
        container_id: &str,
        options: LogOptions,
    ) -> BoxStream<'static, Result<minkube::pb::LogChunk, RuntimeError>> {
        self.inner.logs(container_id, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_the_failure_kind() {
        assert_eq!(outcome::<()>(&Ok(())), "ok");
        let unavailable = RuntimeError::Unavailable("connection refused".into());
        assert_eq!(outcome::<()>(&Err(unavailable)), "transient_error");
    }
}
