//! Baton run with only an identity provider's keys (`auth.jwks_url`, no HS256 secret): no
//! development secret is written, RS256 tokens from the provider work with their tenant and
//! roles mapped from Keycloak-style claims, and HS256 tokens are refused. The provider is a
//! real HTTP server on loopback serving the key in `crates/runtime/tests/keys/`.

use baton::client::Clients;
use baton_proto::{GetTaskRequest, ListTasksRequest, SubmitTaskRequest, TaskStatus, Trigger};
use baton_tests::{Db, Harness};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const RSA: &[u8] = include_bytes!("../../crates/runtime/tests/keys/rsa.der");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_with_only_jwks_accepts_the_providers_tokens_and_no_hs256() {
    let key = EncodingKey::from_rsa_der(RSA);
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let set = JwkSet { keys: vec![jwk] };
    let app = axum::Router::new().route(
        "/certs",
        axum::routing::get(move || {
            let set = set.clone();
            async move { axum::Json(set) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/certs", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let url = jwks_url.clone();
    let h = Harness::start_with(Db::Sqlite, move |c| {
        c.common.auth.jwks_url = Some(url);
        c.common.auth.issuer = Some("https://idp.test/realms/baton".into());
        c.common.auth.audience = Some("baton".into());
        c.common.auth.roles_claim = "realm_access.roles".into();
    })
    .await;
    assert!(
        !h.data.path().join("jwt.secret").exists(),
        "with an identity provider no development secret is made"
    );

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "sub": "kim", "tenant": "acme", "iss": "https://idp.test/realms/baton", "aud": "baton",
        "exp": now + 600, "realm_access": {"roles": ["submitter", "offline_access"]},
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let mut c = Clients::connect(&h.baton.grpc_url(), &token).await.unwrap();
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
        .expect("a submitter from the identity provider may submit")
        .into_inner()
        .task_id;
    // (Harness::wait_for mints an admin token, which this deployment cannot do: poll as kim.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = c
            .tasks
            .get_task(GetTaskRequest {
                task_id: id.clone(),
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().task)
            .map(|t| t.status());
        if status == Some(TaskStatus::AwaitingApproval) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} is {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tasks = c
        .tasks
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].tenant, "acme");

    // An HS256 token, whatever its secret, is not accepted here.
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&[1u8; 48]),
    )
    .unwrap();
    let mut forged = Clients::connect(&h.baton.grpc_url(), &hs).await.unwrap();
    let err = forged
        .tasks
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().contains("identity provider"),
        "{}",
        err.message()
    );
}
