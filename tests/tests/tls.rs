//! gRPC over TLS and mutual TLS, with the certificates in `tests/certs/` (made for these tests
//! with `openssl`: a CA, a server certificate for `localhost` and `127.0.0.1`, a client
//! certificate; they protect nothing).

use baton::client::{ClientTls, Clients};
use baton_proto::ListTasksRequest;
use baton_runtime::auth::Role;
use baton_runtime::tls::GrpcTlsConfig;
use baton_tests::{Db, Harness};

fn cert(name: &str) -> std::path::PathBuf {
    concat!(env!("CARGO_MANIFEST_DIR"), "/certs")
        .parse::<std::path::PathBuf>()
        .unwrap()
        .join(name)
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(cert(name)).unwrap()
}

async fn list(h: &Harness, url: &str, tls: &ClientTls) -> Result<usize, String> {
    let token = h.baton.token("tia", "default", &[Role::Submitter]);
    let mut c = Clients::connect_tls(url, &token, tls)
        .await
        .map_err(|e| e.to_string())?;
    c.tasks
        .list_tasks(ListTasksRequest::default())
        .await
        .map(|r| r.into_inner().tasks.len())
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_serves_tls_with_the_configured_certificate() {
    let h = Harness::start_with(Db::Sqlite, |c| {
        c.common.grpc_tls = GrpcTlsConfig {
            cert: Some(cert("server.pem")),
            key: Some(cert("server.key")),
            client_ca: None,
        };
    })
    .await;
    let url = format!("https://localhost:{}", h.baton.grpc_addr.port());
    let trusting = ClientTls {
        ca: Some(pem("ca.pem")),
        identity: None,
    };
    assert_eq!(list(&h, &url, &trusting).await, Ok(0));
    // A client that does not trust the CA refuses the server (the system's CAs did not
    // issue it), and plain HTTP/2 is not spoken.
    assert!(list(&h, &url, &ClientTls::default()).await.is_err());
    assert!(
        list(&h, &h.baton.grpc_url(), &ClientTls::default())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_clients_with_its_certificates_get_in() {
    let h = Harness::start_with(Db::Sqlite, |c| {
        c.common.grpc_tls = GrpcTlsConfig {
            cert: Some(cert("server.pem")),
            key: Some(cert("server.key")),
            client_ca: Some(cert("ca.pem")),
        };
    })
    .await;
    let url = format!("https://127.0.0.1:{}", h.baton.grpc_addr.port());
    let with_cert = ClientTls {
        ca: Some(pem("ca.pem")),
        identity: Some((pem("client.pem"), pem("client.key"))),
    };
    assert_eq!(list(&h, &url, &with_cert).await, Ok(0));
    let without = ClientTls {
        ca: Some(pem("ca.pem")),
        identity: None,
    };
    assert!(
        list(&h, &url, &without).await.is_err(),
        "mutual TLS refuses a client without a certificate"
    );
    // A certificate is not a token: the bearer token is still checked.
    let mut c = Clients::connect_tls(&url, "not-a-jwt", &with_cert)
        .await
        .unwrap();
    let err = c
        .tasks
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

#[test]
fn half_configured_tls_is_a_config_error() {
    let half = GrpcTlsConfig {
        cert: Some(cert("server.pem")),
        ..Default::default()
    };
    assert!(
        half.validate()
            .unwrap_err()
            .to_string()
            .contains("grpc_tls.key")
    );
    let ca_only = GrpcTlsConfig {
        client_ca: Some(cert("ca.pem")),
        ..Default::default()
    };
    assert!(
        ca_only
            .validate()
            .unwrap_err()
            .to_string()
            .contains("grpc_tls.client_ca")
    );
}
