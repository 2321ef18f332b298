//! The one shape every service has, so a process can run any set of them the same way:
//! `baton up` (all six), `baton serve <service>` and each service's thin binary.

use crate::Context;
use crate::config::CommonConfig;
use crate::http::HttpRoutes;
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
    fn start(
        ctx: Context,
        config: Self::Config,
    ) -> impl Future<Output = Result<Self, Self::Error>> + Send;

    /// Adds its gRPC services to the process's router.
    fn add_grpc(&self, routes: &mut RoutesBuilder);

    /// Adds its HTTP routes (webhooks, a REST front) to the process's HTTP server; they are
    /// authenticated like gRPC calls (see [`HttpRoutes`]). None by default.
    fn add_http(&self, _routes: &mut HttpRoutes) {}

    /// Runs its consumers until `shutdown` is cancelled, then finishes in-flight work.
    fn serve(
        self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// gRPC and HTTP endpoints of a process: one tonic server for `routes` (plus health and
/// reflection) and `/health`, `/ready` (connected to NATS), `/metrics`.
pub struct Endpoints {
    /// Bound gRPC address.
    pub grpc_addr: std::net::SocketAddr,
    /// Bound HTTP address.
    pub http_addr: std::net::SocketAddr,
    /// The two server tasks; they end when the token passed to [`Endpoints::serve`] is cancelled.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Endpoints {
    /// Binds both listeners and serves until `shutdown`: `routes` on gRPC; on HTTP the
    /// operational endpoints, `http_routes` and every [`HttpPlugin`](crate::http::HttpPlugin)
    /// of `ctx.plugins` (the last two behind bearer-token authentication).
    pub async fn serve(
        ctx: &Context,
        grpc_addr: std::net::SocketAddr,
        http_addr: std::net::SocketAddr,
        routes: RoutesBuilder,
        mut http_routes: HttpRoutes,
        names: &[&str],
        shutdown: CancellationToken,
    ) -> std::io::Result<Endpoints> {
        for plugin in ctx.plugins.all::<crate::http::HttpPlugin>() {
            tracing::debug!(plugin = %plugin.name, "mounting HTTP plug-in routes");
            http_routes.add((plugin.routes)(ctx));
        }
        let (grpc_addr, grpc_task) =
            crate::grpc::serve(grpc_addr, routes.routes(), names, shutdown.clone())
                .await
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot serve gRPC on {grpc_addr}: {e}"))
                })?;
        let bus = ctx.bus.clone();
        let ready: crate::http::ReadyCheck = std::sync::Arc::new(move || {
            if bus.is_connected() {
                Ok(())
            } else {
                Err("not connected to NATS".into())
            }
        });
        let (http_addr, http_task) = crate::http::serve(
            http_addr,
            crate::http::router(ctx.metrics.clone(), ready)
                .merge(http_routes.into_router(ctx.auth.clone())),
            shutdown,
        )
        .await
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot serve HTTP on {http_addr}: {e}"))
        })?;
        let tasks = vec![
            tokio::spawn(async move {
                if let Ok(Err(e)) = grpc_task.await {
                    tracing::warn!(error = %e, "grpc server failed");
                }
            }),
            tokio::spawn(async move {
                if let Ok(Err(e)) = http_task.await {
                    tracing::warn!(error = %e, "http server failed");
                }
            }),
        ];
        Ok(Endpoints {
            grpc_addr,
            http_addr,
            tasks,
        })
    }
}

/// Why a process could not build its [`Context`].
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The development secret could not be read or written.
    #[error("cannot create the development secret in {dir}: {source}")]
    Secret {
        /// The data directory.
        dir: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Tokens cannot be verified with this configuration.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// NATS is unreachable or JetStream is off.
    #[error(transparent)]
    Bus(#[from] baton_bus::BusError),
    /// The configured roles or environments are unusable.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
}

/// Connects to NATS and builds the [`Context`] from the common settings (no plug-ins: add them
/// with [`Context::with_plugins`]); an empty `auth.hs256_secret` uses the development secret
/// in `data_dir`.
///
/// Errors: [`ConnectError::Catalog`] for bad `[catalog]` lists (checked before connecting),
/// [`ConnectError::Secret`], [`ConnectError::Auth`], [`ConnectError::Bus`].
pub async fn connect(common: &CommonConfig) -> Result<Context, ConnectError> {
    common.catalog.validate()?;
    let mut auth = common.auth.clone();
    if auth.hs256_secret.is_empty() {
        auth.hs256_secret =
            crate::auth::dev_secret(&common.data_dir).map_err(|source| ConnectError::Secret {
                dir: common.data_dir.clone(),
                source,
            })?;
    }
    let authenticator = crate::auth::Authenticator::new(&auth)?;
    let bus = baton_bus::Bus::connect(common.nats.clone()).await?;
    Ok(Context::new(
        bus,
        authenticator,
        std::sync::Arc::new(crate::metrics::Metrics::default()),
    )
    .with_catalog(common.catalog.clone()))
}

/// `main` of a service's thin binary (`baton-<service> [--config FILE]`): the same as
/// `baton serve <service>`. Reads the common settings and the service's section from the
/// file and `BATON_*` variables, serves gRPC and HTTP, runs until SIGINT/SIGTERM.
pub fn service_main<S: Service>() -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(service_main_async::<S>()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn service_main_async<S: Service>() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut file = std::env::var_os("BATON_CONFIG").map(std::path::PathBuf::from);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" | "-c" => file = Some(args.next().ok_or("--config needs a file")?.into()),
            "--help" | "-h" => {
                println!(
                    "usage: baton-{} [--config FILE]   (same as `baton serve {}`)",
                    S::NAME,
                    S::NAME
                );
                return Ok(());
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: baton-{} [--config FILE]",
                    S::NAME
                ));
            }
        }
    }
    let figment = crate::config::figment::<CommonConfig>(file.as_deref(), &[S::SECTION])
        .map_err(|e| e.to_string())?;
    let common: CommonConfig = figment
        .clone()
        .extract()
        .map_err(|e: figment::Error| format!("invalid configuration: {e}"))?;
    let mut config: S::Config = if figment.contains(S::SECTION) {
        figment
            .extract_inner(S::SECTION)
            .map_err(|e| format!("invalid [{}] configuration: {e}", S::SECTION))?
    } else {
        S::Config::default()
    };
    crate::telemetry::init(&common.log);
    if common.nats.url.is_empty() {
        return Err(format!(
            "baton-{} needs a NATS server: set nats.url (BATON_NATS__URL=nats://host:4222)",
            S::NAME
        ));
    }
    S::prepare(&mut config, &common);
    let ctx = connect(&common).await.map_err(|e| e.to_string())?;
    let svc = S::start(ctx.clone(), config)
        .await
        .map_err(|e| format!("{} did not start: {e}", S::NAME))?;
    let mut routes = RoutesBuilder::default();
    svc.add_grpc(&mut routes);
    let mut http_routes = HttpRoutes::default();
    svc.add_http(&mut http_routes);
    let shutdown = crate::shutdown::on_signal();
    let servers = CancellationToken::new();
    let endpoints = Endpoints::serve(
        &ctx,
        common.grpc_addr,
        common.http_addr,
        routes,
        http_routes,
        S::GRPC_SERVICES,
        servers.clone(),
    )
    .await
    .map_err(|e| e.to_string())?;
    tracing::info!(service = S::NAME, grpc = %endpoints.grpc_addr, http = %endpoints.http_addr, "serving");
    let result = svc.serve(shutdown).await.map_err(|e| e.to_string());
    servers.cancel();
    for t in endpoints.tasks {
        let _ = t.await;
    }
    result
}
