//! One writer per database: the chain head lives in the writer's memory, so a second writer
//! would reuse sequence numbers. PostgreSQL: a session-level advisory lock on a dedicated
//! connection (checked before each batch by [`WriterLock::ensure`], since it goes with its
//! connection); SQLite: an exclusive OS lock on `<db>.writer.lock` next to the database.

use super::{Db, Store, load_head};
use crate::Error;
use sqlx::Connection as _;
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// The `application_name` of the connection holding the PostgreSQL writer lock, to find it in
/// `pg_stat_activity`.
pub const WRITER_LOCK_APPLICATION_NAME: &str = "baton-audit-writer-lock";
/// Key of the PostgreSQL advisory lock the writer holds (`"batonaud"` in ASCII). Advisory
/// locks are per database, so writers of different databases do not contend.
pub const WRITER_LOCK_KEY: i64 = 0x6261_746f_6e61_7564;

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

impl Store {
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
}
