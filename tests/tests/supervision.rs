//! `baton up` as a supervisor sees it: a service that ends on its own stops the process with
//! its reason, instead of leaving the other five running without it.

use baton::up::{ServiceName, UpError};
use baton_proto::subject;
use baton_tests::{Db, Harness};
use sqlx::Connection as _;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);

/// Terminates the audit writer-lock connection from the server side, as a PostgreSQL restart
/// or a cut network would, and waits until it is gone (and the lock with it).
async fn kill_audit_lock_connection(database_url: &str) {
    let mut admin = sqlx::PgConnection::connect(database_url).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(baton_audit::store::WRITER_LOCK_APPLICATION_NAME)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(killed, [true], "one writer-lock connection to terminate");
    tokio::time::timeout(T, async {
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
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the terminated connection goes away");
}

#[tokio::test]
async fn an_audit_writer_that_loses_its_lock_to_another_replica_stops_baton() {
    let h = Harness::start(Db::Postgres).await;
    // The writer's lock dies with its connection, and a second audit replica takes it.
    kill_audit_lock_connection(&h.database_url).await;
    let other = baton_audit::store::Store::open(&h.database_url, 1)
        .await
        .unwrap();
    let _lock = other
        .lock_writer()
        .await
        .expect("the lock died with its connection");

    // The trigger's events reach the first writer, which checks its lock before storing them.
    let nats = h.nats().await;
    nats.publish(
        subject::trigger("default", "cli"),
        r#"{"text":"Fix drift on production web servers","environment":"production"}"#.into(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();

    let Harness { baton, .. } = h;
    let err = tokio::time::timeout(T, baton.run_until(CancellationToken::new()))
        .await
        .expect("baton stops by itself")
        .expect_err("a lost writer lock is an error");
    match &err {
        UpError::Ended {
            service: ServiceName::Audit,
            reason,
        } => {
            assert!(
                reason.contains("another audit writer holds the lock"),
                "{reason}"
            );
        }
        other => panic!("expected audit to end, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.starts_with("audit stopped: another audit writer holds the lock on "),
        "{text}"
    );
    assert!(
        text.ends_with("run one audit replica per database; baton stopped all services"),
        "{text}"
    );
    // Nothing the stopped writer saw was stored by it: the other replica's log holds no task.
    let page = other
        .list_tasks(&baton_audit::TaskQuery {
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(page.tasks.is_empty(), "{page:?}");
}
