//! What every Baton service shares at run time, so each service crate holds only its own job:
//!
//! - [`config`]: layered configuration (defaults → TOML file → `BATON_*` env → CLI flags →
//!   derived values → validation), the same for every process.
//! - [`auth`]: JWT bearer tokens (HS256 for development, RS256/ES256 from an identity provider's
//!   JWKS), roles and tenants.
//! - [`tls`]: the rustls crypto provider and the HTTPS-ready HTTP client builder.
//! - [`telemetry`]: `tracing` with an OpenTelemetry layer, so spans carry W3C trace context.
//! - [`shutdown`]: SIGINT/SIGTERM cancel a token; a second signal exits at once.
//! - [`http`]: `/health`, `/ready`, `/metrics`.
//! - [`grpc`]: one tonic server for any set of services, with gRPC health and reflection.
//! - [`metrics`]: the Prometheus metrics, named in one place.
//! - [`plugins`]: the registry through which extensions reach the services.
//! - [`catalog`]: the configured roles and environments.
//! - [`signing`]: Ed25519 keys, the signed approval and its verification, the audit anchor's
//!   signature.
//! - [`tool_approvals`]: agent tool calls waiting for a human (HITL per tool call), shared by
//!   the agent runner and validation's `ApprovalService`.
//! - [`Context`]: the handles a service is built from.

pub mod auth;
pub mod catalog;
pub mod config;
pub mod grpc;
pub mod http;
mod jwks;
pub mod metrics;
pub mod plugins;
pub mod service;
pub mod shutdown;
pub mod signing;
pub mod telemetry;
pub mod tls;
pub mod tool_approvals;

use std::sync::Arc;

/// The global allocator of every Baton binary (`baton` and the `baton-<service>` binaries):
/// [mimalloc](https://github.com/microsoft/mimalloc), through the `mimalloc` crate. Each
/// binary declares it (`#[global_allocator] static ALLOC: baton_runtime::Allocator =
/// baton_runtime::Allocator;`), and so do the benchmarks that run services in their own
/// process, so that they measure what ships.
///
/// Why: the event path makes many small, short-lived allocations (decoded events, NATS
/// headers, spans). In `cargo bench -p baton-tests --bench pipeline` glibc's malloc, free and
/// consolidation were about a quarter of the services' CPU; with mimalloc the services' CPU
/// per task fell by 12–25% and pipelined throughput rose by 10–20% (alternating runs, issue
/// 11). Built without transparent huge pages (the `no_thp` feature), so idle RSS of `baton up`
/// stays within 2 MB of glibc's (46.6 against 44.5 MB; 66 MB with them).
pub use mimalloc::MiMalloc as Allocator;

/// Handles shared by the services of one process: the NATS connection, the token verifier,
/// the metrics registry, the catalog of roles and environments, and the plug-ins. Cheap to
/// clone.
#[derive(Clone)]
pub struct Context {
    /// The JetStream connection.
    pub bus: baton_bus::Bus,
    /// Verifies bearer tokens on gRPC calls and HTTP routes.
    pub auth: Arc<auth::Authenticator>,
    /// Prometheus metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// The roles and environments this deployment knows (checked when it was loaded).
    pub catalog: Arc<catalog::Catalog>,
    /// Extensions registered by the process (agents, classifier tiers, action runners, …);
    /// each service adds the ones of its plug-in type to its built-ins at start.
    pub plugins: Arc<plugins::Plugins>,
    /// Readiness probes the services add at start, checked by `/ready`.
    pub readiness: Arc<http::Readiness>,
}

impl Context {
    /// Builds a context from its parts, with the default catalog and no plug-ins.
    pub fn new(
        bus: baton_bus::Bus,
        auth: auth::Authenticator,
        metrics: Arc<metrics::Metrics>,
    ) -> Self {
        Context {
            bus,
            auth: Arc::new(auth),
            metrics,
            catalog: Arc::new(catalog::Catalog::default()),
            plugins: Arc::new(plugins::Plugins::default()),
            readiness: Arc::default(),
        }
    }

    /// The same context with `catalog` (already validated by the caller).
    pub fn with_catalog(mut self, catalog: catalog::Catalog) -> Self {
        self.catalog = Arc::new(catalog);
        self
    }

    /// The same context with `plugins`.
    pub fn with_plugins(mut self, plugins: Arc<plugins::Plugins>) -> Self {
        self.plugins = plugins;
        self
    }
}
