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

struct HeaderExtractor<'a>(&'a HeaderMap);
impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
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

/// Makes `span` a child of the trace context found in `headers`, if any.
pub fn set_parent(span: &tracing::Span, headers: Option<&HeaderMap>) {
    if let Some(h) = headers
        && h.get("traceparent").is_some()
    {
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(h));
        let _ = span.set_parent(cx);
    }
}

/// The current span's `traceparent` (empty when there is no trace context).
pub fn current_traceparent() -> String {
    let mut headers = HeaderMap::new();
    inject(&mut headers);
    headers.get("traceparent").map(|v| v.as_str().to_string()).unwrap_or_default()
}

/// Makes `span` a child of a stored `traceparent` (ignored when empty or malformed).
pub fn set_parent_traceparent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", traceparent);
    set_parent(span, Some(&headers));
}
