//! [`Store::verify`]: the hash chain recomputed from the first record, in batches, and
//! compared with the heads vouched for outside the chain: the writer's (in memory) and the
//! anchor's (signed, in JetStream KV; see [`crate::anchor`]).

use super::record::LOG_COLUMNS;
use super::{ChainHead, Db, Store, StoredRecord};
use crate::Error;

/// Rows read per query while verifying.
const VERIFY_BATCH: i64 = 1_000;

/// Who vouches for a chain head the log must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Witness {
    /// The running writer's head, in its memory.
    Writer,
    /// The signed head audit anchors outside the database after each batch.
    Anchor,
}

/// `record 4 is missing` or `records 4–6 are missing`.
pub fn missing_records(from: u64, to: u64) -> String {
    if from == to {
        format!("record {from} is missing")
    } else {
        format!("records {from}–{to} are missing")
    }
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

impl Store {
    /// Recomputes the hash chain in sequence order, reading 1,000 rows at a time.
    ///
    /// Checks, per record: the sequence follows the previous one without a gap (record 1
    /// first), `prev_hash` equals the previous record's stored hash, and the stored hash equals
    /// the recomputed one. With `expected`, the record at `expected.sequence` must exist and
    /// carry `expected.hash` (this catches removal of the newest records, which the chain
    /// alone cannot see). Stops at the first problem.
    pub async fn verify(&self, expected: Option<&ChainHead>) -> Result<Verification, Error> {
        let expected: Vec<(Witness, ChainHead)> = expected
            .map(|h| (Witness::Writer, h.clone()))
            .into_iter()
            .collect();
        self.verify_with(&expected).await
    }

    /// [`Store::verify`] against any number of heads that the log must reach, each with who
    /// vouches for it. A head the log stops short of is named: for the anchor, "records 41–43
    /// are missing: the database ends at 40, the anchor at 43". The furthest head is checked
    /// for a cut tail (the anchor first on a tie); every head's record must carry its hash.
    pub async fn verify_with(
        &self,
        expected: &[(Witness, ChainHead)],
    ) -> Result<Verification, Error> {
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
                if let Some((who, _)) = expected
                    .iter()
                    .find(|(_, e)| e.sequence == seq && e.hash != r.hash)
                {
                    return bad(
                        checked,
                        seq,
                        match who {
                            Witness::Writer => format!(
                                "record {seq} is not the record the writer stored (it was replaced)"
                            ),
                            Witness::Anchor => format!(
                                "record {seq} is not the record the anchor names (it was replaced)"
                            ),
                        },
                    );
                }
                prev = ChainHead {
                    sequence: seq,
                    hash: r.hash,
                };
            }
        }
        let furthest = expected.iter().max_by_key(|(who, e)| {
            let anchor_first = matches!(who, Witness::Anchor);
            (e.sequence, anchor_first)
        });
        if let Some((who, e)) = furthest
            && e.sequence > prev.sequence
        {
            return bad(
                checked,
                prev.sequence + 1,
                match who {
                    Witness::Writer => format!(
                        "records after {} are missing: the writer stored up to record {} (the newest records were removed)",
                        prev.sequence, e.sequence
                    ),
                    Witness::Anchor => format!(
                        "{}: the database ends at {}, the anchor at {} (the newest records were removed)",
                        missing_records(prev.sequence + 1, e.sequence),
                        prev.sequence,
                        e.sequence
                    ),
                },
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

impl Store {
    /// Checks the database against the anchored head before the writer appends: the database
    /// must reach `anchor.sequence` and hold `anchor.hash` there. A database ahead of the anchor
    /// is fine (the process died after a commit, before anchoring it).
    ///
    /// Errors: [`Error::AnchorAhead`] naming the missing records, [`Error::AnchorMismatch`],
    /// [`Error::Database`].
    pub async fn check_anchor(&self, anchor: &ChainHead) -> Result<(), Error> {
        let head = super::load_head(&self.db).await?;
        if head.sequence < anchor.sequence {
            return Err(Error::AnchorAhead {
                database_end: head.sequence,
                anchor: anchor.sequence,
            });
        }
        if anchor.sequence == 0 {
            return Ok(());
        }
        let hash: Option<String> = with_db!(&self.db, pool, DB => {
            sqlx::query_scalar::<DB, String>("SELECT hash FROM audit_log WHERE sequence = $1")
                .bind(anchor.sequence as i64)
                .fetch_optional(pool)
                .await
        })
        .map_err(|source| Error::Database {
            action: "read the anchored record",
            source,
        })?;
        match hash {
            Some(h) if h == anchor.hash => Ok(()),
            Some(_) => Err(Error::AnchorMismatch {
                sequence: anchor.sequence,
                problem: "it was replaced".into(),
            }),
            None => Err(Error::AnchorMismatch {
                sequence: anchor.sequence,
                problem: "it is missing (a record was removed)".into(),
            }),
        }
    }
}
