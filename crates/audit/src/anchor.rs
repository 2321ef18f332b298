//! The audit log's end, anchored outside the database.
//!
//! The hash chain shows a changed or removed record *inside* the log, but not removed newest
//! records: after deleting rows 41–43 of a stopped Baton, the chain 1–40 verifies and a
//! restarted writer reloads its head (40) from the database. So after each stored batch the
//! writer puts the head — sequence and hash of the last record, signed with audit's Ed25519 key
//! (`audit.signing_key`, [`baton_runtime::signing`], context `ANCHOR_CONTEXT`) — into key
//! [`ANCHOR_KEY`] of the JetStream KV bucket [`ANCHOR_BUCKET`], where whoever can edit the
//! database cannot reach it.
//!
//! - Cost: one KV write (a JetStream publish and its ack) and one signature per stored batch
//!   of up to `audit.batch_size` events, not per event.
//! - On start ([`Anchor::check`]): an anchor whose signature does not verify with audit's key
//!   is refused; a database that ends before the anchored sequence, or holds another hash
//!   there, is refused ([`Error::AnchorAhead`] names the missing records). A database *ahead*
//!   of the anchor is fine: the process died after a commit and before anchoring it.
//! - `VerifyAudit` compares the chain with the anchor too ([`Store::verify_with`]).
//! - Recovery: restore the database from a backup (then it reaches the anchor again); or, to
//!   accept the loss, delete the anchor (`nats kv del baton_audit_anchor head`): the next start
//!   anchors the database as it is.
//!
//! The write is a compare-and-set on the revision this writer last wrote, so a second writer
//! (which the database's writer lock already rules out) cannot silently interleave.

use crate::Error;
use crate::store::{ChainHead, Store};
use baton_bus::kv::{Kv, KvError, Revision};
use baton_runtime::signing::{ANCHOR_CONTEXT, PublicKey, SigningKey};
use std::path::Path;
use tokio::sync::Mutex;

/// JetStream KV bucket of the anchored head.
pub const ANCHOR_BUCKET: &str = "baton_audit_anchor";
/// The key of the head in [`ANCHOR_BUCKET`].
pub const ANCHOR_KEY: &str = "head";
/// Revisions kept: a few, so an operator can see how the anchor moved.
const HISTORY: i64 = 5;

/// The anchored head as stored (protobuf).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnchoredHead {
    /// Sequence of the last record.
    #[prost(uint64, tag = "1")]
    pub sequence: u64,
    /// Its hash (lowercase hex).
    #[prost(string, tag = "2")]
    pub hash: String,
    /// Id of the key that signed ([`baton_runtime::signing::key_id`]).
    #[prost(string, tag = "3")]
    pub key_id: String,
    /// Ed25519 signature over [`ANCHOR_CONTEXT`] and [`signed_bytes`].
    #[prost(bytes = "vec", tag = "4")]
    pub signature: Vec<u8>,
}

/// What the signature covers: the sequence (8 bytes, big-endian) and the hash's ASCII.
pub fn signed_bytes(head: &ChainHead) -> Vec<u8> {
    let mut m = head.sequence.to_be_bytes().to_vec();
    m.extend_from_slice(head.hash.as_bytes());
    m
}

/// The anchor of one audit writer: its key and the bucket.
pub struct Anchor {
    /// The bucket.
    kv: Kv<AnchoredHead>,
    /// Signs heads.
    key: SigningKey,
    /// Its public half, to check what is read back.
    public: PublicKey,
    /// Revision of the key as this writer last read or wrote it.
    revision: Mutex<Revision>,
}

impl Anchor {
    /// Opens the bucket (creating it) and loads (or creates) the key at `key_path`.
    ///
    /// Errors: [`Error::Key`], [`Error::Bus`].
    pub async fn open(bus: &baton_bus::Bus, key_path: &Path) -> Result<Anchor, Error> {
        let (key, created) = SigningKey::load_or_create(key_path)?;
        if created {
            tracing::info!(path = %key_path.display(), key_id = key.key_id(), "created audit's anchor key");
        }
        let kv = bus.kv::<AnchoredHead>(ANCHOR_BUCKET, HISTORY).await?;
        Ok(Anchor {
            kv,
            public: key.public_key(),
            key,
            revision: Mutex::new(0),
        })
    }

    /// The id of the key that signs.
    pub fn key_id(&self) -> &str {
        self.key.key_id()
    }

    /// The anchored head, its signature checked; `None` when nothing was anchored yet.
    ///
    /// Errors: [`Error::Anchor`] when the bucket cannot be read or the value does not decode;
    /// [`Error::AnchorForged`] when its signature is not audit's.
    pub async fn read(&self) -> Result<Option<ChainHead>, Error> {
        let found = self
            .kv
            .get(ANCHOR_KEY)
            .await
            .map_err(|e| Error::Anchor(e.to_string()))?;
        let Some((stored, revision)) = found else {
            return Ok(None);
        };
        *self.revision.lock().await = revision;
        let head = ChainHead {
            sequence: stored.sequence,
            hash: stored.hash.clone(),
        };
        if stored.key_id != self.key.key_id()
            || !self
                .public
                .verify(ANCHOR_CONTEXT, &signed_bytes(&head), &stored.signature)
        {
            return Err(Error::AnchorForged(format!(
                "the anchored head (record {}) is signed by key {:?}, which is not audit's key {} \
                 or does not verify; was audit.signing_key replaced? restore it, or delete the \
                 anchor to accept the database as it is",
                stored.sequence,
                stored.key_id,
                self.key.key_id()
            )));
        }
        Ok(Some(head))
    }

    /// Reads the anchor and checks the database against it ([`Store::check_anchor`]).
    pub async fn check(&self, store: &Store) -> Result<(), Error> {
        match self.read().await? {
            Some(head) => store.check_anchor(&head).await,
            None => Ok(()),
        }
    }

    /// Anchors `head` (signed) at the revision last seen. A conflict (someone else wrote the
    /// key) is retried once from a fresh read, never moving the anchor backwards.
    ///
    /// Errors: [`Error::Anchor`] when the bucket cannot be written.
    pub async fn publish(&self, head: &ChainHead) -> Result<(), Error> {
        let value = AnchoredHead {
            sequence: head.sequence,
            hash: head.hash.clone(),
            key_id: self.key.key_id().to_string(),
            signature: self.key.sign(ANCHOR_CONTEXT, &signed_bytes(head)),
        };
        let mut revision = self.revision.lock().await;
        for _ in 0..2 {
            match self.kv.update(ANCHOR_KEY, &value, *revision).await {
                Ok(r) => {
                    *revision = r;
                    return Ok(());
                }
                Err(KvError::Conflict { .. }) => {
                    let entry = self
                        .kv
                        .entry(ANCHOR_KEY)
                        .await
                        .map_err(|e| Error::Anchor(e.to_string()))?;
                    if let Some((current, _)) = entry.clone().into_value()
                        && current.sequence > head.sequence
                    {
                        return Err(Error::Anchor(format!(
                            "another writer anchored record {} past this writer's {}",
                            current.sequence, head.sequence
                        )));
                    }
                    *revision = entry.revision();
                }
                Err(e) => return Err(Error::Anchor(e.to_string())),
            }
        }
        Err(Error::Anchor(
            "the anchor kept changing under this writer".into(),
        ))
    }
}
