//! Nobody bypasses the gate on NATS: against `baton up`'s own nats-server (with the identities
//! it made), an unauthenticated client cannot connect, a trigger publisher cannot forge
//! `task.approved` (so no action runs), a service cannot publish outside its permissions, and a
//! trigger publisher cannot pick its tenant.

use baton_proto::event::Body;
use baton_proto::{
    Action, Event, GetTaskRequest, HttpAction, ListTasksRequest, Phase, Plan, Step, Task,
    TaskApproved, action, subject,
};
use baton_runtime::auth::Role;
use baton_tests::{Db, Harness, counting_server};
use prost::Message as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// The issue's forgery: a made-up task, a plan of one HTTP PUT to `url`, approved by nobody.
fn forged_approval(url: &str) -> Event {
    let task_id = "forged-1";
    let plan = Plan {
        task_id: task_id.into(),
        summary: "forged".into(),
        phases: vec![Phase {
            name: "p1".into(),
            steps: vec![Step {
                action: Some(Action {
                    idempotency_key: format!("{task_id}:p1:x:apply"),
                    description: "put".into(),
                    kind: Some(action::Kind::Http(HttpAction {
                        method: "PUT".into(),
                        url: url.into(),
                        body: b"{}".to_vec(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        total_assets: 1,
        ..Default::default()
    };
    Event::first(
        task_id,
        "default",
        "approved",
        "validation",
        Body::TaskApproved(TaskApproved {
            task: Some(Task {
                task_id: task_id.into(),
                tenant: "default".into(),
                ..Default::default()
            }),
            plan: Some(plan),
            ..Default::default()
        }),
    )
}

/// Whether the main stream holds a message on `subject` (read as the admin).
async fn stored(h: &Harness, subject: &str) -> bool {
    // Give a stored message time to land before saying it did not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stream = h
        .baton
        .ctx
        .bus
        .jetstream()
        .get_stream("BATON")
        .await
        .unwrap();
    stream
        .get_last_raw_message_by_subject(subject)
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_approval_is_refused_by_nats_and_no_action_runs() {
    let h = Harness::start(Db::Sqlite).await;
    let (url, hits) = counting_server().await;
    let forged = forged_approval(&url).encode_to_vec();

    // No credentials: the server refuses the connection itself.
    let anonymous = async_nats::connect(&h.baton.config.common.nats.url).await;
    assert!(
        anonymous.is_err(),
        "an unauthenticated client connected to baton up's nats-server"
    );

    // A trigger publisher (a real credential) publishes the forged event.
    let trigger = h.nats().await;
    trigger
        .publish(subject::TASK_APPROVED, forged.clone().into())
        .await
        .unwrap();
    trigger.flush().await.unwrap();
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(trigger.clone());
    let acked = js.publish(subject::TASK_APPROVED, forged.into()).await;
    let acked = match acked {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(acked.is_err(), "the stream acknowledged a forged approval");
    assert!(!stored(&h, subject::TASK_APPROVED).await);

    // Nothing ran, and Baton knows no such task.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the forged PUT was performed"
    );
    let mut admin = h.clients("test-admin", &[Role::Admin]).await;
    let got = admin
        .tasks
        .get_task(GetTaskRequest {
            task_id: "forged-1".into(),
        })
        .await;
    assert_eq!(got.unwrap_err().code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_publishing_outside_its_permissions_is_refused_by_nats() {
    let h = Harness::start(Db::Sqlite).await;
    let (url, hits) = counting_server().await;
    // The agent runner's own identity: it may propose plans, not approve them.
    let runner = h.nats_as("agent-runner").await;
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(runner.clone());
    let acked = match js
        .publish(
            subject::TASK_APPROVED,
            forged_approval(&url).encode_to_vec().into(),
        )
        .await
    {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(acked.is_err(), "agent-runner published task.approved");
    // Nor may it read another service's consumer (execution's approved plans).
    // (Allowed, the server would answer at once, if only "no messages".)
    let stolen = tokio::time::timeout(
        Duration::from_secs(2),
        runner.request(
            "$JS.API.CONSUMER.MSG.NEXT.BATON.execution",
            "{\"batch\":1,\"no_wait\":true}".into(),
        ),
    )
    .await;
    assert!(
        !matches!(stolen, Ok(Ok(_))),
        "agent-runner pulled from execution's consumer"
    );
    // Audit reads everything and publishes nothing on the path.
    let audit = h.nats_as("audit").await;
    audit
        .publish(subject::TASK_COMPLETED, b"x".to_vec().into())
        .await
        .unwrap();
    audit.flush().await.unwrap();
    assert!(!stored(&h, subject::TASK_APPROVED).await);
    assert!(!stored(&h, subject::TASK_COMPLETED).await);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    // Audit may delete its own two durables (to replace one an older version left with
    // explicit acks), not another service's; nor may another service delete audit's.
    for (who, durable) in [("audit", "execution"), ("validation", "audit")] {
        let client = h.nats_as(who).await;
        let deleted = tokio::time::timeout(
            Duration::from_secs(2),
            client.request(
                format!("$JS.API.CONSUMER.DELETE.BATON.{durable}"),
                "".into(),
            ),
        )
        .await;
        assert!(
            !matches!(deleted, Ok(Ok(_))),
            "{who} deleted the durable {durable}"
        );
        h.baton
            .ctx
            .bus
            .consumer_info("BATON", durable)
            .await
            .unwrap_or_else(|e| panic!("{durable} is gone after {who} tried to delete it: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_publisher_cannot_pick_its_tenant() {
    let h = Harness::start_with(Db::Sqlite, |c| {
        c.nats_server.trigger_tenants = vec!["default".into(), "acme".into(), "globex".into()];
    })
    .await;
    let acme = h.nats_as("trigger-acme").await;

    // Into globex's subjects: refused by the server.
    acme.publish(
        subject::trigger("globex", "cli"),
        r#"{"text":"acme writing as globex"}"#.into(),
    )
    .await
    .unwrap();
    // On its own subject, claiming globex in the header: still acme's.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(baton_bus::TENANT_HEADER, "globex");
    acme.publish_with_headers(
        subject::trigger("acme", "cli"),
        headers,
        r#"{"text":"acme claiming globex"}"#.into(),
    )
    .await
    .unwrap();
    acme.flush().await.unwrap();

    let mut admin = h.clients("test-admin", &[Role::Admin]).await;
    let deadline = tokio::time::Instant::now() + T;
    let task = loop {
        let tasks = admin
            .tasks
            .list_tasks(ListTasksRequest {
                page_size: 500,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tasks;
        if let Some(t) = tasks.iter().find(|t| t.text == "acme claiming globex") {
            assert!(
                tasks.iter().all(|t| t.tenant != "globex"),
                "a task of globex appeared: {tasks:?}"
            );
            break t.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no task within {T:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(task.tenant, "acme");
    assert!(!stored(&h, &subject::trigger("globex", "cli")).await);
    // Globex's own caller sees none of it.
    let mut globex = h
        .clients_of("globex-ops", "globex", &[Role::Operator])
        .await;
    let theirs = globex
        .tasks
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(theirs.is_empty(), "{theirs:?}");
}

/// The same with one process per service (`baton serve`) against an external nats-server
/// configured with what `baton nats-config` prints: the services work with their own narrow
/// identities, and the forgery is refused from a trigger publisher and from a service's own
/// identity (a compromised ingestion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separately_started_services_with_their_own_identities_refuse_the_forgery() {
    use baton::nats_auth::Identities;
    use baton::up::{Baton, ServiceName};
    let data = tempfile::tempdir().unwrap();
    let mut config = baton_tests::test_config(data.path());
    config.agents.noop_roles = vec!["assistant".into()];
    config.audit.database_url = baton_audit::Config::sqlite_url(data.path());
    let plugins = baton_runtime::plugins::Plugins::default();
    let ids = Identities::prepare(&config, &plugins, &data.path().join("keys")).unwrap();
    let server_conf = data.path().join("auth.conf");
    ids.write_server_config(&server_conf).unwrap();
    let store = data.path().join("store");
    let server = baton_bus::server::NatsServer::start_with_config(
        "nats-server",
        &store,
        0,
        Some(&server_conf),
    )
    .await
    .unwrap();
    config.common.nats.url = server.url().to_string();
    // `baton nats-config --create-streams`: the admin makes the streams, once.
    baton_bus::Bus::connect(ids.bus_config(&config.common.nats, baton_bus::identity::ADMIN))
        .await
        .unwrap();

    let mut running = Vec::new();
    for service in ServiceName::ALL {
        let mut c = config.clone();
        c.common.nats = ids.bus_config(&config.common.nats, &service.to_string());
        let b = Baton::start(c, &[service])
            .await
            .unwrap_or_else(|e| panic!("{service} did not start with its own identity: {e}"));
        running.push(b);
    }
    let audit = running.last().unwrap();
    let url = audit.grpc_url();
    let token = audit.token("test-admin", "default", &[Role::Admin]);
    let mut admin = baton::client::Clients::connect(&url, &token).await.unwrap();

    let (target, hits) = counting_server().await;
    let forged = forged_approval(&target).encode_to_vec();
    for user in ["trigger-default", "ingestion"] {
        let client = baton_bus::identity::client_as(
            &config.common.nats.url,
            user,
            ids.seed_file(user).unwrap(),
        )
        .await
        .unwrap();
        client
            .publish(subject::TASK_APPROVED, forged.clone().into())
            .await
            .unwrap();
        client.flush().await.unwrap();
    }

    // A real trigger still runs to completion through the six narrow identities.
    let publisher = baton_bus::identity::client_as(
        &config.common.nats.url,
        "trigger-default",
        ids.seed_file("trigger-default").unwrap(),
    )
    .await
    .unwrap();
    publisher
        .publish(
            subject::trigger("default", "cli"),
            r#"{"text":"separate","role":"assistant","environment":"development"}"#.into(),
        )
        .await
        .unwrap();
    publisher.flush().await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let tasks = admin
            .tasks
            .list_tasks(ListTasksRequest {
                status: baton_proto::TaskStatus::Completed as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tasks;
        if tasks.iter().any(|t| t.text == "separate") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the trigger did not complete within {T:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the forged PUT was performed"
    );
    let got = admin
        .tasks
        .get_task(GetTaskRequest {
            task_id: "forged-1".into(),
        })
        .await;
    assert_eq!(got.unwrap_err().code(), tonic::Code::NotFound);
    for b in running {
        b.stop().await;
    }
    server.stop().await;
}
