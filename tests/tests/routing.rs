//! Routing end to end with the embedding classifier on the real MiniLM weights: a request no
//! rule matches is routed by the classifier; gibberish waits for an operator
//! (`awaiting_clarification`, audited, listed, routed by `DecisionService/Route` or rejected);
//! and shadow mode replays the audit log those real tasks wrote through candidate rules.

use baton_proto::event::Body;
use baton_proto::{
    DecisionTier, GetTaskRequest, ListAwaitingRequest, RejectTaskRequest, RouteRequest,
    SubmitTaskRequest, TaskStatus, Trigger,
};
use baton_runtime::auth::Role;
use baton_tests::{Db, Harness};
use std::path::PathBuf;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// The weights' directory: `BATON_MINILM_DIR`, else what `deploy/minilm.sh --env` prepares.
fn model_dir() -> PathBuf {
    if let Ok(d) = std::env::var("BATON_MINILM_DIR") {
        return PathBuf::from(d);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/minilm.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg("--env")
        .output()
        .expect("run deploy/minilm.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(line.trim().strip_prefix("BATON_MINILM_DIR=").unwrap())
}

async fn start() -> Harness {
    let dir = model_dir();
    Harness::start_with(Db::Sqlite, move |c| {
        c.decision.embedding.model_dir = Some(dir);
    })
    .await
}

async fn submit(c: &mut baton::client::Clients, text: &str) -> String {
    c.triggers
        .submit_task(SubmitTaskRequest {
            trigger: Some(Trigger {
                text: text.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .task_id
}

/// Polls the audit log until the task has an event of `kind`; returns its body.
async fn wait_event(h: &Harness, task_id: &str, kind: &str) -> Body {
    let mut c = h.clients("test-admin", &[Role::Admin]).await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if let Ok(r) = c
            .tasks
            .get_task(GetTaskRequest {
                task_id: task_id.into(),
            })
            .await
        {
            let r = r.into_inner();
            if let Some(e) = r
                .events
                .iter()
                .filter_map(|r| r.event.as_ref())
                .find(|e| baton_proto::event_kind(e) == kind)
            {
                return e.body.clone().unwrap();
            }
            if tokio::time::Instant::now() > deadline {
                let lines: Vec<String> = r.events.iter().map(baton::client::describe).collect();
                panic!("task {task_id} has no {kind} event:\n{}", lines.join("\n"));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn unsure_tasks_wait_for_an_operator_who_routes_or_rejects_them() {
    let h = start().await;
    let mut alice = h.clients("alice", &[Role::Submitter]).await;

    // No rule keyword: the classifier routes it.
    let id = submit(
        &mut alice,
        "why are checkout requests timing out since noon?",
    )
    .await;
    let Body::TaskRouted(r) = wait_event(&h, &id, "task_routed").await else {
        unreachable!()
    };
    let d = r.decision.unwrap();
    assert_eq!(d.tier(), DecisionTier::Classifier, "{d:?}");
    assert_eq!(d.spec.unwrap().role, "incident");

    // Gibberish: not guessed; waits, audited, listed.
    let waiting = submit(&mut alice, "zxqv blorf wug tarn").await;
    h.wait_for(&waiting, TaskStatus::AwaitingClarification, T)
        .await;
    let listed = alice
        .decisions
        .list_awaiting(ListAwaitingRequest {})
        .await
        .unwrap()
        .into_inner()
        .awaiting;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].task.as_ref().unwrap().task_id, waiting);

    // A submitter may not route it; an operator may.
    let err = alice
        .decisions
        .route(RouteRequest {
            task_id: waiting.clone(),
            role: "cost".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let mut ops = h.clients("olga", &[Role::Operator]).await;
    let err = ops
        .decisions
        .route(RouteRequest {
            task_id: waiting.clone(),
            role: "barista".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    ops.decisions
        .route(RouteRequest {
            task_id: waiting.clone(),
            role: "cost".into(),
            reason: "the customer meant the bill".into(),
        })
        .await
        .unwrap();
    let Body::TaskRouted(r) = wait_event(&h, &waiting, "task_routed").await else {
        unreachable!()
    };
    let d = r.decision.unwrap();
    assert_eq!(d.tier(), DecisionTier::Human);
    assert_eq!(d.matched_by, "operator:olga");
    assert!(
        d.explanation.contains("the customer meant the bill"),
        "{}",
        d.explanation
    );
    assert_eq!(d.spec.unwrap().role, "cost");
    // Answered: no longer listed, and a second answer finds nothing.
    let listed = ops
        .decisions
        .list_awaiting(ListAwaitingRequest {})
        .await
        .unwrap()
        .into_inner()
        .awaiting;
    assert!(listed.is_empty(), "{listed:?}");
    let err = ops
        .decisions
        .reject_task(RejectTaskRequest {
            task_id: waiting.clone(),
            reason: "too late".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");

    // Another waits and is rejected: the task ends rejected, naming the operator.
    let rejected = submit(&mut alice, "glorp").await;
    h.wait_for(&rejected, TaskStatus::AwaitingClarification, T)
        .await;
    ops.decisions
        .reject_task(RejectTaskRequest {
            task_id: rejected.clone(),
            reason: "not a request".into(),
        })
        .await
        .unwrap();
    let r = h.wait_for(&rejected, TaskStatus::Rejected, T).await;
    let view = r.task.unwrap();
    assert!(view.reason.contains("olga"), "{}", view.reason);

    // Shadow mode over this audit log: the rules alone would send the classifier's incident
    // to the assistant (the fallback) and would route the gibberish instead of asking.
    let candidate_rules = h.data.path().join("candidate-rules.toml");
    std::fs::write(
        &candidate_rules,
        baton_decision::rules::RuleSet::builtin_text(),
    )
    .unwrap();
    let mut decision = h.baton.config.decision.clone();
    decision.rules_path = Some(candidate_rules);
    decision.when_unsure = baton_decision::WhenUnsure::Fallback;
    let candidate = baton_decision::tiers::offline(
        &decision,
        &h.baton.config.common.catalog,
        &["rules".into()],
    )
    .unwrap();
    let mut admin = h.clients("admin", &[Role::Admin]).await;
    let recorded = baton::routing::recorded_decisions(&mut admin, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    let changes = baton_decision::shadow::replay(&candidate, &recorded)
        .await
        .unwrap();
    let by_id = |id: &str| changes.iter().find(|c| c.task_id == id);
    let incident = by_id(&id).expect("the classifier's route changes under rules only");
    assert_eq!(
        (incident.old_role.as_str(), incident.new_role.as_str()),
        ("incident", "assistant")
    );
    assert!(incident.old.explanation.contains("nearest examples"));
    assert!(incident.new.explanation.contains("no rule matched"));
    let routed = by_id(&waiting).expect("the operator's route changes");
    assert_eq!(
        (routed.old_role.as_str(), routed.new_role.as_str()),
        ("cost", "assistant")
    );
    let still = by_id(&rejected).expect("the rejected task was waiting");
    assert_eq!(
        (still.old_role.as_str(), still.new_role.as_str()),
        ("?", "assistant")
    );
    // Replaying through the running chain changes nothing it decided itself.
    let running = baton_decision::tiers::offline(
        &h.baton.config.decision,
        &h.baton.config.common.catalog,
        &["rules".into(), "embedding".into()],
    )
    .unwrap();
    let same = baton_decision::shadow::replay(&running, &recorded[..1])
        .await
        .unwrap();
    assert!(same.is_empty(), "{same:?}");
}
