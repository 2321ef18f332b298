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
//! What makes them pass on a loaded 2-core machine: the agent files use `tool_choice = "schema"`
//! (tools listed in the prompt, one call per turn forced by a JSON schema, so a turn ends after
//! its call; with `required` llama.cpp let the 0.5B model write call after call until
//! `max_tokens`), few tools, and answer schemas whose length limits bound the output; the
//! server runs one thread in its own session at a raised scheduling priority when the kernel
//! allows it (on a shared machine a model server among a dozen compilers otherwise gets under
//! 1 token/s).
//!
//! The crash test kills the agent runner in the middle of the cost agent's tool loop and checks,
//! with a counting proxy in front of llama-server and the server's own `/metrics`, that no model
//! call was made twice.

use baton_proto::event::Body;
use baton_proto::{
    AgentKind, ApproveRequest, ListPendingRequest, Plan, SubmitTaskRequest, TaskStatus, Trigger,
};
use baton_runtime::auth::Role;
use baton_tests::{Db, Harness};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest wait for a task on the local model (2 cores shared with other builds).
const T: Duration = Duration::from_secs(1200);

/// A llama-server child serving the local model on a free loopback port; killed on drop.
struct LlamaServer {
    _child: tokio::process::Child,
    /// `http://127.0.0.1:<port>/v1`.
    url: String,
    /// `http://127.0.0.1:<port>`.
    base: String,
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
    // Its own session (so its own scheduling autogroup, whose priority can be raised below).
    let setsid = std::path::Path::new("/usr/bin/setsid").exists();
    let mut command =
        tokio::process::Command::new(if setsid { "/usr/bin/setsid" } else { &server });
    if setsid {
        command.arg(&server);
    }
    let mut child = command
        .args(["-m", &model, "--host", "127.0.0.1", "--port"])
        .arg(port.to_string())
        // One slot with the whole context (the conversation grows with tool results); one
        // thread that does not spin-wait: two threads on 2 busy cores wait on each other.
        .args([
            "--jinja",
            "-c",
            "4096",
            "--parallel",
            "1",
            "--no-repack",
            "--metrics",
            "-t",
            "1",
            "--poll",
            "0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {server}: {e}"));
    // The model server is latency-bound, the builds and tests around it are not: raise its
    // autogroup's priority where the kernel lets us (root, or CAP_SYS_NICE); otherwise it
    // shares the CPU equally with every other session.
    if let Some(pid) = child.id() {
        match std::fs::write(format!("/proc/{pid}/autogroup"), "-10") {
            Ok(()) => eprintln!("llama-server {pid}: autogroup nice -10"),
            Err(e) => eprintln!("llama-server {pid}: priority not raised ({e})"),
        }
    }
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
        base,
    })
}

impl LlamaServer {
    /// A counter of the server's own Prometheus `/metrics` (`llamacpp:tokens_predicted_total`).
    async fn counter(&self, name: &str) -> f64 {
        let text = reqwest_client()
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in llama-server's /metrics:\n{text}"))
    }
}

fn reqwest_client() -> reqwest::Client {
    baton_runtime::tls::http_client().build().unwrap()
}

/// `tests/fixtures/billing.json` served at `/billing` on loopback.
struct Billing {
    addr: std::net::SocketAddr,
    /// Requests served.
    hits: Arc<AtomicUsize>,
    /// Notified when the first request arrives.
    first: Arc<tokio::sync::Notify>,
}

/// Serves the billing fixture; the first request is answered after `first_delay` (time for a
/// test to crash the agent runner while the tool call is in flight).
async fn billing_fixture(first_delay: Duration) -> Billing {
    let body = include_str!("../fixtures/billing.json");
    let hits = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(tokio::sync::Notify::new());
    let (h, f) = (hits.clone(), first.clone());
    let app = axum::Router::new().route(
        "/billing",
        axum::routing::get(move || {
            let (h, f) = (h.clone(), f.clone());
            async move {
                if h.fetch_add(1, Ordering::SeqCst) == 0 {
                    f.notify_one();
                    tokio::time::sleep(first_delay).await;
                }
                ([("content-type", "application/json")], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Billing { addr, hits, first }
}

/// A proxy on loopback in front of llama-server that keeps the body of every chat request it
/// forwards: the count of calls the model server received, and which of them were the same.
struct CountingProxy {
    /// `http://127.0.0.1:<port>/v1`.
    url: String,
    bodies: Arc<Mutex<Vec<bytes::Bytes>>>,
}

async fn counting_proxy(upstream: &str) -> CountingProxy {
    let bodies: Arc<Mutex<Vec<bytes::Bytes>>> = Arc::default();
    let (seen, upstream) = (bodies.clone(), upstream.to_string());
    let http = reqwest_client();
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method, uri: axum::http::Uri, body: bytes::Bytes| {
            let (seen, upstream, http) = (seen.clone(), upstream.clone(), http.clone());
            async move {
                if uri.path().ends_with("/chat/completions") {
                    seen.lock().unwrap().push(body.clone());
                }
                let resp = http
                    .request(method, format!("{upstream}{uri}"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status();
                let kind = resp
                    .headers()
                    .get("content-type")
                    .cloned()
                    .unwrap_or(axum::http::HeaderValue::from_static("application/json"));
                let bytes = resp.bytes().await.unwrap_or_default();
                (status, [("content-type", kind)], bytes)
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    CountingProxy {
        url: format!("http://{addr}/v1"),
        bodies,
    }
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

/// Prints the run's model and tool calls, and the agent loop's own overhead: from the routed
/// event (stamped by decision) to the proposed plan (stamped by the agent runner) less the
/// model and tool time, per step — the journal writes, policy checks, progress events and the
/// loop itself (and one bus delivery).
fn print_run(r: &baton_proto::GetTaskResponse, plan: &Plan) {
    let run = plan.agent_run.clone().unwrap_or_default();
    let model_ms: u64 = run.model_calls.iter().map(|m| m.latency_ms).sum();
    let tool_ms: u64 = run.tool_calls.iter().map(|t| t.latency_ms).sum();
    let steps = (run.model_calls.len() + run.tool_calls.len()).max(1) as u64;
    let at = |kind: &str| {
        r.events.iter().find_map(|rec| {
            let e = rec.event.as_ref()?;
            let matches = match e.body.as_ref()? {
                Body::TaskRouted(_) => kind == "routed",
                Body::PlanProposed(_) => kind == "proposed",
                _ => false,
            };
            let t = e.time.as_ref()?;
            matches.then(|| t.seconds as i128 * 1000 + i128::from(t.nanos) / 1_000_000)
        })
    };
    if let (Some(routed), Some(proposed)) = (at("routed"), at("proposed")) {
        let agent_ms = (proposed - routed).max(0) as u64;
        let own = agent_ms.saturating_sub(model_ms + tool_ms);
        eprintln!(
            "agent {agent_ms} ms: model {model_ms} ms, tools {tool_ms} ms, loop overhead {own} ms over {steps} steps ({} ms per step)",
            own / steps
        );
    }
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

/// The harness's configuration for the agents on the local model at `url`.
fn on_local_model(c: &mut baton::config::BatonConfig, url: &str, billing: Option<&Billing>) {
    c.agents.dir = agents_dir();
    if let Some(b) = billing {
        c.agents.http_allow_hosts = vec![b.addr.to_string()];
    }
    // Above the longest answer the agent files' schemas allow (cut JSON cannot be parsed).
    c.agents.max_output_tokens = 512;
    c.llm.set_local_url(url.to_string());
    if let Some(local) = c.llm.providers.get_mut("local") {
        // One call on an overloaded machine can take minutes; the agent's wall-time budget
        // is the limit that matters.
        local.timeout = Duration::from_secs(600);
    }
}

/// The cost question, with the billing fixture's URL as a parameter.
async fn ask_about_the_bill(h: &Harness, billing: &Billing) -> String {
    submit(
        h,
        "Why did our cloud bill jump 40% this month?",
        "staging",
        BTreeMap::from([(
            "billing_url".to_string(),
            format!("http://{}/billing", billing.addr),
        )]),
    )
    .await
}

/// Checks the cost agent's run and report: a model agent on the local provider, every tool
/// call decided by policy, the billing data fetched, and a report delivered with the task that
/// names the service that grew (data transfer: 600 → 3350 USD in the fixture).
fn check_cost_report(r: &baton_proto::GetTaskResponse, plan: &Plan) -> baton_proto::report::Report {
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
    assert!(
        run.tool_calls
            .iter()
            .any(|t| t.tool == "http_request" && t.decision == "allowed" && t.ok),
        "the agent fetched the billing data: {:?}",
        run.tool_calls
    );
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
    let text = String::from_utf8_lossy(&artifact.content)
        .to_lowercase()
        .replace('_', " ");
    assert!(
        text.contains("data transfer"),
        "the report names the service that grew (data_transfer): {report:#?}"
    );
    assert!(plan.phases.is_empty(), "a report changes nothing");
    report
}

#[tokio::test]
async fn the_cost_agent_explains_a_bill_on_the_local_model() {
    let Some(llama) = local_model("the_cost_agent_explains_a_bill_on_the_local_model").await else {
        return;
    };
    let billing = billing_fixture(Duration::ZERO).await;
    let h = Harness::start_with(Db::Sqlite, |c| {
        on_local_model(c, &llama.url, Some(&billing))
    })
    .await;
    let task_id = ask_about_the_bill(&h, &billing).await;
    let r = complete(&h, &task_id).await;
    let plan = proposed_plan(&r);
    print_run(&r, &plan);
    check_cost_report(&r, &plan);
    assert_eq!(billing.hits.load(Ordering::SeqCst), 1);
}

/// Exactly once with a real model: the agent runner dies while the cost agent's tool call
/// (the billing fetch, after the first model call) is in flight; a fresh agent runner takes
/// the redelivered task, replays the first model call from the journal, and finishes. The
/// model server received each call once: the proxy in front of it saw no request twice and
/// as many as the run records, and the server's own count of generated tokens equals the
/// run's output tokens.
#[tokio::test]
async fn a_crash_mid_tool_loop_repeats_no_model_call_on_the_local_model() {
    let Some(llama) =
        local_model("a_crash_mid_tool_loop_repeats_no_model_call_on_the_local_model").await
    else {
        return;
    };
    let proxy = counting_proxy(llama.url.trim_end_matches("/v1")).await;
    let billing = billing_fixture(Duration::from_secs(3)).await;
    let mut h = Harness::start_with(Db::Sqlite, |c| {
        on_local_model(c, &proxy.url, Some(&billing))
    })
    .await;
    let task_id = ask_about_the_bill(&h, &billing).await;
    // The first model call is done and journaled; its tool call is in flight.
    tokio::time::timeout(T, billing.first.notified())
        .await
        .expect("the agent calls http_request for the billing data");
    let before_crash = proxy.bodies.lock().unwrap().len();
    h.baton.kill_service(baton::up::ServiceName::AgentRunner);
    eprintln!("{task_id}: agent runner killed after {before_crash} model call(s)");
    assert!(before_crash >= 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.baton
        .start_service(baton::up::ServiceName::AgentRunner)
        .await
        .unwrap();

    let r = complete(&h, &task_id).await;
    let plan = proposed_plan(&r);
    print_run(&r, &plan);
    check_cost_report(&r, &plan);
    let run = plan.agent_run.clone().unwrap();
    let bodies = proxy.bodies.lock().unwrap().clone();
    eprintln!(
        "model server: {} chat requests; billing fixture: {} requests",
        bodies.len(),
        billing.hits.load(Ordering::SeqCst)
    );
    assert!(
        bodies.len() > before_crash,
        "the fresh agent runner went on after the crash"
    );
    for (i, a) in bodies.iter().enumerate() {
        for b in &bodies[..i] {
            assert_ne!(a, b, "the model server received the same request twice");
        }
    }
    assert_eq!(
        bodies.len(),
        run.model_calls.len(),
        "each model call of the run reached the server once"
    );
    let predicted = llama.counter("llamacpp:tokens_predicted_total").await;
    let output: u32 = run.model_calls.iter().map(|m| m.output_tokens).sum();
    assert_eq!(
        predicted,
        f64::from(output),
        "the server generated exactly the run's output tokens"
    );
    // The interrupted tool call ran again (it never completed); the journaled one did not.
    assert_eq!(billing.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
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
    let h = Harness::start_with(Db::Sqlite, |c| on_local_model(c, &llama.url, None)).await;
    let task_id = submit(
        &h,
        "Write a Python function to reverse a string",
        "development",
        BTreeMap::new(),
    )
    .await;
    let r = complete(&h, &task_id).await;
    let plan = proposed_plan(&r);
    print_run(&r, &plan);
    assert_eq!(
        plan.agent_run.as_ref().map(|a| a.agent.as_str()),
        Some("codegen-llm@1")
    );
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
    let tests = plan
        .artifacts
        .iter()
        .find(|a| a.name == "test_solution.py")
        .expect("the tests artifact");
    let tests = String::from_utf8_lossy(&tests.content);
    eprintln!("test_solution.py:\n{tests}");
    assert!(tests.contains("assert"), "tests that can fail: {tests}");
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
