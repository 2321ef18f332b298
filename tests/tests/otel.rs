//! Tracing across the six services, exported over OTLP: one drift task, triggered on NATS and
//! approved over gRPC, is one trace whose spans reach a loopback OTLP receiver with the right
//! parent links. The telemetry setup is global, so this file's process exports to one receiver.

use baton_proto::{ApproveRequest, ListTasksRequest, TaskStatus, subject};
use baton_runtime::auth::Role;
use baton_runtime::config::OtlpProtocol;
use baton_tests::otlp::{OtlpReceiver, ReceivedSpan};
use baton_tests::{Db, Harness, test_config};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const STAGES: [&str; 6] = [
    "ingestion",
    "decision",
    "agent-runner",
    "validation",
    "execution",
    "audit",
];

async fn list_ids(h: &Harness) -> Vec<String> {
    let mut c = h.clients("test-admin", &[Role::Admin]).await;
    let r = c
        .tasks
        .list_tasks(ListTasksRequest {
            page_size: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.tasks.into_iter().map(|t| t.task_id).collect()
}

/// A consumer's span (`<service> handle`): its service.
fn stage(s: &ReceivedSpan) -> Option<&str> {
    s.name.ends_with(" handle").then(|| s.attr("service"))
}

/// The stage of the nearest consumer span above `s` (its parent, or the parent's parent, …).
fn stage_above<'a>(s: &ReceivedSpan, by_id: &HashMap<&str, &'a ReceivedSpan>) -> Option<&'a str> {
    let mut id = s.parent_span_id.as_str();
    while let Some(p) = by_id.get(id) {
        if let Some(stage) = stage(p) {
            return Some(stage);
        }
        id = p.parent_span_id.as_str();
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drift_task_is_one_trace_across_the_six_services_exported_over_otlp() {
    let rx = OtlpReceiver::start("127.0.0.1:0").await;
    let mut log = test_config(std::path::Path::new(".")).common.log;
    log.otlp.endpoint = rx.grpc_endpoint();
    log.otlp.protocol = OtlpProtocol::Grpc;
    log.otlp.resource_attributes = "deployment.environment=test".into();
    baton_runtime::telemetry::init(&log);
    assert!(baton_bus::trace::exporting());
    let h = Harness::start(Db::Sqlite).await;

    // The trigger starts the trace: a plain NATS publish, with no trace context.
    let before = list_ids(&h).await;
    let nats = h.nats().await;
    nats.publish(
        subject::trigger("default", "cli"),
        r#"{"text":"Fix drift on production web servers","environment":"production"}"#.into(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    let id = loop {
        if let Some(id) = list_ids(&h).await.into_iter().find(|i| !before.contains(i)) {
            break id;
        }
        assert!(tokio::time::Instant::now() < deadline, "no task");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
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
        .expect("approve");
    h.wait_for(&id, TaskStatus::Completed, T).await;

    // The task's trace: the one its decision span belongs to.
    let trace_of = |spans: &[ReceivedSpan]| {
        spans
            .iter()
            .find(|s| stage(s) == Some("decision") && s.attr("task_id") == id)
            .map(|s| s.trace_id.clone())
    };
    let complete = |spans: &[ReceivedSpan]| {
        let Some(trace) = trace_of(spans) else {
            return false;
        };
        let in_trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace).collect();
        let stages: BTreeSet<&str> = in_trace.iter().filter_map(|s| stage(s)).collect();
        // The audit log stores the final event last.
        STAGES.iter().all(|s| stages.contains(s))
            && in_trace
                .iter()
                .any(|s| stage(s) == Some("audit") && s.attr("subject") == subject::TASK_COMPLETED)
    };
    let spans = rx
        .wait_until(T, baton_runtime::telemetry::flush, complete)
        .await
        .unwrap_or_else(|spans| {
            let names: Vec<String> = spans
                .iter()
                .map(|s| format!("{} {} {:?}", s.trace_id, s.name, s.attributes))
                .collect();
            panic!(
                "the task's trace never had all six services:\n{}",
                names.join("\n")
            )
        });
    let trace = trace_of(&spans).unwrap();
    let in_trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace).collect();
    let by_id: HashMap<&str, &ReceivedSpan> =
        in_trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let dump = || {
        in_trace
            .iter()
            .map(|s| {
                format!(
                    "{} <- {} {} {:?}",
                    s.span_id, s.parent_span_id, s.name, s.attributes
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Every consumer span of the task is in this one trace.
    for s in spans
        .iter()
        .filter(|s| stage(s).is_some() && s.attr("task_id") == id)
    {
        assert_eq!(s.trace_id, trace, "{} of the task in another trace", s.name);
    }
    // One root: ingestion's handling of the trigger; every other span's parent was received.
    let roots: Vec<&&ReceivedSpan> = in_trace
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root span:\n{}", dump());
    assert_eq!(stage(roots[0]), Some("ingestion"), "{}", dump());
    assert_eq!(roots[0].attr("subject"), "baton.trigger.default.cli");
    for s in &in_trace {
        assert!(
            s.parent_span_id.is_empty() || by_id.contains_key(s.parent_span_id.as_str()),
            "{} has a parent outside the trace:\n{}",
            s.name,
            dump()
        );
    }
    // Each stage's span is a child of (a span within) the previous stage's; audit's of any
    // stage that published the event it stores.
    let previous = |stage: &str| match stage {
        "decision" => vec!["ingestion"],
        "agent-runner" => vec!["decision"],
        "validation" => vec!["agent-runner"],
        "execution" => vec!["validation"],
        "audit" => vec![
            "ingestion",
            "decision",
            "agent-runner",
            "validation",
            "execution",
        ],
        _ => vec![],
    };
    for s in &in_trace {
        let Some(this) = stage(s).filter(|s| *s != "ingestion") else {
            continue;
        };
        let above = stage_above(s, &by_id);
        assert!(
            above.is_some_and(|a| previous(this).contains(&a)),
            "{} ({}) sits under {above:?}:\n{}",
            s.name,
            s.attr("subject"),
            dump()
        );
    }
    // The spans inside the stages: policy evaluation, the rollout's phases, actions and checks.
    let named = |name: &str| in_trace.iter().filter(|s| s.name == name).count();
    assert_eq!(named("policy.evaluate"), 1, "{}", dump());
    assert!(
        named("rollout.phase") >= 2,
        "canary and the rest:\n{}",
        dump()
    );
    assert!(named("rollout.action") >= 2, "{}", dump());
    assert!(named("rollout.health_check") >= 2, "{}", dump());
    for s in in_trace.iter().filter(|s| s.name == "rollout.action") {
        assert!(!s.attr("asset").is_empty(), "{s:?}");
        assert_eq!(s.attr("ok"), "true", "{s:?}");
        assert_eq!(stage_above(s, &by_id), Some("execution"), "{s:?}");
        let phase = by_id[s.parent_span_id.as_str()];
        assert_eq!(phase.name, "rollout.phase", "an action is inside its phase");
    }
    let policy = in_trace
        .iter()
        .find(|s| s.name == "policy.evaluate")
        .unwrap();
    assert_eq!(stage_above(policy, &by_id), Some("validation"));
    // The resource: the default service name of a process running all six.
    assert!(in_trace.iter().all(|s| s.service_name == "baton"));
}
