//! The Anthropic Messages provider against the fake Messages server on loopback.

use baton_llm::testing::{FakeServer, anthropic};
use baton_llm::{
    AnthropicProvider, ApiKey, ChatModel, ChatRequest, FailoverChain, FinishReason, LlmError,
    Message, ProviderLimits, ProviderSettings, ResponseSchema, Role, StreamEvent, ToolCallRequest,
    ToolChoice, ToolDefinition,
};
use serde_json::json;
use std::sync::Mutex;

fn provider(fake: &FakeServer) -> AnthropicProvider {
    AnthropicProvider::new(
        ProviderSettings::new("claude", fake.base_url(), "claude-test")
            .with_api_key(ApiKey::new("sk-ant-test")),
    )
    .unwrap()
}

fn ask(text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![
            Message::text(Role::System, "you are terse"),
            Message::text(Role::User, text),
        ],
        ..Default::default()
    }
}

fn tool() -> ToolDefinition {
    ToolDefinition {
        name: "get_asset_config".into(),
        description: "config of an asset".into(),
        parameters: json!({"type": "object", "properties": {"asset": {"type": "string"}}}),
    }
}

#[tokio::test]
async fn a_plain_message_carries_system_max_tokens_version_and_key() {
    let fake = FakeServer::anthropic().await;
    fake.require_api_key("sk-ant-test");
    fake.push(anthropic::text("hello"));
    let resp = provider(&fake).chat(&ask("hi")).await.unwrap();
    assert_eq!(resp.message.content, "hello");
    assert_eq!(resp.finish_reason, FinishReason::Stop);
    assert_eq!((resp.usage.input_tokens, resp.usage.output_tokens), (12, 6));
    assert_eq!(
        (resp.provider.as_str(), resp.model.as_str()),
        ("claude", "claude-fake")
    );
    let sent = &fake.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.headers["x-api-key"], "sk-ant-test");
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    assert!(!sent.headers.contains_key("authorization"));
    assert_eq!(sent.body["system"], "you are terse");
    assert_eq!(sent.body["max_tokens"], 1024);
    assert_eq!(
        sent.body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    );
}

#[tokio::test]
async fn tool_use_round_trips_and_tool_results_are_user_turns() {
    let fake = FakeServer::anthropic().await;
    fake.push(anthropic::tool_use(
        "get_asset_config",
        json!({"asset": "web-1"}),
    ));
    let mut req = ask("config of web-1?");
    req.tools = vec![tool()];
    req.tool_choice = ToolChoice::Required;
    let resp = provider(&fake).chat(&req).await.unwrap();
    assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
    assert_eq!(resp.message.content, "Let me look.");
    assert_eq!(
        resp.message.tool_calls,
        vec![ToolCallRequest {
            id: "toolu_1".into(),
            name: "get_asset_config".into(),
            arguments: json!({"asset": "web-1"}),
        }]
    );
    let body = &fake.requests()[0].body;
    assert_eq!(body["tool_choice"], json!({"type": "any"}));
    assert_eq!(
        body["tools"][0],
        json!({"name": "get_asset_config", "description": "config of an asset",
               "input_schema": {"type": "object", "properties": {"asset": {"type": "string"}}}})
    );

    // The next turn: the assistant's tool use and its result, accepted by the strict fake.
    fake.push(anthropic::text("web-1 runs nginx"));
    req.messages.push(resp.message.clone());
    req.messages
        .push(Message::tool_result("toolu_1", r#"{"pkg": "nginx"}"#));
    req.tool_choice = ToolChoice::Auto;
    let resp = provider(&fake).chat(&req).await.unwrap();
    assert_eq!(resp.message.content, "web-1 runs nginx");
    let msgs = &fake.requests()[1].body["messages"];
    assert_eq!(msgs[1]["role"], "assistant");
    assert_eq!(
        msgs[1]["content"][1],
        json!({"type": "tool_use", "id": "toolu_1", "name": "get_asset_config",
               "input": {"asset": "web-1"}})
    );
    assert_eq!(
        msgs[2],
        json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
               "content": "{\"pkg\": \"nginx\"}"}]})
    );
}

#[tokio::test]
async fn the_fake_rejects_a_tool_result_without_its_tool_use() {
    let fake = FakeServer::anthropic().await;
    let mut req = ask("x");
    req.messages.push(Message::tool_result("toolu_9", "{}"));
    let err = provider(&fake).chat(&req).await.unwrap_err();
    assert!(
        matches!(&err, LlmError::Http { status: 400, body } if body.contains("tool_use")),
        "{err}"
    );
}

#[tokio::test]
async fn a_schema_becomes_an_instruction_and_refusals_and_overload_map() {
    let fake = FakeServer::anthropic().await;
    fake.push(anthropic::text("{}"));
    let mut req = ask("x");
    req.response_schema = Some(ResponseSchema {
        name: "report".into(),
        schema: json!({"type": "object", "required": ["answer"]}),
    });
    provider(&fake).chat(&req).await.unwrap();
    let system = fake.requests()[0].body["system"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(system.starts_with("you are terse"));
    assert!(
        system.contains(r#"{"required":["answer"],"type":"object"}"#),
        "{system}"
    );

    fake.push(anthropic::refusal());
    assert_eq!(
        provider(&fake).chat(&ask("x")).await.unwrap().finish_reason,
        FinishReason::Refusal
    );
    fake.push(anthropic::error(529, "Overloaded"));
    let err = provider(&fake).chat(&ask("x")).await.unwrap_err();
    assert!(matches!(err, LlmError::Http { status: 529, .. }));
    assert!(err.is_retryable());
    fake.push(anthropic::error(429, "rate").retry_after(3));
    assert_eq!(
        provider(&fake).chat(&ask("x")).await.unwrap_err(),
        LlmError::RateLimited {
            retry_after_ms: Some(3000)
        }
    );
}

#[tokio::test]
async fn a_streamed_message_reports_text_and_folds_tool_input() {
    let fake = FakeServer::anthropic().await;
    fake.push(anthropic::stream_text(&["Hi", " there"]));
    let seen = Mutex::new(Vec::new());
    let progress = |e: StreamEvent| seen.lock().unwrap().push(e);
    let resp = provider(&fake)
        .chat_streaming(&ask("x"), &progress)
        .await
        .unwrap();
    assert_eq!(resp.message.content, "Hi there");
    assert_eq!((resp.usage.input_tokens, resp.usage.output_tokens), (12, 2));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            StreamEvent::TextDelta("Hi".into()),
            StreamEvent::TextDelta(" there".into()),
            StreamEvent::Tokens(2)
        ]
    );
    assert_eq!(fake.requests()[0].body["stream"], true);

    fake.push(anthropic::stream_tool_use(
        "get_asset_config",
        json!({"asset": "db-2"}),
    ));
    let mut req = ask("x");
    req.tools = vec![tool()];
    let resp = provider(&fake).chat_streaming(&req, &|_| {}).await.unwrap();
    assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
    assert_eq!(
        resp.message.tool_calls[0].arguments,
        json!({"asset": "db-2"})
    );
}

#[tokio::test]
async fn a_chain_fails_over_from_an_overloaded_anthropic_to_the_next() {
    let (a, b) = (FakeServer::anthropic().await, FakeServer::anthropic().await);
    a.push(anthropic::error(529, "Overloaded"));
    b.push(anthropic::text("from b"));
    let limits = ProviderLimits {
        retries: 0,
        ..Default::default()
    };
    let chain = FailoverChain::new()
        .with("a", provider(&a), limits.clone())
        .with("b", provider(&b), limits);
    let resp = chain.chat(&ask("x")).await.unwrap();
    assert_eq!(
        (resp.message.content.as_str(), resp.fallback_index),
        ("from b", 1)
    );
}
