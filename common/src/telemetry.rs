//! Telemetry setup shared by the binaries: human or JSON log lines on
//! stderr, level from `RUST_LOG` (default `info`), and OpenTelemetry spans.
use std::io::IsTerminal;
use std::str::FromStr;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{filter_fn, FilterExt as _, LevelFilter, Targets};
use tracing_subscriber::layer::Filter;

use crate::trace_context::EXPORTED_SPANS;
use crate::trace_ids::IdLayer;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, EnvFilter, Layer, Registry};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?}: use text or json")),
        }
    }
}

/// The process's telemetry: keep it until exit, then [`Telemetry::shutdown`]
/// so that queued spans are exported.
#[must_use = "call shutdown() before exit, or queued spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the span exporter. Blocks: call it from outside
    /// async code (after `block_on` returns, with the runtime still alive).
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                tracing::warn!(error = %e, "cannot flush spans to the OpenTelemetry collector");
            }
        }
    }
}

/// Which spans get trace ids: minkube's own operation spans
/// ([`EXPORTED_SPANS`]) and, when spans are exported, the log events inside
/// them. The HTTP/2 and gRPC libraries stay out, else the exporter would
/// trace its own calls. Without an exporter copying every log event into a
/// span nobody exports would be ~3% of a busy manager's CPU.
fn otel_filter(export: bool) -> impl Filter<Registry> {
    Targets::new()
        .with_default(LevelFilter::OFF)
        .with_target("minkube", LevelFilter::INFO)
        .and(filter_fn(move |m| {
            (export && m.is_event()) || EXPORTED_SPANS.contains(&m.name())
        }))
}

/// Installs the global subscriber: log lines on stderr (level from
/// `RUST_LOG`) and, for spans of minkube's own code, trace ids: OpenTelemetry
/// spans exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
/// (see [`minkube::trace::tracer_provider`]), else ids alone ([`IdLayer`]).
/// Call once, inside the Tokio runtime, before any work.
pub fn init(format: LogFormat, service_name: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,hyper=warn,tower=warn"));
    let ansi = std::io::stderr().is_terminal();
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let mut layers = vec![fmt];
    // Spans are built for OpenTelemetry only when they are exported; else
    // the id layer gives them their trace ids alone.
    let provider = if minkube::trace::export_configured() {
        match minkube::trace::tracer_provider(service_name) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("warning: OpenTelemetry export is off: {e} (check the OTEL_EXPORTER_OTLP_* variables)");
                None
            }
        }
    } else {
        None
    };
    match &provider {
        Some(p) => layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer(service_name))
                // Parents come from the span tree; nothing here reads the
                // OpenTelemetry "current context", and attaching it on every
                // poll of a request's future was a measurable cost.
                .with_context_activation(false)
                .with_filter(otel_filter(true))
                .boxed(),
        ),
        None => layers.push(IdLayer.with_filter(otel_filter(false)).boxed()),
    }
    // A second init (e.g. in tests) keeps the first subscriber.
    let installed = tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_ok();
    if installed && provider.is_some() {
        tracing::info!(service = service_name, "exporting spans over OTLP/gRPC");
    }
    Telemetry {
        provider: provider.filter(|_| installed),
    }
}
