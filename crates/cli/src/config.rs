//! `baton.toml`: the common settings plus one section per service. Layers: defaults → file
//! (`--config`) → `BATON_*` env (`BATON_NATS__URL`, `BATON_AUDIT__DATABASE_URL`) → flags.
//! `baton config` prints the merged result.

use baton_bus::BusConfig;
use baton_runtime::auth::AuthConfig;
use baton_runtime::catalog::Catalog;
use baton_runtime::config::{CommonConfig, LogConfig};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything a `baton` process can be configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatonConfig {
    /// NATS connection and streams. An empty `url` makes `baton up` start a nats-server child.
    pub nats: BusConfig,
    /// The nats-server child `baton up` starts when `nats.url` is empty.
    pub nats_server: NatsServerConfig,
    /// Token verification.
    pub auth: AuthConfig,
    /// Logging.
    pub log: LogConfig,
    /// gRPC listen address of the services.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address of `/health`, `/ready`, `/metrics`.
    pub http_addr: SocketAddr,
    /// Local state: audit database, nats-server store, development secret.
    pub data_dir: PathBuf,
    /// `[catalog]`: the roles and environments tasks may use.
    pub catalog: Catalog,
    /// What the client commands talk to.
    pub client: ClientConfig,
    /// `[ingestion]`.
    pub ingestion: baton_ingestion::Config,
    /// `[decision]`.
    pub decision: baton_decision::Config,
    /// `[agents]`: the agent runner.
    pub agents: baton_agent_runner::Config,
    /// `[validation]`.
    pub validation: baton_validation::Config,
    /// `[execution]`.
    pub execution: baton_execution::Config,
    /// `[audit]`.
    pub audit: baton_audit::Config,
}

impl Default for BatonConfig {
    fn default() -> Self {
        let common = CommonConfig::default();
        BatonConfig {
            nats: common.nats,
            nats_server: NatsServerConfig::default(),
            auth: common.auth,
            log: common.log,
            grpc_addr: common.grpc_addr,
            http_addr: common.http_addr,
            data_dir: common.data_dir,
            catalog: common.catalog,
            client: ClientConfig::default(),
            ingestion: Default::default(),
            decision: Default::default(),
            agents: Default::default(),
            validation: Default::default(),
            execution: Default::default(),
            audit: Default::default(),
        }
    }
}

impl BatonConfig {
    /// The settings shared by all services.
    pub fn common(&self) -> CommonConfig {
        CommonConfig {
            nats: self.nats.clone(),
            auth: self.auth.clone(),
            log: self.log.clone(),
            grpc_addr: self.grpc_addr,
            http_addr: self.http_addr,
            data_dir: self.data_dir.clone(),
            catalog: self.catalog.clone(),
        }
    }

    /// Loads defaults → `file` → `BATON_*` env.
    pub fn load(
        file: Option<&std::path::Path>,
    ) -> Result<BatonConfig, baton_runtime::config::ConfigError> {
        let f = baton_runtime::config::figment::<BatonConfig>(file, &[])?;
        baton_runtime::config::extract(&f)
    }
}

/// The nats-server child of `baton up`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsServerConfig {
    /// Binary to run.
    pub binary: String,
    /// Port on 127.0.0.1 (0 = any free port).
    pub port: u16,
}

impl Default for NatsServerConfig {
    fn default() -> Self {
        NatsServerConfig {
            binary: "nats-server".into(),
            port: 4222,
        }
    }
}

/// Where the client commands connect, and with which token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// gRPC endpoint (`http://127.0.0.1:50051`).
    pub url: String,
    /// Bearer token; when empty, the client mints one from the development secret in
    /// `data_dir` (local development only) with the roles the command needs.
    pub token: String,
    /// Tenant of minted development tokens.
    pub tenant: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            url: "http://127.0.0.1:50051".into(),
            token: String::new(),
            tenant: "default".into(),
        }
    }
}
