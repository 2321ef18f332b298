//! How a task view maps to the `tasks` table, in one place: its columns, the values written for
//! a [`TaskRow`] (in the same order), and the labels its status and risk are stored as. Reading
//! uses `TaskRow`'s derived `sqlx::FromRow`, and the proto view is `TaskRow::to_view`.
//!
//! A new `tasks` column therefore touches: both migrations, a [`TaskRow`] field (with its
//! value in `TaskRow::new`, `TaskRow::to_view` and wherever the projection fills it), and its
//! name and value here.

use crate::projection::TaskRow;
use baton_proto::{Risk, TaskStatus};
use sqlx::query_builder::Separated;
use std::sync::LazyLock;

/// The columns of `tasks`, in the order [`push_task`] binds them; `task_id` (the key) first.
const TASK_COLUMNS: &[&str] = &[
    "task_id",
    "tenant",
    "status",
    "role",
    "task_type",
    "environment",
    "risk",
    "text",
    "submitted_by",
    "reason",
    "created_at",
    "updated_at",
    "event_count",
];

/// `task_id, tenant, …`: the select and insert list.
pub(super) static TASK_COLUMN_LIST: LazyLock<String> = LazyLock::new(|| TASK_COLUMNS.join(", "));

/// ` ON CONFLICT (task_id) DO UPDATE SET tenant = excluded.tenant, …`: every column but the key
/// takes the new value.
pub(super) static TASK_UPSERT: LazyLock<String> = LazyLock::new(|| {
    let set: Vec<String> = TASK_COLUMNS[1..]
        .iter()
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(" ON CONFLICT (task_id) DO UPDATE SET {}", set.join(", "))
});

/// Binds `t`'s values in the order of [`TASK_COLUMN_LIST`] (one `VALUES` tuple).
pub(super) fn push_task<DB>(b: &mut Separated<'_, DB, &'static str>, t: &TaskRow)
where
    DB: sqlx::Database,
    String: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    i64: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    b.push_bind(t.task_id.clone())
        .push_bind(t.tenant.clone())
        .push_bind(t.status.label().to_string())
        .push_bind(t.role.clone())
        .push_bind(t.task_type.clone())
        .push_bind(t.environment.clone())
        .push_bind(t.risk.label().to_string())
        .push_bind(t.text.clone())
        .push_bind(t.submitted_by.clone())
        .push_bind(t.reason.clone())
        .push_bind(t.created_at)
        .push_bind(t.updated_at)
        .push_bind(t.event_count);
}

/// A task's status or risk as the `tasks` table stores it: its lowercase label (`received`,
/// `high`). Read back leniently: a label this build does not know is `Unspecified`.
#[derive(Debug, Clone, sqlx::Type)]
#[sqlx(transparent)]
pub struct Label(String);

impl From<Label> for TaskStatus {
    fn from(l: Label) -> TaskStatus {
        TaskStatus::parse(&l.0).unwrap_or(TaskStatus::Unspecified)
    }
}

impl From<Label> for Risk {
    fn from(l: Label) -> Risk {
        Risk::parse(&l.0).unwrap_or(Risk::Unspecified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_but_the_key_is_updated_on_conflict() {
        assert!(TASK_UPSERT.contains("event_count = excluded.event_count"));
        assert!(!TASK_UPSERT.contains("task_id = excluded"));
        assert_eq!(
            TASK_UPSERT.matches("excluded.").count(),
            TASK_COLUMNS.len() - 1
        );
    }

    #[test]
    fn labels_read_back_as_written_and_unknown_ones_are_unspecified() {
        for s in [TaskStatus::AwaitingApproval, TaskStatus::Completed] {
            assert_eq!(TaskStatus::from(Label(s.label().into())), s);
        }
        assert_eq!(Risk::from(Label(Risk::High.label().into())), Risk::High);
        assert_eq!(
            TaskStatus::from(Label("later".into())),
            TaskStatus::Unspecified
        );
    }
}
