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
//! and `with_db!` instantiates a body once per backend.
//!
//! By job:
//! - `record`: what a log row holds ([`NewRecord`], [`StoredRecord`], [`ChainHead`]);
//! - `rows`: how a [`TaskRow`](crate::projection::TaskRow) maps to the `tasks` table (its
//!   columns, written and read in one place);
//! - `token`: `ListTasks` page tokens;
//! - `lock`: the one-writer lock ([`WriterLock`], [`Store::lock_writer`]);
//! - `append`: [`Store::append`], the only writer;
//! - `query`: task views and records ([`Store::get_task`], [`Store::list_tasks`], …);
//! - `verify`: [`Store::verify`], the hash chain recomputed.

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

mod append;
mod lock;
mod query;
mod record;
mod rows;
mod token;
mod verify;

pub use lock::{WRITER_LOCK_APPLICATION_NAME, WRITER_LOCK_KEY, WriterLock};
pub use query::{TaskPage, TaskQuery};
pub use record::{ChainHead, MessageMeta, NewRecord, StoredRecord, UNDECODABLE};
pub use rows::Label;
pub use verify::{Verification, Witness, missing_records};

use crate::Error;
use append::HeadState;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::Mutex;

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

    /// Whether the database answers `SELECT 1` (for `/ready`); the error says why not.
    pub async fn ping(&self) -> Result<(), String> {
        with_db!(&self.db, pool, DB => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))
            .map_err(|e| format!("{} does not answer: {e}", self.url))
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        with_db!(&self.db, pool, DB => pool.close().await)
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
}
