//! Human-in-the-loop per tool call and the tenants' daily budgets, through the real agent
//! runner on a real nats-server, with baton-llm's fake OpenAI server scripting the model and a
//! demo fleet server (loopback HTTP) as the target of the call that needs a human: the built-in
//! `policies/tools.rego` asks for a human on an HTTP PUT from a production task.
//!
//! Decisions go through `ToolApprovals::decide`, the function validation's `ApprovalService`
//! calls for `Approve`/`Reject` with a step.

use baton_agent_runner::tenant_budget::{self, TenantLimits};
use baton_agent_runner::{AgentRunner, Config, ModelProvider};
use baton_bus::Bus;
use baton_bus::testing::TestNats;
use baton_fleet::{Fleet, FleetSpec, golden_web};
use baton_llm::testing::{FakeServer, openai};
use baton_llm::{OpenAiProvider, ProviderSettings};
use baton_proto::{
    Approval, Decision, Event, PendingToolCall, Plan, Task, TaskRouted, TaskSpec, Trigger,
    event::Body, subject,
};
use baton_runtime::Context;
use baton_runtime::auth::{AuthConfig, Authenticator};
use baton_runtime::metrics::Metrics;
use baton_runtime::plugins::Plugins;
use baton_runtime::tool_approvals::{self, ToolApprovals};
use futures::StreamExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest wait for an expected event (only to avoid hanging; no timing is asserted).
const WAIT: Duration = Duration::from_secs(30);

const AGENT: &str = r#"role = "cost"
description = "explains spend"
output = "report"
models = ["local"]
tools = ["query_assets", "http_request"]
prompt = "You are the {{role}} agent in {{environment}}."
"#;

struct World {
    nats: TestNats,
    fake: FakeServer,
    fleet: Fleet,
    dir: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        let nats = TestNats::start().await;
        let fake = FakeServer::openai().await;
        let fleet = Fleet::start(FleetSpec {
            count: 1,
            drifted: vec![],
            ..FleetSpec::demo_web()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("agents")).unwrap();
        std::fs::write(dir.path().join("agents/cost.toml"), AGENT).unwrap();
        std::fs::write(dir.path().join("inventory.toml"), fleet.inventory_toml()).unwrap();
        World {
            nats,
            fake,
            fleet,
            dir,
        }
    }

    fn config(&self, timeout: Duration) -> Config {
        let host = self.fleet.servers[0]
            .url()
            .trim_start_matches("http://")
            .to_string();
        Config {
            inventory_path: self.dir.path().join("inventory.toml"),
            dir: self.dir.path().join("agents"),
            work_dir: self.dir.path().join("work"),
            http_allow_hosts: vec![host],
            tool_approval_timeout: timeout,
            ..Default::default()
        }
    }

    async fn runner(&self, config: Config) -> Running {
        let auth = Authenticator::new(&AuthConfig {
            hs256_secret: "x".repeat(32),
            ..Default::default()
        })
        .unwrap();
        let provider = OpenAiProvider::new(ProviderSettings::new(
            "local",
            self.fake.base_url(),
            "qwen2.5-coder-0.5b",
        ))
        .unwrap();
        let plugins = Plugins::new()
            .with(ModelProvider::new("local", Arc::new(provider)))
            .shared();
        let ctx = Context::new(self.nats.bus.clone(), auth, Arc::new(Metrics::default()))
            .with_plugins(plugins);
        let runner = AgentRunner::new(ctx, config).await.unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(runner.run(shutdown.clone()));
        Running { shutdown, task }
    }

    fn bus(&self) -> &Bus {
        &self.nats.bus
    }

    /// The PUT of the fleet server's configuration that the model asks for.
    fn put_args(&self) -> Value {
        json!({
            "method": "PUT",
            "url": format!("{}/config", self.fleet.servers[0].url()),
            "body": json!({"config": golden_web()}).to_string(),
        })
    }
}

struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), baton_agent_runner::Error>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn routed(task_id: &str, tenant: &str) -> Event {
    let text = "apply the golden configuration to web-01";
    let task = Task {
        task_id: task_id.into(),
        tenant: tenant.into(),
        submitted_by: "alice".into(),
        trigger: Some(Trigger {
            text: text.into(),
            ..Default::default()
        }),
        received_at: Some(baton_proto::now()),
    };
    let spec = TaskSpec {
        task_id: task_id.into(),
        task_type: "cost_optimization".into(),
        role: "cost".into(),
        environment: "production".into(),
        intent: text.into(),
        ..Default::default()
    };
    Event::first(
        task_id,
        tenant,
        "routed",
        "decision",
        Body::TaskRouted(TaskRouted {
            task: Some(task),
            decision: Some(Decision {
                spec: Some(spec),
                confidence: 1.0,
                ..Default::default()
            }),
        }),
    )
}

fn report() -> Value {
    json!({"answer": "done", "findings": ["web-01 updated"], "recommendations": []})
}

/// Every event published on `baton.>`, seen through a core NATS subscription.
struct Events(async_nats::Subscriber);

impl Events {
    async fn watch(bus: &Bus) -> Events {
        let sub = bus.client().subscribe("baton.>").await.unwrap();
        bus.client().flush().await.unwrap();
        Events(sub)
    }

    /// The next event on `subject` for `task_id`.
    async fn next(&mut self, subject: &str, task_id: &str) -> Event {
        tokio::time::timeout(WAIT, async {
            loop {
                let msg = self.0.next().await.expect("subscription open");
                let Ok(event) = baton_bus::decode_event(&msg.payload) else {
                    continue;
                };
                if msg.subject.as_str() == subject && event.task_id == task_id {
                    return event;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no event on {subject} for {task_id}"))
    }
}

async fn publish(bus: &Bus, event: &Event) {
    bus.publish(&subject::agent("cost"), event).await.unwrap();
}

/// Waits for the tool call of `task_id` to be announced; returns it.
async fn awaiting(events: &mut Events, task_id: &str) -> PendingToolCall {
    let event = events
        .next(subject::TOOL_CALL_AWAITING_APPROVAL, task_id)
        .await;
    let Some(Body::ToolCallAwaitingApproval(a)) = event.body else {
        panic!("not a tool call awaiting approval: {event:?}")
    };
    a.pending.unwrap()
}

fn proposed(event: &Event) -> &Plan {
    let Some(Body::PlanProposed(p)) = &event.body else {
        panic!("not a plan: {event:?}")
    };
    p.plan.as_ref().unwrap()
}

/// The contents of the tool messages the model was sent in request `i`.
fn tool_messages(fake: &FakeServer, i: usize) -> Vec<String> {
    fake.requests()[i].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or("").to_string())
        .collect()
}

fn approve(by: &str, hash: &str) -> Approval {
    Approval {
        approver: by.into(),
        approved: true,
        reason: "change window open".into(),
        decided_at: Some(baton_proto::now()),
        arguments_hash: hash.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_call_needing_approval_pauses_is_listed_and_runs_once_when_approved() {
    let w = World::start().await;
    w.fake.push_all([
        openai::tool_call("http_request", w.put_args()),
        openai::tool_call("final_answer", report()),
    ]);
    let running = w.runner(w.config(Duration::from_secs(3600))).await;
    let mut events = Events::watch(w.bus()).await;
    publish(w.bus(), &routed("t-approve", "acme")).await;

    let pending = awaiting(&mut events, "t-approve").await;
    let hash = tool_approvals::arguments_hash(&w.put_args());
    assert_eq!(
        (pending.tool.as_str(), pending.step, pending.tenant.as_str()),
        ("http_request", 2, "acme")
    );
    assert_eq!(pending.arguments_hash, hash);
    assert!(
        pending.arguments.contains("/config"),
        "{}",
        pending.arguments
    );
    assert!(pending.reason.contains("HTTP PUT"), "{}", pending.reason);
    let (requested, deadline) = (pending.requested_at.unwrap(), pending.deadline.unwrap());
    assert_eq!(deadline.seconds - requested.seconds, 3600);
    // Paused: nothing ran, and the message was acked (no worker waits on it).
    assert_eq!(w.fleet.servers[0].applies(), 0);
    assert_eq!(w.fake.request_count(), 1);

    let store = ToolApprovals::open(w.bus()).await.unwrap();
    let listed = store.list_pending(|t| t == "acme").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].task_id.as_str(), listed[0].step),
        ("t-approve", 2)
    );
    assert!(
        store
            .list_pending(|t| t == "globex")
            .await
            .unwrap()
            .is_empty()
    );

    // An approver who saw other arguments is refused, and nothing is decided.
    let wrong = "0".repeat(64);
    let err = store
        .decide("t-approve", 2, |_| true, approve("bob", &wrong))
        .await
        .unwrap_err();
    assert!(
        matches!(err, tool_approvals::Error::ArgumentsChanged { .. }),
        "{err}"
    );
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(store.list_pending(|_| true).await.unwrap().len(), 1);
    // Another tenant's approver cannot see it.
    assert!(matches!(
        store
            .decide("t-approve", 2, |t| t == "globex", approve("eve", &hash))
            .await,
        Err(tool_approvals::Error::NotFound { .. })
    ));

    let approval = store
        .decide("t-approve", 2, |_| true, approve("bob", &hash))
        .await
        .unwrap();
    assert_eq!(
        (approval.step, approval.arguments_hash.as_str()),
        (2, hash.as_str())
    );
    let plan = proposed(&events.next(subject::TASK_PROPOSED, "t-approve").await).clone();
    assert_eq!(plan.summary, "done");
    let call = &plan.agent_run.as_ref().unwrap().tool_calls[0];
    assert_eq!(
        (call.tool.as_str(), call.decision.as_str(), call.ok),
        ("http_request", "approved", true)
    );
    // The call ran exactly once, and the first model call was not repeated on the resume.
    assert_eq!(w.fleet.servers[0].applies(), 1);
    assert_eq!(w.fake.request_count(), 2);
    assert!(
        tool_messages(&w.fake, 1)[0].contains("200"),
        "{:?}",
        tool_messages(&w.fake, 1)
    );
    assert!(store.list_pending(|_| true).await.unwrap().is_empty());
    // The same decision again is idempotent; the opposite one is refused.
    assert!(
        store
            .decide("t-approve", 2, |_| true, approve("bob", ""))
            .await
            .is_ok()
    );
    let deny = Approval {
        approver: "carol".into(),
        approved: false,
        reason: "no".into(),
        ..Default::default()
    };
    assert!(matches!(
        store.decide("t-approve", 2, |_| true, deny).await,
        Err(tool_approvals::Error::AlreadyDecided { .. })
    ));
    running.stop().await;
}

#[tokio::test]
async fn a_rejected_call_reaches_the_model_as_a_denial_with_its_reason() {
    let w = World::start().await;
    w.fake.push_all([
        openai::tool_call("http_request", w.put_args()),
        openai::tool_call("final_answer", report()),
    ]);
    let running = w.runner(w.config(Duration::from_secs(3600))).await;
    let mut events = Events::watch(w.bus()).await;
    publish(w.bus(), &routed("t-reject", "acme")).await;
    let pending = awaiting(&mut events, "t-reject").await;

    let store = ToolApprovals::open(w.bus()).await.unwrap();
    let deny = Approval {
        approver: "bob".into(),
        approved: false,
        reason: "not during the sale".into(),
        decided_at: Some(baton_proto::now()),
        ..Default::default()
    };
    store
        .decide("t-reject", pending.step, |_| true, deny)
        .await
        .unwrap();
    let plan = proposed(&events.next(subject::TASK_PROPOSED, "t-reject").await).clone();
    let call = &plan.agent_run.as_ref().unwrap().tool_calls[0];
    assert_eq!((call.decision.as_str(), call.ok), ("rejected", false));
    let seen = &tool_messages(&w.fake, 1)[0];
    assert!(
        seen.contains("a human (bob) denied this call: not during the sale"),
        "{seen}"
    );
    assert_eq!(w.fleet.servers[0].applies(), 0);
    assert_eq!(w.fake.request_count(), 2);
    running.stop().await;
}

#[tokio::test]
async fn an_undecided_call_is_denied_after_the_timeout() {
    let w = World::start().await;
    w.fake.push_all([
        openai::tool_call("http_request", w.put_args()),
        openai::tool_call("final_answer", report()),
    ]);
    let running = w.runner(w.config(Duration::from_secs(1))).await;
    let mut events = Events::watch(w.bus()).await;
    publish(w.bus(), &routed("t-timeout", "acme")).await;
    awaiting(&mut events, "t-timeout").await;

    let decided = events.next(&subject::agent("cost"), "t-timeout").await;
    let Some(Body::ToolCallDecided(d)) = decided.body else {
        panic!("not a decision: {decided:?}")
    };
    let approval = d.approval.unwrap();
    assert_eq!(
        (approval.approver.as_str(), approval.approved),
        (tool_approvals::TIMEOUT_APPROVER, false)
    );
    events.next(subject::TASK_PROPOSED, "t-timeout").await;
    let seen = &tool_messages(&w.fake, 1)[0];
    assert!(seen.contains("no approver decided"), "{seen}");
    assert_eq!(w.fleet.servers[0].applies(), 0);
    running.stop().await;
}

#[tokio::test]
async fn a_runner_restart_while_a_call_is_pending_loses_nothing() {
    let w = World::start().await;
    w.fake.push_all([
        openai::tool_call("http_request", w.put_args()),
        openai::tool_call("final_answer", report()),
    ]);
    let running = w.runner(w.config(Duration::from_secs(3600))).await;
    let mut events = Events::watch(w.bus()).await;
    publish(w.bus(), &routed("t-restart", "acme")).await;
    let pending = awaiting(&mut events, "t-restart").await;
    running.stop().await;

    // A new runner process; the approval arrives while it runs.
    let running = w.runner(w.config(Duration::from_secs(3600))).await;
    let store = ToolApprovals::open(w.bus()).await.unwrap();
    assert_eq!(
        store.list_pending(|_| true).await.unwrap(),
        vec![pending.clone()]
    );
    store
        .decide(
            "t-restart",
            pending.step,
            |_| true,
            approve("bob", &pending.arguments_hash),
        )
        .await
        .unwrap();
    events.next(subject::TASK_PROPOSED, "t-restart").await;
    assert_eq!(w.fleet.servers[0].applies(), 1);
    assert_eq!(w.fake.request_count(), 2, "no model call repeated");
    running.stop().await;
}

#[tokio::test]
async fn a_tenant_over_its_daily_budget_fails_its_tasks_naming_budget_and_tenant() {
    let w = World::start().await;
    // Each fake answer counts 15 tokens: two calls pass the limit of 20.
    w.fake.push_all([
        openai::tool_call("query_assets", json!({})),
        openai::tool_call("query_assets", json!({"group": "web"})),
        openai::tool_call("final_answer", report()),
    ]);
    let mut config = w.config(Duration::from_secs(3600));
    config.daily_budget = tenant_budget::Config {
        tokens: 1_000_000,
        tenants: [(
            "acme".to_string(),
            TenantLimits {
                tokens: Some(20),
                cost_usd: None,
            },
        )]
        .into(),
        ..Default::default()
    };
    let running = w.runner(config.clone()).await;
    let mut events = Events::watch(w.bus()).await;
    publish(w.bus(), &routed("t-budget-1", "acme")).await;
    let failed = events.next(subject::TASK_FAILED, "t-budget-1").await;
    let Some(Body::TaskFailed(f)) = failed.body else {
        panic!("not a failure")
    };
    let today = tenant_budget::utc_day(std::time::SystemTime::now());
    assert!(
        f.reason.contains(&format!(
            "tenant acme is over its daily token budget (20 tokens per UTC day; used 30 on {today})"
        )),
        "{}",
        f.reason
    );
    assert_eq!(w.fake.request_count(), 2);

    // The next task of the tenant that day fails before any model call; the count is shared.
    publish(w.bus(), &routed("t-budget-2", "acme")).await;
    events.next(subject::TASK_FAILED, "t-budget-2").await;
    assert_eq!(w.fake.request_count(), 2);
    let budgets = tenant_budget::TenantBudgets::open(w.bus(), config.daily_budget)
        .await
        .unwrap();
    assert_eq!(budgets.usage("acme", &today).await.unwrap().tokens, 30);
    // Another tenant's own budget is untouched.
    w.fake.push(openai::tool_call("final_answer", report()));
    publish(w.bus(), &routed("t-budget-3", "globex")).await;
    events.next(subject::TASK_PROPOSED, "t-budget-3").await;
    assert_eq!(budgets.usage("globex", &today).await.unwrap().tokens, 15);
    running.stop().await;
}
