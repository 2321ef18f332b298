//! Ingestion against a real nats-server and a real tonic server: NATS triggers (JSON, malformed,
//! invalid, redelivered, duplicate keys) and gRPC `SubmitTask` (auth, roles, idempotency,
//! validation, rate limit).

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use baton_bus::testing::TestNats;
use baton_ingestion::{Config, DURABLE, Ingestion, rejected_task_id, task_id_for_sequence};
use baton_proto::trigger_service_client::TriggerServiceClient;
use baton_proto::{Event, SubmitTaskRequest, Task, Trigger, TriggerRejected, event::Body, subject};
use baton_runtime::Context;
use baton_runtime::auth::{AuthConfig, Authenticator, Role};
use baton_runtime::metrics::Metrics;
use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(15);

fn context(nats: &TestNats) -> Context {
    let auth = Authenticator::new(&AuthConfig {
        hs256_secret: "x".repeat(32),
        ..Default::default()
    })
    .unwrap();
    Context::new(nats.bus.clone(), auth, Arc::new(Metrics::default()))
}

/// Starts the trigger consumer; cancel the token and await the handle to stop it.
async fn start(
    ctx: &Context,
    config: Config,
) -> (
    CancellationToken,
    JoinHandle<Result<(), baton_ingestion::Error>>,
) {
    let svc = Ingestion::new(ctx.clone(), config).await.unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(svc.run(shutdown.clone()));
    (shutdown, handle)
}

/// Publishes a raw trigger of `tenant` (`default` when `None`) on
/// `baton.trigger.<tenant>.<source>`; returns its stream sequence.
async fn publish_trigger(
    nats: &TestNats,
    source: &str,
    tenant: Option<&str>,
    payload: &[u8],
) -> u64 {
    publish_on(
        nats,
        &subject::trigger(tenant.unwrap_or("default"), source),
        HeaderMap::new(),
        payload,
    )
    .await
}

/// Publishes a raw payload on `subject` with `headers`; returns its stream sequence.
async fn publish_on(nats: &TestNats, subject: &str, headers: HeaderMap, payload: &[u8]) -> u64 {
    nats.bus
        .publish_raw(subject, "", headers, payload.to_vec().into())
        .await
        .unwrap()
        .sequence
}

/// When the stream stored message `seq` (Unix milliseconds): what ingestion derives ids from.
async fn stored_at(nats: &TestNats, seq: u64) -> u64 {
    let stream = nats.bus.jetstream().get_stream("BATON").await.unwrap();
    let message = stream.get_raw_message(seq).await.unwrap();
    (message.time.unix_timestamp_nanos() / 1_000_000) as u64
}

/// Reads events on `filter` from the start of the stream until one satisfies `stop`.
async fn events_until(nats: &TestNats, filter: &str, stop: impl Fn(&Event) -> bool) -> Vec<Event> {
    let stream = nats.bus.jetstream().get_stream("BATON").await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(msg) = messages.next().await {
            let msg = msg.unwrap();
            msg.ack().await.unwrap();
            let event = baton_bus::decode_event(&msg.payload).unwrap();
            let done = stop(&event);
            seen.push(event);
            if done {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no matching event on {filter} within {WAIT:?}; saw {seen:#?}"));
    seen
}

/// Messages stored on exactly `subject`.
async fn count(nats: &TestNats, subject: &str) -> u64 {
    let stream = nats.bus.jetstream().get_stream("BATON").await.unwrap();
    let mut info = stream.info_with_subjects(subject).await.unwrap();
    let mut n = 0;
    while let Some((s, c)) = info.try_next().await.unwrap() {
        if s == subject {
            n += c as u64;
        }
    }
    n
}

fn task_of(event: &Event) -> &Task {
    match &event.body {
        Some(Body::TaskReceived(r)) => r.task.as_ref().expect("task"),
        other => panic!("not a TaskReceived: {other:?}"),
    }
}

fn rejection_of(event: &Event) -> &TriggerRejected {
    match &event.body {
        Some(Body::TriggerRejected(r)) => r,
        other => panic!("not a TriggerRejected: {other:?}"),
    }
}

#[tokio::test]
async fn json_trigger_becomes_a_received_task() {
    let nats = TestNats::start().await;
    let ctx = context(&nats);
    let (shutdown, handle) = start(&ctx, Config::default()).await;

    let seq = publish_trigger(
        &nats,
        "cli",
        Some("acme"),
        br#"{"text":"Fix drift on production web servers","environment":"production","source":"spoofed"}"#,
    )
    .await;
    let events = events_until(&nats, subject::TASK_RECEIVED, |_| true).await;
    shutdown.cancel();
    handle.await.unwrap().unwrap();

    let event = &events[0];
    let task = task_of(event);
    let expected_id = task_id_for_sequence("BATON", seq, stored_at(&nats, seq).await).to_string();
    assert_eq!(task.task_id, expected_id);
    assert_eq!(event.task_id, expected_id);
    assert_eq!(event.event_id, format!("{expected_id}.received"));
    assert_eq!(event.producer, "ingestion");
    assert_eq!(
        (event.tenant.as_str(), task.tenant.as_str()),
        ("acme", "acme")
    );
    assert_eq!(task.submitted_by, "nats:cli");
    let trigger = task.trigger.as_ref().unwrap();
    assert_eq!(
        trigger.source, "cli",
        "the subject token wins over the payload's source"
    );
    assert_eq!(trigger.text, "Fix drift on production web servers");
    assert_eq!(trigger.environment, "production");
    assert!(task.received_at.is_some());
}

#[tokio::test]
async fn a_triggers_tenant_is_its_subjects_whatever_header_it_sets() {
    let nats = TestNats::start().await;
    let ctx = context(&nats);
    let (shutdown, handle) = start(&ctx, Config::default()).await;

    let trigger = Trigger {
        text: "Patch the staging db".into(),
        role: "patch".into(),
        ..Default::default()
    };
    // The publisher may publish only under `ops` (its NATS identity); it claims `acme`.
    let mut headers = HeaderMap::new();
    headers.insert(baton_bus::TENANT_HEADER, "acme");
    publish_on(
        &nats,
        &subject::trigger("ops", "webhook"),
        headers,
        &prost::Message::encode_to_vec(&trigger),
    )
    .await;
    // A subject with a tenant and no source is the source `nats`.
    publish_on(
        &nats,
        "baton.trigger.ops",
        HeaderMap::new(),
        br#"{"text":"Fix drift"}"#,
    )
    .await;
    // Both tasks, in whichever order ingestion handled them.
    let n = std::cell::Cell::new(0);
    let seen: std::collections::BTreeMap<String, Event> =
        events_until(&nats, subject::TASK_RECEIVED, |_| {
            n.set(n.get() + 1);
            n.get() == 2
        })
        .await
        .into_iter()
        .map(|e| (task_of(&e).submitted_by.clone(), e))
        .collect();
    shutdown.cancel();
    handle.await.unwrap().unwrap();

    let event = &seen["nats:webhook"];
    let task = task_of(event);
    assert_eq!(
        (event.tenant.as_str(), task.tenant.as_str()),
        ("ops", "ops")
    );
    assert_eq!(task.trigger.as_ref().unwrap().role, "patch");
    assert_eq!(task_of(&seen["nats:nats"]).tenant, "ops");
}

#[tokio::test]
async fn malformed_json_is_rejected_with_the_parse_error() {
    let nats = TestNats::start().await;
    let ctx = context(&nats);
    let (shutdown, handle) = start(&ctx, Config::default()).await;

    let payload = br#"{"text": "Fix drift" "environment": "production"}"#;
    let seq = publish_trigger(&nats, "cli", Some("acme"), payload).await;
    let events = events_until(&nats, subject::TRIGGER_REJECTED, |_| true).await;
    shutdown.cancel();
    handle.await.unwrap().unwrap();

    let event = &events[0];
    let rejected = rejection_of(event);
    let task_id = rejected_task_id("BATON", seq, stored_at(&nats, seq).await).to_string();
    assert_eq!(event.task_id, task_id);
    assert_eq!(event.event_id, format!("{task_id}.rejected"));
    assert_eq!(event.tenant, "acme");
    assert!(
        rejected.reason.starts_with("malformed JSON trigger"),
        "{}",
        rejected.reason
    );
    assert!(
        rejected.reason.contains("line 1 column"),
        "{}",
        rejected.reason
    );
    assert_eq!(rejected.subject, "baton.trigger.acme.cli");
    // A payload this small is kept whole as the prefix, with its size and SHA-256
    // (`printf '%s' '<payload>' | sha256sum`); the payload field of older builds stays empty.
    assert_eq!(rejected.payload_prefix, payload);
    assert_eq!(rejected.payload_size, payload.len() as u64);
    assert_eq!(
        rejected.payload_sha256,
        "337585d726b3095f27d11b5f2435f55766bc565fdebe5c94b6cfb10322062a00"
    );
    assert!(rejected.payload.is_empty());
    // The consumer handled (and acked) the trigger: nothing became a task.
    assert_eq!(count(&nats, subject::TASK_RECEIVED).await, 0);
    let info = nats
        .bus
        .pull_consumer(&baton_bus::ConsumerSpec::new(
            "ingestion",
            DURABLE,
            subject::TRIGGERS,
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
        "the rejected trigger was acked"
    );
}

#[tokio::test]
async fn a_large_malformed_trigger_leaves_a_bounded_rejection() {
    let nats = TestNats::start().await;
    let ctx = context(&nats);
    let (shutdown, handle) = start(&ctx, Config::default()).await;

    // Close to NATS's default max_payload (1 MiB); the JSON parser's error quotes the whole
    // string of the wrong type, so the reason would be as large as the payload if not cut.
    let payload = format!(r#"{{"labels": "{}"}}"#, "x".repeat(1_000_000)).into_bytes();
    publish_trigger(&nats, "cli", Some("acme"), &payload).await;
    let events = events_until(&nats, subject::TRIGGER_REJECTED, |_| true).await;
    shutdown.cancel();
    handle.await.unwrap().unwrap();

    let rejected = rejection_of(&events[0]);
    assert_eq!(rejected.payload_size, payload.len() as u64);
    assert_eq!(
        rejected.payload_prefix,
        &payload[..baton_ingestion::REJECTED_PREFIX_MAX]
    );
    assert_eq!(rejected.payload_sha256.len(), 64);
    assert!(rejected.payload.is_empty());
    assert!(
        rejected
            .reason
            .starts_with("malformed JSON trigger: invalid type: string"),
        "{}",
        &rejected.reason[..100]
    );
    assert!(
        rejected.reason.len() <= baton_proto::TRIGGER_REJECTED_REASON_MAX,
        "the reason is bounded: {} bytes",
        rejected.reason.len()
    );
    assert!(rejected.reason.ends_with('…'));
}

#[tokio::test]
async fn unknown_environment_is_rejected_with_its_message() {
    let nats = TestNats::start().await;
    let ctx = context(&nats);
    let (shutdown, handle) = start(&ctx, Config::default()).await;

    publish_trigger(
        &nats,
        "cli",
        None,
        br#"{"text":"Fix drift","environment":"prod"}"#,
    )
    .await;
    let events = events_until(&nats, subject::TRIGGER_REJECTED, |_| true).await;
    shutdown.cancel();
    handle.await.unwrap().unwrap();

    let event = &events[0];
    assert_eq!(event.tenant, "default");
    let reason = &rejection_of(event).reason;
    assert!(
        reason.starts_with(r#"unknown environment "prod": use development, staging or production"#),
        "{reason}"
    );
    assert_eq!(count(&nats, subject::TASK_RECEIVED).await, 0);
}

#[tokio::test]
async fn redelivered_and_duplicate_triggers_make_one_task_each() {
    let nats = TestNats::start().await;
    let ctx = context(&nats);
    let config = Config {
        concurrency: 1,
        ..Config::default()
    };

    // First run: trigger A becomes a task.
    let (shutdown, handle) = start(&ctx, config.clone()).await;
    let seq_a = publish_trigger(&nats, "cli", Some("acme"), br#"{"text":"Fix drift"}"#).await;
    let id_a = task_id_for_sequence("BATON", seq_a, stored_at(&nats, seq_a).await).to_string();
    events_until(&nats, subject::TASK_RECEIVED, |e| e.task_id == id_a).await;
    shutdown.cancel();
    handle.await.unwrap().unwrap();

    // Forget the consumer's position: a new consumer gets A delivered again.
    let stream = nats.bus.jetstream().get_stream("BATON").await.unwrap();
    stream.delete_consumer(DURABLE).await.unwrap();

    // Second run: A again, then C and D with the same key, then the marker B. With
    // concurrency 1 they are handled in stream order, so once B is in, the others are done.
    let (shutdown, handle) = start(&ctx, config).await;
    let seq_c = publish_trigger(
        &nats,
        "cli",
        Some("acme"),
        br#"{"text":"Patch web","idempotency_key":"k-1"}"#,
    )
    .await;
    publish_trigger(
        &nats,
        "cli",
        Some("acme"),
        br#"{"text":"Patch web","idempotency_key":"k-1"}"#,
    )
    .await;
    let seq_b = publish_trigger(&nats, "cli", Some("acme"), br#"{"text":"marker"}"#).await;
    let id_b = task_id_for_sequence("BATON", seq_b, stored_at(&nats, seq_b).await).to_string();
    let events = events_until(&nats, subject::TASK_RECEIVED, |e| e.task_id == id_b).await;
    shutdown.cancel();
    handle.await.unwrap().unwrap();

    let ids: Vec<&str> = events.iter().map(|e| e.task_id.as_str()).collect();
    // The key's task is the first trigger that carried it (C); D was answered with C's id.
    let id_key = task_id_for_sequence("BATON", seq_c, stored_at(&nats, seq_c).await).to_string();
    assert_eq!(ids, [id_a.as_str(), id_key.as_str(), id_b.as_str()]);
    assert_eq!(
        count(&nats, subject::TASK_RECEIVED).await,
        3,
        "one task per trigger, redelivery included"
    );
}

// ---- gRPC ----

struct Grpc {
    nats: TestNats,
    ctx: Context,
    client: TriggerServiceClient<Channel>,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn grpc(config: Config) -> Grpc {
    let nats = TestNats::start().await;
    let ctx = context(&nats);
    let svc = Ingestion::new(ctx.clone(), config).await.unwrap();
    let mut routes = tonic::service::RoutesBuilder::default();
    svc.add_grpc(&mut routes);
    let shutdown = CancellationToken::new();
    let (addr, _task) = baton_runtime::grpc::serve(
        "127.0.0.1:0".parse().unwrap(),
        routes.routes(),
        baton_ingestion::GRPC_SERVICES,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let client = TriggerServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Grpc {
        nats,
        ctx,
        client,
        _shutdown: shutdown.drop_guard(),
    }
}

fn request(token: Option<&str>, trigger: Trigger) -> tonic::Request<SubmitTaskRequest> {
    let mut req = tonic::Request::new(SubmitTaskRequest {
        trigger: Some(trigger),
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

fn text(t: &str) -> Trigger {
    Trigger {
        text: t.into(),
        ..Default::default()
    }
}

fn token(ctx: &Context, sub: &str, tenant: &str, roles: &[Role]) -> String {
    ctx.auth.mint(sub, tenant, roles, Duration::from_secs(300))
}

#[tokio::test]
async fn grpc_submit_with_a_submitter_token_publishes_the_task() {
    let mut g = grpc(Config::default()).await;
    let t = token(&g.ctx, "alice", "acme", &[Role::Submitter]);
    let trigger = Trigger {
        environment: "staging".into(),
        source: "spoofed".into(),
        ..text("Patch the web tier")
    };
    let resp = g
        .client
        .submit_task(request(Some(&t), trigger))
        .await
        .unwrap()
        .into_inner();
    assert!(!resp.deduplicated);
    let id = uuid::Uuid::parse_str(&resp.task_id).unwrap();
    assert_eq!(id.get_version_num(), 7, "no key: a fresh v7 id");

    let events = events_until(&g.nats, subject::TASK_RECEIVED, |_| true).await;
    let task = task_of(&events[0]);
    assert_eq!(task.task_id, resp.task_id);
    assert_eq!(
        (task.tenant.as_str(), task.submitted_by.as_str()),
        ("acme", "alice")
    );
    let trigger = task.trigger.as_ref().unwrap();
    assert_eq!(
        (trigger.source.as_str(), trigger.environment.as_str()),
        ("grpc", "staging")
    );

    // Admin implies submitter.
    let admin = token(&g.ctx, "root", "ops", &[Role::Admin]);
    g.client
        .submit_task(request(Some(&admin), text("Run the SOP")))
        .await
        .unwrap();
}

#[tokio::test]
async fn grpc_without_token_is_unauthenticated_and_approver_is_denied() {
    let mut g = grpc(Config::default()).await;
    let err = g
        .client
        .submit_task(request(None, text("Fix drift")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    let approver = token(&g.ctx, "bob", "acme", &[Role::Approver]);
    let err = g
        .client
        .submit_task(request(Some(&approver), text("Fix drift")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("submitter"), "{}", err.message());
    assert_eq!(count(&g.nats, subject::TASK_RECEIVED).await, 0);
}

#[tokio::test]
async fn grpc_same_idempotency_key_gives_the_same_task() {
    let mut g = grpc(Config::default()).await;
    let t = token(&g.ctx, "alice", "acme", &[Role::Submitter]);
    let keyed = || Trigger {
        idempotency_key: "deploy-42".into(),
        ..text("Fix drift on web servers")
    };
    let first = g
        .client
        .submit_task(request(Some(&t), keyed()))
        .await
        .unwrap()
        .into_inner();
    let second = g
        .client
        .submit_task(request(Some(&t), keyed()))
        .await
        .unwrap()
        .into_inner();
    let id: uuid::Uuid = first.task_id.parse().expect("a UUID");
    assert_eq!(id.get_version_num(), 7, "time-ordered");
    assert_eq!(
        second.task_id, first.task_id,
        "the second submission names the first's task"
    );
    assert!(!first.deduplicated);
    assert!(second.deduplicated);
    assert_eq!(count(&g.nats, subject::TASK_RECEIVED).await, 1);
}

#[tokio::test]
async fn grpc_invalid_trigger_is_invalid_argument_with_the_reason() {
    let mut g = grpc(Config::default()).await;
    let t = token(&g.ctx, "alice", "acme", &[Role::Submitter]);
    let err = g
        .client
        .submit_task(request(Some(&t), text("   ")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("text is empty"), "{}", err.message());

    let wrong_role = Trigger {
        role: "wizard".into(),
        ..text("Fix drift")
    };
    let err = g
        .client
        .submit_task(request(Some(&t), wrong_role))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("unknown role \"wizard\""),
        "{}",
        err.message()
    );

    let mut missing = tonic::Request::new(SubmitTaskRequest { trigger: None });
    missing
        .metadata_mut()
        .insert("authorization", format!("Bearer {t}").parse().unwrap());
    let err = g.client.submit_task(missing).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(count(&g.nats, subject::TASK_RECEIVED).await, 0);
}

#[tokio::test]
async fn grpc_rate_limit_is_per_tenant() {
    let mut g = grpc(Config {
        rate_limit_per_second: 1,
        burst: 2,
        ..Config::default()
    })
    .await;
    let acme = token(&g.ctx, "alice", "acme", &[Role::Submitter]);
    let mut limited = None;
    // Burst 2 at 1/s: ten calls in a row cannot all pass.
    for _ in 0..10 {
        if let Err(e) = g
            .client
            .submit_task(request(Some(&acme), text("Fix drift")))
            .await
        {
            limited = Some(e);
            break;
        }
    }
    let err = limited.expect("the tenant was rate limited");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("tenant acme exceeds 1 submissions per second"),
        "{}",
        err.message()
    );
    // Another tenant has its own bucket.
    let other = token(&g.ctx, "carol", "globex", &[Role::Submitter]);
    g.client
        .submit_task(request(Some(&other), text("Fix drift")))
        .await
        .unwrap();
}
