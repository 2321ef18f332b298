//! The agent runner: turns routed tasks into proposed plans.
//!
//! - **In:** `baton.agent.<role>` ([`TaskRouted`]), one durable pull consumer `agent-<role>`
//!   per role of the catalog (`[catalog] roles`, plus any extra role an agent is registered
//!   for), so a task routed to any known role is always answered. Replicas share the consumers.
//! - **Out:** `baton.task.proposed` ([`PlanProposed`], event id `<task_id>.proposed`), or
//!   `baton.task.failed` ([`Event::fail`], event id `<task_id>.failed`, stage `agent-runner`)
//!   with [`FailureCode`]
//!   - `no_agent_for_role`: no agent is registered for the role;
//!   - `agent_failed`: the agent gave a permanent error (bad inventory, unknown asset group);
//!   - `agent_unavailable`: the agent kept failing transiently until the last delivery (the
//!     message is then also dead-lettered on `baton.dead.agent-runner`);
//!   - `invalid_task`: the routed event lacks its task or spec.
//! - **gRPC:** `AgentService`: `ListAgents` (the agent of each role, with what its file
//!   declares) and `ListTools` (the tool registry); any authenticated caller.
//!
//! Agents implement [`Agent`] and are registered as [`AgentFactory`] plug-ins (see
//! [`registry`]): the runner ships [`DriftRunbook`] for role `drift` and [`NoopAgent`] for
//! benchmarks as factories of the same kind. The name and [`AgentKind`] on every plan come
//! from the registration, never from the plan.
//!
//! # Inventory (`agents.inventory_path`, TOML)
//!
//! The drift runbook re-reads it for every task (so it may be written after start); a missing
//! or invalid file fails the task with a reason naming the file. It is exactly what
//! `baton_fleet::Fleet::inventory_toml()` writes:
//!
//! ```toml
//! [groups.web]                 # one table per asset group
//! kind = "web_server"          # copied to Asset.kind
//! golden = { nginx_version = "1.24.0", tls_min_version = "1.2", worker_processes = "8" }
//! config_path = "/config"      # optional, default "/config"
//! health_path = "/health"      # optional, default "/health"
//!
//! [[assets]]
//! id = "web-01"                # unique
//! group = "web"                # a key of [groups]
//! environment = "production"   # development | staging | production
//! address = "http://127.0.0.1:38211"
//! name = "web 01"              # optional, defaults to id
//! labels = { rack = "a" }      # optional
//! ```
//!
//! Golden values are strings (integers, floats and booleans are turned into text).
//!
//! # The drift runbook
//!
//! Scope: the assets of group `spec.target` (when empty and the inventory has one group, that
//! one) in `spec.environment`, sorted by id. For each, `GET <address><config_path>` answers
//! `{"config": {key: value}}`; an asset is drifted when a golden key is missing or differs
//! (extra keys are not drift). The plan: `total_assets` = assets in scope; a `canary` phase of
//! one drifted asset, then `wave 1`, `wave 2`, … of at most
//! `max(1, floor(total_assets × max_phase_fraction))` drifted assets. Each step PUTs
//! `{"config": <golden>}` (a full replace) with idempotency key `<task_id>:<asset_id>:apply`,
//! rolls back by PUTting the reported configuration (`<task_id>:<asset_id>:rollback`), and
//! checks `GET <address><health_path>` for 200 (3 attempts, 200 ms apart). No drift gives a
//! plan without phases whose report (artifact `report`) says so. Unreachable assets, timeouts
//! and 5xx answers are transient (the task is retried); 4xx and malformed answers are
//! permanent.

mod agent;
pub mod drift;
pub mod inventory;
pub mod journal;
pub mod llm_agent;
pub mod progress;
pub mod registry;
pub mod schema;
pub mod spec;
pub mod tenant_budget;
pub mod tool_approval;
pub mod tool_policy;
pub mod tools;

pub use agent::{Agent, AgentError, NoopAgent};
pub use drift::DriftRunbook;
pub use llm_agent::{LlmAgent, ModelProvider};
pub use registry::{AgentFactory, AgentSetup, builtin_factories};
pub use tools::{Tool, ToolFactory, ToolInfo, ToolRegistry};

use baton_bus::{BusError, ConsumerSpec, Delivery, HandlerError};
use baton_proto::{
    AgentKind, Event, FailureCode, PlanProposed, TaskRouted, ToolCallDecided, event::Body, redact,
    subject,
};
use baton_runtime::Context;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Producer name, metrics label and dead-letter service name.
pub const SERVICE: &str = "agent-runner";
/// gRPC services served.
pub const GRPC_SERVICES: &[&str] = &["baton.v1.AgentService"];
/// Config section in `baton.toml`.
pub const SECTION: &str = "agents";

/// `[agents]`: the agent runner's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The drift runbook's inventory (TOML, see the crate docs). Empty means
    /// `<data_dir>/inventory.toml` (`.baton/inventory.toml` when no data dir is known).
    pub inventory_path: PathBuf,
    /// Timeout of each HTTP request an agent makes to an asset (connect and whole request).
    #[serde(with = "humantime_serde")]
    pub http_timeout: Duration,
    /// Largest share of the in-scope assets one wave may hold (0 < x ≤ 1); waves hold at least
    /// one asset. The production policy denies phases over 20 %.
    pub max_phase_fraction: f64,
    /// Configuration reads one task makes at once.
    pub fetch_concurrency: usize,
    /// Messages handled at once per role, by this process.
    pub concurrency: usize,
    /// Roles served by the built-in no-op agent (one no-op step, no side effects), for
    /// benchmarks and dry runs. Empty in production. Shorthand for `assign`ing them `noop`.
    pub noop_roles: Vec<String>,
    /// Role → agent factory name (`{ cost = "cost-report" }`), over the roles each registered
    /// factory serves by default (the drift runbook serves `drift`). A name no factory has is
    /// refused at start with the list of registered ones.
    pub assign: BTreeMap<String, String>,
    /// Directory of agent files (`<role>.toml`, see [`spec`]), read at start; empty: none (only
    /// the built-in and plug-in factories serve). `baton up` in a checkout uses `agents`.
    pub dir: PathBuf,
    /// The tool policy (Rego, package `baton.tools`); empty: the built-in `policies/tools.rego`.
    pub tool_policy: PathBuf,
    /// Parent of the tasks' work directories (`read_file`/`write_file` stay inside
    /// `<work_dir>/<task_id>`). Empty means `<data_dir>/agent-work`.
    pub work_dir: PathBuf,
    /// Hosts (`example.com` or `example.com:8443`) the `http_request` tool may reach; empty:
    /// none.
    pub http_allow_hosts: Vec<String>,
    /// Bytes of one tool output the model sees; longer output is cut with a note and kept
    /// whole as an artifact.
    pub tool_output_limit: usize,
    /// Cap on the output tokens of one model call.
    pub max_output_tokens: u32,
    /// The sandbox the `run_code` tool runs code in (`[agents.sandbox]`, see baton-sandbox).
    pub sandbox: baton_sandbox::Config,
    /// How long a tool call the tool policy sent to a human waits for a decision; then the
    /// runner denies it (the model reads the denial). See [`tool_approval`].
    #[serde(with = "humantime_serde")]
    pub tool_approval_timeout: Duration,
    /// The tenants' daily budgets of tokens and money (`[agents.daily_budget]`, see
    /// [`tenant_budget`]); none by default.
    pub daily_budget: tenant_budget::Config,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            inventory_path: PathBuf::new(),
            http_timeout: Duration::from_secs(5),
            max_phase_fraction: 0.2,
            fetch_concurrency: 16,
            concurrency: 16,
            noop_roles: Vec::new(),
            assign: BTreeMap::new(),
            dir: PathBuf::new(),
            tool_policy: PathBuf::new(),
            work_dir: PathBuf::new(),
            http_allow_hosts: Vec::new(),
            tool_output_limit: 16 * 1024,
            max_output_tokens: 1024,
            sandbox: baton_sandbox::Config::default(),
            tool_approval_timeout: Duration::from_secs(3600),
            daily_budget: tenant_budget::Config::default(),
        }
    }
}

impl Config {
    /// Checks the values; the message names the bad key.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if !(self.max_phase_fraction > 0.0 && self.max_phase_fraction <= 1.0) {
            return bad(format!(
                "agents.max_phase_fraction is {}: set a share between 0 (exclusive) and 1, e.g. 0.2",
                self.max_phase_fraction
            ));
        }
        if self.http_timeout.is_zero() {
            return bad("agents.http_timeout is 0: set a timeout such as \"5s\"".into());
        }
        if self.fetch_concurrency == 0 || self.concurrency == 0 {
            return bad(
                "agents.fetch_concurrency and agents.concurrency must be at least 1".into(),
            );
        }
        if self.tool_output_limit < 256 {
            return bad(format!(
                "agents.tool_output_limit is {}: set at least 256 bytes, e.g. 16384",
                self.tool_output_limit
            ));
        }
        if self.max_output_tokens == 0 {
            return bad("agents.max_output_tokens is 0: set a cap such as 1024".into());
        }
        if self.tool_approval_timeout.is_zero() {
            return bad(
                "agents.tool_approval_timeout is 0: set how long a tool call waits for a human, e.g. \"1h\"".into(),
            );
        }
        self.daily_budget.validate().map_err(Error::Config)?;
        self.sandbox
            .validate()
            .map_err(|e| Error::Config(format!("agents.sandbox: {e}")))?;
        Ok(())
    }

    /// The work directory in effect (the default when `work_dir` is empty).
    pub fn effective_work_dir(&self) -> PathBuf {
        if self.work_dir.as_os_str().is_empty() {
            PathBuf::from(".baton").join("agent-work")
        } else {
            self.work_dir.clone()
        }
    }

    /// The inventory path in effect (the default when `inventory_path` is empty).
    pub fn effective_inventory_path(&self) -> PathBuf {
        if self.inventory_path.as_os_str().is_empty() {
            PathBuf::from(".baton").join("inventory.toml")
        } else {
            self.inventory_path.clone()
        }
    }
}

/// What can stop the agent runner.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid agent-runner configuration: {0}")]
    Config(String),
    /// An agent could not be set up.
    #[error("cannot set up agent {agent}: {reason}")]
    Agent {
        /// The agent's name (`drift` for the drift runbook).
        agent: String,
        /// The agent's own reason (its HTTP client could not be built, …).
        reason: String,
    },
    /// An agent file is unusable: `<file>:<line>: <what is wrong>`.
    #[error("invalid agent file {0}")]
    AgentFile(#[from] spec::FileError),
    /// A tool could not be set up, or the tool policy does not load.
    #[error("cannot set up tool {tool}: {reason}")]
    Tool {
        /// The tool's name (`policy` for the tool policy).
        tool: String,
        /// Why.
        reason: String,
    },
    /// NATS failed (consumer creation).
    #[error("agent-runner: {0}")]
    Bus(#[from] BusError),
    /// A consumer task ended abnormally.
    #[error("agent-runner consumer for role {role} stopped: {reason}")]
    Consumer {
        /// The role whose consumer stopped (`?` when its task panicked).
        role: String,
        /// The consumer's error, or the panic of its task.
        reason: String,
    },
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            // A server-side setting, not the caller's argument.
            Error::Config(_) | Error::Agent { .. } | Error::AgentFile(_) | Error::Tool { .. } => {
                tonic::Code::FailedPrecondition
            }
            Error::Bus(_) => tonic::Code::Unavailable,
            Error::Consumer { .. } => tonic::Code::Internal,
        };
        tonic::Status::new(code, e.to_string())
    }
}

/// An agent with the name and kind it had when it was registered: what the runner stamps on
/// its plans.
#[derive(Clone)]
struct Registered {
    agent: Arc<dyn Agent>,
    name: String,
    kind: AgentKind,
}

impl Registered {
    fn new(agent: Arc<dyn Agent>) -> Registered {
        Registered {
            name: agent.name().to_string(),
            kind: agent.kind(),
            agent,
        }
    }
}

/// The agent runner: a registry of agents by role and one consumer per role.
pub struct AgentRunner {
    ctx: Context,
    config: Config,
    agents: BTreeMap<String, Registered>,
    /// The tools LLM agents may call.
    tools: ToolRegistry,
    /// The agent files read at start.
    files: Vec<spec::AgentSpec>,
}

impl std::fmt::Debug for AgentRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRunner")
            .field("config", &self.config)
            .field("agents", &self.agents())
            .finish()
    }
}

impl AgentRunner {
    /// Validates `config` and registers the agents: the built-in factories, then those in
    /// `ctx.plugins`, assigned to roles by default and by `agents.assign`/`noop_roles` (see
    /// [`registry`]). The inventory is not read here but on every task.
    ///
    /// Errors: [`Error::Config`] for bad values or an unknown factory name, [`Error::Agent`]
    /// when an agent cannot be built.
    pub async fn new(ctx: Context, config: Config) -> Result<AgentRunner, Error> {
        config.validate()?;
        let assembly = registry::assemble(&ctx, &config)?;
        let agents = assembly
            .agents
            .into_iter()
            .map(|(role, agent)| (role, Registered::new(agent)))
            .collect();
        Ok(AgentRunner {
            ctx,
            config,
            agents,
            tools: assembly.tools,
            files: assembly.files,
        })
    }

    /// Registers `agent` for `role`, replacing any agent that role had. A role outside the
    /// catalog gets its own consumer too. (Programs register [`AgentFactory`] plug-ins
    /// instead; this is for tests that hold an agent in hand.)
    pub fn with_agent(mut self, role: &str, agent: Arc<dyn Agent>) -> AgentRunner {
        self.agents.insert(role.to_string(), Registered::new(agent));
        self
    }

    /// Removes the agent of `role` (its tasks then fail with `no_agent_for_role`).
    pub fn without_agent(mut self, role: &str) -> AgentRunner {
        self.agents.remove(role);
        self
    }

    /// Registered agents: role → agent name, sorted by role.
    pub fn agents(&self) -> Vec<(String, String)> {
        self.agents
            .iter()
            .map(|(r, a)| (r.clone(), a.name.clone()))
            .collect()
    }

    /// The tools LLM agents may call (built-ins and plug-ins).
    pub fn tools(&self) -> &ToolRegistry {
        &self.tools
    }

    /// The agent files read at start (`agents.dir`), sorted by file name.
    pub fn files(&self) -> &[spec::AgentSpec] {
        &self.files
    }

    /// The roles consumed: the catalog's plus any extra registered role, sorted.
    pub fn roles(&self) -> Vec<String> {
        let mut roles: BTreeSet<String> = self.ctx.catalog.roles.iter().cloned().collect();
        roles.extend(self.agents.keys().cloned());
        roles.into_iter().collect()
    }

    /// What `AgentService/ListAgents` answers: the agent of each role, sorted by role.
    pub fn describe_agents(&self) -> Vec<baton_proto::AgentDescription> {
        self.agents
            .iter()
            .map(|(role, a)| {
                let mut d = baton_proto::AgentDescription {
                    role: role.clone(),
                    name: a.name.clone(),
                    kind: a.kind as i32,
                    ..Default::default()
                };
                if let Some(file) = self.files.iter().find(|f| &f.role == role) {
                    d.description = file.description.clone();
                    d.file = file.file.display().to_string();
                    if let spec::Engine::Model(m) = &file.engine
                        && a.name == llm_agent::agent_name(role)
                    {
                        d.models = m.models.clone();
                        d.tools = m.tools.clone();
                        d.output = m.output.as_str().into();
                        d.max_steps = m.budget.steps;
                        d.max_tokens = m.budget.tokens;
                        d.max_wall_time_ms = m.budget.wall_time.as_millis() as u64;
                        d.max_cost_usd = m.budget.max_cost_usd;
                    }
                }
                d
            })
            .collect()
    }

    /// What `AgentService/ListTools` answers: the tool registry, sorted by name.
    pub fn describe_tools(&self) -> Vec<baton_proto::ToolDescription> {
        self.tools
            .infos()
            .into_iter()
            .map(|t| baton_proto::ToolDescription {
                name: t.name,
                description: t.description,
                parameters_schema: t.parameters.to_string(),
                side_effects: t.side_effects,
            })
            .collect()
    }

    /// Adds `AgentService` (`ListAgents`, `ListTools`) to `routes`.
    pub fn add_grpc(&self, routes: &mut tonic::service::RoutesBuilder) {
        routes.add_service(baton_proto::agent_service_server::AgentServiceServer::new(
            AgentApi {
                ctx: self.ctx.clone(),
                agents: Arc::new(self.describe_agents()),
                tools: Arc::new(self.describe_tools()),
            },
        ));
    }

    /// Runs one consumer per role until `shutdown` is cancelled, then waits for in-flight
    /// messages. If one consumer fails, the others are stopped and its error is returned.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let roles = self.roles();
        let concurrency = self.config.concurrency;
        let bus = self.ctx.bus.clone();
        let handler = Arc::new(Handler {
            ctx: self.ctx,
            agents: self.agents,
        });
        let stop = shutdown.child_token();
        let mut tasks = tokio::task::JoinSet::new();
        for role in roles {
            let spec = ConsumerSpec::new(SERVICE, &format!("agent-{role}"), &subject::agent(&role))
                .concurrency(concurrency);
            let (bus, handler, stop) = (bus.clone(), handler.clone(), stop.clone());
            tasks.spawn(async move {
                let r = role.clone();
                let result = bus
                    .consume(spec, stop, move |d| {
                        let (handler, role) = (handler.clone(), r.clone());
                        async move { handler.handle(&role, d).await }
                    })
                    .await;
                (role, result)
            });
        }
        let sweeping = tasks.len();
        tasks.spawn(sweep_tool_approvals(
            bus.clone(),
            self.config.tool_approval_timeout,
            stop.clone(),
        ));
        info!(consumers = sweeping, "agent runner started");
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            let error = match joined {
                Ok((_, Ok(()))) => continue,
                Ok((role, Err(e))) => Error::Consumer {
                    role,
                    reason: e.to_string(),
                },
                Err(e) => Error::Consumer {
                    role: "?".into(),
                    reason: e.to_string(),
                },
            };
            warn!(error = %error, "agent runner consumer failed; stopping the others");
            stop.cancel();
            first_error.get_or_insert(error);
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Every `timeout / 10` (between 100 ms and 10 s), denies the tool calls whose approval timed
/// out and publishes decisions left unpublished (see
/// [`ToolApprovals::sweep`](baton_runtime::tool_approvals::ToolApprovals::sweep)). Every replica
/// sweeps; the compare-and-set claim lets only one act on each call. Errors are logged and the
/// next sweep tries again.
async fn sweep_tool_approvals(
    bus: baton_bus::Bus,
    timeout: Duration,
    stop: CancellationToken,
) -> (String, Result<(), BusError>) {
    let every = (timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut store = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return ("tool-approval-sweep".into(), Ok(())),
            _ = tick.tick() => {}
        }
        if store.is_none() {
            match baton_runtime::tool_approvals::ToolApprovals::open(&bus).await {
                Ok(s) => store = Some(s),
                Err(e) => {
                    warn!(error = %e, "cannot open the tool approvals; sweeping later");
                    continue;
                }
            }
        }
        if let Some(s) = &store {
            match s.sweep(std::time::SystemTime::now()).await {
                Ok(0) => {}
                Ok(n) => info!(decided = n, "tool approvals swept"),
                Err(e) => warn!(error = %e, "tool approval sweep failed; trying again"),
            }
        }
    }
}

/// Runs the agent runner with the built-in agents until `shutdown`.
pub async fn run(ctx: Context, config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    AgentRunner::new(ctx, config).await?.run(shutdown).await
}

impl baton_runtime::service::Service for AgentRunner {
    type Config = Config;
    type Error = Error;
    const NAME: &'static str = SERVICE;
    const SECTION: &'static str = SECTION;
    const GRPC_SERVICES: &'static [&'static str] = GRPC_SERVICES;

    fn validate(config: &Config) -> Result<(), Error> {
        config.validate()
    }

    fn prepare(config: &mut Config, common: &baton_runtime::config::CommonConfig) {
        if config.inventory_path.as_os_str().is_empty() {
            config.inventory_path = common.data_dir.join("inventory.toml");
        }
        if config.work_dir.as_os_str().is_empty() {
            config.work_dir = common.data_dir.join("agent-work");
        }
    }

    fn start(ctx: Context, config: Config) -> impl Future<Output = Result<Self, Error>> + Send {
        AgentRunner::new(ctx, config)
    }

    fn add_grpc(&self, routes: &mut tonic::service::RoutesBuilder) {
        AgentRunner::add_grpc(self, routes)
    }

    fn serve(self, shutdown: CancellationToken) -> impl Future<Output = Result<(), Error>> + Send {
        self.run(shutdown)
    }
}

/// `AgentService`: what the runner registered at start (it does not change while it runs).
struct AgentApi {
    ctx: Context,
    agents: Arc<Vec<baton_proto::AgentDescription>>,
    tools: Arc<Vec<baton_proto::ToolDescription>>,
}

#[tonic::async_trait]
impl baton_proto::agent_service_server::AgentService for AgentApi {
    async fn list_agents(
        &self,
        request: tonic::Request<baton_proto::ListAgentsRequest>,
    ) -> Result<tonic::Response<baton_proto::ListAgentsResponse>, tonic::Status> {
        self.ctx.auth.authenticate(&request).await?;
        Ok(tonic::Response::new(baton_proto::ListAgentsResponse {
            agents: self.agents.as_ref().clone(),
        }))
    }

    async fn list_tools(
        &self,
        request: tonic::Request<baton_proto::ListToolsRequest>,
    ) -> Result<tonic::Response<baton_proto::ListToolsResponse>, tonic::Status> {
        self.ctx.auth.authenticate(&request).await?;
        Ok(tonic::Response::new(baton_proto::ListToolsResponse {
            tools: self.tools.as_ref().clone(),
        }))
    }
}

/// What the consumers share.
struct Handler {
    ctx: Context,
    agents: BTreeMap<String, Registered>,
}

impl Handler {
    /// Handles one message of `baton.agent.<role>` and records its metrics.
    async fn handle(&self, role: &str, d: Delivery) -> Result<(), HandlerError> {
        let started = Instant::now();
        let result = self.handle_routed(role, &d).await;
        self.ctx.metrics.observe_handler(SERVICE, started, result)
    }

    async fn handle_routed(&self, role: &str, d: &Delivery) -> Result<&'static str, HandlerError> {
        // A routed task, or a human's (or the timeout's) decision on a tool call its agent
        // paused on: both run the agent, which resumes from its journal.
        let (event, TaskRouted { task, decision }) = match d.expect::<ToolCallDecided>() {
            Ok((event, decided)) => {
                let pending = decided.pending.unwrap_or_default();
                info!(task_id = %event.task_id, step = pending.step, tool = %pending.tool, "tool call decided; resuming the agent");
                (
                    event,
                    TaskRouted {
                        task: pending.task,
                        decision: pending.decision,
                    },
                )
            }
            Err(_) => d.expect::<TaskRouted>()?,
        };
        let spec = decision.as_ref().and_then(|x| x.spec.as_ref());
        let (Some(task), Some(spec)) = (&task, spec) else {
            let reason = "the task_routed event lacks its task or its decision's spec";
            self.fail(&event, FailureCode::InvalidTask, reason.into())
                .await?;
            return Ok("failed");
        };
        let Some(Registered { agent, name, kind }) = self.agents.get(role) else {
            let with: Vec<&str> = self.agents.keys().map(String::as_str).collect();
            let with = if with.is_empty() {
                "none".to_string()
            } else {
                with.join(", ")
            };
            let reason = format!("no agent for role {role:?} yet; roles with agents: {with}");
            self.fail(&event, FailureCode::NoAgentForRole, reason)
                .await?;
            return Ok("failed");
        };
        let started = Instant::now();
        // A model-backed agent may think for longer than the consumer's ack_wait: tell
        // JetStream the message is in progress, a third of ack_wait apart, so it is not
        // redelivered to another runner while this one works on it.
        let work = agent.plan(task, spec);
        tokio::pin!(work);
        let every = (self.ctx.bus.config().ack_wait / 3).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let planned = loop {
            tokio::select! {
                r = &mut work => break r,
                _ = tick.tick() => d.in_progress().await,
            }
        };
        match planned {
            Ok(mut plan) => {
                // Who made the plan is the runner's word, from the registration: an agent's
                // own claim about its name or kind is overwritten (validation trusts these).
                let run = plan.agent_run.get_or_insert_with(Default::default);
                run.agent = name.clone();
                run.set_kind(*kind);
                run.duration_ms = started.elapsed().as_millis() as u64;
                plan.task_id = event.task_id.clone();
                info!(task_id = %event.task_id, agent = %name, summary = %redact::for_log(&plan.summary), "plan proposed");
                let body = Body::PlanProposed(PlanProposed {
                    task: Some(task.clone()),
                    spec: Some(spec.clone()),
                    plan: Some(plan),
                });
                self.ctx
                    .bus
                    .publish(
                        subject::TASK_PROPOSED,
                        &event.follow("proposed", SERVICE, body),
                    )
                    .await?;
                Ok("proposed")
            }
            Err(AgentError::Permanent(reason)) => {
                self.fail(&event, FailureCode::AgentFailed, reason).await?;
                Ok("failed")
            }
            Err(AgentError::AwaitingApproval(what)) => {
                // Paused durably: the pending call is stored and announced; the decision runs
                // the agent again. Ack, so no worker waits.
                info!(task_id = %event.task_id, agent = %name, what = %redact::for_log(&what), "agent awaits a tool call approval");
                Ok("awaiting_approval")
            }
            Err(AgentError::Transient(reason)) => {
                let max = self.ctx.bus.config().max_deliver;
                if d.deliveries() >= max {
                    // The bus dead-letters the message after this; end the task too, so it
                    // does not wait forever.
                    let why = format!("{name} gave up after {} attempts: {reason}", d.deliveries());
                    self.fail(&event, FailureCode::AgentUnavailable, why)
                        .await?;
                }
                warn!(task_id = %event.task_id, attempt = d.deliveries(), reason = %redact::for_log(&reason), "agent failed transiently");
                Err(HandlerError::Retry(reason))
            }
        }
    }

    /// Publishes `TaskFailed` for the task of `event`.
    async fn fail(&self, event: &Event, code: FailureCode, reason: String) -> Result<(), BusError> {
        warn!(task_id = %event.task_id, %code, reason = %redact::for_log(&reason), "task failed");
        self.ctx
            .bus
            .publish(
                subject::TASK_FAILED,
                &event.fail(SERVICE, code, reason, None),
            )
            .await?;
        Ok(())
    }
}
