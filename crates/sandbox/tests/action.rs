//! The `sandbox` action kind end to end: the execution service, started the way `baton up`
//! starts it, with the sandbox runner registered as a plug-in only, runs approved plans whose
//! steps are `SandboxAction`s over a real nats-server and the real Docker engine (`deploy/test.sh`
//! starts both; the images come from `bash deploy/sandbox-images.sh`).

use std::sync::Arc;
use std::time::Duration;

use baton_bus::testing::TestNats;
use baton_execution::testing::{approved, final_event, task_events, validation_key};
use baton_execution::{Config, Executor};
use baton_proto::event::Body;
use baton_proto::{
    Action, Asset, Event, NoopAction, Phase, PhaseKind, Plan, SandboxAction, Step, TaskFailed,
    action, subject,
};
use baton_runtime::Context;
use baton_runtime::auth::{AuthConfig, Authenticator};
use baton_runtime::metrics::Metrics;
use baton_runtime::plugins::Plugins;
use baton_runtime::service::Service;
use baton_sandbox::Sandbox;

const TENANT: &str = "acme";
/// Bounds every wait so a broken service fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(90);

/// A step whose action runs `script` with python in the sandbox; its rollback does nothing.
fn python_step(task: &str, id: &str, script: &str) -> Step {
    Step {
        asset: Some(Asset {
            id: id.into(),
            ..Default::default()
        }),
        action: Some(Action {
            idempotency_key: format!("{task}:{id}:apply"),
            description: format!("run {id} in the sandbox"),
            kind: Some(action::Kind::Sandbox(SandboxAction {
                language: "python".into(),
                command: vec!["python3".into(), "main.py".into()],
                files: [("main.py".to_string(), script.to_string())].into(),
                timeout_ms: 0,
            })),
        }),
        rollback: Some(Action {
            idempotency_key: format!("{task}:{id}:rollback"),
            description: "nothing to undo".into(),
            kind: Some(action::Kind::Noop(NoopAction {})),
        }),
        health_check: None,
        reason: String::new(),
    }
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

/// The detail of every asset_updated event for `asset`, in order (those merged into another
/// event included: `Body::unmerged`).
fn details(events: &[Event], asset: &str) -> Vec<String> {
    events
        .iter()
        .flat_map(|e| e.body.as_ref().map(Body::unmerged).unwrap_or_default())
        .filter_map(|body| match body {
            Body::AssetUpdated(u) => u
                .asset
                .as_ref()
                .filter(|a| a.asset_id == asset)
                .map(|a| a.detail.clone()),
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
async fn sandbox_actions_run_in_docker_and_a_failing_script_rolls_back_with_its_exit_code() {
    let nats = TestNats::start().await;
    let sandbox = match Sandbox::connect(baton_sandbox::Config {
        warm_pool: 1,
        ..Default::default()
    })
    .await
    {
        Ok(s) => Arc::new(s),
        Err(e) => panic!("this test needs docker and the sandbox images: {e}"),
    };
    // The only registration: the sandbox runner for the `sandbox` kind.
    let plugins = Plugins::new().with(baton_sandbox::action::factory(sandbox.clone()));
    let auth = Authenticator::new(&AuthConfig {
        hs256_secret: "x".repeat(32),
        ..Default::default()
    })
    .unwrap();
    let ctx = Context::new(nats.bus.clone(), auth, Arc::new(Metrics::default()))
        .with_plugins(plugins.shared());
    let config = Config {
        trusted_keys: vec![validation_key().public_key().to_string()],
        action_timeout: Duration::from_secs(30),
        ..Config::default()
    };
    let executor = <Executor as Service>::start(ctx, config).await.unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let service = tokio::spawn(executor.serve(token.clone()));

    // 1. One step printing with python: the task completes, the detail gives exit code and time.
    let ok = plan(
        "t-sbx",
        vec![python_step(
            "t-sbx",
            "py-1",
            "print('hello from the sandbox')\n",
        )],
        vec![],
    );
    nats.bus
        .publish(subject::TASK_APPROVED, &approved("t-sbx", TENANT, ok))
        .await
        .unwrap();
    let done = final_event(&nats.bus, "t-sbx", PATIENCE).await;
    assert!(
        matches!(done.body, Some(Body::TaskCompleted(_))),
        "{done:?}"
    );
    let events = task_events(&nats.bus, "t-sbx").await;
    let applied = details(&events, "py-1");
    assert!(
        applied.iter().any(
            |d| d.starts_with("sandbox baton-sandbox-python:1: exit code 0 in ")
                && d.ends_with("ms")
        ),
        "{applied:?}"
    );

    // 2. The canary passes, the wave's script exits 1: the task fails naming the exit code and
    // stderr, and the canary's step is rolled back.
    let bad = plan(
        "t-sbx-bad",
        vec![python_step("t-sbx-bad", "py-ok", "print('fine')\n")],
        vec![python_step(
            "t-sbx-bad",
            "py-bad",
            "import sys\nprint('tests failed', file=sys.stderr)\nsys.exit(1)\n",
        )],
    );
    nats.bus
        .publish(subject::TASK_APPROVED, &approved("t-sbx-bad", TENANT, bad))
        .await
        .unwrap();
    let f = failed(&final_event(&nats.bus, "t-sbx-bad", PATIENCE).await).clone();
    assert_eq!(f.code, "rolled_back", "{f:?}");
    assert!(
        f.reason.starts_with(
            "action failed on py-bad in wave 1: sandbox baton-sandbox-python:1: the program \
             exited with code 1 after "
        ),
        "{}",
        f.reason
    );
    assert!(
        f.reason
            .ends_with("ms; stderr: tests failed; rolled back 1 asset"),
        "{}",
        f.reason
    );

    token.cancel();
    service.await.unwrap().unwrap();
    sandbox.shutdown().await;
}
