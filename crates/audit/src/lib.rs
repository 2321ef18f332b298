//! Audit: the system of record. Stores every event of the path in an append-only,
//! hash-chained log (SQLite by default, PostgreSQL when the URL says so), keeps a `tasks`
//! projection of them, and answers `baton.v1.TaskService` (`GetTask`, `ListTasks`,
//! `WatchTask`, `WatchProgress`, `VerifyAudit`).
//!
//! `GetTask` also returns the artifacts of the task's plan (a report, generated code, a
//! sandbox report), read from the task's recorded plan ([`projection::task_artifacts`]; content
//! up to [`ARTIFACT_CONTENT_MAX`]). `WatchProgress` forwards the agent's progress messages
//! (core NATS `baton.progress.<tenant>.<task>`, not stored: the plan's `agent_run` is the
//! record) until the task's plan is recorded.
//!
//! In: every subject of stream `BATON` (`baton.>`, durable `audit`) except raw triggers
//! (`baton.trigger.>`, which ingestion's `task_received`/`trigger_rejected` carry), and every
//! dead letter of stream `BATON_DEAD` (`baton.dead.>`, durable `audit-dead`). Out: nothing on
//! NATS; records are pushed to `WatchTask` streams after they are stored.
//!
//! The hot path never makes a database round trip per event: both consumers feed one writer,
//! a [`Bus::consume_batch`](baton_bus::Bus::consume_batch) loop that hands it the messages
//! that arrive within [`Config::batch_linger`] of a batch's first (up to
//! [`Config::batch_size`]), so the events of a task share a transaction even when the writer
//! keeps up with them one by one; each committed batch counts in `baton_audit_batches_total`.
//! The writer drops event ids already stored (one
//! query) or repeated in the batch, appends the rest and updates their task views in one
//! transaction, commits, then the batch is acked — with one cumulative ack per consumer
//! ([`consumers`]), which the bus sends only when it covers no event this writer has not
//! stored (a failed or redelivered event, or one a crashed writer held, holds it back until
//! that event is stored). On a database error the whole batch is
//! nak'ed and redelivered. A payload that is not a protobuf `Event` is stored anyway, as kind
//! `undecodable` with its raw bytes, so nothing that reached the stream is missing from the log.
//!
//! The bus's guards hold for audit as for every consumer: a redelivered message is stored in a
//! batch of its own (so a message that makes the writer fail, panic or hang cannot take the
//! rest of its batch with it), and a message delivered more than `max_deliver` times without
//! being settled is dead-lettered. A batch that cannot be stored is nak'ed; once its messages
//! used up their deliveries, the bus dead-letters each to `baton.dead.audit`, and audit stores
//! the carried event under its own id when that dead letter comes back (see
//! [`store::NewRecord::unwrap_own_dead_letter`]), so a database outage loses nothing and fails
//! no task.
//!
//! One writer: the chain head (last sequence and hash) lives in the writer's memory, so run
//! one audit replica per database. [`Audit::new`] enforces it by taking the database's writer
//! lock ([`store::Store::lock_writer`]) and fails with [`Error::WriterLocked`] while another
//! writer holds it; the lock is held until [`Audit::run`] returns (or the `Audit` is dropped).
//! After a failed batch the writer reloads the chain head from the database before the next.
//! Before each batch the writer makes sure it still holds the lock (PostgreSQL drops it with
//! its connection; [`store::WriterLock::ensure`] takes it again); a writer that finds another
//! one holding it nak's the batch and stops with [`Error::WriterLocked`].
//!
//! The log's end is anchored outside the database ([`anchor`]): each stored batch hands the
//! chain head (sequence and hash) to one anchor writer task, which signs it with audit's key
//! (`signing_key`) and writes the newest into the JetStream KV bucket [`anchor::ANCHOR_BUCKET`]
//! off the batch path — at most one write in flight and one per [`Config::anchor_interval`],
//! so batches coalesce; the batch is acked once committed, not waiting for the anchor, and the
//! newest head is anchored before [`Audit::run`] returns. The anchor trails the database by at
//! most one interval plus one write. On start a database that stops short of the anchor, or holds another record at the
//! anchored sequence, is refused ([`Error::AnchorAhead`], [`Error::AnchorMismatch`]), and
//! `VerifyAudit` names records missing against the anchor.

pub mod anchor;
pub mod chain;
mod grpc;
pub mod projection;
pub mod store;

use baton_bus::{
    BatchResult, BatchSpec, BusError, ConsumerSpec, Delivery, HandlerError, TASK_ID_HEADER,
    TENANT_HEADER,
};
use baton_proto::subject;
use baton_runtime::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{MessageMeta, NewRecord, Store, StoredRecord, WriterLock};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

pub use store::{ChainHead, TaskPage, TaskQuery, Verification};

/// Most bytes of an artifact's content that `GetTask` returns inline (256 KiB): a report,
/// generated code and its tests fit easily, while a response holding several copies of one
/// large artifact (the plan's events are returned too) stays well under gRPC's default 4 MiB
/// message limit. A larger artifact is listed with its size and `content_omitted`; its whole
/// content is in the plan's event among the response's events (NATS's `max_payload`, 1 MiB
/// by default, bounds a plan and so every artifact).
pub const ARTIFACT_CONTENT_MAX: usize = 256 * 1024;

/// Producer name and metrics label.
pub const SERVICE: &str = "audit";
/// gRPC services served, for health reporting.
pub const GRPC_SERVICES: &[&str] = &["baton.v1.TaskService"];
/// Durable consumer of the main stream.
pub const DURABLE: &str = "audit";

/// How often the database is pinged for the `/ready` probe.
pub const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Durable consumer of the dead-letter stream.
pub const DURABLE_DEAD: &str = "audit-dead";

/// Default of [`Config::batch_linger`]: 5 ms (see there why).
pub const DEFAULT_BATCH_LINGER: Duration = Duration::from_millis(5);
/// Largest [`Config::batch_linger`] accepted: 1 s.
pub const MAX_BATCH_LINGER: Duration = Duration::from_secs(1);

/// Settings of the audit service (`[audit]` in baton.toml, `BATON_AUDIT__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the log lives: `sqlite://<path>?mode=rwc` (parent directories are created) or
    /// `postgres://user:password@host:5432/db`. Empty means `<data_dir>/audit.db` (see
    /// [`Config::sqlite_url`]), filled in when the service is started by `baton`.
    pub database_url: String,
    /// Connections in the pool.
    pub max_connections: u32,
    /// Most messages stored in one transaction (1–10000).
    pub batch_size: usize,
    /// How long a batch waits, after its first event arrived, for more events (up to
    /// `batch_size`) before it is stored (`5ms` by default; `0s`: store whatever is ready at
    /// once; at most 1 s). A task's events come from five services a few milliseconds apart;
    /// without a linger, a writer that keeps up stores each alone (one transaction and one
    /// anchor hand-over per event), and those commits compete for the CPU with the path
    /// itself. 5 ms gathers most of a task's events into one commit while adding at most
    /// 5 ms to the audit lag (event time to storage), far inside its 100 ms goal. Events wait
    /// unacknowledged meanwhile, which is why it is capped well below `nats.ack_wait`.
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
    /// Records buffered for `WatchTask` streams; a watcher that falls further behind re-reads
    /// from the database.
    pub watch_buffer: usize,
    /// How long `WatchTask` waits for a task that has no record yet before NOT_FOUND.
    #[serde(with = "humantime_serde")]
    pub watch_wait: Duration,
    /// File of the Ed25519 private key that signs the anchored head of the log (64 hex
    /// characters of seed, readable by its owner only; created when missing — only audit uses
    /// it). Empty: `<data_dir>/audit.key`, filled in when the service is started by `baton`.
    #[serde(skip_serializing_if = "is_empty_path")]
    pub signing_key: PathBuf,
    /// Least time between two writes of the anchored head (`100ms` by default; `0s`: back to
    /// back). Heads of batches stored meanwhile coalesce into the next write, so the anchor
    /// trails the database by at most this plus one write (see [`anchor`]); at most 60 s.
    #[serde(with = "humantime_serde")]
    pub anchor_interval: Duration,
}

/// True for an unset path (serde `skip_serializing_if`).
fn is_empty_path(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: String::new(),
            max_connections: 8,
            batch_size: 500,
            batch_linger: DEFAULT_BATCH_LINGER,
            watch_buffer: 4096,
            watch_wait: Duration::from_secs(60),
            signing_key: PathBuf::new(),
            anchor_interval: Duration::from_millis(100),
        }
    }
}

impl Config {
    /// The SQLite URL of `<data_dir>/audit.db` (created if missing).
    pub fn sqlite_url(data_dir: &Path) -> String {
        format!("sqlite://{}?mode=rwc", data_dir.join("audit.db").display())
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), Error> {
        if self.database_url.trim().is_empty() {
            return Err(Error::Config(
                "audit.database_url is empty: set it to sqlite://<path>?mode=rwc or postgres://user:pass@host/db".into(),
            ));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(Error::Config(
                "audit.batch_size must be between 1 and 10000".into(),
            ));
        }
        if self.batch_linger > MAX_BATCH_LINGER {
            return Err(Error::Config(format!(
                "audit.batch_linger is {:?}: it must be between 0s and {:?} (events wait \
                 unacknowledged that long before they are stored); `0s` stores whatever is \
                 ready at once",
                self.batch_linger, MAX_BATCH_LINGER
            )));
        }
        if self.watch_buffer == 0 {
            return Err(Error::Config(
                "audit.watch_buffer must be at least 1".into(),
            ));
        }
        if self.anchor_interval > Duration::from_secs(60) {
            return Err(Error::Config(
                "audit.anchor_interval must be at most 60s: the anchor may trail the log by that \
                 much, which leaves deleted newest records undetected that long"
                    .into(),
            ));
        }
        if self.signing_key.as_os_str().is_empty() {
            return Err(Error::Config(
                "audit.signing_key is empty: set it to the file of audit's anchor key (created \
                 when missing)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// What went wrong in the audit service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid.
    #[error("{0}")]
    Config(String),
    /// The database could not be reached.
    #[error(
        "cannot connect to the audit database {url}: {source}; check audit.database_url and that the database is up"
    )]
    Connect {
        /// The URL (password redacted).
        url: String,
        /// sqlx's error (refused connection, authentication, missing database).
        source: sqlx::Error,
    },
    /// The schema could not be migrated.
    #[error("cannot migrate the audit database: {0}; was it written by a newer baton?")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("audit database: cannot {action}: {source}")]
    Database {
        /// What was being done.
        action: &'static str,
        /// sqlx's error for that query.
        source: sqlx::Error,
    },
    /// A directory for the database could not be created.
    #[error("cannot create {path}: {source}")]
    Io {
        /// The directory that could not be created (the SQLite file's parent).
        path: PathBuf,
        /// The file system's error (permissions, read-only file system).
        source: std::io::Error,
    },
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A request argument is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// The database stops short of the head anchored outside it: its newest records were
    /// removed.
    #[error(
        "{}: the database ends at {database_end}, the anchor at {anchor}; restore the audit \
         database from a backup, or to accept the loss delete key head of bucket \
         baton_audit_anchor (nats kv del baton_audit_anchor head)",
        store::missing_records(database_end + 1, *anchor)
    )]
    AnchorAhead {
        /// The database's last sequence.
        database_end: u64,
        /// The anchored sequence.
        anchor: u64,
    },
    /// The record at the anchored sequence is not the anchored one.
    #[error(
        "record {sequence}, which the anchor names, {problem}; restore the audit database from a \
         backup (VerifyAudit names the first bad record)"
    )]
    AnchorMismatch {
        /// The anchored sequence.
        sequence: u64,
        /// What is wrong with the record there.
        problem: String,
    },
    /// The anchor cannot be read or written.
    #[error("audit anchor (bucket baton_audit_anchor): {0}")]
    Anchor(String),
    /// The anchor is not signed by audit's key.
    #[error("audit anchor (bucket baton_audit_anchor): {0}")]
    AnchorForged(String),
    /// Audit's signing key cannot be used.
    #[error("audit.signing_key: {0}")]
    Key(#[from] baton_runtime::signing::KeyError),
    /// Another audit writer holds the database's writer lock.
    #[error(
        "another audit writer holds the lock on {database}; run one audit replica per database"
    )]
    WriterLocked {
        /// The database (SQLite path, or the URL with its password redacted).
        database: String,
    },
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Status;
        match &e {
            Error::Config(_) => Status::failed_precondition(e.to_string()),
            Error::Connect { .. } | Error::Bus(_) => Status::unavailable(e.to_string()),
            Error::Migrate(_) => Status::failed_precondition(e.to_string()),
            Error::Database { source, .. } => match source {
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed => Status::unavailable(e.to_string()),
                sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                    Status::data_loss(e.to_string())
                }
                _ => Status::internal(e.to_string()),
            },
            Error::Io { .. } => Status::internal(e.to_string()),
            Error::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
            Error::WriterLocked { .. } => Status::failed_precondition(e.to_string()),
            Error::AnchorAhead { .. } | Error::AnchorMismatch { .. } | Error::AnchorForged(_) => {
                Status::data_loss(e.to_string())
            }
            Error::Anchor(_) => Status::unavailable(e.to_string()),
            Error::Key(_) => Status::failed_precondition(e.to_string()),
        }
    }
}

/// The audit service: its store, its consumers and its gRPC server.
pub struct Audit {
    ctx: Context,
    config: Config,
    store: Arc<Store>,
    /// Newly stored records, for `WatchTask`.
    live: broadcast::Sender<Arc<StoredRecord>>,
    /// Cancelled when [`Audit::run`] returns, ending open `WatchTask` streams.
    stopped: CancellationToken,
    /// This process's claim to be the database's only writer, checked before each batch.
    lock: tokio::sync::Mutex<WriterLock>,
    /// The head anchored outside the database (read by `VerifyAudit`).
    anchor: Arc<anchor::Anchor>,
    /// Anchors the newest stored head off the batch path.
    anchor_writer: anchor::AnchorWriter,
}

impl Audit {
    /// Validates `config`, opens the database (running migrations), takes its writer lock and
    /// loads the chain head.
    ///
    /// Errors: [`Error::WriterLocked`] while another audit writer holds the lock of this
    /// database; see [`Store::open`] and [`Store::lock_writer`] for the others.
    pub async fn new(ctx: Context, config: Config) -> Result<Audit, Error> {
        config.validate()?;
        let store = Arc::new(Store::open(&config.database_url, config.max_connections).await?);
        let lock = match store.lock_writer().await {
            Ok(lock) => lock,
            Err(e) => {
                store.close().await;
                return Err(e);
            }
        };
        let head = store.head().await;
        let anchor = match anchor::Anchor::open(&ctx.bus, &config.signing_key).await {
            Ok(a) => a,
            Err(e) => {
                store.close().await;
                return Err(e);
            }
        };
        // A database that stops short of (or differs at) the anchored head is refused before
        // anything is appended to it.
        if let Err(e) = anchor.check(&store).await {
            error!(error = %e, "audit database does not reach its anchored head");
            store.close().await;
            return Err(e);
        }
        // Anchor the head as found (a crash may have left the anchor behind the database); the
        // writer task retries a failure.
        let anchored = match anchor.publish(&head).await {
            Ok(()) => Some(head.clone()),
            Err(e) => {
                error!(error = %e, "cannot anchor the audit head; retrying");
                None
            }
        };
        let anchor = Arc::new(anchor);
        let anchor_writer = anchor::AnchorWriter::start(
            anchor.clone(),
            head.clone(),
            anchored,
            config.anchor_interval,
        );
        info!(
            backend = store.backend(),
            last_sequence = head.sequence,
            anchor_key_id = anchor.key_id(),
            "audit log opened; writer lock taken; head anchored"
        );
        let (live, _) = broadcast::channel(config.watch_buffer);
        Ok(Audit {
            ctx,
            config,
            store,
            live,
            stopped: CancellationToken::new(),
            lock: tokio::sync::Mutex::new(lock),
            anchor,
            anchor_writer,
        })
    }

    /// The store (for offline verification and tests).
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// Adds `baton.v1.TaskService`.
    pub fn add_grpc(&self, routes: &mut tonic::service::RoutesBuilder) {
        routes.add_service(baton_proto::task_service_server::TaskServiceServer::new(
            grpc::TaskApi {
                store: self.store.clone(),
                auth: self.ctx.auth.clone(),
                live: self.live.clone(),
                watch_wait: self.config.watch_wait,
                stopped: self.stopped.clone(),
                anchor: self.anchor.clone(),
                nats: self.ctx.bus.client().clone(),
            },
        ));
    }

    /// Stores messages from both streams until `shutdown`; finishes the batch in hand first.
    ///
    /// Both consumers feed one [`Bus::consume_batch`](baton_bus::Bus::consume_batch) loop, so
    /// audit has the bus's guards: a message delivered more than `max_deliver` times without
    /// being settled is dead-lettered, and a redelivered message is stored in a batch of its
    /// own. Errors: [`Error::WriterLocked`] when another writer took the database's lock.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let _stopped = self.stopped.clone().drop_guard();
        let bus = &self.ctx.bus;
        let spec = BatchSpec::new(consumers(bus.config()), self.config.batch_size)
            .linger(self.config.batch_linger);
        self.watch_database(shutdown.clone());
        // Cancelled by shutdown, or by the handler when another writer took the lock.
        let stop = shutdown.child_token();
        let lost: std::sync::Mutex<Option<Error>> = std::sync::Mutex::new(None);
        let result = bus
            .consume_batch(spec, stop.clone(), |batch| async {
                let (result, fatal) = self.handle_batch(batch).await;
                if let Some(e) = fatal {
                    *lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    stop.cancel();
                }
                result
            })
            .await;
        // Every batch is settled: anchor the newest head before audit exits (also after an
        // error, so what was stored is covered).
        self.anchor_writer.stop().await;
        result?;
        if let Some(e) = lost.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        self.lock.into_inner().release().await;
        info!("audit writer stopped; writer lock released");
        Ok(())
    }

    /// Adds the `audit database` readiness probe, kept current by pinging the database every
    /// [`PING_EVERY`] until `shutdown` (the probe itself does no I/O).
    fn watch_database(&self, shutdown: CancellationToken) {
        let state: Arc<std::sync::Mutex<Result<(), String>>> =
            Arc::new(std::sync::Mutex::new(Ok(())));
        let probe = state.clone();
        self.ctx.readiness.add(
            "audit database",
            Arc::new(move || probe.lock().unwrap_or_else(|p| p.into_inner()).clone()),
        );
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PING_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        let result = store.ping().await;
                        *state.lock().unwrap_or_else(|p| p.into_inner()) = result;
                    }
                }
            }
        });
    }

    /// Stores one batch; its messages are settled by the returned result (all ack'ed, or all
    /// nak'ed and redelivered).
    ///
    /// The second value is [`Error::WriterLocked`] when this writer lost its lock to another
    /// one (the batch is nak'ed for the lock holder and this writer must stop).
    async fn handle_batch(&self, batch: Vec<Delivery>) -> (BatchResult, Option<Error>) {
        let started = Instant::now();
        let mut records = Vec::with_capacity(batch.len());
        let mut skipped = 0usize;
        let triggers = format!("{}.", subject::TRIGGER_PREFIX);
        for d in &batch {
            if d.subject().starts_with(&triggers) {
                skipped += 1;
                continue;
            }
            records.push(
                NewRecord::from_message(
                    d.subject(),
                    d.payload(),
                    MessageMeta {
                        msg_id: d.header("Nats-Msg-Id"),
                        task_id: d.header(TASK_ID_HEADER),
                        tenant: d.header(TENANT_HEADER),
                        fallback_id: format!("{}.{}", d.stream(), d.stream_sequence()),
                    },
                )
                .unwrap_own_dead_letter(SERVICE),
            );
        }
        // A batch of raw triggers only makes no transaction.
        let commits = !records.is_empty();
        // Only `ensure` can fail with WriterLocked: another writer has the lock.
        let result = match self.lock.lock().await.ensure(&self.store).await {
            Ok(()) => self.store.append(records).await,
            Err(e) => Err(e),
        };
        let secs = started.elapsed().as_secs_f64();
        let outcome = match &result {
            Ok(stored) => {
                if commits {
                    self.ctx.metrics.audit_batches.inc();
                }
                self.ctx.metrics.audit_records.inc_by(stored.len() as u64);
                for r in stored {
                    self.ctx.metrics.count_final(&r.record.subject);
                    if r.record.event_time > 0 {
                        let lag = (r.recorded_at - r.record.event_time).max(0) as f64 / 1e6;
                        self.ctx.metrics.audit_lag_seconds.observe(lag);
                    }
                }
                debug!(
                    messages = batch.len(),
                    stored = stored.len(),
                    skipped,
                    "batch stored"
                );
                "ok"
            }
            Err(e) => {
                self.ctx.metrics.audit_write_errors.inc();
                error!(error = %e, messages = batch.len(), "cannot store batch; will redeliver");
                "retry"
            }
        };
        for _ in &batch {
            self.ctx.metrics.observe(SERVICE, outcome, secs);
        }
        match result {
            Ok(stored) => {
                // The anchor writer task anchors the newest head off the batch path; the
                // batch is committed, so it is acked without waiting for the anchor.
                if !stored.is_empty() {
                    self.anchor_writer.submit(self.store.head().await);
                }
                for mut r in stored {
                    // Watchers decode what they show; the buffer need not hold both forms.
                    r.record.decoded = Default::default();
                    // No receivers is fine: nobody is watching.
                    let _ = self.live.send(Arc::new(r));
                }
                (BatchResult::All(Ok(())), None)
            }
            Err(e) => {
                let settle = BatchResult::All(Err(HandlerError::Retry(e.to_string())));
                match e {
                    e @ Error::WriterLocked { .. } => (settle, Some(e)),
                    _ => (settle, None),
                }
            }
        }
    }
}

/// Audit's two consumers: `audit` on the main stream (`baton.>`) and `audit-dead` on the
/// dead-letter stream (`baton.dead.>`), both acked cumulatively — one ack per stored batch,
/// which the bus never lets cover an event not yet stored (see [`baton_bus::BatchSpec`]).
pub fn consumers(bus: &baton_bus::BusConfig) -> Vec<ConsumerSpec> {
    let main = ConsumerSpec::new(SERVICE, DURABLE, "baton.>").cumulative_ack();
    let dead = ConsumerSpec {
        stream: bus.dead_stream.clone(),
        ..ConsumerSpec::new(SERVICE, DURABLE_DEAD, "baton.dead.>").cumulative_ack()
    };
    vec![main, dead]
}

/// Convenience matching the design's `run(config, shutdown)`.
pub async fn run(ctx: Context, config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    Audit::new(ctx, config).await?.run(shutdown).await
}

impl baton_runtime::service::Service for Audit {
    type Config = Config;
    type Error = Error;
    const NAME: &'static str = SERVICE;
    const SECTION: &'static str = "audit";
    const GRPC_SERVICES: &'static [&'static str] = GRPC_SERVICES;

    fn validate(config: &Config) -> Result<(), Error> {
        config.validate()
    }

    fn prepare(config: &mut Config, common: &baton_runtime::config::CommonConfig) {
        if config.database_url.trim().is_empty() {
            config.database_url = Config::sqlite_url(&common.data_dir);
        }
        if config.signing_key.as_os_str().is_empty() {
            config.signing_key = common.data_dir.join(baton_runtime::signing::AUDIT_KEY_FILE);
        }
    }

    fn start(
        ctx: Context,
        config: Config,
    ) -> impl std::future::Future<Output = Result<Self, Error>> + Send {
        Audit::new(ctx, config)
    }

    fn add_grpc(&self, routes: &mut tonic::service::RoutesBuilder) {
        Audit::add_grpc(self, routes)
    }

    fn serve(
        self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send {
        self.run(shutdown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(batch_linger: Duration) -> Config {
        Config {
            database_url: "sqlite::memory:".into(),
            signing_key: PathBuf::from("audit.key"),
            batch_linger,
            ..Config::default()
        }
    }

    #[test]
    fn batch_linger_is_bounded_and_the_error_names_the_key_and_range() {
        for ok in [Duration::ZERO, DEFAULT_BATCH_LINGER, MAX_BATCH_LINGER] {
            config(ok).validate().unwrap();
        }
        let err = config(Duration::from_millis(1001))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("audit.batch_linger") && err.contains("between 0s and 1s"),
            "{err}"
        );
    }
}
