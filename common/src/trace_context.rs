//! Trace-context propagation inside the manager and the agent: the remote
//! parent of a gRPC request, a span's context as the W3C map the protocol
//! carries, and spans parented by such a map.
use std::collections::HashMap;

use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::trace_ids::{self, Parent};

/// Spans that become OpenTelemetry spans: short operations with a clear
/// end. Process- and session-long spans (the agent's, a stream's) stay
/// log context only: a span is exported when it ends, and these may never.
pub const EXPORTED_SPANS: &[&str] = &[
    GRPC_REQUEST,
    "task.schedule",
    "task.start",
    "task.stop",
    "docker",
];

const GRPC_REQUEST: &str = "grpc.request";

/// Methods whose calls last as long as a session or a watch.
const STREAMING_METHODS: &[&str] = &[
    "minkube.v1.AgentService/Connect",
    "minkube.v1.ControlService/WatchTasks",
    "minkube.v1.ControlService/TaskLogs",
    "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Whether the gRPC method at `path` (`/pkg.Service/Method`, leading slash
/// optional) is a call that lasts as long as a session or a watch.
pub fn is_long_lived_stream(path: &str) -> bool {
    STREAMING_METHODS.contains(&path.trim_start_matches('/'))
}

/// Whether the current span is one of [`EXPORTED_SPANS`]: sub-operations
/// (e.g. Docker calls) get spans of their own only inside such a span, so
/// background work does not start a trace of its own.
pub fn inside_exported_span() -> bool {
    Span::current()
        .metadata()
        .is_some_and(|m| EXPORTED_SPANS.contains(&m.name()))
}

/// The span of one incoming gRPC request (for tonic's `trace_fn`), a child
/// of the caller's span when its metadata carries a `traceparent`. Unary
/// calls get a `grpc.request` span (exported); streams a `grpc.stream` span
/// (log context only).
pub fn grpc_server_span<B>(req: &tonic::codegen::http::Request<B>) -> Span {
    let path = req.uri().path().trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    if is_long_lived_stream(path) {
        return tracing::info_span!("grpc.stream", rpc.service = %service, rpc.method = %method);
    }
    let span = tracing::info_span!(
        "grpc.request",
        otel.name = %path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    // Before the span is entered: afterwards a parent can no longer be set.
    if trace_ids::has_ids(&span) {
        let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        if let Some(parent) = header(minkube::trace::TRACEPARENT)
            .and_then(|tp| Parent::parse(tp, header(minkube::trace::TRACESTATE)))
        {
            trace_ids::set_parent(&span, parent);
        }
    } else {
        let _ = span.set_parent(minkube::trace::from_headers(req.headers()));
    }
    span
}

/// The W3C map naming `span` as the parent; empty when spans are not
/// recorded (no telemetry installed, or not one of [`EXPORTED_SPANS`]).
pub fn context_of(span: &Span) -> HashMap<String, String> {
    trace_ids::with_ids(span, |ids| ids.to_map())
        .unwrap_or_else(|| minkube::trace::to_map(&span.context()))
}

/// The W3C map naming the current span as the parent.
pub fn current() -> HashMap<String, String> {
    context_of(&Span::current())
}

/// Makes the context in `map` the parent of `span`, which must not have
/// been entered yet. An empty or malformed map leaves `span` a root.
pub fn set_parent(span: &Span, map: &HashMap<String, String>) {
    if map.is_empty() {
        return;
    }
    if trace_ids::has_ids(span) {
        if let Some(parent) = Parent::from_map(map) {
            trace_ids::set_parent(span, parent);
        }
    } else {
        let _ = span.set_parent(minkube::trace::from_map(map));
    }
}

/// The trace id of the current span, for log lines and audit records.
pub fn current_trace_id() -> Option<String> {
    let span = Span::current();
    trace_ids::with_ids(&span, |ids| ids.trace_id_hex())
        .or_else(|| minkube::trace::trace_id(&span.context()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Runs `f` with each of the layers that give spans trace ids: the
    /// OpenTelemetry one (spans exported) and [`crate::trace_ids::IdLayer`].
    fn with_each_layer(f: impl Fn()) {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, &f);
        let subscriber = tracing_subscriber::registry().with(crate::trace_ids::IdLayer);
        tracing::subscriber::with_default(subscriber, &f);
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn child_span_continues_the_remote_trace() {
        with_each_layer(|| {
            let span = tracing::info_span!("child");
            set_parent(
                &span,
                &HashMap::from([("traceparent".into(), PARENT.into())]),
            );
            let map = context_of(&span);
            let tp = map.get("traceparent").unwrap();
            assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
            // A new span id, not the parent's.
            assert!(!tp.contains("00f067aa0ba902b7"));
            let _g = span.enter();
            assert_eq!(
                current_trace_id().as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736")
            );
        });
    }

    #[test]
    fn grpc_request_span_takes_the_callers_parent() {
        with_each_layer(|| {
            let req = tonic::codegen::http::Request::builder()
                .uri("/minkube.v1.ControlService/CreateTask")
                .header("traceparent", PARENT)
                .body(())
                .unwrap();
            let span = grpc_server_span(&req);
            assert!(context_of(&span)["traceparent"]
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
            // Without a caller's context the request starts a trace.
            let req = tonic::codegen::http::Request::builder()
                .uri("/minkube.v1.ControlService/CreateTask")
                .body(())
                .unwrap();
            let tp = context_of(&grpc_server_span(&req))["traceparent"].clone();
            assert!(tp.starts_with("00-") && tp.ends_with("-01"), "{tp}");
            assert!(!tp.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
        });
    }

    #[test]
    fn streams_get_a_log_only_span() {
        with_each_layer(|| {
            let req = tonic::codegen::http::Request::builder()
                .uri("/minkube.v1.AgentService/Connect")
                .body(())
                .unwrap();
            let span = grpc_server_span(&req);
            assert_eq!(span.metadata().unwrap().name(), "grpc.stream");
            assert!(!EXPORTED_SPANS.contains(&"grpc.stream"));
        });
    }

    #[test]
    fn sub_operations_only_inside_exported_spans() {
        with_each_layer(|| {
            assert!(!inside_exported_span());
            let agent = tracing::info_span!("agent");
            let _a = agent.enter();
            assert!(!inside_exported_span());
            let start = tracing::info_span!("task.start");
            let _s = start.enter();
            assert!(inside_exported_span());
        });
    }

    #[test]
    fn without_telemetry_maps_are_empty() {
        let span = tracing::info_span!("nothing");
        assert!(context_of(&span).is_empty());
    }
}
