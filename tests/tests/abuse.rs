//! Abuse of what Baton stores, end to end through `baton up`'s services:
//! - a flood of large malformed triggers grows the audit log by their bounded prefixes, not
//!   their size, and every one of them is still recorded as rejected with its reason;
//! - NATS's own `max_payload` bounds how large a trigger can be at all;
//! - secrets in a trigger's text and in a plan's HTTP headers and body never reach the audit
//!   log in clear, while execution still sends the real header.

use axum::routing::put;
use baton::config::BatonConfig;
use baton_audit::projection::REJECTED_TEXT_MAX;
use baton_proto::event::Body;
use baton_proto::{
    Action, AgentKind, Asset, Event, HttpAction, NoopAction, Phase, PhaseKind, Plan, Step,
    SubmitTaskRequest, TRIGGER_REJECTED_PREFIX_MAX, TRIGGER_REJECTED_REASON_MAX, Task, TaskSpec,
    TaskStatus, Trigger, action,
};
use baton_runtime::auth::Role;
use baton_runtime::plugins::Plugins;
use baton_tests::{Db, Harness};
use futures::future::BoxFuture;
use prost::Message as _;
use sqlx::Connection as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// The audit database's size on disk: the file and its write-ahead log, after checkpointing
/// the log into the file (so the number counts stored pages, not how many transactions wrote
/// them).
async fn db_bytes(url: &str, db: &Path) -> u64 {
    let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
    let mut attempts = 0;
    loop {
        let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&mut c)
            .await
            .unwrap();
        if busy == 0 {
            break;
        }
        attempts += 1;
        assert!(attempts < 100, "the audit log could not be checkpointed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.close().await.unwrap();
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    size(db) + size(&db.with_extension("db-wal"))
}

/// Counts rows of the audit database matching `sql` (a `SELECT count(*) …`).
async fn count(url: &str, sql: &'static str) -> i64 {
    let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
    sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_malformed_triggers_grows_the_audit_log_by_bounded_records() {
    let h = Harness::start(Db::Sqlite).await;
    let nats = h.nats().await;
    let db = h.data.path().join("audit.db");
    let url = h.database_url.clone();
    // Audit has opened (and migrated) the database once it is up.
    let before = db_bytes(&url, &db).await;

    // As large as NATS lets a publisher send (headers included), in three malformed shapes:
    // not JSON nor protobuf, JSON whose parser error quotes a huge value, and valid JSON whose
    // text is over the limit.
    let size = nats.server_info().max_payload - 1024;
    const N: usize = 24;
    // SHA-256 → size of each trigger sent.
    let mut sent = std::collections::HashMap::new();
    for i in 0..N {
        let filler = |n: usize| "x".repeat(n);
        let payload: Vec<u8> = match i % 3 {
            0 => {
                let mut p = vec![0xffu8; size];
                p[..8].copy_from_slice(&(i as u64).to_be_bytes());
                p
            }
            1 => format!(r#"{{"labels": "{i}{}"}}"#, filler(size - 20)).into_bytes(),
            _ => format!(r#"{{"text": "{i}{}"}}"#, filler(size - 20)).into_bytes(),
        };
        sent.insert(hex_sha256(&payload), payload.len() as u64);
        nats.publish(
            baton_proto::subject::trigger("default", "flood"),
            payload.into(),
        )
        .await
        .unwrap();
    }
    nats.flush().await.unwrap();
    assert_eq!(sent.len(), N, "distinct payloads");

    // Nothing lost: every trigger is recorded as rejected, with its reason.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let n = count(
            &url,
            "SELECT count(*) FROM audit_log WHERE kind = 'trigger_rejected'",
        )
        .await;
        if n == N as i64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} of {N} rejections recorded within {T:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = db_bytes(&url, &db).await;
    let rejected_views = count(
        &url,
        "SELECT count(*) FROM tasks WHERE status = 'rejected' AND reason <> '' AND text <> ''",
    )
    .await;
    assert_eq!(
        rejected_views, N as i64,
        "every rejection has a view with its reason"
    );
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let payloads: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT payload FROM audit_log WHERE kind = 'trigger_rejected'")
            .fetch_all(&mut c)
            .await
            .unwrap();
    let mut recorded = std::collections::HashMap::new();
    for p in payloads {
        let Some(Body::TriggerRejected(r)) = Event::decode(p.as_slice()).unwrap().body else {
            panic!("not a rejection")
        };
        assert!(r.payload_prefix.len() <= TRIGGER_REJECTED_PREFIX_MAX);
        assert!(r.payload.is_empty());
        assert!(!r.reason.is_empty());
        recorded.insert(r.payload_sha256, r.payload_size);
    }
    assert_eq!(
        recorded, sent,
        "each rejection names its payload by hash and size"
    );

    // What one rejection may store: the prefix, the reason twice (record and view), the view's
    // text (at most 4 bytes a character); twice that for ids, hashes, row, index and page
    // overhead. The payload itself is not among it.
    let per_record =
        2 * (TRIGGER_REJECTED_PREFIX_MAX + 2 * TRIGGER_REJECTED_REASON_MAX + 4 * REJECTED_TEXT_MAX);
    let growth = after.saturating_sub(before);
    eprintln!(
        "audit log grew by {growth} bytes for {N} rejected triggers of {size} bytes \
         ({} per trigger; bound {per_record})",
        growth / N as u64
    );
    assert!(
        growth <= (N * per_record) as u64,
        "the audit log grew by {growth} bytes for {N} rejections, more than {N} × {per_record}"
    );
    assert!(
        per_record * 100 < size,
        "the bound is far below the payloads' size"
    );
}

fn hex_sha256(bytes: &[u8]) -> String {
    // The same record ingestion builds, hashed by baton-proto; checked against sha2 there.
    baton_proto::TriggerRejected::for_payload("", "", bytes).payload_sha256
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_refuses_a_trigger_larger_than_its_max_payload() {
    let h = Harness::start(Db::Sqlite).await;
    let nats = h.nats().await;
    let max = nats.server_info().max_payload;
    assert_eq!(
        max,
        1024 * 1024,
        "baton up's nats-server keeps NATS's default"
    );
    let too_large = vec![b'x'; max + 1];
    let err = nats
        .publish(
            baton_proto::subject::trigger("default", "big"),
            too_large.into(),
        )
        .await
        .expect_err("a payload over max_payload is refused");
    assert!(err.to_string().contains("payload"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Secrets

const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.c2lnbmF0dXJlLW9mLWp3dA";
const BEARER: &str = "s3cr3t-bearer-t0ken-4f9a";
const API_KEY: &str = "k3y-8c1d-secret-value";
const PASSWORD: &str = "hunter2-but-longer";

/// An agent whose plan is one HTTP PUT carrying credentials to `url`.
struct Vault {
    url: String,
}

impl baton_agent_runner::Agent for Vault {
    fn name(&self) -> &str {
        "vault@1"
    }

    fn kind(&self) -> AgentKind {
        AgentKind::Runbook
    }

    fn plan<'a>(
        &'a self,
        task: &'a Task,
        _spec: &'a TaskSpec,
    ) -> BoxFuture<'a, Result<Plan, baton_agent_runner::AgentError>> {
        let apply = Action {
            idempotency_key: format!("{}:rotate:vault:apply", task.task_id),
            description: "store the rotated credential".into(),
            kind: Some(action::Kind::Http(HttpAction {
                method: "PUT".into(),
                url: self.url.clone(),
                body: format!(r#"{{"user":"svc","password":"{PASSWORD}"}}"#).into_bytes(),
                headers: [
                    ("Authorization".to_string(), format!("Bearer {BEARER}")),
                    ("X-Api-Key".to_string(), API_KEY.to_string()),
                    ("Content-Type".to_string(), "application/json".to_string()),
                ]
                .into(),
                expect_status: vec![],
            })),
        };
        let plan = Plan {
            task_id: task.task_id.clone(),
            summary: format!("rotate the credential (Authorization: Bearer {BEARER})"),
            phases: vec![Phase {
                name: "canary".into(),
                kind: PhaseKind::Canary as i32,
                steps: vec![Step {
                    asset: Some(Asset {
                        id: "vault".into(),
                        name: "vault".into(),
                        kind: "secret_store".into(),
                        ..Default::default()
                    }),
                    action: Some(apply),
                    rollback: Some(Action {
                        idempotency_key: format!("{}:rotate:vault:rollback", task.task_id),
                        kind: Some(action::Kind::Noop(NoopAction {})),
                        ..Default::default()
                    }),
                    health_check: None,
                    reason: "the credential is due".into(),
                }],
            }],
            total_assets: 1,
            ..Default::default()
        };
        Box::pin(async move { Ok(plan) })
    }
}

/// What the loopback server received: (Authorization header, X-Api-Key header, body).
type Received = Arc<Mutex<Vec<(String, String, String)>>>;

/// A loopback HTTP server that records every PUT it gets; returns its URL.
async fn vault_server(received: Received) -> String {
    let app = axum::Router::new().route(
        "/credential",
        put(move |headers: axum::http::HeaderMap, body: String| {
            let received = received.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                received
                    .lock()
                    .unwrap()
                    .push((h("authorization"), h("x-api-key"), body));
                "stored"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/credential")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_redacted_in_the_audit_log_while_the_action_runs_with_them() {
    let received: Received = Arc::default();
    let url = vault_server(received.clone()).await;
    let plugins = Plugins::new().with(baton_agent_runner::AgentFactory::new(
        "vault",
        &["vault"],
        move |_: &baton_agent_runner::AgentSetup<'_>| {
            Ok(Arc::new(Vault { url: url.clone() }) as Arc<dyn baton_agent_runner::Agent>)
        },
    ));
    let configure = |c: &mut BatonConfig| {
        c.common.catalog.roles.push("vault".into());
        c.validation.reviewed_agents.push("vault@1".into());
    };
    let h = Harness::start_with_plugins(Db::Sqlite, configure, plugins).await;

    let mut c = h.clients("alice", &[Role::Submitter]).await;
    let task_id = c
        .triggers
        .submit_task(SubmitTaskRequest {
            trigger: Some(Trigger {
                text: format!("Rotate the vault credential, session {JWT}"),
                environment: "development".into(),
                role: "vault".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let done = h.wait_for(&task_id, TaskStatus::Completed, T).await;

    // The action ran with the real credentials.
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, format!("Bearer {BEARER}"));
    assert_eq!(got[0].1, API_KEY);
    assert!(got[0].2.contains(PASSWORD), "{}", got[0].2);

    // GetTask shows them redacted: the view's text and every event.
    let view = done.task.as_ref().unwrap();
    assert_eq!(view.text, "Rotate the vault credential, session <redacted>");
    let shown = format!("{done:?}");
    let secrets = [JWT, BEARER, API_KEY, PASSWORD];
    for secret in secrets {
        assert!(!shown.contains(secret), "{secret} shown by GetTask");
    }
    let approved = done
        .events
        .iter()
        .find_map(|r| match r.event.as_ref()?.body.as_ref()? {
            Body::TaskApproved(a) => a.plan.clone(),
            _ => None,
        })
        .expect("an approved plan among the events");
    let Some(action::Kind::Http(http)) = &approved.phases[0].steps[0].action.as_ref().unwrap().kind
    else {
        panic!("not an HTTP action")
    };
    assert_eq!(http.headers["Authorization"], "<redacted>");
    assert_eq!(http.headers["X-Api-Key"], "<redacted>");
    assert_eq!(http.headers["Content-Type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&http.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"user": "svc", "password": "<redacted>"})
    );
    assert_eq!(
        approved.summary,
        "rotate the credential (Authorization: <redacted>)"
    );

    // And the database rows themselves hold none of them.
    let mut db = sqlx::SqliteConnection::connect(&h.database_url)
        .await
        .unwrap();
    let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM audit_log")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert!(rows.len() >= 6, "{} records", rows.len());
    let texts: Vec<String> = sqlx::query_scalar("SELECT text FROM tasks")
        .fetch_all(&mut db)
        .await
        .unwrap();
    for secret in secrets {
        let needle = secret.as_bytes();
        for row in &rows {
            assert!(
                !row.windows(needle.len()).any(|w| w == needle),
                "{secret} stored in an audit record"
            );
        }
        assert!(
            texts.iter().all(|t| !t.contains(secret)),
            "{secret} in a view"
        );
    }
    // The chain verifies over what is stored.
    let v = h
        .clients("auditor", &[Role::Admin])
        .await
        .tasks
        .verify_audit(baton_proto::VerifyAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{v:?}");
}
