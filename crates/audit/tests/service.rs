//! The audit service end to end: a real nats-server, a SQLite file, the writer loop and
//! `TaskService` over a real tonic server on loopback.

use baton_audit::{Audit, Config};
use baton_bus::testing::TestNats;
use baton_proto::task_service_client::TaskServiceClient;
use baton_proto::{
    AuditRecord, DeadLetter, Event, GetTaskRequest, GetTaskResponse, ListTasksRequest,
    PlanProposed, Task, TaskCompleted, TaskReceived, TaskStatus, Trigger, VerifyAuditRequest,
    WatchTaskRequest, event::Body, subject,
};
use baton_runtime::auth::{AuthConfig, Authenticator, Role};
use baton_runtime::{Context, metrics::Metrics};
use futures::StreamExt as _;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// Bounds every wait so a broken service fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(15);

struct Harness {
    nats: TestNats,
    client: TaskServiceClient<Channel>,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    writer: tokio::task::JoinHandle<Result<(), baton_audit::Error>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Harness {
        let nats = TestNats::start().await;
        let bus = nats.bus.clone();
        Harness::start_on(nats, bus).await
    }

    /// Audit on `bus` (connected to `nats` with settings of the test's own).
    async fn start_on(nats: TestNats, bus: baton_bus::Bus) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let auth = Authenticator::new(&AuthConfig {
            hs256_secret: "x".repeat(32),
            ..Default::default()
        })
        .unwrap();
        let metrics = Arc::new(Metrics::default());
        let ctx = Context::new(bus, auth, metrics.clone());
        let auth = ctx.auth.clone();
        let config = Config {
            database_url: Config::sqlite_url(dir.path()),
            signing_key: dir.path().join("audit.key"),
            // A watch of a task not (yet) stored, or of another tenant's, answers NOT_FOUND
            // after this (the default's 60 s would make that test wait a minute); long enough
            // for a watch started before its task's first record to see it stored.
            watch_wait: Duration::from_secs(5),
            ..Config::default()
        };
        let audit = Audit::new(ctx, config).await.unwrap();
        let mut routes = tonic::service::RoutesBuilder::default();
        audit.add_grpc(&mut routes);
        let shutdown = CancellationToken::new();
        let (addr, _server) = baton_runtime::grpc::serve(
            "127.0.0.1:0".parse().unwrap(),
            routes.routes(),
            baton_audit::GRPC_SERVICES,
            shutdown.clone(),
        )
        .await
        .unwrap();
        let writer = tokio::spawn(audit.run(shutdown.clone()));
        let client = TaskServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Harness {
            nats,
            client,
            auth,
            metrics,
            shutdown,
            writer,
            _dir: dir,
        }
    }

    fn req<T>(&self, msg: T, tenant: &str, roles: &[Role]) -> Request<T> {
        let token = self
            .auth
            .mint("tester", tenant, roles, Duration::from_secs(300));
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    }

    async fn publish(&self, subject: &str, e: &Event) {
        self.nats.bus.publish(subject, e).await.unwrap();
    }

    /// Polls GetTask (as acme) until the task has `n` records.
    async fn wait_for(&self, task: &str, n: usize) -> GetTaskResponse {
        tokio::time::timeout(WAIT, async {
            loop {
                let r = self
                    .client
                    .clone()
                    .get_task(self.req(
                        GetTaskRequest {
                            task_id: task.into(),
                        },
                        "acme",
                        &[Role::Submitter],
                    ))
                    .await;
                match r {
                    Ok(r) if r.get_ref().events.len() >= n => return r.into_inner(),
                    Ok(_) => {}
                    Err(s) if s.code() == Code::NotFound => {}
                    Err(s) => panic!("get_task: {s}"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("task {task} did not reach {n} records"))
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.writer.await.unwrap().unwrap();
    }
}

fn received(task: &str) -> Event {
    Event::first(
        task,
        "acme",
        "received",
        "ingestion",
        Body::TaskReceived(TaskReceived {
            task: Some(Task {
                task_id: task.into(),
                tenant: "acme".into(),
                submitted_by: "alice".into(),
                trigger: Some(Trigger {
                    text: "fix drift".into(),
                    ..Default::default()
                }),
                received_at: None,
            }),
        }),
    )
}

fn proposed(after: &Event) -> Event {
    after.follow(
        "proposed",
        "agent-runner",
        Body::PlanProposed(PlanProposed::default()),
    )
}

fn completed(after: &Event) -> Event {
    after.follow(
        "completed",
        "execution",
        Body::TaskCompleted(TaskCompleted::default()),
    )
}

fn ids(records: &[AuditRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            r.event
                .as_ref()
                .map(|e| e.event_id.clone())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn published_events_are_stored_in_order_and_tenants_are_isolated() {
    let h = Harness::start().await;
    let r = received("t1");
    let p = proposed(&r);
    // A raw trigger is not audited (ingestion's task_received carries it).
    h.nats
        .bus
        .publish_raw(
            &subject::trigger("default", "cli"),
            "",
            Default::default(),
            b"{\"text\":\"hi\"}".to_vec().into(),
        )
        .await
        .unwrap();
    h.publish(subject::TASK_RECEIVED, &r).await;
    h.publish(subject::TASK_PROPOSED, &p).await;
    let got = h.wait_for("t1", 2).await;
    assert_eq!(ids(&got.events), ["t1.received", "t1.proposed"]);
    assert_eq!(got.events[0].subject, subject::TASK_RECEIVED);
    assert!(got.events[0].sequence < got.events[1].sequence);
    assert_eq!(got.events[1].prev_hash, got.events[0].hash);
    let task = got.task.unwrap();
    assert_eq!(
        (task.status(), task.text.as_str(), task.event_count),
        (TaskStatus::Proposed, "fix drift", 2)
    );

    let mut c = h.client.clone();
    let other = c
        .get_task(h.req(
            GetTaskRequest {
                task_id: "t1".into(),
            },
            "globex",
            &[Role::Submitter],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        other.code(),
        Code::NotFound,
        "another tenant must not see it"
    );
    let admin = c
        .get_task(h.req(
            GetTaskRequest {
                task_id: "t1".into(),
            },
            "ops",
            &[Role::Admin],
        ))
        .await
        .unwrap();
    assert_eq!(admin.get_ref().events.len(), 2);
    let anon = c
        .get_task(Request::new(GetTaskRequest {
            task_id: "t1".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(anon.code(), Code::Unauthenticated);

    let listed = c
        .list_tasks(h.req(ListTasksRequest::default(), "acme", &[Role::Submitter]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .tasks
            .iter()
            .map(|t| t.task_id.as_str())
            .collect::<Vec<_>>(),
        ["t1"]
    );
    let globex = c
        .list_tasks(h.req(ListTasksRequest::default(), "globex", &[Role::Submitter]))
        .await
        .unwrap()
        .into_inner();
    assert!(globex.tasks.is_empty());
    let denied = c
        .list_tasks(h.req(
            ListTasksRequest {
                tenant: "acme".into(),
                ..Default::default()
            },
            "globex",
            &[Role::Submitter],
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let bad_token = c
        .list_tasks(h.req(
            ListTasksRequest {
                page_token: "xyz".into(),
                ..Default::default()
            },
            "acme",
            &[Role::Submitter],
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);

    // Verification needs the operator role and counts exactly the two events (no trigger).
    let denied = c
        .verify_audit(h.req(VerifyAuditRequest {}, "acme", &[Role::Submitter]))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let v = c
        .verify_audit(h.req(VerifyAuditRequest {}, "acme", &[Role::Operator]))
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.records_checked, 2);
    assert_eq!(h.metrics.audit_records.get(), 2);
    h.stop().await;
}

#[tokio::test]
async fn watch_streams_live_records_and_ends_at_completion() {
    let h = Harness::start().await;
    // Watch before the task exists: the call waits for it.
    let mut c = h.client.clone();
    let req = h.req(
        WatchTaskRequest {
            task_id: "t1".into(),
        },
        "acme",
        &[Role::Submitter],
    );
    let watch = tokio::spawn(async move {
        let mut stream = c.watch_task(req).await?.into_inner();
        let mut got = Vec::new();
        while let Some(r) = stream.message().await? {
            got.push(r);
        }
        Ok::<_, tonic::Status>(got)
    });
    let r = received("t1");
    let p = proposed(&r);
    h.publish(subject::TASK_RECEIVED, &r).await;
    // Let the first record be stored before the rest, so both the stored and live paths run.
    h.wait_for("t1", 1).await;
    h.publish(subject::TASK_PROPOSED, &p).await;
    h.publish(subject::TASK_COMPLETED, &completed(&p)).await;
    let got = tokio::time::timeout(WAIT, watch)
        .await
        .expect("the stream ends after task_completed")
        .unwrap()
        .unwrap();
    assert_eq!(ids(&got), ["t1.received", "t1.proposed", "t1.completed"]);

    // A watch of a finished task replays it and ends.
    let mut c = h.client.clone();
    let mut stream = c
        .watch_task(h.req(
            WatchTaskRequest {
                task_id: "t1".into(),
            },
            "acme",
            &[Role::Submitter],
        ))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .is_some()
    {
        n += 1;
    }
    assert_eq!(n, 3);
    let hidden = c
        .watch_task(h.req(
            WatchTaskRequest {
                task_id: "t1".into(),
            },
            "globex",
            &[Role::Submitter],
        ))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    h.stop().await;
}

#[tokio::test]
async fn dead_letters_and_redeliveries_are_audited_once() {
    let h = Harness::start().await;
    let r = received("t1");
    h.publish(subject::TASK_RECEIVED, &r).await;
    // The same event again under another message id (as after the duplicate window): the
    // stream keeps both, the audit log one.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Baton-Task-Id", "t1");
    h.nats
        .bus
        .publish_raw(
            subject::TASK_RECEIVED,
            "t1.received.again",
            headers,
            prost::Message::encode_to_vec(&r).into(),
        )
        .await
        .unwrap();
    // A dead letter follows the message it is about; the two arrive on different streams, whose
    // relative order the audit writer does not define, so let the first be stored first.
    h.wait_for("t1", 1).await;
    let dead = Event {
        event_id: "dead.decision.BATON.1".into(),
        task_id: "t1".into(),
        tenant: "acme".into(),
        producer: "decision".into(),
        time: Some(baton_proto::now()),
        body: Some(Body::DeadLetter(DeadLetter {
            service: "decision".into(),
            subject: subject::TASK_RECEIVED.into(),
            reason: "poison message: bad spec".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    h.publish(&subject::dead("x"), &dead).await;
    let got = h.wait_for("t1", 2).await;
    assert_eq!(ids(&got.events), ["t1.received", "dead.decision.BATON.1"]);
    assert_eq!(got.events[1].subject, "baton.dead.x");
    let task = got.task.unwrap();
    assert_eq!(
        (task.status(), task.reason.as_str()),
        (
            TaskStatus::Failed,
            "dead-lettered by decision: poison message: bad spec"
        )
    );

    // An undecodable payload is kept too, under its header ids.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Baton-Task-Id", "t1");
    h.nats
        .bus
        .publish_raw(
            subject::TASK_PROPOSED,
            "junk-1",
            headers,
            b"\xff\xffjunk".to_vec().into(),
        )
        .await
        .unwrap();
    let got = h.wait_for("t1", 3).await;
    assert_eq!(
        got.events.len(),
        3,
        "the redelivered copy must not be stored"
    );
    assert!(got.events[2].event.is_none());
    assert_eq!(got.events[2].subject, subject::TASK_PROPOSED);
    let v = h
        .client
        .clone()
        .verify_audit(h.req(VerifyAuditRequest {}, "ops", &[Role::Admin]))
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok && v.records_checked == 3, "{v:?}");
    h.stop().await;
}

#[tokio::test]
async fn a_message_never_settled_is_dead_lettered_and_then_stored_from_its_dead_letter() {
    let nats = TestNats::start().await;
    // Quick redeliveries, and few: the audit writers before this one "crashed" holding it.
    let config = baton_bus::BusConfig {
        ack_wait: Duration::from_secs(1),
        max_deliver: 2,
        ..nats.config.clone()
    };
    let bus = baton_bus::Bus::connect(config).await.unwrap();
    // Audit's own consumer, as the crashed writers left it.
    let consumer = bus
        .pull_consumer(&baton_audit::consumers(bus.config())[0])
        .await
        .unwrap();
    bus.publish(subject::TASK_RECEIVED, &received("t9"))
        .await
        .unwrap();
    // Delivered twice (max_deliver) and never settled.
    for delivery in 1..=2 {
        let msg = tokio::time::timeout(WAIT, async {
            loop {
                let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
                if let Some(msg) = batch.next().await {
                    return msg.unwrap();
                }
            }
        })
        .await
        .expect("the message is delivered");
        assert_eq!(msg.info().unwrap().delivered, delivery);
    }
    let h = Harness::start_on(nats, bus).await;
    // The third delivery goes to the dead letters, not to the writer; audit's own dead letter
    // then stands for the event it carries, which is stored under its own id.
    let got = h.wait_for("t9", 1).await;
    assert_eq!(ids(&got.events), ["t9.received"]);
    assert_eq!(got.events[0].subject, subject::TASK_RECEIVED);
    assert_eq!(got.task.unwrap().status(), TaskStatus::Received);
    let dead = h
        .nats
        .bus
        .jetstream()
        .get_stream("BATON_DEAD")
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&subject::dead(baton_audit::SERVICE))
        .await
        .expect("a dead letter of audit");
    let Some(Body::DeadLetter(dl)) = baton_bus::decode_event(&dead.payload).unwrap().body else {
        panic!("not a dead letter")
    };
    assert!(dl.reason.contains("without being settled"), "{}", dl.reason);
    assert_eq!(dl.deliveries, 3);
    h.stop().await;
}

#[tokio::test]
async fn a_second_writer_is_refused_while_the_first_lives() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        database_url: Config::sqlite_url(dir.path()),
        signing_key: dir.path().join("audit.key"),
        ..Config::default()
    };
    let ctx = || {
        let auth = Authenticator::new(&AuthConfig {
            hs256_secret: "x".repeat(32),
            ..Default::default()
        })
        .unwrap();
        Context::new(nats.bus.clone(), auth, Arc::new(Metrics::default()))
    };
    let first = Audit::new(ctx(), config.clone()).await.unwrap();
    let refused = Audit::new(ctx(), config.clone())
        .await
        .err()
        .expect("a second writer must be refused");
    let db = dir.path().join("audit.db");
    assert_eq!(
        refused.to_string(),
        format!(
            "another audit writer holds the lock on {}; run one audit replica per database",
            db.display()
        )
    );
    assert!(matches!(refused, baton_audit::Error::WriterLocked { .. }));
    assert_eq!(
        tonic::Status::from(refused).code(),
        Code::FailedPrecondition
    );
    drop(first);
    let second = Audit::new(ctx(), config.clone())
        .await
        .expect("the lock goes with the dropped writer");

    // A writer that ran and stopped releases it too, even while its gRPC side (sharing the
    // store) is still up.
    let mut routes = tonic::service::RoutesBuilder::default();
    second.add_grpc(&mut routes);
    let shutdown = CancellationToken::new();
    let writer = tokio::spawn(second.run(shutdown.clone()));
    shutdown.cancel();
    tokio::time::timeout(WAIT, writer)
        .await
        .expect("writer stops")
        .unwrap()
        .unwrap();
    let third = Audit::new(ctx(), config)
        .await
        .expect("a stopped writer released the lock");
    drop((third, routes));
}

#[tokio::test]
async fn newest_records_removed_while_audit_is_stopped_are_named_against_the_anchor() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        database_url: Config::sqlite_url(dir.path()),
        signing_key: dir.path().join("audit.key"),
        ..Config::default()
    };
    let auth = || {
        Authenticator::new(&AuthConfig {
            hs256_secret: "x".repeat(32),
            ..Default::default()
        })
        .unwrap()
    };
    let ctx = || Context::new(nats.bus.clone(), auth(), Arc::new(Metrics::default()));
    let audit = Audit::new(ctx(), config.clone()).await.unwrap();
    let store = audit.store();
    let mut routes = tonic::service::RoutesBuilder::default();
    audit.add_grpc(&mut routes);
    let shutdown = CancellationToken::new();
    let (addr, _server) = baton_runtime::grpc::serve(
        "127.0.0.1:0".parse().unwrap(),
        routes.routes(),
        baton_audit::GRPC_SERVICES,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let writer = tokio::spawn(audit.run(shutdown.clone()));

    let r = received("t-anchor");
    let p = proposed(&r);
    let c = completed(&p);
    for (subject, e) in [
        (subject::TASK_RECEIVED, &r),
        (subject::TASK_PROPOSED, &p),
        (subject::TASK_COMPLETED, &c),
    ] {
        nats.bus.publish(subject, e).await.unwrap();
    }
    tokio::time::timeout(WAIT, async {
        while store.head().await.sequence < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("three records stored");
    // The anchor follows the stored batches: wait until it names record 3.
    let kv = nats
        .bus
        .kv::<baton_audit::anchor::AnchoredHead>(baton_audit::anchor::ANCHOR_BUCKET, 5)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some((a, _)) = kv.get(baton_audit::anchor::ANCHOR_KEY).await.unwrap()
                && a.sequence == 3
            {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the head is anchored");

    // Removed behind audit's back: VerifyAudit names them against the anchor.
    let db_url = config.database_url.clone();
    let delete_newest = || async {
        use sqlx::Connection as _;
        let mut c = sqlx::SqliteConnection::connect(&db_url).await.unwrap();
        sqlx::query("DELETE FROM audit_log WHERE sequence >= 2")
            .execute(&mut c)
            .await
            .unwrap();
    };
    let token = auth().mint("ops", "acme", &[Role::Operator], Duration::from_secs(60));
    let mut client = TaskServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut verify = Request::new(VerifyAuditRequest {});
    verify
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    delete_newest().await;
    let v = client.verify_audit(verify).await.unwrap().into_inner();
    assert!(!v.ok, "{v:?}");
    assert_eq!(
        v.problem,
        "records 2–3 are missing: the database ends at 1, the anchor at 3 (the newest records were removed)"
    );
    assert_eq!(v.first_bad_sequence, 2);
    shutdown.cancel();
    writer.await.unwrap().unwrap();
    drop(client);

    // Missing while audit is stopped: the restarted writer reloads the shortened head from the
    // database, but refuses it against the anchor, naming the records.
    let refused = Audit::new(ctx(), config.clone())
        .await
        .err()
        .expect("a database behind its anchor is refused");
    assert!(
        matches!(
            refused,
            baton_audit::Error::AnchorAhead {
                database_end: 1,
                anchor: 3
            }
        ),
        "{refused:?}"
    );
    assert!(
        refused
            .to_string()
            .starts_with("records 2–3 are missing: the database ends at 1, the anchor at 3"),
        "{refused}"
    );

    // The operator accepts the loss by deleting the anchor: audit starts, and anchors anew.
    kv.purge(baton_audit::anchor::ANCHOR_KEY).await.unwrap();
    let accepted = Audit::new(ctx(), config)
        .await
        .expect("starts without an anchor");
    let (a, _) = kv
        .get(baton_audit::anchor::ANCHOR_KEY)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.sequence, 1);
    drop(accepted);
}

/// Audit alone (no gRPC) on `nats`, with `adjust`ed settings: the running writer, its store
/// and its shutdown token.
async fn start_writer(
    nats: &TestNats,
    dir: &std::path::Path,
    adjust: impl FnOnce(&mut Config),
) -> (
    Arc<baton_audit::store::Store>,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), baton_audit::Error>>,
) {
    start_writer_metered(nats, dir, adjust, Arc::new(Metrics::default())).await
}

/// [`start_writer`] recording into `metrics`.
async fn start_writer_metered(
    nats: &TestNats,
    dir: &std::path::Path,
    adjust: impl FnOnce(&mut Config),
    metrics: Arc<Metrics>,
) -> (
    Arc<baton_audit::store::Store>,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), baton_audit::Error>>,
) {
    let mut config = Config {
        database_url: Config::sqlite_url(dir),
        signing_key: dir.join("audit.key"),
        ..Config::default()
    };
    adjust(&mut config);
    let auth = Authenticator::new(&AuthConfig {
        hs256_secret: "x".repeat(32),
        ..Default::default()
    })
    .unwrap();
    let ctx = Context::new(nats.bus.clone(), auth, metrics);
    let audit = Audit::new(ctx, config).await.unwrap();
    let store = audit.store();
    let shutdown = CancellationToken::new();
    let writer = tokio::spawn(audit.run(shutdown.clone()));
    (store, shutdown, writer)
}

/// The anchored head and its revision (the bucket's write count: only `head` is written).
async fn anchored(nats: &TestNats) -> (baton_audit::anchor::AnchoredHead, u64) {
    let kv = nats
        .bus
        .kv::<baton_audit::anchor::AnchoredHead>(baton_audit::anchor::ANCHOR_BUCKET, 5)
        .await
        .unwrap();
    kv.get(baton_audit::anchor::ANCHOR_KEY)
        .await
        .unwrap()
        .expect("a head is anchored")
}

/// `n` events (each the first of its own task `<prefix>-<i>`), published one at a time `pace`
/// apart.
async fn publish_paced(nats: &TestNats, prefix: &str, n: usize, pace: Duration) {
    for i in 0..n {
        if i > 0 {
            tokio::time::sleep(pace).await;
        }
        let e = received(&format!("{prefix}-{i}"));
        nats.bus.publish(subject::TASK_RECEIVED, &e).await.unwrap();
    }
}

#[tokio::test]
async fn the_anchor_reaches_the_last_record_when_audit_settles_and_when_it_stops() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Settles: with the default interval the anchor follows a steady trickle to its end.
    let (store, shutdown, writer) = start_writer(&nats, dir.path(), |_| {}).await;
    publish_paced(&nats, "t-settle", 20, Duration::from_millis(10)).await;
    tokio::time::timeout(WAIT, async {
        loop {
            let head = store.head().await;
            let (a, _) = anchored(&nats).await;
            if head.sequence == 20 && a.sequence == 20 {
                assert_eq!(a.hash, head.hash);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the anchor reaches record 20 while audit runs");
    shutdown.cancel();
    writer.await.unwrap().unwrap();

    // Stops: with an interval longer than the whole run, the writer anchors at start and
    // after the first batch, then waits; stopping must still leave the anchor at the last
    // record, before `run` returns.
    let (store, shutdown, writer) = start_writer(&nats, dir.path(), |c| {
        c.anchor_interval = Duration::from_secs(60);
    })
    .await;
    publish_paced(&nats, "t-stop", 20, Duration::from_millis(10)).await;
    tokio::time::timeout(WAIT, async {
        while store.head().await.sequence < 40 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("forty records stored");
    let head = store.head().await;
    shutdown.cancel();
    writer.await.unwrap().unwrap();
    let (a, _) = anchored(&nats).await;
    assert_eq!((a.sequence, a.hash), (40, head.hash));
}

#[tokio::test]
async fn many_batches_coalesce_into_fewer_anchor_writes() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    // One message per batch: every record is a batch of its own.
    let (store, shutdown, writer) = start_writer(&nats, dir.path(), |c| c.batch_size = 1).await;
    let (_, at_start) = anchored(&nats).await;
    let batches = 60;
    publish_paced(&nats, "t-many", batches, Duration::from_millis(2)).await;
    tokio::time::timeout(WAIT, async {
        while store.head().await.sequence < batches as u64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("all records stored");
    let head = store.head().await;
    shutdown.cancel();
    writer.await.unwrap().unwrap();
    let (a, at_end) = anchored(&nats).await;
    assert_eq!((a.sequence, a.hash), (batches as u64, head.hash));
    let writes = at_end - at_start;
    assert!(
        (1..batches as u64).contains(&writes),
        "{writes} anchor writes for {batches} batches"
    );
}

/// Waits until the log holds `n` records.
async fn wait_for_records(store: &baton_audit::store::Store, n: u64) {
    tokio::time::timeout(WAIT, async {
        while store.head().await.sequence < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} records stored"));
}

#[tokio::test]
async fn events_arriving_within_the_linger_share_a_commit() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    // The longest linger allowed; the events below arrive within about a third of it, each
    // alone (30 ms apart, far longer than a commit of one record takes), so without the linger
    // each would be a commit of its own.
    let (store, shutdown, writer) = start_writer_metered(
        &nats,
        dir.path(),
        |c| c.batch_linger = baton_audit::MAX_BATCH_LINGER,
        metrics.clone(),
    )
    .await;
    let n = 10;
    publish_paced(&nats, "t-linger", n, Duration::from_millis(30)).await;
    wait_for_records(&store, n as u64).await;
    let commits = metrics.audit_batches.get();
    assert_eq!(metrics.audit_records.get(), n as u64);
    // One commit, or two if the machine stalled the publisher past the linger.
    assert!(
        (1..=2).contains(&commits),
        "{commits} commits for {n} events published within the linger"
    );
    // An event that arrives alone is stored once its linger ends, not held for company.
    let e = received("t-alone");
    nats.bus.publish(subject::TASK_RECEIVED, &e).await.unwrap();
    wait_for_records(&store, n as u64 + 1).await;
    assert_eq!(metrics.audit_batches.get(), commits + 1);
    // Stopping during a linger stores the event in hand before `run` returns.
    let e = received("t-at-stop");
    nats.bus.publish(subject::TASK_RECEIVED, &e).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    writer.await.unwrap().unwrap();
    assert_eq!(store.head().await.sequence, n as u64 + 2);
    assert_eq!(metrics.audit_records.get(), n as u64 + 2);
}
