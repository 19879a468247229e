//! Trace ids without an exporter. When no OpenTelemetry collector is
//! configured, [`IdLayer`] stands in for the OpenTelemetry layer: it gives
//! minkube's operation spans W3C trace and span ids, and nothing else, so
//! that requests and tasks still carry one trace through the cluster (log
//! lines, audit records, the agent's spans, a container's environment). The
//! OpenTelemetry layer builds a span for the exporter (attributes,
//! timestamps, a builder per span) even when nothing is exported: ~9% of a
//! manager's CPU under a load of `CreateTask`s.
use std::collections::HashMap;
use std::fmt::Write as _;

use tracing::span::{Attributes, Id};
use tracing::{Span, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Registry;

use minkube::trace::{TRACEPARENT, TRACESTATE};

/// A span's place in a trace, as W3C trace context names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpanIds {
    trace_id: u128,
    span_id: u64,
    sampled: bool,
    /// `tracestate` of the remote parent, if it had one.
    state: Option<Box<str>>,
}

/// A remote parent: what a `traceparent` (and `tracestate`) names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parent {
    trace_id: u128,
    sampled: bool,
    state: Option<Box<str>>,
}

impl SpanIds {
    /// A new trace, sampled (what OpenTelemetry's default sampler does for
    /// a root).
    fn root() -> Self {
        Self {
            trace_id: nonzero(rand::random),
            span_id: new_span_id(),
            sampled: true,
            state: None,
        }
    }

    /// A child span in the same trace.
    fn child(&self) -> Self {
        Self {
            span_id: new_span_id(),
            ..self.clone()
        }
    }

    /// Continues `parent`'s trace; the span keeps its own id.
    fn adopt(&mut self, parent: Parent) {
        self.trace_id = parent.trace_id;
        self.sampled = parent.sampled;
        self.state = parent.state;
    }

    /// The trace id as 32 lowercase hex digits.
    pub(crate) fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The W3C headers naming this span as the parent.
    pub(crate) fn to_map(&self) -> HashMap<String, String> {
        let mut tp = String::with_capacity(55);
        let _ = write!(
            tp,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        );
        let mut map = HashMap::with_capacity(2);
        map.insert(TRACEPARENT.to_string(), tp);
        if let Some(state) = &self.state {
            map.insert(TRACESTATE.to_string(), state.to_string());
        }
        map
    }
}

fn new_span_id() -> u64 {
    nonzero(rand::random)
}

/// All-zero ids are invalid in W3C trace context.
fn nonzero<T: Default + PartialEq>(mut gen: impl FnMut() -> T) -> T {
    loop {
        let v = gen();
        if v != T::default() {
            return v;
        }
    }
}

impl Parent {
    /// The parent named by a `traceparent` value (and the `tracestate` that
    /// came with it); `None` when it is malformed, as W3C asks receivers to
    /// treat it (the span then starts a new trace).
    pub(crate) fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // Version 00 has exactly four fields; later versions may add some.
        if version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        hex(version, 2)?;
        let trace_id = u128::from_str_radix(hex(trace, 32)?, 16).ok()?;
        let span_id = u64::from_str_radix(hex(span, 16)?, 16).ok()?;
        let flags = u8::from_str_radix(hex(flags, 2)?, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            sampled: flags & 1 == 1,
            state: tracestate
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(Box::from),
        })
    }

    /// The parent named by W3C headers in a map.
    pub(crate) fn from_map(map: &HashMap<String, String>) -> Option<Self> {
        let tp = map.get(TRACEPARENT)?;
        Self::parse(tp, map.get(TRACESTATE).map(String::as_str))
    }
}

/// `s` if it is exactly `len` lowercase hex digits, as W3C requires.
fn hex(s: &str, len: usize) -> Option<&str> {
    (s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(s)
}

/// Gives each span it sees (install it behind the filter of exported
/// spans) [`SpanIds`]: a child of the nearest ancestor that has them, else
/// a new trace. [`set_parent`] makes a remote caller the parent.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdLayer;

impl<S> Layer<S> for IdLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, _attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let ids = span
            .scope()
            .skip(1)
            .find_map(|s| s.extensions().get::<SpanIds>().map(SpanIds::child))
            .unwrap_or_else(SpanIds::root);
        span.extensions_mut().insert(ids);
    }
}

/// Runs `f` on the ids [`IdLayer`] gave `span`; `None` when it has none (the
/// layer is not installed, or the span is not one of the exported ones).
pub(crate) fn with_ids<R>(span: &Span, f: impl FnOnce(&mut SpanIds) -> R) -> Option<R> {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let data = registry.span(id)?;
        let mut ext = data.extensions_mut();
        ext.get_mut::<SpanIds>().map(f)
    })
    .flatten()
}

/// Whether [`IdLayer`] gave `span` ids.
pub(crate) fn has_ids(span: &Span) -> bool {
    with_ids(span, |_| ()).is_some()
}

/// Makes `parent` the parent of `span`, if `span` has ids from [`IdLayer`].
/// Spans already created inside `span` keep the trace they started with:
/// call it before the span is entered.
pub(crate) fn set_parent(span: &Span, parent: Parent) {
    with_ids(span, |ids| ids.adopt(parent));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn with_ids_layer<R>(f: impl FnOnce() -> R) -> R {
        let subscriber = tracing_subscriber::registry().with(IdLayer);
        tracing::subscriber::with_default(subscriber, f)
    }

    fn ids(span: &Span) -> SpanIds {
        with_ids(span, |i| i.clone()).unwrap()
    }

    #[test]
    fn a_root_starts_a_sampled_trace_and_children_share_it() {
        with_ids_layer(|| {
            let root = tracing::info_span!("root");
            let r = ids(&root);
            assert!(r.sampled && r.trace_id != 0 && r.span_id != 0);
            let child = root.in_scope(|| tracing::info_span!("child"));
            let c = ids(&child);
            assert_eq!(c.trace_id, r.trace_id);
            assert_ne!(c.span_id, r.span_id);
            // Another root: another trace.
            assert_ne!(ids(&tracing::info_span!("other")).trace_id, r.trace_id);
        });
    }

    #[test]
    fn a_remote_parent_is_continued_with_its_state() {
        with_ids_layer(|| {
            let span = tracing::info_span!("request");
            let own = ids(&span).span_id;
            let parent = Parent::parse(PARENT, Some("vendor=abc")).unwrap();
            assert!(has_ids(&span));
            set_parent(&span, parent);
            let map = ids(&span).to_map();
            assert_eq!(
                map[TRACEPARENT],
                format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{own:016x}-01")
            );
            assert_eq!(map[TRACESTATE], "vendor=abc");
            let child = span.in_scope(|| tracing::info_span!("child"));
            assert_eq!(
                ids(&child).trace_id_hex(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
        });
    }

    #[test]
    fn an_unsampled_parent_keeps_its_children_unsampled() {
        with_ids_layer(|| {
            let span = tracing::info_span!("request");
            let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
            set_parent(&span, Parent::parse(tp, None).unwrap());
            let child = span.in_scope(|| tracing::info_span!("child"));
            assert!(ids(&child).to_map()[TRACEPARENT].ends_with("-00"));
        });
    }

    #[test]
    fn malformed_parents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            assert_eq!(Parent::parse(bad, None), None, "{bad:?}");
        }
        // A later version may carry more fields.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        assert!(Parent::parse(later, None).is_some());
    }

    #[test]
    fn without_the_layer_there_are_no_ids() {
        let span = tracing::info_span!("nothing");
        assert!(!has_ids(&span));
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            assert!(!has_ids(&tracing::info_span!("plain")));
        });
    }
}
