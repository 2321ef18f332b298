//! Typed, versioned key-value buckets: [`Kv<T>`] over a JetStream bucket, opened with
//! [`Bus::kv`].
//!
//! Every write that must not lose another writer's change is a compare-and-set on the key's
//! [`Revision`] (the stream sequence of its latest write): [`Kv::create`] succeeds only when the
//! key holds no value, [`Kv::update`] only when the key is still at the revision read, and
//! otherwise both fail with [`KvError::Conflict`] — never a silent overwrite. The
//! read-modify-write loop around them, with a bounded number of retries, is [`Kv::update_with`].
//!
//! Values are encoded by their [`Codec`]: every prost message has one (its protobuf encoding);
//! other types (a counter in decimal, a value with its own framing) implement it themselves.
//! A stored value that does not decode is [`KvError::Decode`], naming the bucket and key.

use crate::{Bus, BusError};
use async_nats::jetstream::kv::{
    self as nats_kv, CreateErrorKind, EntryErrorKind, Operation, PurgeErrorKind, UpdateErrorKind,
};
use bytes::Bytes;
use futures::TryStreamExt;
use std::marker::PhantomData;

/// The revision of a key: the sequence number, in the bucket's stream, of the key's latest
/// write (value or delete marker). 0 means the key was never written.
pub type Revision = u64;

/// How a value is stored in a bucket: bytes out, bytes in.
///
/// Every prost message implements it with its protobuf encoding.
pub trait Codec: Sized {
    /// The bytes to store.
    fn to_bytes(&self) -> Bytes;
    /// The value stored as `bytes`. Errors: why `bytes` is not a value of this type (becomes
    /// [`KvError::Decode`]).
    fn from_bytes(bytes: &[u8]) -> Result<Self, String>;
}

impl<M: prost::Message + Default> Codec for M {
    fn to_bytes(&self) -> Bytes {
        self.encode_to_vec().into()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        M::decode(bytes).map_err(|e| e.to_string())
    }
}

/// What went wrong with a key of a bucket.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KvError {
    /// A compare-and-set lost: the key is no longer at `revision` (for a create: it holds a
    /// value already). Another writer got there first; read the key again and decide anew.
    #[error(
        "key {key} of bucket {bucket} was changed by another writer (expected revision {revision}, \
         0 = no value): read it again and retry"
    )]
    Conflict {
        /// Bucket name.
        bucket: String,
        /// The key.
        key: String,
        /// The revision the write expected (0 for a create).
        revision: Revision,
    },
    /// The stored value cannot be decoded as the bucket's type.
    #[error(
        "key {key} of bucket {bucket} (revision {revision}) holds an undecodable value: {reason}; \
         delete the key or fix its writer"
    )]
    Decode {
        /// Bucket name.
        bucket: String,
        /// The key.
        key: String,
        /// The revision holding the value.
        revision: Revision,
        /// The codec's reason.
        reason: String,
    },
    /// The key cannot be a key-value key.
    #[error(
        "{key:?} is not a valid key of bucket {bucket}: use letters, digits and -/_=. only, not \
         starting or ending with '.'"
    )]
    InvalidKey {
        /// Bucket name.
        bucket: String,
        /// The key as given.
        key: String,
    },
    /// NATS did not answer or refused the operation (not a conflict): may pass on a retry.
    #[error("key {key} of bucket {bucket}: {reason}; is NATS JetStream reachable?")]
    Unavailable {
        /// Bucket name.
        bucket: String,
        /// The key (empty for whole-bucket operations such as listing keys).
        key: String,
        /// The client's or server's reason.
        reason: String,
    },
}

/// What a key holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry<T> {
    /// Never written (or all of its history is gone): revision 0.
    Vacant,
    /// Deleted or purged: the marker's revision, the one to write at to give it a value.
    Deleted {
        /// The delete or purge marker's revision.
        revision: Revision,
    },
    /// A value at a revision.
    Occupied {
        /// The decoded value.
        value: T,
        /// Its revision.
        revision: Revision,
    },
}

impl<T> Entry<T> {
    /// The revision to write at for a compare-and-set on this state (0 when vacant).
    pub fn revision(&self) -> Revision {
        match self {
            Entry::Vacant => 0,
            Entry::Deleted { revision } | Entry::Occupied { revision, .. } => *revision,
        }
    }

    /// The value and its revision; `None` when vacant or deleted.
    pub fn into_value(self) -> Option<(T, Revision)> {
        match self {
            Entry::Occupied { value, revision } => Some((value, revision)),
            Entry::Vacant | Entry::Deleted { .. } => None,
        }
    }
}

/// A JetStream key-value bucket whose values are `T`s (see the module docs). Cheap to clone.
pub struct Kv<T> {
    /// The bucket as async-nats opened it.
    store: nats_kv::Store,
    /// The bucket's name, for errors.
    bucket: String,
    /// Values are `T` (`fn() -> T` keeps `Kv` Send and Sync whatever `T` is).
    values: PhantomData<fn() -> T>,
}

impl<T> Clone for Kv<T> {
    fn clone(&self) -> Self {
        Kv {
            store: self.store.clone(),
            bucket: self.bucket.clone(),
            values: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Kv<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv").field("bucket", &self.bucket).finish()
    }
}

impl Bus {
    /// Opens (creating if needed, as [`Bus::key_value`] does) the bucket `bucket` keeping
    /// `history` revisions per key, with values of type `T`.
    ///
    /// Errors: [`BusError::KeyValue`] when the bucket cannot be created or opened.
    pub async fn kv<T: Codec>(&self, bucket: &str, history: i64) -> Result<Kv<T>, BusError> {
        Ok(Kv {
            store: self.key_value(bucket, history).await?,
            bucket: bucket.to_string(),
            values: PhantomData,
        })
    }
}

impl<T: Codec> Kv<T> {
    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// What `key` holds now, with its revision.
    ///
    /// Errors: [`KvError::InvalidKey`], [`KvError::Decode`], [`KvError::Unavailable`].
    pub async fn entry(&self, key: &str) -> Result<Entry<T>, KvError> {
        let entry = self.store.entry(key).await.map_err(|e| match e.kind() {
            EntryErrorKind::InvalidKey => self.invalid_key(key),
            _ => self.unavailable(key, e),
        })?;
        Ok(match entry {
            None => Entry::Vacant,
            Some(e) if e.operation != Operation::Put => Entry::Deleted {
                revision: e.revision,
            },
            Some(e) => Entry::Occupied {
                value: T::from_bytes(&e.value).map_err(|reason| KvError::Decode {
                    bucket: self.bucket.clone(),
                    key: key.to_string(),
                    revision: e.revision,
                    reason,
                })?,
                revision: e.revision,
            },
        })
    }

    /// The value of `key` and its revision; `None` when it holds none (never written, or
    /// deleted).
    ///
    /// Errors: as [`Kv::entry`].
    pub async fn get(&self, key: &str) -> Result<Option<(T, Revision)>, KvError> {
        Ok(self.entry(key).await?.into_value())
    }

    /// Stores `value` under `key` if the key holds no value (never written, or deleted), and
    /// returns the new revision.
    ///
    /// Errors: [`KvError::Conflict`] (revision 0) when the key holds a value;
    /// [`KvError::InvalidKey`], [`KvError::Unavailable`].
    pub async fn create(&self, key: &str, value: &T) -> Result<Revision, KvError> {
        self.store
            .create(key, value.to_bytes())
            .await
            .map_err(|e| match e.kind() {
                CreateErrorKind::AlreadyExists => self.conflict(key, 0),
                CreateErrorKind::InvalidKey => self.invalid_key(key),
                _ => self.unavailable(key, e),
            })
    }

    /// Replaces what `key` holds with `value` if the key is still at `revision` (0: never
    /// written), and returns the new revision.
    ///
    /// Errors: [`KvError::Conflict`] when the key was written since; [`KvError::InvalidKey`],
    /// [`KvError::Unavailable`].
    pub async fn update(
        &self,
        key: &str,
        value: &T,
        revision: Revision,
    ) -> Result<Revision, KvError> {
        self.store
            .update(key, value.to_bytes(), revision)
            .await
            .map_err(|e| match e.kind() {
                UpdateErrorKind::WrongLastRevision => self.conflict(key, revision),
                UpdateErrorKind::InvalidKey => self.invalid_key(key),
                _ => self.unavailable(key, e),
            })
    }

    /// Read-modify-write: reads `key`, stores `change(current value)` at the revision read,
    /// and on a [`KvError::Conflict`] (another writer in between) does it again, at most
    /// `attempts` times in all. Returns the value stored and its revision. `change` may run
    /// several times; it sees `None` when the key holds no value.
    ///
    /// Errors: the last [`KvError::Conflict`] when every attempt lost; any other error of
    /// [`Kv::entry`] or [`Kv::update`] at once.
    pub async fn update_with(
        &self,
        key: &str,
        attempts: usize,
        mut change: impl FnMut(Option<T>) -> T,
    ) -> Result<(T, Revision), KvError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let entry = self.entry(key).await?;
            let revision = entry.revision();
            let value = change(entry.into_value().map(|(value, _)| value));
            match self.update(key, &value, revision).await {
                Ok(revision) => return Ok((value, revision)),
                Err(KvError::Conflict { .. }) if attempt < attempts => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes `key`'s value and history, leaving a purge marker (the key then reads as
    /// holding no value). No-op on a key never written.
    ///
    /// Errors: [`KvError::InvalidKey`], [`KvError::Unavailable`].
    pub async fn purge(&self, key: &str) -> Result<(), KvError> {
        self.store.purge(key).await.map_err(|e| match e.kind() {
            PurgeErrorKind::InvalidKey => self.invalid_key(key),
            _ => self.unavailable(key, e),
        })
    }

    /// Every key that holds a value (deleted and purged keys are left out), in no particular
    /// order. Reads the whole bucket's key list: for listings, not the hot path.
    ///
    /// Errors: [`KvError::Unavailable`] (with an empty key).
    pub async fn keys(&self) -> Result<Vec<String>, KvError> {
        self.store
            .keys()
            .await
            .map_err(|e| self.unavailable("", e))?
            .try_collect()
            .await
            .map_err(|e| self.unavailable("", e))
    }

    fn conflict(&self, key: &str, revision: Revision) -> KvError {
        KvError::Conflict {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            revision,
        }
    }

    fn invalid_key(&self, key: &str) -> KvError {
        KvError::InvalidKey {
            bucket: self.bucket.clone(),
            key: key.to_string(),
        }
    }

    fn unavailable(&self, key: &str, reason: impl std::fmt::Display) -> KvError {
        KvError::Unavailable {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }
}
