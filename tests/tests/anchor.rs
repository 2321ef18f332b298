//! The audit log's end is anchored outside the database: the newest records deleted while Baton
//! is stopped are named when it starts again, on SQLite and on PostgreSQL.

use baton::up::{Baton, ServiceName, UpError};
use baton_proto::{SubmitTaskRequest, TaskStatus, Trigger, VerifyAuditRequest};
use baton_runtime::auth::Role;
use baton_tests::{Db, Harness};
use sqlx::Connection as _;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// Runs `sql` on the audit database behind Baton's back.
async fn tamper(database_url: &str, sql: &'static str) {
    if database_url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(database_url).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
}

async fn newest_records_deleted_while_stopped_are_named(db: Db) {
    let h = Harness::start(db).await;
    let mut c = h.clients("alice", &[Role::Submitter, Role::Operator]).await;
    let id = c
        .triggers
        .submit_task(SubmitTaskRequest {
            trigger: Some(Trigger {
                text: "Fix drift on production web servers".into(),
                environment: "production".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .task_id;
    h.wait_for(&id, TaskStatus::AwaitingApproval, T).await;
    let stored = c
        .tasks
        .verify_audit(VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(stored.ok, "{stored:?}");
    let n = stored.records_checked;
    assert_eq!(n, 4, "received, routed, proposed, awaiting approval");

    // Stop Baton (the writer finishes its batch, anchor included), then cut the log's tail.
    let mut config = h.baton.config.clone();
    h.baton.stop().await;
    tamper(&h.database_url, "DELETE FROM audit_log WHERE sequence >= 3").await;

    // Restarted on the same data (its own nats-server on the same JetStream store): audit
    // refuses the database and names what is missing.
    config.common.nats.url = String::new();
    let err = match Baton::start(config, &[ServiceName::Audit]).await {
        Ok(b) => {
            b.stop().await;
            panic!("audit started on a database missing its newest records")
        }
        Err(e) => e,
    };
    let UpError::Service { service, reason } = &err else {
        panic!("{err}")
    };
    assert_eq!(*service, "audit");
    assert!(
        reason.starts_with("records 3–4 are missing: the database ends at 2, the anchor at 4;"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_records_deleted_while_stopped_are_named_sqlite() {
    newest_records_deleted_while_stopped_are_named(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_records_deleted_while_stopped_are_named_postgres() {
    newest_records_deleted_while_stopped_are_named(Db::Postgres).await;
}
