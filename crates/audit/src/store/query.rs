//! Reading: a task's view ([`Store::get_task`]), a view with its records from one snapshot
//! ([`Store::task_with_records`]), records after a sequence ([`Store::task_records`]), and
//! pages of views ([`Store::list_tasks`]).

use super::record::LOG_COLUMNS;
use super::rows::TASK_COLUMN_LIST;
use super::token::{decode_token, encode_token};
use super::{Db, Store, StoredRecord};
use crate::Error;
use crate::projection::TaskRow;
use baton_proto::{TaskStatus, TaskView};
use sqlx::QueryBuilder;

/// Filters and position of one `ListTasks` page.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    /// Only this status.
    pub status: Option<TaskStatus>,
    /// Only this role.
    pub role: Option<String>,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Tasks per page (1–500).
    pub page_size: u32,
    /// A previous page's `next_page_token` (empty for the first page).
    pub page_token: String,
}

/// One page of tasks, newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskPage {
    /// The tasks of this page, newest first, at most the page size asked for.
    pub tasks: Vec<TaskView>,
    /// Token of the next page; empty on the last.
    pub next_page_token: String,
}

impl Store {
    /// The task view of `task_id`, if any event of it is stored.
    pub async fn get_task(&self, task_id: &str) -> Result<Option<TaskView>, Error> {
        let row: Option<TaskRow> = with_db!(&self.db, pool, DB => {
            sqlx::query_as::<DB, TaskRow>(sqlx::AssertSqlSafe(format!("SELECT {} FROM tasks WHERE task_id = $1", *TASK_COLUMN_LIST)))
                .bind(task_id)
                .fetch_optional(pool)
                .await
        })
        .map_err(|source| Error::Database { action: "read a task view", source })?;
        Ok(row.map(|r| r.to_view()))
    }

    /// The task view of `task_id` and all its records in sequence order, read from one snapshot
    /// of the database (a read transaction; REPEATABLE READ on PostgreSQL), so the view reflects
    /// exactly the records returned: a batch stores both in one transaction, and two separate
    /// reads could straddle a commit. `None` if no event of the task is stored.
    pub async fn task_with_records(
        &self,
        task_id: &str,
    ) -> Result<Option<(TaskView, Vec<StoredRecord>)>, Error> {
        let db_err = |action| move |source| Error::Database { action, source };
        let postgres = matches!(self.db, Db::Postgres(_));
        let (row, records) = with_db!(&self.db, pool, DB => {
            let mut tx = pool.begin().await.map_err(db_err("begin a read transaction"))?;
            if postgres {
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err("begin a read transaction"))?;
            }
            let row: Option<TaskRow> = sqlx::query_as::<DB, TaskRow>(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM tasks WHERE task_id = $1", *TASK_COLUMN_LIST
            )))
            .bind(task_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err("read a task view"))?;
            let records: Vec<StoredRecord> = sqlx::query_as::<DB, StoredRecord>(sqlx::AssertSqlSafe(format!(
                "SELECT {LOG_COLUMNS} FROM audit_log WHERE task_id = $1 ORDER BY sequence"
            )))
            .bind(task_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err("read task records"))?;
            tx.commit().await.map_err(db_err("end a read transaction"))?;
            (row, records)
        });
        Ok(row.map(|r| (r.to_view(), records)))
    }

    /// The records of `task_id` with sequence greater than `after`, in sequence order.
    pub async fn task_records(
        &self,
        task_id: &str,
        after: u64,
    ) -> Result<Vec<StoredRecord>, Error> {
        with_db!(&self.db, pool, DB => {
            sqlx::query_as::<DB, StoredRecord>(sqlx::AssertSqlSafe(format!(
                "SELECT {LOG_COLUMNS} FROM audit_log WHERE task_id = $1 AND sequence > $2 ORDER BY sequence"
            )))
            .bind(task_id)
            .bind(after as i64)
            .fetch_all(pool)
            .await
        })
        .map_err(|source| Error::Database { action: "read task records", source })
    }

    /// One page of task views, newest first (by `created_at`, then `task_id`).
    ///
    /// Errors: [`Error::InvalidArgument`] for a page token this store did not issue.
    pub async fn list_tasks(&self, query: &TaskQuery) -> Result<TaskPage, Error> {
        let page_size = query.page_size.clamp(1, 500) as i64;
        let after = if query.page_token.is_empty() {
            None
        } else {
            Some(decode_token(&query.page_token)?)
        };
        let rows: Vec<TaskRow> = with_db!(&self.db, pool, DB => {
            let mut q = QueryBuilder::<DB>::new(format!("SELECT {} FROM tasks WHERE 1 = 1", *TASK_COLUMN_LIST));
            if let Some(status) = query.status {
                q.push(" AND status = ").push_bind(status.label());
            }
            if let Some(role) = &query.role {
                q.push(" AND role = ").push_bind(role.clone());
            }
            if let Some(tenant) = &query.tenant {
                q.push(" AND tenant = ").push_bind(tenant.clone());
            }
            if let Some((created, task_id)) = &after {
                q.push(" AND (created_at < ").push_bind(*created);
                q.push(" OR (created_at = ").push_bind(*created);
                q.push(" AND task_id < ").push_bind(task_id.clone()).push("))");
            }
            q.push(" ORDER BY created_at DESC, task_id DESC LIMIT ").push_bind(page_size + 1);
            q.build_query_as().fetch_all(pool).await
        })
        .map_err(|source| Error::Database { action: "list tasks", source })?;
        let more = rows.len() as i64 > page_size;
        let tasks: Vec<TaskRow> = rows.into_iter().take(page_size as usize).collect();
        let next_page_token = match (more, tasks.last()) {
            (true, Some(last)) => encode_token(last.created_at, &last.task_id),
            _ => String::new(),
        };
        Ok(TaskPage {
            tasks: tasks.iter().map(TaskRow::to_view).collect(),
            next_page_token,
        })
    }
}
