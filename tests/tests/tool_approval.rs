//! Human-in-the-loop per tool call through all six services: an LLM agent (its model a
//! scripted `ChatModel` plug-in) asks for an HTTP PUT from a production task, the tool policy
//! sends it to a human, `ApprovalService` lists it beside plans and an approver approves exactly
//! that call; the agent resumes, the call runs once, and the task completes after its report is
//! approved. The audit log records the wait and the decision.

use baton::config::BatonConfig;
use baton_agent_runner::ModelProvider;
use baton_fleet::{Fleet, FleetSpec, golden_web};
use baton_llm::{
    ChatModel, ChatRequest, ChatResponse, FinishReason, LlmError, Message, Role as ChatRole,
    ToolCallRequest, Usage,
};
use baton_proto::{
    ApproveRequest, Decision, DecisionTier, ListPendingRequest, SubmitTaskRequest, Task, TaskSpec,
    TaskStatus, Trigger,
};
use baton_runtime::auth::Role;
use baton_runtime::plugins::Plugins;
use baton_tests::{Db, Harness};
use futures::future::BoxFuture;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Routes every task to the `cost` agent in production.
struct CostTier;

impl baton_decision::Classifier for CostTier {
    fn name(&self) -> &str {
        "cost-tier"
    }

    fn classify<'a>(
        &'a self,
        task: &'a Task,
    ) -> BoxFuture<'a, Result<baton_decision::Opinion, baton_decision::Error>> {
        let text = task
            .trigger
            .as_ref()
            .map(|t| t.text.clone())
            .unwrap_or_default();
        let d = Decision {
            spec: Some(TaskSpec {
                task_id: task.task_id.clone(),
                task_type: "cost_optimization".into(),
                role: "cost".into(),
                environment: "production".into(),
                intent: text,
                ..Default::default()
            }),
            confidence: 0.99,
            tier: DecisionTier::Classifier as i32,
            matched_by: "cost-tier".into(),
            explanation: "every task is a cost task here".into(),
        };
        Box::pin(std::future::ready(Ok(d.into())))
    }
}

/// A model that answers with the scripted tool calls, in order, and counts its calls.
#[derive(Default)]
struct Scripted {
    calls: Mutex<Vec<(String, serde_json::Value)>>,
    served: Mutex<usize>,
}

impl Scripted {
    fn served(&self) -> usize {
        *self.served.lock().unwrap()
    }
}

impl ChatModel for Scripted {
    fn chat<'a>(
        &'a self,
        _request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        let mut served = self.served.lock().unwrap();
        let (name, arguments) = self.calls.lock().unwrap()[*served].clone();
        *served += 1;
        let response = ChatResponse {
            message: Message {
                role: ChatRole::Assistant,
                content: String::new(),
                tool_calls: vec![ToolCallRequest {
                    id: format!("call-{served}"),
                    name,
                    arguments,
                }],
                tool_call_id: None,
            },
            finish_reason: FinishReason::ToolCalls,
            usage: Usage {
                input_tokens: 10,
                output_tokens: 5,
            },
            provider: "local".into(),
            model: "scripted".into(),
            latency_ms: 1,
            cost_micros: 0,
            fallback_index: 0,
        };
        Box::pin(std::future::ready(Ok(response)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_tool_call_waits_for_a_human_then_runs_once_and_the_task_completes() {
    let fake = Arc::new(Scripted::default());
    let fleet = Fleet::start(FleetSpec {
        count: 1,
        drifted: vec![0],
        ..FleetSpec::demo_web()
    })
    .await
    .unwrap();
    let url = fleet.servers[0].url();
    let put = json!({
        "method": "PUT",
        "url": format!("{url}/config"),
        "body": json!({"config": golden_web()}).to_string(),
    });
    *fake.calls.lock().unwrap() = vec![
        ("http_request".into(), put.clone()),
        (
            "final_answer".into(),
            json!({"answer": "web-01 reconfigured", "findings": ["drifted"], "recommendations": []}),
        ),
    ];
    let agents = tempfile::tempdir().unwrap();
    std::fs::write(
        agents.path().join("cost.toml"),
        "role = \"cost\"\ndescription = \"explains spend\"\noutput = \"report\"\nmodels = [\"local\"]\ntools = [\"http_request\"]\nprompt = \"You are the {{role}} agent.\"\n",
    )
    .unwrap();
    let plugins = Plugins::new()
        .with(baton_decision::TierFactory::new("cost-tier", |_| {
            Ok(Arc::new(CostTier) as Arc<dyn baton_decision::Classifier>)
        }))
        .with(ModelProvider::new("local", fake.clone()));
    let dir = agents.path().to_path_buf();
    let host = url.trim_start_matches("http://").to_string();
    let h = Harness::start_with_plugins(
        Db::Sqlite,
        move |c: &mut BatonConfig| {
            c.agents.dir = dir;
            c.agents.http_allow_hosts = vec![host];
        },
        plugins,
    )
    .await;

    let mut c = h.clients("alice", &[Role::Submitter]).await;
    let task_id = c
        .triggers
        .submit_task(SubmitTaskRequest {
            trigger: Some(Trigger {
                text: "put the golden configuration on web-01".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .task_id;

    let mut approver = h.clients("bob", &[Role::Approver]).await;
    let deadline = tokio::time::Instant::now() + T;
    let pending = loop {
        let listed = approver
            .approvals
            .list_pending(ListPendingRequest {})
            .await
            .unwrap()
            .into_inner();
        if let Some(p) = listed.tool_calls.into_iter().find(|p| p.task_id == task_id) {
            break p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tool call was never listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((pending.tool.as_str(), pending.step), ("http_request", 2));
    assert_eq!(
        pending.arguments_hash,
        baton_runtime::tool_approvals::arguments_hash(&put)
    );
    assert_eq!(fleet.servers[0].applies(), 0);

    // A wrong hash is refused; the hash shown approves exactly the call.
    let err = approver
        .approvals
        .approve(ApproveRequest {
            task_id: task_id.clone(),
            step: pending.step,
            arguments_hash: "0".repeat(64),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    approver
        .approvals
        .approve(ApproveRequest {
            task_id: task_id.clone(),
            step: pending.step,
            arguments_hash: pending.arguments_hash.clone(),
            reason: "change window open".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // The report of a model-backed agent in production waits for an approver too.
    h.wait_for(&task_id, TaskStatus::AwaitingApproval, T).await;
    assert_eq!(fleet.servers[0].applies(), 1);
    assert_eq!(fake.served(), 2, "no model call repeated");
    approver
        .approvals
        .approve(ApproveRequest {
            task_id: task_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let done = h.wait_for(&task_id, TaskStatus::Completed, T).await;
    let kinds: Vec<String> = done
        .events
        .iter()
        .filter_map(|r| r.event.as_ref())
        .map(|e| baton_proto::event_kind(e).to_string())
        .collect();
    assert!(
        kinds.contains(&"tool_call_awaiting_approval".to_string())
            && kinds.contains(&"tool_call_decided".to_string()),
        "{kinds:?}"
    );
    assert_eq!(fleet.servers[0].applies(), 1);
}
