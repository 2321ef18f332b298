//! Extensions plug in without editing a service: a classification tier and two agents,
//! registered as a program embedding Baton registers them, run through all six services with a
//! role that only the configuration's catalog knows. And validation trusts the agent runner's
//! word about who made a plan, not the plan's.

use baton::config::BatonConfig;
use baton_proto::event::Body;
use baton_proto::{
    Action, AgentKind, AgentRun, Asset, Decision, DecisionTier, NoopAction, Phase, PhaseKind, Plan,
    Step, SubmitTaskRequest, Task, TaskSpec, TaskStatus, Trigger, action,
};
use baton_runtime::auth::Role;
use baton_runtime::plugins::Plugins;
use baton_tests::{Db, Harness};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// A tier that routes questions about invoices to `billing` and about statements to
/// `statements`, in staging.
struct BillingTier;

impl baton_decision::Classifier for BillingTier {
    fn name(&self) -> &str {
        "billing"
    }

    fn classify<'a>(
        &'a self,
        task: &'a Task,
    ) -> BoxFuture<'a, Result<baton_decision::Opinion, baton_decision::Error>> {
        let text = task.trigger.as_ref().map(|t| t.text.as_str()).unwrap_or("");
        let role = if text.contains("invoice") {
            Some("billing")
        } else if text.contains("statement") {
            Some("statements")
        } else {
            None
        };
        let d = role.map(|role| Decision {
            spec: Some(TaskSpec {
                task_id: task.task_id.clone(),
                task_type: "billing_question".into(),
                role: role.into(),
                environment: "staging".into(),
                intent: text.into(),
                ..Default::default()
            }),
            confidence: 0.95,
            tier: DecisionTier::Classifier as i32,
            matched_by: "billing".into(),
            explanation: format!("billing tier: {role}"),
        });
        let opinion = d.map_or(
            baton_decision::Opinion::NoOpinion("no invoice or statement mentioned".into()),
            baton_decision::Opinion::from,
        );
        Box::pin(std::future::ready(Ok(opinion)))
    }
}

/// An agent proposing one no-op step. Its plans always claim to come from the reviewed drift
/// runbook; only `kind` and `name`, as registered, are true.
struct Billing {
    name: &'static str,
    kind: AgentKind,
}

impl baton_agent_runner::Agent for Billing {
    fn name(&self) -> &str {
        self.name
    }

    fn kind(&self) -> AgentKind {
        self.kind
    }

    fn plan<'a>(
        &'a self,
        task: &'a Task,
        _spec: &'a TaskSpec,
    ) -> BoxFuture<'a, Result<Plan, baton_agent_runner::AgentError>> {
        let noop = |what: &str| Action {
            idempotency_key: format!("{}:ledger:{what}", task.task_id),
            description: format!("{what} nothing"),
            kind: Some(action::Kind::Noop(NoopAction {})),
        };
        let plan = Plan {
            task_id: task.task_id.clone(),
            summary: "annotate the ledger".into(),
            phases: vec![Phase {
                name: "canary".into(),
                kind: PhaseKind::Canary as i32,
                steps: vec![Step {
                    asset: Some(Asset {
                        id: "ledger".into(),
                        name: "ledger".into(),
                        kind: "ledger".into(),
                        ..Default::default()
                    }),
                    action: Some(noop("apply")),
                    rollback: Some(noop("rollback")),
                    health_check: None,
                    reason: "the question needs an annotation".into(),
                }],
            }],
            total_assets: 1,
            agent_run: Some(AgentRun {
                kind: AgentKind::Runbook as i32,
                agent: "drift-runbook@1".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Box::pin(async move { Ok(plan) })
    }
}

fn plugins() -> Plugins {
    let agent = |name: &'static str, kind| {
        move |_: &baton_agent_runner::AgentSetup<'_>| {
            Ok(Arc::new(Billing { name, kind }) as Arc<dyn baton_agent_runner::Agent>)
        }
    };
    Plugins::new()
        .with(baton_decision::TierFactory::new("billing", |_| {
            Ok(Arc::new(BillingTier) as Arc<dyn baton_decision::Classifier>)
        }))
        .with(baton_agent_runner::AgentFactory::new(
            "billing-llm",
            &["billing"],
            agent("billing-llm@1", AgentKind::Llm),
        ))
        .with(baton_agent_runner::AgentFactory::new(
            "statements-runbook",
            &["statements"],
            agent("statements-runbook@1", AgentKind::Runbook),
        ))
}

fn configure(c: &mut BatonConfig) {
    c.common
        .catalog
        .roles
        .extend(["billing".into(), "statements".into()]);
    c.validation
        .reviewed_agents
        .push("statements-runbook@1".into());
}

async fn submit(h: &Harness, text: &str) -> String {
    let mut c = h.clients("alice", &[Role::Submitter]).await;
    c.triggers
        .submit_task(SubmitTaskRequest {
            trigger: Some(Trigger {
                text: text.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .task_id
}

/// The quality score validation gave the task's plan.
fn human_review(r: &baton_proto::GetTaskResponse) -> (u32, Vec<String>) {
    for record in &r.events {
        let validation = match record.event.as_ref().and_then(|e| e.body.as_ref()) {
            Some(Body::AwaitingApproval(a)) => {
                a.pending.as_ref().and_then(|p| p.validation.clone())
            }
            Some(Body::TaskApproved(a)) => a.validation.clone(),
            _ => None,
        };
        if let Some(q) = validation.and_then(|v| v.quality) {
            return (q.human_review, q.notes);
        }
    }
    panic!("no validation result among the task's events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plug_in_tier_and_agents_run_end_to_end_and_only_a_reviewed_runbook_is_trusted() {
    let h = Harness::start_with_plugins(Db::Sqlite, configure, plugins()).await;

    // A reviewed runbook's plan scores 20 + 20 + 0 + 10 + 20 = 70: staging auto-approves it.
    let reviewed = submit(&h, "Why does my statement show two payments?").await;
    let done = h.wait_for(&reviewed, TaskStatus::Completed, T).await;
    assert_eq!(done.task.as_ref().unwrap().role, "statements");
    let (points, _) = human_review(&done);
    assert_eq!(points, 20);

    // A model-backed agent whose plan claims to be the reviewed drift runbook gets no
    // human-review points (50): staging asks a human.
    let claimed = submit(&h, "Why is this invoice twice the usual?").await;
    let waiting = h.wait_for(&claimed, TaskStatus::AwaitingApproval, T).await;
    assert_eq!(waiting.task.as_ref().unwrap().role, "billing");
    let (points, notes) = human_review(&waiting);
    assert_eq!(points, 0);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("billing-llm@1 (kind llm), not a reviewed runbook")),
        "{notes:?}"
    );
}

/// A webhook as a program embedding Baton would add one: `POST /hooks/billing` with the
/// question as the body becomes a JSON trigger on `baton.trigger.<tenant>.webhook`, in the
/// caller's tenant. Its route sits behind the same bearer-token check as gRPC.
fn webhook() -> baton_runtime::http::HttpPlugin {
    use axum::{Extension, extract::State, http::StatusCode, routing::post};
    baton_runtime::http::HttpPlugin::new("billing-webhook", |ctx| {
        let bus = ctx.bus.clone();
        axum::Router::new()
            .route(
                "/hooks/billing",
                post(
                    async |State(bus): State<baton_bus::Bus>,
                           Extension(caller): Extension<baton_runtime::auth::Principal>,
                           body: String| {
                        let trigger = serde_json::json!({ "text": body }).to_string();
                        match bus
                            .client()
                            .publish(
                                baton_proto::subject::trigger(&caller.tenant, "webhook"),
                                trigger.into(),
                            )
                            .await
                        {
                            Ok(()) => (StatusCode::ACCEPTED, "accepted\n".to_string()),
                            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
                        }
                    },
                ),
            )
            .with_state(bus)
    })
}

/// `POST path` with `body` (and a bearer token); see [`request`].
async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    request(addr, "POST", path, token, body).await
}

/// `method path` with `body` (and a bearer token) over a fresh HTTP/1.1 connection; returns
/// the status code and the body.
async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plug_in_webhook_is_a_trigger_source_behind_the_grpc_authentication() {
    let h = Harness::start_with_plugins(Db::Sqlite, configure, plugins().with(webhook())).await;
    let addr = h.baton.http_addr;
    let question = "Why does my statement list a refund twice?";

    let (status, body) = post(addr, "/hooks/billing", None, question).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("missing"), "{body}");
    let (status, body) = post(addr, "/hooks/billing", Some("not-a-jwt"), question).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("not a well-formed JWT"), "{body}");
    // The operational endpoints stay open to probes without a token.
    let (status, body) = request(addr, "GET", "/health", None, "").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let token = h.baton.token("hook", "globex", &[Role::Submitter]);
    let (status, body) = post(addr, "/hooks/billing", Some(&token), question).await;
    assert_eq!(status, 202, "{body}");

    // The trigger became a task of the caller's tenant, routed by the plug-in tier.
    let mut admin = h.clients("test-admin", &[Role::Admin]).await;
    let deadline = tokio::time::Instant::now() + T;
    let task = loop {
        let tasks = admin
            .tasks
            .list_tasks(baton_proto::ListTasksRequest::default())
            .await
            .unwrap()
            .into_inner()
            .tasks;
        if let Some(t) = tasks.into_iter().find(|t| t.tenant == "globex") {
            break t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no task from the webhook"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let done = h.wait_for(&task.task_id, TaskStatus::Completed, T).await;
    let task = done.task.unwrap();
    assert_eq!(
        (task.role.as_str(), task.tenant.as_str()),
        ("statements", "globex")
    );
}
