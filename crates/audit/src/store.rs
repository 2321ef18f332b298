//! The audit store: `audit_log` (append-only, hash-chained) and the `tasks` projection, in
//! SQLite or PostgreSQL.
//!
//! The API has no update or delete. [`Store::append`] is the only writer: it assigns sequence
//! numbers and hashes from the chain head it keeps in memory (loaded at open), so exactly one
//! process may append to a database at a time. The audit service enforces that with
//! [`Store::lock_writer`] (a PostgreSQL advisory lock, or an exclusive lock on
//! `<db>.writer.lock` next to a SQLite file); reading needs no lock. Each call is one
//! transaction holding the new rows and the task rows derived from them. After a failed
//! append the head is reloaded from the database before the next one, so a commit that
//! applied despite reporting an error (or rows appended by someone else) cannot leave the
//! writer reusing taken sequence numbers.
//!
//! Both backends share the SQL: statements use `$n` placeholders (which SQLite accepts too),
//! and [`with_db!`] instantiates a body once per backend.

use crate::Error;
use crate::chain::{HashInput, record_hash};
use crate::projection::{TaskRow, micros_to_timestamp, timestamp_to_micros};
use baton_proto::{AuditRecord, Event, Risk, TaskStatus, TaskView};
use prost::Message as _;
use sqlx::Connection as _;
use sqlx::QueryBuilder;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::Mutex;
use tracing::{info, warn};

/// Rows per multi-row statement (12 parameters each stays far below both backends' limits).
const ROWS_PER_STATEMENT: usize = 500;
/// Rows read per query while verifying.
const VERIFY_BATCH: i64 = 1_000;
/// The `application_name` of the connection holding the PostgreSQL writer lock, to find it in
/// `pg_stat_activity`.
pub const WRITER_LOCK_APPLICATION_NAME: &str = "baton-audit-writer-lock";
/// Key of the PostgreSQL advisory lock the writer holds (`"batonaud"` in ASCII). Advisory
/// locks are per database, so writers of different databases do not contend.
pub const WRITER_LOCK_KEY: i64 = 0x6261_746f_6e61_7564;
/// Kind stored for a payload that is not a protobuf `Event`.
pub const UNDECODABLE: &str = "undecodable";

/// A connection pool of either backend.
#[derive(Debug, Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the backend's pool and `$DB` to its `sqlx::Database`.
macro_rules! with_db {
    ($db:expr, $pool:ident, $DB:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => {
                #[allow(dead_code)]
                type $DB = sqlx::Sqlite;
                $body
            }
            Db::Postgres($pool) => {
                #[allow(dead_code)]
                type $DB = sqlx::Postgres;
                $body
            }
        }
    };
}

/// The last record of the chain: what the next record links to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainHead {
    /// Sequence of the last record (0 for an empty log).
    pub sequence: u64,
    /// Its hash (`""` for an empty log).
    pub hash: String,
}

/// An event to append, before it has a place in the chain (what a [`StoredRecord`] holds
/// besides its place).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct NewRecord {
    /// Unique id; a second record with the same id is dropped.
    pub event_id: String,
    /// Task id (empty when unknown).
    pub task_id: String,
    /// Tenant (empty when unknown).
    pub tenant: String,
    /// NATS subject it arrived on.
    pub subject: String,
    /// `baton_proto::event_kind` of the event, or [`UNDECODABLE`].
    pub kind: String,
    /// Producing service (empty when unknown).
    pub producer: String,
    /// Event time, microseconds since the Unix epoch (0 when unknown).
    pub event_time: i64,
    /// The bytes as received.
    pub payload: Vec<u8>,
}

/// What a message carried besides its payload, for records that cannot be decoded.
#[derive(Debug, Clone, Default)]
pub struct MessageMeta<'a> {
    /// `Nats-Msg-Id`.
    pub msg_id: Option<&'a str>,
    /// `Baton-Task-Id`.
    pub task_id: Option<&'a str>,
    /// `Baton-Tenant`.
    pub tenant: Option<&'a str>,
    /// Unique id to use when neither the event nor the message has one
    /// (`<stream>.<stream sequence>`).
    pub fallback_id: String,
}

impl NewRecord {
    /// A record of a decoded event.
    pub fn from_event(subject: &str, event: &Event) -> NewRecord {
        NewRecord {
            event_id: event.event_id.clone(),
            task_id: event.task_id.clone(),
            tenant: event.tenant.clone(),
            subject: subject.to_string(),
            kind: baton_proto::event_kind(event).to_string(),
            producer: event.producer.clone(),
            event_time: event.time.as_ref().map(timestamp_to_micros).unwrap_or(0),
            payload: event.encode_to_vec(),
        }
    }

    /// A record of a message as received. A payload that is not a protobuf `Event` is kept as
    /// kind [`UNDECODABLE`] (its ids come from the headers), so nothing is lost; an event whose
    /// body this build does not know is kept as kind `unknown`. The stored payload is always
    /// the received bytes.
    pub fn from_message(subject: &str, payload: &[u8], meta: MessageMeta<'_>) -> NewRecord {
        let or = |a: &str, b: Option<&str>| {
            if a.is_empty() {
                b.unwrap_or("").to_string()
            } else {
                a.to_string()
            }
        };
        let mut record = match Event::decode(payload) {
            Ok(event) => {
                let mut r = NewRecord::from_event(subject, &event);
                r.task_id = or(&r.task_id, meta.task_id);
                r.tenant = or(&r.tenant, meta.tenant);
                r.event_id = or(&r.event_id, meta.msg_id);
                r
            }
            Err(_) => NewRecord {
                event_id: meta.msg_id.unwrap_or("").to_string(),
                task_id: meta.task_id.unwrap_or("").to_string(),
                tenant: meta.tenant.unwrap_or("").to_string(),
                subject: subject.to_string(),
                kind: UNDECODABLE.to_string(),
                producer: String::new(),
                event_time: 0,
                payload: Vec::new(),
            },
        };
        if record.event_id.is_empty() {
            record.event_id = meta.fallback_id;
        }
        record.payload = payload.to_vec();
        record
    }
}

impl NewRecord {
    /// A dead letter that audit itself produced (it could not store a message before the
    /// stream gave up redelivering it) stands for the message it carries: returns the record
    /// of that message (unwrapping nested dead letters), so the original event is stored under
    /// its own id and the task is not marked failed by audit's own outage. A carried payload
    /// that was truncated or is not an event leaves the dead letter as it is.
    pub fn unwrap_own_dead_letter(self, service: &str) -> NewRecord {
        let mut record = self;
        while record.kind == "dead_letter" {
            let Ok(event) = Event::decode(record.payload.as_slice()) else {
                break;
            };
            let Some(baton_proto::event::Body::DeadLetter(dl)) = event.body else {
                break;
            };
            if dl.service != service {
                break;
            }
            match baton_bus::decode_event(&dl.payload) {
                Ok(inner) => {
                    let mut r = NewRecord::from_event(&dl.subject, &inner);
                    // Keep the bytes as they were published.
                    r.payload = dl.payload;
                    record = r;
                }
                Err(_) => break,
            }
        }
        record
    }
}

/// A record as stored: a place in the chain.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredRecord {
    /// Position in the log, from 1.
    pub sequence: i64,
    /// The event and where it came from.
    #[sqlx(flatten)]
    pub record: NewRecord,
    /// When it was stored, microseconds since the Unix epoch.
    pub recorded_at: i64,
    /// Hash of the previous record (`""` for the first).
    pub prev_hash: String,
    /// Hash of this record (see [`crate::chain`]).
    pub hash: String,
}

impl StoredRecord {
    /// The decoded event, when the payload is one.
    pub fn event(&self) -> Option<Event> {
        Event::decode(self.record.payload.as_slice())
            .ok()
            .filter(|_| self.record.kind != UNDECODABLE)
    }

    /// The hash this record should have.
    pub fn compute_hash(&self) -> String {
        record_hash(&HashInput {
            sequence: self.sequence as u64,
            event_id: &self.record.event_id,
            task_id: &self.record.task_id,
            tenant: &self.record.tenant,
            subject: &self.record.subject,
            kind: &self.record.kind,
            producer: &self.record.producer,
            event_time: self.record.event_time,
            recorded_at: self.recorded_at,
            payload: &self.record.payload,
            prev_hash: &self.prev_hash,
        })
    }

    /// Time for projections: the event's, else when it was recorded.
    pub fn effective_time(&self) -> i64 {
        if self.record.event_time != 0 {
            self.record.event_time
        } else {
            self.recorded_at
        }
    }

    /// The protobuf record (`event` is unset for undecodable payloads).
    pub fn to_proto(&self) -> AuditRecord {
        AuditRecord {
            sequence: self.sequence as u64,
            subject: self.record.subject.clone(),
            event: self.event(),
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
            recorded_at: Some(micros_to_timestamp(self.recorded_at)),
        }
    }
}

/// A `tasks` row as the database holds it.
#[derive(Debug, sqlx::FromRow)]
struct TaskDbRow {
    task_id: String,
    tenant: String,
    status: String,
    role: String,
    task_type: String,
    environment: String,
    risk: String,
    text: String,
    submitted_by: String,
    reason: String,
    created_at: i64,
    updated_at: i64,
    event_count: i64,
}

impl From<TaskDbRow> for TaskRow {
    fn from(r: TaskDbRow) -> TaskRow {
        TaskRow {
            task_id: r.task_id,
            tenant: r.tenant,
            status: TaskStatus::parse(&r.status).unwrap_or(TaskStatus::Unspecified),
            role: r.role,
            task_type: r.task_type,
            environment: r.environment,
            risk: Risk::parse(&r.risk).unwrap_or(Risk::Unspecified),
            text: r.text,
            submitted_by: r.submitted_by,
            reason: r.reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
            event_count: r.event_count,
        }
    }
}

const TASK_COLUMNS: &str = "task_id, tenant, status, role, task_type, environment, risk, text, \
                            submitted_by, reason, created_at, updated_at, event_count";
const LOG_COLUMNS: &str = "sequence, event_id, task_id, tenant, subject, kind, producer, \
                           event_time, recorded_at, payload, prev_hash, hash";

/// Filters and position of one `ListTasks` page.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    /// Only this status.
    pub status: Option<TaskStatus>,
    /// Only this role.
    pub role: Option<String>,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Tasks per page (1–500).
    pub page_size: u32,
    /// A previous page's `next_page_token` (empty for the first page).
    pub page_token: String,
}

/// One page of tasks, newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskPage {
    /// The tasks of this page, newest first, at most the page size asked for.
    pub tasks: Vec<TaskView>,
    /// Token of the next page; empty on the last.
    pub next_page_token: String,
}

/// Outcome of [`Store::verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// True when every record verifies.
    pub ok: bool,
    /// Records read.
    pub records_checked: u64,
    /// First record that does not verify (0 when ok).
    pub first_bad_sequence: u64,
    /// What is wrong with it (empty when ok).
    pub problem: String,
}

/// Keyset position: the last task of a page.
fn encode_token(created_at: i64, task_id: &str) -> String {
    hex::encode(format!("v1:{created_at}:{task_id}"))
}

fn decode_token(token: &str) -> Result<(i64, String), Error> {
    let bad = || {
        Error::InvalidArgument(
            "invalid page_token: pass next_page_token from the previous response unchanged".into(),
        )
    };
    let bytes = hex::decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let rest = text.strip_prefix("v1:").ok_or_else(bad)?;
    let (created, task_id) = rest.split_once(':').ok_or_else(bad)?;
    Ok((created.parse().map_err(|_| bad())?, task_id.to_string()))
}

fn now_micros() -> i64 {
    timestamp_to_micros(&baton_proto::now())
}

/// The writer's view of the chain head.
#[derive(Debug, Default)]
struct HeadState {
    /// What the next record links to.
    head: ChainHead,
    /// Set after a failed append: the database may hold more than `head` says (a commit that
    /// applied although it reported an error, or another writer), so reload before appending.
    stale: bool,
}

/// Proof that this process is the only audit writer of a database, held for the writer's
/// lifetime (see [`Store::lock_writer`]). Dropping it releases the lock (for PostgreSQL when
/// the server notices the closed connection; [`WriterLock::release`] releases it at once).
#[derive(Debug)]
pub struct WriterLock {
    inner: LockInner,
}

#[derive(Debug)]
enum LockInner {
    /// An exclusive OS lock on `<db>.writer.lock` (released when the file is closed).
    File { _file: std::fs::File, path: PathBuf },
    /// A session-level advisory lock on a dedicated connection.
    Postgres(sqlx::PgConnection),
    /// An in-memory SQLite database: private to this process, nothing to lock.
    Memory,
}

impl WriterLock {
    /// Makes sure the lock is still held; the writer calls it before each append.
    ///
    /// PostgreSQL holds the lock only while its connection lives: when that connection is gone
    /// (server restart, network cut, `pg_terminate_backend`), the server has dropped the lock,
    /// so this takes it again on a new connection (one `SELECT 1` round trip when all is well)
    /// and reloads the chain head, since another writer may have appended meanwhile. A SQLite
    /// lock file and an in-memory database cannot lose their lock: nothing to do.
    ///
    /// Errors: [`Error::WriterLocked`] when another writer took the lock meanwhile (this
    /// writer must stop); [`Error::Connect`]/[`Error::Database`] when it cannot be re-taken
    /// now (the batch fails and is redelivered; the next call tries again).
    pub async fn ensure(&mut self, store: &Store) -> Result<(), Error> {
        let LockInner::Postgres(conn) = &mut self.inner else {
            return Ok(());
        };
        let Err(e) = sqlx::query("SELECT 1").execute(&mut *conn).await else {
            return Ok(());
        };
        warn!(error = %e, "the audit writer lock's connection is gone, and the lock with it; taking it again");
        *self = store.lock_writer().await?;
        info!("audit writer lock taken again; chain head reloaded");
        Ok(())
    }

    /// Releases the lock now (PostgreSQL: unlocks and closes the connection; a failure there
    /// is logged, and the server drops the lock with the connection anyway).
    pub async fn release(self) {
        match self.inner {
            LockInner::Postgres(mut conn) => {
                let unlocked = sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)")
                    .bind(WRITER_LOCK_KEY)
                    .fetch_one(&mut conn)
                    .await;
                if let Err(e) = unlocked {
                    warn!(error = %e, "cannot release the audit writer lock; the server drops it with the connection");
                }
                if let Err(e) = conn.close().await {
                    warn!(error = %e, "cannot close the audit writer lock connection");
                }
            }
            LockInner::File { path, .. } => {
                tracing::debug!(path = %path.display(), "audit writer lock released");
            }
            LockInner::Memory => {}
        }
    }
}

/// The lock file of the SQLite database at `db`: `<db>.writer.lock`.
fn lock_file_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_os_string();
    name.push(".writer.lock");
    PathBuf::from(name)
}

/// The audit database.
#[derive(Debug)]
pub struct Store {
    db: Db,
    /// The chain head, held while appending so appends are serialised.
    head: Mutex<HeadState>,
    /// The URL (password redacted), for messages.
    url: String,
}

impl Store {
    /// Opens the database at `url` (`sqlite://path?mode=rwc` — parent directories are
    /// created, WAL mode — or `postgres://…`/`postgresql://…`), runs the migrations and loads
    /// the chain head.
    ///
    /// Errors: [`Error::Config`] for an unsupported URL, [`Error::Connect`] when the database
    /// cannot be reached, [`Error::Migrate`] when the schema cannot be brought up to date.
    pub async fn open(url: &str, max_connections: u32) -> Result<Store, Error> {
        let connect = |source| Error::Connect {
            url: redact(url),
            source,
        };
        let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(connect)?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .map_err(connect)?;
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
            Db::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(connect)?
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            if let Some(parent) = options.get_filename().parent()
                && !parent.as_os_str().is_empty()
                && options.get_filename().as_os_str() != ":memory:"
            {
                std::fs::create_dir_all(parent).map_err(|source| Error::Io {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .map_err(connect)?;
            sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
            Db::Sqlite(pool)
        } else {
            return Err(Error::Config(format!(
                "audit.database_url {:?} is not supported: use sqlite://<path>?mode=rwc or postgres://user:pass@host/db",
                redact(url)
            )));
        };
        let head = load_head(&db).await?;
        Ok(Store {
            db,
            head: Mutex::new(HeadState { head, stale: false }),
            url: redact(url),
        })
    }

    /// Takes the one-writer lock of this database, then reloads the chain head (the previous
    /// writer may have appended since [`Store::open`]). Hold the returned lock for as long as
    /// this process appends; reading needs no lock.
    ///
    /// PostgreSQL: `pg_try_advisory_lock(`[`WRITER_LOCK_KEY`]`)` on a dedicated connection,
    /// held until the lock is released or the connection closes. SQLite: an exclusive OS lock
    /// on `<db>.writer.lock` next to the database file (created if missing, never deleted).
    ///
    /// Errors: [`Error::WriterLocked`] when another writer holds the lock, [`Error::Connect`]
    /// or [`Error::Io`] when the lock cannot be tried, [`Error::Database`] when the head
    /// cannot be read.
    pub async fn lock_writer(&self) -> Result<WriterLock, Error> {
        let inner = match &self.db {
            Db::Postgres(pool) => {
                let options = pool
                    .connect_options()
                    .as_ref()
                    .clone()
                    .application_name(WRITER_LOCK_APPLICATION_NAME);
                let mut conn =
                    sqlx::PgConnection::connect_with(&options)
                        .await
                        .map_err(|source| Error::Connect {
                            url: self.url.clone(),
                            source,
                        })?;
                let locked = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                    .bind(WRITER_LOCK_KEY)
                    .fetch_one(&mut conn)
                    .await
                    .map_err(|source| Error::Database {
                        action: "take the writer lock",
                        source,
                    })?;
                if !locked {
                    let _ = conn.close().await;
                    return Err(Error::WriterLocked {
                        database: self.url.clone(),
                    });
                }
                LockInner::Postgres(conn)
            }
            Db::Sqlite(pool) => {
                let options = pool.connect_options();
                let db = options.get_filename();
                if db.as_os_str() == ":memory:" {
                    LockInner::Memory
                } else {
                    let path = lock_file_path(db);
                    let io = |source| Error::Io {
                        path: path.clone(),
                        source,
                    };
                    let mut file = std::fs::File::options()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&path)
                        .map_err(io)?;
                    match file.try_lock() {
                        Ok(()) => {}
                        Err(std::fs::TryLockError::WouldBlock) => {
                            return Err(Error::WriterLocked {
                                database: db.display().to_string(),
                            });
                        }
                        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
                    }
                    // For whoever wonders who holds it.
                    use std::io::Write as _;
                    file.set_len(0)
                        .and_then(|()| writeln!(file, "{}", std::process::id()))
                        .map_err(io)?;
                    LockInner::File { _file: file, path }
                }
            }
        };
        let lock = WriterLock { inner };
        let mut state = self.head.lock().await;
        state.head = load_head(&self.db).await?;
        state.stale = false;
        Ok(lock)
    }

    /// Which backend this is (`sqlite` or `postgres`).
    pub fn backend(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// The chain head as of the last successful append (or reload).
    pub async fn head(&self) -> ChainHead {
        self.head.lock().await.head.clone()
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        with_db!(&self.db, pool, DB => pool.close().await)
    }

    /// Appends `records` in one transaction and returns what was stored, in sequence order.
    ///
    /// Records whose event id is already stored, or repeated within `records`, are dropped
    /// (one query for the batch). The `tasks` rows of the stored records' tasks are updated in
    /// the same transaction. On error nothing is stored (unless the commit applied although it
    /// reported an error) and the next call first reloads the chain head from the database,
    /// so one failure (also one caused by rows another writer appended) does not make every
    /// later append reuse a taken sequence number.
    pub async fn append(&self, records: Vec<NewRecord>) -> Result<Vec<StoredRecord>, Error> {
        let mut seen = HashSet::new();
        let records: Vec<NewRecord> = records
            .into_iter()
            .filter(|r| seen.insert(r.event_id.clone()))
            .collect();
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut state = self.head.lock().await;
        if state.stale {
            let head = load_head(&self.db).await?;
            if head != state.head {
                warn!(
                    was = state.head.sequence,
                    now = head.sequence,
                    "chain head reloaded after a failed append: the database holds records this writer did not know of"
                );
            } else {
                info!(
                    last_sequence = head.sequence,
                    "chain head reloaded after a failed append; unchanged"
                );
            }
            state.head = head;
            state.stale = false;
        }
        let result = self.append_after(&mut state.head, records).await;
        if result.is_err() {
            state.stale = true;
        }
        result
    }

    /// [`Store::append`] with the head locked: chains `records` after `head` and advances it
    /// on commit.
    async fn append_after(
        &self,
        head: &mut ChainHead,
        mut records: Vec<NewRecord>,
    ) -> Result<Vec<StoredRecord>, Error> {
        let db_err = |action| move |source| Error::Database { action, source };
        let stored = with_db!(&self.db, pool, DB => {
            let mut tx = pool.begin().await.map_err(db_err("begin a transaction"))?;
            // 1. Drop event ids already stored.
            let mut existing: HashSet<String> = HashSet::new();
            for chunk in records.chunks(ROWS_PER_STATEMENT) {
                let mut q = QueryBuilder::<DB>::new("SELECT event_id FROM audit_log WHERE event_id IN (");
                let mut list = q.separated(", ");
                for r in chunk {
                    list.push_bind(r.event_id.clone());
                }
                q.push(")");
                let ids: Vec<String> = q
                    .build_query_scalar()
                    .persistent(false)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err("look up stored event ids"))?;
                existing.extend(ids);
            }
            records.retain(|r| !existing.contains(&r.event_id));
            if records.is_empty() {
                tx.rollback().await.map_err(db_err("end a transaction"))?;
                return Ok(Vec::new());
            }
            // 2. Chain them.
            let recorded_at = now_micros();
            let mut prev = head.clone();
            let stored: Vec<StoredRecord> = records
                .into_iter()
                .map(|r| {
                    let mut s = StoredRecord {
                        sequence: prev.sequence as i64 + 1,
                        record: r,
                        recorded_at,
                        prev_hash: prev.hash.clone(),
                        hash: String::new(),
                    };
                    s.hash = s.compute_hash();
                    prev = ChainHead { sequence: s.sequence as u64, hash: s.hash.clone() };
                    s
                })
                .collect();
            // 3. Project.
            let task_ids: Vec<String> = {
                let mut ids: Vec<String> = stored.iter().filter(|r| !r.record.task_id.is_empty()).map(|r| r.record.task_id.clone()).collect();
                ids.sort();
                ids.dedup();
                ids
            };
            let mut tasks: HashMap<String, TaskRow> = HashMap::new();
            for chunk in task_ids.chunks(ROWS_PER_STATEMENT) {
                let mut q = QueryBuilder::<DB>::new(format!("SELECT {TASK_COLUMNS} FROM tasks WHERE task_id IN ("));
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(id.clone());
                }
                q.push(")");
                let rows: Vec<TaskDbRow> = q
                    .build_query_as()
                    .persistent(false)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err("read task views"))?;
                tasks.extend(rows.into_iter().map(|r| (r.task_id.clone(), TaskRow::from(r))));
            }
            for r in stored.iter().filter(|r| !r.record.task_id.is_empty()) {
                let at = r.effective_time();
                tasks
                    .entry(r.record.task_id.clone())
                    .or_insert_with(|| TaskRow::new(&r.record.task_id, &r.record.tenant, at))
                    .apply(&r.record.tenant, r.event().as_ref(), at);
            }
            // 4. Write.
            for chunk in stored.chunks(ROWS_PER_STATEMENT) {
                let mut q = QueryBuilder::<DB>::new(format!("INSERT INTO audit_log ({LOG_COLUMNS}) "));
                q.push_values(chunk, |mut b, r| {
                    b.push_bind(r.sequence)
                        .push_bind(r.record.event_id.clone())
                        .push_bind(r.record.task_id.clone())
                        .push_bind(r.record.tenant.clone())
                        .push_bind(r.record.subject.clone())
                        .push_bind(r.record.kind.clone())
                        .push_bind(r.record.producer.clone())
                        .push_bind(r.record.event_time)
                        .push_bind(r.recorded_at)
                        .push_bind(r.record.payload.clone())
                        .push_bind(r.prev_hash.clone())
                        .push_bind(r.hash.clone());
                });
                q.build().persistent(false).execute(&mut *tx).await.map_err(db_err("insert audit records"))?;
            }
            let rows: Vec<&TaskRow> = tasks.values().collect();
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut q = QueryBuilder::<DB>::new(format!("INSERT INTO tasks ({TASK_COLUMNS}) "));
                q.push_values(chunk, |mut b, t| {
                    b.push_bind(t.task_id.clone())
                        .push_bind(t.tenant.clone())
                        .push_bind(t.status.label())
                        .push_bind(t.role.clone())
                        .push_bind(t.task_type.clone())
                        .push_bind(t.environment.clone())
                        .push_bind(t.risk.label())
                        .push_bind(t.text.clone())
                        .push_bind(t.submitted_by.clone())
                        .push_bind(t.reason.clone())
                        .push_bind(t.created_at)
                        .push_bind(t.updated_at)
                        .push_bind(t.event_count);
                });
                q.push(
                    " ON CONFLICT (task_id) DO UPDATE SET tenant = excluded.tenant, \
                     status = excluded.status, role = excluded.role, task_type = excluded.task_type, \
                     environment = excluded.environment, risk = excluded.risk, text = excluded.text, \
                     submitted_by = excluded.submitted_by, reason = excluded.reason, \
                     created_at = excluded.created_at, updated_at = excluded.updated_at, \
                     event_count = excluded.event_count",
                );
                q.build().persistent(false).execute(&mut *tx).await.map_err(db_err("update task views"))?;
            }
            tx.commit().await.map_err(db_err("commit"))?;
            *head = prev;
            stored
        });
        Ok(stored)
    }

    /// The task view of `task_id`, if any event of it is stored.
    pub async fn get_task(&self, task_id: &str) -> Result<Option<TaskView>, Error> {
        let row: Option<TaskDbRow> = with_db!(&self.db, pool, DB => {
            sqlx::query_as::<DB, TaskDbRow>(sqlx::AssertSqlSafe(format!("SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = $1")))
                .bind(task_id)
                .fetch_optional(pool)
                .await
        })
        .map_err(|source| Error::Database { action: "read a task view", source })?;
        Ok(row.map(|r| TaskRow::from(r).to_view()))
    }

    /// The task view of `task_id` and all its records in sequence order, read from one snapshot
    /// of the database (a read transaction; REPEATABLE READ on PostgreSQL), so the view reflects
    /// exactly the records returned: a batch stores both in one transaction, and two separate
    /// reads could straddle a commit. `None` if no event of the task is stored.
    pub async fn task_with_records(
        &self,
        task_id: &str,
    ) -> Result<Option<(TaskView, Vec<StoredRecord>)>, Error> {
        let db_err = |action| move |source| Error::Database { action, source };
        let postgres = matches!(self.db, Db::Postgres(_));
        let (row, records) = with_db!(&self.db, pool, DB => {
            let mut tx = pool.begin().await.map_err(db_err("begin a read transaction"))?;
            if postgres {
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err("begin a read transaction"))?;
            }
            let row: Option<TaskDbRow> = sqlx::query_as::<DB, TaskDbRow>(sqlx::AssertSqlSafe(format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = $1"
            )))
            .bind(task_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err("read a task view"))?;
            let records: Vec<StoredRecord> = sqlx::query_as::<DB, StoredRecord>(sqlx::AssertSqlSafe(format!(
                "SELECT {LOG_COLUMNS} FROM audit_log WHERE task_id = $1 ORDER BY sequence"
            )))
            .bind(task_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err("read task records"))?;
            tx.commit().await.map_err(db_err("end a read transaction"))?;
            (row, records)
        });
        Ok(row.map(|r| (TaskRow::from(r).to_view(), records)))
    }

    /// The records of `task_id` with sequence greater than `after`, in sequence order.
    pub async fn task_records(
        &self,
        task_id: &str,
        after: u64,
    ) -> Result<Vec<StoredRecord>, Error> {
        with_db!(&self.db, pool, DB => {
            sqlx::query_as::<DB, StoredRecord>(sqlx::AssertSqlSafe(format!(
                "SELECT {LOG_COLUMNS} FROM audit_log WHERE task_id = $1 AND sequence > $2 ORDER BY sequence"
            )))
            .bind(task_id)
            .bind(after as i64)
            .fetch_all(pool)
            .await
        })
        .map_err(|source| Error::Database { action: "read task records", source })
    }

    /// One page of task views, newest first (by `created_at`, then `task_id`).
    ///
    /// Errors: [`Error::InvalidArgument`] for a page token this store did not issue.
    pub async fn list_tasks(&self, query: &TaskQuery) -> Result<TaskPage, Error> {
        let page_size = query.page_size.clamp(1, 500) as i64;
        let after = if query.page_token.is_empty() {
            None
        } else {
            Some(decode_token(&query.page_token)?)
        };
        let rows: Vec<TaskDbRow> = with_db!(&self.db, pool, DB => {
            let mut q = QueryBuilder::<DB>::new(format!("SELECT {TASK_COLUMNS} FROM tasks WHERE 1 = 1"));
            if let Some(status) = query.status {
                q.push(" AND status = ").push_bind(status.label());
            }
            if let Some(role) = &query.role {
                q.push(" AND role = ").push_bind(role.clone());
            }
            if let Some(tenant) = &query.tenant {
                q.push(" AND tenant = ").push_bind(tenant.clone());
            }
            if let Some((created, task_id)) = &after {
                q.push(" AND (created_at < ").push_bind(*created);
                q.push(" OR (created_at = ").push_bind(*created);
                q.push(" AND task_id < ").push_bind(task_id.clone()).push("))");
            }
            q.push(" ORDER BY created_at DESC, task_id DESC LIMIT ").push_bind(page_size + 1);
            q.build_query_as().fetch_all(pool).await
        })
        .map_err(|source| Error::Database { action: "list tasks", source })?;
        let more = rows.len() as i64 > page_size;
        let tasks: Vec<TaskRow> = rows
            .into_iter()
            .take(page_size as usize)
            .map(TaskRow::from)
            .collect();
        let next_page_token = match (more, tasks.last()) {
            (true, Some(last)) => encode_token(last.created_at, &last.task_id),
            _ => String::new(),
        };
        Ok(TaskPage {
            tasks: tasks.iter().map(TaskRow::to_view).collect(),
            next_page_token,
        })
    }

    /// Recomputes the hash chain in sequence order, reading [`VERIFY_BATCH`] rows at a time.
    ///
    /// Checks, per record: the sequence follows the previous one without a gap (record 1
    /// first), `prev_hash` equals the previous record's stored hash, and the stored hash equals
    /// the recomputed one. With `expected`, the record at `expected.sequence` must exist and
    /// carry `expected.hash` (this catches removal of the newest records, which the chain
    /// alone cannot see). Stops at the first problem.
    pub async fn verify(&self, expected: Option<&ChainHead>) -> Result<Verification, Error> {
        let mut prev = ChainHead::default();
        let mut checked = 0u64;
        let bad = |checked, sequence, problem: String| {
            Ok(Verification {
                ok: false,
                records_checked: checked,
                first_bad_sequence: sequence,
                problem,
            })
        };
        loop {
            let batch: Vec<StoredRecord> = with_db!(&self.db, pool, DB => {
                sqlx::query_as::<DB, StoredRecord>(sqlx::AssertSqlSafe(format!(
                    "SELECT {LOG_COLUMNS} FROM audit_log WHERE sequence > $1 ORDER BY sequence LIMIT $2"
                )))
                .bind(prev.sequence as i64)
                .bind(VERIFY_BATCH)
                .fetch_all(pool)
                .await
            })
            .map_err(|source| Error::Database { action: "read the audit log", source })?;
            if batch.is_empty() {
                break;
            }
            for r in batch {
                checked += 1;
                let seq = r.sequence as u64;
                if seq != prev.sequence + 1 {
                    return bad(
                        checked,
                        prev.sequence + 1,
                        format!(
                            "sequence gap after {}: record {} is missing (a record was removed)",
                            prev.sequence,
                            prev.sequence + 1
                        ),
                    );
                }
                if r.prev_hash != prev.hash {
                    return bad(
                        checked,
                        seq,
                        if prev.sequence == 0 {
                            format!(
                                "prev_hash of record {seq} is not empty although it is the first record"
                            )
                        } else {
                            format!(
                                "prev_hash of record {seq} does not match record {} (a record was removed or reordered)",
                                prev.sequence
                            )
                        },
                    );
                }
                if r.compute_hash() != r.hash {
                    return bad(
                        checked,
                        seq,
                        format!("hash mismatch: record {seq} was changed"),
                    );
                }
                if let Some(e) = expected
                    && e.sequence == seq
                    && e.hash != r.hash
                {
                    return bad(
                        checked,
                        seq,
                        format!(
                            "record {seq} is not the record the writer stored (it was replaced)"
                        ),
                    );
                }
                prev = ChainHead {
                    sequence: seq,
                    hash: r.hash,
                };
            }
        }
        if let Some(e) = expected
            && e.sequence > prev.sequence
        {
            return bad(
                checked,
                prev.sequence + 1,
                format!(
                    "records after {} are missing: the writer stored up to record {} (the newest records were removed)",
                    prev.sequence, e.sequence
                ),
            );
        }
        Ok(Verification {
            ok: true,
            records_checked: checked,
            first_bad_sequence: 0,
            problem: String::new(),
        })
    }
}

async fn load_head(db: &Db) -> Result<ChainHead, Error> {
    let row: Option<(i64, String)> = with_db!(db, pool, DB => {
        sqlx::query_as::<DB, (i64, String)>("SELECT sequence, hash FROM audit_log ORDER BY sequence DESC LIMIT 1")
            .fetch_optional(pool)
            .await
    })
    .map_err(|source| Error::Database { action: "read the chain head", source })?;
    Ok(row
        .map(|(sequence, hash)| ChainHead {
            sequence: sequence as u64,
            hash,
        })
        .unwrap_or_default())
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_garbage_is_rejected() {
        let t = encode_token(1_700_000_000_000_000, "task:with:colons");
        assert_eq!(
            decode_token(&t).unwrap(),
            (1_700_000_000_000_000, "task:with:colons".to_string())
        );
        for bad in ["zz", "", &hex::encode("v2:1:x"), &hex::encode("v1:x:y")] {
            assert!(
                matches!(decode_token(bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://baton:secret@db:5432/x"),
            "postgres://baton:***@db:5432/x"
        );
        assert_eq!(
            redact("sqlite://.baton/audit.db?mode=rwc"),
            "sqlite://.baton/audit.db?mode=rwc"
        );
    }

    #[test]
    fn undecodable_messages_keep_their_bytes_and_header_ids() {
        let r = NewRecord::from_message(
            "baton.task.received",
            b"\xff\xffjunk",
            MessageMeta {
                msg_id: None,
                task_id: Some("t9"),
                tenant: Some("acme"),
                fallback_id: "BATON.7".into(),
            },
        );
        assert_eq!(
            (r.kind.as_str(), r.event_id.as_str(), r.task_id.as_str()),
            (UNDECODABLE, "BATON.7", "t9")
        );
        assert_eq!(r.payload, b"\xff\xffjunk");
    }

    #[test]
    fn own_dead_letters_unwrap_to_the_original_event() {
        use baton_proto::{DeadLetter, TaskCompleted, event::Body};
        let original = Event::first(
            "t1",
            "acme",
            "completed",
            "execution",
            Body::TaskCompleted(TaskCompleted::default()),
        );
        let wrap = |service: &str, subject: &str, inner: &Event| Event {
            event_id: format!("dead.{service}.{}", inner.event_id),
            task_id: "t1".into(),
            body: Some(Body::DeadLetter(DeadLetter {
                service: service.into(),
                subject: subject.into(),
                payload: inner.encode_to_vec(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let once = wrap("audit", "baton.task.completed", &original);
        let twice = wrap("audit", "baton.dead.audit", &once);
        let r = NewRecord::from_event("baton.dead.audit", &twice).unwrap_own_dead_letter("audit");
        assert_eq!(
            (r.event_id.as_str(), r.subject.as_str(), r.kind.as_str()),
            ("t1.completed", "baton.task.completed", "task_completed")
        );
        assert_eq!(r.payload, original.encode_to_vec());
        let other = wrap("decision", "baton.task.received", &original);
        let r =
            NewRecord::from_event("baton.dead.decision", &other).unwrap_own_dead_letter("audit");
        assert_eq!(r.kind, "dead_letter", "other services' dead letters stay");
    }
}
