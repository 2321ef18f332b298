//! Test support: a real `nats-server -js` on a free loopback port with a temporary store,
//! and a [`Bus`] connected to it. Dropping [`TestNats`] kills the server and deletes the store.

use crate::server::NatsServer;
use crate::{Bus, BusConfig};
use std::time::Duration;

/// A throwaway JetStream server and a connected bus.
pub struct TestNats {
    /// The server (killed on drop).
    pub server: NatsServer,
    /// Connected to `server`, streams created.
    pub bus: Bus,
    /// The configuration `bus` used (connect more clients with it).
    pub config: BusConfig,
    _store: tempfile::TempDir,
}

impl TestNats {
    /// Starts `nats-server` from PATH. Panics with a how-to-install message when missing.
    pub async fn start() -> TestNats {
        let store = tempfile::tempdir().expect("temp dir");
        let server = NatsServer::start("nats-server", store.path(), 0)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let config = BusConfig {
            url: server.url().to_string(),
            // Tests exercise retries; keep them quick.
            backoff: vec![Duration::from_millis(50), Duration::from_millis(100)],
            ack_wait: Duration::from_secs(5),
            ..BusConfig::default()
        };
        let bus = Bus::connect(config.clone())
            .await
            .expect("connect to test nats-server");
        TestNats {
            server,
            bus,
            config,
            _store: store,
        }
    }
}
