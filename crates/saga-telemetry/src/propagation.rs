//! W3C trace context (`traceparent`, `tracestate`) carried in message headers, and the
//! span ids a journal records: the one place where libraries turn a `tracing` span into
//! headers and back.
//!
//! Every function works without an exporter: when no OpenTelemetry layer is installed a
//! span has no context, nothing is injected, and extracted contexts are simply ignored.

use std::collections::BTreeMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Header of the W3C trace parent (version, trace id, span id, flags).
pub const TRACEPARENT: &str = "traceparent";
/// Header of the W3C trace state (vendor entries).
pub const TRACESTATE: &str = "tracestate";

/// Message headers as the saga runtime keeps them (name to value).
pub type Headers = BTreeMap<String, String>;

struct Inject<'a>(&'a mut Headers);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

struct Extract<'a>(&'a Headers);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .or_else(|| {
                // Header names are case-insensitive to some senders.
                self.0
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, v)| v)
            })
            .map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Writes the context of `cx` into `headers` (nothing when it holds no valid span).
pub fn inject_context(cx: &Context, headers: &mut Headers) {
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(cx, &mut Inject(headers));
    }
}

/// Writes the context of `span` into `headers`, so that the receiver's span is its
/// child. Nothing is written when the span has no OpenTelemetry context.
pub fn inject(span: &Span, headers: &mut Headers) {
    inject_context(&span.context(), headers);
}

/// The remote context carried by `headers` (an empty context when they carry none or
/// an invalid one).
pub fn extract(headers: &Headers) -> Context {
    TraceContextPropagator::new().extract(&Extract(headers))
}

/// The context of a persisted `traceparent` (and `tracestate`, when kept).
pub fn context_from(traceparent: &str, tracestate: Option<&str>) -> Context {
    let mut headers = Headers::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    if let Some(state) = tracestate.filter(|s| !s.is_empty()) {
        headers.insert(TRACESTATE.to_string(), state.to_string());
    }
    extract(&headers)
}

/// Makes the context carried by `headers` the parent of `span` (call it before the span
/// is entered). Returns whether the headers carried a valid context.
pub fn set_parent(span: &Span, headers: &Headers) -> bool {
    let cx = extract(headers);
    set_parent_context(span, cx)
}

/// Makes `cx` the parent of `span` when it holds a valid span context.
pub fn set_parent_context(span: &Span, cx: Context) -> bool {
    if !cx.span().span_context().is_valid() {
        return false;
    }
    // Without an OpenTelemetry layer there is nothing to parent.
    span.set_parent(cx).is_ok()
}

/// Links `span` to the span of a persisted `traceparent` (a timer fired long after its
/// saga's start links to the saga's trace rather than growing it). Returns whether the
/// link was made.
pub fn link(span: &Span, traceparent: &str) -> bool {
    let cx = context_from(traceparent, None);
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return false;
    }
    span.add_link(sc);
    true
}

/// The span context of `span`, when it has a valid one.
pub fn span_context(span: &Span) -> Option<SpanContext> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// The `traceparent` of `span` (what a saga persists to continue its trace later).
pub fn traceparent(span: &Span) -> Option<String> {
    let mut headers = Headers::new();
    inject(span, &mut headers);
    headers.remove(TRACEPARENT)
}

/// Trace id and span id of `span`, lowercase hex (what a journal record names).
pub fn ids(span: &Span) -> Option<(String, String)> {
    span_context(span).map(|sc| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    fn remote() -> Context {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("saga", "x")]).unwrap(),
        );
        Context::new().with_remote_span_context(sc)
    }

    #[test]
    fn a_context_round_trips_through_headers() {
        let mut headers = Headers::from([("Saga-Id".to_string(), "s-1".to_string())]);
        inject_context(&remote(), &mut headers);
        assert_eq!(
            headers.get(TRACEPARENT).map(String::as_str),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(headers.get(TRACESTATE).map(String::as_str), Some("saga=x"));
        assert_eq!(headers.get("Saga-Id").map(String::as_str), Some("s-1"));

        let back = extract(&headers);
        let sc = back.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(sc.trace_state().header(), "saga=x");

        // A persisted traceparent restores the same context.
        let tp = headers[TRACEPARENT].clone();
        let again = context_from(&tp, Some("saga=x"));
        assert_eq!(again.span().span_context(), &sc);
    }

    #[test]
    fn no_context_nothing_injected_and_garbage_is_ignored() {
        let mut headers = Headers::new();
        inject_context(&Context::new(), &mut headers);
        assert!(headers.is_empty());
        // No layer installed: a span has no context.
        let span = tracing::info_span!("untraced");
        inject(&span, &mut headers);
        assert!(headers.is_empty());
        assert_eq!(traceparent(&span), None);
        assert!(!set_parent(&span, &Headers::new()));

        let bad = Headers::from([(TRACEPARENT.to_string(), "00-zz-yy-01".to_string())]);
        assert!(!extract(&bad).span().span_context().is_valid());
        assert!(!link(&span, "not a traceparent"));
    }

    #[test]
    fn a_span_carries_its_context_to_a_child_across_headers() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let publish = tracing::info_span!("publish", otel.kind = "producer");
            let mut headers = Headers::new();
            inject(&publish, &mut headers);
            let (trace_id, span_id) = ids(&publish).expect("a traced span has ids");
            assert_eq!(
                traceparent(&publish),
                Some(format!("00-{trace_id}-{span_id}-01"))
            );

            // The receiver: a root span parented by the headers.
            let process = tracing::info_span!(parent: None, "process", otel.kind = "consumer");
            assert!(set_parent(&process, &headers));
            let (child_trace, child_span) = ids(&process).unwrap();
            assert_eq!(child_trace, trace_id);
            assert_ne!(child_span, span_id);

            // A later input links to the persisted context instead.
            let timer = tracing::info_span!(parent: None, "timer");
            assert!(link(&timer, &format!("00-{trace_id}-{span_id}-01")));
            assert_ne!(ids(&timer).unwrap().0, trace_id);
        });
    }
}
