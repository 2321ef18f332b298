//! The agent runner against a real nats-server and the real demo fleet (HTTP servers on
//! loopback): routed tasks in, proposed plans or failures out.

use baton_agent_runner::{AgentRunner, Config, NoopAgent};
use baton_bus::testing::TestNats;
use baton_bus::{Bus, BusConfig};
use baton_fleet::{Fleet, FleetSpec, golden_web};
use baton_proto::{
    Decision, Event, PhaseKind, Plan, Task, TaskFailed, TaskRouted, TaskSpec, Trigger, action,
    event::Body, health_check, subject,
};
use baton_runtime::Context;
use baton_runtime::auth::{AuthConfig, Authenticator};
use baton_runtime::metrics::Metrics;
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest wait for an expected event (only to avoid hanging; no timing is asserted).
const WAIT: Duration = Duration::from_secs(30);

fn context(bus: Bus) -> Context {
    let auth = Authenticator::new(&AuthConfig {
        hs256_secret: "x".repeat(32),
        ..Default::default()
    })
    .unwrap();
    Context::new(bus, auth, Arc::new(Metrics::default()))
}

fn routed(task_id: &str, role: &str, target: &str, environment: &str) -> Event {
    let text = format!("fix drift on {environment} {target} servers");
    let task = Task {
        task_id: task_id.into(),
        tenant: "acme".into(),
        submitted_by: "alice".into(),
        trigger: Some(Trigger {
            text: text.clone(),
            ..Default::default()
        }),
        received_at: Some(baton_proto::now()),
    };
    let spec = TaskSpec {
        task_id: task_id.into(),
        task_type: "drift_remediation".into(),
        role: role.into(),
        environment: environment.into(),
        target: target.into(),
        intent: text,
        ..Default::default()
    };
    Event::first(
        task_id,
        "acme",
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

/// Every event published on `baton.>`, seen through a core NATS subscription.
struct Events(async_nats::Subscriber);

impl Events {
    async fn watch(bus: &Bus) -> Events {
        let sub = bus.client().subscribe("baton.>").await.unwrap();
        bus.client().flush().await.unwrap();
        Events(sub)
    }

    /// The next event on `subject` for `task_id`, and the events seen before it.
    async fn next(&mut self, subject: &str, task_id: &str) -> (Event, Vec<(String, Event)>) {
        let mut before = Vec::new();
        tokio::time::timeout(WAIT, async {
            loop {
                let msg = self.0.next().await.expect("subscription open");
                let Ok(event) = baton_bus::decode_event(&msg.payload) else {
                    continue;
                };
                if msg.subject.as_str() == subject && event.task_id == task_id {
                    return (event, before);
                }
                before.push((msg.subject.to_string(), event));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no event on {subject} for {task_id}"))
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

fn start(runner: AgentRunner) -> Running {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(runner.run(shutdown.clone()));
    Running { shutdown, task }
}

fn config(inventory: &Path) -> Config {
    Config {
        inventory_path: inventory.to_path_buf(),
        http_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

async fn fleet_inventory(dir: &Path) -> (Fleet, PathBuf) {
    let fleet = Fleet::start(FleetSpec::demo_web()).await.unwrap();
    let path = dir.join("inventory.toml");
    std::fs::write(&path, fleet.inventory_toml()).unwrap();
    (fleet, path)
}

fn proposed_plan(event: &Event) -> &Plan {
    let Some(Body::PlanProposed(p)) = &event.body else {
        panic!("not a plan: {event:?}")
    };
    p.plan.as_ref().unwrap()
}

fn failure(event: &Event) -> &TaskFailed {
    let Some(Body::TaskFailed(f)) = &event.body else {
        panic!("not a failure: {event:?}")
    };
    f
}

fn http(a: &Option<baton_proto::Action>) -> &baton_proto::HttpAction {
    match a.as_ref().and_then(|a| a.kind.as_ref()) {
        Some(action::Kind::Http(h)) => h,
        other => panic!("not an http action: {other:?}"),
    }
}

fn config_body(body: &[u8]) -> BTreeMap<String, String> {
    #[derive(serde::Deserialize)]
    struct B {
        config: BTreeMap<String, String>,
    }
    serde_json::from_slice::<B>(body).unwrap().config
}

#[tokio::test]
async fn drift_task_becomes_a_canary_then_small_waves_over_the_drifted_assets() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The runner starts before the inventory exists, as in the demo.
    let path = dir.path().join("inventory.toml");
    let runner = start(
        AgentRunner::new(context(nats.bus.clone()), config(&path))
            .await
            .unwrap(),
    );
    let (fleet, written) = fleet_inventory(dir.path()).await;
    assert_eq!(written, path);
    let mut events = Events::watch(&nats.bus).await;

    nats.bus
        .publish(
            &subject::agent("drift"),
            &routed("t-drift", "drift", "web", "production"),
        )
        .await
        .unwrap();
    let (event, _) = events.next(subject::TASK_PROPOSED, "t-drift").await;
    runner.stop().await;

    assert_eq!(event.event_id, "t-drift.proposed");
    assert_eq!(event.causation_id, "t-drift.routed");
    assert_eq!(event.producer, "agent-runner");
    assert_eq!(event.tenant, "acme");
    let Some(Body::PlanProposed(p)) = &event.body else {
        unreachable!()
    };
    assert_eq!(p.task.as_ref().unwrap().task_id, "t-drift");
    assert_eq!(p.spec.as_ref().unwrap().target, "web");
    let plan = proposed_plan(&event);
    assert_eq!(plan.task_id, "t-drift");
    assert_eq!(plan.total_assets, 10);
    assert_eq!(
        plan.summary,
        "fix drift on 6 of 10 web assets in production: canary web-02, then 3 waves"
    );

    let canary = &plan.phases[0];
    assert_eq!(
        (canary.name.as_str(), canary.kind),
        ("canary", PhaseKind::Canary as i32)
    );
    assert_eq!(canary.steps.len(), 1);
    for (i, wave) in plan.phases[1..].iter().enumerate() {
        assert_eq!(wave.name, format!("wave {}", i + 1));
        assert_eq!(wave.kind, PhaseKind::Wave as i32);
        assert!(
            (1..=2).contains(&wave.steps.len()),
            "wave of {} assets",
            wave.steps.len()
        );
    }

    let steps: Vec<_> = plan.phases.iter().flat_map(|p| &p.steps).collect();
    let ids: BTreeSet<String> = steps
        .iter()
        .map(|s| s.asset.as_ref().unwrap().id.clone())
        .collect();
    assert_eq!(
        ids,
        fleet.drifted_ids().into_iter().collect::<BTreeSet<_>>()
    );
    assert_eq!(steps.len(), 6);
    for s in steps {
        let asset = s.asset.as_ref().unwrap();
        let server = fleet.server(&asset.id).unwrap();
        assert_eq!(asset.kind, "web_server");
        assert_eq!(asset.address, server.url());
        let apply = http(&s.action);
        assert_eq!(
            (apply.method.as_str(), apply.url.clone()),
            ("PUT", format!("{}/config", server.url()))
        );
        assert_eq!(apply.headers["Content-Type"], "application/json");
        assert_eq!(config_body(&apply.body), golden_web());
        assert_eq!(
            s.action.as_ref().unwrap().idempotency_key,
            format!("t-drift:{}:apply", asset.id)
        );
        let rollback = http(&s.rollback);
        assert_eq!(rollback.method, "PUT");
        assert_eq!(
            config_body(&rollback.body),
            server.config(),
            "rollback restores what {} had",
            asset.id
        );
        assert_eq!(
            s.rollback.as_ref().unwrap().idempotency_key,
            format!("t-drift:{}:rollback", asset.id)
        );
        let hc = s.health_check.as_ref().unwrap();
        let Some(health_check::Kind::Http(probe)) = &hc.kind else {
            panic!("not an http health check: {hc:?}")
        };
        assert_eq!(
            (
                probe.url.clone(),
                probe.expect_status,
                hc.attempts,
                hc.interval_ms
            ),
            (format!("{}/health", server.url()), 200, 3, 200)
        );
        assert!(
            s.reason.contains("nginx_version 1.22.1 → 1.24.0"),
            "{}",
            s.reason
        );
    }

    let run = plan.agent_run.as_ref().unwrap();
    assert_eq!(
        (run.kind().label(), run.agent.as_str()),
        ("runbook", "drift-runbook@1")
    );
    assert_eq!(
        run.tool_calls.len(),
        10,
        "one configuration read per asset in scope"
    );
    assert!(
        run.tool_calls
            .iter()
            .all(|c| c.tool == "asset.get_config" && c.ok)
    );
    // Planning only reads: nothing was applied.
    assert!(fleet.servers.iter().all(|s| s.applies() == 0));
}

#[tokio::test]
async fn roles_without_an_agent_fail_and_injected_agents_answer() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let runner = AgentRunner::new(
        context(nats.bus.clone()),
        config(&dir.path().join("none.toml")),
    )
    .await
    .unwrap()
    .with_agent("assistant", Arc::new(NoopAgent));
    assert_eq!(
        runner.agents(),
        [
            ("assistant".to_string(), "noop@1".to_string()),
            ("drift".to_string(), "drift-runbook@1".to_string())
        ]
    );
    let runner = start(runner);
    let mut events = Events::watch(&nats.bus).await;

    nats.bus
        .publish(
            &subject::agent("image"),
            &routed("t-image", "image", "", "production"),
        )
        .await
        .unwrap();
    let (event, _) = events.next(subject::TASK_FAILED, "t-image").await;
    assert_eq!(event.event_id, "t-image.failed");
    let f = failure(&event);
    assert_eq!(
        (f.stage.as_str(), f.code.as_str()),
        ("agent-runner", "no_agent_for_role")
    );
    assert_eq!(
        f.reason,
        "no agent for role \"image\" yet; roles with agents: assistant, drift"
    );

    nats.bus
        .publish(
            &subject::agent("assistant"),
            &routed("t-noop", "assistant", "", "development"),
        )
        .await
        .unwrap();
    let (event, _) = events.next(subject::TASK_PROPOSED, "t-noop").await;
    runner.stop().await;
    let plan = proposed_plan(&event);
    assert_eq!(plan.total_assets, 1);
    assert_eq!(plan.phases.len(), 1);
    assert_eq!(
        (plan.phases[0].name.as_str(), plan.phases[0].kind),
        ("noop", PhaseKind::Wave as i32)
    );
    let step = &plan.phases[0].steps[0];
    assert!(matches!(
        step.action.as_ref().unwrap().kind,
        Some(action::Kind::Noop(_))
    ));
    assert!(step.health_check.is_none());
    assert_eq!(plan.agent_run.as_ref().unwrap().agent, "noop@1");
}

#[tokio::test]
async fn unknown_group_and_missing_inventory_fail_the_task_with_clear_reasons() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_fleet, path) = fleet_inventory(dir.path()).await;
    let missing = dir.path().join("missing.toml");
    let with_fleet = AgentRunner::new(context(nats.bus.clone()), config(&path))
        .await
        .unwrap();
    let runner = start(with_fleet);
    let mut events = Events::watch(&nats.bus).await;

    nats.bus
        .publish(
            &subject::agent("drift"),
            &routed("t-db", "drift", "db", "production"),
        )
        .await
        .unwrap();
    let (event, _) = events.next(subject::TASK_FAILED, "t-db").await;
    let f = failure(&event);
    assert_eq!(
        (f.stage.as_str(), f.code.as_str()),
        ("agent-runner", "agent_failed")
    );
    assert_eq!(
        f.reason,
        "unknown asset group \"db\": the inventory has groups web"
    );

    nats.bus
        .publish(
            &subject::agent("drift"),
            &routed("t-staging", "drift", "web", "staging"),
        )
        .await
        .unwrap();
    let (event, _) = events.next(subject::TASK_FAILED, "t-staging").await;
    assert_eq!(
        failure(&event).reason,
        "the inventory has no web assets in staging"
    );
    runner.stop().await;

    // Same stream, a runner whose inventory file does not exist: the reason names the file.
    let runner = start(
        AgentRunner::new(context(nats.bus.clone()), config(&missing))
            .await
            .unwrap(),
    );
    nats.bus
        .publish(
            &subject::agent("drift"),
            &routed("t-missing", "drift", "web", "production"),
        )
        .await
        .unwrap();
    let (event, _) = events.next(subject::TASK_FAILED, "t-missing").await;
    runner.stop().await;
    let f = failure(&event);
    assert_eq!(f.code, "agent_failed");
    assert!(
        f.reason
            .contains(&format!("cannot read inventory {}", missing.display())),
        "{}",
        f.reason
    );
}

#[tokio::test]
async fn unreachable_asset_is_retried_then_dead_lettered_and_the_task_failed() {
    let nats = TestNats::start().await;
    let bus = Bus::connect(BusConfig {
        max_deliver: 3,
        ..nats.config.clone()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let path = dir.path().join("inventory.toml");
    std::fs::write(
        &path,
        format!(
            "[groups.web]\nkind = \"web_server\"\ngolden = {{ nginx_version = \"1.24.0\" }}\n\n\
             [[assets]]\nid = \"web-01\"\ngroup = \"web\"\nenvironment = \"production\"\naddress = \"http://{closed}\"\n"
        ),
    )
    .unwrap();
    let runner = start(
        AgentRunner::new(context(bus.clone()), config(&path))
            .await
            .unwrap(),
    );
    let mut events = Events::watch(&bus).await;

    bus.publish(
        &subject::agent("drift"),
        &routed("t-down", "drift", "web", "production"),
    )
    .await
    .unwrap();
    let (dead, before) = events.next(&subject::dead("agent-runner"), "t-down").await;
    runner.stop().await;

    let Some(Body::DeadLetter(dl)) = &dead.body else {
        panic!("not a dead letter: {dead:?}")
    };
    assert_eq!(dl.service, "agent-runner");
    assert_eq!(dl.subject, "baton.agent.drift");
    assert_eq!(
        dl.deliveries, 3,
        "delivered max_deliver times before giving up"
    );
    assert!(
        dl.reason.contains("asset web-01 unreachable"),
        "{}",
        dl.reason
    );
    assert!(
        before.iter().all(|(s, _)| s != subject::TASK_PROPOSED),
        "no plan for an unreachable fleet"
    );
    let failed: Vec<_> = before
        .iter()
        .filter(|(s, e)| s == subject::TASK_FAILED && e.task_id == "t-down")
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "the task is failed once, at the last attempt"
    );
    let f = failure(&failed[0].1);
    assert_eq!(f.code, "agent_unavailable");
    assert!(
        f.reason.contains("gave up after 3 attempts"),
        "{}",
        f.reason
    );
}

/// A model-backed agent as an extension would write it, which (wrongly or maliciously) says in
/// its plan that it is the reviewed drift runbook.
struct Impostor;

impl baton_agent_runner::Agent for Impostor {
    fn name(&self) -> &str {
        "billing-llm@1"
    }

    fn kind(&self) -> baton_proto::AgentKind {
        baton_proto::AgentKind::Llm
    }

    fn plan<'a>(
        &'a self,
        task: &'a Task,
        _spec: &'a TaskSpec,
    ) -> futures::future::BoxFuture<'a, Result<Plan, baton_agent_runner::AgentError>> {
        let plan = Plan {
            task_id: task.task_id.clone(),
            summary: "a report about the invoice".into(),
            agent_run: Some(baton_proto::AgentRun {
                kind: baton_proto::AgentKind::Runbook as i32,
                agent: "drift-runbook@1".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Box::pin(async move { Ok(plan) })
    }
}

#[tokio::test]
async fn a_plug_in_agent_serves_a_configured_role_and_cannot_claim_another_identity() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut catalog = baton_runtime::catalog::Catalog::default();
    catalog.roles.push("billing".into());
    let plugins = baton_runtime::plugins::Plugins::new().with(
        baton_agent_runner::AgentFactory::new("billing-llm", &["billing"], |_| {
            Ok(Arc::new(Impostor) as Arc<dyn baton_agent_runner::Agent>)
        }),
    );
    let ctx = context(nats.bus.clone())
        .with_catalog(catalog)
        .with_plugins(plugins.shared());
    let runner = AgentRunner::new(ctx, config(&dir.path().join("none.toml")))
        .await
        .unwrap();
    assert!(runner.roles().contains(&"billing".to_string()));
    assert_eq!(
        runner.agents(),
        [
            ("billing".to_string(), "billing-llm@1".to_string()),
            ("drift".to_string(), "drift-runbook@1".to_string())
        ]
    );
    let runner = start(runner);
    let mut events = Events::watch(&nats.bus).await;
    nats.bus
        .publish(
            &subject::agent("billing"),
            &routed("t-bill", "billing", "", "production"),
        )
        .await
        .unwrap();
    let (event, _) = events.next(subject::TASK_PROPOSED, "t-bill").await;
    runner.stop().await;
    let run = proposed_plan(&event).agent_run.as_ref().unwrap();
    assert_eq!(
        (run.kind(), run.agent.as_str()),
        (baton_proto::AgentKind::Llm, "billing-llm@1"),
        "the runner stamps the registration's kind and name over the plan's claim"
    );
}

#[tokio::test]
async fn agents_assign_picks_a_factory_per_role_and_refuses_unknown_names() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&dir.path().join("none.toml"));
    c.assign.insert("drift".into(), "noop".into());
    c.assign.insert("patch".into(), "drift-runbook".into());
    let runner = AgentRunner::new(context(nats.bus.clone()), c)
        .await
        .unwrap();
    assert_eq!(
        runner.agents(),
        [
            ("drift".to_string(), "noop@1".to_string()),
            ("patch".to_string(), "drift-runbook@1".to_string())
        ]
    );

    let mut c = config(&dir.path().join("none.toml"));
    c.assign.insert("cost".into(), "cost-report".into());
    let err = AgentRunner::new(context(nats.bus.clone()), c)
        .await
        .expect_err("an unregistered factory must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains("gives role \"cost\" to agent \"cost-report\", which is not registered")
            && msg.contains("registered: drift-runbook, noop"),
        "{msg}"
    );
}
