//! The one shape every service has, so a process can run any set of them the same way:
//! `baton up` (all six), `baton serve <service>` and each service's thin binary.

use crate::Context;
use crate::config::{CommonConfig, CommonFlags, ConfigError, EnvVars, Layers};
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
    /// What can go wrong in it: an invalid section, an unreachable dependency, a failed
    /// handler (its crate's `Error` enum, mapped to gRPC codes there).
    type Error: std::error::Error + Send + Sync + 'static;
    /// Name: config section, producer name, metrics label (`ingestion`, `agent-runner`).
    const NAME: &'static str;
    /// Config section key in baton.toml (`ingestion`, `agents`, …).
    const SECTION: &'static str;
    /// Fully-qualified gRPC services it serves (for gRPC health).
    const GRPC_SERVICES: &'static [&'static str];

    /// Fills config values that default from the common settings (e.g. paths under
    /// `data_dir`), so what `baton config` prints is what the service runs with.
    fn prepare(_config: &mut Self::Config, _common: &CommonConfig) {}

    /// Checks its section after [`Service::prepare`]; the message names the key and what to
    /// set. Run when the configuration is loaded, and again by `start`.
    fn validate(config: &Self::Config) -> Result<(), Self::Error>;

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
    /// The two server tasks and the consumer metrics poller; they end when the token passed to
    /// [`Endpoints::serve`] is cancelled.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Endpoints {
    /// Binds both listeners (`common.grpc_addr`, `common.http_addr`) and serves until
    /// `shutdown`: `routes` on gRPC (over TLS with `common.grpc_tls`'s certificate when it has
    /// one); on HTTP the
    /// operational endpoints, `http_routes` and every [`HttpPlugin`](crate::http::HttpPlugin)
    /// of `ctx.plugins` (the last two behind bearer-token authentication).
    pub async fn serve(
        ctx: &Context,
        common: &CommonConfig,
        routes: RoutesBuilder,
        mut http_routes: HttpRoutes,
        names: &[&str],
        shutdown: CancellationToken,
    ) -> std::io::Result<Endpoints> {
        for plugin in ctx.plugins.all::<crate::http::HttpPlugin>() {
            tracing::debug!(plugin = %plugin.name, "mounting HTTP plug-in routes");
            http_routes.add((plugin.routes)(ctx));
        }
        let (grpc_addr, http_addr) = (common.grpc_addr, common.http_addr);
        let tls = common
            .grpc_tls
            .server_config()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let (grpc_addr, grpc_task) =
            crate::grpc::serve_tls(grpc_addr, routes.routes(), names, tls, shutdown.clone())
                .await
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot serve gRPC on {grpc_addr}: {e}"))
                })?;
        let bus = ctx.bus.clone();
        let readiness = ctx.readiness.clone();
        let ready: crate::http::ReadyCheck = std::sync::Arc::new(move || {
            if bus.is_connected() {
                readiness.check()
            } else {
                Err("not connected to NATS".into())
            }
        });
        let (http_addr, http_task) = crate::http::serve(
            http_addr,
            crate::http::router(ctx.metrics.clone(), ready)
                .merge(http_routes.into_router(ctx.auth.clone())),
            shutdown.clone(),
        )
        .await
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot serve HTTP on {http_addr}: {e}"))
        })?;
        let poller = ctx.metrics.clone().spawn_consumer_poller(
            ctx.bus.clone(),
            crate::metrics::CONSUMER_POLL,
            shutdown.clone(),
        );
        let tasks = vec![
            poller,
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
        /// The file system's error (permissions, missing parent, full disk).
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
/// in `data_dir`, unless `auth.jwks_url` is set (then only the identity provider's tokens are
/// accepted).
///
/// Errors: [`ConnectError::Catalog`] for bad `[catalog]` lists (checked before connecting),
/// [`ConnectError::Secret`], [`ConnectError::Auth`], [`ConnectError::Bus`].
pub async fn connect(common: &CommonConfig) -> Result<Context, ConnectError> {
    common.catalog.validate()?;
    let mut auth = common.auth.clone();
    if auth.wants_dev_secret() {
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

/// `S`'s section of `layers` as `S` runs with it: derived values filled in
/// ([`Service::prepare`]) and checked ([`Service::validate`]).
///
/// Errors: [`ConfigError::Parse`] naming the key, [`ConfigError::Invalid`] with `S`'s message.
pub fn load_section<S: Service>(
    layers: &Layers,
    common: &CommonConfig,
) -> Result<S::Config, ConfigError> {
    let mut section: S::Config = layers.section(S::SECTION)?;
    S::prepare(&mut section, common);
    S::validate(&section).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    Ok(section)
}

/// The configuration of a process that runs `S` alone (`baton-<service>`): the common
/// settings and `S`'s section, loaded defaults → `file` → `env` → `flags` → derived values →
/// validation (see [`crate::config`]). The other services' sections may be present in the
/// file; they are checked by name, and by the processes that run them.
pub fn load<S: Service>(
    file: Option<&std::path::Path>,
    env: &EnvVars,
    flags: impl figment::Provider,
) -> Result<(CommonConfig, S::Config), ConfigError> {
    #[derive(Serialize)]
    struct Defaults<C> {
        #[serde(flatten)]
        common: CommonConfig,
        #[serde(flatten)]
        section: std::collections::BTreeMap<&'static str, C>,
    }
    let defaults = Defaults {
        common: CommonConfig::default(),
        section: [(S::SECTION, S::Config::default())].into(),
    };
    let layers = Layers::new(&defaults, file, env, flags)?;
    let common = layers.common()?;
    common.validate()?;
    let section = load_section::<S>(&layers, &common)?;
    Ok((common, section))
}

/// The command line of `baton-<name>`: the [`CommonFlags`] `baton serve` takes, with help
/// and errors rendered by clap as `baton`'s are.
pub fn command(name: &str) -> clap::Command {
    use clap::Args as _;
    // clap keeps names as `&'static str` (without its `string` feature); a process builds
    // this once.
    let bin: &'static str = Box::leak(format!("baton-{name}").into_boxed_str());
    // `augment_args` sets the flags struct's doc as the about text: set ours after it.
    CommonFlags::augment_args(clap::Command::new(bin))
        .version(env!("CARGO_PKG_VERSION"))
        .about(format!(
            "Runs the {name} service alone, as `baton serve {name}` does (NATS URL required)"
        ))
}

/// `main` of a service's thin binary (`baton-<service> [--config FILE] [--nats-url URL] …`):
/// the same as `baton serve <service>`. Loads the common settings and the service's section
/// (see [`load`]), serves gRPC and HTTP, runs until SIGINT/SIGTERM. `--help` prints the
/// usage and exits 0; a bad argument exits 2, as with `baton`.
pub fn service_main<S: Service>() -> std::process::ExitCode {
    use clap::FromArgMatches as _;
    let matches = command(S::NAME).get_matches();
    let flags = match CommonFlags::from_arg_matches(&matches) {
        Ok(f) => f,
        Err(e) => e.exit(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(service_main_async::<S>(flags)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn service_main_async<S: Service>(flags: CommonFlags) -> Result<(), String> {
    let file = flags.config.clone();
    let (mut common, config) =
        load::<S>(file.as_deref(), &EnvVars::from_process(), flags).map_err(|e| e.to_string())?;
    common.log.otlp = crate::telemetry::with_default_service_name(common.log.otlp, &[S::NAME]);
    crate::telemetry::init(&common.log);
    if common.nats.url.is_empty() {
        return Err(format!(
            "baton-{} needs a NATS server: set nats.url (--nats-url, BATON_NATS__URL=nats://host:4222)",
            S::NAME
        ));
    }
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
        &common,
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
    crate::telemetry::shutdown().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_binary_help_and_errors_come_from_clap() {
        let err = command("audit")
            .try_get_matches_from(["baton-audit", "--help"])
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
        let help = err.to_string();
        assert!(
            help.contains("baton serve audit") && help.contains("--config"),
            "{help}"
        );
        assert!(
            help.contains("--nats-url") && help.contains("--data-dir"),
            "{help}"
        );
        let err = command("audit")
            .try_get_matches_from(["baton-audit", "--bogus"])
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
        let m = command("audit")
            .try_get_matches_from(["baton-audit", "--data-dir", "/d", "-c", "x.toml"])
            .unwrap();
        use clap::FromArgMatches as _;
        let f = CommonFlags::from_arg_matches(&m).unwrap();
        assert_eq!(f.data_dir.as_deref(), Some(std::path::Path::new("/d")));
        assert_eq!(f.config.as_deref(), Some(std::path::Path::new("x.toml")));
    }

    /// A service whose section is `[audit]`, to load configuration as a thin binary does.
    struct Probe;

    #[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct ProbeConfig {
        /// Derived from `data_dir` when empty.
        path: std::path::PathBuf,
        /// Must be at least 1.
        n: u32,
    }

    impl Service for Probe {
        type Config = ProbeConfig;
        type Error = std::io::Error;
        const NAME: &'static str = "probe";
        const SECTION: &'static str = "audit";
        const GRPC_SERVICES: &'static [&'static str] = &[];

        fn prepare(config: &mut ProbeConfig, common: &CommonConfig) {
            if config.path.as_os_str().is_empty() {
                config.path = common.data_dir.join("probe.db");
            }
        }

        fn validate(config: &ProbeConfig) -> Result<(), std::io::Error> {
            if config.n == 0 {
                return Err(std::io::Error::other("audit.n must be at least 1"));
            }
            Ok(())
        }

        async fn start(_ctx: Context, _config: ProbeConfig) -> Result<Self, std::io::Error> {
            Ok(Probe)
        }

        fn add_grpc(&self, _routes: &mut RoutesBuilder) {}

        async fn serve(self, _shutdown: CancellationToken) -> Result<(), std::io::Error> {
            Ok(())
        }
    }

    fn load_probe(
        file: &str,
        env: &[(&str, &str)],
        flags: CommonFlags,
    ) -> Result<(CommonConfig, ProbeConfig), ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.toml");
        std::fs::write(&path, file).unwrap();
        load::<Probe>(
            Some(&path),
            &EnvVars::from_pairs(env.iter().copied()),
            flags,
        )
    }

    #[test]
    fn a_thin_binary_loads_derives_and_validates_its_section() {
        let flags = CommonFlags {
            data_dir: Some("/srv/baton".into()),
            ..Default::default()
        };
        let file = "[audit]\nn = 3\n[client]\ntenant = \"t\"\n[ingestion]\nwhatever = 1\n";
        let (common, probe) =
            load_probe(file, &[("BATON_NATS__URL", "nats://n:4222")], flags).unwrap();
        assert_eq!(common.nats.url, "nats://n:4222");
        assert_eq!(probe.n, 3);
        assert_eq!(probe.path, std::path::Path::new("/srv/baton/probe.db"));

        let err = load_probe("[audit]\nn = 0\n", &[], CommonFlags::default()).unwrap_err();
        assert!(
            err.to_string().contains("audit.n must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn a_thin_binary_refuses_unknown_keys() {
        let err = load_probe(
            "[audit]\nn = 1\n[bogus]\nx = 1\n",
            &[],
            CommonFlags::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown key `bogus`"), "{err}");
        let err = load_probe("[audit]\nm = 1\n", &[], CommonFlags::default()).unwrap_err();
        assert!(err.to_string().contains("`m`"), "{err}");
        let err = load_probe("", &[("BATON_AUDIT__NN", "1")], CommonFlags::default()).unwrap_err();
        assert!(err.to_string().contains("BATON_AUDIT__NN"), "{err}");
        let err =
            load_probe("", &[("BATON_LOG__JSONN", "true")], CommonFlags::default()).unwrap_err();
        assert!(err.to_string().contains("BATON_LOG__JSONN"), "{err}");
    }
}
