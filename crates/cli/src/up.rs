//! Running services in one process: all six for `baton up`, one for `baton serve <service>`.
//! Each service runs its consumers under its own cancellation token, so a test can stop and
//! restart one service while the others keep going, as a crashed pod would be.
//!
//! A service that ends on its own (an error it cannot recover from, such as losing the audit
//! writer lock to another replica) stops the whole process: [`Baton::run_until`] returns
//! [`UpError::Ended`], so `baton up` exits non-zero and its supervisor restarts it, instead of
//! running on with one service silently gone.

use crate::config::BatonConfig;
use baton_bus::server::NatsServer;
use baton_runtime::Context;
use baton_runtime::http::HttpRoutes;
use baton_runtime::plugins::Plugins;
use baton_runtime::service::{Endpoints, Service};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tracing::{error, info, warn};

/// The six services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum ServiceName {
    /// Triggers in, tasks out.
    Ingestion,
    /// Tasks in, TaskSpecs routed to role subjects.
    Decision,
    /// Role subjects in, plans out.
    AgentRunner,
    /// Plans in, verdicts and approvals out.
    Validation,
    /// Approved plans in, rollouts and outcomes out.
    Execution,
    /// Every event in, the audit log and task queries.
    Audit,
}

/// The name on the command line (`baton serve agent-runner`).
impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum as _;
        match self.to_possible_value() {
            Some(v) => f.write_str(v.get_name()),
            None => write!(f, "{self:?}"),
        }
    }
}

impl ServiceName {
    /// All, in path order.
    pub const ALL: [ServiceName; 6] = [
        ServiceName::Ingestion,
        ServiceName::Decision,
        ServiceName::AgentRunner,
        ServiceName::Validation,
        ServiceName::Execution,
        ServiceName::Audit,
    ];
}

/// Why Baton could not start.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// The nats-server child did not start.
    #[error(transparent)]
    NatsServer(#[from] baton_bus::server::ServerError),
    /// The NATS identities of the nats-server child could not be written or read.
    #[error(transparent)]
    NatsKeys(#[from] baton_bus::identity::KeyError),
    /// The local model server (`[llm.local]`) did not start: a missing binary or model file
    /// (the message names it and `bash deploy/local-model.sh`), or it exited or stayed unhealthy.
    #[error(transparent)]
    LocalModel(#[from] baton_llm::local::LocalModelError),
    /// NATS, the token secret or the data directory is unusable.
    #[error(transparent)]
    Connect(#[from] baton_runtime::service::ConnectError),
    /// A service refused to start.
    #[error("{service} did not start: {reason}")]
    Service {
        /// The service's name (`audit`, `agent-runner`).
        service: &'static str,
        /// Its start error, as it describes itself.
        reason: String,
    },
    /// A running service ended on its own; all the others were stopped.
    #[error("{service} stopped: {reason}; baton stopped all services")]
    Ended {
        /// The service that ended.
        service: ServiceName,
        /// Its error, or what else ended it.
        reason: String,
    },
    /// A listener could not be bound, or the data directory is unusable.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

struct Running {
    token: CancellationToken,
    task: JoinHandle<Result<(), String>>,
}

/// A running set of services with their gRPC and HTTP servers (and maybe a nats-server).
pub struct Baton {
    /// The configuration actually used (NATS URL filled in).
    pub config: BatonConfig,
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    /// Where `/health`, `/ready`, `/metrics` listen.
    pub http_addr: SocketAddr,
    /// The shared handles; its bus is the admin identity's when Baton started nats-server
    /// (tests and tools use it), the configured one otherwise.
    pub ctx: Context,
    /// The NATS identities, when Baton started nats-server (each service connects as its own).
    pub identities: Option<crate::nats_auth::Identities>,
    nats_server: Option<NatsServer>,
    /// The llama-server child, when `[llm.local]` names a model and no URL is configured for
    /// provider `local`.
    llama_server: Option<baton_llm::local::LlamaServer>,
    /// Each service's context (its own NATS identity), kept to restart it.
    contexts: BTreeMap<ServiceName, Context>,
    services: BTreeMap<ServiceName, Running>,
    servers_token: CancellationToken,
    servers: Vec<JoinHandle<()>>,
}

impl Baton {
    /// Starts `which` services with only their built-in agents, tiers and runners. With an
    /// empty `config.nats.url`, starts `nats-server -js` with its store in `<data_dir>/nats`
    /// first, with authentication: one nkey user per service, an admin and the trigger
    /// publishers (see [`crate::nats_auth`]); each service connects as its own user, and
    /// `config.common.nats` becomes the admin's connection; with an empty `auth.hs256_secret`, the services use (or create) the development
    /// secret in `data_dir` (see `service::connect`).
    pub async fn start(config: BatonConfig, which: &[ServiceName]) -> Result<Baton, UpError> {
        Baton::start_with(config, which, Plugins::default()).await
    }

    /// [`Baton::start`] with extensions: each service adds the plug-ins of its type in
    /// `plugins` to its built-ins (see `baton_runtime::plugins`), so a program embedding Baton
    /// adds an agent, a classifier tier or an action runner without editing a service.
    pub async fn start_with(
        mut config: BatonConfig,
        which: &[ServiceName],
        plugins: Plugins,
    ) -> Result<Baton, UpError> {
        let io = |what: String| move |source| UpError::Io { what, source };
        std::fs::create_dir_all(&config.common.data_dir).map_err(io(format!(
            "cannot create data dir {}",
            config.common.data_dir.display()
        )))?;
        let mut nats_server = None;
        let mut identities = None;
        if config.common.nats.url.is_empty() {
            let store = config.common.data_dir.join("nats");
            let ids =
                crate::nats_auth::Identities::prepare(&config, &plugins, &store.join("keys"))?;
            let server_config = store.join("server.conf");
            ids.write_server_config(&server_config)?;
            let server = NatsServer::start_with_config(
                &config.nats_server.binary,
                &store,
                config.nats_server.port,
                Some(&server_config),
            )
            .await?;
            info!(url = server.url(), store = %store.display(), "started nats-server");
            config.common.nats.url = server.url().to_string();
            config.common.nats = ids.bus_config(&config.common.nats, baton_bus::identity::ADMIN);
            nats_server = Some(server);
            identities = Some(ids);
        }
        let mut llama_server = None;
        if config.llm.starts_local_server() {
            let server = baton_llm::local::LlamaServer::start(&config.llm.local).await?;
            info!(url = server.base_url(), model = %config.llm.local.model.display(), "started llama-server as model provider local");
            config.llm.set_local_url(server.base_url().to_string());
            llama_server = Some(server);
        }
        // The `[llm]` providers, for the agents declared in files: the agent runner looks up
        // each agent's models by name in this registry (a plug-in like any other).
        let mut plugins = plugins;
        if !config.llm.providers.is_empty() {
            let registry = config
                .llm
                .registry(|var| std::env::var(var).ok())
                .map_err(|e| UpError::Service {
                    service: "agent-runner",
                    reason: e.to_string(),
                })?;
            plugins.register(registry);
        }
        let ctx = baton_runtime::service::connect(&config.common)
            .await?
            .with_plugins(plugins.shared());

        let mut routes = RoutesBuilder::default();
        let mut http_routes = HttpRoutes::default();
        let mut names: Vec<&'static str> = Vec::new();
        let mut services = BTreeMap::new();
        let mut contexts = BTreeMap::new();
        for &name in which {
            let service_ctx = service_context(&ctx, &config, identities.as_ref(), name).await?;
            contexts.insert(name, service_ctx.clone());
            let running = launch(
                name,
                &service_ctx,
                &config,
                Some((&mut routes, &mut http_routes)),
                &mut names,
            )
            .await?;
            services.insert(name, running);
        }

        let servers_token = CancellationToken::new();
        let endpoints = Endpoints::serve(
            &ctx,
            &config.common,
            routes,
            http_routes,
            &names,
            servers_token.clone(),
        )
        .await
        .map_err(io("cannot serve".into()))?;
        let (grpc_addr, http_addr, mut servers) =
            (endpoints.grpc_addr, endpoints.http_addr, endpoints.tasks);
        if identities.is_some() {
            // Each service has its own connection, which knows its consumers: poll each for
            // the consumer metrics (the endpoints' poller has the shared connection's).
            for (name, c) in &contexts {
                let bus = c.bus.clone();
                c.readiness.add(
                    format!("{name} NATS connection"),
                    std::sync::Arc::new(move || {
                        bus.is_connected()
                            .then_some(())
                            .ok_or_else(|| "not connected".to_string())
                    }),
                );
                servers.push(c.metrics.clone().spawn_consumer_poller(
                    c.bus.clone(),
                    baton_runtime::metrics::CONSUMER_POLL,
                    servers_token.clone(),
                ));
            }
        }
        info!(%grpc_addr, %http_addr, nats = %config.common.nats.url, "baton is up");
        Ok(Baton {
            config,
            grpc_addr,
            http_addr,
            ctx,
            identities,
            contexts,
            nats_server,
            llama_server,
            services,
            servers_token,
            servers,
        })
    }

    /// Mints a token with the development/configured secret (for the demo and tests).
    pub fn token(
        &self,
        subject: &str,
        tenant: &str,
        roles: &[baton_runtime::auth::Role],
    ) -> String {
        self.ctx
            .auth
            .mint(subject, tenant, roles, std::time::Duration::from_secs(3600))
    }

    /// The URL clients connect to: `http://<grpc_addr>` (the bound address).
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Stops one service's consumers (in-flight messages finish or are redelivered later),
    /// as if its process died. Its gRPC endpoints stay served.
    pub async fn stop_service(&mut self, name: ServiceName) {
        if let Some(r) = self.services.remove(&name) {
            r.token.cancel();
            let _ = r.task.await;
        }
    }

    /// Stops a service at once, abandoning in-flight work without acking it, as a crash
    /// would: JetStream redelivers what was unacked after `ack_wait`.
    pub fn kill_service(&mut self, name: ServiceName) {
        if let Some(r) = self.services.remove(&name) {
            r.task.abort();
        }
    }

    /// Starts a fresh instance of a stopped service (its consumers resume where the durable
    /// consumer left off).
    pub async fn start_service(&mut self, name: ServiceName) -> Result<(), UpError> {
        let mut names = Vec::new();
        let ctx = match self.contexts.get(&name) {
            Some(ctx) => ctx.clone(),
            None => {
                let ctx = service_context(&self.ctx, &self.config, self.identities.as_ref(), name)
                    .await?;
                self.contexts.insert(name, ctx.clone());
                ctx
            }
        };
        let running = launch(name, &ctx, &self.config, None, &mut names).await?;
        self.services.insert(name, running);
        Ok(())
    }

    /// Runs until `shutdown`, then stops. If a service ends first (on its own, with an error
    /// or a panic), stops the others and returns [`UpError::Ended`] naming it.
    pub async fn run_until(mut self, shutdown: CancellationToken) -> Result<(), UpError> {
        let ended = if self.services.is_empty() {
            shutdown.cancelled().await;
            None
        } else {
            let names: Vec<ServiceName> = self.services.keys().copied().collect();
            let tasks = self.services.values_mut().map(|r| &mut r.task);
            tokio::select! {
                _ = shutdown.cancelled() => None,
                (result, i, _) = futures::future::select_all(tasks) => Some((names[i], result)),
            }
        };
        let Some((service, result)) = ended else {
            self.stop().await;
            return Ok(());
        };
        self.services.remove(&service);
        let reason = match result {
            Ok(Ok(())) => "it returned without being asked to stop".to_string(),
            Ok(Err(e)) => e,
            Err(e) if e.is_panic() => "it panicked".to_string(),
            Err(e) => e.to_string(),
        };
        error!(%service, %reason, "a service ended on its own; stopping all services");
        self.stop().await;
        Err(UpError::Ended { service, reason })
    }

    /// Stops the services (letting in-flight messages finish), the servers, the nats-server
    /// child and the llama-server child.
    pub async fn stop(mut self) {
        for (name, r) in std::mem::take(&mut self.services) {
            r.token.cancel();
            match r.task.await {
                Ok(Err(e)) => warn!(service = ?name, error = %e, "service ended with an error"),
                Err(e) if e.is_panic() => warn!(service = ?name, "service panicked"),
                _ => {}
            }
        }
        self.servers_token.cancel();
        for s in self.servers.drain(..) {
            let _ = s.await;
        }
        if let Some(n) = self.nats_server.take() {
            n.stop().await;
        }
        if let Some(l) = self.llama_server.take() {
            l.stop().await;
        }
    }
}

/// The context `name` runs with: `shared` with a bus of the service's own NATS identity when
/// Baton started nats-server, else `shared` itself (one configured identity for the process).
async fn service_context(
    shared: &Context,
    config: &BatonConfig,
    identities: Option<&crate::nats_auth::Identities>,
    name: ServiceName,
) -> Result<Context, UpError> {
    let Some(ids) = identities else {
        return Ok(shared.clone());
    };
    let bus_config = ids.bus_config(&config.common.nats, &crate::nats_auth::user_of(name));
    let bus = baton_bus::Bus::connect(bus_config)
        .await
        .map_err(|e| UpError::Connect(e.into()))?;
    Ok(Context {
        bus,
        ..shared.clone()
    })
}

async fn launch(
    name: ServiceName,
    ctx: &Context,
    config: &BatonConfig,
    routes: Option<(&mut RoutesBuilder, &mut HttpRoutes)>,
    names: &mut Vec<&'static str>,
) -> Result<Running, UpError> {
    match name {
        ServiceName::Ingestion => {
            launch_one::<baton_ingestion::Ingestion>(
                ctx,
                config,
                config.ingestion.clone(),
                routes,
                names,
            )
            .await
        }
        ServiceName::Decision => {
            launch_one::<baton_decision::Router>(
                ctx,
                config,
                config.decision.clone(),
                routes,
                names,
            )
            .await
        }
        ServiceName::AgentRunner => {
            launch_one::<baton_agent_runner::AgentRunner>(
                ctx,
                config,
                config.agents.clone(),
                routes,
                names,
            )
            .await
        }
        ServiceName::Validation => {
            launch_one::<baton_validation::Validation>(
                ctx,
                config,
                config.validation.clone(),
                routes,
                names,
            )
            .await
        }
        ServiceName::Execution => {
            launch_one::<baton_execution::Executor>(
                ctx,
                config,
                config.execution.clone(),
                routes,
                names,
            )
            .await
        }
        ServiceName::Audit => {
            launch_one::<baton_audit::Audit>(ctx, config, config.audit.clone(), routes, names).await
        }
    }
}

async fn launch_one<S: Service>(
    ctx: &Context,
    config: &BatonConfig,
    mut section: S::Config,
    routes: Option<(&mut RoutesBuilder, &mut HttpRoutes)>,
    names: &mut Vec<&'static str>,
) -> Result<Running, UpError> {
    S::prepare(&mut section, &config.common);
    let svc = S::start(ctx.clone(), section)
        .await
        .map_err(|e| UpError::Service {
            service: S::NAME,
            reason: e.to_string(),
        })?;
    if let Some((routes, http_routes)) = routes {
        svc.add_grpc(routes);
        svc.add_http(http_routes);
        names.extend_from_slice(S::GRPC_SERVICES);
    }
    let token = CancellationToken::new();
    let t = token.clone();
    let task = tokio::spawn(async move { svc.serve(t).await.map_err(|e| e.to_string()) });
    Ok(Running { token, task })
}
