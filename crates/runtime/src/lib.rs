//! What every Baton service shares at run time, so each service crate holds only its own job:
//!
//! - [`config`]: layered configuration (defaults → TOML file → `BATON_*` env → CLI flags).
//! - [`auth`]: JWT bearer tokens (HS256 for now), roles and tenants.
//! - [`telemetry`]: `tracing` with an OpenTelemetry layer, so spans carry W3C trace context.
//! - [`shutdown`]: SIGINT/SIGTERM cancel a token; a second signal exits at once.
//! - [`http`]: `/health`, `/ready`, `/metrics`.
//! - [`grpc`]: one tonic server for any set of services, with gRPC health and reflection.
//! - [`metrics`]: the Prometheus metrics, named in one place.
//! - [`Context`]: the handles a service is built from.

pub mod auth;
pub mod config;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod service;
pub mod shutdown;
pub mod telemetry;

use std::sync::Arc;

/// Handles shared by the services of one process: the NATS connection, the token verifier and
/// the metrics registry. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    /// The JetStream connection.
    pub bus: baton_bus::Bus,
    /// Verifies bearer tokens on gRPC calls.
    pub auth: Arc<auth::Authenticator>,
    /// Prometheus metrics.
    pub metrics: Arc<metrics::Metrics>,
}

impl Context {
    /// Builds a context from its parts.
    pub fn new(
        bus: baton_bus::Bus,
        auth: auth::Authenticator,
        metrics: Arc<metrics::Metrics>,
    ) -> Self {
        Context {
            bus,
            auth: Arc::new(auth),
            metrics,
        }
    }
}
