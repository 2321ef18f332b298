//! The validation service against a real nats-server and a real tonic server: verdicts on the
//! bus, pending approvals in the KV bucket, and the approval gRPC calls.

use async_nats::jetstream::consumer::pull;
use baton_bus::testing::TestNats;
use baton_proto::approval_service_client::ApprovalServiceClient;
use baton_proto::{
    Action, AgentRun, Approval, ApproveRequest, Asset, Event, HealthCheck, HttpAction, HttpProbe,
    ListPendingRequest, NoopAction, PendingApproval, Phase, PhaseKind, Plan, PlanProposed,
    RejectRequest, Risk, Step, Task, TaskSpec, Trigger, Verdict, action, event::Body, health_check,
    subject,
};
use baton_runtime::Context;
use baton_runtime::auth::{AuthConfig, Authenticator, Role};
use baton_runtime::metrics::Metrics;
use baton_runtime::signing::{TrustedKeys, plan_hash, verify_approved};
use baton_validation::approval::{Decided, Stored};
use baton_validation::{APPROVALS_BUCKET, Config, Validation};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const TENANT: &str = "acme";

fn auth_config() -> AuthConfig {
    AuthConfig {
        hs256_secret: "x".repeat(32),
        ..Default::default()
    }
}

/// The default configuration: the built-in policies.
fn config() -> Config {
    Config::default()
}

/// A running validation service: consumer and gRPC server.
struct Harness {
    nats: TestNats,
    auth: Authenticator,
    metrics: Arc<Metrics>,
    client: ApprovalServiceClient<Channel>,
    shutdown: CancellationToken,
    /// The public key validation signs approvals with.
    trusted: TrustedKeys,
}

impl Harness {
    async fn start() -> Harness {
        let nats = TestNats::start().await;
        let metrics = Arc::new(Metrics::default());
        let ctx = Context::new(
            nats.bus.clone(),
            Authenticator::new(&auth_config()).unwrap(),
            metrics.clone(),
        );
        let svc = Validation::new(ctx, config())
            .await
            .expect("validation starts");
        let trusted = TrustedKeys::of([svc.public_key()]);
        let shutdown = CancellationToken::new();
        let mut routes = tonic::service::RoutesBuilder::default();
        svc.add_grpc(&mut routes);
        let (addr, _server) = baton_runtime::grpc::serve(
            "127.0.0.1:0".parse().unwrap(),
            routes.routes(),
            baton_validation::GRPC_SERVICES,
            shutdown.clone(),
        )
        .await
        .unwrap();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move { svc.run(shutdown).await.expect("consumer runs") }
        });
        let client = ApprovalServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Harness {
            nats,
            auth: Authenticator::new(&auth_config()).unwrap(),
            metrics,
            client,
            shutdown,
            trusted,
        }
    }

    fn token(&self, sub: &str, tenant: &str, roles: &[Role]) -> String {
        self.auth.mint(sub, tenant, roles, Duration::from_secs(300))
    }

    async fn propose(&self, event: &Event) {
        self.nats
            .bus
            .publish(subject::TASK_PROPOSED, event)
            .await
            .unwrap();
    }

    /// The first event on `subject` (waits up to 10 s for it).
    async fn next_on(&self, subject: &str) -> Event {
        let stream = self.nats.bus.jetstream().get_stream("BATON").await.unwrap();
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: subject.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap_or_else(|_| panic!("nothing published on {subject}"))
            .unwrap()
            .unwrap();
        baton_bus::decode_event(&msg.payload).unwrap()
    }

    /// How many messages the stream holds on `subject`.
    async fn count_on(&self, subject: &str) -> u64 {
        let stream = self.nats.bus.jetstream().get_stream("BATON").await.unwrap();
        let info = stream.info_with_subjects(subject).await.unwrap();
        let counts: Vec<(String, usize)> = info
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        counts.into_iter().map(|(_, n)| n as u64).sum()
    }

    async fn stored(&self, task_id: &str) -> Option<Stored> {
        let kv = self.nats.bus.key_value(APPROVALS_BUCKET, 5).await.unwrap();
        kv.get(task_id)
            .await
            .unwrap()
            .map(|b| Stored::decode(b.as_ref()).unwrap())
    }

    /// The pending approval of `task_id`, if it is still undecided.
    async fn pending(&self, task_id: &str) -> Option<PendingApproval> {
        match self.stored(task_id).await {
            Some(Stored::Pending(p)) => Some(p),
            _ => None,
        }
    }

    /// The claimed decision of `task_id`, if any.
    async fn decided(&self, task_id: &str) -> Option<Decided> {
        match self.stored(task_id).await {
            Some(Stored::Decided(d)) => Some(d),
            _ => None,
        }
    }

    /// Proposes a high-risk production plan and waits until it awaits approval.
    async fn awaiting(&self, task_id: &str) {
        self.propose(&proposed(
            task_id,
            "production",
            Risk::High,
            safe_phases(),
            10,
        ))
        .await;
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.pending(task_id).await.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{task_id} never awaited approval"));
    }

    /// Event ids in the stream on `subject` for `task_id` (reads the stream directly).
    async fn ids_on(&self, subject: &str) -> Vec<String> {
        let stream = self.nats.bus.jetstream().get_stream("BATON").await.unwrap();
        let n = self.count_on(subject).await;
        if n == 0 {
            return vec![];
        }
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: subject.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut batch = consumer
            .fetch()
            .max_messages(n as usize)
            .messages()
            .await
            .unwrap();
        let mut ids = Vec::new();
        while let Some(msg) = tokio::time::timeout(Duration::from_secs(10), batch.next())
            .await
            .unwrap()
        {
            ids.push(
                baton_bus::decode_event(&msg.unwrap().payload)
                    .unwrap()
                    .event_id,
            );
        }
        ids
    }

    fn verdicts(&self, verdict: &str) -> u64 {
        self.metrics
            .policy_decisions
            .get_or_create(&baton_runtime::metrics::VerdictLabels {
                verdict: verdict.into(),
            })
            .get()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn with_token<T>(body: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

fn http_step(asset: &str) -> Step {
    let action = |what: &str| Action {
        idempotency_key: format!("t:{asset}:{what}"),
        description: what.into(),
        kind: Some(action::Kind::Http(HttpAction {
            method: "PUT".into(),
            url: format!("http://127.0.0.1:1/{asset}/config"),
            ..Default::default()
        })),
    };
    Step {
        asset: Some(Asset {
            id: asset.into(),
            name: asset.into(),
            ..Default::default()
        }),
        action: Some(action("apply")),
        rollback: Some(action("rollback")),
        health_check: Some(HealthCheck {
            kind: Some(health_check::Kind::Http(HttpProbe {
                url: format!("http://127.0.0.1:1/{asset}/health"),
                ..Default::default()
            })),
            ..Default::default()
        }),
        reason: "drifted".into(),
    }
}

fn phase(name: &str, kind: PhaseKind, assets: &[&str]) -> Phase {
    Phase {
        name: name.into(),
        kind: kind as i32,
        steps: assets.iter().map(|a| http_step(a)).collect(),
    }
}

/// A `plan_proposed` event from a runbook agent.
fn proposed(
    task_id: &str,
    environment: &str,
    risk: Risk,
    phases: Vec<Phase>,
    total_assets: u32,
) -> Event {
    let body = Body::PlanProposed(PlanProposed {
        task: Some(Task {
            task_id: task_id.into(),
            tenant: TENANT.into(),
            submitted_by: "sam".into(),
            trigger: Some(Trigger {
                text: "fix drift on web".into(),
                ..Default::default()
            }),
            received_at: Some(baton_proto::now()),
        }),
        spec: Some(TaskSpec {
            task_id: task_id.into(),
            task_type: "drift_remediation".into(),
            role: "drift".into(),
            risk: risk as i32,
            environment: environment.into(),
            target: "web".into(),
            ..Default::default()
        }),
        plan: Some(Plan {
            task_id: task_id.into(),
            summary: "restore web config".into(),
            phases,
            total_assets,
            artifacts: vec![],
            agent_run: Some(AgentRun {
                kind: baton_proto::AgentKind::Runbook as i32,
                agent: "drift-runbook@1".into(),
                ..Default::default()
            }),
        }),
    });
    let mut event = Event::first(task_id, TENANT, "proposed", "agent-runner", body);
    event.causation_id = format!("{task_id}.routed");
    event
}

/// Canary of one, then waves of two, out of ten assets.
fn safe_phases() -> Vec<Phase> {
    vec![
        phase("canary", PhaseKind::Canary, &["web-01"]),
        phase("wave 1", PhaseKind::Wave, &["web-02", "web-03"]),
        phase("wave 2", PhaseKind::Wave, &["web-04", "web-05"]),
    ]
}

fn rejected_reasons(event: &Event) -> Vec<String> {
    let Some(Body::TaskRejected(r)) = &event.body else {
        panic!("not a rejection: {event:?}")
    };
    assert_eq!(r.validation.as_ref().unwrap().verdict(), Verdict::Rejected);
    r.reasons.clone()
}

#[tokio::test]
async fn production_plan_without_canary_is_rejected_with_the_policy_message() {
    let h = Harness::start().await;
    let phases = vec![phase("wave 1", PhaseKind::Wave, &["web-01", "web-02"])];
    h.propose(&proposed("t-nocanary", "production", Risk::Low, phases, 10))
        .await;
    let event = h.next_on(subject::TASK_REJECTED).await;
    assert_eq!(event.event_id, "t-nocanary.rejected");
    assert_eq!(event.causation_id, "t-nocanary.proposed");
    assert_eq!(event.producer, "validation");
    assert_eq!(
        rejected_reasons(&event),
        ["production plans must start with a canary phase"]
    );
    let Some(Body::TaskRejected(r)) = &event.body else {
        unreachable!()
    };
    let policy = r.validation.as_ref().unwrap().policy.as_ref().unwrap();
    assert!(!policy.allowed);
    assert_eq!(
        policy.policies,
        ["production_safety.rego", "sandbox.rego", "tools.rego"]
    );
    assert_eq!(policy.policy_version.len(), 64);
    assert_eq!(
        r.validation
            .as_ref()
            .unwrap()
            .quality
            .as_ref()
            .unwrap()
            .policy_compliance,
        0
    );
    assert_eq!(h.verdicts("rejected"), 1);
}

#[tokio::test]
async fn production_phase_over_20_percent_is_rejected() {
    let h = Harness::start().await;
    let phases = vec![
        phase("canary", PhaseKind::Canary, &["web-01"]),
        phase("wave 1", PhaseKind::Wave, &["web-02", "web-03", "web-04"]),
    ];
    h.propose(&proposed("t-bigwave", "production", Risk::Low, phases, 10))
        .await;
    let event = h.next_on(subject::TASK_REJECTED).await;
    assert_eq!(
        rejected_reasons(&event),
        ["phase \"wave 1\" holds 3 of 10 assets (30%); production phases may hold at most 20%"]
    );
}

#[tokio::test]
async fn unknown_environment_is_rejected() {
    let h = Harness::start().await;
    h.propose(&proposed("t-moon", "moon", Risk::Low, safe_phases(), 10))
        .await;
    let event = h.next_on(subject::TASK_REJECTED).await;
    assert_eq!(
        rejected_reasons(&event),
        ["unknown environment \"moon\": plans may target development, staging or production"]
    );
}

#[tokio::test]
async fn development_low_risk_noop_plan_is_approved_by_policy() {
    let h = Harness::start().await;
    let mut step = http_step("dev-01");
    step.action = Some(Action {
        kind: Some(action::Kind::Noop(NoopAction {})),
        ..Default::default()
    });
    step.rollback = None;
    step.health_check = None;
    let phases = vec![Phase {
        name: "all".into(),
        kind: PhaseKind::Wave as i32,
        steps: vec![step],
    }];
    h.propose(&proposed("t-dev", "development", Risk::Low, phases, 1))
        .await;
    let event = h.next_on(subject::TASK_APPROVED).await;
    assert_eq!(event.event_id, "t-dev.approved");
    assert_eq!(event.causation_id, "t-dev.proposed");
    let Some(Body::TaskApproved(a)) = event.body.clone() else {
        panic!("not approved: {event:?}")
    };
    verify_approved(&h.trusted, &event, &a).expect("the policy's approval is signed");
    let approval = a.approval.unwrap();
    assert_eq!(approval.approver, "policy");
    assert!(approval.approved);
    assert_eq!(approval.plan_hash, plan_hash(a.plan.as_ref().unwrap()));
    let quality = a.validation.as_ref().unwrap().quality.clone().unwrap();
    // No health check: test coverage 0; the rest full, history neutral.
    assert_eq!(quality.total, 70, "{quality:?}");
    assert_eq!(approval.reason, "quality 70, no approval required");
    assert_eq!(a.validation.unwrap().verdict(), Verdict::Approved);
    assert_eq!(a.plan.unwrap().task_id, "t-dev");
    assert_eq!(a.task.unwrap().submitted_by, "sam");
    assert_eq!(h.verdicts("approved"), 1);
    assert!(h.pending("t-dev").await.is_none());
}

#[tokio::test]
async fn high_risk_production_plan_waits_then_a_human_approves_it() {
    let mut h = Harness::start().await;
    h.propose(&proposed(
        "t-gate",
        "production",
        Risk::High,
        safe_phases(),
        10,
    ))
    .await;
    let event = h.next_on(subject::TASK_AWAITING_APPROVAL).await;
    assert_eq!(event.event_id, "t-gate.awaiting_approval");
    let Some(Body::AwaitingApproval(w)) = &event.body else {
        panic!("{event:?}")
    };
    let pending = w.pending.clone().unwrap();
    assert_eq!(
        pending.validation.as_ref().unwrap().reasons,
        ["high-risk change in production needs a human approval"]
    );
    assert_eq!(
        pending
            .validation
            .as_ref()
            .unwrap()
            .quality
            .as_ref()
            .unwrap()
            .total,
        80
    );
    let stored = h.pending("t-gate").await.expect("KV entry");
    assert_eq!(stored, pending);
    assert_eq!(
        (stored.tenant.as_str(), stored.submitted_by.as_str()),
        (TENANT, "sam")
    );

    // Listing: the tenant's approver sees it; another tenant does not.
    let mine = h
        .client
        .list_pending(with_token(
            ListPendingRequest {},
            &h.token("ann", TENANT, &[Role::Submitter]),
        ))
        .await
        .unwrap();
    assert_eq!(
        mine.into_inner()
            .pending
            .iter()
            .map(|p| p.task_id.as_str())
            .collect::<Vec<_>>(),
        ["t-gate"]
    );
    let theirs = h
        .client
        .list_pending(with_token(
            ListPendingRequest {},
            &h.token("eve", "globex", &[Role::Approver]),
        ))
        .await
        .unwrap();
    assert!(theirs.into_inner().pending.is_empty());

    // A submitter may not approve; nothing is published.
    let submitter = h.token("sam", TENANT, &[Role::Submitter]);
    let err = h
        .client
        .approve(with_token(
            ApproveRequest {
                task_id: "t-gate".into(),
                reason: "lgtm".into(),
                plan_hash: String::new(),
                ..Default::default()
            },
            &submitter,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert_eq!(h.count_on(subject::TASK_APPROVED).await, 0);
    assert!(h.pending("t-gate").await.is_some());

    // Another tenant's approver cannot even see it.
    let other = h.token("eve", "globex", &[Role::Approver]);
    let err = h
        .client
        .approve(with_token(
            ApproveRequest {
                task_id: "t-gate".into(),
                reason: "".into(),
                plan_hash: String::new(),
                ..Default::default()
            },
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert_eq!(err.message(), "no plan awaiting approval for task t-gate");

    // Without a token: unauthenticated.
    let err = h
        .client
        .approve(ApproveRequest {
            task_id: "t-gate".into(),
            reason: "".into(),
            plan_hash: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let approver = h.token("alice", TENANT, &[Role::Approver]);
    let approval = h
        .client
        .approve(with_token(
            ApproveRequest {
                task_id: "t-gate".into(),
                reason: "change window open".into(),
                plan_hash: String::new(),
                ..Default::default()
            },
            &approver,
        ))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert_eq!(
        (approval.approver.as_str(), approval.approved),
        ("alice", true)
    );

    let event = h.next_on(subject::TASK_APPROVED).await;
    assert_eq!(event.event_id, "t-gate.approved");
    assert_eq!(event.causation_id, "t-gate.awaiting_approval");
    assert_eq!(event.tenant, TENANT);
    let Some(Body::TaskApproved(a)) = event.body else {
        panic!("{event:?}")
    };
    let published = a.approval.unwrap();
    assert_eq!(published.approver, "alice");
    assert_eq!(published.reason, "change window open");
    assert_eq!(a.plan.unwrap().phases.len(), 3);
    assert_eq!(a.task.unwrap().task_id, "t-gate");
    assert!(h.pending("t-gate").await.is_none(), "no longer pending");
    let decided = h
        .decided("t-gate")
        .await
        .expect("the decision stays as the task's record");
    assert!(decided.published);
    assert_eq!(decided.approval.unwrap().approver, "alice");
    let listed = h
        .client
        .list_pending(with_token(ListPendingRequest {}, &approver))
        .await
        .unwrap();
    assert!(
        listed.into_inner().pending.is_empty(),
        "a decided plan is not listed"
    );

    // Decided: rejecting it now is refused, naming the decision.
    let err = h
        .client
        .reject(with_token(
            RejectRequest {
                task_id: "t-gate".into(),
                reason: "too late".into(),
                ..Default::default()
            },
            &approver,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(err.message(), "task t-gate was already approved by alice");
    assert_eq!(h.count_on(subject::TASK_REJECTED).await, 0);
    // Another tenant still cannot see it.
    let err = h
        .client
        .reject(with_token(
            RejectRequest {
                task_id: "t-gate".into(),
                reason: "x".into(),
                ..Default::default()
            },
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn approval_binds_the_plan_hash_the_approver_saw_and_is_signed() {
    let mut h = Harness::start().await;
    h.awaiting("t-hash").await;
    let alice = h.token("alice", TENANT, &[Role::Approver]);
    let listed = h
        .client
        .list_pending(with_token(ListPendingRequest {}, &alice))
        .await
        .unwrap()
        .into_inner()
        .pending;
    let shown = listed[0].plan_hash.clone();
    assert_eq!(shown, plan_hash(listed[0].plan.as_ref().unwrap()));
    assert_eq!(shown.len(), 64);

    // The approver saw another plan: refused, nothing decided or published.
    let other = "0".repeat(64);
    let err = h
        .client
        .approve(with_token(
            ApproveRequest {
                task_id: "t-hash".into(),
                reason: "ok".into(),
                plan_hash: other.clone(),
                ..Default::default()
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(&other), "{}", err.message());
    assert!(err.message().contains(&shown), "{}", err.message());
    assert!(h.pending("t-hash").await.is_some());
    assert_eq!(h.count_on(subject::TASK_APPROVED).await, 0);

    // The hash shown: approved, bound to it, and signed by validation's key.
    let approval = h
        .client
        .approve(with_token(
            ApproveRequest {
                task_id: "t-hash".into(),
                reason: "ok".into(),
                plan_hash: shown.to_uppercase(),
                ..Default::default()
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert_eq!(approval.plan_hash, shown);
    let event = h.next_on(subject::TASK_APPROVED).await;
    let Some(Body::TaskApproved(a)) = event.body.clone() else {
        panic!("not approved: {event:?}")
    };
    assert_eq!(a.approval.as_ref().unwrap().plan_hash, shown);
    assert_eq!(a.signature.as_ref().unwrap().plan_hash, shown);
    let key_id = verify_approved(&h.trusted, &event, &a).expect("the approval verifies");
    assert_eq!(key_id, h.trusted.ids()[0]);
    // A repeat naming another plan is refused too.
    let err = h
        .client
        .approve(with_token(
            ApproveRequest {
                task_id: "t-hash".into(),
                reason: "again".into(),
                plan_hash: other,
                ..Default::default()
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    h.shutdown.cancel();
}

#[tokio::test]
async fn approve_after_approve_is_idempotent() {
    let mut h = Harness::start().await;
    h.awaiting("t-twice").await;
    let alice = h.token("alice", TENANT, &[Role::Approver]);
    let bob = h.token("bob", TENANT, &[Role::Approver]);
    let first = h
        .client
        .approve(with_token(
            ApproveRequest {
                task_id: "t-twice".into(),
                reason: "ok".into(),
                plan_hash: String::new(),
                ..Default::default()
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    let second = h
        .client
        .approve(with_token(
            ApproveRequest {
                task_id: "t-twice".into(),
                reason: "me too".into(),
                plan_hash: String::new(),
                ..Default::default()
            },
            &bob,
        ))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert_eq!(
        second, first,
        "a repeated approval returns the decision in force"
    );
    assert_eq!(second.approver, "alice");
    assert_eq!(h.ids_on(subject::TASK_APPROVED).await, ["t-twice.approved"]);
}

#[tokio::test]
async fn a_claim_left_unpublished_by_a_crash_is_published_by_the_same_decision_only() {
    let mut h = Harness::start().await;
    h.awaiting("t-crash").await;
    // What a process that died between claiming and publishing leaves behind.
    let kv = h.nats.bus.key_value(APPROVALS_BUCKET, 5).await.unwrap();
    let entry = kv.entry("t-crash").await.unwrap().unwrap();
    let Ok(Stored::Pending(pending)) = Stored::decode(&entry.value) else {
        panic!("not pending")
    };
    let claim = Decided {
        approval: Some(Approval {
            task_id: "t-crash".into(),
            approver: "alice".into(),
            approved: true,
            reason: "window open".into(),
            decided_at: Some(baton_proto::now()),
            plan_hash: String::new(),
            ..Default::default()
        }),
        pending: Some(pending),
        published: false,
    };
    kv.update("t-crash", Stored::Decided(claim).encode(), entry.revision)
        .await
        .unwrap();
    assert_eq!(h.count_on(subject::TASK_APPROVED).await, 0);
    let listed = h
        .client
        .list_pending(with_token(
            ListPendingRequest {},
            &h.token("ann", TENANT, &[Role::Submitter]),
        ))
        .await
        .unwrap();
    assert!(
        listed.into_inner().pending.is_empty(),
        "a claimed plan is not listed"
    );

    // The opposite decision is refused; nothing is published.
    let bob = h.token("bob", TENANT, &[Role::Approver]);
    let err = h
        .client
        .reject(with_token(
            RejectRequest {
                task_id: "t-crash".into(),
                reason: "no".into(),
                ..Default::default()
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(err.message(), "task t-crash was already approved by alice");
    assert_eq!(h.count_on(subject::TASK_REJECTED).await, 0);

    // Retrying the approval publishes the claimed decision, once.
    let alice = h.token("alice", TENANT, &[Role::Approver]);
    let approval = h
        .client
        .approve(with_token(
            ApproveRequest {
                task_id: "t-crash".into(),
                reason: "retry".into(),
                plan_hash: String::new(),
                ..Default::default()
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert_eq!(
        approval.reason, "window open",
        "the claimed decision, not the retry's"
    );
    let event = h.next_on(subject::TASK_APPROVED).await;
    assert_eq!(event.event_id, "t-crash.approved");
    assert!(h.decided("t-crash").await.unwrap().published);
    h.client
        .approve(with_token(
            ApproveRequest {
                task_id: "t-crash".into(),
                reason: "again".into(),
                plan_hash: String::new(),
                ..Default::default()
            },
            &bob,
        ))
        .await
        .unwrap();
    assert_eq!(h.ids_on(subject::TASK_APPROVED).await, ["t-crash.approved"]);
}

#[tokio::test]
async fn concurrent_approve_and_reject_decide_each_task_exactly_once() {
    let h = Harness::start().await;
    let alice = h.token("alice", TENANT, &[Role::Approver]);
    let bob = h.token("bob", TENANT, &[Role::Approver]);
    const TASKS: usize = 20;
    let mut winners = Vec::new();
    for i in 0..TASKS {
        let task_id = format!("t-race-{i}");
        h.awaiting(&task_id).await;
        // Two calls in flight at once; the server handles each in its own task.
        let (mut c1, mut c2) = (h.client.clone(), h.client.clone());
        let approve = c1.approve(with_token(
            ApproveRequest {
                task_id: task_id.clone(),
                reason: "go".into(),
                plan_hash: String::new(),
                ..Default::default()
            },
            &alice,
        ));
        let reject = c2.reject(with_token(
            RejectRequest {
                task_id: task_id.clone(),
                reason: "stop".into(),
                ..Default::default()
            },
            &bob,
        ));
        let (approved, rejected) = tokio::join!(approve, reject);
        match (&approved, &rejected) {
            (Ok(_), Err(e)) => {
                assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
                assert_eq!(
                    e.message(),
                    format!("task {task_id} was already approved by alice")
                );
                winners.push((task_id, true));
            }
            (Err(e), Ok(_)) => {
                assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
                assert_eq!(
                    e.message(),
                    format!("task {task_id} was already rejected by bob")
                );
                winners.push((task_id, false));
            }
            _ => panic!("{task_id}: exactly one decision must win: {approved:?} / {rejected:?}"),
        }
    }
    let approved = h.ids_on(subject::TASK_APPROVED).await;
    let rejected = h.ids_on(subject::TASK_REJECTED).await;
    for (task_id, was_approved) in &winners {
        let a = approved
            .iter()
            .filter(|id| **id == format!("{task_id}.approved"))
            .count();
        let r = rejected
            .iter()
            .filter(|id| **id == format!("{task_id}.rejected"))
            .count();
        assert_eq!(
            (a, r),
            if *was_approved { (1, 0) } else { (0, 1) },
            "{task_id}"
        );
        let decided = h.decided(task_id).await.unwrap();
        assert_eq!(
            decided.approval.unwrap().approved,
            *was_approved,
            "{task_id}"
        );
    }
    assert_eq!(approved.len() + rejected.len(), TASKS);
}

#[tokio::test]
async fn a_human_rejection_needs_a_reason_and_publishes_the_rejection() {
    let mut h = Harness::start().await;
    h.propose(&proposed(
        "t-no",
        "production",
        Risk::Critical,
        safe_phases(),
        10,
    ))
    .await;
    h.next_on(subject::TASK_AWAITING_APPROVAL).await;
    let approver = h.token("alice", TENANT, &[Role::Approver]);

    let err = h
        .client
        .reject(with_token(
            RejectRequest {
                task_id: "t-no".into(),
                reason: "  ".into(),
                ..Default::default()
            },
            &approver,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "a rejection needs a reason");
    assert!(h.pending("t-no").await.is_some());

    let approval = h
        .client
        .reject(with_token(
            RejectRequest {
                task_id: "t-no".into(),
                reason: "not during the freeze".into(),
                ..Default::default()
            },
            &approver,
        ))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert!(!approval.approved);
    let event = h.next_on(subject::TASK_REJECTED).await;
    assert_eq!(event.event_id, "t-no.rejected");
    assert_eq!(event.causation_id, "t-no.awaiting_approval");
    let Some(Body::TaskRejected(r)) = event.body else {
        panic!("{event:?}")
    };
    assert_eq!(r.reasons, ["not during the freeze"]);
    assert_eq!(r.approval.unwrap().approver, "alice");
    assert!(h.pending("t-no").await.is_none());
}

#[tokio::test]
async fn a_redelivered_proposal_of_a_decided_task_does_not_reopen_it() {
    let mut h = Harness::start().await;
    h.propose(&proposed(
        "t-again",
        "production",
        Risk::High,
        safe_phases(),
        10,
    ))
    .await;
    h.next_on(subject::TASK_AWAITING_APPROVAL).await;
    let approver = h.token("alice", TENANT, &[Role::Approver]);
    h.client
        .approve(with_token(
            ApproveRequest {
                task_id: "t-again".into(),
                reason: "ok".into(),
                plan_hash: String::new(),
                ..Default::default()
            },
            &approver,
        ))
        .await
        .unwrap();
    // The same proposal again, as a new message (another id, so the stream keeps it).
    let mut again = proposed("t-again", "production", Risk::High, safe_phases(), 10);
    again.event_id = "t-again.proposed-2".into();
    h.propose(&again).await;
    // Wait until the consumer has handled it: it has nothing pending afterwards.
    let consumer = h
        .nats
        .bus
        .pull_consumer(&baton_bus::ConsumerSpec::new(
            "validation",
            "validation",
            subject::TASK_PROPOSED,
        ))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let info = consumer.clone().info().await.unwrap().clone();
            if info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.consumer_sequence >= 2
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("second proposal handled");
    assert!(
        h.pending("t-again").await.is_none(),
        "a decided task must stay decided"
    );
    assert_eq!(h.count_on(subject::TASK_AWAITING_APPROVAL).await, 1);
}

#[tokio::test]
async fn a_broken_policy_dir_fails_startup_naming_the_file() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.rego"),
        "package baton.bad\n\ndeny contains if {\n",
    )
    .unwrap();
    let ctx = Context::new(
        nats.bus.clone(),
        Authenticator::new(&auth_config()).unwrap(),
        Arc::new(Metrics::default()),
    );
    let err = Validation::new(
        ctx,
        Config {
            policy_dir: Some(dir.path().into()),
            ..Config::default()
        },
    )
    .await
    .err()
    .expect("startup fails");
    let text = err.to_string();
    assert!(
        matches!(err, baton_validation::Error::Policy { .. }),
        "{text}"
    );
    assert!(text.contains("bad.rego"), "{text}");
    assert!(text.contains("fix the file"), "{text}");
}

#[tokio::test]
async fn an_empty_policy_dir_means_the_built_in_policies() {
    // `BATON_VALIDATION__POLICY_DIR=` (set but empty) must not be read as a directory named "".
    let config = Config {
        policy_dir: Some("".into()),
        ..Config::default()
    };
    assert_eq!(config.policy_source(), None);
    let nats = TestNats::start().await;
    let ctx = Context::new(
        nats.bus.clone(),
        Authenticator::new(&auth_config()).unwrap(),
        Arc::new(Metrics::default()),
    );
    let svc = Validation::new(ctx, config)
        .await
        .expect("an empty policy_dir starts with the built-in policies");
    drop(svc);
}

/// A tool call an agent paused on (as the agent runner stores it), for the approval calls.
async fn pending_tool_call(h: &Harness, task_id: &str) -> baton_proto::PendingToolCall {
    let args = serde_json::json!({"method": "PUT", "url": "http://web-01/config"});
    let pending = baton_proto::PendingToolCall {
        task_id: task_id.into(),
        tenant: TENANT.into(),
        role: "cost".into(),
        agent: "cost-llm@1".into(),
        step: 2,
        tool: "http_request".into(),
        arguments_hash: baton_runtime::tool_approvals::arguments_hash(&args),
        arguments: args.to_string(),
        reason: "an HTTP PUT from a production task needs a human's approval".into(),
        requested_at: Some(baton_proto::now()),
        ..Default::default()
    };
    let store = baton_runtime::tool_approvals::ToolApprovals::open(&h.nats.bus)
        .await
        .unwrap();
    store.request(pending.clone()).await.unwrap();
    pending
}

#[tokio::test]
async fn tool_calls_are_listed_beside_plans_and_decided_through_the_same_service() {
    let mut h = Harness::start().await;
    let pending = pending_tool_call(&h, "t-tool").await;
    let approver = h.token("alice", TENANT, &[Role::Approver]);

    let listed = h
        .client
        .list_pending(with_token(ListPendingRequest {}, &approver))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.pending.is_empty());
    assert_eq!(listed.tool_calls, vec![pending.clone()]);
    let theirs = h
        .client
        .list_pending(with_token(
            ListPendingRequest {},
            &h.token("eve", "globex", &[Role::Approver]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.tool_calls.is_empty());

    // A submitter may not approve it.
    let err = h
        .client
        .approve(with_token(
            ApproveRequest {
                task_id: "t-tool".into(),
                step: 2,
                ..Default::default()
            },
            &h.token("sam", TENANT, &[Role::Submitter]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // The wrong step is not found; the wrong arguments hash is refused; nothing is decided.
    let err = h
        .client
        .approve(with_token(
            ApproveRequest {
                task_id: "t-tool".into(),
                step: 3,
                ..Default::default()
            },
            &approver,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = h
        .client
        .approve(with_token(
            ApproveRequest {
                task_id: "t-tool".into(),
                step: 2,
                arguments_hash: "ab".repeat(32),
                ..Default::default()
            },
            &approver,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("arguments hash"),
        "{}",
        err.message()
    );
    assert_eq!(h.count_on(&subject::agent("cost")).await, 0);

    // Approved with the hash shown: the decision goes to the agent runner, bound to the call.
    let approval = h
        .client
        .approve(with_token(
            ApproveRequest {
                task_id: "t-tool".into(),
                step: 2,
                arguments_hash: pending.arguments_hash.to_uppercase(),
                reason: "window open".into(),
                ..Default::default()
            },
            &approver,
        ))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert_eq!(
        (
            approval.approver.as_str(),
            approval.step,
            approval.arguments_hash.as_str()
        ),
        ("alice", 2, pending.arguments_hash.as_str())
    );
    assert_eq!(h.count_on(&subject::agent("cost")).await, 1);
    assert_eq!(
        h.ids_on(&subject::agent("cost")).await,
        ["t-tool.tool_call_decided.2"]
    );
    // Decided: no longer listed; a rejection now is refused.
    let listed = h
        .client
        .list_pending(with_token(ListPendingRequest {}, &approver))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tool_calls.is_empty());
    let err = h
        .client
        .reject(with_token(
            RejectRequest {
                task_id: "t-tool".into(),
                step: 2,
                reason: "changed my mind".into(),
            },
            &approver,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
}
