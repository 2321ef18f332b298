//! Tracing across the six services, exported over OTLP: one drift task, triggered on NATS and
//! approved over gRPC, is one trace whose spans reach a loopback OTLP receiver with the right
//! parent links. The telemetry setup is global, so this file's process exports to one receiver.

use baton_proto::{ApproveRequest, ListTasksRequest, TaskStatus, subject};
use baton_runtime::auth::Role;
use baton_runtime::config::OtlpProtocol;
use baton_tests::otlp::{
    OtlpReceiver, ReceivedSpan, TraceLayout, check_task_trace, task_trace_complete,
};
use baton_tests::{Db, Harness, test_config};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

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

    // The task's trace, whole: all six services, then the checks of its parent links, its
    // root and the spans inside the stages (baton_tests::otlp::check_task_trace).
    let spans = rx
        .wait_until(T, baton_runtime::telemetry::flush, |spans| {
            task_trace_complete(spans, &id)
        })
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
    // One process: every span's resource is the default service name of a process running
    // all six (`baton`).
    let found =
        check_task_trace(&spans, &id, &TraceLayout::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found.cut_short, 0);
    let in_trace: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == found.trace_id)
        .collect();
    assert!(in_trace.iter().all(|s| s.service_name == "baton"));
    let root = in_trace
        .iter()
        .find(|s| s.parent_span_id.is_empty())
        .unwrap();
    assert_eq!(root.attr("subject"), "baton.trigger.default.cli");
}
