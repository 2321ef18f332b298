//! Decision against a real nats-server and a real tonic server: received tasks are routed to
//! their role's subject or failed, and `Classify` answers without publishing.

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use baton_bus::testing::TestNats;
use baton_decision::{Config, Error, Router};
use baton_proto::decision_service_client::DecisionServiceClient;
use baton_proto::{
    ClassifyRequest, DecisionTier, Event, Risk, Task, TaskReceived, Trigger, event::Body, subject,
};
use baton_runtime::Context;
use baton_runtime::auth::{AuthConfig, Authenticator, Role};
use baton_runtime::metrics::Metrics;
use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

fn context(nats: &TestNats) -> Context {
    let auth = Authenticator::new(&AuthConfig {
        hs256_secret: "x".repeat(32),
        ..Default::default()
    })
    .unwrap();
    Context::new(nats.bus.clone(), auth, Arc::new(Metrics::default()))
}

fn received(task_id: &str, trigger: Trigger) -> Event {
    let task = Task {
        task_id: task_id.into(),
        tenant: "acme".into(),
        submitted_by: "alice".into(),
        trigger: Some(trigger),
        received_at: Some(baton_proto::now()),
    };
    Event::first(
        task_id,
        "acme",
        "received",
        "ingestion",
        Body::TaskReceived(TaskReceived { task: Some(task) }),
    )
}

fn text(t: &str) -> Trigger {
    Trigger {
        text: t.into(),
        source: "cli".into(),
        ..Default::default()
    }
}

/// The first event stored on `filter`.
async fn first_event(nats: &TestNats, filter: &str) -> Event {
    let stream = nats.bus.jetstream().get_stream("BATON").await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let msg = tokio::time::timeout(WAIT, consumer.messages().await.unwrap().next())
        .await
        .unwrap_or_else(|_| panic!("nothing on {filter} within {WAIT:?}"))
        .unwrap()
        .unwrap();
    baton_bus::decode_event(&msg.payload).unwrap()
}

/// Messages stored on subjects matching `filter`.
async fn count(nats: &TestNats, filter: &str) -> u64 {
    let stream = nats.bus.jetstream().get_stream("BATON").await.unwrap();
    let mut info = stream.info_with_subjects(filter).await.unwrap();
    let mut n = 0;
    while let Some((_, c)) = info.try_next().await.unwrap() {
        n += c as u64;
    }
    n
}

/// Serves the decision service's gRPC API of `ctx` on a free loopback port (default config)
/// and connects a client; the server stops when the guard is dropped.
async fn serve_grpc(
    ctx: &Context,
) -> (
    DecisionServiceClient<tonic::transport::Channel>,
    tokio_util::sync::DropGuard,
) {
    let svc = Router::new(ctx.clone(), Config::default()).await.unwrap();
    let mut routes = tonic::service::RoutesBuilder::default();
    svc.add_grpc(&mut routes);
    let shutdown = CancellationToken::new();
    let guard = shutdown.clone().drop_guard();
    let (addr, _task) = baton_runtime::grpc::serve(
        "127.0.0.1:0".parse().unwrap(),
        routes.routes(),
        baton_decision::GRPC_SERVICES,
        shutdown,
    )
    .await
    .unwrap();
    let client = DecisionServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    (client, guard)
}

async fn run_until<T>(
    nats: &TestNats,
    config: Config,
    work: impl std::future::Future<Output = T>,
) -> T {
    let svc = Router::new(context(nats), config).await.unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(svc.run(shutdown.clone()));
    let out = work.await;
    shutdown.cancel();
    handle.await.unwrap().unwrap();
    out
}

#[tokio::test]
async fn received_task_is_routed_to_its_role() {
    let nats = TestNats::start().await;
    let input = received("t-1", text("Fix drift on production web servers"));
    nats.bus
        .publish(subject::TASK_RECEIVED, &input)
        .await
        .unwrap();
    let event = run_until(
        &nats,
        Config::default(),
        first_event(&nats, &subject::agent("drift")),
    )
    .await;

    assert_eq!(event.event_id, "t-1.routed");
    assert_eq!(event.causation_id, "t-1.received");
    assert_eq!(
        (
            event.task_id.as_str(),
            event.tenant.as_str(),
            event.producer.as_str()
        ),
        ("t-1", "acme", "decision")
    );
    let Some(Body::TaskRouted(routed)) = event.body else {
        panic!("not a TaskRouted: {event:?}")
    };
    let task = routed.task.unwrap();
    assert_eq!(
        (task.task_id.as_str(), task.submitted_by.as_str()),
        ("t-1", "alice")
    );
    let decision = routed.decision.unwrap();
    assert_eq!(decision.tier(), DecisionTier::Rules);
    assert_eq!(decision.matched_by, "drift");
    let spec = decision.spec.unwrap();
    assert_eq!(spec.task_id, "t-1");
    assert_eq!(spec.role, "drift");
    assert_eq!(spec.task_type, "drift_remediation");
    assert_eq!(spec.environment, "production");
    assert_eq!(spec.risk(), Risk::High);
    assert_eq!(spec.target, "web");
    assert_eq!(spec.intent, "Fix drift on production web servers");
}

#[tokio::test]
async fn unknown_explicit_role_fails_the_task() {
    let nats = TestNats::start().await;
    let trigger = Trigger {
        role: "wizard".into(),
        ..text("Do magic")
    };
    nats.bus
        .publish(subject::TASK_RECEIVED, &received("t-2", trigger))
        .await
        .unwrap();
    let event = run_until(
        &nats,
        Config::default(),
        first_event(&nats, subject::TASK_FAILED),
    )
    .await;

    assert_eq!(event.event_id, "t-2.failed");
    assert_eq!(event.causation_id, "t-2.received");
    let Some(Body::TaskFailed(failed)) = event.body else {
        panic!("not a TaskFailed: {event:?}")
    };
    assert_eq!(
        (failed.stage.as_str(), failed.code.as_str()),
        ("decision", "unknown_role")
    );
    assert!(
        failed.reason.contains("unknown role \"wizard\""),
        "{}",
        failed.reason
    );
    assert_eq!(count(&nats, "baton.agent.>").await, 0);
    let info = nats
        .bus
        .pull_consumer(&baton_bus::ConsumerSpec::new(
            "decision",
            baton_decision::DURABLE,
            subject::TASK_RECEIVED,
        ))
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(
        (info.num_pending, info.num_ack_pending),
        (0, 0),
        "the task was acked"
    );
}

#[tokio::test]
async fn rules_file_from_config_is_used() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(
        &path,
        r#"
[defaults]
environment = "staging"
fallback = "helper"

[[rules]]
name = "tidy"
role = "sop"
task_type = "tidy_up"
keywords = ["tidy"]
risk = "low"
tools = ["inventory.read"]

[[rules]]
name = "helper"
role = "assistant"
task_type = "assistance"
risk = "low"
"#,
    )
    .unwrap();
    let config = Config {
        rules_path: Some(path),
        ..Config::default()
    };
    nats.bus
        .publish(
            subject::TASK_RECEIVED,
            &received("t-3", text("Tidy the servers")),
        )
        .await
        .unwrap();
    let event = run_until(&nats, config, first_event(&nats, &subject::agent("sop"))).await;
    let Some(Body::TaskRouted(routed)) = event.body else {
        panic!("not a TaskRouted")
    };
    let spec = routed.decision.unwrap().spec.unwrap();
    assert_eq!(
        (spec.task_type.as_str(), spec.environment.as_str()),
        ("tidy_up", "staging")
    );
}

#[tokio::test]
async fn bad_rules_file_is_a_startup_error_naming_file_and_rule() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[defaults]\nenvironment = \"development\"\nfallback = \"x\"\n\
         [[rules]]\nname = \"x\"\nrole = \"assistant\"\ntask_type = \"a\"\nrisk = \"low\"\npatterns = [\"[z-a]\"]\n",
    )
    .unwrap();
    let config = Config {
        rules_path: Some(path.clone()),
        ..Config::default()
    };
    let err = Router::new(context(&nats), config)
        .await
        .err()
        .expect("must fail");
    assert!(matches!(err, Error::Rules { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "rules file {}: rule \"x\": pattern \"[z-a]\" does not compile",
            path.display()
        )),
        "{msg}"
    );
}

#[tokio::test]
async fn classify_over_grpc_answers_without_publishing() {
    let nats = TestNats::start().await;
    let ctx = context(&nats);
    let (mut client, _server) = serve_grpc(&ctx).await;
    // Any role may classify.
    let token = ctx
        .auth
        .mint("bob", "acme", &[Role::Approver], Duration::from_secs(300));
    let call = |trigger: Option<Trigger>, token: Option<&str>| {
        let mut req = tonic::Request::new(ClassifyRequest { trigger });
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req
    };

    let resp = client
        .classify(call(
            Some(text("Fix drift on production web servers")),
            Some(&token),
        ))
        .await
        .unwrap()
        .into_inner();
    let decision = resp.decision.unwrap();
    let spec = decision.spec.unwrap();
    assert_eq!(
        (
            spec.role.as_str(),
            spec.environment.as_str(),
            spec.target.as_str()
        ),
        ("drift", "production", "web")
    );
    assert_eq!(spec.risk(), Risk::High);

    let explicit = Trigger {
        role: "cost".into(),
        ..text("anything")
    };
    let d = client
        .classify(call(Some(explicit), Some(&token)))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(d.tier(), DecisionTier::Explicit);

    let err = client
        .classify(call(Some(text("Fix drift")), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let bad_role = Trigger {
        role: "wizard".into(),
        ..text("x")
    };
    let err = client
        .classify(call(Some(bad_role), Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("unknown role \"wizard\""),
        "{}",
        err.message()
    );
    let err = client
        .classify(call(Some(text(" ")), Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = client.classify(call(None, Some(&token))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    assert_eq!(
        count(&nats, "baton.>").await,
        0,
        "classify publishes nothing"
    );
}

/// A plug-in tier, as an extension would write it: confident about one phrase, routing it to
/// a role that only the configured catalog knows.
struct Billing;
impl baton_decision::Classifier for Billing {
    fn name(&self) -> &str {
        "billing"
    }
    fn classify<'a>(
        &'a self,
        task: &'a Task,
    ) -> futures::future::BoxFuture<'a, Result<baton_decision::Opinion, Error>> {
        let text = task.trigger.as_ref().map(|t| t.text.as_str()).unwrap_or("");
        let d = text.contains("invoice").then(|| baton_proto::Decision {
            spec: Some(baton_proto::TaskSpec {
                task_id: task.task_id.clone(),
                task_type: "billing_question".into(),
                role: "billing".into(),
                environment: "development".into(),
                ..Default::default()
            }),
            confidence: 0.95,
            tier: DecisionTier::Classifier as i32,
            matched_by: "billing".into(),
            explanation: "mentions an invoice".into(),
        });
        let opinion = d.map_or(
            baton_decision::Opinion::NoOpinion("no invoice mentioned".into()),
            baton_decision::Opinion::from,
        );
        Box::pin(std::future::ready(Ok(opinion)))
    }
}

/// The catalog of the default roles plus `billing`.
fn catalog_with_billing() -> baton_runtime::catalog::Catalog {
    let mut catalog = baton_runtime::catalog::Catalog::default();
    catalog.roles.push("billing".into());
    catalog
}

fn with_billing_tier(ctx: Context) -> Context {
    let plugins = baton_runtime::plugins::Plugins::new()
        .with(baton_decision::TierFactory::new("billing", |_| {
            Ok(Arc::new(Billing) as Arc<dyn baton_decision::Classifier>)
        }));
    ctx.with_catalog(catalog_with_billing())
        .with_plugins(plugins.shared())
}

#[tokio::test]
async fn a_plug_in_tier_routes_to_a_configured_role_without_editing_decision() {
    let nats = TestNats::start().await;
    let svc = Router::new(with_billing_tier(context(&nats)), Config::default())
        .await
        .unwrap();
    assert_eq!(svc.decider().tier_names(), ["rules", "billing"]);
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(svc.run(shutdown.clone()));
    nats.bus
        .publish(
            subject::TASK_RECEIVED,
            &received("t-bill", text("Why is this invoice so high?")),
        )
        .await
        .unwrap();
    let event = first_event(&nats, &subject::agent("billing")).await;
    shutdown.cancel();
    handle.await.unwrap().unwrap();
    let Some(Body::TaskRouted(routed)) = &event.body else {
        panic!("not routed: {event:?}")
    };
    let decision = routed.decision.as_ref().unwrap();
    assert_eq!(decision.tier(), DecisionTier::Classifier);
    assert_eq!(decision.spec.as_ref().unwrap().role, "billing");
    assert_eq!(decision.matched_by, "billing");
}

#[tokio::test]
async fn decision_tiers_orders_tiers_and_refuses_unknown_or_repeated_ones() {
    let nats = TestNats::start().await;
    let only_billing = Config {
        tiers: vec!["billing".into()],
        ..Config::default()
    };
    let svc = Router::new(with_billing_tier(context(&nats)), only_billing)
        .await
        .unwrap();
    assert_eq!(svc.decider().tier_names(), ["billing"]);

    let unknown = Config {
        tiers: vec!["rules".into(), "oracle".into()],
        ..Config::default()
    };
    let err = Router::new(with_billing_tier(context(&nats)), unknown)
        .await
        .err()
        .expect("an unknown tier must be refused");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("\"oracle\", which is not registered")
            && msg.contains("registered tiers: billing, embedding, llm, rules"),
        "{msg}"
    );

    let twice = Config {
        tiers: vec!["rules".into(), "rules".into()],
        ..Config::default()
    };
    let err = Router::new(context(&nats), twice).await.err().unwrap();
    assert!(err.to_string().contains("lists \"rules\" twice"), "{err}");
}

#[tokio::test]
async fn rules_may_route_only_to_catalog_roles() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(
        &path,
        "[defaults]\nenvironment = \"development\"\nfallback = \"x\"\n\
         [[rules]]\nname = \"x\"\nrole = \"billing\"\ntask_type = \"a\"\nrisk = \"low\"\n",
    )
    .unwrap();
    let config = Config {
        rules_path: Some(path.clone()),
        ..Config::default()
    };
    let err = Router::new(context(&nats), config.clone())
        .await
        .err()
        .expect("billing is not in the default catalog");
    let msg = err.to_string();
    assert!(
        msg.contains("rule \"x\": role \"billing\" is not in [catalog] roles")
            && msg.contains("or add it there"),
        "{msg}"
    );
    // The same file loads once the catalog lists the role.
    let ctx = context(&nats).with_catalog(catalog_with_billing());
    Router::new(ctx, config).await.unwrap();
}

#[tokio::test]
async fn list_roles_reports_the_configured_catalog() {
    let nats = TestNats::start().await;
    let ctx = context(&nats).with_catalog(catalog_with_billing());
    let (mut client, _server) = serve_grpc(&ctx).await;
    let err = client
        .list_roles(baton_proto::ListRolesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let token = ctx
        .auth
        .mint("eve", "acme", &[Role::Submitter], Duration::from_secs(300));
    let mut req = tonic::Request::new(baton_proto::ListRolesRequest {});
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let resp = client.list_roles(req).await.unwrap().into_inner();
    assert_eq!(resp.roles.len(), 13);
    assert_eq!(resp.roles.first().map(String::as_str), Some("drift"));
    assert_eq!(resp.roles.last().map(String::as_str), Some("billing"));
    assert_eq!(resp.environments, ["development", "staging", "production"]);
}
