//! The demo: ten production web servers on loopback (six drifted), Baton with all six services
//! in this process (and its own nats-server), and two runs of "Fix drift on production web
//! servers":
//!
//! 1. trigger → drift role → canary + waves plan → policies → waits for approval → approved by
//!    an approver token → canary, waves, health checks → completed → audit chain verified;
//! 2. the fleet drifts again and one server fails its health check after its change in a wave:
//!    the assets already changed are rolled back and the task fails with the reason.
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
    let outcome = run_scenario(&submitter, &approver).await?;
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
    let outcome = run_scenario(&submitter, &approver).await?;
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
    println!("\n== demo finished: both scenarios behaved as expected");
    Ok(())
}

struct Outcome {
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

async fn run_scenario(submitter: &Clients, approver: &Clients) -> anyhow::Result<Outcome> {
    let trigger = Trigger {
        text: SCENARIO.into(),
        environment: "production".into(),
        ..Default::default()
    };
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
        let rec = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .context("no progress for 60 s")??
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
