//! Logging and tracing: a `tracing` subscriber (text or JSON) with an OpenTelemetry layer, so
//! every span has a W3C trace context that [`baton_bus::trace`] carries across NATS. Export over
//! OTLP is configuration for a later release; the spans and their propagation are here now.
//!
//! Logs go to standard output. Text logs are coloured only when standard output is a terminal,
//! so files, pipes and log collectors get plain text without ANSI escape codes.

use crate::config::LogConfig;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal;
use tracing::Level;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// Installs the global subscriber. Safe to call more than once (later calls do nothing), so
/// tests that start services in-process can call it freely.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = SdkTracerProvider::builder().build();
    // The log filter applies to log output only: the OpenTelemetry layer needs the info-level
    // spans (request, handler) whatever is logged, or trace context stops propagating.
    // Spans only: log events stay in the log, not copied into span events.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("baton"))
        .with_filter(filter_fn(|m| m.is_span() && *m.level() <= Level::INFO));
    let registry = tracing_subscriber::registry().with(otel);
    let _ = if config.json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_ansi(false)
                    .with_filter(filter),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::stdout().is_terminal())
                    .with_filter(filter),
            )
            .try_init()
    };
}
