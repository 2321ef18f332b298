//! The LLM agent's tool loop against baton-llm's protocol-faithful fake OpenAI server on
//! loopback, with scripted answers: an allowed call, a call the tool policy denies, budgets, the
//! loop breaker, schema repair, output truncation, and exactly-once replay from the journal on
//! a real nats-server.

use baton_agent_runner::llm_agent::{LlmAgent, ModelProvider, Shared};
use baton_agent_runner::spec::{self, Engine};
use baton_agent_runner::tool_policy::ToolPolicy;
use baton_agent_runner::{Agent, AgentError, Config, ToolRegistry};
use baton_bus::testing::TestNats;
use baton_llm::testing::{FakeReply, FakeServer, openai};
use baton_llm::{OpenAiProvider, ProviderSettings};
use baton_proto::{Plan, Task, TaskSpec, Trigger};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

const INVENTORY: &str = r#"
[groups.web]
kind = "web_server"
golden = { tls_min_version = "1.2" }

[[assets]]
id = "web-01"
group = "web"
environment = "production"
address = "http://127.0.0.1:1"

[[assets]]
id = "web-02"
group = "web"
environment = "production"
address = "http://127.0.0.1:1"
"#;

/// An agent file for role `cost` offering `tools`, with `budget` TOML appended.
fn agent_file(tools: &str, budget: &str) -> String {
    format!(
        "role = \"cost\"\ndescription = \"explains spend\"\noutput = \"report\"\nmodels = [\"local\"]\ntools = [{tools}]\nprompt = \"You are the {{{{role}}}} agent in {{{{environment}}}}.\"\n{budget}\n"
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    work_dir: std::path::PathBuf,
    agent: LlmAgent,
}

fn setup(fake: &FakeServer, file: &str, bus: Option<baton_bus::Bus>, output_limit: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("inventory.toml");
    // Two assets, and ten more so a query's output outgrows a small output limit.
    let mut text = INVENTORY.to_string();
    for i in 3..13 {
        text.push_str(&format!(
            "\n[[assets]]\nid = \"web-{i:02}\"\ngroup = \"web\"\nenvironment = \"staging\"\naddress = \"http://127.0.0.1:1\"\n"
        ));
    }
    std::fs::write(&inventory, text).unwrap();
    let config = Config {
        inventory_path: inventory,
        work_dir: dir.path().join("work"),
        ..Default::default()
    };
    let tools = ToolRegistry::build(&config, &[]).unwrap();
    let spec = spec::parse(
        Path::new("agents/cost.toml"),
        file,
        &tools.names(),
        &["drift-runbook".to_string()],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let Engine::Model(model) = spec.engine.clone() else {
        panic!("a model agent")
    };
    let provider = OpenAiProvider::new(ProviderSettings::new(
        "local",
        fake.base_url(),
        "qwen2.5-coder-0.5b",
    ))
    .unwrap();
    let providers = [ModelProvider::new("local", Arc::new(provider))];
    let shared = Shared {
        tools,
        policy: ToolPolicy::builtin().unwrap(),
        bus,
        work_dir: config.work_dir.clone(),
        tool_output_limit: output_limit,
        max_output_tokens: 512,
        progress: baton_agent_runner::progress::ProgressPublisher::disabled(),
        tool_approval_timeout: std::time::Duration::from_secs(3600),
        daily_budget: Default::default(),
    };
    Setup {
        work_dir: config.work_dir.clone(),
        _dir: dir,
        agent: LlmAgent::new(&spec, model, &providers, None, shared),
    }
}

fn task(id: &str) -> (Task, TaskSpec) {
    let text = "Why did our cloud bill jump 40% this month?";
    (
        Task {
            task_id: id.into(),
            tenant: "acme".into(),
            submitted_by: "alice".into(),
            trigger: Some(Trigger {
                text: text.into(),
                ..Default::default()
            }),
            received_at: None,
        },
        TaskSpec {
            task_id: id.into(),
            task_type: "cost_optimization".into(),
            role: "cost".into(),
            environment: "production".into(),
            intent: text.into(),
            ..Default::default()
        },
    )
}

fn report() -> Value {
    json!({
        "answer": "storage grew",
        "findings": ["storage +120%"],
        "recommendations": ["delete old snapshots"]
    })
}

async fn plan(s: &Setup, id: &str) -> Result<Plan, AgentError> {
    let (t, sp) = task(id);
    s.agent.plan(&t, &sp).await
}

/// The tool messages the model was sent in request `i` (their contents).
fn tool_messages(fake: &FakeServer, i: usize) -> Vec<String> {
    fake.requests()[i].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn an_allowed_call_a_denied_call_and_a_final_report() {
    let fake = FakeServer::openai().await;
    fake.push_all([
        openai::tool_call("query_assets", json!({"group": "web"})),
        openai::tool_call(
            "run_code",
            json!({"language": "python", "files": {"a.py": "print(1)"}, "command": ["python3", "a.py"]}),
        ),
        openai::tool_call("final_answer", report()),
    ]);
    let s = setup(
        &fake,
        &agent_file("\"query_assets\", \"run_code\"", ""),
        None,
        16 * 1024,
    );
    let plan = plan(&s, "t-allowed").await.unwrap();
    assert!(plan.phases.is_empty());
    assert_eq!(plan.summary, "storage grew");
    let artifact = &plan.artifacts[0];
    assert_eq!(
        (artifact.name.as_str(), artifact.media_type.as_str()),
        ("report", "application/json")
    );
    let content: Value = serde_json::from_slice(&artifact.content).unwrap();
    assert_eq!(content, report());

    let run = plan.agent_run.unwrap();
    assert_eq!(run.model_calls.len(), 3);
    assert_eq!(run.model_calls[0].provider, "local");
    assert_eq!(run.tool_calls.len(), 2);
    let (q, r) = (&run.tool_calls[0], &run.tool_calls[1]);
    assert_eq!(
        (q.tool.as_str(), q.decision.as_str(), q.ok),
        ("query_assets", "allowed", true)
    );
    assert!(
        q.result.contains("web-01") && q.result.contains("web-02"),
        "{}",
        q.result
    );
    assert_eq!((q.step, r.step), (2, 4));
    assert_eq!(
        (r.tool.as_str(), r.decision.as_str(), r.ok),
        ("run_code", "denied", false)
    );
    assert!(
        r.reason.contains("may not call tool run_code"),
        "{}",
        r.reason
    );

    // What the model read: the query's result, then the policy's reason as a tool error.
    let seen = tool_messages(&fake, 2);
    assert!(seen[0].contains("web-01"), "{seen:?}");
    assert!(
        seen[1].starts_with("error: denied by the tool policy"),
        "{seen:?}"
    );
    // Every request forced a tool call and offered final_answer with the report schema.
    let first = &fake.requests()[0].body;
    assert_eq!(first["tool_choice"], "required");
    let names: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["query_assets", "run_code", "final_answer"]);
}

#[tokio::test]
async fn a_budget_overrun_fails_naming_the_budget() {
    let fake = FakeServer::openai().await;
    fake.push_all([
        openai::tool_call("query_assets", json!({"group": "web"})),
        openai::tool_call("query_assets", json!({"environment": "production"})),
        openai::tool_call("final_answer", report()),
    ]);
    let s = setup(
        &fake,
        &agent_file("\"query_assets\"", "[budget]\nsteps = 3\n"),
        None,
        16 * 1024,
    );
    let e = plan(&s, "t-budget").await.unwrap_err();
    let AgentError::Permanent(reason) = e else {
        panic!("a permanent failure")
    };
    assert!(
        reason.contains("step budget (3 model and tool calls)"),
        "{reason}"
    );
    // Two model calls, one tool call: the third step was a model call; the fourth never ran.
    assert_eq!(fake.request_count(), 2);

    let fake = FakeServer::openai().await;
    fake.push(openai::tool_call("query_assets", json!({})));
    let s = setup(
        &fake,
        &agent_file("\"query_assets\"", "[budget]\ntokens = 10\n"),
        None,
        16 * 1024,
    );
    let AgentError::Permanent(reason) = plan(&s, "t-tokens").await.unwrap_err() else {
        panic!("permanent")
    };
    assert!(
        reason.contains("token budget (10 tokens; used 15)"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_repeated_call_is_refused_then_the_loop_breaker_stops_the_agent() {
    let fake = FakeServer::openai().await;
    for _ in 0..3 {
        fake.push(openai::tool_call("query_assets", json!({"group": "web"})));
    }
    let s = setup(&fake, &agent_file("\"query_assets\"", ""), None, 16 * 1024);
    let AgentError::Permanent(reason) = plan(&s, "t-loop").await.unwrap_err() else {
        panic!("permanent")
    };
    assert!(reason.contains("loop breaker"), "{reason}");
    let seen = tool_messages(&fake, 2);
    assert!(seen[1].contains("repeated call"), "{seen:?}");
}

#[tokio::test]
async fn a_bad_final_answer_is_repaired_once_then_fails_with_both_errors() {
    let fake = FakeServer::openai().await;
    fake.push_all([
        openai::tool_call("final_answer", json!({"answer": "x"})),
        openai::tool_call("final_answer", report()),
    ]);
    let s = setup(&fake, &agent_file("\"query_assets\"", ""), None, 16 * 1024);
    let plan1 = plan(&s, "t-repair").await.unwrap();
    assert_eq!(plan1.summary, "storage grew");
    let calls = plan1.agent_run.unwrap().model_calls;
    assert_eq!(calls[0].outcome(), baton_proto::ModelCallOutcome::Invalid);
    assert!(calls[0].error.contains("findings"), "{}", calls[0].error);
    assert_eq!(calls[1].outcome(), baton_proto::ModelCallOutcome::Ok);
    assert!(tool_messages(&fake, 1)[0].contains("missing required field \"findings\""));

    let fake = FakeServer::openai().await;
    fake.push_all([
        openai::tool_call("final_answer", json!({"answer": "x"})),
        openai::tool_call(
            "final_answer",
            json!({"answer": 3, "findings": [], "recommendations": []}),
        ),
    ]);
    let s = setup(&fake, &agent_file("\"query_assets\"", ""), None, 16 * 1024);
    let AgentError::Permanent(reason) = plan(&s, "t-repair2").await.unwrap_err() else {
        panic!("permanent")
    };
    assert!(
        reason.contains("missing required field \"findings\"")
            && reason.contains("/answer: expected string"),
        "{reason}"
    );
}

#[tokio::test]
async fn large_tool_output_is_cut_for_the_model_and_kept_whole_as_an_artifact() {
    let fake = FakeServer::openai().await;
    fake.push_all([
        openai::tool_call("query_assets", json!({})),
        openai::tool_call("final_answer", report()),
    ]);
    let s = setup(&fake, &agent_file("\"query_assets\"", ""), None, 256);
    let plan = plan(&s, "t-cut").await.unwrap();
    let whole = plan
        .artifacts
        .iter()
        .find(|a| a.name == "tool-output-2")
        .expect("the whole output as an artifact");
    let whole = String::from_utf8(whole.content.clone()).unwrap();
    assert!(whole.len() > 256 && whole.contains("web-12"));
    let seen = &tool_messages(&fake, 1)[0];
    assert!(seen.contains("[output truncated: 256 of"), "{seen}");
    assert!(seen.contains("artifact tool-output-2"), "{seen}");
    assert!(plan.agent_run.unwrap().tool_calls[0].truncated);
}

#[tokio::test]
async fn file_tools_stay_in_the_task_work_directory() {
    let fake = FakeServer::openai().await;
    fake.push_all([
        openai::tool_call(
            "write_file",
            json!({"path": "notes/a.txt", "content": "hello"}),
        ),
        openai::tool_call("read_file", json!({"path": "../other/secret"})),
        openai::tool_call("final_answer", report()),
    ]);
    let s = setup(
        &fake,
        &agent_file("\"write_file\", \"read_file\"", ""),
        None,
        16 * 1024,
    );
    let plan = plan(&s, "t-files").await.unwrap();
    assert_eq!(
        std::fs::read_to_string(s.work_dir.join("t-files/notes/a.txt")).unwrap(),
        "hello"
    );
    let calls = plan.agent_run.unwrap().tool_calls;
    assert!(calls[0].ok);
    assert!(
        !calls[1].ok && calls[1].reason.contains("`..` is not allowed"),
        "{:?}",
        calls[1]
    );
}

#[tokio::test]
async fn a_redelivered_task_replays_completed_calls_from_the_journal() {
    let nats = TestNats::start().await;
    let fake = FakeServer::openai().await;
    // First run: a tool call, then the model server fails (as if the runner died there).
    fake.push_all([
        openai::tool_call("query_assets", json!({"group": "web"})),
        FakeReply::error(503, "overloaded"),
    ]);
    let s = setup(
        &fake,
        &agent_file("\"query_assets\"", ""),
        Some(nats.bus.clone()),
        16 * 1024,
    );
    let e = plan(&s, "t-journal").await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(fake.request_count(), 2);

    // The redelivery: the first model call and the tool call come from the journal, only the
    // failed call is made again.
    fake.push(openai::tool_call("final_answer", report()));
    let plan = plan(&s, "t-journal").await.unwrap();
    assert_eq!(fake.request_count(), 3, "no completed call is repeated");
    let run = plan.agent_run.unwrap();
    assert_eq!(run.model_calls.len(), 2);
    assert_eq!(run.tool_calls.len(), 1);
    assert!(run.tool_calls[0].result.contains("web-01"));
    // The request after the failure carries the journaled tool result.
    assert!(tool_messages(&fake, 2)[0].contains("web-01"));

    // A third run (another redelivery after the plan was made) calls nothing at all and makes
    // the same plan.
    let again = plan_again(&s).await;
    assert_eq!(fake.request_count(), 3);
    assert_eq!(again.summary, "storage grew");
}

async fn plan_again(s: &Setup) -> Plan {
    plan(s, "t-journal").await.unwrap()
}

/// `tool_choice = "schema"`: no tools on the wire; the prompt lists them as sketches and each
/// turn's answer is constrained by `response_format` json_schema to one call, which the loop
/// reads from the content like any call (checked, policy-decided, recorded).
#[tokio::test]
async fn schema_mode_lists_tools_in_the_prompt_and_forces_one_call_per_turn() {
    let fake = FakeServer::openai().await;
    fake.push_all([
        openai::text(&json!({"name": "query_assets", "arguments": {"group": "web"}}).to_string()),
        // A model may go on after its call: the first JSON value is the call.
        openai::text(&format!(
            "{} {}",
            json!({"name": "final_answer", "arguments": report()}),
            json!({"name": "query_assets", "arguments": {}})
        )),
    ]);
    let file = agent_file("\"query_assets\"", "").replace(
        "output = \"report\"",
        "output = \"report\"\ntool_choice = \"schema\"",
    );
    let s = setup(&fake, &file, None, 16 * 1024);
    let plan = plan(&s, "t-schema").await.unwrap();
    assert_eq!(plan.summary, "storage grew");
    let run = plan.agent_run.unwrap();
    assert_eq!(run.model_calls.len(), 2);
    assert_eq!(
        run.tool_calls
            .iter()
            .map(|t| (t.tool.as_str(), t.decision.as_str(), t.ok))
            .collect::<Vec<_>>(),
        [("query_assets", "allowed", true)]
    );
    let first = &fake.requests()[0].body;
    assert!(first.get("tools").is_none(), "{first}");
    assert!(first.get("tool_choice").is_none(), "{first}");
    let schema = &first["response_format"]["json_schema"]["schema"];
    let names: Vec<&str> = schema["anyOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["properties"]["name"]["const"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["query_assets", "final_answer"]);
    let system = first["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.contains(r#"- query_assets: List assets"#)
            && system.contains(r#"Arguments: {"environment"?: "...", "group"?: "..."}"#)
            && system.contains(
                r#"- final_answer: Give your final report (ends the task). The arguments are the answer itself. Arguments: {"answer": "...", "findings": ["...", ...], "recommendations": ["...", ...]}"#
            ),
        "{system}"
    );
}
