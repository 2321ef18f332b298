//! `baton`: run Baton (`up`, `serve`) and talk to it (`submit`, `watch`, `approve`, …).

use anyhow::{Context as _, bail};
use baton::client::{Clients, describe, is_final};
use baton::config::BatonConfig;
use baton::up::{Baton, ServiceName};
use baton_proto::{
    ApproveRequest, GetTaskRequest, ListPendingRequest, ListTasksRequest, RejectRequest,
    SubmitTaskRequest, TaskStatus, Trigger, VerifyAuditRequest, WatchTaskRequest,
};
use baton_runtime::auth::{Authenticator, Role};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "Event-driven, policy-gated orchestrator for AI tasks"
)]
struct Cli {
    /// Configuration file (TOML); `BATON_*` variables override it.
    #[arg(long, short, global = true, env = "BATON_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC endpoint for client commands.
    #[arg(long, global = true, env = "BATON_URL")]
    url: Option<String>,
    /// Bearer token for client commands (default: minted from the local development secret).
    #[arg(long, global = true, env = "BATON_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs all six services in this process (starting nats-server if no NATS URL is set).
    Up {
        /// NATS URL of a running server (else a child nats-server is started).
        #[arg(long)]
        nats_url: Option<String>,
        /// gRPC listen address.
        #[arg(long)]
        grpc_addr: Option<std::net::SocketAddr>,
        /// HTTP listen address (/health, /ready, /metrics).
        #[arg(long)]
        http_addr: Option<std::net::SocketAddr>,
        /// Data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Runs one service (NATS URL required).
    Serve {
        /// Which service.
        service: ServiceName,
    },
    /// Prints the merged configuration.
    Config,
    /// Submits a trigger; prints the task id (and follows it with --watch).
    Submit {
        /// What to do, in words.
        text: String,
        /// development, staging or production.
        #[arg(long, short)]
        env: Option<String>,
        /// Idempotency key.
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
    },
    /// Lists tasks, newest first.
    Tasks {
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
    },
    /// Shows a task and its events.
    Task {
        /// Task id.
        id: String,
    },
    /// Follows a task's events live until it ends.
    Watch {
        /// Task id.
        id: String,
    },
    /// Lists plans waiting for approval.
    Pending,
    /// Approves a plan waiting for approval (needs the approver role).
    Approve {
        /// Task id.
        id: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Rejects a plan waiting for approval (needs the approver role).
    Reject {
        /// Task id.
        id: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// Audit log commands.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Mints a development token with the configured or local development secret.
    Token {
        /// Subject.
        #[arg(long, default_value = "dev")]
        sub: String,
        /// Tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Roles (repeat): submitter, approver, operator, admin.
        #[arg(long = "role", value_parser = parse_role, default_values = ["submitter"])]
        roles: Vec<Role>,
        /// Lifetime.
        #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
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
    let mut config = BatonConfig::load(cli.config.as_deref())?;
    match cli.command {
        Command::Up {
            nats_url,
            grpc_addr,
            http_addr,
            data_dir,
        } => {
            if let Some(u) = nats_url {
                config.nats.url = u;
            }
            if let Some(a) = grpc_addr {
                config.grpc_addr = a;
            }
            if let Some(a) = http_addr {
                config.http_addr = a;
            }
            if let Some(d) = data_dir {
                config.data_dir = d;
            }
            baton_runtime::telemetry::init(&config.log);
            let shutdown = baton_runtime::shutdown::on_signal();
            let baton = Baton::start(config, &ServiceName::ALL).await?;
            eprintln!(
                "baton is up: gRPC {} · HTTP http://{} (/health /ready /metrics) · NATS {}\n\
                 try: baton submit --env production --watch \"Fix drift on production web servers\"",
                baton.grpc_addr, baton.http_addr, baton.config.nats.url
            );
            baton.run_until(shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { service } => {
            if config.nats.url.is_empty() {
                bail!(
                    "`baton serve` needs a NATS server: set nats.url (BATON_NATS__URL=nats://host:4222)"
                );
            }
            baton_runtime::telemetry::init(&config.log);
            let shutdown = baton_runtime::shutdown::on_signal();
            let baton = Baton::start(config, &[service]).await?;
            eprintln!(
                "baton {service:?} is up: gRPC {} · HTTP http://{}",
                baton.grpc_addr, baton.http_addr
            );
            baton.run_until(shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config => {
            print!(
                "{}",
                toml::to_string_pretty(&config).context("cannot render the configuration")?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            sub,
            tenant,
            roles,
            ttl,
        } => {
            let auth = authenticator(&config)?;
            println!("{}", auth.mint(&sub, &tenant, &roles, ttl));
            Ok(ExitCode::SUCCESS)
        }
        command => client_command(cli.url, cli.token, config, command).await,
    }
}

fn authenticator(config: &BatonConfig) -> anyhow::Result<Authenticator> {
    let mut auth = config.auth.clone();
    if auth.hs256_secret.is_empty() {
        let path = config.data_dir.join("jwt.secret");
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

async fn client_command(
    url: Option<String>,
    token: Option<String>,
    config: BatonConfig,
    command: Command,
) -> anyhow::Result<ExitCode> {
    let url = url.unwrap_or_else(|| config.client.url.clone());
    let roles: &[Role] = match &command {
        Command::Approve { .. } | Command::Reject { .. } => &[Role::Approver],
        Command::Audit { .. } => &[Role::Operator],
        _ => &[Role::Submitter],
    };
    let token = match token.or_else(|| Some(config.client.token.clone()).filter(|t| !t.is_empty()))
    {
        Some(t) => t,
        None => {
            let user = std::env::var("USER").unwrap_or_else(|_| "dev".into());
            authenticator(&config)?.mint(
                &user,
                &config.client.tenant,
                roles,
                Duration::from_secs(600),
            )
        }
    };
    let mut c = Clients::connect(&url, &token).await?;
    match command {
        Command::Submit {
            text,
            env,
            key,
            role,
            labels,
            watch,
        } => {
            let trigger = Trigger {
                text,
                environment: env.unwrap_or_default(),
                idempotency_key: key.unwrap_or_default(),
                role: role.unwrap_or_default(),
                labels: labels.into_iter().collect(),
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
            if watch {
                return watch_task(&mut c, &r.task_id).await;
            }
        }
        Command::Tasks {
            status,
            role,
            tenant,
            limit,
        } => {
            let status = match status {
                Some(s) => {
                    TaskStatus::parse(&s).with_context(|| format!("unknown status {s:?}"))? as i32
                }
                None => 0,
            };
            let r = c
                .tasks
                .list_tasks(ListTasksRequest {
                    status,
                    role: role.unwrap_or_default(),
                    tenant: tenant.unwrap_or_default(),
                    page_size: limit,
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
        }
        Command::Task { id } => {
            let r = c
                .tasks
                .get_task(GetTaskRequest { task_id: id })
                .await?
                .into_inner();
            let t = r.task.unwrap_or_default();
            println!(
                "task {} [{}] tenant {} · role {} · {} · risk {}",
                t.task_id,
                t.status().label(),
                t.tenant,
                t.role,
                t.environment,
                t.risk().label()
            );
            println!(
                "  \"{}\"{}",
                t.text,
                if t.reason.is_empty() {
                    String::new()
                } else {
                    format!("\n  reason: {}", t.reason)
                }
            );
            for rec in &r.events {
                println!("{}", describe(rec));
            }
        }
        Command::Watch { id } => return watch_task(&mut c, &id).await,
        Command::Pending => {
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
                    "{}  {}  {}",
                    p.task_id,
                    p.plan.map(|p| p.summary).unwrap_or_default(),
                    reasons
                );
            }
        }
        Command::Approve { id, reason } => {
            let r = c
                .approvals
                .approve(ApproveRequest {
                    task_id: id,
                    reason,
                })
                .await?
                .into_inner();
            println!("approved by {}", r.approval.unwrap_or_default().approver);
        }
        Command::Reject { id, reason } => {
            let r = c
                .approvals
                .reject(RejectRequest {
                    task_id: id,
                    reason,
                })
                .await?
                .into_inner();
            println!("rejected by {}", r.approval.unwrap_or_default().approver);
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let r = c
                .tasks
                .verify_audit(VerifyAuditRequest {})
                .await?
                .into_inner();
            if r.ok {
                println!("audit chain verified: {} records", r.records_checked);
            } else {
                println!(
                    "audit chain BROKEN at record {}: {}",
                    r.first_bad_sequence, r.problem
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Up { .. } | Command::Serve { .. } | Command::Config | Command::Token { .. } => {
            unreachable!("handled above")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a task's events until it ends; exit code 0 when it completed.
async fn watch_task(c: &mut Clients, id: &str) -> anyhow::Result<ExitCode> {
    let mut stream = c
        .tasks
        .watch_task(WatchTaskRequest {
            task_id: id.to_string(),
        })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(rec) = stream.message().await? {
        println!("{}", describe(&rec));
        if is_final(&rec) {
            last = Some(rec);
            break;
        }
    }
    let completed = last
        .and_then(|r| r.event)
        .is_some_and(|e| matches!(e.body, Some(baton_proto::event::Body::TaskCompleted(_))));
    Ok(if completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
