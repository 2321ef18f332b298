//! [`Store::verify`]: the hash chain recomputed from the first record, in batches.

use super::record::LOG_COLUMNS;
use super::{ChainHead, Db, Store, StoredRecord};
use crate::Error;

/// Rows read per query while verifying.
const VERIFY_BATCH: i64 = 1_000;

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
