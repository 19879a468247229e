//! The CLI's part of a trace: one client span per command, the root of the
//! trace unless the environment already names a parent (`TRACEPARENT`, as
//! an instrumented script would set). Its context goes with every call.
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracerProvider;

/// The span of one command, if tracing is on.
pub struct CommandTrace {
    provider: Option<SdkTracerProvider>,
    cx: Context,
}

impl CommandTrace {
    /// Starts the command's span when `--trace` is given or spans are to be
    /// exported (`OTEL_EXPORTER_OTLP_ENDPOINT`); otherwise does nothing.
    /// Must run inside the Tokio runtime that outlives [`Self::finish`].
    pub fn start(command: &str, forced: bool) -> Self {
        if !forced && !minkube::trace::export_configured() {
            return Self::off();
        }
        let provider = match minkube::trace::tracer_provider("minkube") {
            Ok(p) => p,
            Err(e) => {
                eprintln!(
                    "warning: tracing is off: {e} (check the OTEL_EXPORTER_OTLP_* variables)"
                );
                return Self::off();
            }
        };
        let tracer = provider.tracer("minkube");
        let parent = std::env::var("TRACEPARENT")
            .map(|tp| {
                let mut map = std::collections::HashMap::from([(
                    minkube::trace::TRACEPARENT.to_string(),
                    tp,
                )]);
                if let Ok(ts) = std::env::var("TRACESTATE") {
                    map.insert(minkube::trace::TRACESTATE.to_string(), ts);
                }
                minkube::trace::from_map(&map)
            })
            .unwrap_or_default();
        let span = tracer
            .span_builder(format!("minkube {command}"))
            .with_kind(SpanKind::Client)
            .with_attributes([KeyValue::new("minkube.command", command.to_string())])
            .start_with_context(&tracer, &parent);
        Self {
            provider: Some(provider),
            cx: parent.with_span(span),
        }
    }

    fn off() -> Self {
        Self {
            provider: None,
            cx: Context::new(),
        }
    }

    /// The trace id, when the command is traced.
    pub fn trace_id(&self) -> Option<String> {
        minkube::trace::trace_id(&self.cx)
    }

    /// The command's span, the parent of the manager's (empty when off).
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// Ends the span (marked failed with `error`) and sends the queued
    /// spans. Blocks: call it outside async code, with the runtime alive.
    pub fn finish(self, error: Option<String>) {
        let Some(provider) = self.provider else {
            return;
        };
        let span = self.cx.span();
        if let Some(e) = error {
            span.set_status(Status::error(e));
        }
        span.end();
        if let Err(e) = provider.shutdown() {
            eprintln!("warning: cannot send the command's spans: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_trace_has_an_id_and_headers() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let _g = rt.enter();
        let t = CommandTrace::start("ps", true);
        let id = t.trace_id().expect("a trace id");
        assert_eq!(id.len(), 32);
        let tp = minkube::trace::to_map(t.context());
        assert!(tp["traceparent"].contains(&id));
        t.finish(None);
    }

    #[test]
    fn untraced_command_sends_nothing() {
        let t = CommandTrace::off();
        assert_eq!(t.trace_id(), None);
        assert!(minkube::trace::to_map(t.context()).is_empty());
        t.finish(None);
    }
}
