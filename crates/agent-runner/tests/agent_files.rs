//! Agents declared in files: the repository's twelve load at start and are listed with what
//! they declare; a bad file stops the start with its file, line and problem.

use baton_agent_runner::{AgentRunner, Config, Error};
use baton_bus::testing::TestNats;
use baton_proto::AgentKind;
use baton_runtime::Context;
use baton_runtime::auth::{AuthConfig, Authenticator};
use baton_runtime::metrics::Metrics;
use std::path::PathBuf;
use std::sync::Arc;

fn context(bus: baton_bus::Bus) -> Context {
    let auth = Authenticator::new(&AuthConfig {
        hs256_secret: "x".repeat(32),
        ..Default::default()
    })
    .unwrap();
    Context::new(bus, auth, Arc::new(Metrics::default()))
}

fn repo_agents() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../agents")
}

#[tokio::test]
async fn the_shipped_agent_files_register_one_agent_per_role() {
    let nats = TestNats::start().await;
    let config = Config {
        dir: repo_agents(),
        ..Default::default()
    };
    let runner = AgentRunner::new(context(nats.bus.clone()), config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let agents = runner.describe_agents();
    let roles: Vec<&str> = agents.iter().map(|a| a.role.as_str()).collect();
    assert_eq!(
        roles,
        [
            "adapter",
            "assistant",
            "codegen",
            "compliance",
            "cost",
            "dr",
            "drift",
            "image",
            "incident",
            "patch",
            "security",
            "sop"
        ]
    );
    let drift = agents.iter().find(|a| a.role == "drift").unwrap();
    assert_eq!(drift.name, "drift-runbook@1");
    assert_eq!(drift.kind(), AgentKind::Runbook);
    assert!(drift.file.ends_with("drift.toml"));
    let cost = agents.iter().find(|a| a.role == "cost").unwrap();
    assert_eq!(cost.name, "cost-llm@1");
    assert_eq!(cost.kind(), AgentKind::Llm);
    assert_eq!(cost.models, ["local"]);
    assert_eq!(cost.output, "report");
    assert_eq!(cost.max_steps, 8);
    assert!(cost.tools.contains(&"http_request".to_string()));

    let tools: Vec<(String, bool)> = runner
        .describe_tools()
        .into_iter()
        .map(|t| {
            let schema: serde_json::Value = serde_json::from_str(&t.parameters_schema).unwrap();
            assert_eq!(schema["type"], "object", "{}", t.name);
            (t.name, t.side_effects)
        })
        .collect();
    assert_eq!(
        tools,
        [
            ("get_asset_config".to_string(), false),
            ("get_golden_config".to_string(), false),
            ("http_request".to_string(), true),
            ("query_assets".to_string(), false),
            ("read_file".to_string(), false),
            ("run_code".to_string(), false),
            ("write_file".to_string(), true),
        ]
    );
}

#[tokio::test]
async fn a_bad_agent_file_is_refused_at_start_with_its_file_and_line() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cost.toml"),
        "role = \"cost\"\ndescription = \"d\"\nmodels = [\"local\"]\ntools = [\"query_assets\", \"launch_missiles\"]\noutput = \"report\"\nprompt = \"p\"\n",
    )
    .unwrap();
    let config = Config {
        dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let Err(e) = AgentRunner::new(context(nats.bus.clone()), config).await else {
        panic!("a bad agent file must stop the start")
    };
    assert!(matches!(e, Error::AgentFile(_)), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("cost.toml:4: unknown tool \"launch_missiles\""),
        "{text}"
    );
    assert_eq!(
        tonic::Status::from(e).code(),
        tonic::Code::FailedPrecondition
    );
}
