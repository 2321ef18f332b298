//! `baton`: run Baton (`up`, `serve`) and talk to it (`submit`, `watch`, `approve`, …).
//!
//! Configuration is loaded once, before any command runs, exactly as a service loads it
//! (`baton_runtime::config`): the global flags are its last layer. Each client command is one
//! function: it connects with a token holding the role it needs, makes its call and prints.

use anyhow::Context as _;
use baton::client::Clients;
use baton::config::BatonConfig;
use baton::up::{Baton, ServiceName};
use baton_proto::{
    ApproveRequest, ListPendingRequest, ListTasksRequest, RejectRequest, SubmitTaskRequest,
    TaskStatus, Trigger, VerifyAuditRequest,
};
use baton_runtime::auth::{Authenticator, Role};
use baton_runtime::config::{CommonFlags, EnvVars};
use clap::{Args, Parser, Subcommand};
use figment::Figment;
use figment::providers::Serialized;
use std::process::ExitCode;
use std::time::Duration;

#[global_allocator]
static ALLOC: baton_runtime::Allocator = baton_runtime::Allocator;

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "Event-driven, policy-gated orchestrator for AI tasks"
)]
struct Cli {
    /// The configuration file and the flags every Baton process takes.
    #[command(flatten)]
    flags: CommonFlags,
    /// gRPC endpoint for client commands (client.url).
    #[arg(long, global = true, env = "BATON_URL", value_name = "URL")]
    url: Option<String>,
    /// Bearer token for client commands (client.token; default: minted from the local
    /// development secret).
    #[arg(long, global = true, env = "BATON_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// The flags as the last configuration layer.
    fn layer(&self) -> Figment {
        let mut f = Figment::from(self.flags.clone());
        if let Some(url) = &self.url {
            f = f.merge(Serialized::default("client.url", url));
        }
        if let Some(token) = &self.token {
            f = f.merge(Serialized::default("client.token", token));
        }
        f
    }
}

#[derive(Subcommand)]
enum Command {
    /// Runs all six services in this process (starting nats-server if no NATS URL is set).
    Up,
    /// Runs one service (NATS URL required).
    Serve {
        /// The service to run.
        service: ServiceName,
    },
    /// Prints the configuration the services would run with (derived values filled in,
    /// secrets redacted), or what is wrong with it.
    Config,
    /// For an external nats-server: makes (or reuses) one nkey seed per identity (admin, each
    /// service, a trigger publisher per `nats_server.trigger_tenants`) and prints the
    /// server's authorization block and how to start each service with its seed.
    NatsConfig {
        /// Where the seed files are kept (mode 0600). Default: `<data_dir>/nats/keys`.
        #[arg(long, value_name = "DIR")]
        keys_dir: Option<std::path::PathBuf>,
        /// Instead of printing: connect to nats.url as the admin (its seed in the keys
        /// directory) and create or update the streams, once, before the services start.
        #[arg(long)]
        create_streams: bool,
    },
    /// Submits a trigger; prints the task id (and follows it with --watch).
    Submit(SubmitArgs),
    /// Lists tasks, newest first.
    Tasks(TasksArgs),
    /// Shows a task, its events and what it delivered (report, artifacts, sandbox runs), or
    /// writes one artifact's raw content with --artifact.
    Task {
        /// Task id (as `submit` printed it).
        id: String,
        /// Writes this artifact's raw content (`report`, `main.py`, …) to stdout instead.
        #[arg(long, value_name = "NAME")]
        artifact: Option<String>,
        /// With --artifact: write to this file instead of stdout.
        #[arg(long, short, value_name = "FILE", requires = "artifact")]
        output: Option<std::path::PathBuf>,
    },
    /// Follows a task's events live until it ends, with each model and tool call of its agent
    /// as it happens.
    Watch {
        /// Task id (as `submit` printed it).
        id: String,
    },
    /// Lists what waits for a human: plans (kind `plan`), agents' tool calls the tool policy
    /// sent to an approver (kind `tool_call`, with the agent step to pass as `--step`), and
    /// tasks waiting for an operator to choose their role (`awaiting_clarification`; answer
    /// with `baton route`).
    Pending,
    /// Lists the roles tasks may be routed to and the environments they may target (the
    /// `[catalog]` the services run with).
    Roles,
    /// Lists the agent of each role: name, kind, and what its agent file declares (models,
    /// tools, output, budgets).
    Agents,
    /// Lists the tools LLM agents may call: name, side effects, description.
    Tools,
    /// Approves a plan, or with `--step` an agent's tool call, waiting for approval (needs the
    /// approver role).
    Approve {
        /// Task id of the waiting plan or tool call.
        id: String,
        /// The agent step of a waiting tool call (`baton pending` shows it); without it, the
        /// task's plan is approved.
        #[arg(long, default_value_t = 0)]
        step: u32,
        /// With `--step`: the arguments hash `baton pending` showed; the approval is refused
        /// unless the waiting call has exactly those arguments.
        #[arg(long, default_value = "")]
        args_hash: String,
        /// Why it is approved, kept in the audit log.
        #[arg(long, default_value = "")]
        reason: String,
        /// The plan hash `baton pending` showed: the approval is refused unless the plan
        /// waiting is exactly that plan. Without it, the plan validation holds is approved.
        #[arg(long, default_value = "")]
        plan_hash: String,
    },
    /// Rejects a plan, or with `--step` denies an agent's tool call, waiting for approval
    /// (needs the approver role). A denied tool call's reason reaches the agent's model.
    Reject {
        /// Task id of the waiting plan or tool call.
        id: String,
        /// The agent step of a waiting tool call; without it, the task's plan is rejected.
        #[arg(long, default_value_t = 0)]
        step: u32,
        /// Why it is rejected (required), kept in the audit log.
        #[arg(long)]
        reason: String,
    },
    /// Measures the decision chain over a labelled file: accuracy, per-tier figures, a
    /// confusion matrix and classify latency (in process; nothing is published).
    EvalRouting(baton::routing::EvalArgs),
    /// Shows the decision the decision service would make for a request, with every tier's
    /// candidate and explanation (nothing is published).
    Classify(baton::routing::ClassifyArgs),
    /// Routes a task awaiting clarification to a role, or rejects it (needs the operator role).
    Route(baton::routing::RouteArgs),
    /// Replays the decisions recorded in the audit log through candidate rules and examples
    /// and lists the tasks whose role would change (routes nothing).
    Shadow(baton::routing::ShadowArgs),
    /// Audit log commands.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Mints a development token with the configured or local development secret.
    Token {
        /// Who the token speaks for (the `sub` claim).
        #[arg(long, default_value = "dev")]
        sub: String,
        /// Whose tasks it acts on (the `tenant` claim).
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Roles (repeat): submitter, approver, operator, admin.
        #[arg(long = "role", value_parser = parse_role, default_values = ["submitter"])]
        roles: Vec<Role>,
        /// How long the token is valid (`12h`, `30m`).
        #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

/// `baton submit`.
#[derive(Args)]
struct SubmitArgs {
    /// What to do, in words.
    text: String,
    /// development, staging or production.
    #[arg(long, short)]
    env: Option<String>,
    /// Idempotency key: a repeat within the duplicate window answers with the first task.
    #[arg(long)]
    key: Option<String>,
    /// Agent role, bypassing classification.
    #[arg(long)]
    role: Option<String>,
    /// Labels, `key=value`.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Follow the task until it ends.
    #[arg(long, short)]
    watch: bool,
}

/// `baton tasks`.
#[derive(Args)]
struct TasksArgs {
    /// Filter by status (received, routed, proposed, awaiting_approval, approved, executing, completed, failed, rejected).
    #[arg(long)]
    status: Option<String>,
    /// Filter by role.
    #[arg(long)]
    role: Option<String>,
    /// Filter by tenant (admins only).
    #[arg(long)]
    tenant: Option<String>,
    /// Page size.
    #[arg(long, default_value_t = 20)]
    limit: u32,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recomputes the audit hash chain and names the first record that does not verify.
    Verify,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label {s:?} is not key=value"))
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s)
        .ok_or_else(|| format!("unknown role {s:?}: use submitter, approver, operator or admin"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = BatonConfig::load(
        cli.flags.config.as_deref(),
        &EnvVars::from_process(),
        cli.layer(),
    )?;
    match cli.command {
        Command::Up => up(config).await,
        Command::Serve { service } => serve(config, service).await,
        Command::Config => {
            print!(
                "{}",
                config
                    .to_toml()
                    .context("cannot render the configuration")?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::NatsConfig {
            keys_dir,
            create_streams,
        } => nats_config(&config, keys_dir, create_streams).await,
        Command::Token {
            sub,
            tenant,
            roles,
            ttl,
        } => {
            println!(
                "{}",
                authenticator(&config)?.try_mint(&sub, &tenant, &roles, ttl)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit(args) => submit(&config, args).await,
        Command::Tasks(args) => list_tasks(&config, args).await,
        Command::Task {
            id,
            artifact,
            output,
        } => match artifact {
            Some(name) => write_artifact(&config, id, name, output).await,
            None => show_task(&config, id).await,
        },
        Command::Watch { id } => {
            let mut c = connect(&config, &[Role::Submitter]).await?;
            watch_task(&mut c, &id).await
        }
        Command::Pending => list_pending(&config).await,
        Command::Roles => list_roles(&config).await,
        Command::Agents => list_agents(&config).await,
        Command::Tools => list_tools(&config).await,
        Command::Approve {
            id,
            step,
            args_hash,
            reason,
            plan_hash,
        } => approve(&config, id, step, args_hash, reason, plan_hash).await,
        Command::Reject { id, step, reason } => reject(&config, id, step, reason).await,
        Command::Audit {
            command: AuditCommand::Verify,
        } => verify_audit(&config).await,
        Command::EvalRouting(args) => baton::routing::eval_routing(&config, args).await,
        Command::Classify(args) => {
            baton::routing::classify(connect(&config, &[Role::Submitter]).await?, args).await
        }
        Command::Route(args) => {
            baton::routing::route(connect(&config, &[Role::Operator]).await?, args).await
        }
        Command::Shadow(args) => {
            let c = connect(&config, &[Role::Operator]).await?;
            baton::routing::shadow(&config, c, args).await
        }
    }
}

/// `baton up`: all six services, until SIGINT/SIGTERM.
async fn up(mut config: BatonConfig) -> anyhow::Result<ExitCode> {
    config.common.log.otlp =
        baton_runtime::telemetry::with_default_service_name(config.common.log.otlp, &[]);
    baton_runtime::telemetry::init(&config.common.log);
    let shutdown = baton_runtime::shutdown::on_signal();
    let baton = Baton::start(config, &ServiceName::ALL).await?;
    eprintln!(
        "baton is up: gRPC {} · HTTP http://{} (/health /ready /metrics) · NATS {}\n\
         try: baton submit --env production --watch \"Fix drift on production web servers\"",
        baton.grpc_addr, baton.http_addr, baton.config.common.nats.url
    );
    let result = baton.run_until(shutdown).await;
    baton_runtime::telemetry::shutdown().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

/// `baton nats-config`: the identities of an external nats-server.
async fn nats_config(
    config: &BatonConfig,
    keys_dir: Option<std::path::PathBuf>,
    create_streams: bool,
) -> anyhow::Result<ExitCode> {
    use baton::nats_auth::Identities;
    use baton_bus::identity::{ADMIN, inbox_prefix};
    let dir = keys_dir.unwrap_or_else(|| config.common.data_dir.join("nats").join("keys"));
    let ids = Identities::prepare(config, &baton_runtime::plugins::Plugins::default(), &dir)?;
    if create_streams {
        if config.common.nats.url.is_empty() {
            anyhow::bail!("--create-streams needs nats.url (--nats-url, BATON_NATS__URL)");
        }
        let bus = baton_bus::Bus::connect(ids.bus_config(&config.common.nats, ADMIN))
            .await
            .context("cannot set up the streams as the admin")?;
        println!(
            "streams {} and {} are ready on {}",
            bus.config().stream,
            bus.config().dead_stream,
            config.common.nats.url
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "# Baton's NATS identities: include this block in the nats-server configuration\n\
         # (e.g. `include baton-auth.conf`). Seeds (keep them secret): {}\n",
        dir.display()
    );
    print!("{}", ids.authorization_block());
    println!(
        "
# 1. Once, create the streams as the admin:"
    );
    println!(
        "#    BATON_NATS__URL=<url> baton nats-config --keys-dir {} --create-streams",
        dir.display()
    );
    println!("# 2. Start each service with its own seed and inbox prefix:");
    for service in ServiceName::ALL {
        let user = baton::nats_auth::user_of(service);
        if let Some(seed) = ids.seed_file(&user) {
            println!(
                "#    BATON_NATS__URL=<url> BATON_NATS__NKEY_SEED_FILE={} BATON_NATS__INBOX_PREFIX={} baton serve {service}",
                seed.display(),
                inbox_prefix(&user)
            );
        }
    }
    println!(
        "# 3. Give each tenant's trigger publisher its seed; it may publish only on baton.trigger.<tenant>.>:"
    );
    for tenant in &config.nats_server.trigger_tenants {
        let user = baton_bus::identity::trigger_user_name(tenant);
        if let Some(seed) = ids.seed_file(&user) {
            println!(
                "#    nats --nkey {} pub baton.trigger.{tenant}.cli '{{\"text\":\"…\"}}'",
                seed.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `baton serve <service>`: one service against a running NATS, until SIGINT/SIGTERM.
async fn serve(mut config: BatonConfig, service: ServiceName) -> anyhow::Result<ExitCode> {
    if config.common.nats.url.is_empty() {
        anyhow::bail!(
            "`baton serve` needs a NATS server: set nats.url (--nats-url, BATON_NATS__URL=nats://host:4222)"
        );
    }
    config.common.log.otlp = baton_runtime::telemetry::with_default_service_name(
        config.common.log.otlp,
        &[service.to_string().as_str()],
    );
    baton_runtime::telemetry::init(&config.common.log);
    let shutdown = baton_runtime::shutdown::on_signal();
    let baton = Baton::start(config, &[service]).await?;
    eprintln!(
        "baton {service:?} is up: gRPC {} · HTTP http://{}",
        baton.grpc_addr, baton.http_addr
    );
    let result = baton.run_until(shutdown).await;
    baton_runtime::telemetry::shutdown().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

/// The configured secret, or the development secret `baton up` wrote into `data_dir`.
fn authenticator(config: &BatonConfig) -> anyhow::Result<Authenticator> {
    let mut auth = config.common.auth.clone();
    if auth.wants_dev_secret() {
        let path = config.common.data_dir.join("jwt.secret");
        auth.hs256_secret = std::fs::read_to_string(&path)
            .with_context(|| {
                format!(
                    "no token given and no development secret at {} (run `baton up` first, pass --token, or set auth.hs256_secret)",
                    path.display()
                )
            })?
            .trim()
            .to_string();
    }
    Ok(Authenticator::new(&auth)?)
}

/// Clients of `client.url` with `client.token`, or, when there is none, a 10-minute token
/// minted for `$USER` with `roles` (the ones the command needs).
async fn connect(config: &BatonConfig, roles: &[Role]) -> anyhow::Result<Clients> {
    let token = if config.client.token.is_empty() {
        let user = std::env::var("USER").unwrap_or_else(|_| "dev".into());
        authenticator(config)?.try_mint(
            &user,
            &config.client.tenant,
            roles,
            Duration::from_secs(600),
        )?
    } else {
        config.client.token.clone()
    };
    let read = |key: &'static str, path: &std::path::Path| {
        baton_runtime::tls::read(key, path).context("cannot set up TLS to baton")
    };
    let c = &config.client;
    let tls = baton::client::ClientTls {
        ca: c.ca.as_deref().map(|p| read("client.ca", p)).transpose()?,
        identity: match (&c.cert, &c.key) {
            (Some(cert), Some(key)) => Some((read("client.cert", cert)?, read("client.key", key)?)),
            (None, None) => None,
            _ => anyhow::bail!("set both client.cert and client.key (PEM files), or neither"),
        },
    };
    Ok(Clients::connect_tls(&config.client.url, &token, &tls).await?)
}

/// `baton submit`: prints the task id, then follows it with `--watch`.
async fn submit(config: &BatonConfig, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let mut c = connect(config, &[Role::Submitter]).await?;
    let trigger = Trigger {
        text: args.text,
        environment: args.env.unwrap_or_default(),
        idempotency_key: args.key.unwrap_or_default(),
        role: args.role.unwrap_or_default(),
        labels: args.labels.into_iter().collect(),
        source: String::new(),
    };
    let r = c
        .triggers
        .submit_task(SubmitTaskRequest {
            trigger: Some(trigger),
        })
        .await?
        .into_inner();
    println!(
        "{}{}",
        r.task_id,
        if r.deduplicated {
            " (deduplicated: an earlier trigger had this key)"
        } else {
            ""
        }
    );
    if args.watch {
        return watch_task(&mut c, &r.task_id).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// `baton tasks`: one line per task.
async fn list_tasks(config: &BatonConfig, args: TasksArgs) -> anyhow::Result<ExitCode> {
    let status = match args.status {
        Some(s) => TaskStatus::parse(&s).with_context(|| format!("unknown status {s:?}"))? as i32,
        None => 0,
    };
    let mut c = connect(config, &[Role::Submitter]).await?;
    let r = c
        .tasks
        .list_tasks(ListTasksRequest {
            status,
            role: args.role.unwrap_or_default(),
            tenant: args.tenant.unwrap_or_default(),
            page_size: args.limit,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    println!(
        "{:<38} {:<18} {:<11} {:<11} TEXT",
        "TASK", "STATUS", "ROLE", "ENV"
    );
    for t in r.tasks {
        println!(
            "{:<38} {:<18} {:<11} {:<11} {}",
            t.task_id,
            t.status().label(),
            t.role,
            t.environment,
            t.text
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `baton task <id>`: the task's view, its events, then what it delivered.
async fn show_task(config: &BatonConfig, id: String) -> anyhow::Result<ExitCode> {
    let mut c = connect(config, &[Role::Submitter]).await?;
    baton::inspect::show_task(&mut c, &id, &mut std::io::stdout()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `baton task <id> --artifact NAME [-o FILE]`: the artifact's raw content.
async fn write_artifact(
    config: &BatonConfig,
    id: String,
    name: String,
    output: Option<std::path::PathBuf>,
) -> anyhow::Result<ExitCode> {
    let mut c = connect(config, &[Role::Submitter]).await?;
    match output {
        None => {
            baton::inspect::write_artifact(&mut c, &id, &name, &mut std::io::stdout()).await?;
        }
        Some(path) => {
            // Written beside the target and renamed, so a failed call leaves no partial file.
            let mut partial = path.clone().into_os_string();
            partial.push(format!(".partial-{}", std::process::id()));
            let partial = std::path::PathBuf::from(partial);
            let mut file = std::fs::File::create(&partial)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            let written = baton::inspect::write_artifact(&mut c, &id, &name, &mut file).await;
            drop(file);
            let size = match written {
                Ok(size) => size,
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(e.into());
                }
            };
            std::fs::rename(&partial, &path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {size} bytes of {name} to {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `baton pending`: one line per plan waiting for an approver (kind `plan`), ending with the
/// plan's hash (pass it to `baton approve --plan-hash` to approve exactly that plan); one line
/// per agent tool call waiting (kind `tool_call`: task, step, tool, arguments as the approver
/// may see them, the policy's reason, deadline, and the arguments hash for
/// `baton approve <task> --step <n> --args-hash <hash>`).
async fn list_pending(config: &BatonConfig) -> anyhow::Result<ExitCode> {
    let mut c = connect(config, &[Role::Submitter]).await?;
    let r = c
        .approvals
        .list_pending(ListPendingRequest {})
        .await?
        .into_inner();
    for p in r.pending {
        let reasons = p
            .validation
            .map(|v| v.reasons.join("; "))
            .unwrap_or_default();
        println!(
            "plan  {}  {}  {}  plan {}",
            p.task_id,
            p.plan.map(|p| p.summary).unwrap_or_default(),
            reasons,
            p.plan_hash
        );
    }
    for t in r.tool_calls {
        println!(
            "tool_call  {}  step {}  {} {}  {}  until {}  args {}",
            t.task_id,
            t.step,
            t.tool,
            t.arguments,
            t.reason,
            t.deadline
                .as_ref()
                .map(baton_runtime::tool_approvals::rfc3339)
                .unwrap_or_default(),
            t.arguments_hash
        );
    }
    baton::routing::print_awaiting(&mut c).await?;
    Ok(ExitCode::SUCCESS)
}

/// `baton roles`: the catalog as `DecisionService/ListRoles` reports it.
async fn list_roles(config: &BatonConfig) -> anyhow::Result<ExitCode> {
    let mut c = connect(config, &[Role::Submitter]).await?;
    let r = c
        .decisions
        .list_roles(baton_proto::ListRolesRequest {})
        .await?
        .into_inner();
    println!("roles: {}", r.roles.join(", "));
    println!("environments: {}", r.environments.join(", "));
    Ok(ExitCode::SUCCESS)
}

/// `baton agents`: `AgentService/ListAgents`, one block per role.
async fn list_agents(config: &BatonConfig) -> anyhow::Result<ExitCode> {
    let mut c = connect(config, &[Role::Submitter]).await?;
    let r = c
        .agents
        .list_agents(baton_proto::ListAgentsRequest {})
        .await?
        .into_inner();
    for a in r.agents {
        let kind = match a.kind() {
            baton_proto::AgentKind::Llm => "llm",
            baton_proto::AgentKind::Runbook => "runbook",
            baton_proto::AgentKind::Unspecified => "unspecified",
        };
        println!("{:<12} {} ({kind})", a.role, a.name);
        if !a.description.is_empty() {
            println!("             {}", a.description);
        }
        if !a.models.is_empty() {
            println!(
                "             models: {}; output: {}; tools: {}",
                a.models.join(", "),
                a.output,
                if a.tools.is_empty() {
                    "none".to_string()
                } else {
                    a.tools.join(", ")
                }
            );
            println!(
                "             budget: {} steps, {} tokens, {} s{}",
                a.max_steps,
                a.max_tokens,
                a.max_wall_time_ms / 1000,
                if a.max_cost_usd > 0.0 {
                    format!(", ${:.2}", a.max_cost_usd)
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `baton tools`: `AgentService/ListTools`, one line per tool.
async fn list_tools(config: &BatonConfig) -> anyhow::Result<ExitCode> {
    let mut c = connect(config, &[Role::Submitter]).await?;
    let r = c
        .agents
        .list_tools(baton_proto::ListToolsRequest {})
        .await?
        .into_inner();
    for t in r.tools {
        let effects = if t.side_effects {
            "side effects"
        } else {
            "read-only"
        };
        println!("{:<18} {effects:<12} {}", t.name, t.description);
    }
    Ok(ExitCode::SUCCESS)
}

/// `baton approve <id> [--plan-hash <hash>]`, or `baton approve <id> --step <n> [--args-hash
/// <hash>]` for a tool call (approver role).
async fn approve(
    config: &BatonConfig,
    id: String,
    step: u32,
    args_hash: String,
    reason: String,
    plan_hash: String,
) -> anyhow::Result<ExitCode> {
    let mut c = connect(config, &[Role::Approver]).await?;
    let r = c
        .approvals
        .approve(ApproveRequest {
            task_id: id,
            reason,
            plan_hash,
            step,
            arguments_hash: args_hash,
        })
        .await?
        .into_inner();
    let approval = r.approval.unwrap_or_default();
    if step > 0 {
        println!(
            "tool call at step {} approved by {} (arguments {})",
            approval.step, approval.approver, approval.arguments_hash
        );
    } else {
        println!(
            "approved by {} (plan {})",
            approval.approver, approval.plan_hash
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `baton reject <id> [--step <n>] --reason …` (approver role).
async fn reject(
    config: &BatonConfig,
    id: String,
    step: u32,
    reason: String,
) -> anyhow::Result<ExitCode> {
    let mut c = connect(config, &[Role::Approver]).await?;
    let r = c
        .approvals
        .reject(RejectRequest {
            task_id: id,
            reason,
            step,
        })
        .await?
        .into_inner();
    let approval = r.approval.unwrap_or_default();
    if step > 0 {
        println!(
            "tool call at step {} denied by {}",
            approval.step, approval.approver
        );
    } else {
        println!("rejected by {}", approval.approver);
    }
    Ok(ExitCode::SUCCESS)
}

/// `baton audit verify` (operator role): exit code 1 when the chain is broken.
async fn verify_audit(config: &BatonConfig) -> anyhow::Result<ExitCode> {
    let mut c = connect(config, &[Role::Operator]).await?;
    let r = c
        .tasks
        .verify_audit(VerifyAuditRequest {})
        .await?
        .into_inner();
    if r.ok {
        println!("audit chain verified: {} records", r.records_checked);
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "audit chain BROKEN at record {}: {}",
            r.first_bad_sequence, r.problem
        );
        Ok(ExitCode::FAILURE)
    }
}

/// Prints a task's events and its agent's progress until it ends; exit code 0 when it
/// completed.
async fn watch_task(c: &mut Clients, id: &str) -> anyhow::Result<ExitCode> {
    let completed = baton::inspect::watch(c, id, &mut std::io::stdout()).await?;
    Ok(if completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
