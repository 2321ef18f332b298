//! The one shape every service has, so a process can run any set of them the same way:
//! `baton up` (all six), `baton serve <service>` and each service's thin binary.

use crate::Context;
use crate::config::CommonConfig;
use serde::{Serialize, de::DeserializeOwned};
use std::future::Future;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;

/// A Baton service: built from a [`Context`] and its own config section, it adds its gRPC
/// services to a shared router and runs its consumers until shutdown.
pub trait Service: Sized + Send + 'static {
    /// Its config section (`[ingestion]`, …).
    type Config: DeserializeOwned + Serialize + Default + Clone + Send + 'static;
    /// Its error type.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Name: config section, producer name, metrics label (`ingestion`, `agent-runner`).
    const NAME: &'static str;
    /// Config section key in baton.toml (`ingestion`, `agents`, …).
    const SECTION: &'static str;
    /// Fully-qualified gRPC services it serves (for gRPC health).
    const GRPC_SERVICES: &'static [&'static str];

    /// Fills config values that default from the common settings (e.g. paths under `data_dir`).
    fn prepare(_config: &mut Self::Config, _common: &CommonConfig) {}

    /// Validates the config and opens what it needs (KV buckets, database, files).
    fn start(ctx: Context, config: Self::Config) -> impl Future<Output = Result<Self, Self::Error>> + Send;

    /// Adds its gRPC services to the process's router.
    fn add_grpc(&self, routes: &mut RoutesBuilder);

    /// Runs its consumers until `shutdown` is cancelled, then finishes in-flight work.
    fn serve(self, shutdown: CancellationToken) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
