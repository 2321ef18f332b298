//! The `sandbox` action kind end to end: the execution service, started the way `baton up`
//! starts it, with the sandbox runner registered as a plug-in only, runs approved plans whose
//! steps are `SandboxAction`s over a real nats-server and the real Docker engine (`deploy/test.sh`
//! starts both; the images come from `bash deploy/sandbox-images.sh`).

use std::sync::Arc;
use std::time::Duration;

use baton_bus::Bus;
use baton_bus::testing::TestNats;
use baton_execution::{Config, Executor, SERVICE};
use baton_proto::event::Body;
use baton_proto::{
    Action, Approval, Asset, Event, NoopAction, Phase, PhaseKind, Plan, SandboxAction, Step, Task,
    TaskApproved, TaskFailed, action, subject,
};
use baton_runtime::Context;
use baton_runtime::auth::{AuthConfig, Authenticator};
use baton_runtime::metrics::Metrics;
use baton_runtime::plugins::Plugins;
use baton_runtime::service::Service;
use baton_runtime::signing::{SigningKey, sign_approved};
use baton_sandbox::Sandbox;

const TENANT: &str = "acme";
/// Bounds every wait so a broken service fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(90);

fn validation_key() -> SigningKey {
    SigningKey::from_seed([7; 32])
}

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

/// `plan` approved as validation publishes it, signed with [`validation_key`].
fn approved(task_id: &str, plan: Plan) -> Event {
    let mut approved = TaskApproved {
        task: Some(Task {
            task_id: task_id.into(),
            tenant: TENANT.into(),
            ..Default::default()
        }),
        plan: Some(plan),
        approval: Some(Approval {
            task_id: task_id.into(),
            approver: "policy".into(),
            approved: true,
            ..Default::default()
        }),
        spec: Some(Default::default()),
        validation: Some(Default::default()),
        ..Default::default()
    };
    sign_approved(&validation_key(), &mut approved).expect("signable");
    Event::first(
        task_id,
        TENANT,
        "approved",
        "validation",
        Body::TaskApproved(approved),
    )
}

/// The task's events from the execution service, in stream order.
async fn task_events(bus: &Bus, task_id: &str) -> Vec<Event> {
    let mut stream = bus.jetstream().get_stream("BATON").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let event = baton_bus::decode_event(&m.payload).unwrap();
        if event.task_id == task_id && event.producer == SERVICE {
            out.push(event);
        }
    }
    out
}

/// Waits for the task's `task_completed` or `task_failed`.
async fn final_event(bus: &Bus, task_id: &str) -> Event {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let found = task_events(bus, task_id).await.into_iter().find(|e| {
                matches!(
                    e.body,
                    Some(Body::TaskCompleted(_)) | Some(Body::TaskFailed(_))
                )
            });
            if let Some(e) = found {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the rollout ends")
}

/// The detail of every asset_updated event for `asset`, in order.
fn details(events: &[Event], asset: &str) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e.body.as_ref()? {
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
        .publish(subject::TASK_APPROVED, &approved("t-sbx", ok))
        .await
        .unwrap();
    let done = final_event(&nats.bus, "t-sbx").await;
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
        .publish(subject::TASK_APPROVED, &approved("t-sbx-bad", bad))
        .await
        .unwrap();
    let f = failed(&final_event(&nats.bus, "t-sbx-bad").await).clone();
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
