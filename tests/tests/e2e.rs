//! End to end: all six services in one process over a real nats-server, the audit log on
//! SQLite or PostgreSQL, and real web servers on loopback. Each test starts its own everything.

use baton_proto::event::Body;
use baton_proto::{
    ApproveRequest, AuditRecord, Event, GetTaskRequest, ListTasksRequest, Phase, PhaseKind, Plan,
    PlanProposed, Step, SubmitTaskRequest, Task, TaskSpec, TaskStatus, Trigger, VerifyAuditRequest,
    subject,
};
use baton_runtime::auth::Role;
use baton_tests::{Db, Harness};
use std::collections::HashMap;
use std::time::Duration;

const SCENARIO: &str = "Fix drift on production web servers";
const T: Duration = Duration::from_secs(30);

fn kinds(records: &[AuditRecord]) -> Vec<&'static str> {
    records
        .iter()
        .map(|r| baton_proto::event_kind(r.event.as_ref().unwrap()))
        .collect()
}

/// The bodies of every event the records stand for, in order: a record execution merged from
/// several events (`Body::unmerged`) gives each of them.
fn unmerged(records: &[AuditRecord]) -> Vec<Body> {
    records
        .iter()
        .filter_map(|r| r.event.as_ref()?.body.as_ref())
        .flat_map(Body::unmerged)
        .collect()
}

/// Approves `task_id` as alice once it waits for approval.
async fn approve(h: &Harness, task_id: &str) {
    h.wait_for(task_id, TaskStatus::AwaitingApproval, T).await;
    let mut alice = h.clients("alice", &[Role::Approver]).await;
    let r = alice
        .approvals
        .approve(ApproveRequest {
            task_id: task_id.into(),
            reason: "looks right".into(),
            plan_hash: String::new(),
            ..Default::default()
        })
        .await
        .expect("an approver may approve")
        .into_inner();
    assert_eq!(r.approval.unwrap().approver, "alice");
}

/// Submits the scenario in production over gRPC as `c`; returns the task id.
async fn submit_scenario(c: &mut baton::client::Clients) -> String {
    let trigger = Trigger {
        text: SCENARIO.into(),
        environment: "production".into(),
        ..Default::default()
    };
    c.triggers
        .submit_task(SubmitTaskRequest {
            trigger: Some(trigger),
        })
        .await
        .unwrap()
        .into_inner()
        .task_id
}

async fn verify(h: &Harness) -> baton_proto::VerifyAuditResponse {
    let mut ops = h.clients("ops", &[Role::Operator]).await;
    ops.tasks
        .verify_audit(VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Submits the scenario as a JSON trigger published on NATS, as `nats pub` would.
async fn publish_json_trigger(h: &Harness, json: &str) -> String {
    let nats = h.nats().await;
    let before = list_ids(h).await;
    nats.publish(subject::trigger("default", "cli"), json.to_string().into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    // The task id is assigned by ingestion; find the new task in the audit log.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let now = list_ids(h).await;
        if let Some(id) = now.into_iter().find(|id| !before.contains(id)) {
            return id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the trigger never became a task"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn list_ids(h: &Harness) -> Vec<String> {
    let mut c = h.clients("test-admin", &[Role::Admin]).await;
    let r = c
        .tasks
        .list_tasks(ListTasksRequest {
            page_size: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.tasks.into_iter().map(|t| t.task_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_trigger_on_nats_runs_to_completed_with_a_verified_audit_chain() {
    let h = Harness::start(Db::Sqlite).await;
    let id = publish_json_trigger(
        &h,
        r#"{"text":"Fix drift on production web servers","environment":"production"}"#,
    )
    .await;

    approve(&h, &id).await;
    let done = h.wait_for(&id, TaskStatus::Completed, T).await;

    let task = done.task.unwrap();
    assert_eq!(task.role, "drift");
    assert_eq!(task.environment, "production");
    assert!(
        h.fleet.drifted_ids().is_empty(),
        "still drifted: {:?}",
        h.fleet.drifted_ids()
    );
    for s in &h.fleet.servers {
        let drifted = h
            .fleet
            .spec
            .drifted
            .iter()
            .any(|&i| h.fleet.servers[i].id == s.id);
        assert_eq!(s.applies(), u32::from(drifted), "{} applies", s.id);
    }
    let k = kinds(&done.events);
    let order = [
        "task_received",
        "task_routed",
        "plan_proposed",
        "awaiting_approval",
        "task_approved",
        "execution_started",
        "task_completed",
    ];
    let mut at = 0;
    for want in order {
        let pos = k[at..]
            .iter()
            .position(|x| *x == want)
            .unwrap_or_else(|| panic!("{want} missing or out of order in {k:?}"));
        at += pos + 1;
    }
    // A canary of one asset comes first, then waves.
    let phases: Vec<_> = unmerged(&done.events)
        .into_iter()
        .filter_map(|body| match body {
            Body::PhaseStarted(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(phases[0].kind(), PhaseKind::Canary);
    assert_eq!(phases[0].asset_ids.len(), 1);
    assert!(
        phases[1..]
            .iter()
            .all(|p| p.kind() == PhaseKind::Wave && p.asset_ids.len() <= 2)
    );
    let v = verify(&h).await;
    assert!(v.ok, "audit chain: {v:?}");
    assert!(v.records_checked >= done.events.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_submit_runs_to_completed_with_the_audit_log_on_postgres() {
    let h = Harness::start(Db::Postgres).await;
    let mut c = h.clients("bob", &[Role::Submitter]).await;
    let id = submit_scenario(&mut c).await;

    // A submitter may not approve its own task.
    h.wait_for(&id, TaskStatus::AwaitingApproval, T).await;
    let err = c
        .approvals
        .approve(ApproveRequest {
            task_id: id.clone(),
            reason: String::new(),
            plan_hash: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("a submitter token must not approve");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    approve(&h, &id).await;
    let done = h.wait_for(&id, TaskStatus::Completed, T).await;
    let task = done.task.unwrap();
    assert_eq!(task.submitted_by, "bob");
    assert_eq!(task.tenant, "default");
    assert!(h.fleet.drifted_ids().is_empty());
    assert!(verify(&h).await.ok);
    assert!(h.database_url.starts_with("postgres"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_health_check_in_a_wave_rolls_back_the_changed_assets() {
    let h = Harness::start(Db::Sqlite).await;
    let before: HashMap<String, _> = h
        .fleet
        .servers
        .iter()
        .map(|s| (s.id.clone(), s.config()))
        .collect();
    // Drifted: web-02 (canary), web-03, web-05 (wave 1), web-06, web-08 (wave 2), web-09 (wave 3).
    h.fleet.server("web-08").unwrap().fail_after_change(true);
    let mut c = h.clients("bob", &[Role::Submitter]).await;
    let id = submit_scenario(&mut c).await;
    approve(&h, &id).await;
    let failed = h.wait_for(&id, TaskStatus::Failed, T).await;

    let reason = failed.task.unwrap().reason;
    assert!(
        reason.contains("web-08"),
        "reason should name the unhealthy asset: {reason}"
    );
    for s in &h.fleet.servers {
        assert_eq!(
            s.config(),
            before[&s.id],
            "{} should be back on its old configuration",
            s.id
        );
    }
    assert_eq!(
        h.fleet.server("web-09").unwrap().applies(),
        0,
        "wave 3 must never start"
    );
    let rolled_back: Vec<String> = unmerged(&failed.events)
        .iter()
        .filter_map(|body| match body {
            Body::AssetUpdated(a)
                if a.asset.as_ref()?.state() == baton_proto::AssetState::RolledBack =>
            {
                Some(a.asset.as_ref()?.asset_id.clone())
            }
            _ => None,
        })
        .collect();
    let mut rb = rolled_back.clone();
    rb.sort();
    assert_eq!(rb, ["web-02", "web-03", "web-05", "web-06", "web-08"]);
    assert!(kinds(&failed.events).contains(&"rollback_started"));
    assert!(verify(&h).await.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_plan_without_a_canary_is_rejected_with_the_policy_message() {
    let h = Harness::start(Db::Sqlite).await;
    // A misbehaving agent proposes a production plan that starts with a wave.
    let web: Vec<_> = h.fleet.servers.iter().take(2).collect();
    let steps = |ids: &[&baton_fleet::WebServer]| -> Vec<Step> {
        ids.iter()
            .map(|s| Step {
                asset: Some(baton_proto::Asset {
                    id: s.id.clone(),
                    address: s.url(),
                    ..Default::default()
                }),
                action: Some(baton_proto::Action {
                    idempotency_key: format!("x:{}", s.id),
                    kind: Some(baton_proto::action::Kind::Noop(Default::default())),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect()
    };
    let plan = Plan {
        task_id: "no-canary-1".into(),
        summary: "all at once".into(),
        phases: vec![Phase {
            name: "wave 1".into(),
            kind: PhaseKind::Wave as i32,
            steps: steps(&web[..1]),
        }],
        total_assets: 10,
        ..Default::default()
    };
    let spec = TaskSpec {
        task_id: "no-canary-1".into(),
        role: "drift".into(),
        task_type: "drift_remediation".into(),
        environment: "production".into(),
        risk: baton_proto::Risk::Medium as i32,
        ..Default::default()
    };
    let task = Task {
        task_id: "no-canary-1".into(),
        tenant: "default".into(),
        submitted_by: "agent".into(),
        ..Default::default()
    };
    let event = Event::first(
        "no-canary-1",
        "default",
        "proposed",
        "agent-runner",
        Body::PlanProposed(PlanProposed {
            task: Some(task),
            spec: Some(spec),
            plan: Some(plan),
        }),
    );
    h.baton
        .ctx
        .bus
        .publish(subject::TASK_PROPOSED, &event)
        .await
        .unwrap();

    let rejected = h.wait_for("no-canary-1", TaskStatus::Rejected, T).await;
    let reason = rejected.task.unwrap().reason;
    assert!(
        reason.contains("production plans must start with a canary phase"),
        "{reason}"
    );
    assert!(h.fleet.servers.iter().all(|s| s.applies() == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_killed_mid_rollout_resumes_and_no_event_is_duplicated() {
    let h = Harness::start(Db::Sqlite).await;
    let mut h = h;
    // Wave 1 (web-03, web-05) answers slowly, so the kill lands while it is in flight.
    for id in ["web-03", "web-05"] {
        h.fleet
            .server(id)
            .unwrap()
            .set_delay(Duration::from_millis(1500));
    }
    let mut c = h.clients("bob", &[Role::Submitter]).await;
    let id = submit_scenario(&mut c).await;
    approve(&h, &id).await;

    // Wait until wave 1 has started, then kill execution without letting it ack.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let mut a = h.clients("test-admin", &[Role::Admin]).await;
        let r = a
            .tasks
            .get_task(GetTaskRequest {
                task_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let wave1 = r.events.iter().any(|rec| {
            matches!(rec.event.as_ref().and_then(|e| e.body.as_ref()), Some(Body::PhaseStarted(p)) if p.name == "wave 1")
        });
        if wave1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "wave 1 never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.baton.kill_service(baton::up::ServiceName::Execution);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = h.wait_for(&id, TaskStatus::Executing, T).await;
    assert!(
        !kinds(&status.events).contains(&"task_completed"),
        "the kill must land mid-rollout"
    );
    h.baton
        .start_service(baton::up::ServiceName::Execution)
        .await
        .unwrap();

    let done = h.wait_for(&id, TaskStatus::Completed, T).await;
    assert!(h.fleet.drifted_ids().is_empty());
    for s in &h.fleet.servers {
        assert!(s.applies() <= 1, "{} applied {} times", s.id, s.applies());
    }
    // No event twice: ids are unique, and no (kind, phase, asset, state) happened twice.
    let mut ids = HashMap::new();
    let mut facts = HashMap::new();
    for r in &done.events {
        let e = r.event.as_ref().unwrap();
        *ids.entry(e.event_id.clone()).or_insert(0) += 1;
        for body in e.body.as_ref().unwrap().unmerged() {
            let fact = match &body {
                Body::PhaseStarted(p) => format!("phase_started {}", p.index),
                Body::PhaseCompleted(p) => format!("phase_completed {}", p.index),
                Body::AssetUpdated(a) => {
                    let s = a.asset.as_ref().unwrap();
                    format!("asset {} {:?}", s.asset_id, s.state())
                }
                _ => body.kind().to_string(),
            };
            *facts.entry(fact).or_insert(0) += 1;
        }
    }
    assert!(
        ids.values().all(|&n| n == 1),
        "duplicate event ids: {ids:?}"
    );
    let dups: Vec<_> = facts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "events that happened twice: {dups:?}");
    assert!(verify(&h).await.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_is_dead_lettered_and_audited() {
    let h = Harness::start(Db::Sqlite).await;
    // Only ingestion (or the admin) may publish on task.received.
    let nats = h.nats_admin().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(baton_bus::TASK_ID_HEADER, "poison-1");
    headers.insert(baton_bus::TENANT_HEADER, "default");
    nats.publish_with_headers(
        subject::TASK_RECEIVED,
        headers,
        b"\x0a\xff\xff\xff garbage".to_vec().into(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
    let r = h.wait_for("poison-1", TaskStatus::Failed, T).await;
    let dl = r
        .events
        .iter()
        .find_map(|rec| match rec.event.as_ref()?.body.as_ref()? {
            Body::DeadLetter(d) => Some(d.clone()),
            _ => None,
        })
        .expect("a dead-letter record");
    assert_eq!(dl.service, "decision");
    assert_eq!(dl.subject, subject::TASK_RECEIVED);
    assert!(
        dl.reason.contains("not a valid baton.v1.Event"),
        "{}",
        dl.reason
    );
    assert_eq!(&dl.payload[..], b"\x0a\xff\xff\xff garbage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_trigger_is_rejected_with_its_reason() {
    let h = Harness::start(Db::Sqlite).await;
    let id = publish_json_trigger(&h, r#"{"text": "Fix drift", "environment": "production""#).await;
    let r = h.wait_for(&id, TaskStatus::Rejected, T).await;
    let t = r.task.unwrap();
    assert!(
        t.reason.to_lowercase().contains("json"),
        "reason should say the JSON is malformed: {}",
        t.reason
    );
    assert!(kinds(&r.events).contains(&"trigger_rejected"));
    // The next good trigger still goes through.
    let ok = publish_json_trigger(
        &h,
        r#"{"text":"Fix drift on production web servers","environment":"production"}"#,
    )
    .await;
    h.wait_for(&ok, TaskStatus::AwaitingApproval, T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_audit_row_is_named_by_verify_audit() {
    use sqlx::Connection;
    let h = Harness::start(Db::Sqlite).await;
    let id = publish_json_trigger(
        &h,
        r#"{"text":"Fix drift on production web servers","environment":"production"}"#,
    )
    .await;
    let r = h.wait_for(&id, TaskStatus::AwaitingApproval, T).await;
    assert!(verify(&h).await.ok);
    let victim = r.events[1].sequence as i64;

    let mut db = sqlx::SqliteConnection::connect(&h.database_url)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET payload = x'00' WHERE sequence = ?")
        .bind(victim)
        .execute(&mut db)
        .await
        .unwrap();
    let v = verify(&h).await;
    assert!(!v.ok);
    assert_eq!(v.first_bad_sequence as i64, victim, "{v:?}");
}

/// Calls every RPC of every service with `c`, returning each call's status code.
async fn call_every_rpc(mut c: baton::client::Clients) -> Vec<(&'static str, tonic::Code)> {
    use baton_proto::*;
    let code = |r: Result<tonic::Code, tonic::Status>| match r {
        Ok(c) => c,
        Err(s) => s.code(),
    };
    fn ok<T>(_: T) -> tonic::Code {
        tonic::Code::Ok
    }
    let task = || "some-task".to_string();
    vec![
        (
            "SubmitTask",
            code(
                c.triggers
                    .submit_task(SubmitTaskRequest {
                        trigger: Some(Trigger {
                            text: "x".into(),
                            ..Default::default()
                        }),
                    })
                    .await
                    .map(ok),
            ),
        ),
        (
            "Classify",
            code(
                c.decisions
                    .classify(ClassifyRequest {
                        trigger: Some(Trigger {
                            text: "x".into(),
                            ..Default::default()
                        }),
                    })
                    .await
                    .map(ok),
            ),
        ),
        (
            "ListPending",
            code(
                c.approvals
                    .list_pending(ListPendingRequest {})
                    .await
                    .map(ok),
            ),
        ),
        (
            "Approve",
            code(
                c.approvals
                    .approve(ApproveRequest {
                        task_id: task(),
                        reason: String::new(),
                        plan_hash: String::new(),
                        ..Default::default()
                    })
                    .await
                    .map(ok),
            ),
        ),
        (
            "Reject",
            code(
                c.approvals
                    .reject(RejectRequest {
                        task_id: task(),
                        reason: "r".into(),
                        ..Default::default()
                    })
                    .await
                    .map(ok),
            ),
        ),
        (
            "GetExecution",
            code(
                c.executions
                    .get_execution(GetExecutionRequest { task_id: task() })
                    .await
                    .map(ok),
            ),
        ),
        (
            "GetTask",
            code(
                c.tasks
                    .get_task(GetTaskRequest { task_id: task() })
                    .await
                    .map(ok),
            ),
        ),
        (
            "ListTasks",
            code(
                c.tasks
                    .list_tasks(ListTasksRequest::default())
                    .await
                    .map(ok),
            ),
        ),
        (
            "WatchTask",
            code(
                c.tasks
                    .watch_task(WatchTaskRequest { task_id: task() })
                    .await
                    .map(ok),
            ),
        ),
        (
            "VerifyAudit",
            code(c.tasks.verify_audit(VerifyAuditRequest {}).await.map(ok)),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_on_every_call() {
    let h = Harness::start(Db::Sqlite).await;
    let wrong = baton_runtime::auth::Authenticator::new(&baton_runtime::auth::AuthConfig {
        hs256_secret: "another secret that is long enough!!".into(),
        ..Default::default()
    })
    .unwrap()
    .mint(
        "mallory",
        "default",
        &[Role::Admin],
        Duration::from_secs(60),
    );
    for (what, token) in [("wrong secret", wrong.as_str()), ("not a JWT", "garbage")] {
        let c = baton::client::Clients::connect(&h.baton.grpc_url(), token)
            .await
            .unwrap();
        for (rpc, code) in call_every_rpc(c).await {
            assert_eq!(
                code,
                tonic::Code::Unauthenticated,
                "{rpc} with a {what} token"
            );
        }
    }
    // No authorization metadata at all.
    let channel = tonic::transport::Channel::from_shared(h.baton.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut bare = baton_proto::task_service_client::TaskServiceClient::new(channel);
    let err = bare
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().contains("baton token"),
        "the message says how to get a token: {}",
        err.message()
    );

    // A valid token without the needed role is PERMISSION_DENIED where a role is needed.
    let viewer = h.clients("vic", &[]).await;
    let codes: HashMap<_, _> = call_every_rpc(viewer).await.into_iter().collect();
    for rpc in ["SubmitTask", "Approve", "Reject", "VerifyAudit"] {
        assert_eq!(
            codes[rpc],
            tonic::Code::PermissionDenied,
            "{rpc} without its role"
        );
    }
    assert_eq!(codes["ListTasks"], tonic::Code::Ok);
    assert_eq!(codes["GetTask"], tonic::Code::NotFound);

    // Tenants do not see each other's tasks.
    let mut acme = h.clients_of("ann", "acme", &[Role::Submitter]).await;
    let id = submit_scenario(&mut acme).await;
    h.wait_for(&id, TaskStatus::AwaitingApproval, T).await;
    let mut other = h.clients_of("olga", "globex", &[Role::Submitter]).await;
    let err = other
        .tasks
        .get_task(GetTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let mine = acme
        .tasks
        .get_task(GetTaskRequest { task_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.task.unwrap().tenant, "acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_carries_traceparent_and_a_task_is_one_trace() {
    use futures::StreamExt;
    let h = Harness::start(Db::Sqlite).await;
    let mut c = h.clients("bob", &[Role::Submitter]).await;
    let id = submit_scenario(&mut c).await;
    approve(&h, &id).await;
    h.wait_for(&id, TaskStatus::Completed, T).await;

    // Read the task's events straight from the stream, with their headers.
    let js = h.baton.ctx.bus.jetstream();
    let stream = js.get_stream("BATON").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: "baton.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = consumer.clone().info().await.unwrap().num_pending as usize;
    let mut msgs = consumer.messages().await.unwrap().take(pending);
    let mut traces: Vec<(String, String)> = Vec::new();
    while let Some(m) = msgs.next().await {
        let m = m.unwrap();
        let Some(h) = m.headers.as_ref() else {
            continue;
        };
        if h.get(baton_bus::TASK_ID_HEADER).map(|v| v.as_str()) != Some(id.as_str()) {
            continue;
        }
        let tp = h
            .get("traceparent")
            .map(|v| v.as_str().to_string())
            .unwrap_or_else(|| panic!("no traceparent on {}", m.subject));
        // 00-<trace id>-<span id>-<flags>
        let trace_id = tp.split('-').nth(1).expect("W3C traceparent").to_string();
        assert_eq!(trace_id.len(), 32, "{tp}");
        traces.push((m.subject.to_string(), trace_id));
    }
    assert!(traces.len() >= 10, "{traces:?}");
    assert!(
        traces
            .iter()
            .any(|(s, _)| s == subject::TASK_AWAITING_APPROVAL)
    );
    assert!(traces.iter().any(|(s, _)| s == subject::TASK_APPROVED));
    assert!(
        traces.iter().all(|(_, t)| *t == traces[0].1),
        "one trace from trigger to completion, across the approval: {traces:?}"
    );
}
