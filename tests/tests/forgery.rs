//! The forgery of issue 6, as an attacker on the same machine would try it: one protobuf
//! `Event{TaskApproved}` published on `baton.task.approved` with a plain NATS client — a made-up
//! task, a plan with one HTTP PUT to a loopback server of the test, an "approval" by nobody.
//! Against `baton up` (the harness) and against separately started services: the PUT never
//! arrives, and the attempt is in the audit log with the reason.
//!
//! NATS itself refuses that publish from every identity but validation's
//! (`tests/nats_auth.rs`), so the attacker here holds the one credential NATS lets through —
//! validation's NATS seed, stolen — but not validation's signing key: what stops it is
//! execution's signature check.

use baton::client::Clients;
use baton::config::BatonConfig;
use baton::up::{Baton, ServiceName};
use baton_proto::{
    Action, Approval, Event, GetTaskRequest, HttpAction, Phase, PhaseKind, Plan, Step, Task,
    TaskApproved, TaskStatus, Trigger, action, event::Body, subject,
};
use baton_runtime::auth::Role;
use baton_runtime::signing::{SigningKey, sign_approved};
use baton_tests::{Db, Harness, counting_server};
use prost::Message as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// The forged event: a made-up task of tenant `default`, one HTTP PUT to `url`, approved by
/// nobody, claiming to come from validation.
fn forged(task_id: &str, url: &str) -> (Event, TaskApproved) {
    let plan = Plan {
        task_id: task_id.into(),
        summary: "one put".into(),
        phases: vec![Phase {
            name: "canary".into(),
            kind: PhaseKind::Canary as i32,
            steps: vec![Step {
                action: Some(Action {
                    idempotency_key: format!("{task_id}:0:x:apply"),
                    kind: Some(action::Kind::Http(HttpAction {
                        method: "PUT".into(),
                        url: url.into(),
                        body: b"owned=true".to_vec(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        }],
        ..Default::default()
    };
    let approved = TaskApproved {
        task: Some(Task {
            task_id: task_id.into(),
            tenant: "default".into(),
            submitted_by: "nobody".into(),
            trigger: Some(Trigger {
                text: "nothing to see".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        spec: Some(Default::default()),
        plan: Some(plan),
        validation: Some(Default::default()),
        approval: Some(Approval {
            task_id: task_id.into(),
            approver: "nobody".into(),
            approved: true,
            ..Default::default()
        }),
        signature: None,
    };
    let event = Event::first(
        task_id,
        "default",
        "approved",
        "validation",
        Body::TaskApproved(approved.clone()),
    );
    (event, approved)
}

/// Publishes `event` as an attacker would: a plain NATS client (`nats`, connected with a
/// stolen credential), core publish, no Baton code.
async fn publish_raw(nats: &async_nats::Client, event: &Event) {
    nats.publish(subject::TASK_APPROVED, event.encode_to_vec().into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
}

/// Waits until the audit log shows `task_id` failed, and returns its reason and event kinds.
async fn audited_failure(clients: &mut Clients, task_id: &str) -> (String, Vec<String>) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let got = clients
            .tasks
            .get_task(GetTaskRequest {
                task_id: task_id.into(),
            })
            .await;
        if let Ok(r) = &got {
            let r = r.get_ref();
            let view = r.task.clone().unwrap_or_default();
            if view.status() == TaskStatus::Failed {
                let kinds = r
                    .events
                    .iter()
                    .filter_map(|rec| rec.event.as_ref())
                    .map(|e| baton_proto::event_kind(e).to_string())
                    .collect();
                return (view.reason, kinds);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the forged approval of {task_id} never reached the audit log as a failure: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes the forgery (unsigned) and a signed variant by a key nobody trusts; asserts that
/// no request reached the server and that both attempts are audited with their reason.
async fn probe(nats: &async_nats::Client, clients: &mut Clients) {
    let (url, hits) = counting_server().await;

    let (unsigned, _) = forged("forged-1", &url);
    publish_raw(nats, &unsigned).await;

    let stranger = SigningKey::generate().unwrap();
    let (mut signed, mut body) = forged("forged-2", &url);
    sign_approved(&stranger, &mut body).unwrap();
    signed.body = Some(Body::TaskApproved(body));
    publish_raw(nats, &signed).await;

    let (reason, kinds) = audited_failure(clients, "forged-1").await;
    assert_eq!(
        reason,
        "dead-lettered by execution: unverified approval: no signature; nothing was run"
    );
    assert_eq!(kinds, ["task_approved", "dead_letter"], "{reason}");
    let (reason, _) = audited_failure(clients, "forged-2").await;
    assert!(
        reason.contains(&format!(
            "unverified approval: key \"{}\" is not trusted",
            stranger.key_id()
        )),
        "{reason}"
    );
    // Past the audit records, and a moment more: nothing was ever sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the forged PUT arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_approval_runs_nothing_under_baton_up_and_is_audited() {
    let h = Harness::start(Db::Sqlite).await;
    let mut admin = h.clients("test-admin", &[Role::Admin]).await;
    probe(&h.nats_as("validation").await, &mut admin).await;
}

/// The services as separate processes would run them (`baton serve <service>`): each its own
/// `Baton` with its own NATS connection, ports and data directory, configured as production
/// would be — validation's key a file of its own, execution trusting its public key only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_approval_runs_nothing_with_separately_started_services() {
    let dirs: Vec<tempfile::TempDir> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let secrets = tempfile::tempdir().unwrap();
    let key_path = secrets.path().join("validation.key");
    let (key, _) = SigningKey::load_or_create(&key_path).unwrap();
    let fleet = baton_fleet::Fleet::start(baton_fleet::FleetSpec::demo_web())
        .await
        .unwrap();

    let config_for = |i: usize, nats: &baton_bus::BusConfig| -> BatonConfig {
        let mut c = baton_tests::test_config(dirs[i].path());
        c.common.nats = nats.clone();
        c.common.auth.hs256_secret = "s".repeat(32);
        c.validation.signing_key = key_path.clone();
        c.execution.trusted_keys = vec![key.public_key().to_string()];
        c.agents.inventory_path = dirs[i].path().join("inventory.toml");
        std::fs::write(&c.agents.inventory_path, fleet.inventory_toml()).unwrap();
        c
    };
    // Audit first, with the nats-server child; the others connect to it.
    let audit = Baton::start(
        config_for(0, &baton_bus::BusConfig::default()),
        &[ServiceName::Audit],
    )
    .await
    .unwrap();
    let nats_url = audit.config.common.nats.url.clone();
    // Each service connects with its own NATS identity, as `baton nats-config` prints them.
    let ids = audit
        .identities
        .as_ref()
        .expect("audit's baton started the nats-server, with identities");
    let base = baton_bus::BusConfig {
        url: nats_url.clone(),
        ..baton_bus::BusConfig::default()
    };
    let mut others = Vec::new();
    for (i, name) in [
        ServiceName::Ingestion,
        ServiceName::Decision,
        ServiceName::AgentRunner,
        ServiceName::Validation,
        ServiceName::Execution,
    ]
    .into_iter()
    .enumerate()
    {
        others.push(
            Baton::start(
                config_for(i + 1, &ids.bus_config(&base, &name.to_string())),
                &[name],
            )
            .await
            .unwrap_or_else(|e| panic!("{name:?} did not start: {e}")),
        );
    }
    // No development key was made anywhere: execution trusts only the configured key.
    for d in &dirs {
        assert!(!d.path().join("validation.key").exists());
    }

    let token = audit.token("test-admin", "default", &[Role::Admin]);
    let mut admin = Clients::connect(&audit.grpc_url(), &token).await.unwrap();
    let stolen = baton_bus::identity::client_as(
        &nats_url,
        "validation",
        ids.seed_file("validation").unwrap(),
    )
    .await
    .unwrap();
    probe(&stolen, &mut admin).await;

    // A genuine task still runs end to end, its approval signed by the configured key.
    let nats = baton_bus::identity::client_as(
        &nats_url,
        "trigger-default",
        ids.seed_file("trigger-default").unwrap(),
    )
    .await
    .unwrap();
    nats.publish(
        subject::trigger("default", "cli"),
        r#"{"text":"Fix drift on production web servers","environment":"production"}"#.into(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
    // Production drift waits for a human: alice approves the plan hash she was shown.
    let validation = &others[3];
    let mut alice = Clients::connect(
        &validation.grpc_url(),
        &validation.token("alice", "default", &[Role::Approver]),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + T;
    let pending = loop {
        let pending = alice
            .approvals
            .list_pending(baton_proto::ListPendingRequest {})
            .await
            .unwrap()
            .into_inner()
            .pending;
        if let Some(p) = pending.into_iter().next() {
            break p;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing pending");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    alice
        .approvals
        .approve(baton_proto::ApproveRequest {
            task_id: pending.task_id.clone(),
            reason: "seen".into(),
            plan_hash: pending.plan_hash.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + T;
    let completed = loop {
        let tasks = admin
            .tasks
            .list_tasks(baton_proto::ListTasksRequest {
                page_size: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tasks;
        if let Some(t) = tasks
            .iter()
            .find(|t| !t.task_id.starts_with("forged") && t.status() == TaskStatus::Completed)
        {
            break t.task_id.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the genuine task did not complete: {tasks:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let r = admin
        .tasks
        .get_task(GetTaskRequest {
            task_id: completed.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let approved = r
        .events
        .iter()
        .filter_map(|rec| rec.event.as_ref())
        .find_map(|e| match &e.body {
            Some(Body::TaskApproved(a)) => Some(a.clone()),
            _ => None,
        })
        .expect("an approved event");
    // The audit chain records the key that signed, and the plan alice saw.
    let signature = approved.signature.unwrap();
    assert_eq!(signature.key_id, key.key_id());
    assert_eq!(signature.plan_hash, pending.plan_hash);
    assert_eq!(approved.approval.unwrap().approver, "alice");
    let line = r
        .events
        .iter()
        .map(baton::client::describe)
        .find(|l| l.contains("approved by alice"))
        .unwrap();
    assert!(
        line.contains(&format!("signed by key {}", key.key_id())),
        "{line}"
    );

    for b in others {
        b.stop().await;
    }
    audit.stop().await;
}
