//! The audit log's end, anchored outside the database.
//!
//! The hash chain shows a changed or removed record *inside* the log, but not removed newest
//! records: after deleting rows 41–43 of a stopped Baton, the chain 1–40 verifies and a
//! restarted writer reloads its head (40) from the database. So the writer puts the head —
//! sequence and hash of the last record, signed with audit's Ed25519 key (`audit.signing_key`,
//! [`baton_runtime::signing`], context `ANCHOR_CONTEXT`) — into key [`ANCHOR_KEY`] of the
//! JetStream KV bucket [`ANCHOR_BUCKET`], where whoever can edit the database cannot reach it.
//!
//! - Off the batch path ([`AnchorWriter`]): each stored batch hands its head to one writer task
//!   (a `tokio::sync::watch`: the newest head wins) and is acked once its records are committed,
//!   without waiting for the anchor. The task signs and writes at most one head at a time and
//!   at most one every `audit.anchor_interval` (100 ms by default), so under load many batches
//!   coalesce into one write: one KV write and one signature per interval at most, not per
//!   batch. A write that fails is logged and retried with the newest head (backing off up to
//!   [`RETRY_MAX`]); it is never dropped.
//! - On stop ([`AnchorWriter::stop`], called by [`Audit::run`](crate::Audit::run) after the
//!   last batch is settled) the task writes the newest head before audit exits (a few
//!   attempts, each failure logged), so after a clean stop the anchor names the last record.
//! - The protection's bound: the anchor trails the database by at most one interval plus one
//!   write's latency (a KV write and a signature, about a millisecond on loopback) while NATS
//!   answers — longer only while writes fail, which the log shows. Deleting records newer than
//!   the anchor is detected only once a later anchor names them: after a clean stop nothing is
//!   uncovered; after a crash (or a kill) the records committed in the last interval and
//!   write may be unanchored, as a crash between commit and anchor always could.
//! - On start ([`Anchor::check`]): an anchor whose signature does not verify with audit's key
//!   is refused; a database that ends before the anchored sequence, or holds another hash
//!   there, is refused ([`Error::AnchorAhead`] names the missing records). A database *ahead*
//!   of the anchor is fine: the process died after a commit and before anchoring it. The head
//!   found is anchored at once.
//! - `VerifyAudit` compares the chain with the anchor too ([`Store::verify_with`]); a database
//!   ahead of a lagging anchor verifies.
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
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// JetStream KV bucket of the anchored head.
pub const ANCHOR_BUCKET: &str = "baton_audit_anchor";
/// The key of the head in [`ANCHOR_BUCKET`].
pub const ANCHOR_KEY: &str = "head";
/// Revisions kept: a few, so an operator can see how the anchor moved.
const HISTORY: i64 = 5;
/// Longest wait between retries of a failed anchor write (the first waits 100 ms, doubling).
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// Attempts to write the newest head on stop before audit exits with it unanchored (logged).
const FLUSH_ATTEMPTS: u32 = 3;

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

/// The anchor's writer task: takes the newest head from the batches and anchors it off their
/// path (see the [module](self) doc for the bound this leaves on the protection).
pub struct AnchorWriter {
    /// The newest stored head; the task anchors whatever is newest when it gets to it.
    head: watch::Sender<ChainHead>,
    /// Cancelled by [`AnchorWriter::stop`]: cuts a wait short and makes the task flush and end.
    stop: CancellationToken,
    /// The task; `None` once stopped.
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl AnchorWriter {
    /// Starts the task. `anchored` is the head already anchored (`None` when anchoring it at
    /// start failed: then `current` is retried at once); `current` is the database's head;
    /// `interval` is the least time between the starts of two writes (zero: back to back).
    pub fn start(
        anchor: Arc<Anchor>,
        current: ChainHead,
        anchored: Option<ChainHead>,
        interval: Duration,
    ) -> AnchorWriter {
        let (head, rx) = watch::channel(current);
        let stop = CancellationToken::new();
        let task = tokio::spawn(write_loop(anchor, rx, anchored, interval, stop.clone()));
        AnchorWriter {
            head,
            stop,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Hands over the head of a stored batch; returns at once. A head older than the one
    /// already handed over is ignored, so the anchor never moves backwards.
    pub fn submit(&self, head: ChainHead) {
        self.head.send_if_modified(|newest| {
            if head.sequence > newest.sequence {
                *newest = head;
                true
            } else {
                false
            }
        });
    }

    /// Anchors the newest head handed over (up to a few attempts, each failure logged) and ends
    /// the task. Waits at most one anchor interval plus those attempts.
    pub async fn stop(&self) {
        self.stop.cancel();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            error!(error = %e, "the audit anchor's writer task failed");
        }
    }
}

impl Drop for AnchorWriter {
    fn drop(&mut self) {
        // Dropped without `stop` (an `Audit` that never ran): the task flushes on its own.
        self.stop.cancel();
    }
}

/// The writer task: waits for a newer head, anchors it, waits out the interval (or a retry's
/// backoff), again; on `stop` anchors the newest head and returns.
async fn write_loop(
    anchor: Arc<Anchor>,
    mut rx: watch::Receiver<ChainHead>,
    mut anchored: Option<ChainHead>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut backoff = Duration::ZERO;
    let mut next = Instant::now();
    loop {
        // A head not anchored yet (new, or a failed write's) is written once `next` is due.
        let pending = anchored.as_ref() != Some(&*rx.borrow_and_update());
        if !pending {
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = rx.changed() => if changed.is_err() { break },
            }
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
        let head = rx.borrow_and_update().clone();
        let started = Instant::now();
        match anchor.publish(&head).await {
            Ok(()) => {
                anchored = Some(head);
                backoff = Duration::ZERO;
                next = started + interval;
            }
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(100), RETRY_MAX);
                error!(error = %e, sequence = head.sequence, retry_in = ?backoff,
                    "cannot anchor the audit head; retrying with the newest head");
                next = Instant::now() + backoff.max(interval);
            }
        }
    }
    // Stopping: the newest head handed over is anchored before audit exits.
    let head = rx.borrow().clone();
    if anchored.as_ref() == Some(&head) {
        return;
    }
    for attempt in 1..=FLUSH_ATTEMPTS {
        match anchor.publish(&head).await {
            Ok(()) => {
                info!(sequence = head.sequence, "audit head anchored on stop");
                return;
            }
            Err(e) if attempt < FLUSH_ATTEMPTS => {
                warn!(error = %e, sequence = head.sequence, attempt, "cannot anchor the audit head on stop; retrying");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            Err(e) => error!(
                error = %e,
                sequence = head.sequence,
                anchored = anchored.as_ref().map(|h| h.sequence),
                "cannot anchor the audit head on stop; records after the anchored one are not \
                 covered until the next start anchors the database as found"
            ),
        }
    }
}
