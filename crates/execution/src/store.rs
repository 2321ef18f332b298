//! Rollout state in the JetStream key-value bucket [`BUCKET`]: key = task id, value = the
//! protobuf [`Execution`]. Writes after the first are compare-and-set on the revision last
//! read or written, so two processes can never both advance one rollout unnoticed.
//!
//! [`Attempts`] counts, per task, the transient failures of the handler itself (NATS or the
//! store failing mid-rollout) in the bucket [`ATTEMPTS_BUCKET`], since the proto
//! [`Execution`] has no field for it and JetStream's delivery count also counts deliveries
//! cut short by shutdown (see the crate docs).

use crate::Error;
use baton_bus::kv::{Codec, Kv, KvError, Revision};
use baton_proto::Execution;
use bytes::Bytes;

/// The bucket holding one [`Execution`] per task.
pub const BUCKET: &str = "baton_executions";

/// Revisions kept per key (the history shows how a rollout progressed).
pub const HISTORY: i64 = 5;

/// The execution bucket.
#[derive(Clone, Debug)]
pub struct Store {
    /// The opened bucket.
    kv: Kv<Execution>,
}

/// True if `task_id` can be a key (`[-/_=.a-zA-Z0-9]+`, no leading or trailing `.`).
pub fn valid_key(task_id: &str) -> bool {
    !task_id.is_empty()
        && !task_id.starts_with('.')
        && !task_id.ends_with('.')
        && task_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
}

impl Store {
    /// Opens (creating if needed) the bucket.
    pub async fn open(bus: &baton_bus::Bus) -> Result<Store, Error> {
        Ok(Store {
            kv: bus.kv(BUCKET, HISTORY).await?,
        })
    }

    /// The execution of `task_id` and its revision, or `None` when there is none.
    pub async fn load(&self, task_id: &str) -> Result<Option<(Execution, Revision)>, Error> {
        if !valid_key(task_id) {
            return Ok(None);
        }
        self.kv.get(task_id).await.map_err(kv_err)
    }

    /// Stores a new execution; fails with [`Error::Conflict`] if the key already exists
    /// (another process started the rollout first). Returns the revision.
    pub async fn create(&self, exec: &Execution) -> Result<Revision, Error> {
        self.kv.create(&exec.task_id, exec).await.map_err(kv_err)
    }

    /// Stores `exec` as a new execution, or, when one is stored already, returns that one: one
    /// round trip for a new rollout. Fails with [`Error::Conflict`] if the key exists but holds
    /// no execution (it was deleted meanwhile).
    pub async fn create_or_load(&self, exec: &Execution) -> Result<Stored, Error> {
        match self.create(exec).await {
            Ok(revision) => Ok(Stored::Created(revision)),
            Err(Error::Conflict { task_id }) => match self.load(&task_id).await? {
                Some((exec, revision)) => Ok(Stored::Existing(Box::new(exec), revision)),
                None => Err(Error::Conflict { task_id }),
            },
            Err(e) => Err(e),
        }
    }

    /// Replaces the execution stored at `revision`; fails with [`Error::Conflict`] if someone
    /// else wrote it since. Returns the new revision.
    pub async fn update(&self, exec: &Execution, revision: Revision) -> Result<Revision, Error> {
        self.kv
            .update(&exec.task_id, exec, revision)
            .await
            .map_err(kv_err)
    }
}

/// What [`Store::create_or_load`] found.
#[derive(Debug)]
pub enum Stored {
    /// The execution given was stored, at this revision.
    Created(Revision),
    /// An execution was stored already: it and its revision.
    Existing(Box<Execution>, Revision),
}

/// The bucket counting each task's transient handler failures.
pub const ATTEMPTS_BUCKET: &str = "baton_execution_attempts";

/// Compare-and-set attempts of one [`Attempts::record_failure`]: each lost attempt means
/// another replica counted a failure of the same task in between, which only happens when two
/// handle it at once; more than a few is a storm worth failing for.
const COUNT_ATTEMPTS: usize = 8;

/// A failure count as the bucket stores it: the number in decimal (readable with `nats kv get`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Count(u64);

impl Codec for Count {
    fn to_bytes(&self) -> Bytes {
        self.0.to_string().into()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse().ok())
            .map(Count)
            .ok_or_else(|| "not a decimal count".to_string())
    }
}

/// Per-task count of the handler's own transient failures: key = task id, value = the count
/// in decimal. Absent means none since the count was last reset. Counting is compare-and-set,
/// so replicas failing on one task at once each add theirs.
#[derive(Clone, Debug)]
pub struct Attempts {
    /// The opened bucket.
    kv: Kv<Count>,
}

impl Attempts {
    /// Opens (creating if needed) the bucket.
    pub async fn open(bus: &baton_bus::Bus) -> Result<Attempts, Error> {
        Ok(Attempts {
            kv: bus.kv(ATTEMPTS_BUCKET, 1).await?,
        })
    }

    /// The failures counted for `task_id` (0 when none).
    pub async fn get(&self, task_id: &str) -> Result<u64, Error> {
        let count = self.kv.get(task_id).await.map_err(kv_err)?;
        Ok(count.map_or(0, |(Count(n), _)| n))
    }

    /// Counts one more failure for `task_id` with a compare-and-set on the count read (retried
    /// when another replica counted in between, so no failure is lost); returns the new count.
    pub async fn record_failure(&self, task_id: &str) -> Result<u64, Error> {
        let (Count(n), _) = self
            .kv
            .update_with(task_id, COUNT_ATTEMPTS, |count| {
                Count(count.map_or(0, |Count(n)| n) + 1)
            })
            .await
            .map_err(kv_err)?;
        Ok(n)
    }

    /// Forgets the failures of `task_id` (no-op when none are counted).
    pub async fn reset(&self, task_id: &str) -> Result<(), Error> {
        if self.get(task_id).await? > 0 {
            self.kv.purge(task_id).await.map_err(kv_err)?;
        }
        Ok(())
    }
}

/// The crate's error for a failed bucket operation (the key is the task id).
fn kv_err(e: KvError) -> Error {
    match e {
        KvError::Conflict { key, .. } => Error::Conflict { task_id: key },
        KvError::Decode { key, reason, .. } => Error::CorruptState {
            task_id: key,
            reason,
        },
        KvError::Unavailable { key, reason, .. } => Error::Store {
            task_id: key,
            reason,
        },
        KvError::InvalidKey { ref key, .. } => Error::Store {
            task_id: key.clone(),
            reason: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{Codec, Count, Error, KvError, kv_err, valid_key};

    #[test]
    fn bucket_errors_become_the_crate_errors_of_the_task() {
        let conflict = kv_err(KvError::Conflict {
            bucket: super::BUCKET.into(),
            key: "t-1".into(),
            revision: 4,
        });
        assert!(matches!(&conflict, Error::Conflict { task_id } if task_id == "t-1"));
        let corrupt = kv_err(KvError::Decode {
            bucket: super::BUCKET.into(),
            key: "t-1".into(),
            revision: 4,
            reason: "invalid wire type".into(),
        });
        assert!(
            matches!(&corrupt, Error::CorruptState { task_id, reason } if task_id == "t-1" && reason == "invalid wire type")
        );
    }

    #[test]
    fn counts_are_stored_in_decimal_as_before() {
        assert_eq!(Count(12).to_bytes().as_ref(), b"12");
        assert_eq!(Count::from_bytes(b"7"), Ok(Count(7)));
        assert!(Count::from_bytes(b"seven").is_err());
    }

    #[test]
    fn keys_follow_the_kv_alphabet() {
        assert!(valid_key("0192f0c4-7d1e-7b3a-9c1e-2f4d5a6b7c8d"));
        assert!(valid_key("task_1.a=b"));
        assert!(!valid_key(""));
        assert!(!valid_key("has space"));
        assert!(!valid_key("a*b"));
        assert!(!valid_key(".lead"));
    }
}
