//! The store against real databases: one suite, run on SQLite (a temp file) and on PostgreSQL
//! (a fresh database per test, from `BATON_TEST_POSTGRES_URL`; run `deploy/test.sh`, see the
//! README, which starts PostgreSQL and sets it).

use baton_audit::Error;
use baton_audit::store::{NewRecord, Store, TaskQuery, Witness, WriterLock};
use baton_proto::{
    DeadLetter, Decision, Event, PlanProposed, Risk, Task, TaskApproved, TaskAwaitingApproval,
    TaskCompleted, TaskFailed, TaskReceived, TaskRouted, TaskSpec, TaskStatus, Trigger,
    TriggerRejected, event::Body, subject,
};
use prost::Message as _;
use sqlx::Connection as _;

/// Environment variable naming a PostgreSQL server (any database; the role must be able to
/// create databases).
const PG_ENV: &str = "BATON_TEST_POSTGRES_URL";

/// A store on a throwaway database, plus a side door for tampering.
struct TestDb {
    store: Store,
    url: String,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<PgDatabase>,
}

/// A per-test PostgreSQL database, dropped (even on panic) when this is dropped.
struct PgDatabase {
    admin_url: String,
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime; use a separate one on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                }
            })
        })
        .join();
    }
}

impl TestDb {
    async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        // A nested path: the store creates parent directories.
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("data/audit.db").display()
        );
        let store = Store::open(&url, 4).await.unwrap();
        assert_eq!(store.backend(), "sqlite");
        TestDb {
            store,
            url,
            _dir: Some(dir),
            _pg: None,
        }
    }

    async fn postgres() -> TestDb {
        let admin_url = std::env::var(PG_ENV).unwrap_or_else(|_| {
            panic!(
                "{PG_ENV} is not set, so the PostgreSQL half of the storage suite cannot run: run \
                 the tests with deploy/test.sh (see the README), which starts PostgreSQL and sets \
                 {PG_ENV}=postgres://baton:baton@127.0.0.1:5432/postgres"
            )
        });
        let name = format!("audit_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!("cannot connect to {PG_ENV}: {e}; is PostgreSQL running (deploy/test.sh)?")
            });
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let guard = PgDatabase {
            admin_url: admin_url.clone(),
            name: name.clone(),
        };
        let (base, query) = match admin_url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin_url.as_str(), String::new()),
        };
        let server = &base[..base
            .rfind('/')
            .filter(|&i| i > "postgres://".len())
            .unwrap_or(base.len())];
        let url = format!("{server}/{name}{query}");
        let store = Store::open(&url, 4).await.unwrap();
        assert_eq!(store.backend(), "postgres");
        TestDb {
            store,
            url,
            _dir: None,
            _pg: Some(guard),
        }
    }

    /// Runs `sql` (with `$1` bound to `bytes`, if given) on a separate connection.
    async fn side(&self, sql: &'static str, bytes: Option<Vec<u8>>) {
        if self.url.starts_with("sqlite:") {
            let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            let mut q = sqlx::query(sql);
            if let Some(b) = bytes {
                q = q.bind(b);
            }
            q.execute(&mut c).await.unwrap();
        } else {
            let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
            let mut q = sqlx::query(sql);
            if let Some(b) = bytes {
                q = q.bind(b);
            }
            q.execute(&mut c).await.unwrap();
        }
    }
}

macro_rules! storage_suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    let db = super::TestDb::sqlite().await;
                    super::$test(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    let db = super::TestDb::postgres().await;
                    super::$test(&db).await;
                }
            )*
        }
    };
}

storage_suite!(
    appended_records_chain_and_verify,
    reopened_store_continues_the_chain,
    edited_row_is_named,
    deleted_row_is_named,
    removed_newest_rows_are_named,
    newest_rows_removed_behind_the_anchor_are_named,
    duplicate_event_ids_are_stored_once,
    projection_follows_the_pipeline_and_never_leaves_a_final_status,
    dead_letters_and_trigger_rejections_end_tasks,
    list_tasks_filters_pages_and_tenants,
    a_failed_append_reloads_the_head,
    one_writer_lock_per_database,
    a_lost_writer_lock_is_taken_again_or_reported,
    a_task_and_its_records_are_read_from_one_snapshot,
    rejected_triggers_show_what_can_be_shown_of_them,
    secrets_are_redacted_before_they_are_hashed_and_stored,
);

// ---------------------------------------------------------------------------------------------
// Events

/// An event of `task` in `tenant` at `t` seconds.
fn ev(task: &str, tenant: &str, stage: &str, t: i64, body: Body) -> Event {
    let mut e = Event::first(task, tenant, stage, "test", body);
    e.time = Some(baton_proto::Timestamp {
        seconds: 1_700_000_000 + t,
        nanos: 0,
    });
    e
}

fn received(task: &str, tenant: &str, t: i64) -> Event {
    ev(
        task,
        tenant,
        "received",
        t,
        Body::TaskReceived(TaskReceived {
            task: Some(Task {
                task_id: task.into(),
                tenant: tenant.into(),
                submitted_by: "alice".into(),
                trigger: Some(Trigger {
                    text: format!("do {task}"),
                    environment: "staging".into(),
                    ..Default::default()
                }),
                received_at: None,
            }),
        }),
    )
}

fn routed(task: &str, tenant: &str, t: i64, role: &str) -> Event {
    let spec = TaskSpec {
        task_id: task.into(),
        role: role.into(),
        task_type: format!("{role}_work"),
        environment: "production".into(),
        risk: Risk::High as i32,
        ..Default::default()
    };
    ev(
        task,
        tenant,
        "routed",
        t,
        Body::TaskRouted(TaskRouted {
            task: None,
            decision: Some(Decision {
                spec: Some(spec),
                ..Default::default()
            }),
        }),
    )
}

fn rec(subject: &str, e: &Event) -> NewRecord {
    NewRecord::from_event(subject, e)
}

async fn status(db: &TestDb, task: &str) -> TaskStatus {
    db.store
        .get_task(task)
        .await
        .unwrap()
        .expect("task exists")
        .status()
}

/// Five records: t1 received, routed, proposed; t2 received; t1 completed.
async fn five(db: &TestDb) {
    let stored = db
        .store
        .append(vec![
            rec(subject::TASK_RECEIVED, &received("t1", "acme", 1)),
            rec(&subject::agent("drift"), &routed("t1", "acme", 2, "drift")),
            rec(
                subject::TASK_PROPOSED,
                &ev(
                    "t1",
                    "acme",
                    "proposed",
                    3,
                    Body::PlanProposed(PlanProposed::default()),
                ),
            ),
        ])
        .await
        .unwrap();
    assert_eq!(
        stored.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let stored = db
        .store
        .append(vec![
            rec(subject::TASK_RECEIVED, &received("t2", "acme", 4)),
            rec(
                subject::TASK_COMPLETED,
                &ev(
                    "t1",
                    "acme",
                    "completed",
                    5,
                    Body::TaskCompleted(TaskCompleted::default()),
                ),
            ),
        ])
        .await
        .unwrap();
    assert_eq!(
        stored.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        [4, 5]
    );
}

// ---------------------------------------------------------------------------------------------
// The suite

async fn appended_records_chain_and_verify(db: &TestDb) {
    let empty = db.store.verify(None).await.unwrap();
    assert!(empty.ok && empty.records_checked == 0, "{empty:?}");
    five(db).await;
    let head = db.store.head().await;
    assert_eq!(head.sequence, 5);
    let v = db.store.verify(Some(&head)).await.unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.records_checked, 5);

    let t1 = db.store.task_records("t1", 0).await.unwrap();
    assert_eq!(
        t1.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 5]
    );
    assert_eq!(t1[0].prev_hash, "");
    assert_eq!(t1[1].prev_hash, t1[0].hash);
    assert_eq!(t1[0].record.kind, "task_received");
    assert_eq!(t1[0].event().unwrap().event_id, "t1.received");
    assert_eq!(t1[3].hash, head.hash);
    let later = db.store.task_records("t1", 3).await.unwrap();
    assert_eq!(later.iter().map(|r| r.sequence).collect::<Vec<_>>(), [5]);
}

async fn reopened_store_continues_the_chain(db: &TestDb) {
    five(db).await;
    let again = Store::open(&db.url, 2).await.unwrap();
    assert_eq!(
        again.head().await,
        db.store.head().await,
        "the head is loaded at open"
    );
    let stored = again
        .append(vec![rec(
            subject::TASK_RECEIVED,
            &received("t3", "acme", 6),
        )])
        .await
        .unwrap();
    assert_eq!(stored[0].sequence, 6);
    assert_eq!(stored[0].prev_hash, db.store.head().await.hash);
    let v = again.verify(Some(&again.head().await)).await.unwrap();
    assert!(v.ok && v.records_checked == 6, "{v:?}");
    again.close().await;
}

async fn edited_row_is_named(db: &TestDb) {
    five(db).await;
    db.side(
        "UPDATE audit_log SET payload = $1 WHERE sequence = 3",
        Some(b"forged".to_vec()),
    )
    .await;
    let v = db.store.verify(Some(&db.store.head().await)).await.unwrap();
    assert!(!v.ok);
    assert_eq!(v.first_bad_sequence, 3, "{v:?}");
    assert_eq!(v.problem, "hash mismatch: record 3 was changed");
    assert_eq!(v.records_checked, 3);
}

async fn deleted_row_is_named(db: &TestDb) {
    five(db).await;
    db.side("DELETE FROM audit_log WHERE sequence = 3", None)
        .await;
    let v = db.store.verify(None).await.unwrap();
    assert!(!v.ok);
    assert_eq!(v.first_bad_sequence, 3, "{v:?}");
    assert!(
        v.problem.starts_with("sequence gap after 2"),
        "{}",
        v.problem
    );

    // Renumbering to hide the gap breaks the link instead.
    db.side(
        "UPDATE audit_log SET sequence = sequence - 1 WHERE sequence > 3",
        None,
    )
    .await;
    let v = db.store.verify(None).await.unwrap();
    assert_eq!(v.first_bad_sequence, 3, "{v:?}");
    assert_eq!(
        v.problem,
        "prev_hash of record 3 does not match record 2 (a record was removed or reordered)"
    );
}

async fn removed_newest_rows_are_named(db: &TestDb) {
    five(db).await;
    let head = db.store.head().await;
    db.side("DELETE FROM audit_log WHERE sequence >= 4", None)
        .await;
    assert!(
        db.store.verify(None).await.unwrap().ok,
        "the chain alone cannot see a cut tail"
    );
    let v = db.store.verify(Some(&head)).await.unwrap();
    assert!(!v.ok);
    assert_eq!(v.first_bad_sequence, 4, "{v:?}");
    assert!(
        v.problem.starts_with("records after 3 are missing"),
        "{}",
        v.problem
    );
}

async fn newest_rows_removed_behind_the_anchor_are_named(db: &TestDb) {
    five(db).await;
    let anchored = db.store.head().await;
    assert_eq!(anchored.sequence, 5);
    db.store.check_anchor(&anchored).await.unwrap();
    // Removed while Baton is stopped: a store opened afresh reloads the shortened head.
    db.side("DELETE FROM audit_log WHERE sequence >= 3", None)
        .await;
    let reopened = Store::open(&db.url, 2).await.unwrap();
    assert_eq!(reopened.head().await.sequence, 2);
    assert!(
        reopened.verify(None).await.unwrap().ok,
        "the chain alone cannot see a cut tail"
    );
    let v = reopened
        .verify_with(&[
            (Witness::Writer, reopened.head().await),
            (Witness::Anchor, anchored.clone()),
        ])
        .await
        .unwrap();
    assert!(!v.ok);
    assert_eq!(v.first_bad_sequence, 3, "{v:?}");
    assert_eq!(
        v.problem,
        "records 3–5 are missing: the database ends at 2, the anchor at 5 (the newest records were removed)"
    );
    let refused = reopened.check_anchor(&anchored).await.unwrap_err();
    assert!(
        matches!(
            refused,
            Error::AnchorAhead {
                database_end: 2,
                anchor: 5
            }
        ),
        "{refused:?}"
    );
    assert!(
        refused.to_string().starts_with(
            "records 3–5 are missing: the database ends at 2, the anchor at 5; restore"
        ),
        "{refused}"
    );
    assert_eq!(tonic::Status::from(refused).code(), tonic::Code::DataLoss);
    // One record short: named alone.
    let one_short = baton_audit::ChainHead {
        sequence: 3,
        hash: "x".into(),
    };
    let v = reopened
        .verify_with(&[(Witness::Anchor, one_short)])
        .await
        .unwrap();
    assert!(
        v.problem
            .starts_with("record 3 is missing: the database ends at 2, the anchor at 3"),
        "{}",
        v.problem
    );
    // A record replaced at the anchored sequence.
    let stale = baton_audit::ChainHead {
        sequence: 2,
        hash: "0".repeat(64),
    };
    let v = reopened
        .verify_with(&[(Witness::Anchor, stale.clone())])
        .await
        .unwrap();
    assert_eq!(
        v.problem,
        "record 2 is not the record the anchor names (it was replaced)"
    );
    assert!(matches!(
        reopened.check_anchor(&stale).await,
        Err(Error::AnchorMismatch { sequence: 2, .. })
    ));
    reopened.close().await;
}

async fn duplicate_event_ids_are_stored_once(db: &TestDb) {
    let e = received("t1", "acme", 1);
    let stored = db
        .store
        .append(vec![
            rec(subject::TASK_RECEIVED, &e),
            rec(subject::TASK_RECEIVED, &e),
        ])
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "repeated within the batch");
    let again = db
        .store
        .append(vec![
            rec(subject::TASK_RECEIVED, &e),
            rec(&subject::agent("drift"), &routed("t1", "acme", 2, "drift")),
        ])
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "already stored");
    assert_eq!(again[0].sequence, 2);
    assert!(
        db.store
            .append(vec![rec(subject::TASK_RECEIVED, &e)])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(db.store.head().await.sequence, 2);
    let task = db.store.get_task("t1").await.unwrap().unwrap();
    assert_eq!(task.event_count, 2, "a duplicate must not count");
    assert!(
        db.store
            .verify(Some(&db.store.head().await))
            .await
            .unwrap()
            .ok
    );
}

async fn projection_follows_the_pipeline_and_never_leaves_a_final_status(db: &TestDb) {
    let steps: Vec<(Event, TaskStatus)> = vec![
        (received("t1", "acme", 1), TaskStatus::Received),
        (routed("t1", "acme", 2, "drift"), TaskStatus::Routed),
        (
            ev(
                "t1",
                "acme",
                "proposed",
                3,
                Body::PlanProposed(PlanProposed::default()),
            ),
            TaskStatus::Proposed,
        ),
        (
            ev(
                "t1",
                "acme",
                "awaiting",
                4,
                Body::AwaitingApproval(TaskAwaitingApproval::default()),
            ),
            TaskStatus::AwaitingApproval,
        ),
        (
            ev(
                "t1",
                "acme",
                "approved",
                5,
                Body::TaskApproved(TaskApproved::default()),
            ),
            TaskStatus::Approved,
        ),
        (
            ev(
                "t1",
                "acme",
                "started",
                6,
                Body::ExecutionStarted(Default::default()),
            ),
            TaskStatus::Executing,
        ),
        (
            ev(
                "t1",
                "acme",
                "completed",
                7,
                Body::TaskCompleted(TaskCompleted::default()),
            ),
            TaskStatus::Completed,
        ),
        (
            ev(
                "t1",
                "acme",
                "failed",
                8,
                Body::TaskFailed(TaskFailed {
                    reason: "late".into(),
                    ..Default::default()
                }),
            ),
            TaskStatus::Completed,
        ),
    ];
    for (e, want) in &steps {
        db.store.append(vec![rec("baton.test", e)]).await.unwrap();
        assert_eq!(status(db, "t1").await, *want, "after {}", e.event_id);
    }
    let t = db.store.get_task("t1").await.unwrap().unwrap();
    assert_eq!(
        (t.tenant.as_str(), t.text.as_str(), t.submitted_by.as_str()),
        ("acme", "do t1", "alice")
    );
    assert_eq!(
        (
            t.role.as_str(),
            t.task_type.as_str(),
            t.environment.as_str()
        ),
        ("drift", "drift_work", "production")
    );
    assert_eq!(
        (t.risk(), t.reason.as_str(), t.event_count),
        (Risk::High, "", 8)
    );
    assert_eq!(t.created_at.unwrap().seconds, 1_700_000_001);
    assert_eq!(t.updated_at.unwrap().seconds, 1_700_000_008);

    // Several events of one task in one batch project in order.
    db.store
        .append(vec![
            rec("baton.test", &received("t2", "acme", 1)),
            rec("baton.test", &routed("t2", "acme", 2, "patch")),
            rec(
                "baton.test",
                &ev(
                    "t2",
                    "acme",
                    "failed",
                    3,
                    Body::TaskFailed(TaskFailed {
                        reason: "no agent".into(),
                        ..Default::default()
                    }),
                ),
            ),
            rec(
                "baton.test",
                &ev(
                    "t2",
                    "acme",
                    "approved",
                    4,
                    Body::TaskApproved(TaskApproved::default()),
                ),
            ),
        ])
        .await
        .unwrap();
    let t2 = db.store.get_task("t2").await.unwrap().unwrap();
    assert_eq!(
        (
            t2.status(),
            t2.reason.as_str(),
            t2.role.as_str(),
            t2.event_count
        ),
        (TaskStatus::Failed, "no agent", "patch", 4)
    );
    assert!(db.store.get_task("nope").await.unwrap().is_none());
}

async fn dead_letters_and_trigger_rejections_end_tasks(db: &TestDb) {
    let dead = ev(
        "t1",
        "acme",
        "dead",
        1,
        Body::DeadLetter(DeadLetter {
            service: "decision".into(),
            reason: "poison".into(),
            ..Default::default()
        }),
    );
    let rejected = ev(
        "t2",
        "acme",
        "rejected",
        1,
        Body::TriggerRejected(TriggerRejected {
            reason: "text is empty".into(),
            ..Default::default()
        }),
    );
    db.store
        .append(vec![
            rec("baton.task.received", &received("t1", "acme", 0)),
            rec("baton.dead.decision", &dead),
            rec(subject::TRIGGER_REJECTED, &rejected),
        ])
        .await
        .unwrap();
    let t1 = db.store.get_task("t1").await.unwrap().unwrap();
    assert_eq!(
        (t1.status(), t1.reason.as_str()),
        (TaskStatus::Failed, "dead-lettered by decision: poison")
    );
    let t2 = db.store.get_task("t2").await.unwrap().unwrap();
    assert_eq!(
        (t2.status(), t2.reason.as_str()),
        (TaskStatus::Rejected, "text is empty")
    );
}

async fn rejected_triggers_show_what_can_be_shown_of_them(db: &TestDb) {
    // (task, payload, reason, text the views show)
    let cases: [(&str, &[u8], &str, &str); 3] = [
        (
            "r1",
            br#"{"text":"fix drift","environment":"prod"}"#,
            "unknown environment \"prod\"",
            "fix drift",
        ),
        (
            "r2",
            b"{\"text\": \"fix\ndrift\"",
            "malformed JSON trigger: EOF while parsing",
            r#"{"text": "fix\ndrift""#,
        ),
        (
            "r3",
            b"\xff\xfe\x00",
            "payload is neither JSON nor a baton.v1.Trigger protobuf",
            "binary payload, 3 bytes: fffe00",
        ),
    ];
    let records = cases
        .iter()
        .enumerate()
        .map(|(i, (task, payload, reason, _))| {
            rec(
                subject::TRIGGER_REJECTED,
                &ev(
                    task,
                    "acme",
                    "rejected",
                    i as i64,
                    Body::TriggerRejected(TriggerRejected::for_payload(
                        "baton.trigger.cli",
                        reason,
                        payload,
                    )),
                ),
            )
        })
        .collect();
    db.store.append(records).await.unwrap();
    let page = db
        .store
        .list_tasks(&TaskQuery {
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut listed: Vec<(String, String, String)> = page
        .tasks
        .iter()
        .map(|t| (t.task_id.clone(), t.text.clone(), t.reason.clone()))
        .collect();
    listed.sort();
    let expected: Vec<(String, String, String)> = cases
        .iter()
        .map(|(task, _, reason, text)| (task.to_string(), text.to_string(), reason.to_string()))
        .collect();
    assert_eq!(listed, expected);
    let r1 = db.store.get_task("r1").await.unwrap().unwrap();
    assert_eq!(
        (r1.status(), r1.text.as_str()),
        (TaskStatus::Rejected, "fix drift")
    );
}

async fn list_tasks_filters_pages_and_tenants(db: &TestDb) {
    // acme: a1..a5 (a2 and a4 routed to patch), globex: g1, g2. Times increase with the index.
    let mut batch = Vec::new();
    for i in 1..=5 {
        let id = format!("a{i}");
        batch.push(rec("baton.test", &received(&id, "acme", i * 10)));
        if i % 2 == 0 {
            batch.push(rec("baton.test", &routed(&id, "acme", i * 10 + 1, "patch")));
        }
    }
    for i in 1..=2 {
        batch.push(rec(
            "baton.test",
            &received(&format!("g{i}"), "globex", i * 10),
        ));
    }
    db.store.append(batch).await.unwrap();

    let ids = |p: &baton_audit::TaskPage| {
        p.tasks
            .iter()
            .map(|t| t.task_id.clone())
            .collect::<Vec<_>>()
    };
    let acme = |page_token: String| TaskQuery {
        tenant: Some("acme".into()),
        page_size: 2,
        page_token,
        ..Default::default()
    };
    let p1 = db.store.list_tasks(&acme(String::new())).await.unwrap();
    assert_eq!(ids(&p1), ["a5", "a4"]);
    let p2 = db
        .store
        .list_tasks(&acme(p1.next_page_token.clone()))
        .await
        .unwrap();
    assert_eq!(ids(&p2), ["a3", "a2"]);
    let p3 = db
        .store
        .list_tasks(&acme(p2.next_page_token.clone()))
        .await
        .unwrap();
    assert_eq!(ids(&p3), ["a1"]);
    assert!(p3.next_page_token.is_empty(), "last page");

    let all = db
        .store
        .list_tasks(&TaskQuery {
            page_size: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.tasks.len(), 7);
    assert!(all.next_page_token.is_empty());
    let routed = db
        .store
        .list_tasks(&TaskQuery {
            status: Some(TaskStatus::Routed),
            page_size: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&routed), ["a4", "a2"]);
    let patch = db
        .store
        .list_tasks(&TaskQuery {
            role: Some("patch".into()),
            tenant: Some("globex".into()),
            page_size: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(patch.tasks.is_empty());
    let globex = db
        .store
        .list_tasks(&TaskQuery {
            tenant: Some("globex".into()),
            page_size: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&globex), ["g2", "g1"]);

    let bad = db
        .store
        .list_tasks(&TaskQuery {
            page_token: "not-a-token".into(),
            page_size: 5,
            ..Default::default()
        })
        .await;
    assert!(matches!(bad, Err(Error::InvalidArgument(_))), "{bad:?}");
}

async fn a_failed_append_reloads_the_head(db: &TestDb) {
    five(db).await;
    // Another writer (here: a second handle, without the lock) appends behind our back.
    let other = Store::open(&db.url, 2).await.unwrap();
    let theirs = other
        .append(vec![rec(
            subject::TASK_RECEIVED,
            &received("t3", "acme", 6),
        )])
        .await
        .unwrap();
    assert_eq!(theirs[0].sequence, 6);
    other.close().await;

    // Our head still says 5: the next append collides on sequence 6 and fails...
    let ours = vec![rec(subject::TASK_RECEIVED, &received("t4", "acme", 7))];
    let failed = db.store.append(ours.clone()).await;
    assert!(matches!(failed, Err(Error::Database { .. })), "{failed:?}");
    assert_eq!(
        db.store.head().await.sequence,
        5,
        "a failed append leaves the head"
    );
    // ...and the one after it reloads the head and continues the chain after theirs.
    let stored = db.store.append(ours).await.unwrap();
    assert_eq!(stored[0].sequence, 7);
    assert_eq!(stored[0].prev_hash, theirs[0].hash);
    let again = db
        .store
        .append(vec![rec(
            subject::TASK_RECEIVED,
            &received("t5", "acme", 8),
        )])
        .await
        .unwrap();
    assert_eq!(again[0].sequence, 8);
    let v = db.store.verify(Some(&db.store.head().await)).await.unwrap();
    assert!(v.ok && v.records_checked == 8, "{v:?}");
    assert_eq!(
        db.store.get_task("t4").await.unwrap().unwrap().event_count,
        1
    );
}

/// Takes the writer lock of `store`, retrying while a dropped holder's lock is still being
/// released (PostgreSQL ends the session only when it notices the closed connection).
async fn lock_eventually(store: &Store) -> WriterLock {
    tokio::time::timeout(std::time::Duration::from_secs(15), async {
        loop {
            match store.lock_writer().await {
                Ok(lock) => return lock,
                Err(Error::WriterLocked { .. }) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(e) => panic!("lock_writer: {e}"),
            }
        }
    })
    .await
    .expect("the dropped writer's lock is released")
}

async fn one_writer_lock_per_database(db: &TestDb) {
    let first = db.store.lock_writer().await.unwrap();
    let second = Store::open(&db.url, 2).await.unwrap();
    let refused = second.lock_writer().await;
    let message = match refused {
        Err(e @ Error::WriterLocked { .. }) => e.to_string(),
        other => panic!("a second writer must be refused, got {other:?}"),
    };
    assert!(
        message.starts_with("another audit writer holds the lock on "),
        "{message}"
    );
    assert!(
        message.ends_with("; run one audit replica per database"),
        "{message}"
    );
    assert!(!message.contains(":baton@"), "no password in {message}");
    // Reading needs no lock.
    five(db).await;
    assert!(second.verify(None).await.unwrap().ok);
    assert!(second.get_task("t1").await.unwrap().is_some());

    // Released: the second writer gets it and starts from the head the first left.
    first.release().await;
    let taken = second.lock_writer().await.unwrap();
    assert_eq!(
        second.head().await.sequence,
        5,
        "the head is reloaded with the lock"
    );
    assert!(matches!(
        db.store.lock_writer().await,
        Err(Error::WriterLocked { .. })
    ));

    // Dropped without release: the lock goes with it.
    drop(taken);
    let back = lock_eventually(&db.store).await;
    assert!(matches!(
        second.lock_writer().await,
        Err(Error::WriterLocked { .. })
    ));
    back.release().await;
    second.close().await;
}

/// Terminates this database's writer-lock connections from the server side, as a PostgreSQL
/// restart or a cut network would, and waits until they are gone (and their locks with them).
async fn kill_lock_connections(db: &TestDb) {
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(baton_audit::store::WRITER_LOCK_APPLICATION_NAME)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!killed.is_empty(), "no writer-lock connection to terminate");
    tokio::time::timeout(std::time::Duration::from_secs(15), async {
        loop {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = $1 AND datname = current_database()",
            )
            .bind(baton_audit::store::WRITER_LOCK_APPLICATION_NAME)
            .fetch_one(&mut admin)
            .await
            .unwrap();
            if left == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("terminated connections go away");
    admin.close().await.unwrap();
}

async fn a_lost_writer_lock_is_taken_again_or_reported(db: &TestDb) {
    let mut lock = db.store.lock_writer().await.unwrap();
    lock.ensure(&db.store).await.expect("a held lock is kept");
    let other = Store::open(&db.url, 2).await.unwrap();
    if db.store.backend() == "sqlite" {
        // A lock file cannot be lost while its process lives.
        assert!(matches!(
            other.lock_writer().await,
            Err(Error::WriterLocked { .. })
        ));
        return;
    }

    // The lock's connection dies; meanwhile another writer takes the free lock, appends and
    // goes away. The first writer takes the lock again and continues after those records.
    kill_lock_connections(db).await;
    let interloper = other
        .lock_writer()
        .await
        .expect("the lock died with its connection");
    let stored = other
        .append(vec![rec(
            subject::TASK_RECEIVED,
            &received("t9", "acme", 1),
        )])
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    interloper.release().await;
    assert_eq!(
        db.store.head().await.sequence,
        0,
        "the first writer has not seen it yet"
    );
    lock.ensure(&db.store)
        .await
        .expect("the lock is free: taken again");
    assert_eq!(
        db.store.head().await.sequence,
        1,
        "the head is reloaded with the lock"
    );
    assert!(
        matches!(other.lock_writer().await, Err(Error::WriterLocked { .. })),
        "held again by the first writer"
    );

    // It dies again, and this time another writer keeps it: the first must stop.
    kill_lock_connections(db).await;
    let keeper = other
        .lock_writer()
        .await
        .expect("the lock died with its connection");
    let err = lock
        .ensure(&db.store)
        .await
        .expect_err("another writer holds the lock");
    assert!(matches!(err, Error::WriterLocked { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("run one audit replica per database"),
        "{err}"
    );
    keeper.release().await;
    other.close().await;
}

async fn a_task_and_its_records_are_read_from_one_snapshot(db: &TestDb) {
    // A writer stores a task's events one commit at a time while a reader on another pool
    // reads the view and the records: the view always counts exactly the records returned.
    const EVENTS: i64 = 150;
    let reader = Store::open(&db.url, 2).await.unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let write = async {
        for i in 0..EVENTS {
            let e = ev(
                "t1",
                "acme",
                &format!("step{i}"),
                i,
                Body::PlanProposed(PlanProposed::default()),
            );
            db.store
                .append(vec![rec(subject::TASK_PROPOSED, &e)])
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let read = async {
        let mut seen = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            if let Some((view, records)) = reader.task_with_records("t1").await.unwrap() {
                assert_eq!(
                    view.event_count as usize,
                    records.len(),
                    "the view and the records come from different commits"
                );
                seen += 1;
            }
        }
        seen
    };
    let ((), seen) = tokio::join!(write, read);
    assert!(seen > 10, "the reader only got {seen} reads in");
    let (view, records) = reader.task_with_records("t1").await.unwrap().unwrap();
    assert_eq!(
        (view.event_count, records.len()),
        (EVENTS as u64, EVENTS as usize)
    );
    assert!(reader.task_with_records("nope").await.unwrap().is_none());
    reader.close().await;
}

async fn secrets_are_redacted_before_they_are_hashed_and_stored(db: &TestDb) {
    use baton_proto::{Action, HttpAction, Phase, Plan, Step, action};
    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";
    const BEARER: &str = "s3cr3t-bearer-t0ken";
    let mut received = received("s1", "acme", 1);
    if let Some(Body::TaskReceived(r)) = &mut received.body {
        r.task.as_mut().unwrap().trigger.as_mut().unwrap().text = format!("rotate with {JWT}");
    }
    let plan = Plan {
        phases: vec![Phase {
            steps: vec![Step {
                action: Some(Action {
                    kind: Some(action::Kind::Http(HttpAction {
                        method: "PUT".into(),
                        url: "http://127.0.0.1:9/config".into(),
                        headers: [("Authorization".to_string(), format!("Bearer {BEARER}"))].into(),
                        body: br#"{"password":"hunter2"}"#.to_vec(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let approved = ev(
        "s1",
        "acme",
        "approved",
        2,
        Body::TaskApproved(TaskApproved {
            plan: Some(plan),
            ..Default::default()
        }),
    );
    db.store
        .append(vec![
            rec(subject::TASK_RECEIVED, &received),
            rec(subject::TASK_APPROVED, &approved),
        ])
        .await
        .unwrap();

    // The stored rows, read past the store: no secret in any payload.
    let payloads: Vec<Vec<u8>> = if db.url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query_scalar("SELECT payload FROM audit_log ORDER BY sequence")
            .fetch_all(&mut c)
            .await
            .unwrap()
    } else {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query_scalar("SELECT payload FROM audit_log ORDER BY sequence")
            .fetch_all(&mut c)
            .await
            .unwrap()
    };
    assert_eq!(payloads.len(), 2);
    let contains =
        |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    for p in &payloads {
        for secret in [JWT, BEARER, "hunter2"] {
            assert!(!contains(p, secret), "{secret} stored in the clear");
        }
    }
    // What is kept still reads as the events, redacted; the view shows the redacted text; and
    // the chain verifies over what is kept.
    let view = db.store.get_task("s1").await.unwrap().unwrap();
    assert_eq!(view.text, "rotate with <redacted>");
    let approved = Event::decode(payloads[1].as_slice()).unwrap();
    let Some(Body::TaskApproved(a)) = approved.body else {
        panic!("not approved: {approved:?}")
    };
    let step = &a.plan.unwrap().phases[0].steps[0];
    let Some(action::Kind::Http(h)) = &step.action.as_ref().unwrap().kind else {
        panic!("not http")
    };
    assert_eq!(h.headers["Authorization"], "<redacted>");
    assert_eq!(h.body, br#"{"password":"<redacted>"}"#);
    let v = db.store.verify(Some(&db.store.head().await)).await.unwrap();
    assert!(v.ok && v.records_checked == 2, "{v:?}");
}
