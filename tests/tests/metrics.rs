//! Prometheus metrics after a real task, and the shipped dashboard and alert rules checked
//! against the metric names Baton exposes (`baton_runtime::metrics::names`).

use baton_proto::{ApproveRequest, SubmitTaskRequest, TaskStatus, Trigger};
use baton_runtime::auth::Role;
use baton_runtime::metrics::names;
use baton_tests::{Db, Harness};
use std::collections::BTreeSet;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// `GET path` over a fresh HTTP/1.1 connection: the status code and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the series `name{labels…}` whose labels include every `key="value"` of
/// `labels` (summed over the others); `None` when there is no such series.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = series.split_once('{').unwrap_or((series, ""));
        if n != name
            || !labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        {
            continue;
        }
        *found.get_or_insert(0.0) += v.parse::<f64>().unwrap();
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_shows_up_in_every_metric_with_real_values() {
    let h = Harness::start(Db::Sqlite).await;
    let mut c = h.clients("bob", &[Role::Submitter]).await;
    let id = c
        .triggers
        .submit_task(SubmitTaskRequest {
            trigger: Some(Trigger {
                text: "Fix drift on production web servers".into(),
                environment: "production".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .task_id;
    h.wait_for(&id, TaskStatus::AwaitingApproval, T).await;
    let mut alice = h.clients("alice", &[Role::Approver]).await;
    alice
        .approvals
        .approve(ApproveRequest {
            task_id: id.clone(),
            reason: "looks right".into(),
            plan_hash: String::new(),
            ..Default::default()
        })
        .await
        .unwrap();
    h.wait_for(&id, TaskStatus::Completed, T).await;

    // The consumer gauges come from a poll every few seconds; the rest is counted as it
    // happens. Wait until the audit log stored the final event and a poll saw every consumer
    // caught up and settled.
    let addr = h.baton.http_addr;
    let deadline = tokio::time::Instant::now() + T;
    let text = loop {
        let (status, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        let done = value(&text, names::TASKS, &[("status", "completed")]) == Some(1.0)
            && value(
                &text,
                names::CONSUMER_ACK_FLOOR,
                &[("consumer", "execution")],
            )
            .is_some_and(|v| v > 0.0)
            && value(&text, names::CONSUMER_PENDING, &[("consumer", "audit")]) == Some(0.0)
            && value(&text, names::CONSUMER_ACK_PENDING, &[]) == Some(0.0);
        if done {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never showed the task:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let count = |name: &str, labels: &[(&str, &str)]| {
        value(&text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"))
    };
    assert_eq!(count(names::TASKS, &[]), 1.0, "one task, counted once");
    for stage in [
        "ingestion",
        "decision",
        "agent-runner",
        "validation",
        "execution",
        "audit",
    ] {
        let handled = count(
            &format!("{}_count", names::STAGE_SECONDS),
            &[("service", stage)],
        );
        assert!(handled >= 1.0, "{stage} handled {handled}");
        assert!(
            count(
                &format!("{}_sum", names::STAGE_SECONDS),
                &[("service", stage)]
            ) > 0.0
        );
        assert_eq!(
            count(names::MESSAGES, &[("service", stage)]),
            handled,
            "{stage}: one message count per latency observation"
        );
    }
    assert_eq!(
        count(names::POLICY_DECISIONS, &[("verdict", "awaiting_approval")]),
        1.0
    );
    assert_eq!(count(names::EXECUTIONS, &[]), 1.0);
    let stored = count(names::AUDIT_RECORDS, &[]);
    assert!(stored >= 8.0, "every event of the task is stored: {stored}");
    assert_eq!(
        count(&format!("{}_count", names::AUDIT_LAG_SECONDS), &[]),
        stored,
        "one lag observation per stored event"
    );
    assert_eq!(count(names::AUDIT_WRITE_ERRORS, &[]), 0.0);
    // Every durable consumer of the six services is polled, and all are caught up.
    let consumers: BTreeSet<String> = text
        .lines()
        .filter(|l| l.starts_with(names::CONSUMER_PENDING))
        .filter_map(|l| {
            l.split("consumer=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(String::from)
        })
        .collect();
    for durable in ["ingestion", "decision", "validation", "execution", "audit"] {
        assert!(
            consumers.contains(durable),
            "{durable} not in {consumers:?}"
        );
    }
    assert!(
        consumers.iter().any(|c| c.starts_with("agent")),
        "{consumers:?}"
    );
    for c in &consumers {
        assert_eq!(
            count(names::CONSUMER_ACK_PENDING, &[("consumer", c)]),
            0.0,
            "{c}"
        );
    }
    // Every name is exposed.
    for name in names::ALL {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# TYPE {}", name.trim_end_matches("_total")))),
            "{name} is not exposed:\n{text}"
        );
    }
}

/// The metric names an expression uses: every `baton_…` identifier, with a histogram's
/// `_bucket`, `_sum` and `_count` series mapped to its name.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("baton_") {
        let preceded = rest[..i]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let ident: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + ident.len()..];
        if preceded {
            continue;
        }
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| ident.strip_suffix(s).filter(|b| names::ALL.contains(b)))
            .unwrap_or(&ident);
        out.push(base.to_string());
    }
    out
}

fn repo_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_grafana_dashboard_uses_only_exposed_metrics_and_shows_each() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("deploy/grafana/baton.json")).expect("dashboard JSON");
    let mut exprs = Vec::new();
    fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => collect(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    collect(&dashboard, &mut exprs);
    assert!(!exprs.is_empty(), "the dashboard has no queries");
    let mut used = BTreeSet::new();
    for e in &exprs {
        let found = metric_names(e);
        assert!(!found.is_empty(), "a panel without a Baton metric: {e}");
        for n in found {
            assert!(
                names::ALL.contains(&n.as_str()),
                "{n} (in {e}) is not exposed"
            );
            used.insert(n);
        }
    }
    for n in names::ALL {
        assert!(used.contains(*n), "no panel shows {n}");
    }
    assert_eq!(dashboard["uid"], "baton");
}

#[test]
fn the_alert_rules_use_only_exposed_metrics_and_pass_promtool() {
    let text = repo_file("deploy/prometheus/alerts.yml");
    let exprs: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .collect();
    assert!(
        exprs.len() >= 2,
        "a stuck-consumer and an audit-writer alert"
    );
    for e in &exprs {
        let found = metric_names(e);
        assert!(!found.is_empty(), "an alert without a Baton metric: {e}");
        for n in found {
            assert!(
                names::ALL.contains(&n.as_str()),
                "{n} (in {e}) is not exposed"
            );
        }
    }
    for alert in ["BatonConsumerStuck", "BatonAuditWriterFailing"] {
        assert!(text.contains(&format!("alert: {alert}")), "{alert}");
    }
    // Prometheus's own checker, where it is installed (Debian's `prometheus` package).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(root.join("deploy/prometheus/alerts.yml"))
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("promtool not run ({e}): only the names were checked"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_means_nats_connected_and_the_audit_database_answering() {
    use sqlx::Connection;
    let h = Harness::start(Db::Postgres).await;
    let addr = h.baton.http_addr;
    assert_eq!(get(addr, "/ready").await, (200, "ready\n".to_string()));

    // The audit database stops answering: no new connections, the open ones terminated.
    let db = h.database_url.rsplit('/').next().unwrap().to_string();
    let admin_url = std::env::var("BATON_TEST_POSTGRES_URL").unwrap();
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    // The name is the harness's generated one, never user input.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&db)
        .execute(&mut admin)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + T;
    let body = loop {
        let (status, body) = get(addr, "/ready").await;
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready stayed ready with the database gone"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(body.starts_with("not ready: audit database: "), "{body}");
    // Let the harness drop the database.
    // The name is the harness's generated one, never user input.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}
