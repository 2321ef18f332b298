//! The end-to-end harness: Baton as `baton up` runs it (all six services in one process, its own
//! nats-server on a free port), a demo fleet of real web servers, and the audit log on SQLite or
//! a fresh PostgreSQL database. Used by `tests/` and `benches/`.

use baton::client::Clients;
use baton::config::BatonConfig;
use baton::up::{Baton, ServiceName};
use baton_fleet::{Fleet, FleetSpec};
use baton_proto::{GetTaskRequest, GetTaskResponse, TaskStatus};
use baton_runtime::auth::Role;
use std::time::Duration;

/// Where the audit log lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    /// A SQLite file in the data dir.
    Sqlite,
    /// A fresh database on the server named by `BATON_TEST_POSTGRES_URL`.
    Postgres,
}

/// A running Baton with a fleet.
pub struct Harness {
    /// All six services.
    pub baton: Baton,
    /// Ten production web servers, six drifted.
    pub fleet: Fleet,
    /// The data dir (SQLite file, nats store, inventory).
    pub data: tempfile::TempDir,
    /// The audit database URL.
    pub database_url: String,
}

/// The default test configuration: free ports, quick retries, fast redelivery.
pub fn test_config(data: &std::path::Path) -> BatonConfig {
    let mut c = BatonConfig::default();
    c.data_dir = data.to_path_buf();
    c.nats_server.port = 0;
    c.grpc_addr = "127.0.0.1:0".parse().unwrap();
    c.http_addr = "127.0.0.1:0".parse().unwrap();
    c.nats.ack_wait = Duration::from_secs(2);
    c.nats.backoff = vec![Duration::from_millis(100), Duration::from_millis(300)];
    c.nats.max_deliver = 4;
    // WatchTask on a task that never appears answers NOT_FOUND after this.
    c.audit.watch_wait = Duration::from_secs(2);
    c.validation.policy_dir = Some(policies_dir());
    c.log.filter = std::env::var("BATON_TEST_LOG").unwrap_or_else(|_| "warn".into());
    c
}

/// The repository's `policies/`.
pub fn policies_dir() -> std::path::PathBuf {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../policies").into()
}

/// A fresh PostgreSQL database for one test, on the server of `BATON_TEST_POSTGRES_URL`.
pub async fn fresh_postgres() -> String {
    use sqlx::Connection;
    let admin = std::env::var("BATON_TEST_POSTGRES_URL").expect(
        "BATON_TEST_POSTGRES_URL is not set: run the tests with deploy/test.sh, which starts PostgreSQL",
    );
    let name = format!("baton_e2e_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to PostgreSQL");
    // The name is generated here (a UUID), never user input.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.expect("create database");
    let (base, _) = admin.rsplit_once('/').expect("URL with a database");
    format!("{base}/{name}")
}

impl Harness {
    /// Starts everything with the default test configuration.
    pub async fn start(db: Db) -> Harness {
        Self::start_with(db, |_| {}).await
    }

    /// Starts everything, letting the test adjust the configuration first.
    pub async fn start_with(db: Db, adjust: impl FnOnce(&mut BatonConfig)) -> Harness {
        baton_runtime::telemetry::init(&test_config(std::path::Path::new(".")).log);
        let data = tempfile::tempdir().expect("temp dir");
        let fleet = Fleet::start(FleetSpec::demo_web()).await.expect("fleet");
        let inventory = data.path().join("inventory.toml");
        std::fs::write(&inventory, fleet.inventory_toml()).unwrap();
        let mut config = test_config(data.path());
        config.agents.inventory_path = inventory;
        let database_url = match db {
            Db::Sqlite => format!("sqlite://{}?mode=rwc", data.path().join("audit.db").display()),
            Db::Postgres => fresh_postgres().await,
        };
        config.audit.database_url = database_url.clone();
        adjust(&mut config);
        let baton = Baton::start(config, &ServiceName::ALL).await.unwrap_or_else(|e| panic!("baton did not start: {e}"));
        Harness { baton, fleet, data, database_url }
    }

    /// gRPC clients authenticated as `subject` of tenant `default` with `roles`.
    pub async fn clients(&self, subject: &str, roles: &[Role]) -> Clients {
        self.clients_of(subject, "default", roles).await
    }

    /// gRPC clients authenticated as `subject` of `tenant` with `roles`.
    pub async fn clients_of(&self, subject: &str, tenant: &str, roles: &[Role]) -> Clients {
        Clients::connect(&self.baton.grpc_url(), &self.baton.token(subject, tenant, roles)).await.expect("connect")
    }

    /// A plain NATS client (as an external publisher of triggers would use).
    pub async fn nats(&self) -> async_nats::Client {
        async_nats::connect(&self.baton.config.nats.url).await.expect("nats connect")
    }

    /// Polls `GetTask` (as an admin) until the task reaches `status`; panics with the task's
    /// events after `timeout`.
    pub async fn wait_for(&self, task_id: &str, status: TaskStatus, timeout: Duration) -> GetTaskResponse {
        let mut c = self.clients("test-admin", &[Role::Admin]).await;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(r) = c.tasks.get_task(GetTaskRequest { task_id: task_id.into() }).await {
                let r = r.into_inner();
                let s = r.task.as_ref().map(|t| t.status()).unwrap_or_default();
                if s == status {
                    return r;
                }
                if tokio::time::Instant::now() > deadline {
                    let lines: Vec<String> = r.events.iter().map(baton::client::describe).collect();
                    panic!("task {task_id} is {s:?}, not {status:?}, after {timeout:?}:\n{}", lines.join("\n"));
                }
            } else if tokio::time::Instant::now() > deadline {
                panic!("task {task_id} never appeared in the audit log within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
