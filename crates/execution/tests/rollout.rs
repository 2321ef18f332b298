//! The execution service against a real nats-server and the demo fleet's real HTTP servers:
//! rollouts that succeed, roll back on an unhealthy asset or a failing action, resume after a
//! restart without applying anything twice, and the GetExecution RPC.

use baton_bus::testing::TestNats;
use baton_bus::{Bus, ConsumerSpec};
use baton_execution::testing::{approved, trusting, validation_key};
use baton_execution::{
    ActionError, ActionOutcome, ActionRunner, Config, Executor, HttpRunner, ProbeResult, SERVICE,
};
use baton_fleet::{Fleet, FleetSpec, WebServer};
use baton_proto::event::Body;
use baton_proto::execution_service_client::ExecutionServiceClient;
use baton_proto::{
    Action, Asset, AssetState, Event, ExecutionStatus, GetExecutionRequest, HealthCheck,
    HttpAction, HttpProbe, NoopAction, Phase, PhaseKind, Plan, Step, TaskApproved, action::Kind,
    health_check, subject,
};
use baton_runtime::Context;
use baton_runtime::auth::{AuthConfig, Authenticator, Role};
use baton_runtime::metrics::Metrics;
use baton_runtime::signing::{SigningKey, sign_approved};
use futures::StreamExt;
use futures::future::BoxFuture;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TENANT: &str = "acme";
/// Bounds every wait so a broken service fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(60);

fn authenticator() -> Authenticator {
    Authenticator::new(&AuthConfig {
        hs256_secret: "x".repeat(32),
        ..Default::default()
    })
    .unwrap()
}

fn context(bus: Bus) -> Context {
    Context::new(bus, authenticator(), Arc::new(Metrics::default()))
}

fn test_config() -> Config {
    Config {
        action_timeout: Duration::from_secs(5),
        health_check_interval: Duration::from_millis(50),
        progress_interval: Duration::from_millis(500),
        ..trusting()
    }
}

/// Starts an executor on `ctx` until the returned token is cancelled.
async fn start(
    ctx: Context,
) -> (
    CancellationToken,
    JoinHandle<Result<(), baton_execution::Error>>,
) {
    let executor = Executor::new(ctx, test_config()).await.unwrap();
    let token = CancellationToken::new();
    let task = tokio::spawn(executor.run(token.clone()));
    (token, task)
}

/// The real HTTP runner, counting the actions it runs (by idempotency key).
#[derive(Clone)]
struct Counting {
    inner: HttpRunner,
    runs: Arc<Mutex<Vec<String>>>,
    probes: Arc<Mutex<u32>>,
}

impl Counting {
    fn new() -> Counting {
        Counting {
            inner: HttpRunner::new(Duration::from_secs(5)).unwrap(),
            runs: Default::default(),
            probes: Default::default(),
        }
    }
    fn probes(&self) -> u32 {
        *self.probes.lock().unwrap()
    }
    fn runs(&self) -> Vec<String> {
        self.runs.lock().unwrap().clone()
    }
}

impl ActionRunner for Counting {
    fn run<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<ActionOutcome, ActionError>> {
        self.runs
            .lock()
            .unwrap()
            .push(action.idempotency_key.clone());
        self.inner.run(action)
    }
    fn probe<'a>(&'a self, check: &'a HealthCheck) -> BoxFuture<'a, ProbeResult> {
        *self.probes.lock().unwrap() += 1;
        self.inner.probe(check)
    }
}

/// Starts an executor with `runner` until the returned token is cancelled.
async fn start_with(
    ctx: Context,
    runner: Counting,
) -> (
    CancellationToken,
    JoinHandle<Result<(), baton_execution::Error>>,
) {
    start_configured(ctx, test_config(), runner).await
}

/// Starts an executor with `config` and `runner` until the returned token is cancelled.
async fn start_configured(
    ctx: Context,
    config: Config,
    runner: Counting,
) -> (
    CancellationToken,
    JoinHandle<Result<(), baton_execution::Error>>,
) {
    let executor = Executor::with_runner(ctx, config, Arc::new(runner))
        .await
        .unwrap();
    let token = CancellationToken::new();
    let task = tokio::spawn(executor.run(token.clone()));
    (token, task)
}

fn http(method: &str, url: String, body: Vec<u8>, key: String) -> Action {
    Action {
        idempotency_key: key,
        description: format!("{method} {url}"),
        kind: Some(Kind::Http(HttpAction {
            method: method.into(),
            url,
            body,
            headers: [("Content-Type".to_string(), "application/json".to_string())].into(),
            expect_status: vec![200],
        })),
    }
}

fn config_body(config: &BTreeMap<String, String>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "config": config })).unwrap()
}

/// A step that PUTs `golden` to `server`, rolls back to the server's current configuration,
/// and checks `/health` (`attempts` × 50 ms).
fn step(
    task: &str,
    phase: &str,
    server: &WebServer,
    golden: &BTreeMap<String, String>,
    attempts: u32,
) -> Step {
    let url = format!("{}/config", server.url());
    Step {
        asset: Some(Asset {
            id: server.id.clone(),
            name: server.id.clone(),
            kind: "web_server".into(),
            address: server.url(),
            ..Default::default()
        }),
        action: Some(http(
            "PUT",
            url.clone(),
            config_body(golden),
            format!("{task}:{phase}:{}:apply", server.id),
        )),
        rollback: Some(http(
            "PUT",
            url,
            config_body(&server.config()),
            format!("{task}:{phase}:{}:rollback", server.id),
        )),
        health_check: Some(HealthCheck {
            attempts,
            interval_ms: 50,
            kind: Some(health_check::Kind::Http(HttpProbe {
                url: format!("{}/health", server.url()),
                expect_status: 200,
            })),
        }),
        reason: "drifted".into(),
    }
}

/// Canary = server 0, then waves of the given server index ranges.
fn fleet_plan(task: &str, fleet: &Fleet, waves: &[std::ops::Range<usize>], attempts: u32) -> Plan {
    let golden = &fleet.spec.golden;
    let mut phases = vec![Phase {
        name: "canary".into(),
        kind: PhaseKind::Canary as i32,
        steps: vec![step(task, "canary", &fleet.servers[0], golden, attempts)],
    }];
    for (n, range) in waves.iter().enumerate() {
        let name = format!("wave {}", n + 1);
        phases.push(Phase {
            name: name.clone(),
            kind: PhaseKind::Wave as i32,
            steps: fleet.servers[range.clone()]
                .iter()
                .map(|s| step(task, &name, s, golden, attempts))
                .collect(),
        });
    }
    Plan {
        task_id: task.into(),
        summary: "apply the golden config".into(),
        phases,
        total_assets: fleet.servers.len() as u32,
        ..Default::default()
    }
}

/// One stored message of the main stream.
struct Stored {
    subject: String,
    msg_id: String,
    event: Event,
}

/// Every message of the main stream, in order.
async fn stream_messages(bus: &Bus) -> Vec<Stored> {
    let mut stream = bus.jetstream().get_stream("BATON").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        out.push(Stored {
            subject: m.subject.to_string(),
            msg_id: m
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.to_string())
                .unwrap_or_default(),
            event: baton_bus::decode_event(&m.payload).unwrap(),
        });
    }
    out
}

/// The task's messages published by the execution service, as stored (a merged event is one).
async fn task_messages(bus: &Bus, task_id: &str) -> Vec<Stored> {
    stream_messages(bus)
        .await
        .into_iter()
        .filter(|s| s.event.task_id == task_id && s.event.producer == SERVICE)
        .collect()
}

/// The task's events published by the execution service, one per event: a message that merges
/// several (`Body::unmerged`) stands for each of them, in order, with its message id; each event
/// it carries with the subject and event id it has on its own (`baton.execution.<kind>`;
/// `<task>.exec.p<i>.started`, `<task>.exec.p<i>.<asset>.<state>`, `<task>.exec.p<i>.completed`).
async fn task_events(bus: &Bus, task_id: &str) -> Vec<Stored> {
    task_messages(bus, task_id)
        .await
        .into_iter()
        .flat_map(|s| {
            let bodies = s
                .event
                .body
                .as_ref()
                .map(Body::unmerged)
                .unwrap_or_default();
            let own = s.event.body.as_ref().map(|b| b.kind());
            bodies.into_iter().map(move |body| {
                let subject = if Some(body.kind()) == own {
                    s.subject.clone()
                } else {
                    subject::execution(body.kind())
                };
                let event_id = match &body {
                    _ if Some(body.kind()) == own => s.event.event_id.clone(),
                    Body::PhaseStarted(p) => {
                        format!("{}.exec.p{}.started", s.event.task_id, p.index)
                    }
                    Body::AssetUpdated(u) => {
                        let a = u.asset.clone().unwrap_or_default();
                        format!(
                            "{}.exec.p{}.{}.{}",
                            s.event.task_id,
                            u.phase_index,
                            a.asset_id,
                            a.state()
                                .as_str_name()
                                .trim_start_matches("ASSET_STATE_")
                                .to_lowercase()
                        )
                    }
                    Body::PhaseCompleted(p) => {
                        format!("{}.exec.p{}.completed", s.event.task_id, p.index)
                    }
                    other => panic!("a merged event carries {other:?}"),
                };
                Stored {
                    subject,
                    msg_id: s.msg_id.clone(),
                    event: Event {
                        event_id,
                        body: Some(body),
                        ..s.event.clone()
                    },
                }
            })
        })
        .collect()
}

/// Waits for the task's `task_completed` or `task_failed` event and, for a task with a
/// rollout, for the rollout's end to be saved: a success's final event goes out right before
/// the save (it carries the last phase's completion), so the event alone does not say the
/// state is final yet.
async fn final_event(bus: &Bus, task_id: &str) -> Event {
    let store = bus.key_value("baton_executions", 5).await.unwrap();
    tokio::time::timeout(PATIENCE, async {
        loop {
            let found = task_events(bus, task_id).await.into_iter().find(|s| {
                s.subject == subject::TASK_COMPLETED || s.subject == subject::TASK_FAILED
            });
            let saved_end = match store.get(task_id).await.unwrap() {
                None => true,
                Some(bytes) => !matches!(
                    <baton_proto::Execution as prost::Message>::decode(bytes.as_ref())
                        .unwrap()
                        .status(),
                    ExecutionStatus::Running
                        | ExecutionStatus::Pending
                        | ExecutionStatus::Paused
                        | ExecutionStatus::RollingBack
                ),
            };
            if let Some(s) = found
                && saved_end
            {
                return s.event;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the rollout ends")
}

/// A compact form of the execution events: `started`, `p1.started`, `p1.applied`, …
fn shape(events: &[Stored]) -> Vec<String> {
    events
        .iter()
        .map(|s| match s.event.body.as_ref().unwrap() {
            Body::ExecutionStarted(_) => "started".to_string(),
            Body::PhaseStarted(p) => format!("p{}.started", p.index),
            Body::AssetUpdated(a) => {
                let state = AssetState::try_from(a.asset.as_ref().unwrap().state).unwrap();
                format!(
                    "p{}.{}",
                    a.phase_index,
                    state
                        .as_str_name()
                        .trim_start_matches("ASSET_STATE_")
                        .to_lowercase()
                )
            }
            Body::PhaseCompleted(p) => format!("p{}.completed.{}", p.index, p.healthy),
            Body::RollbackStarted(_) => "rollback".to_string(),
            Body::TaskCompleted(_) => "completed".to_string(),
            Body::TaskFailed(f) => format!("failed.{}", f.code),
            other => panic!("unexpected event {other:?}"),
        })
        .collect()
}

/// Asserts that every message's Nats-Msg-Id is its event id and no event id is stored twice.
async fn assert_no_duplicate_events(bus: &Bus) {
    let mut ids = HashSet::new();
    for m in &stream_messages(bus).await {
        assert_eq!(m.msg_id, m.event.event_id, "Nats-Msg-Id is the event id");
        assert!(
            ids.insert(m.event.event_id.clone()),
            "event id {} stored twice",
            m.event.event_id
        );
    }
}

/// Each phase started once, with `n` assets applied and healthy once each.
fn assert_each_step_once(shape: &[String], per_phase: &[usize]) {
    for (i, &n) in per_phase.iter().enumerate() {
        assert_eq!(
            shape
                .iter()
                .filter(|s| **s == format!("p{i}.started"))
                .count(),
            1,
            "{shape:?}"
        );
        assert_eq!(
            shape
                .iter()
                .filter(|s| **s == format!("p{i}.applied"))
                .count(),
            n,
            "{shape:?}"
        );
        assert_eq!(
            shape
                .iter()
                .filter(|s| **s == format!("p{i}.healthy"))
                .count(),
            n,
            "{shape:?}"
        );
    }
    assert_eq!(
        shape.iter().filter(|s| *s == "started").count(),
        1,
        "{shape:?}"
    );
}

fn repeat(s: &str, n: usize) -> Vec<String> {
    vec![s.to_string(); n]
}

fn asset_of(s: &Stored) -> Option<(u32, String, i32)> {
    match s.event.body.as_ref()? {
        Body::AssetUpdated(a) => {
            let st = a.asset.as_ref()?;
            Some((a.phase_index, st.asset_id.clone(), st.state))
        }
        _ => None,
    }
}

#[tokio::test]
async fn canary_and_two_waves_complete_with_every_server_updated_once() {
    let nats = TestNats::start().await;
    let fleet = Fleet::start(FleetSpec::demo_web()).await.unwrap();
    let ctx = context(nats.bus.clone());
    let (token, service) = start(ctx.clone()).await;

    let plan = fleet_plan("t-ok", &fleet, &[1..4, 4..10], 3);
    let input = approved("t-ok", TENANT, plan);
    nats.bus
        .publish(subject::TASK_APPROVED, &input)
        .await
        .unwrap();
    let done = final_event(&nats.bus, "t-ok").await;
    let Some(Body::TaskCompleted(c)) = done.body else {
        panic!("expected task_completed, got {done:?}")
    };
    let exec = c.execution.unwrap();
    assert_eq!(exec.status(), ExecutionStatus::Succeeded);
    assert!(
        exec.phases
            .iter()
            .all(|p| p.status() == ExecutionStatus::Succeeded)
    );
    assert!(
        exec.phases
            .iter()
            .flat_map(|p| &p.assets)
            .all(|a| a.state() == AssetState::Healthy)
    );

    for s in &fleet.servers {
        assert_eq!(s.applies(), 1, "{} applied once", s.id);
        assert_eq!(
            s.config(),
            fleet.spec.golden,
            "{} has the golden config",
            s.id
        );
    }

    let events = task_events(&nats.bus, "t-ok").await;
    let mut expected = vec!["started".to_string()];
    for (i, n) in [(0, 1), (1, 3), (2, 6)] {
        expected.push(format!("p{i}.started"));
        expected.extend(repeat(&format!("p{i}.applied"), n));
        expected.extend(repeat(&format!("p{i}.healthy"), n));
        expected.push(format!("p{i}.completed.true"));
    }
    expected.push("completed".into());
    assert_eq!(shape(&events), expected);
    assert_eq!(events[0].event.event_id, "t-ok.exec.started");
    assert!(
        events
            .iter()
            .all(|e| e.event.causation_id == input.event_id)
    );
    let wave2: HashSet<String> = events
        .iter()
        .filter_map(asset_of)
        .filter(|(p, _, st)| *p == 2 && *st == AssetState::Applied as i32)
        .map(|(_, id, _)| id)
        .collect();
    assert_eq!(
        wave2,
        fleet.servers[4..].iter().map(|s| s.id.clone()).collect()
    );
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains(r#"baton_executions_total{service="execution",outcome="succeeded"} 1"#),
        "{metrics}"
    );

    // The same approval delivered again (another message id): the final event is replayed
    // (and deduplicated), nothing is applied again.
    let mut again = input.clone();
    again.event_id = "t-ok.approved-again".into();
    let seq = nats
        .bus
        .publish(subject::TASK_APPROVED, &again)
        .await
        .unwrap()
        .sequence;
    let spec = ConsumerSpec::new(SERVICE, SERVICE, subject::TASK_APPROVED);
    tokio::time::timeout(PATIENCE, async {
        loop {
            let mut consumer = nats.bus.pull_consumer(&spec).await.unwrap();
            let info = consumer.info().await.unwrap();
            if info.ack_floor.stream_sequence >= seq {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the repeated approval is acked");
    assert!(fleet.servers.iter().all(|s| s.applies() == 1));
    assert_eq!(
        task_events(&nats.bus, "t-ok").await.len(),
        events.len(),
        "no new events"
    );

    token.cancel();
    service.await.unwrap().unwrap();
}

#[tokio::test]
async fn unhealthy_server_in_wave_two_rolls_back_every_change() {
    let nats = TestNats::start().await;
    let fleet = Fleet::start(FleetSpec::demo_web()).await.unwrap();
    let before: Vec<_> = fleet.servers.iter().map(|s| s.config()).collect();
    let (token, service) = start(context(nats.bus.clone())).await;

    // web-08 turns unhealthy once it applies the change.
    fleet.server("web-08").unwrap().fail_after_change(true);
    let plan = fleet_plan("t-sick", &fleet, &[1..4, 4..10], 3);
    nats.bus
        .publish(subject::TASK_APPROVED, &approved("t-sick", TENANT, plan))
        .await
        .unwrap();
    let done = final_event(&nats.bus, "t-sick").await;
    let Some(Body::TaskFailed(f)) = done.body else {
        panic!("expected task_failed, got {done:?}")
    };
    assert_eq!(
        (f.stage.as_str(), f.code.as_str()),
        ("execution", "rolled_back")
    );
    assert_eq!(
        f.reason,
        "health check failed on web-08 in wave 2: expected 200, got 503; rolled back 10 assets"
    );
    let exec = f.execution.unwrap();
    assert_eq!(exec.status(), ExecutionStatus::RolledBack);
    assert_eq!(exec.phases[2].status(), ExecutionStatus::Failed);
    assert!(
        exec.phases
            .iter()
            .flat_map(|p| &p.assets)
            .all(|a| a.state() == AssetState::RolledBack)
    );

    for (s, old) in fleet.servers.iter().zip(&before) {
        assert_eq!(&s.config(), old, "{} is back to its old config", s.id);
        assert_eq!(s.applies(), 2, "{}: the change and its rollback", s.id);
    }

    let events = task_events(&nats.bus, "t-sick").await;
    let shape = shape(&events);
    let rb = shape
        .iter()
        .position(|s| s == "rollback")
        .expect("rollback_started");
    assert_eq!(shape[rb - 1], "p2.completed.false");
    assert!(
        shape[rb - 7..rb - 1].contains(&"p2.unhealthy".to_string()),
        "{shape:?}"
    );
    let rolled_back: Vec<(u32, String)> = events[rb + 1..]
        .iter()
        .filter_map(asset_of)
        .map(|(p, id, st)| {
            assert_eq!(st, AssetState::RolledBack as i32);
            (p, id)
        })
        .collect();
    assert_eq!(rolled_back.len(), 10);
    let phases: Vec<u32> = rolled_back.iter().map(|(p, _)| *p).collect();
    assert!(
        phases.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {phases:?}"
    );
    assert_eq!(rolled_back.last().unwrap().1, "web-01");
    assert_eq!(shape.last().unwrap(), "failed.rolled_back");
    let Some(Body::RollbackStarted(r)) = &events[rb].event.body else {
        unreachable!()
    };
    assert_eq!(r.asset_ids.len(), 10);
    assert!(
        r.reason
            .starts_with("health check failed on web-08 in wave 2")
    );

    token.cancel();
    service.await.unwrap().unwrap();
}

/// A real HTTP server whose every request answers 500.
async fn broken_server() -> String {
    let app = axum::Router::new()
        .fallback(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "disk full") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn failing_action_rolls_back_what_was_changed() {
    let nats = TestNats::start().await;
    let fleet = Fleet::start(FleetSpec::demo_web()).await.unwrap();
    let before: Vec<_> = fleet.servers.iter().map(|s| s.config()).collect();
    let (token, service) = start(context(nats.bus.clone())).await;

    let broken = broken_server().await;
    let mut plan = fleet_plan("t-500", &fleet, &[1..3, 3..10], 3);
    // Wave 1 also changes an asset whose endpoint answers 500.
    plan.phases[1].steps.push(Step {
        asset: Some(Asset {
            id: "broken-01".into(),
            address: broken.clone(),
            ..Default::default()
        }),
        action: Some(http(
            "PUT",
            format!("{broken}/config"),
            b"{}".to_vec(),
            "t-500:wave 1:broken-01:apply".into(),
        )),
        rollback: None,
        health_check: None,
        reason: String::new(),
    });
    nats.bus
        .publish(subject::TASK_APPROVED, &approved("t-500", TENANT, plan))
        .await
        .unwrap();
    let done = final_event(&nats.bus, "t-500").await;
    let Some(Body::TaskFailed(f)) = done.body else {
        panic!("expected task_failed, got {done:?}")
    };
    assert_eq!(f.code, "rolled_back");
    assert!(
        f.reason.starts_with(&format!(
            "action failed on broken-01 in wave 1: PUT {broken}/config: expected 200, got 500"
        )),
        "{}",
        f.reason
    );
    assert!(f.reason.contains("disk full"), "{}", f.reason);
    let exec = f.execution.unwrap();
    let broken_state = &exec.phases[1].assets[2];
    assert_eq!(
        (broken_state.asset_id.as_str(), broken_state.state()),
        ("broken-01", AssetState::Failed)
    );

    for (s, old) in fleet.servers.iter().zip(&before) {
        assert_eq!(&s.config(), old, "{} keeps or regains its old config", s.id);
    }
    assert!(
        fleet.servers[3..].iter().all(|s| s.applies() == 0),
        "wave 2 never ran"
    );
    let shape = shape(&task_events(&nats.bus, "t-500").await);
    assert!(!shape.iter().any(|s| s.starts_with("p2.")), "{shape:?}");
    assert!(
        !shape.iter().any(|s| s == "p1.healthy"),
        "no health checks after a failed action: {shape:?}"
    );

    token.cancel();
    service.await.unwrap().unwrap();
}

#[tokio::test]
async fn restarted_service_resumes_without_applying_twice() {
    let nats = TestNats::start().await;
    let fleet = Fleet::start(FleetSpec::demo_web()).await.unwrap();
    let ctx_a = context(nats.bus.clone());
    let runner_a = Counting::new();
    let (token_a, service_a) = start_with(ctx_a.clone(), runner_a.clone()).await;

    // web-03 (wave 1) is unhealthy until told otherwise, and its check is patient, so the
    // rollout sits in wave 1's health checks.
    let sick = fleet.server("web-03").unwrap().clone();
    sick.set_healthy(false);
    let plan = fleet_plan("t-restart", &fleet, &[1..5, 5..10], 200);
    nats.bus
        .publish(subject::TASK_APPROVED, &approved("t-restart", TENANT, plan))
        .await
        .unwrap();

    let store = nats.bus.key_value("baton_executions", 5).await.unwrap();
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(bytes) = store.get("t-restart").await.unwrap() {
                let exec =
                    <baton_proto::Execution as prost::Message>::decode(bytes.as_ref()).unwrap();
                let wave1 = &exec.phases[1];
                let states: HashMap<&str, AssetState> = wave1
                    .assets
                    .iter()
                    .map(|a| (a.asset_id.as_str(), a.state()))
                    .collect();
                if states["web-03"] == AssetState::Applied
                    && states
                        .iter()
                        .filter(|(id, _)| **id != "web-03")
                        .all(|(_, s)| *s == AssetState::Healthy)
                {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("wave 1 applied and waiting on web-03");

    // Stop the first instance mid-phase.
    token_a.cancel();
    tokio::time::timeout(PATIENCE, service_a)
        .await
        .expect("first instance stops")
        .unwrap()
        .unwrap();
    assert!(
        !task_events(&nats.bus, "t-restart")
            .await
            .iter()
            .any(|s| s.subject == subject::TASK_COMPLETED),
        "the first instance must not have finished"
    );
    assert!(
        fleet.servers[5..].iter().all(|s| s.applies() == 0),
        "wave 2 not started"
    );

    // A new instance with its own connection resumes once web-03 recovers.
    sick.set_healthy(true);
    let bus_b = Bus::connect(nats.config.clone()).await.unwrap();
    let ctx_b = context(bus_b);
    let runner_b = Counting::new();
    let (token_b, service_b) = start_with(ctx_b.clone(), runner_b.clone()).await;
    let done = final_event(&nats.bus, "t-restart").await;
    assert!(
        matches!(done.body, Some(Body::TaskCompleted(_))),
        "{done:?}"
    );
    for s in &fleet.servers {
        assert_eq!(s.applies(), 1, "{} applied exactly once", s.id);
        assert_eq!(s.config(), fleet.spec.golden);
    }

    // The first instance ran the canary and wave 1, the second only wave 2: nothing was redone.
    assert_eq!(runner_a.runs().len(), 5, "{:?}", runner_a.runs());
    let mut b_runs = runner_b.runs();
    b_runs.sort();
    let wave2: Vec<String> = fleet.servers[5..]
        .iter()
        .map(|s| format!("t-restart:wave 2:{}:apply", s.id))
        .collect();
    assert_eq!(b_runs, wave2);
    let (a, b) = (ctx_a.metrics.render(), ctx_b.metrics.render());
    assert!(
        a.contains(r#"baton_messages_total{service="execution",outcome="stopped"} 1"#),
        "{a}"
    );
    assert!(!a.contains("baton_executions_total{"), "{a}");
    assert!(
        b.contains(r#"baton_executions_total{service="execution",outcome="succeeded"} 1"#),
        "{b}"
    );

    assert_no_duplicate_events(&nats.bus).await;
    let events = task_events(&nats.bus, "t-restart").await;
    let shape = shape(&events);
    assert_each_step_once(&shape, &[1, 4, 5]);

    token_b.cancel();
    service_b.await.unwrap().unwrap();
}

#[tokio::test]
async fn noop_and_empty_plans_complete_and_get_execution_checks_the_tenant() {
    let nats = TestNats::start().await;
    // A consumer left by an earlier version (with a server-side backoff list, which cut the ack
    // deadline to backoff[0]) is updated when the service starts.
    let stream = nats.bus.jetstream().get_stream("BATON").await.unwrap();
    let mut old = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(SERVICE.into()),
            filter_subject: subject::TASK_APPROVED.into(),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            max_deliver: 5,
            backoff: vec![Duration::from_millis(50), Duration::from_millis(100)],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!old.info().await.unwrap().config.backoff.is_empty());
    let spec = ConsumerSpec::new(SERVICE, SERVICE, subject::TASK_APPROVED);
    let ctx = context(nats.bus.clone());
    let executor = Executor::new(ctx.clone(), test_config()).await.unwrap();
    let token = CancellationToken::new();
    let mut routes = tonic::service::RoutesBuilder::default();
    executor.add_grpc(&mut routes);
    let (addr, _server) = baton_runtime::grpc::serve(
        "127.0.0.1:0".parse().unwrap(),
        routes.routes(),
        &[],
        token.clone(),
    )
    .await
    .unwrap();
    let service = tokio::spawn(executor.run(token.clone()));

    let noop = |id: &str| Step {
        asset: Some(Asset {
            id: id.into(),
            ..Default::default()
        }),
        action: Some(Action {
            kind: Some(Kind::Noop(NoopAction {})),
            ..Default::default()
        }),
        ..Default::default()
    };
    let plan = Plan {
        phases: vec![
            Phase {
                name: "canary".into(),
                kind: PhaseKind::Canary as i32,
                steps: vec![noop("n-1")],
            },
            Phase {
                name: "wave 1".into(),
                kind: PhaseKind::Wave as i32,
                steps: vec![noop("n-2"), noop("n-3")],
            },
        ],
        ..Default::default()
    };
    nats.bus
        .publish(subject::TASK_APPROVED, &approved("t-noop", TENANT, plan))
        .await
        .unwrap();
    nats.bus
        .publish(
            subject::TASK_APPROVED,
            &approved("t-empty", TENANT, Plan::default()),
        )
        .await
        .unwrap();
    for task in ["t-noop", "t-empty"] {
        let done = final_event(&nats.bus, task).await;
        assert!(
            matches!(done.body, Some(Body::TaskCompleted(_))),
            "{task}: {done:?}"
        );
    }
    // No health checks on noop steps: they stay applied.
    let noop_shape = shape(&task_events(&nats.bus, "t-noop").await);
    assert_eq!(
        noop_shape,
        [
            "started",
            "p0.started",
            "p0.applied",
            "p0.completed.true",
            "p1.started",
            "p1.applied",
            "p1.applied",
            "p1.completed.true",
            "completed"
        ]
    );
    assert_eq!(
        shape(&task_events(&nats.bus, "t-empty").await),
        ["started", "completed"]
    );
    let mut consumer = nats.bus.pull_consumer(&spec).await.unwrap();
    let info = consumer.info().await.unwrap();
    assert!(info.config.backoff.is_empty(), "{:?}", info.config.backoff);
    assert_eq!(info.config.ack_wait, nats.config.ack_wait);
    assert_eq!(
        info.config.max_deliver, -1,
        "shutdowns mid-rollout must never exhaust deliveries"
    );

    let mut client = ExecutionServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let auth = authenticator();
    let call = |task: &str, token: Option<String>| {
        let mut req = tonic::Request::new(GetExecutionRequest {
            task_id: task.into(),
        });
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req
    };
    let mine = auth.mint("alice", TENANT, &[Role::Submitter], Duration::from_secs(60));
    let exec = client
        .get_execution(call("t-noop", Some(mine.clone())))
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap();
    assert_eq!(
        (exec.task_id.as_str(), exec.status()),
        ("t-noop", ExecutionStatus::Succeeded)
    );
    assert_eq!(exec.phases.len(), 2);
    assert!(exec.plan.is_some() && exec.finished_at.is_some());

    let other = auth.mint(
        "mallory",
        "globex",
        &[Role::Approver],
        Duration::from_secs(60),
    );
    let err = client
        .get_execution(call("t-noop", Some(other)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = client
        .get_execution(call("t-missing", Some(mine.clone())))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = client
        .get_execution(call("bad key!", Some(mine)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = client
        .get_execution(call("t-noop", None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let admin = auth.mint("root", "ops", &[Role::Admin], Duration::from_secs(60));
    assert!(
        client
            .get_execution(call("t-noop", Some(admin)))
            .await
            .is_ok(),
        "admin sees every tenant"
    );

    token.cancel();
    service.await.unwrap().unwrap();
}

#[tokio::test]
async fn rollout_longer_than_ack_wait_is_not_redelivered() {
    // TestNats uses a 5 s ack_wait; the rollout below takes longer, kept alive by progress acks.
    let nats = TestNats::start().await;
    assert!(nats.config.ack_wait <= Duration::from_secs(5));
    let fleet = Fleet::start(FleetSpec::demo_web()).await.unwrap();
    let ctx = context(nats.bus.clone());
    let runner = Counting::new();
    let (token, service) = start_with(ctx.clone(), runner.clone()).await;

    let slow = fleet.server("web-01").unwrap().clone();
    slow.set_healthy(false);
    let wave: std::ops::Range<usize> = 1..3;
    let plan = fleet_plan("t-slow", &fleet, std::slice::from_ref(&wave), 400);
    nats.bus
        .publish(subject::TASK_APPROVED, &approved("t-slow", TENANT, plan))
        .await
        .unwrap();
    // Recover web-01 only after ack_wait has passed.
    let wait = nats.config.ack_wait + Duration::from_secs(2);
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        slow.set_healthy(true);
    });
    let done = final_event(&nats.bus, "t-slow").await;
    assert!(
        matches!(done.body, Some(Body::TaskCompleted(_))),
        "{done:?}"
    );
    assert_eq!(
        runner.runs().len(),
        3,
        "each action ran once: {:?}",
        runner.runs()
    );
    let m = ctx.metrics.render();
    assert!(
        m.contains(r#"baton_messages_total{service="execution",outcome="succeeded"} 1"#),
        "{m}"
    );
    assert!(
        !m.contains(r#"outcome="retry""#),
        "handled once, no redelivery: {m}"
    );
    let spec = ConsumerSpec::new(SERVICE, SERVICE, subject::TASK_APPROVED);
    let info = nats
        .bus
        .pull_consumer(&spec)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.num_redelivered, 0, "never redelivered");

    token.cancel();
    service.await.unwrap().unwrap();
}

#[tokio::test]
async fn resumed_state_with_a_failed_step_starts_no_new_action_and_rolls_back() {
    let nats = TestNats::start().await;
    let fleet = Fleet::start(FleetSpec::demo_web()).await.unwrap();
    let before: Vec<_> = fleet.servers.iter().map(|s| s.config()).collect();
    let plan = fleet_plan("t-resume", &fleet, &[1..3, 3..5], 3);

    // State left by a crashed instance: the canary done (web-01 changed), wave 1 running
    // with web-02 failed and web-03 not started yet.
    fleet.servers[0].set_config(fleet.spec.golden.clone());
    let asset = |id: &str, state: AssetState, detail: &str| baton_proto::AssetStatus {
        asset_id: id.into(),
        state: state as i32,
        detail: detail.into(),
    };
    let phase = |p: &Phase, status: ExecutionStatus, assets| baton_proto::PhaseStatus {
        name: p.name.clone(),
        kind: p.kind,
        status: status as i32,
        assets,
    };
    let state = baton_proto::Execution {
        task_id: "t-resume".into(),
        tenant: TENANT.into(),
        status: ExecutionStatus::Running as i32,
        phases: vec![
            phase(
                &plan.phases[0],
                ExecutionStatus::Succeeded,
                vec![asset("web-01", AssetState::Healthy, "")],
            ),
            phase(
                &plan.phases[1],
                ExecutionStatus::Running,
                vec![
                    asset("web-02", AssetState::Failed, "boom"),
                    asset("web-03", AssetState::Pending, ""),
                ],
            ),
            phase(
                &plan.phases[2],
                ExecutionStatus::Pending,
                vec![
                    asset("web-04", AssetState::Pending, ""),
                    asset("web-05", AssetState::Pending, ""),
                ],
            ),
        ],
        current_phase: 1,
        started_at: Some(baton_proto::now()),
        plan: Some(plan.clone()),
        ..Default::default()
    };
    let kv = nats.bus.key_value("baton_executions", 5).await.unwrap();
    kv.put("t-resume", prost::Message::encode_to_vec(&state).into())
        .await
        .unwrap();

    let (token, service) = start(context(nats.bus.clone())).await;
    nats.bus
        .publish(subject::TASK_APPROVED, &approved("t-resume", TENANT, plan))
        .await
        .unwrap();
    let done = final_event(&nats.bus, "t-resume").await;
    let Some(Body::TaskFailed(f)) = done.body else {
        panic!("expected task_failed, got {done:?}")
    };
    assert_eq!(f.code, "rolled_back");
    assert_eq!(
        f.reason,
        "action failed on web-02 in wave 1: boom; rolled back 1 asset"
    );
    assert_eq!(fleet.servers[0].config(), before[0], "web-01 restored");
    assert_eq!(fleet.servers[0].applies(), 1, "web-01: only its rollback");
    assert!(
        fleet.servers[1..].iter().all(|s| s.applies() == 0),
        "nothing new applied after the failure"
    );
    assert_eq!(
        shape(&task_events(&nats.bus, "t-resume").await),
        [
            "p1.completed.false",
            "rollback",
            "p0.rolled_back",
            "failed.rolled_back"
        ]
    );

    token.cancel();
    service.await.unwrap().unwrap();
}

#[tokio::test]
async fn default_progress_interval_keeps_a_rollout_longer_than_a_short_ack_wait() {
    // ack_wait 1 s, progress_interval left at its 5 s default: the service must send progress
    // acks every ack_wait / 3, or the ~3 s rollout is redelivered to a second handler.
    let nats = TestNats::start().await;
    let bus = Bus::connect(baton_bus::BusConfig {
        ack_wait: Duration::from_secs(1),
        ..nats.config.clone()
    })
    .await
    .unwrap();
    let fleet = Fleet::start(FleetSpec::demo_web()).await.unwrap();
    let ctx = context(bus.clone());
    let runner = Counting::new();
    let config = Config {
        progress_interval: Config::default().progress_interval,
        ..test_config()
    };
    assert_eq!(config.progress_interval, Duration::from_secs(5));
    let (token, service) = start_configured(ctx.clone(), config, runner.clone()).await;

    fleet
        .server("web-01")
        .unwrap()
        .set_delay(Duration::from_secs(3));
    let plan = fleet_plan("t-ackwait", &fleet, std::slice::from_ref(&(1..3)), 3);
    bus.publish(subject::TASK_APPROVED, &approved("t-ackwait", TENANT, plan))
        .await
        .unwrap();
    let done = final_event(&bus, "t-ackwait").await;
    assert!(
        matches!(done.body, Some(Body::TaskCompleted(_))),
        "{done:?}"
    );

    let mut runs = runner.runs();
    runs.sort();
    assert_eq!(
        runs,
        [
            "t-ackwait:canary:web-01:apply",
            "t-ackwait:wave 1:web-02:apply",
            "t-ackwait:wave 1:web-03:apply"
        ]
    );
    for s in &fleet.servers[..3] {
        assert_eq!(s.applies(), 1, "{} applied once", s.id);
    }
    assert_no_duplicate_events(&bus).await;
    assert_each_step_once(&shape(&task_events(&bus, "t-ackwait").await), &[1, 2]);
    let m = ctx.metrics.render();
    assert!(
        m.contains(r#"baton_messages_total{service="execution",outcome="succeeded"} 1"#),
        "{m}"
    );
    assert!(
        !m.contains(r#"outcome="retry""#) && !m.contains(r#"outcome="interrupted""#),
        "handled once: {m}"
    );
    let spec = ConsumerSpec::new(SERVICE, SERVICE, subject::TASK_APPROVED);
    let info = bus
        .pull_consumer(&spec)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.num_redelivered, 0, "never redelivered");

    token.cancel();
    service.await.unwrap().unwrap();
}

/// Sets the max message size of the execution bucket's stream: 1 makes every state write fail.
async fn set_state_max_msg_size(bus: &Bus, size: i32) {
    let mut stream = bus
        .jetstream()
        .get_stream("KV_baton_executions")
        .await
        .unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    config.max_message_size = size;
    bus.jetstream().update_stream(config).await.unwrap();
}

#[tokio::test]
async fn restarts_do_not_use_up_deliveries_before_a_real_failure() {
    // max_deliver 3; the rollout is interrupted by five restarts (six deliveries), then a state
    // write fails once. Only that failure counts, so the rollout resumes and completes.
    let nats = TestNats::start().await;
    let config = baton_bus::BusConfig {
        max_deliver: 3,
        backoff: vec![Duration::from_secs(1)],
        ..nats.config.clone()
    };
    let fleet = Fleet::start(FleetSpec::demo_web()).await.unwrap();
    let sick = fleet.server("web-03").unwrap().clone();
    sick.set_healthy(false);
    let plan = fleet_plan("t-flaky", &fleet, std::slice::from_ref(&(1..5)), 400);
    nats.bus
        .publish(subject::TASK_APPROVED, &approved("t-flaky", TENANT, plan))
        .await
        .unwrap();

    for restart in 1..=5 {
        let ctx = context(Bus::connect(config.clone()).await.unwrap());
        let runner = Counting::new();
        let (token, service) = start_with(ctx.clone(), runner.clone()).await;
        // Stop it once it is mid-rollout, probing the sick web-03.
        tokio::time::timeout(PATIENCE, async {
            while runner.probes() == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the rollout is running");
        token.cancel();
        tokio::time::timeout(PATIENCE, service)
            .await
            .expect("instance stops")
            .unwrap()
            .unwrap();
        let m = ctx.metrics.render();
        assert!(
            m.contains(r#"baton_messages_total{service="execution",outcome="stopped"} 1"#),
            "restart {restart}: {m}"
        );
    }
    let spec = ConsumerSpec::new(SERVICE, SERVICE, subject::TASK_APPROVED);
    let info = nats
        .bus
        .pull_consumer(&spec)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert!(
        info.num_redelivered >= 1,
        "the message was redelivered across restarts"
    );

    // Now a real transient failure: state writes fail until the first one is counted.
    set_state_max_msg_size(&nats.bus, 1).await;
    sick.set_healthy(true);
    let ctx = context(Bus::connect(config.clone()).await.unwrap());
    let (token, service) = start_with(ctx.clone(), Counting::new()).await;
    let attempts = nats
        .bus
        .key_value("baton_execution_attempts", 1)
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, async {
        while !ctx
            .metrics
            .render()
            .contains(r#"baton_messages_total{service="execution",outcome="retry"}"#)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a state write fails");
    set_state_max_msg_size(&nats.bus, -1).await;

    let done = final_event(&nats.bus, "t-flaky").await;
    assert!(
        matches!(done.body, Some(Body::TaskCompleted(_))),
        "{done:?}"
    );
    for s in &fleet.servers[..5] {
        assert_eq!(s.applies(), 1, "{} applied once", s.id);
    }
    assert_no_duplicate_events(&nats.bus).await;
    assert_each_step_once(&shape(&task_events(&nats.bus, "t-flaky").await), &[1, 4]);
    let mut dead = nats.bus.jetstream().get_stream("BATON_DEAD").await.unwrap();
    assert_eq!(
        dead.info().await.unwrap().state.messages,
        0,
        "nothing dead-lettered"
    );
    // Reset once the rollout ends: after its end is saved, which follows the final event.
    tokio::time::timeout(PATIENCE, async {
        while attempts.get("t-flaky").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the count is reset once the rollout ends");

    token.cancel();
    service.await.unwrap().unwrap();
}

/// The event stages (`exec.p1.web-02.applied`) that report what `exec` holds.
fn stages_reporting(exec: &baton_proto::Execution) -> Vec<String> {
    let mut out = vec!["exec.started".to_string()];
    for (i, p) in exec.phases.iter().enumerate() {
        if p.status() != ExecutionStatus::Pending {
            out.push(format!("exec.p{i}.started"));
        }
        if matches!(
            p.status(),
            ExecutionStatus::Succeeded | ExecutionStatus::Failed | ExecutionStatus::RolledBack
        ) {
            out.push(format!("exec.p{i}.completed"));
        }
        for a in &p.assets {
            let id = &a.asset_id;
            let applied = format!("exec.p{i}.{id}.applied");
            match a.state() {
                AssetState::Applied => out.push(applied),
                AssetState::Healthy => out.extend([applied, format!("exec.p{i}.{id}.healthy")]),
                AssetState::Unhealthy => out.extend([applied, format!("exec.p{i}.{id}.unhealthy")]),
                AssetState::Failed => out.push(format!("exec.p{i}.{id}.failed")),
                AssetState::RolledBack | AssetState::RollbackFailed => {
                    out.extend([applied, format!("exec.rb.p{i}.{id}")])
                }
                _ => {}
            }
        }
    }
    if !exec.error.is_empty() {
        out.push("exec.rollback".into());
    }
    out
}

#[tokio::test]
async fn every_saved_state_was_reported_by_events_already_in_the_stream() {
    // The shell's side of publish-before-save: watch every revision the service writes and
    // check, when it arrives, that the stream already holds the events reporting it.
    let nats = TestNats::start().await;
    let fleet = Fleet::start(FleetSpec::demo_web()).await.unwrap();
    let (token, service) = start(context(nats.bus.clone())).await;
    fleet.server("web-03").unwrap().fail_after_change(true);
    let kv = nats.bus.key_value("baton_executions", 5).await.unwrap();
    let mut watch = kv.watch("t-watch").await.unwrap();

    let plan = fleet_plan("t-watch", &fleet, std::slice::from_ref(&(1..4)), 2);
    nats.bus
        .publish(subject::TASK_APPROVED, &approved("t-watch", TENANT, plan))
        .await
        .unwrap();
    let mut revisions = 0;
    tokio::time::timeout(PATIENCE, async {
        while let Some(entry) = watch.next().await {
            let entry = entry.unwrap();
            let exec =
                <baton_proto::Execution as prost::Message>::decode(entry.value.as_ref()).unwrap();
            revisions += 1;
            let published: HashSet<String> = task_events(&nats.bus, "t-watch")
                .await
                .into_iter()
                .map(|s| s.event.event_id)
                .collect();
            for stage in stages_reporting(&exec) {
                // The first revision is the new rollout, stored before it is announced.
                if revisions == 1 {
                    break;
                }
                let id = format!("t-watch.{stage}");
                assert!(
                    published.contains(&id),
                    "revision {}: saved before {id} was published",
                    entry.revision
                );
            }
            if exec.status() == ExecutionStatus::RolledBack {
                break;
            }
        }
    })
    .await
    .expect("the rollout ends rolled back");
    // Created, canary applied and healthy, three wave results and three checks, rollback
    // started, four rollbacks, the end.
    assert!(revisions >= 12, "{revisions} revisions watched");
    let done = final_event(&nats.bus, "t-watch").await;
    assert!(matches!(done.body, Some(Body::TaskFailed(_))), "{done:?}");

    token.cancel();
    service.await.unwrap().unwrap();
}

/// The dead letters execution published: `(task id, reason)`, in order.
async fn execution_dead_letters(bus: &Bus) -> Vec<(String, String)> {
    let mut stream = bus.jetstream().get_stream("BATON_DEAD").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let Ok(msg) = stream.get_raw_message(seq).await else {
            continue;
        };
        let event = baton_bus::decode_event(&msg.payload).unwrap();
        if let Some(Body::DeadLetter(dl)) = event.body
            && dl.service == SERVICE
        {
            out.push((event.task_id, dl.reason));
        }
    }
    out
}

/// A plan of one no-op step.
fn one_noop_plan() -> Plan {
    Plan {
        phases: vec![Phase {
            name: "canary".into(),
            kind: PhaseKind::Canary as i32,
            steps: vec![Step {
                asset: Some(Asset {
                    id: "n-1".into(),
                    ..Default::default()
                }),
                action: Some(Action {
                    kind: Some(Kind::Noop(NoopAction {})),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        }],
        ..Default::default()
    }
}

/// Replaces the body of `event` (an approved event) by `approved`.
fn with_body(mut event: Event, approved: TaskApproved) -> Event {
    event.body = Some(Body::TaskApproved(approved));
    event
}

/// The `TaskApproved` of an `approved(...)` event.
fn body_of(event: &Event) -> TaskApproved {
    match event.body.clone() {
        Some(Body::TaskApproved(a)) => a,
        other => panic!("not approved: {other:?}"),
    }
}

#[tokio::test]
async fn only_approvals_signed_by_a_trusted_key_over_the_plan_run() {
    let nats = TestNats::start().await;
    let next = SigningKey::from_seed([8; 32]);
    let stranger = SigningKey::from_seed([9; 32]);
    // Rotation: the current and the next key are both trusted.
    let config = Config {
        trusted_keys: vec![
            validation_key().public_key().to_string(),
            next.public_key().to_string(),
        ],
        ..test_config()
    };
    let executor = Executor::new(context(nats.bus.clone()), config)
        .await
        .unwrap();
    let token = CancellationToken::new();
    let service = tokio::spawn(executor.run(token.clone()));

    // Forged: what anyone on NATS could publish, with no signature.
    let mut forged = body_of(&approved("t-forged", TENANT, one_noop_plan()));
    forged.signature = None;
    let forged = with_body(approved("t-forged", TENANT, one_noop_plan()), forged);
    // Signed by a key nobody trusts.
    let mut by_stranger = body_of(&approved("t-stranger", TENANT, one_noop_plan()));
    by_stranger.signature = None;
    by_stranger.approval.as_mut().unwrap().plan_hash.clear();
    sign_approved(&stranger, &mut by_stranger).unwrap();
    let by_stranger = with_body(approved("t-stranger", TENANT, one_noop_plan()), by_stranger);
    // Signed, then the plan swapped between approval and execution.
    let mut tampered = body_of(&approved("t-tampered", TENANT, one_noop_plan()));
    tampered.plan.as_mut().unwrap().phases[0].steps[0]
        .asset
        .as_mut()
        .unwrap()
        .id = "n-evil".into();
    let tampered = with_body(approved("t-tampered", TENANT, one_noop_plan()), tampered);
    // A genuine signed approval replayed under another task's envelope.
    let mut replayed = approved("t-current", TENANT, one_noop_plan());
    replayed.task_id = "t-replayed".into();
    replayed.event_id = "t-replayed.approved".into();
    // Signed by the next key of the rotation.
    let mut by_next = body_of(&approved("t-next", TENANT, one_noop_plan()));
    by_next.signature = None;
    sign_approved(&next, &mut by_next).unwrap();
    let by_next = with_body(approved("t-next", TENANT, one_noop_plan()), by_next);

    for event in [
        &forged,
        &by_stranger,
        &tampered,
        &replayed,
        &approved("t-current", TENANT, one_noop_plan()),
        &by_next,
    ] {
        nats.bus
            .publish(subject::TASK_APPROVED, event)
            .await
            .unwrap();
    }
    for task in ["t-current", "t-next"] {
        let done = final_event(&nats.bus, task).await;
        assert!(
            matches!(done.body, Some(Body::TaskCompleted(_))),
            "{task}: {done:?}"
        );
    }
    let dead = tokio::time::timeout(PATIENCE, async {
        loop {
            let dead = execution_dead_letters(&nats.bus).await;
            if dead.len() >= 4 {
                return dead;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("four dead letters");
    let reason_of = |task: &str| {
        dead.iter()
            .find(|(t, _)| t == task)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("no dead letter for {task}: {dead:?}"))
    };
    assert_eq!(
        reason_of("t-forged"),
        "unverified approval: no signature; nothing was run"
    );
    assert!(
        reason_of("t-stranger").contains(&format!("key \"{}\" is not trusted", stranger.key_id())),
        "{dead:?}"
    );
    assert!(
        reason_of("t-tampered").contains("does not match the approved"),
        "{dead:?}"
    );
    assert!(
        reason_of("t-replayed").contains("the signed task is t-current@acme"),
        "{dead:?}"
    );
    for task in ["t-forged", "t-stranger", "t-tampered", "t-replayed"] {
        assert!(
            task_events(&nats.bus, task).await.is_empty(),
            "{task}: nothing may run"
        );
        assert!(
            baton_execution::Store::open(&nats.bus)
                .await
                .unwrap()
                .load(task)
                .await
                .unwrap()
                .is_none(),
            "{task}: no rollout state"
        );
    }
    token.cancel();
    service.await.unwrap().unwrap();

    // The rotation ends: the old key removed, its signatures run nothing any more.
    let rotated = Config {
        trusted_keys: vec![next.public_key().to_string()],
        ..test_config()
    };
    let executor = Executor::new(context(nats.bus.clone()), rotated)
        .await
        .unwrap();
    let token = CancellationToken::new();
    let service = tokio::spawn(executor.run(token.clone()));
    nats.bus
        .publish(
            subject::TASK_APPROVED,
            &approved("t-old-key", TENANT, one_noop_plan()),
        )
        .await
        .unwrap();
    let reason = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some((_, r)) = execution_dead_letters(&nats.bus)
                .await
                .into_iter()
                .find(|(t, _)| t == "t-old-key")
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the old key's approval is dead-lettered");
    assert!(
        reason.contains(&format!(
            "key \"{}\" is not trusted (trusted: {})",
            validation_key().key_id(),
            next.key_id()
        )),
        "{reason}"
    );
    assert!(task_events(&nats.bus, "t-old-key").await.is_empty());
    token.cancel();
    service.await.unwrap().unwrap();
}

/// A delivery-only plan (no steps, a report) completes at once: one `completed` event carrying
/// the plan and its report, no rollout events, no state in KV; a redelivery adds nothing.
#[tokio::test]
async fn a_delivery_only_plan_completes_without_a_rollout() {
    let nats = TestNats::start().await;
    let (token, service) = start(context(nats.bus.clone())).await;
    let report = baton_proto::report::Report {
        answer: "the bill grew with storage egress".into(),
        findings: vec!["egress tripled".into()],
        recommendations: vec!["cache the exports".into()],
    };
    let plan = Plan {
        task_id: "t-report".into(),
        summary: "why the bill jumped".into(),
        artifacts: vec![report.to_artifact()],
        ..Default::default()
    };
    let event = approved("t-report", TENANT, plan);
    nats.bus
        .publish(subject::TASK_APPROVED, &event)
        .await
        .unwrap();
    let done = final_event(&nats.bus, "t-report").await;
    let Some(Body::TaskCompleted(completed)) = done.body else {
        panic!("not completed: {done:?}");
    };
    let exec = completed.execution.unwrap();
    assert_eq!(exec.status(), ExecutionStatus::Succeeded);
    assert!(exec.phases.is_empty());
    let carried = exec.plan.unwrap();
    let parsed = baton_proto::report::Report::parse(carried.report_artifact().unwrap()).unwrap();
    assert_eq!(parsed, report);
    // Redelivered (published again under a new message id): the same event id, dropped.
    nats.bus
        .publish_with_id(subject::TASK_APPROVED, "t-report.approved.again", &event)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        shape(&task_events(&nats.bus, "t-report").await),
        ["completed"],
        "no rollout events, one completion"
    );
    let store = nats
        .bus
        .key_value(
            baton_execution::store::BUCKET,
            baton_execution::store::HISTORY,
        )
        .await
        .unwrap();
    assert!(
        store.get("t-report").await.unwrap().is_none(),
        "a delivery-only plan keeps no rollout state"
    );
    token.cancel();
    service.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_one_step_plan_is_stored_twice_and_its_events_go_out_before_the_end_is_saved() {
    // The new rollout, then its result, the phase's completion and the end in one save: the
    // step's result is saved with the next change since nothing touches the outside world
    // in between.
    let nats = TestNats::start().await;
    let (token, service) = start(context(nats.bus.clone())).await;
    let kv = nats.bus.key_value("baton_executions", 5).await.unwrap();
    let mut watch = kv.watch("t-one").await.unwrap();
    nats.bus
        .publish(
            subject::TASK_APPROVED,
            &approved("t-one", TENANT, one_noop_plan()),
        )
        .await
        .unwrap();
    let done = final_event(&nats.bus, "t-one").await;
    assert!(
        matches!(done.body, Some(Body::TaskCompleted(_))),
        "{done:?}"
    );
    let mut saved = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(entry) = watch.next().await {
            let exec =
                <baton_proto::Execution as prost::Message>::decode(entry.unwrap().value.as_ref())
                    .unwrap();
            let ended = exec.status() == ExecutionStatus::Succeeded;
            saved.push(exec.status());
            if ended {
                break;
            }
        }
    })
    .await
    .expect("the rollout's end is saved");
    assert_eq!(
        saved,
        [ExecutionStatus::Running, ExecutionStatus::Succeeded],
        "created, then ended"
    );
    let stages: Vec<String> = task_events(&nats.bus, "t-one")
        .await
        .into_iter()
        .map(|s| s.event.event_id)
        .collect();
    assert_eq!(
        stages,
        [
            "t-one.exec.started",
            "t-one.exec.p0.started",
            "t-one.exec.p0.n-1.applied",
            "t-one.exec.p0.completed",
            "t-one.completed"
        ]
    );

    token.cancel();
    service.await.unwrap().unwrap();
}

/// Runs every action (detail `<key> done`) and answers every probe healthy, first noting the
/// ids of the events the stream holds at that moment.
#[derive(Clone)]
struct Watching {
    bus: Bus,
    /// Per probe, the event ids stored when it started.
    seen_at_probe: Arc<Mutex<Vec<Vec<String>>>>,
}

impl ActionRunner for Watching {
    fn run<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<ActionOutcome, ActionError>> {
        Box::pin(async move {
            Ok(ActionOutcome {
                detail: format!("{} done", action.idempotency_key),
            })
        })
    }
    fn probe<'a>(&'a self, _: &'a HealthCheck) -> BoxFuture<'a, ProbeResult> {
        Box::pin(async move {
            let ids = stream_messages(&self.bus)
                .await
                .into_iter()
                .map(|s| s.event.event_id)
                .collect();
            self.seen_at_probe.lock().unwrap().push(ids);
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_one_step_rollout_publishes_two_messages_and_a_checked_change_goes_out_before_its_probe()
{
    use baton_proto::{AssetStatus, ExecutionStarted, PhaseCompleted, PhaseStarted};
    let nats = TestNats::start().await;
    let watching = Watching {
        bus: nats.bus.clone(),
        seen_at_probe: Default::default(),
    };
    let executor = Executor::with_runner(
        context(nats.bus.clone()),
        test_config(),
        Arc::new(watching.clone()),
    )
    .await
    .unwrap();
    let token = CancellationToken::new();
    let service = tokio::spawn(executor.run(token.clone()));
    let one_step = |task: &str, checked: bool| Plan {
        phases: vec![Phase {
            name: "canary".into(),
            kind: PhaseKind::Canary as i32,
            steps: vec![Step {
                asset: Some(Asset {
                    id: "a".into(),
                    ..Default::default()
                }),
                action: Some(Action {
                    idempotency_key: format!("{task}:a"),
                    kind: Some(Kind::Noop(NoopAction {})),
                    ..Default::default()
                }),
                health_check: checked.then(HealthCheck::default),
                ..Default::default()
            }],
        }],
        ..Default::default()
    };
    let first_phase = PhaseStarted {
        index: 0,
        name: "canary".into(),
        kind: PhaseKind::Canary as i32,
        asset_ids: vec!["a".into()],
    };
    let asset = |task: &str, state: AssetState| AssetStatus {
        asset_id: "a".into(),
        state: state as i32,
        detail: if state == AssetState::Applied {
            format!("{task}:a done")
        } else {
            String::new()
        },
    };
    let started = Body::ExecutionStarted(ExecutionStarted {
        phases: 1,
        steps: 1,
        first_phase: Some(first_phase),
    });

    // Unchecked: nothing between the start and the action, nor between its result, the
    // phase's completion and the end. Five events in two messages.
    nats.bus
        .publish(
            subject::TASK_APPROVED,
            &approved("t-one", TENANT, one_step("t-one", false)),
        )
        .await
        .unwrap();
    let done = final_event(&nats.bus, "t-one").await;
    assert!(
        matches!(done.body, Some(Body::TaskCompleted(_))),
        "{done:?}"
    );
    let messages = task_messages(&nats.bus, "t-one").await;
    let stored: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| (m.subject.as_str(), m.event.event_id.as_str()))
        .collect();
    assert_eq!(
        stored,
        [
            ("baton.execution.started", "t-one.exec.started"),
            (subject::TASK_COMPLETED, "t-one.completed"),
        ]
    );
    assert_eq!(messages[0].event.body, Some(started.clone()));
    let Some(Body::TaskCompleted(end)) = &messages[1].event.body else {
        panic!("{:?}", messages[1].event)
    };
    assert_eq!(
        end.last_phase,
        Some(PhaseCompleted {
            index: 0,
            name: "canary".into(),
            healthy: true,
            assets: vec![asset("t-one", AssetState::Applied)],
        })
    );
    assert_eq!(
        end.execution.as_ref().map(|e| e.status()),
        Some(ExecutionStatus::Succeeded)
    );
    assert_eq!(
        shape(&task_events(&nats.bus, "t-one").await),
        [
            "started",
            "p0.started",
            "p0.applied",
            "p0.completed.true",
            "completed"
        ]
    );
    assert!(watching.seen_at_probe.lock().unwrap().is_empty());

    // Checked: `applied` goes out on its own before the probe; the verdict rides in the
    // completion.
    nats.bus
        .publish(
            subject::TASK_APPROVED,
            &approved("t-checked", TENANT, one_step("t-checked", true)),
        )
        .await
        .unwrap();
    let done = final_event(&nats.bus, "t-checked").await;
    assert!(
        matches!(done.body, Some(Body::TaskCompleted(_))),
        "{done:?}"
    );
    let messages = task_messages(&nats.bus, "t-checked").await;
    let ids: Vec<&str> = messages.iter().map(|m| m.event.event_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "t-checked.exec.started",
            "t-checked.exec.p0.a.applied",
            "t-checked.completed"
        ]
    );
    assert_eq!(messages[0].event.body, Some(started));
    assert_eq!(
        messages[1].event.body,
        Some(Body::AssetUpdated(baton_proto::AssetUpdated {
            phase_index: 0,
            asset: Some(asset("t-checked", AssetState::Applied)),
        }))
    );
    let Some(Body::TaskCompleted(end)) = &messages[2].event.body else {
        panic!("{:?}", messages[2].event)
    };
    assert_eq!(
        end.last_phase,
        Some(PhaseCompleted {
            index: 0,
            name: "canary".into(),
            healthy: true,
            assets: vec![asset("t-checked", AssetState::Healthy)],
        })
    );
    let seen = watching.seen_at_probe.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one probe");
    assert!(
        seen[0].iter().any(|id| id == "t-checked.exec.p0.a.applied"),
        "applied was stored before the probe: {seen:?}"
    );
    assert!(
        !seen[0].iter().any(|id| id == "t-checked.completed"),
        "{seen:?}"
    );

    token.cancel();
    service.await.unwrap().unwrap();
}

/// Runs every action (detail `<key> done`), counting them, and breaks the state store around
/// the action whose key ends in `:last`: its first run makes every state write fail (the
/// execution bucket's max message size 1), so the rollout's end is published but not saved; its
/// second run (the redo after the redelivery) mends the store first.
#[derive(Clone)]
struct BreaksTheEndsSave {
    bus: Bus,
    runs: Arc<Mutex<Vec<String>>>,
}

impl ActionRunner for BreaksTheEndsSave {
    fn run<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<ActionOutcome, ActionError>> {
        Box::pin(async move {
            let key = action.idempotency_key.clone();
            let before = {
                let mut runs = self.runs.lock().unwrap();
                let before = runs.iter().filter(|k| **k == key).count();
                runs.push(key.clone());
                before
            };
            if key.ends_with(":last") {
                set_state_max_msg_size(&self.bus, if before == 0 { 1 } else { -1 }).await;
            }
            Ok(ActionOutcome {
                detail: format!("{key} done"),
            })
        })
    }
    fn probe<'a>(&'a self, _: &'a HealthCheck) -> BoxFuture<'a, ProbeResult> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn a_rollout_whose_end_went_out_but_was_not_saved_resumes_to_the_same_single_end() {
    // The end is published (carrying the last phase's completion) before it is saved. Here the
    // save fails after that publish, so the handler retries: the redelivery resumes from the
    // previous save, redoes the one action whose result was not saved, and publishes the same
    // end again under `<task>.completed`, which the stream drops. The stream then reads the
    // same, event for event, as that of a rollout that was never interrupted.
    let nats = TestNats::start().await;
    let runner = BreaksTheEndsSave {
        bus: nats.bus.clone(),
        runs: Default::default(),
    };
    let ctx = context(nats.bus.clone());
    let executor = Executor::with_runner(ctx.clone(), test_config(), Arc::new(runner.clone()))
        .await
        .unwrap();
    let token = CancellationToken::new();
    let service = tokio::spawn(executor.run(token.clone()));
    // A canary of one checked step, then a wave of two unchecked ones, the second last.
    let plan = |task: &str| {
        let step = |id: &str, key: &str, checked: bool| Step {
            asset: Some(Asset {
                id: id.into(),
                ..Default::default()
            }),
            action: Some(Action {
                idempotency_key: format!("{task}:{key}"),
                kind: Some(Kind::Noop(NoopAction {})),
                ..Default::default()
            }),
            health_check: checked.then(HealthCheck::default),
            ..Default::default()
        };
        Plan {
            phases: vec![
                Phase {
                    name: "canary".into(),
                    kind: PhaseKind::Canary as i32,
                    steps: vec![step("a", "a", true)],
                },
                Phase {
                    name: "wave 1".into(),
                    kind: PhaseKind::Wave as i32,
                    steps: vec![step("b", "b", false), step("c", "c:last", false)],
                },
            ],
            ..Default::default()
        }
    };
    // Uninterrupted (its `c` is not marked last), then broken between its end and the save.
    let mut calm = plan("t-calm");
    calm.phases[1].steps[1]
        .action
        .as_mut()
        .unwrap()
        .idempotency_key = "t-calm:c".into();
    for (task, plan) in [("t-calm", calm), ("t-broken", plan("t-broken"))] {
        nats.bus
            .publish(subject::TASK_APPROVED, &approved(task, TENANT, plan))
            .await
            .unwrap();
        let done = final_event(&nats.bus, task).await;
        assert!(
            matches!(done.body, Some(Body::TaskCompleted(_))),
            "{done:?}"
        );
    }
    // The broken one's end is saved once the redo mended the store.
    let store = nats.bus.key_value("baton_executions", 5).await.unwrap();
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(bytes) = store.get("t-broken").await.unwrap() {
                let exec =
                    <baton_proto::Execution as prost::Message>::decode(bytes.as_ref()).unwrap();
                if exec.status() == ExecutionStatus::Succeeded {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the end is saved after the retry");
    tokio::time::timeout(PATIENCE, async {
        while !ctx
            .metrics
            .render()
            .contains(r#"baton_executions_total{service="execution",outcome="succeeded"} 2"#)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both rollouts end succeeded");
    let m = ctx.metrics.render();
    assert!(
        m.contains(r#"baton_messages_total{service="execution",outcome="retry"} 1"#),
        "the failed save was retried once: {m}"
    );

    // Only the action whose result was not saved ran again.
    let runs = runner.runs.lock().unwrap().clone();
    let broken: Vec<&str> = runs
        .iter()
        .filter_map(|k| k.strip_prefix("t-broken:"))
        .collect();
    assert_eq!(broken, ["a", "b", "c:last", "c:last"]);

    // One end in the stream, and no event id twice.
    assert_no_duplicate_events(&nats.bus).await;
    let messages = task_messages(&nats.bus, "t-broken").await;
    let ends: Vec<&Stored> = messages
        .iter()
        .filter(|m| m.subject == subject::TASK_COMPLETED)
        .collect();
    assert_eq!(ends.len(), 1, "one task_completed");
    let Some(Body::TaskCompleted(end)) = &ends[0].event.body else {
        unreachable!()
    };
    assert_eq!(
        end.last_phase.as_ref().map(|p| (p.index, p.assets.len())),
        Some((1, 1)),
        "the end carries the wave's completion and its last change: {end:?}"
    );

    // Event for event (ids, subjects, kinds and what they say) the same as the calm rollout's.
    let read = |task: &'static str| {
        let bus = nats.bus.clone();
        async move {
            task_events(&bus, task)
                .await
                .into_iter()
                .map(|s| {
                    let body = match s.event.body.clone().unwrap() {
                        Body::AssetUpdated(mut u) => {
                            let a = u.asset.as_mut().unwrap();
                            a.detail = a.detail.replace(task, "<task>").replace(":last", "");
                            Body::AssetUpdated(u)
                        }
                        Body::TaskCompleted(_) => Body::TaskCompleted(Default::default()),
                        other => other,
                    };
                    (s.subject, s.event.event_id.replace(task, "<task>"), body)
                })
                .collect::<Vec<_>>()
        }
    };
    let (calm, broken) = (read("t-calm").await, read("t-broken").await);
    assert_eq!(broken, calm);
    let ids: Vec<&str> = calm.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "<task>.exec.started",
            "<task>.exec.p0.started",
            "<task>.exec.p0.a.applied",
            "<task>.exec.p0.a.healthy",
            "<task>.exec.p0.completed",
            "<task>.exec.p1.started",
            "<task>.exec.p1.b.applied",
            "<task>.exec.p1.c.applied",
            "<task>.exec.p1.completed",
            "<task>.completed",
        ]
    );

    token.cancel();
    service.await.unwrap().unwrap();
}
