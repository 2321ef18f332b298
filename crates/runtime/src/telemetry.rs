//! Logging and tracing: a `tracing` subscriber (text or JSON) with an OpenTelemetry layer, so
//! every span has a W3C trace context that [`baton_bus::trace`] carries across NATS, and, when
//! `[log.otlp]` names an endpoint (the standard `OTEL_EXPORTER_OTLP_*` variables), a batch
//! exporter that sends the spans over OTLP (gRPC or HTTP/protobuf).
//!
//! Without an endpoint nothing is exported and no span is recorded: the sampler drops every
//! span (trace ids are still made and propagated, with the `sampled` flag off), and the spans
//! made with [`baton_bus::exported_span!`] are not even created. With one, every span is
//! recorded (or follows the caller's sampling decision, for a trace started elsewhere), every
//! log line inside a carrier span carries its `trace_id`, and [`shutdown`] flushes what is
//! left in the batch.
//!
//! Logs go to standard output. Text logs are coloured only when standard output is a terminal,
//! so files, pipes and log collectors get plain text without ANSI escape codes.

use crate::config::{LogConfig, OtlpConfig, OtlpProtocol};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing::Level;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// The process's tracer provider, kept for [`flush`] and [`shutdown`]; set by the first
/// [`init`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber, and the OTLP exporter when `config.otlp` names an endpoint.
/// Safe to call more than once (later calls do nothing), so tests that start services
/// in-process can call it freely.
///
/// Call it inside a tokio runtime when exporting over gRPC (the exporter's channel runs on
/// it). An exporter that cannot be built (a malformed endpoint that passed validation) is
/// reported on standard error, and the process runs without export.
pub fn init(config: &LogConfig) {
    let mut fresh = false;
    let provider = PROVIDER.get_or_init(|| {
        fresh = true;
        provider(&config.otlp)
    });
    if !fresh {
        return;
    }
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
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

/// The tracer provider for `otlp`: a batch exporter to its endpoint, or none and a sampler that
/// records nothing.
fn provider(otlp: &OtlpConfig) -> SdkTracerProvider {
    let builder = SdkTracerProvider::builder();
    let Some(url) = otlp.traces_url() else {
        baton_bus::trace::set_exporting(false);
        return builder.with_sampler(Sampler::AlwaysOff).build();
    };
    let exporter = match otlp.protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(url.clone())
            .build(),
        OtlpProtocol::HttpProtobuf => {
            // reqwest's rustls client panics (on the exporter's thread) when no crypto
            // provider is installed, and the process would run without export.
            crate::tls::install_crypto_provider();
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(url.clone())
                .build()
        }
    };
    let exporter = match exporter {
        Ok(e) => e,
        Err(e) => {
            eprintln!("warning: cannot export traces to {url} ({e}); running without export");
            baton_bus::trace::set_exporting(false);
            return builder.with_sampler(Sampler::AlwaysOff).build();
        }
    };
    let service_name = if otlp.service_name.trim().is_empty() {
        "baton".to_string()
    } else {
        otlp.service_name.trim().to_string()
    };
    let attributes = otlp
        .resource_pairs()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| opentelemetry::KeyValue::new(k, v));
    let resource = Resource::builder_empty()
        .with_attributes(attributes)
        .with_service_name(service_name)
        .build();
    baton_bus::trace::set_exporting(true);
    builder
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build()
}

/// Exports every finished span still in the batch, waiting for the collector's answer (off
/// the async threads). Does nothing without export.
pub async fn flush() {
    if let Some(p) = PROVIDER.get().filter(|_| baton_bus::trace::exporting()) {
        let p = p.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = p.force_flush() {
                eprintln!("warning: cannot flush traces: {e}");
            }
        })
        .await;
    }
}

/// Flushes and stops the exporter at process exit: call it after the services stopped. Spans
/// that end later are dropped. Does nothing without export.
pub async fn shutdown() {
    if let Some(p) = PROVIDER.get().filter(|_| baton_bus::trace::exporting()) {
        let p = p.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = p.shutdown() {
                eprintln!("warning: cannot flush traces at shutdown: {e}");
            }
        })
        .await;
    }
}

/// `otlp` with `service_name` filled in for a process that runs `services` (`baton` for several,
/// `baton-<name>` for one) unless it names one already.
pub fn with_default_service_name(mut otlp: OtlpConfig, services: &[&str]) -> OtlpConfig {
    if otlp.service_name.trim().is_empty() {
        otlp.service_name = match services {
            [one] => format!("baton-{one}"),
            _ => "baton".into(),
        };
    }
    otlp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `baton serve` starts telemetry before anything installs a rustls crypto provider; the
    /// HTTP/protobuf exporter (reqwest over rustls) must build all the same. Each test runs in
    /// a process of its own under nextest, so none installed one before.
    #[test]
    fn the_http_protobuf_exporter_builds_in_a_process_with_no_crypto_provider_yet() {
        let otlp = OtlpConfig {
            endpoint: "http://127.0.0.1:4318".into(),
            protocol: OtlpProtocol::HttpProtobuf,
            ..OtlpConfig::default()
        };
        let provider = provider(&otlp);
        assert!(
            baton_bus::trace::exporting(),
            "the exporter was not built: the process would run without export"
        );
        let _ = provider.shutdown();
    }
}
