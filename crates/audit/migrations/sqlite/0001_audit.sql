-- The audit log: append-only, hash-chained (see baton_audit::chain for the hash layout).
-- Times are microseconds since the Unix epoch (UTC).
CREATE TABLE audit_log (
    sequence    INTEGER PRIMARY KEY,
    event_id    TEXT    NOT NULL UNIQUE,
    task_id     TEXT    NOT NULL,
    tenant      TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    producer    TEXT    NOT NULL,
    event_time  INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    payload     BLOB    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL
);
CREATE INDEX audit_log_task ON audit_log (task_id, sequence);

-- Task views: a projection of audit_log, written in the same transaction as the rows.
CREATE TABLE tasks (
    task_id      TEXT    PRIMARY KEY,
    tenant       TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    role         TEXT    NOT NULL,
    task_type    TEXT    NOT NULL,
    environment  TEXT    NOT NULL,
    risk         TEXT    NOT NULL,
    text         TEXT    NOT NULL,
    submitted_by TEXT    NOT NULL,
    reason       TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    event_count  INTEGER NOT NULL
);
CREATE INDEX tasks_created ON tasks (created_at DESC, task_id DESC);
CREATE INDEX tasks_tenant_created ON tasks (tenant, created_at DESC, task_id DESC);
