//! Rollout state in the JetStream key-value bucket [`BUCKET`]: key = task id, value = the
//! protobuf [`Execution`]. Writes after the first are compare-and-set on the revision last
//! read or written, so two processes can never both advance one rollout unnoticed.
//!
//! [`Attempts`] counts, per task, the transient failures of the handler itself (NATS or the
//! store failing mid-rollout) in the bucket [`ATTEMPTS_BUCKET`], since the proto
//! [`Execution`] has no field for it and JetStream's delivery count also counts deliveries
//! cut short by shutdown (see the crate docs).

use crate::Error;
use async_nats::jetstream::kv::{self, Operation};
use baton_proto::Execution;
use prost::Message as _;

/// The bucket holding one [`Execution`] per task.
pub const BUCKET: &str = "baton_executions";

/// Revisions kept per key (the history shows how a rollout progressed).
pub const HISTORY: i64 = 5;

/// The execution bucket.
#[derive(Clone)]
pub struct Store {
    /// The opened bucket.
    kv: kv::Store,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("bucket", &BUCKET).finish()
    }
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
            kv: bus.key_value(BUCKET, HISTORY).await?,
        })
    }

    /// The execution of `task_id` and its revision, or `None` when there is none.
    pub async fn load(&self, task_id: &str) -> Result<Option<(Execution, u64)>, Error> {
        if !valid_key(task_id) {
            return Ok(None);
        }
        let entry = self
            .kv
            .entry(task_id)
            .await
            .map_err(|e| store_err(task_id, e))?;
        match entry {
            Some(e) if e.operation == Operation::Put => {
                let exec =
                    Execution::decode(e.value.as_ref()).map_err(|err| Error::CorruptState {
                        task_id: task_id.to_string(),
                        reason: err.to_string(),
                    })?;
                Ok(Some((exec, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Stores a new execution; fails with [`Error::Conflict`] if the key already exists
    /// (another process started the rollout first). Returns the revision.
    pub async fn create(&self, exec: &Execution) -> Result<u64, Error> {
        self.kv
            .create(&exec.task_id, exec.encode_to_vec().into())
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => Error::Conflict {
                    task_id: exec.task_id.clone(),
                },
                _ => store_err(&exec.task_id, e),
            })
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
    pub async fn update(&self, exec: &Execution, revision: u64) -> Result<u64, Error> {
        self.kv
            .update(&exec.task_id, exec.encode_to_vec().into(), revision)
            .await
            .map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => Error::Conflict {
                    task_id: exec.task_id.clone(),
                },
                _ => store_err(&exec.task_id, e),
            })
    }
}

/// What [`Store::create_or_load`] found.
#[derive(Debug)]
pub enum Stored {
    /// The execution given was stored, at this revision.
    Created(u64),
    /// An execution was stored already: it and its revision.
    Existing(Box<Execution>, u64),
}

/// The bucket counting each task's transient handler failures.
pub const ATTEMPTS_BUCKET: &str = "baton_execution_attempts";

/// Per-task count of the handler's own transient failures: key = task id, value = the count
/// in decimal. Absent means none since the count was last reset.
#[derive(Clone)]
pub struct Attempts {
    /// The opened bucket.
    kv: kv::Store,
}

impl std::fmt::Debug for Attempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempts")
            .field("bucket", &ATTEMPTS_BUCKET)
            .finish()
    }
}

impl Attempts {
    /// Opens (creating if needed) the bucket.
    pub async fn open(bus: &baton_bus::Bus) -> Result<Attempts, Error> {
        Ok(Attempts {
            kv: bus.key_value(ATTEMPTS_BUCKET, 1).await?,
        })
    }

    /// The failures counted for `task_id` (0 when none).
    pub async fn get(&self, task_id: &str) -> Result<u64, Error> {
        let entry = self
            .kv
            .entry(task_id)
            .await
            .map_err(|e| store_err(task_id, e))?;
        Ok(match entry {
            Some(e) if e.operation == Operation::Put => std::str::from_utf8(&e.value)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            _ => 0,
        })
    }

    /// Counts one more failure for `task_id`; returns the new count.
    pub async fn record_failure(&self, task_id: &str) -> Result<u64, Error> {
        let n = self.get(task_id).await? + 1;
        self.kv
            .put(task_id, n.to_string().into())
            .await
            .map_err(|e| store_err(task_id, e))?;
        Ok(n)
    }

    /// Forgets the failures of `task_id` (no-op when none are counted).
    pub async fn reset(&self, task_id: &str) -> Result<(), Error> {
        if self.get(task_id).await? > 0 {
            self.kv
                .purge(task_id)
                .await
                .map_err(|e| store_err(task_id, e))?;
        }
        Ok(())
    }
}

fn store_err(task_id: &str, e: impl std::fmt::Display) -> Error {
    Error::Store {
        task_id: task_id.to_string(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::valid_key;

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
