//! A new action kind and a new health-check kind added from outside the service: a runner
//! plug-in registered through `Context::with_plugins`, run end to end by the execution service
//! over a real nats-server — with no change to any service crate. Also the built-in TCP probe
//! against real loopback listeners, and the answer for a kind nobody registered.

use baton_bus::ConsumerSpec;
use baton_bus::testing::TestNats;
use baton_execution::testing::{approved, final_event, task_events, trusting};
use baton_execution::{
    ActionError, ActionOutcome, ActionRunner, Config, Executor, ProbeError, ProbeResult,
    RunnerFactory, SERVICE,
};
use baton_proto::event::Body;
use baton_proto::{
    Action, Asset, AssetState, Event, HealthCheck, Phase, PhaseKind, Plan, PluginAction,
    PluginProbe, Step, TaskFailed, TcpProbe, action, health_check, subject,
};
use baton_runtime::Context;
use baton_runtime::auth::{AuthConfig, Authenticator};
use baton_runtime::metrics::Metrics;
use baton_runtime::plugins::Plugins;
use baton_runtime::service::Service;
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TENANT: &str = "acme";
/// Bounds every wait so a broken service fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(60);

/// The plug-in: `counter` actions add to a named counter, `counter` probes are healthy when a
/// counter has reached a value. Its specs are JSON, as a plug-in's are.
#[derive(Clone, Default)]
struct Counters {
    values: Arc<Mutex<BTreeMap<String, i64>>>,
    /// Idempotency keys of the actions run, in order.
    runs: Arc<Mutex<Vec<String>>>,
}

#[derive(serde::Deserialize)]
struct AddSpec {
    counter: String,
    add: i64,
}

#[derive(serde::Deserialize)]
struct AtLeastSpec {
    counter: String,
    at_least: i64,
}

impl Counters {
    fn value(&self, counter: &str) -> i64 {
        self.values
            .lock()
            .unwrap()
            .get(counter)
            .copied()
            .unwrap_or(0)
    }
}

impl ActionRunner for Counters {
    fn run<'a>(&'a self, a: &'a Action) -> BoxFuture<'a, Result<ActionOutcome, ActionError>> {
        Box::pin(async move {
            let Some(action::Kind::Plugin(p)) = &a.kind else {
                return Err(ActionError::Unsupported(
                    "counters run plug-in actions".into(),
                ));
            };
            let spec: AddSpec = serde_json::from_str(&p.spec_json)
                .map_err(|e| ActionError::Invalid(format!("bad counter spec: {e}")))?;
            self.runs.lock().unwrap().push(a.idempotency_key.clone());
            let mut values = self.values.lock().unwrap();
            let v = values.entry(spec.counter.clone()).or_default();
            *v += spec.add;
            Ok(ActionOutcome {
                detail: format!("{} = {v}", spec.counter),
            })
        })
    }

    fn probe<'a>(&'a self, check: &'a HealthCheck) -> BoxFuture<'a, ProbeResult> {
        Box::pin(async move {
            let Some(health_check::Kind::Plugin(p)) = &check.kind else {
                return Err(ProbeError::Unsupported(
                    "counters probe plug-in checks".into(),
                ));
            };
            let spec: AtLeastSpec = serde_json::from_str(&p.spec_json)
                .map_err(|e| ProbeError::Unhealthy(format!("bad counter check: {e}")))?;
            let v = self.value(&spec.counter);
            if v >= spec.at_least {
                Ok(())
            } else {
                Err(ProbeError::Unhealthy(format!(
                    "{} is {v}, expected at least {}",
                    spec.counter, spec.at_least
                )))
            }
        })
    }
}

fn plugin_action(kind: &str, key: String, spec: serde_json::Value) -> Action {
    Action {
        idempotency_key: key,
        description: format!("{kind} {spec}"),
        kind: Some(action::Kind::Plugin(PluginAction {
            kind: kind.into(),
            spec_json: spec.to_string(),
        })),
    }
}

/// A step adding 1 to counter `id` (rollback: subtracting it), checked by `check`.
fn counter_step(task: &str, id: &str, check: Option<health_check::Kind>) -> Step {
    Step {
        asset: Some(Asset {
            id: id.into(),
            ..Default::default()
        }),
        action: Some(plugin_action(
            "counter",
            format!("{task}:{id}:apply"),
            serde_json::json!({"counter": id, "add": 1}),
        )),
        rollback: Some(plugin_action(
            "counter",
            format!("{task}:{id}:rollback"),
            serde_json::json!({"counter": id, "add": -1}),
        )),
        health_check: check.map(|kind| HealthCheck {
            attempts: 2,
            interval_ms: 20,
            kind: Some(kind),
        }),
        reason: String::new(),
    }
}

fn counter_check(id: &str, at_least: i64) -> Option<health_check::Kind> {
    Some(health_check::Kind::Plugin(PluginProbe {
        kind: "counter".into(),
        spec_json: serde_json::json!({"counter": id, "at_least": at_least}).to_string(),
    }))
}

fn tcp_check(address: &str) -> Option<health_check::Kind> {
    Some(health_check::Kind::Tcp(TcpProbe {
        address: address.into(),
    }))
}

fn plan(task: &str, canary: Vec<Step>, wave: Vec<Step>) -> Plan {
    Plan {
        task_id: task.into(),
        phases: vec![
            Phase {
                name: "canary".into(),
                kind: PhaseKind::Canary as i32,
                steps: canary,
            },
            Phase {
                name: "wave 1".into(),
                kind: PhaseKind::Wave as i32,
                steps: wave,
            },
        ],
        ..Default::default()
    }
}

/// `asset:state` of every asset_updated event, in order (those merged into another event
/// included: `Body::unmerged`).
fn asset_updates(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .flat_map(|e| e.body.as_ref().map(Body::unmerged).unwrap_or_default())
        .filter_map(|body| match body {
            Body::AssetUpdated(u) => {
                let a = u.asset.as_ref()?;
                let state = AssetState::try_from(a.state).ok()?;
                Some(format!(
                    "{}:{}",
                    a.asset_id,
                    state
                        .as_str_name()
                        .trim_start_matches("ASSET_STATE_")
                        .to_lowercase()
                ))
            }
            _ => None,
        })
        .collect()
}

fn failed(event: &Event) -> &TaskFailed {
    match &event.body {
        Some(Body::TaskFailed(f)) => f,
        other => panic!("expected task_failed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_plugin_action_kind_and_probe_kind_run_end_to_end_through_the_plugin_registry() {
    let nats = TestNats::start().await;
    let counters = Counters::default();
    // The only registration: the plug-in's runner and the kinds it serves. No service code
    // knows the `counter` kind.
    let plugins = Plugins::new().with(
        RunnerFactory::of(counters.clone())
            .actions(["counter"])
            .probes(["counter"]),
    );
    let auth = Authenticator::new(&AuthConfig {
        hs256_secret: "x".repeat(32),
        ..Default::default()
    })
    .unwrap();
    let ctx = Context::new(nats.bus.clone(), auth, Arc::new(Metrics::default()))
        .with_plugins(plugins.shared());
    let config = Config {
        health_check_interval: Duration::from_millis(20),
        ..trusting()
    };
    // Started the way `baton up` starts it (Service::start), not with a test-only runner.
    let executor = <Executor as Service>::start(ctx, config).await.unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let service = tokio::spawn(executor.serve(token.clone()));

    // A real listener for the built-in tcp probe, and a port that refuses connections.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap().to_string();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };

    // 1. Every step a counter action; checks by the plug-in's probe and by tcp: succeeds.
    let ok = plan(
        "t-plug",
        vec![counter_step("t-plug", "c-1", counter_check("c-1", 1))],
        vec![
            counter_step("t-plug", "c-2", counter_check("c-2", 1)),
            counter_step("t-plug", "c-3", tcp_check(&open)),
        ],
    );
    nats.bus
        .publish(subject::TASK_APPROVED, &approved("t-plug", TENANT, ok))
        .await
        .unwrap();
    let done = final_event(&nats.bus, "t-plug", PATIENCE).await;
    assert!(
        matches!(done.body, Some(Body::TaskCompleted(_))),
        "{done:?}"
    );
    for c in ["c-1", "c-2", "c-3"] {
        assert_eq!(counters.value(c), 1, "{c} applied once");
    }
    let events = task_events(&nats.bus, "t-plug").await;
    let updates = asset_updates(&events);
    assert_eq!(updates[..2], ["c-1:applied", "c-1:healthy"], "{updates:?}");
    // Wave 1's two steps run concurrently: both applied, then both checked.
    let (applied, checked) = updates[2..].split_at(2);
    let sorted = |s: &[String]| {
        let mut v = s.to_vec();
        v.sort();
        v
    };
    assert_eq!(
        sorted(applied),
        ["c-2:applied", "c-3:applied"],
        "{updates:?}"
    );
    assert_eq!(
        sorted(checked),
        ["c-2:healthy", "c-3:healthy"],
        "{updates:?}"
    );

    // 2. The plug-in's probe says unhealthy in the wave: every counter change is undone by
    // the plug-in's own rollback action, newest first.
    let sick = plan(
        "t-plug-sick",
        vec![counter_step("t-plug-sick", "s-1", counter_check("s-1", 1))],
        vec![counter_step("t-plug-sick", "s-2", counter_check("s-2", 5))],
    );
    nats.bus
        .publish(
            subject::TASK_APPROVED,
            &approved("t-plug-sick", TENANT, sick),
        )
        .await
        .unwrap();
    let done = final_event(&nats.bus, "t-plug-sick", PATIENCE).await;
    let f = failed(&done);
    assert_eq!(f.code, "rolled_back");
    assert_eq!(
        f.reason,
        "health check failed on s-2 in wave 1: s-2 is 1, expected at least 5; rolled back 2 assets"
    );
    assert_eq!((counters.value("s-1"), counters.value("s-2")), (0, 0));
    let runs: Vec<String> = counters
        .runs
        .lock()
        .unwrap()
        .iter()
        .filter(|k| k.starts_with("t-plug-sick:"))
        .cloned()
        .collect();
    assert_eq!(
        runs,
        [
            "t-plug-sick:s-1:apply",
            "t-plug-sick:s-2:apply",
            "t-plug-sick:s-2:rollback",
            "t-plug-sick:s-1:rollback"
        ]
    );

    // 3. The built-in tcp probe on a port nobody listens on: unhealthy, rolled back.
    let refused = plan(
        "t-tcp",
        vec![counter_step("t-tcp", "r-1", tcp_check(&closed))],
        vec![],
    );
    nats.bus
        .publish(subject::TASK_APPROVED, &approved("t-tcp", TENANT, refused))
        .await
        .unwrap();
    let f = failed(&final_event(&nats.bus, "t-tcp", PATIENCE).await).clone();
    assert_eq!(f.code, "rolled_back");
    assert!(
        f.reason.starts_with(&format!(
            "health check failed on r-1 in canary: connect {closed}: "
        )),
        "{}",
        f.reason
    );
    assert!(f.reason.contains("refused"), "{}", f.reason);
    assert_eq!(counters.value("r-1"), 0);

    // 4. A kind nobody registered: the action fails naming the kind and the kinds there are,
    // and the canary's change is rolled back.
    let mut unknown = plan(
        "t-docker",
        vec![counter_step("t-docker", "d-1", None)],
        vec![counter_step("t-docker", "d-2", None)],
    );
    unknown.phases[1].steps[0].action = Some(plugin_action(
        "docker",
        "t-docker:d-2:apply".into(),
        serde_json::json!({"image": "nginx:1.27"}),
    ));
    nats.bus
        .publish(
            subject::TASK_APPROVED,
            &approved("t-docker", TENANT, unknown),
        )
        .await
        .unwrap();
    let f = failed(&final_event(&nats.bus, "t-docker", PATIENCE).await).clone();
    assert_eq!(
        f.reason,
        "action failed on d-2 in wave 1: unsupported action: no runner for action kind \
         \"docker\"; this service runs counter, http, noop (register a RunnerFactory for \
         \"docker\" to add it); rolled back 1 asset"
    );
    assert_eq!(counters.value("d-1"), 0);

    drop(listener);
    token.cancel();
    service.await.unwrap().unwrap();
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
    assert_eq!(info.num_ack_pending, 0, "every approval settled");
}

#[tokio::test]
async fn a_plugin_replaces_a_builtin_kind_and_a_runner_that_cannot_build_stops_the_start() {
    let nats = TestNats::start().await;
    let auth = || {
        Authenticator::new(&AuthConfig {
            hs256_secret: "x".repeat(32),
            ..Default::default()
        })
        .unwrap()
    };

    // A factory that reads the service's settings and refuses them.
    let picky = Plugins::new().with(
        RunnerFactory::new(|c: &Config| -> Result<Counters, String> {
            Err(format!(
                "needs an action_timeout of at least 1m, not {:?}",
                c.action_timeout
            ))
        })
        .actions(["counter"]),
    );
    let ctx = Context::new(nats.bus.clone(), auth(), Arc::new(Metrics::default()))
        .with_plugins(picky.shared());
    let err = match <Executor as Service>::start(ctx, trusting()).await {
        Ok(_) => panic!("started with a runner that cannot be built"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        err,
        "cannot build the runner for kinds counter: needs an action_timeout of at least 1m, \
         not 10s"
    );

    // `noop` served by the plug-in instead of the built-in: its runs are the plug-in's.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);
    impl ActionRunner for Recorder {
        fn run<'a>(&'a self, a: &'a Action) -> BoxFuture<'a, Result<ActionOutcome, ActionError>> {
            self.0.lock().unwrap().push(a.idempotency_key.clone());
            Box::pin(async {
                Ok(ActionOutcome {
                    detail: "recorded".into(),
                })
            })
        }
    }
    let recorder = Recorder::default();
    let plugins = Plugins::new().with(RunnerFactory::of(recorder.clone()).actions(["noop"]));
    let ctx = Context::new(nats.bus.clone(), auth(), Arc::new(Metrics::default()))
        .with_plugins(plugins.shared());
    let executor = <Executor as Service>::start(ctx, trusting()).await.unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let service = tokio::spawn(executor.serve(token.clone()));
    let noop = Step {
        asset: Some(Asset {
            id: "n-1".into(),
            ..Default::default()
        }),
        action: Some(Action {
            idempotency_key: "t-noop:n-1:apply".into(),
            kind: Some(action::Kind::Noop(Default::default())),
            ..Default::default()
        }),
        ..Default::default()
    };
    nats.bus
        .publish(
            subject::TASK_APPROVED,
            &approved("t-noop", TENANT, plan("t-noop", vec![noop], vec![])),
        )
        .await
        .unwrap();
    let done = final_event(&nats.bus, "t-noop", PATIENCE).await;
    let Some(Body::TaskCompleted(c)) = &done.body else {
        panic!("{done:?}")
    };
    let detail = &c.execution.as_ref().unwrap().phases[0].assets[0].detail;
    assert_eq!(detail, "recorded");
    assert_eq!(*recorder.0.lock().unwrap(), ["t-noop:n-1:apply"]);

    token.cancel();
    service.await.unwrap().unwrap();
}
