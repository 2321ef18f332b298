//! W3C trace context (`traceparent`, `tracestate`) in NATS headers, so one task is one trace
//! across services. Uses the OpenTelemetry context of the current `tracing` span; with no
//! OpenTelemetry layer installed, nothing is injected and extraction yields an empty context.
//!
//! Two kinds of span: the *carriers* (a consumer's `handle`, `handle_batch`, a gRPC request's
//! `grpc`) exist always, because the trace context of the events they publish comes from them;
//! every other span is for export only, made with [`exported_span!`](crate::exported_span), which
//! is [`tracing::Span::none`] unless traces are exported ([`exporting`]), so the hot path pays
//! nothing for them otherwise.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether spans are exported (set once by the telemetry setup of the process).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Records whether this process exports spans (over OTLP); `baton_runtime::telemetry::init`
/// calls it. Spans made with [`exported_span!`](crate::exported_span) exist only after
/// `set_exporting(true)`.
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// Whether this process exports spans: one relaxed atomic load.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// An `info`-level span that exists only when traces are exported ([`exporting`]), else
/// [`tracing::Span::none`]: takes what [`tracing::info_span!`] takes. Use it for every span
/// that is there for the trace view (a policy evaluation, a rollout phase, an asset, a model
/// call, a tool call, a sandbox run), so that a process that exports nothing does not pay for
/// them; ARCHITECTURE.md lists the names and attributes.
///
/// ```
/// let span = baton_bus::exported_span!("policy.evaluate", task_id = "t-1", policies = 3);
/// let _guard = span.enter();
/// ```
#[macro_export]
macro_rules! exported_span {
    ($($arg:tt)*) => {
        if $crate::trace::exporting() {
            ::tracing::info_span!($($arg)*)
        } else {
            ::tracing::Span::none()
        }
    };
}

/// When spans are exported, records the span's trace id in its `trace_id` field (declared
/// `trace_id = tracing::field::Empty`), so every log line inside it names the trace it
/// belongs to; does nothing otherwise. Call it after the span's parent is set.
pub fn record_trace_id(span: &tracing::Span) {
    if !exporting() {
        return;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
    }
}

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

/// When spans are exported, names a consumer's carrier span `<service> handle` (span kind
/// consumer) in the trace view and records its trace id ([`record_trace_id`]); the span
/// declares `otel.name`, `otel.kind` and `trace_id` as `tracing::field::Empty`. Does nothing
/// otherwise. Call it after the span's parent is set.
pub fn label_consumer_span(span: &tracing::Span, service: &str) {
    if !exporting() {
        return;
    }
    span.record("otel.name", format!("{service} handle"));
    span.record("otel.kind", "consumer");
    record_trace_id(span);
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
