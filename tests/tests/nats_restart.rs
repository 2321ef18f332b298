//! NATS goes away and comes back (a restart of the server, same port and store): Baton's
//! services reconnect, resume their consumers, and the next task runs to completed.

use baton_bus::server::NatsServer;
use baton_proto::{SubmitTaskRequest, TaskStatus, Trigger};
use baton_runtime::auth::Role;
use baton_tests::{Db, Harness};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// A development task: no approval gate, the built-in no-op agent.
fn noop_trigger(key: &str) -> Trigger {
    Trigger {
        text: format!("noop {key}"),
        role: "assistant".into(),
        environment: "development".into(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn services_resume_after_nats_restarts() {
    let store = tempfile::tempdir().unwrap();
    let nats = NatsServer::start("nats-server", store.path(), 0)
        .await
        .expect("nats-server starts");
    let (url, port) = (nats.url().to_string(), nats.port());
    let h = Harness::start_with(Db::Sqlite, |c| {
        c.common.nats.url = url.clone();
        c.agents.noop_roles = vec!["assistant".into()];
    })
    .await;
    let mut c = h.clients("bob", &[Role::Submitter]).await;
    let submit = async |c: &mut baton::client::Clients, key: &str| {
        c.triggers
            .submit_task(SubmitTaskRequest {
                trigger: Some(noop_trigger(key)),
            })
            .await
            .unwrap_or_else(|e| panic!("submit {key}: {e}"))
            .into_inner()
            .task_id
    };
    let before = submit(&mut c, "before").await;
    h.wait_for(&before, TaskStatus::Completed, T).await;

    // The server stops; while it is down a submission fails with UNAVAILABLE, not a hang.
    nats.stop().await;
    let err = tokio::time::timeout(
        T,
        c.triggers.submit_task(SubmitTaskRequest {
            trigger: Some(noop_trigger("down")),
        }),
    )
    .await
    .expect("a submission while NATS is down is answered")
    .expect_err("nothing can be accepted while NATS is down");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.message().starts_with("nats unavailable: "), "{err}");
    assert!(
        err.message()
            .contains("retry (with the same idempotency_key"),
        "says what to do: {err}"
    );

    // It comes back on the same port with the same store.
    let _nats = NatsServer::start("nats-server", store.path(), port)
        .await
        .expect("nats-server restarts");
    let after = tokio::time::timeout(T, async {
        loop {
            match c
                .triggers
                .submit_task(SubmitTaskRequest {
                    trigger: Some(noop_trigger("after")),
                })
                .await
            {
                Ok(r) => return r.into_inner().task_id,
                Err(e) if e.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => panic!("submit after the restart: {e}"),
            }
        }
    })
    .await
    .expect("ingestion publishes again once NATS is back");
    h.wait_for(&after, TaskStatus::Completed, T).await;
}
