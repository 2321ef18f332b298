//! The OpenAI-compatible provider against the fake chat completions server on loopback: what
//! goes over the wire, how answers, tool calls, streams and errors come back.

use baton_llm::testing::{FakeReply, FakeServer, openai};
use baton_llm::{
    ApiKey, ChatModel, ChatRequest, FinishReason, LlmError, Message, OpenAiProvider, Price,
    ProviderSettings, ResponseSchema, Role, StreamEvent, ToolCallRequest, ToolChoice,
    ToolDefinition,
};
use serde_json::json;
use std::sync::Mutex;
use std::time::Duration;

fn provider(fake: &FakeServer) -> OpenAiProvider {
    OpenAiProvider::new(ProviderSettings::new("fake", fake.base_url(), "gpt-test")).unwrap()
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

fn query_assets() -> ToolDefinition {
    ToolDefinition {
        name: "query_assets".into(),
        description: "find assets".into(),
        parameters: json!({"type": "object", "properties": {"env": {"type": "string"}}}),
    }
}

#[tokio::test]
async fn a_plain_chat_sends_model_and_messages_and_reads_text_usage_and_cost() {
    let fake = FakeServer::openai().await;
    fake.push(openai::text("hello"));
    let model = OpenAiProvider::new(
        ProviderSettings::new("fake", fake.base_url(), "gpt-test").with_price(Price {
            input_per_million: 2.0,
            output_per_million: 10.0,
        }),
    )
    .unwrap();
    let resp = model.chat(&ask("hi")).await.unwrap();
    assert_eq!(resp.message.role, Role::Assistant);
    assert_eq!(resp.message.content, "hello");
    assert_eq!(resp.finish_reason, FinishReason::Stop);
    assert_eq!((resp.usage.input_tokens, resp.usage.output_tokens), (10, 5));
    assert_eq!(resp.provider, "fake");
    assert_eq!(resp.model, "fake-model");
    // 10 × $2/M + 5 × $10/M = 70 micro-dollars.
    assert_eq!(resp.cost_micros, 70);
    let sent = &fake.requests()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.body["model"], "gpt-test");
    assert_eq!(sent.body["stream"], false);
    assert_eq!(
        sent.body["messages"][0],
        json!({"role": "system", "content": "you are terse"})
    );
    assert_eq!(
        sent.body["messages"][1],
        json!({"role": "user", "content": "hi"})
    );
    assert!(sent.body.get("tools").is_none());
    assert!(sent.body.get("response_format").is_none());
    assert!(!sent.headers.contains_key("authorization"));
}

#[tokio::test]
async fn tools_tool_choice_and_a_schema_go_over_the_wire_as_openai_defines_them() {
    let fake = FakeServer::openai().await;
    fake.push(openai::tool_call("query_assets", json!({"env": "prod"})));
    let mut req = ask("which hosts?");
    req.tools = vec![query_assets()];
    req.tool_choice = ToolChoice::Tool("query_assets".into());
    req.response_schema = Some(ResponseSchema {
        name: "answer".into(),
        schema: json!({"type": "object"}),
    });
    req.max_tokens = Some(64);
    req.temperature = Some(0.0);
    let resp = provider(&fake).chat(&req).await.unwrap();
    assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
    assert_eq!(
        resp.message.tool_calls,
        vec![ToolCallRequest {
            id: "call_1".into(),
            name: "query_assets".into(),
            arguments: json!({"env": "prod"}),
        }]
    );
    let body = &fake.requests()[0].body;
    assert_eq!(
        body["tools"][0],
        json!({"type": "function", "function": {"name": "query_assets",
            "description": "find assets",
            "parameters": {"type": "object", "properties": {"env": {"type": "string"}}}}})
    );
    assert_eq!(
        body["tool_choice"],
        json!({"type": "function", "function": {"name": "query_assets"}})
    );
    assert_eq!(
        body["response_format"],
        json!({"type": "json_schema",
               "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": true}})
    );
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["temperature"], 0.0);
}

#[tokio::test]
async fn a_tool_call_sent_as_bare_json_in_content_becomes_a_tool_call() {
    let fake = FakeServer::openai().await;
    fake.push(openai::bare_tool_call(
        "query_assets",
        json!({"env": "staging"}),
    ));
    let mut req = ask("which hosts?");
    req.tools = vec![query_assets()];
    let resp = provider(&fake).chat(&req).await.unwrap();
    assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
    assert_eq!(resp.message.content, "");
    assert_eq!(resp.message.tool_calls.len(), 1);
    assert_eq!(resp.message.tool_calls[0].name, "query_assets");
    assert_eq!(
        resp.message.tool_calls[0].arguments,
        json!({"env": "staging"})
    );
    // Without tools offered the same text is just text.
    fake.push(openai::bare_tool_call("query_assets", json!({})));
    let resp = provider(&fake).chat(&ask("x")).await.unwrap();
    assert!(resp.message.tool_calls.is_empty());
    assert!(resp.message.content.contains("query_assets"));
}

#[tokio::test]
async fn a_conversation_with_a_tool_turn_is_accepted_by_a_server_that_rejects_null_content() {
    let fake = FakeServer::openai().await;
    fake.push(openai::text("done"));
    let mut req = ask("which hosts?");
    req.tools = vec![query_assets()];
    req.messages.push(Message {
        role: Role::Assistant,
        content: String::new(),
        tool_calls: vec![ToolCallRequest {
            id: "call_1".into(),
            name: "query_assets".into(),
            arguments: json!({"env": "prod"}),
        }],
        tool_call_id: None,
    });
    req.messages
        .push(Message::tool_result("call_1", r#"["web-1"]"#));
    let resp = provider(&fake).chat(&req).await.unwrap();
    assert_eq!(resp.message.content, "done");
    let sent = &fake.requests()[0].body["messages"];
    assert_eq!(sent[2]["content"], "");
    assert_eq!(
        sent[2]["tool_calls"][0]["function"]["arguments"],
        r#"{"env":"prod"}"#
    );
    assert_eq!(
        sent[3],
        json!({"role": "tool", "content": "[\"web-1\"]", "tool_call_id": "call_1"})
    );
}

#[tokio::test]
async fn the_fake_rejects_a_null_content_next_to_tool_calls_as_llama_cpp_does() {
    // The fake's check is what the provider's "" is for: prove the fake would catch a null.
    let fake = FakeServer::openai().await;
    fake.push(openai::text("never served"));
    let client = baton_runtime::tls::http_client().build().unwrap();
    let resp = client
        .post(format!("{}/chat/completions", fake.base_url()))
        .body(
            json!({"model": "m", "messages": [{"role": "assistant", "content": null,
                "tool_calls": [{"id": "c", "type": "function",
                "function": {"name": "t", "arguments": "{}"}}]}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 500);
    assert_eq!(fake.pending_replies(), 1);
}

#[tokio::test]
async fn http_errors_map_to_their_kinds() {
    let fake = FakeServer::openai().await;
    fake.push(FakeReply::error(429, "slow down").retry_after(2));
    fake.push(FakeReply::error(503, "overloaded"));
    fake.push(FakeReply::error(400, "bad request"));
    let model = provider(&fake);
    assert_eq!(
        model.chat(&ask("a")).await.unwrap_err(),
        LlmError::RateLimited {
            retry_after_ms: Some(2000)
        }
    );
    let err = model.chat(&ask("b")).await.unwrap_err();
    assert!(matches!(&err, LlmError::Http { status: 503, body } if body.contains("overloaded")));
    assert!(err.is_retryable());
    let err = model.chat(&ask("c")).await.unwrap_err();
    assert!(matches!(err, LlmError::Http { status: 400, .. }));
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout_and_a_closed_port_is_unavailable() {
    let fake = FakeServer::openai().await;
    fake.push(openai::text("late").delayed(Duration::from_millis(500)));
    let model = OpenAiProvider::new(
        ProviderSettings::new("fake", fake.base_url(), "m")
            .with_timeout(Duration::from_millis(100)),
    )
    .unwrap();
    assert_eq!(
        model.chat(&ask("a")).await.unwrap_err(),
        LlmError::Timeout(100)
    );

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let model = OpenAiProvider::new(ProviderSettings::new(
        "gone",
        format!("http://{closed}/v1"),
        "m",
    ))
    .unwrap();
    assert!(matches!(
        model.chat(&ask("a")).await.unwrap_err(),
        LlmError::Unavailable(_)
    ));
}

#[tokio::test]
async fn the_api_key_is_sent_as_a_bearer_token_and_a_wrong_one_is_401() {
    let fake = FakeServer::openai().await;
    fake.require_api_key("sk-right");
    fake.push(openai::text("ok"));
    let with = |key: &str| {
        OpenAiProvider::new(
            ProviderSettings::new("fake", fake.base_url(), "m").with_api_key(ApiKey::new(key)),
        )
        .unwrap()
    };
    assert_eq!(
        with("sk-right")
            .chat(&ask("a"))
            .await
            .unwrap()
            .message
            .content,
        "ok"
    );
    assert_eq!(
        fake.requests()[0].headers["authorization"],
        "Bearer sk-right"
    );
    let err = with("sk-wrong").chat(&ask("a")).await.unwrap_err();
    assert!(matches!(err, LlmError::Http { status: 401, .. }));
}

#[tokio::test]
async fn a_refusal_is_reported_as_such() {
    let fake = FakeServer::openai().await;
    fake.push(openai::refusal("I can't help with that"));
    let resp = provider(&fake).chat(&ask("a")).await.unwrap();
    assert_eq!(resp.finish_reason, FinishReason::Refusal);
    assert_eq!(resp.message.content, "I can't help with that");
}

#[tokio::test]
async fn a_streamed_answer_reports_its_pieces_and_folds_into_the_same_response() {
    let fake = FakeServer::openai().await;
    fake.push(openai::stream_text(&["Hel", "lo", " world"]));
    let seen = Mutex::new(Vec::new());
    let progress = |e: StreamEvent| seen.lock().unwrap().push(e);
    let resp = provider(&fake)
        .chat_streaming(&ask("a"), &progress)
        .await
        .unwrap();
    assert_eq!(resp.message.content, "Hello world");
    assert_eq!(resp.finish_reason, FinishReason::Stop);
    assert_eq!((resp.usage.input_tokens, resp.usage.output_tokens), (10, 3));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            StreamEvent::TextDelta("Hel".into()),
            StreamEvent::TextDelta("lo".into()),
            StreamEvent::TextDelta(" world".into()),
            StreamEvent::Tokens(3),
        ]
    );
    let body = &fake.requests()[0].body;
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);

    fake.push(openai::stream_tool_call(
        "query_assets",
        json!({"env": "prod", "limit": 3}),
    ));
    let mut req = ask("b");
    req.tools = vec![query_assets()];
    let resp = provider(&fake).chat_streaming(&req, &|_| {}).await.unwrap();
    assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
    assert_eq!(resp.message.tool_calls[0].id, "call_1");
    assert_eq!(
        resp.message.tool_calls[0].arguments,
        json!({"env": "prod", "limit": 3})
    );
}

#[tokio::test]
async fn the_fake_answers_500_when_its_script_is_used_up() {
    let fake = FakeServer::openai().await;
    let err = provider(&fake).chat(&ask("a")).await.unwrap_err();
    assert!(
        matches!(&err, LlmError::Http { status: 500, body } if body.contains("no scripted reply"))
    );
    assert_eq!(fake.request_count(), 1);
}
