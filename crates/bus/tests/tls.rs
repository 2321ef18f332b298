//! NATS over TLS and mutual TLS against a real nats-server started with a `tls { … }` block,
//! with the test certificates in `tests/certs/` of the workspace (made with `openssl` for
//! these tests; they protect nothing).

use baton_bus::{Bus, BusConfig};
use std::path::PathBuf;
use std::time::Duration;

fn cert(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/certs")).join(name)
}

/// A nats-server with JetStream that speaks only TLS; `verify` makes it demand client
/// certificates issued by the test CA. Killed on drop.
struct TlsNats {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for TlsNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsNats {
    async fn start(verify: bool) -> TlsNats {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\n\
                 jetstream {{ store_dir: {:?} }}\n\
                 tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: {verify}\n  timeout: 2\n}}\n",
                dir.path().join("js"),
                cert("server.pem"),
                cert("server.key"),
                cert("ca.pem"),
            ),
        )
        .unwrap();
        let child = std::process::Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server on PATH (deploy/setup.sh installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        TlsNats {
            child,
            port,
            _dir: dir,
        }
    }

    fn config(&self) -> BusConfig {
        BusConfig {
            url: format!("tls://localhost:{}", self.port),
            tls_ca_file: Some(cert("ca.pem")),
            connect_timeout: Duration::from_secs(3),
            ..BusConfig::default()
        }
    }
}

#[tokio::test]
async fn the_bus_connects_over_tls_and_sets_up_its_streams() {
    let nats = TlsNats::start(false).await;
    let bus = Bus::connect(nats.config())
        .await
        .expect("TLS with the test CA");
    assert!(bus.is_connected());
    bus.jetstream()
        .get_stream("BATON")
        .await
        .expect("the stream was created over TLS");
}

#[tokio::test]
async fn with_verify_only_a_client_certificate_of_the_ca_gets_in() {
    let nats = TlsNats::start(true).await;
    let err = Bus::connect(nats.config())
        .await
        .err()
        .expect("no client certificate: refused");
    assert!(err.to_string().contains("localhost"), "{err}");
    let bus = Bus::connect(BusConfig {
        tls_cert_file: Some(cert("client.pem")),
        tls_key_file: Some(cert("client.key")),
        ..nats.config()
    })
    .await
    .expect("mutual TLS with the client certificate");
    assert!(bus.is_connected());
}

#[test]
fn a_client_certificate_needs_its_key() {
    let half = BusConfig {
        url: "tls://localhost:4222".into(),
        tls_cert_file: Some(cert("client.pem")),
        ..BusConfig::default()
    };
    let err = half.validate().unwrap_err().to_string();
    assert!(err.contains("nats.tls_key_file"), "{err}");
}
