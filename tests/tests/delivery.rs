//! What happens to an agent's answer after the agent, through all six services: a report-only
//! plan is validated and completed without a rollout, `GetTask` returns its artifacts and
//! `baton task` shows them (`--artifact` writes one); a plan with nothing to run and nothing to
//! deliver is refused; generated code (delivered without a report) passes
//! `policies/sandbox.rego` only when its sandbox run passed; and `baton watch` shows the
//! agent's model and tool calls as they happen.
//!
//! The agents are plug-ins registered as a program embedding Baton would (see `plugins.rs`),
//! for roles that only this test's catalog knows; tasks name their role and target
//! `development`, where a plan without approval reasons is approved.

use baton::config::BatonConfig;
use baton_agent_runner::progress::ProgressPublisher;
use baton_proto::progress::{Call, ToolDecision};
use baton_proto::report::Report;
use baton_proto::{
    AgentKind, Artifact, ModelCall, Plan, SandboxEnd, SandboxRun, SubmitTaskRequest, Task,
    TaskSpec, TaskStatus, ToolCall, Trigger, WatchTaskRequest,
};
use baton_runtime::auth::Role;
use baton_runtime::plugins::Plugins;
use baton_tests::{Db, Harness};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

const T: Duration = Duration::from_secs(60);

/// The report the `reporter` agent delivers.
fn cost_report() -> Report {
    Report {
        answer: "The bill rose 40% because storage egress tripled on 12 May.".into(),
        findings: vec![
            "egress from bucket logs-eu went from 2 TB to 6 TB".into(),
            serde_json::json!({"title": "logs-eu is public", "severity": "high"}),
        ],
        recommendations: vec!["make logs-eu private and cache the exports".into()],
    }
}

/// Python code and its sandbox run, as the codegen workflow attaches them; with a report when
/// `with_report`.
fn code_artifacts(exit_code: i32, with_report: bool) -> Vec<Artifact> {
    let code = Artifact {
        name: "reverse.py".into(),
        media_type: "text/x-python".into(),
        content: b"def reverse(s):\n    return s[::-1]\n\nassert reverse('abc') == 'cba'\n"
            .to_vec(),
        sandbox_run: Some(SandboxRun {
            image: "baton-sandbox-python".into(),
            exit_code,
            duration_ms: 212,
            stdout: if exit_code == 0 {
                "1 passed\n".into()
            } else {
                String::new()
            },
            stderr: if exit_code == 0 {
                String::new()
            } else {
                "Traceback (most recent call last):\nAssertionError\n".into()
            },
            ended_by: SandboxEnd::Exited as i32,
            ..Default::default()
        }),
    };
    let answer = Report {
        answer: "reverse(s) returns s[::-1]; its tests ran in the sandbox".into(),
        ..Default::default()
    };
    if with_report {
        vec![code, answer.to_artifact()]
    } else {
        vec![code]
    }
}

/// A model-backed agent whose plan is made by `plan`; when it has a gate, it first waits for a
/// permit (so a test can watch before it starts) and publishes progress for three calls.
struct Scripted {
    name: &'static str,
    plan: MakePlan,
    progress: ProgressPublisher,
    gate: Option<Arc<Semaphore>>,
}

impl baton_agent_runner::Agent for Scripted {
    fn name(&self) -> &str {
        self.name
    }

    fn kind(&self) -> AgentKind {
        AgentKind::Llm
    }

    fn plan<'a>(
        &'a self,
        task: &'a Task,
        _spec: &'a TaskSpec,
    ) -> BoxFuture<'a, Result<Plan, baton_agent_runner::AgentError>> {
        Box::pin(async move {
            if let Some(gate) = &self.gate {
                // Bounded, so a broken test fails on its assertions instead of hanging.
                if let Ok(Ok(permit)) =
                    tokio::time::timeout(Duration::from_secs(20), gate.acquire()).await
                {
                    permit.forget();
                }
                let progress = self.progress.start(task, self.name);
                progress
                    .model_call(&ModelCall {
                        provider: "llama".into(),
                        model: "qwen2.5-coder-0.5b".into(),
                        input_tokens: 412,
                        output_tokens: 37,
                        latency_ms: 1250,
                        cost_micros: 0,
                        ..Default::default()
                    })
                    .await;
                let call = |tool: &str| ToolCall {
                    tool: tool.into(),
                    arguments: r#"{"group": "billing"}"#.into(),
                    result: "[]".into(),
                    ok: true,
                    latency_ms: 8,
                    ..Default::default()
                };
                progress.tool_call(&call("query_assets")).await;
                progress
                    .tool_denied(
                        &call("write_file"),
                        "role cost may not call write_file in development",
                    )
                    .await;
            }
            Ok((self.plan)(task))
        })
    }
}

fn report_plan(task: &Task) -> Plan {
    Plan {
        task_id: task.task_id.clone(),
        summary: "why the cloud bill jumped".into(),
        artifacts: vec![cost_report().to_artifact()],
        ..Default::default()
    }
}

fn empty_plan(task: &Task) -> Plan {
    Plan {
        task_id: task.task_id.clone(),
        summary: "nothing to say".into(),
        ..Default::default()
    }
}

fn passing_code_plan(task: &Task) -> Plan {
    Plan {
        task_id: task.task_id.clone(),
        summary: "reverse a string".into(),
        artifacts: code_artifacts(0, false),
        ..Default::default()
    }
}

fn failing_code_plan(task: &Task) -> Plan {
    Plan {
        task_id: task.task_id.clone(),
        summary: "reverse a string".into(),
        artifacts: code_artifacts(1, true),
        ..Default::default()
    }
}

/// How a scripted agent makes its plan.
type MakePlan = fn(&Task) -> Plan;

/// The roles of this test, each with its agent's plan.
const AGENTS: &[(&str, MakePlan)] = &[
    ("reporter", report_plan),
    ("silent", empty_plan),
    ("coder", passing_code_plan),
    ("bad-coder", failing_code_plan),
];

fn plugins(gate: Arc<Semaphore>) -> Plugins {
    let mut plugins = Plugins::new();
    for &(role, plan) in AGENTS
        .iter()
        .chain([("watched", report_plan as MakePlan)].iter())
    {
        let gate = (role == "watched").then(|| gate.clone());
        let name: &'static str = Box::leak(format!("{role}@1").into_boxed_str());
        plugins.register(baton_agent_runner::AgentFactory::new(
            role,
            &[role],
            move |setup| {
                Ok(Arc::new(Scripted {
                    name,
                    plan,
                    progress: ProgressPublisher::new(&setup.ctx.bus),
                    gate: gate.clone(),
                }) as Arc<dyn baton_agent_runner::Agent>)
            },
        ));
    }
    plugins
}

fn configure(c: &mut BatonConfig) {
    c.common.catalog.roles.extend(
        ["reporter", "silent", "coder", "bad-coder", "watched"]
            .iter()
            .map(|r| r.to_string()),
    );
    // The watched agent waits for the test; do not redeliver its task meanwhile.
    c.common.nats.ack_wait = Duration::from_secs(20);
}

async fn start(db: Db) -> (Harness, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let h = Harness::start_with_plugins(db, configure, plugins(gate.clone())).await;
    (h, gate)
}

async fn submit(h: &Harness, role: &str, text: &str) -> String {
    let mut c = h.clients("alice", &[Role::Submitter]).await;
    c.triggers
        .submit_task(SubmitTaskRequest {
            trigger: Some(Trigger {
                text: text.into(),
                role: role.into(),
                environment: "development".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .task_id
}

/// Kinds of the task's recorded events, in order.
fn kinds(r: &baton_proto::GetTaskResponse) -> Vec<String> {
    r.events
        .iter()
        .filter_map(|e| e.event.as_ref().map(baton_proto::event_kind))
        .map(str::to_string)
        .collect()
}

async fn report_only_plans_are_delivered(db: Db) {
    let (h, _gate) = start(db).await;
    let id = submit(
        &h,
        "reporter",
        "Why did our cloud bill jump 40% this month?",
    )
    .await;
    let done = h.wait_for(&id, TaskStatus::Completed, T).await;

    // Validated and completed, with no rollout in between.
    assert_eq!(
        kinds(&done),
        [
            "task_received",
            "task_routed",
            "plan_proposed",
            "task_approved",
            "task_completed"
        ]
    );
    // GetTask returns the artifact as the audit log holds it.
    assert_eq!(done.artifacts.len(), 1);
    let artifact = &done.artifacts[0];
    assert_eq!(
        (artifact.name.as_str(), artifact.media_type.as_str()),
        ("report", "application/json")
    );
    assert!(!artifact.content_omitted);
    assert_eq!(artifact.size, artifact.content.len() as u64);
    assert_eq!(Report::from_json(&artifact.content).unwrap(), cost_report());

    // `baton task <id>` shows the report readably and lists the artifact.
    let mut c = h.clients("alice", &[Role::Submitter]).await;
    let mut shown = Vec::new();
    baton::inspect::show_task(&mut c, &id, &mut shown)
        .await
        .unwrap();
    let shown = String::from_utf8(shown).unwrap();
    for expected in [
        "[completed]",
        "report:\n  answer: The bill rose 40% because storage egress tripled on 12 May.",
        "  findings:\n    - egress from bucket logs-eu went from 2 TB to 6 TB\n    - [high] logs-eu is public",
        "  recommendations:\n    - make logs-eu private and cache the exports",
        "artifacts:\n  report ",
        &format!("baton task {id} --artifact NAME"),
    ] {
        assert!(
            shown.contains(expected),
            "missing {expected:?} in:\n{shown}"
        );
    }

    // `--artifact report` writes the raw content; an unknown name lists the ones there are.
    let mut raw = Vec::new();
    let size = baton::inspect::write_artifact(&mut c, &id, "report", &mut raw)
        .await
        .unwrap();
    assert_eq!(raw, artifact.content);
    assert_eq!(size, raw.len() as u64);
    let err = baton::inspect::write_artifact(&mut c, &id, "answer.txt", &mut Vec::new())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("task {id} has no artifact \"answer.txt\"; it has: report")
    );
    // Another tenant sees nothing of it.
    let mut other = h.clients_of("mallory", "other", &[Role::Submitter]).await;
    let err = baton::inspect::write_artifact(&mut other, &id, "report", &mut Vec::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_only_plan_completes_and_its_report_is_returned_and_shown_sqlite() {
    report_only_plans_are_delivered(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_only_plan_completes_and_its_report_is_returned_and_shown_postgres() {
    report_only_plans_are_delivered(Db::Postgres).await;
}

/// An empty plan without a report is refused; generated code whose sandbox run passed is
/// approved and completed, code whose tests failed is denied by `policies/sandbox.rego`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_plans_are_refused_and_code_passes_only_when_its_sandbox_run_passed() {
    let (h, _gate) = start(Db::Sqlite).await;
    let silent = submit(&h, "silent", "Anything to report?").await;
    let passing = submit(&h, "coder", "Write a Python function to reverse a string").await;
    let failing = submit(
        &h,
        "bad-coder",
        "Write a Python function to reverse a string",
    )
    .await;

    let refused = h.wait_for(&silent, TaskStatus::Rejected, T).await;
    let reason = &refused.task.as_ref().unwrap().reason;
    assert!(
        reason.contains(
            "the plan has no steps and no artifacts: nothing to run and nothing to deliver"
        ),
        "{reason}"
    );
    assert!(refused.artifacts.is_empty());

    let done = h.wait_for(&passing, TaskStatus::Completed, T).await;
    let names: Vec<&str> = done.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["reverse.py"], "code alone is a delivery");
    assert_eq!(
        kinds(&done),
        [
            "task_received",
            "task_routed",
            "plan_proposed",
            "task_approved",
            "task_completed"
        ]
    );
    let run = done.artifacts[0].sandbox_run.as_ref().unwrap();
    assert_eq!((run.exit_code, run.ended_by()), (0, SandboxEnd::Exited));
    let mut c = h.clients("alice", &[Role::Submitter]).await;
    let mut code = Vec::new();
    baton::inspect::write_artifact(&mut c, &passing, "reverse.py", &mut code)
        .await
        .unwrap();
    assert!(
        String::from_utf8(code)
            .unwrap()
            .starts_with("def reverse(s):")
    );

    let denied = h.wait_for(&failing, TaskStatus::Rejected, T).await;
    let reason = &denied.task.as_ref().unwrap().reason;
    assert!(
        reason.contains("tests of \"reverse.py\" failed in the sandbox (exit code 1)"),
        "{reason}"
    );
    // `baton task` shows the failed run readably.
    let mut shown = Vec::new();
    baton::inspect::show_task(&mut c, &failing, &mut shown)
        .await
        .unwrap();
    let shown = String::from_utf8(shown).unwrap();
    for expected in [
        "[rejected]",
        "sandbox run of reverse.py (baton-sandbox-python): exit code 1, ended by the program, 212 ms",
        "  stdout: (empty)",
        "  stderr:\n    Traceback (most recent call last):\n    AssertionError",
    ] {
        assert!(
            shown.contains(expected),
            "missing {expected:?} in:\n{shown}"
        );
    }
}

/// `WatchProgress` (and `baton watch`, through it) gets each model and tool call while the
/// agent works, then ends once the plan is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_shows_the_agents_calls_as_they_happen() {
    let (h, gate) = start(Db::Sqlite).await;
    let id = submit(&h, "watched", "Why did our cloud bill jump 40% this month?").await;
    // The agent waits at its gate: the task is routed, nothing is planned yet.
    h.wait_for(&id, TaskStatus::Routed, T).await;

    let mut c = h.clients("alice", &[Role::Submitter]).await;
    // Another tenant's watch is NOT_FOUND.
    let mut other = h.clients_of("mallory", "other", &[Role::Submitter]).await;
    let err = other
        .tasks
        .watch_progress(WatchTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // A wildcard is not a task id.
    let err = c
        .tasks
        .watch_progress(WatchTaskRequest {
            task_id: ">".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let mut stream = c
        .tasks
        .watch_progress(WatchTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    // `baton watch` too, into a buffer.
    let mut watcher = c.clone();
    let watch_id = id.clone();
    let cli = tokio::spawn(async move {
        let mut out = Vec::new();
        let completed = baton::inspect::watch(&mut watcher, &watch_id, &mut out).await;
        (completed.unwrap(), String::from_utf8(out).unwrap())
    });
    // Give `baton watch` time to subscribe (its task is recorded, so it does at once).
    tokio::time::sleep(Duration::from_secs(1)).await;
    gate.add_permits(1);

    let mut got = Vec::new();
    while let Some(p) = tokio::time::timeout(T, stream.message())
        .await
        .expect("the progress stream ends once the plan is recorded")
        .unwrap()
    {
        got.push(p);
    }
    assert_eq!(
        got.iter().map(|p| p.sequence).collect::<Vec<_>>(),
        [1, 2, 3],
        "{got:?}"
    );
    assert!(
        got.iter()
            .all(|p| p.task_id == id && p.agent == "watched@1")
    );
    match &got[0].call {
        Some(Call::ModelCall(m)) => {
            assert_eq!(
                (m.model.as_str(), m.input_tokens, m.latency_ms),
                ("qwen2.5-coder-0.5b", 412, 1250)
            )
        }
        other => panic!("not a model call: {other:?}"),
    }
    assert_eq!(got[1].tool_decision(), ToolDecision::Allowed);
    assert_eq!(got[2].tool_decision(), ToolDecision::Denied);
    let Some(Call::ToolCall(tool)) = &got[2].call else {
        panic!("not a tool call: {:?}", got[2]);
    };
    assert_eq!(tool.tool, "write_file");
    assert!(tool.result.is_empty(), "watchers never get a tool's result");

    let (completed, printed) = tokio::time::timeout(T, cli).await.unwrap().unwrap();
    assert!(completed, "{printed}");
    for expected in [
        "  · model llama/qwen2.5-coder-0.5b 412→37 tokens, 1.25 s",
        "  · tool query_assets allowed, ok, 8 ms",
        "  · tool write_file DENIED: role cost may not call write_file in development",
        "task_completed",
        "report:\n  answer: The bill rose 40%",
    ] {
        assert!(
            printed.contains(expected),
            "missing {expected:?} in:\n{printed}"
        );
    }
    // Progress comes before the plan it led to.
    let model_at = printed.find("· model").unwrap();
    let plan_at = printed.find("plan_proposed").unwrap();
    assert!(model_at < plan_at, "{printed}");

    // Once the plan is recorded there is nothing more to watch: the stream ends at once.
    let mut after = c
        .tasks
        .watch_progress(WatchTaskRequest { task_id: id })
        .await
        .unwrap()
        .into_inner();
    assert!(after.message().await.unwrap().is_none());
}
