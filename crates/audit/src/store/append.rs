//! [`Store::append`], the only writer: drops event ids already stored, chains the new records
//! after the head, updates their tasks' views, and writes both in one transaction.

use super::record::{LOG_COLUMNS, push_record};
use super::rows::{TASK_COLUMN_LIST, TASK_UPSERT, push_task};
use super::{ChainHead, Db, NewRecord, Store, StoredRecord, load_head};
use crate::Error;
use crate::projection::{TaskRow, timestamp_to_micros};
use sqlx::QueryBuilder;
use std::collections::{HashMap, HashSet};
use tracing::{info, warn};

/// Rows per multi-row statement (13 parameters each stays far below both backends' limits).
const ROWS_PER_STATEMENT: usize = 500;

/// The writer's view of the chain head.
#[derive(Debug, Default)]
pub(super) struct HeadState {
    /// What the next record links to.
    pub(super) head: ChainHead,
    /// Set while an append runs and kept after one that failed or was cancelled: the database
    /// may hold more than `head` says (a commit that applied although it reported an error or
    /// was cut short, or another writer), so reload before appending.
    pub(super) stale: bool,
}

impl Store {
    /// Appends `records` in one transaction and returns what was stored, in sequence order.
    /// Each is stored [`NewRecord::redacted`]: secrets are replaced before the record is hashed.
    ///
    /// Records whose event id is already stored, or repeated within `records`, are dropped
    /// (one query for the batch). The `tasks` rows of the stored records' tasks are updated in
    /// the same transaction. On error nothing is stored (unless the commit applied although it
    /// reported an error) and the next call first reloads the chain head from the database,
    /// so one failure (also one caused by rows another writer appended) does not make every
    /// later append reuse a taken sequence number.
    pub async fn append(&self, records: Vec<NewRecord>) -> Result<Vec<StoredRecord>, Error> {
        let mut seen = HashSet::new();
        // Secrets never reach the log: each record is redacted before it is hashed.
        let records: Vec<NewRecord> = records
            .into_iter()
            .filter(|r| seen.insert(r.event_id.clone()))
            .map(NewRecord::redacted)
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
        // Stale until the append returns Ok: an append that fails, or is cancelled (its future
        // dropped, e.g. by the batch consumer's timeout) after the commit may have applied,
        // makes the next one reload the head first.
        state.stale = true;
        let result = self.append_after(&mut state.head, records).await;
        if result.is_ok() {
            state.stale = false;
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
                let mut q = QueryBuilder::<DB>::new(format!("SELECT {} FROM tasks WHERE task_id IN (", *TASK_COLUMN_LIST));
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(id.clone());
                }
                q.push(")");
                let rows: Vec<TaskRow> = q
                    .build_query_as()
                    .persistent(false)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err("read task views"))?;
                tasks.extend(rows.into_iter().map(|r| (r.task_id.clone(), r)));
            }
            for r in stored.iter().filter(|r| !r.record.task_id.is_empty()) {
                let at = r.effective_time();
                tasks
                    .entry(r.record.task_id.clone())
                    .or_insert_with(|| TaskRow::new(&r.record.task_id, &r.record.tenant, at))
                    .apply(&r.record.tenant, r.decoded_event().as_deref(), at);
            }
            // 4. Write.
            for chunk in stored.chunks(ROWS_PER_STATEMENT) {
                let mut q = QueryBuilder::<DB>::new(format!("INSERT INTO audit_log ({LOG_COLUMNS}) "));
                q.push_values(chunk, |mut b, r| push_record(&mut b, r));
                q.build().persistent(false).execute(&mut *tx).await.map_err(db_err("insert audit records"))?;
            }
            let rows: Vec<&TaskRow> = tasks.values().collect();
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut q = QueryBuilder::<DB>::new(format!("INSERT INTO tasks ({}) ", *TASK_COLUMN_LIST));
                q.push_values(chunk, |mut b, t| push_task(&mut b, t));
                q.push(TASK_UPSERT.as_str());
                q.build().persistent(false).execute(&mut *tx).await.map_err(db_err("update task views"))?;
            }
            tx.commit().await.map_err(db_err("commit"))?;
            *head = prev;
            stored
        });
        Ok(stored)
    }
}

fn now_micros() -> i64 {
    timestamp_to_micros(&baton_proto::now())
}
