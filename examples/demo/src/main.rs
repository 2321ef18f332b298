//! The demo: ten production web servers on loopback (six drifted), Baton with all six services
//! in this process (and its own nats-server), and two runs of "Fix drift on production web
//! servers":
//!
//! 1. trigger → drift role → canary + waves plan → policies → waits for approval → approved by
//!    an approver token → canary, waves, health checks → completed → audit chain verified;
//! 2. the fleet drifts again and one server fails its health check after its change in a wave:
//!    the assets already changed are rolled back and the task fails with the reason;
//! 3. on the local model (llama-server, started by Baton as a child): "Why did our cloud bill
//!    jump 40% this month?" → the `cost` agent fetches the billing fixture this demo ships
//!    (`examples/demo/billing.json`, on loopback) with `http_request` (policy-checked) → a
//!    report with findings and recommendations → validated → completed → audited;
//! 4. "Write a Python function to reverse a string" → the `codegen` agent → code whose tests
//!    pass in the Docker sandbox → completed; `baton task <id> --artifact solution.py` writes it.
//!
//! Scenarios 3 and 4 run when `BATON_LLAMA_SERVER` and `BATON_LOCAL_MODEL` name the server and
//! model (`deploy/demo.sh` prepares them with `deploy/local-model.sh`); scenario 4 also needs
//! Docker and the sandbox images (`BATON_DEMO_NO_SANDBOX` gives the reason they are missing).
//! Without them the demo says why and skips only those scenarios.
//!
//! Exits non-zero if anything does not happen as described, so it doubles as a smoke test.

use anyhow::{Context as _, bail, ensure};
use baton::client::{Clients, describe, is_final};
use baton::config::BatonConfig;
use baton::up::{Baton, ServiceName};
use baton_fleet::{Fleet, FleetSpec};
use baton_proto::event::Body;
use baton_proto::{
    ApproveRequest, AssetState, PhaseKind, SubmitTaskRequest, Trigger, VerifyAuditRequest,
    WatchTaskRequest,
};
use baton_runtime::auth::Role;
use std::time::Duration;

const SCENARIO: &str = "Fix drift on production web servers";
const COST: &str = "Why did our cloud bill jump 40% this month?";
const CODEGEN: &str = "Write a Python function to reverse a string";

/// Longest quiet spell of a task on the local model (one model call on 2 busy cores).
const AI_QUIET: Duration = Duration::from_secs(900);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let keep = std::env::args().any(|a| a == "--keep-running");
    let data = tempfile::Builder::new().prefix("baton-demo-").tempdir()?;
    let fleet = Fleet::start(FleetSpec::demo_web()).await?;
    let inventory = data.path().join("inventory.toml");
    std::fs::write(&inventory, fleet.inventory_toml())?;
    println!(
        "== demo fleet: {} production web servers on loopback, drifted: {}",
        fleet.servers.len(),
        fleet.drifted_ids().join(", ")
    );

    let mut config = BatonConfig::default();
    config.common.data_dir = data.path().to_path_buf();
    config.nats_server.port = 0;
    config.common.grpc_addr = "127.0.0.1:0".parse()?;
    config.common.http_addr = "127.0.0.1:0".parse()?;
    config.agents.inventory_path = inventory.clone();
    config.validation.policy_dir =
        Some(concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies").into());
    config.common.log.filter = std::env::var("BATON_DEMO_LOG").unwrap_or_else(|_| "error".into());
    baton_runtime::telemetry::init(&config.common.log);
    let ai = local_model(&mut config).await?;

    let baton = Baton::start(config, &ServiceName::ALL)
        .await
        .context("starting baton")?;
    println!(
        "== baton is up: all six services in this process · gRPC {} · HTTP http://{} · NATS {}",
        baton.grpc_addr, baton.http_addr, baton.config.common.nats.url
    );
    let submitter = Clients::connect(
        &baton.grpc_url(),
        &baton.token("demo-cli", "default", &[Role::Submitter]),
    )
    .await?;
    let approver = Clients::connect(
        &baton.grpc_url(),
        &baton.token("alice", "default", &[Role::Approver]),
    )
    .await?;
    let operator = Clients::connect(
        &baton.grpc_url(),
        &baton.token("ops", "default", &[Role::Operator]),
    )
    .await?;

    // Scenario 1: the happy path with a human approval.
    println!("\n== scenario 1: \"{SCENARIO}\"");
    let outcome = run_scenario(&submitter, &approver, drift_trigger(), QUIET).await?;
    ensure!(
        outcome.completed,
        "scenario 1 should complete, got: {}",
        outcome.last
    );
    outcome.check_gate_and_phases()?;
    let applied = outcome.assets_in(AssetState::Applied);
    ensure!(
        applied.len() == 6,
        "six drifted servers should be changed, got {applied:?}"
    );
    ensure!(
        applied == outcome.assets_in(AssetState::Healthy),
        "every changed server must pass its health check"
    );
    let still = fleet.drifted_ids();
    ensure!(
        still.is_empty(),
        "after scenario 1 these servers still drift: {still:?}"
    );
    println!(
        "   ✓ all {} servers now match the golden configuration",
        fleet.servers.len()
    );
    verify_audit(&operator).await?;

    // Scenario 2: drift again; web-08 fails its health check after its change in wave 2.
    println!(
        "\n== scenario 2: the fleet drifted again, and web-08 will fail its health check after its change"
    );
    for (i, s) in fleet.servers.iter().enumerate() {
        if fleet.spec.drifted.contains(&i) {
            s.set_config(baton_fleet::drifted(&fleet.spec.golden, i));
        }
    }
    let before: Vec<_> = fleet.servers.iter().map(|s| s.config()).collect();
    fleet
        .server("web-08")
        .context("web-08")?
        .fail_after_change(true);
    let outcome = run_scenario(&submitter, &approver, drift_trigger(), QUIET).await?;
    ensure!(!outcome.completed, "scenario 2 should fail and roll back");
    ensure!(
        outcome.last.contains("web-08"),
        "the failure should name web-08: {}",
        outcome.last
    );
    outcome.check_gate_and_phases()?;
    let rolled_back = outcome.assets_in(AssetState::RolledBack);
    ensure!(
        rolled_back == ["web-02", "web-03", "web-05", "web-06", "web-08"],
        "the servers changed before the failure, and only those, are rolled back: {rolled_back:?}"
    );
    for (s, old) in fleet.servers.iter().zip(&before) {
        ensure!(
            &s.config() == old,
            "{} was not restored by the rollback",
            s.id
        );
    }
    println!("   ✓ every changed server is back on its previous configuration");
    verify_audit(&operator).await?;

    match &ai {
        Err(why) => println!("\n== scenarios 3 and 4 (AI on the local model) skipped: {why}"),
        Ok(billing) => {
            let nice = raise_priority();
            let done = async {
                cost_scenario(&submitter, &approver, &operator, billing).await?;
                match std::env::var("BATON_DEMO_NO_SANDBOX") {
                    Ok(why) if !why.is_empty() => {
                        println!("\n== scenario 4 (code in the sandbox) skipped: {why}");
                        Ok(())
                    }
                    _ => {
                        codegen_scenario(&baton, &submitter, &approver, &operator, data.path())
                            .await
                    }
                }
            }
            .await;
            if let Some(n) = nice {
                let _ = std::fs::write("/proc/self/autogroup", n.to_string());
            }
            done?;
        }
    }

    if keep {
        println!(
            "\n== still running (Ctrl-C to stop); try: baton --url {} tasks",
            baton.grpc_url()
        );
        let shutdown = baton_runtime::shutdown::on_signal();
        baton.run_until(shutdown).await?;
    } else {
        baton.stop().await;
    }
    println!(
        "\n== demo finished: {} behaved as expected",
        if ai.is_ok() {
            "every scenario run"
        } else {
            "both drift scenarios"
        }
    );
    Ok(())
}

struct Outcome {
    task_id: String,
    completed: bool,
    last: String,
    events: Vec<Body>,
}

impl Outcome {
    /// The plan waited for a human and alice approved it; the canary (one server) ran first and
    /// no wave held more than two of the ten servers (the production policy's 20%).
    fn check_gate_and_phases(&self) -> anyhow::Result<()> {
        let pos = |f: &dyn Fn(&Body) -> bool| self.events.iter().position(f);
        let waiting =
            pos(&|b| matches!(b, Body::AwaitingApproval(_))).context("no approval gate")?;
        let approved = pos(&|b| matches!(b, Body::TaskApproved(a) if a.approval.as_ref().is_some_and(|a| a.approver == "alice")))
            .context("not approved by alice")?;
        ensure!(waiting < approved, "the approval must come after the gate");
        let phases: Vec<_> = self
            .events
            .iter()
            .filter_map(|b| {
                if let Body::PhaseStarted(p) = b {
                    Some(p)
                } else {
                    None
                }
            })
            .collect();
        ensure!(
            phases
                .first()
                .is_some_and(|p| p.kind() == PhaseKind::Canary && p.asset_ids.len() == 1),
            "the first phase must be a canary of one server"
        );
        ensure!(
            phases[1..]
                .iter()
                .all(|p| p.kind() == PhaseKind::Wave && p.asset_ids.len() <= 2),
            "waves must hold at most two servers"
        );
        Ok(())
    }

    /// Ids of the assets that reached `state`, sorted.
    fn assets_in(&self, state: AssetState) -> Vec<String> {
        let mut ids: Vec<String> = self
            .events
            .iter()
            .filter_map(|b| match b {
                Body::AssetUpdated(a) => a
                    .asset
                    .as_ref()
                    .filter(|s| s.state() == state)
                    .map(|s| s.asset_id.clone()),
                _ => None,
            })
            .collect();
        ids.sort();
        ids
    }
}

/// Longest quiet spell of a drift task.
const QUIET: Duration = Duration::from_secs(60);

fn drift_trigger() -> Trigger {
    Trigger {
        text: SCENARIO.into(),
        environment: "production".into(),
        ..Default::default()
    }
}

/// Submits `trigger`, prints its events as they happen (approving once if asked), and returns
/// how it ended; fails when nothing happens for `quiet`.
async fn run_scenario(
    submitter: &Clients,
    approver: &Clients,
    trigger: Trigger,
    quiet: Duration,
) -> anyhow::Result<Outcome> {
    let r = submitter
        .triggers
        .clone()
        .submit_task(SubmitTaskRequest {
            trigger: Some(trigger),
        })
        .await?
        .into_inner();
    println!("   submitted as task {}", r.task_id);
    let mut stream = submitter
        .tasks
        .clone()
        .watch_task(WatchTaskRequest {
            task_id: r.task_id.clone(),
        })
        .await?
        .into_inner();
    let mut events = Vec::new();
    loop {
        let rec = tokio::time::timeout(quiet, stream.message())
            .await
            .with_context(|| format!("no progress for {} s", quiet.as_secs()))??
            .context("the watch stream ended before the task did")?;
        println!("   {}", describe(&rec));
        let body = rec.event.as_ref().and_then(|e| e.body.clone());
        events.extend(body.clone());
        if let Some(Body::AwaitingApproval(_)) = body {
            println!("   … alice (approver) reviews the plan and approves it");
            approver
                .approvals
                .clone()
                .approve(ApproveRequest {
                    task_id: r.task_id.clone(),
                    reason: "canary first, waves of 2: looks right".into(),
                    plan_hash: String::new(),
                    ..Default::default()
                })
                .await?;
        }
        if is_final(&rec) {
            return Ok(Outcome {
                task_id: r.task_id.clone(),
                completed: matches!(body, Some(Body::TaskCompleted(_))),
                last: describe(&rec),
                events,
            });
        }
    }
}

async fn verify_audit(operator: &Clients) -> anyhow::Result<()> {
    let v = operator
        .tasks
        .clone()
        .verify_audit(VerifyAuditRequest {})
        .await?
        .into_inner();
    if !v.ok {
        bail!(
            "audit chain broken at record {}: {}",
            v.first_bad_sequence,
            v.problem
        );
    }
    println!(
        "   ✓ audit chain verified: {} records, each holding the SHA-256 of the one before",
        v.records_checked
    );
    Ok(())
}

/// Configures the local model when `BATON_LLAMA_SERVER` and `BATON_LOCAL_MODEL` are set:
/// `baton up` starts llama-server as a child, the agents come from the repository's `agents/`,
/// and the billing fixture is served on loopback (its address is the one host `http_request`
/// may reach). Returns the fixture's URL, or why the AI scenarios cannot run.
async fn local_model(config: &mut BatonConfig) -> anyhow::Result<Result<String, String>> {
    let (Ok(server), Ok(model)) = (
        std::env::var("BATON_LLAMA_SERVER"),
        std::env::var("BATON_LOCAL_MODEL"),
    ) else {
        return Ok(Err(
            "BATON_LLAMA_SERVER and BATON_LOCAL_MODEL are not set (deploy/demo.sh prepares them with deploy/local-model.sh)".into(),
        ));
    };
    if !std::path::Path::new(&model).exists() {
        return Ok(Err(format!("the model file {model} does not exist")));
    }
    let body = include_str!("../billing.json");
    let app = axum::Router::new().route(
        "/billing",
        axum::routing::get(move || async move { ([("content-type", "application/json")], body) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    config.llm.local.server = server;
    config.llm.local.model = model.into();
    // Small context and one thread that does not spin-wait: on 2 busy cores two threads wait
    // on each other.
    config.llm.local.context_size = 4096;
    config.llm.local.extra_args = ["--no-repack", "--threads", "1", "--poll", "0"]
        .map(String::from)
        .to_vec();
    // One call can take minutes when the machine is busy: the agent's budget is the limit.
    config
        .llm
        .providers
        .entry("local".into())
        .or_default()
        .timeout = Duration::from_secs(600);
    config.agents.dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../agents").into();
    config.agents.http_allow_hosts = vec![addr.to_string()];
    Ok(Ok(format!("http://{addr}/billing")))
}

/// The model server is latency-bound, the rest of the machine may be busy with builds: raise
/// this process group's scheduling priority (its autogroup, which llama-server shares) where
/// the kernel allows it.
/// Returns the previous nice value to restore (the autogroup is the session's and outlives
/// this process).
fn raise_priority() -> Option<i32> {
    let before = std::fs::read_to_string("/proc/self/autogroup").ok()?;
    let nice = before.rsplit_once("nice ")?.1.trim().parse().ok()?;
    std::fs::write("/proc/self/autogroup", "-10").ok()?;
    println!("\n   (scheduling priority of baton and its llama-server raised: autogroup nice -10)");
    Some(nice)
}

async fn task(c: &Clients, id: &str) -> anyhow::Result<baton_proto::GetTaskResponse> {
    Ok(c.tasks
        .clone()
        .get_task(baton_proto::GetTaskRequest { task_id: id.into() })
        .await?
        .into_inner())
}

/// The plan the agent proposed, from the task's audit records.
fn proposed_plan(r: &baton_proto::GetTaskResponse) -> anyhow::Result<baton_proto::Plan> {
    r.events
        .iter()
        .find_map(
            |rec| match rec.event.as_ref().and_then(|e| e.body.as_ref()) {
                Some(Body::PlanProposed(p)) => p.plan.clone(),
                _ => None,
            },
        )
        .context("no proposed plan in the audit log")
}

/// Prints the agent's model and tool calls and the loop's own time (from the routed event to
/// the proposed plan, less model and tool time: journal, policy checks, progress events, one
/// bus delivery); every tool call must have a policy decision.
fn show_run(r: &baton_proto::GetTaskResponse, plan: &baton_proto::Plan) -> anyhow::Result<()> {
    let run = plan.agent_run.clone().unwrap_or_default();
    let stamp = |routed: bool| {
        r.events.iter().find_map(|rec| {
            let e = rec.event.as_ref()?;
            let hit = match e.body.as_ref()? {
                Body::TaskRouted(_) => routed,
                Body::PlanProposed(_) => !routed,
                _ => false,
            };
            let t = e.time.as_ref()?;
            hit.then(|| t.seconds as i128 * 1000 + i128::from(t.nanos) / 1_000_000)
        })
    };
    let model_ms: u64 = run.model_calls.iter().map(|m| m.latency_ms).sum();
    let tool_ms: u64 = run.tool_calls.iter().map(|t| t.latency_ms).sum();
    let steps = (run.model_calls.len() + run.tool_calls.len()).max(1) as u64;
    let own = match (stamp(true), stamp(false)) {
        (Some(a), Some(b)) => ((b - a).max(0) as u64).saturating_sub(model_ms + tool_ms),
        _ => 0,
    };
    println!(
        "   agent {}: model {model_ms} ms, tools {tool_ms} ms, the loop's own time {own} ms ({} ms per step):",
        run.agent,
        own / steps
    );
    for m in &run.model_calls {
        println!(
            "     · model {} · {} → {} tokens · {:.1} s",
            m.provider,
            m.input_tokens,
            m.output_tokens,
            m.latency_ms as f64 / 1000.0
        );
    }
    for t in &run.tool_calls {
        println!(
            "     · tool {} {} · policy: {} · {}",
            t.tool,
            t.arguments,
            t.decision,
            if t.ok { "ok" } else { "failed" }
        );
        ensure!(
            ["allowed", "denied", "require_approval"].contains(&t.decision.as_str()),
            "tool call {} has no policy decision",
            t.tool
        );
    }
    Ok(())
}

async fn cost_scenario(
    submitter: &Clients,
    approver: &Clients,
    operator: &Clients,
    billing: &str,
) -> anyhow::Result<()> {
    println!("\n== scenario 3 (local model): \"{COST}\" with the billing data at {billing}");
    let trigger = Trigger {
        text: COST.into(),
        environment: "staging".into(),
        labels: [("billing_url".to_string(), billing.to_string())].into(),
        ..Default::default()
    };
    let outcome = run_scenario(submitter, approver, trigger, AI_QUIET).await?;
    ensure!(
        outcome.completed,
        "scenario 3 should complete, got: {}",
        outcome.last
    );
    let r = task(operator, &outcome.task_id).await?;
    let plan = proposed_plan(&r)?;
    show_run(&r, &plan)?;
    let run = plan.agent_run.clone().unwrap_or_default();
    ensure!(
        run.tool_calls
            .iter()
            .any(|t| t.tool == "http_request" && t.decision == "allowed" && t.ok),
        "the cost agent should fetch the billing data (allowed by the tool policy)"
    );
    let artifact = r
        .artifacts
        .iter()
        .find(|a| a.name == "report")
        .context("the task delivered no report")?;
    let report = baton_proto::report::Report::from_json(&artifact.content)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("   report (delivered with the task):");
    println!("     answer: {}", report.answer);
    for f in &report.findings {
        println!("     finding: {}", text(f));
    }
    for rec in &report.recommendations {
        println!("     recommendation: {}", text(rec));
    }
    let all = String::from_utf8_lossy(&artifact.content)
        .to_lowercase()
        .replace('_', " ");
    ensure!(
        all.contains("data transfer"),
        "the report should name data transfer, the service that grew (600 → 3350 USD)"
    );
    println!("   ✓ the report names the service that grew: data transfer");
    verify_audit(operator).await
}

fn text(v: &serde_json::Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

async fn codegen_scenario(
    baton: &Baton,
    submitter: &Clients,
    approver: &Clients,
    operator: &Clients,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    println!("\n== scenario 4 (local model + Docker sandbox): \"{CODEGEN}\"");
    let trigger = Trigger {
        text: CODEGEN.into(),
        environment: "development".into(),
        ..Default::default()
    };
    let outcome = run_scenario(submitter, approver, trigger, AI_QUIET).await?;
    ensure!(
        outcome.completed,
        "scenario 4 should complete, got: {}",
        outcome.last
    );
    let r = task(operator, &outcome.task_id).await?;
    let plan = proposed_plan(&r)?;
    show_run(&r, &plan)?;
    let code = plan
        .artifacts
        .iter()
        .find(|a| a.name == "solution.py")
        .context("no solution.py in the plan")?;
    let ran = code
        .sandbox_run
        .clone()
        .context("solution.py did not run in the sandbox")?;
    ensure!(
        ran.exit_code == 0 && !ran.network,
        "the tests should pass in the sandbox without network: {ran:?}"
    );
    println!(
        "   ✓ the tests passed in the sandbox ({}, no network): exit code 0 in {} ms",
        ran.image, ran.duration_ms
    );
    // The artifact as a user gets it: the `baton` CLI against this Baton.
    let out = dir.join("solution.py");
    let cli = std::env::var("BATON_DEMO_CLI").unwrap_or_else(|_| "baton".into());
    println!(
        "   $ baton task {} --artifact solution.py -o {}",
        outcome.task_id,
        out.display()
    );
    let status = tokio::process::Command::new(&cli)
        .args(["task", &outcome.task_id, "--artifact", "solution.py", "-o"])
        .arg(&out)
        .env("BATON_URL", baton.grpc_url())
        .env(
            "BATON_TOKEN",
            baton.token("demo-cli", "default", &[Role::Operator]),
        )
        .status()
        .await
        .with_context(|| format!("running {cli} (BATON_DEMO_CLI)"))?;
    ensure!(status.success(), "baton task --artifact failed: {status}");
    let written = std::fs::read_to_string(&out)?;
    ensure!(
        written.as_bytes() == code.content.as_slice(),
        "the written artifact differs from the plan's solution.py"
    );
    println!("   solution.py:");
    for line in written.lines() {
        println!("     {line}");
    }
    if let Some(t) = plan.artifacts.iter().find(|a| a.name == "test_solution.py") {
        println!("   test_solution.py:");
        for line in String::from_utf8_lossy(&t.content).lines() {
            println!("     {line}");
        }
    }
    verify_audit(operator).await
}
