//! W3C trace context (`traceparent`, `tracestate`) in NATS headers, so one task is one trace
//! across services. Uses the OpenTelemetry context of the current `tracing` span; with no
//! OpenTelemetry layer installed, nothing is injected and extraction yields an empty context.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut HeaderMap);
impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// Reads trace context through a lookup function, so NATS headers, gRPC metadata and a stored
/// `traceparent` share one extractor.
struct LookupExtractor<'a>(&'a dyn Fn(&str) -> Option<&'a str>);
impl Extractor for LookupExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key)
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Writes the current span's trace context into `headers`.
pub fn inject(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// Makes `span` a child of the trace context that `lookup` finds (`traceparent`, and
/// `tracestate` when present); does nothing without a `traceparent`.
pub fn set_parent_from<'a>(span: &tracing::Span, lookup: &'a dyn Fn(&str) -> Option<&'a str>) {
    if lookup("traceparent").is_some() {
        let cx = TraceContextPropagator::new().extract(&LookupExtractor(lookup));
        let _ = span.set_parent(cx);
    }
}

/// Makes `span` a child of the trace context found in `headers`, if any.
pub fn set_parent(span: &tracing::Span, headers: Option<&HeaderMap>) {
    if let Some(h) = headers {
        set_parent_from(span, &|k| h.get(k).map(|v| v.as_str()));
    }
}

/// The current span's `traceparent` (empty when there is no trace context).
pub fn current_traceparent() -> String {
    let mut headers = HeaderMap::new();
    inject(&mut headers);
    headers
        .get("traceparent")
        .map(|v| v.as_str().to_string())
        .unwrap_or_default()
}

/// Makes `span` a child of a stored `traceparent` (ignored when empty or malformed).
pub fn set_parent_traceparent(span: &tracing::Span, traceparent: &str) {
    if !traceparent.is_empty() {
        set_parent_from(span, &|k| (k == "traceparent").then_some(traceparent));
    }
}
