//! A tower layer that times every gRPC call by method and status code
//! (`minkube_manager_grpc_request_duration_seconds`). Method labels come
//! from a fixed list, so a client cannot grow the label set by calling
//! made-up paths.
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;
use tower::{Layer, Service};

/// Methods of the minkube services, as labelled.
const METHODS: &[&str] = &[
    "/minkube.v1.ControlService/CreateTask",
    "/minkube.v1.ControlService/GetTask",
    "/minkube.v1.ControlService/ListTasks",
    "/minkube.v1.ControlService/StopTask",
    "/minkube.v1.ControlService/ListNodes",
    "/minkube.v1.ControlService/GetNode",
    "/minkube.v1.ControlService/WatchTasks",
    "/minkube.v1.AgentService/Register",
    "/minkube.v1.AgentService/Connect",
];

/// Services labelled by service only.
const SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The bounded label for a request path.
pub fn method_label(path: &str) -> &'static str {
    if let Some(m) = METHODS.iter().find(|m| **m == path) {
        return m;
    }
    SERVICES
        .iter()
        .find(|s| path.starts_with(**s))
        .copied()
        .unwrap_or("other")
}

/// Name of a numeric grpc-status.
pub fn code_label(status: Option<&str>) -> &'static str {
    match status.and_then(|s| s.parse::<i32>().ok()) {
        None | Some(0) => "OK",
        Some(c) => match tonic::Code::from_i32(c) {
            tonic::Code::Cancelled => "CANCELLED",
            tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
            tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            tonic::Code::NotFound => "NOT_FOUND",
            tonic::Code::AlreadyExists => "ALREADY_EXISTS",
            tonic::Code::PermissionDenied => "PERMISSION_DENIED",
            tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
            tonic::Code::OutOfRange => "OUT_OF_RANGE",
            tonic::Code::Unimplemented => "UNIMPLEMENTED",
            tonic::Code::Internal => "INTERNAL",
            tonic::Code::Unavailable => "UNAVAILABLE",
            tonic::Code::Unauthenticated => "UNAUTHENTICATED",
            _ => "UNKNOWN",
        },
    }
}

/// The histogram of successful calls of `METHODS[i]`: the common case,
/// looked up once instead of the macro's registry search per call.
fn ok_histogram(i: usize) -> &'static metrics::Histogram {
    static OK: [OnceLock<metrics::Histogram>; METHODS.len()] =
        [const { OnceLock::new() }; METHODS.len()];
    OK[i].get_or_init(|| {
        metrics::histogram!(
            "minkube_manager_grpc_request_duration_seconds",
            "method" => METHODS[i],
            "code" => "OK"
        )
    })
}

/// Adds [`GrpcMetrics`] around a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// Times calls of the wrapped service.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<http::Request<B>> for GrpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let known = METHODS.iter().position(|m| *m == path);
        let method = method_label(path);
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            // Errors travel as "trailers-only" responses, so the status is in
            // the headers; a call that answered normally is OK. (For streams
            // this is the time to the first response headers.)
            let code = match &res {
                Ok(r) => code_label(r.headers().get("grpc-status").and_then(|v| v.to_str().ok())),
                Err(_) => "UNKNOWN",
            };
            let elapsed = start.elapsed().as_secs_f64();
            match known {
                Some(i) if code == "OK" => ok_histogram(i).record(elapsed),
                _ => metrics::histogram!(
                    "minkube_manager_grpc_request_duration_seconds",
                    "method" => method,
                    "code" => code
                )
                .record(elapsed),
            }
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(
            method_label("/minkube.v1.ControlService/CreateTask"),
            "/minkube.v1.ControlService/CreateTask"
        );
        assert_eq!(method_label("/minkube.v1.ControlService/Made-Up"), "other");
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/"
        );
        assert_eq!(method_label("/x"), "other");
        assert_eq!(code_label(None), "OK");
        assert_eq!(code_label(Some("3")), "INVALID_ARGUMENT");
        assert_eq!(code_label(Some("junk")), "OK");
    }
}
