//! The Ollama native provider against the fake `/api/chat` server on loopback.

use baton_llm::testing::{FakeServer, ollama};
use baton_llm::{
    ChatModel, ChatRequest, FinishReason, LlmError, Message, OllamaProvider, ProviderSettings,
    ResponseSchema, Role, StreamEvent, ToolCallRequest, ToolChoice, ToolDefinition,
};
use serde_json::json;
use std::sync::Mutex;

fn provider(fake: &FakeServer) -> OllamaProvider {
    OllamaProvider::new(ProviderSettings::new(
        "ollama",
        fake.base_url(),
        "qwen2.5-coder:0.5b",
    ))
    .unwrap()
}

fn ask(text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![Message::text(Role::User, text)],
        ..Default::default()
    }
}

fn tools() -> Vec<ToolDefinition> {
    ["query_assets", "read_file"]
        .iter()
        .map(|n| ToolDefinition {
            name: n.to_string(),
            description: format!("{n} tool"),
            parameters: json!({"type": "object"}),
        })
        .collect()
}

#[tokio::test]
async fn a_plain_chat_sends_stream_false_options_and_format_and_reads_counts() {
    let fake = FakeServer::ollama().await;
    fake.push(ollama::text("hello"));
    let mut req = ask("hi");
    req.temperature = Some(0.0);
    req.max_tokens = Some(32);
    req.response_schema = Some(ResponseSchema {
        name: "a".into(),
        schema: json!({"type": "object"}),
    });
    let resp = provider(&fake).chat(&req).await.unwrap();
    assert_eq!(resp.message.content, "hello");
    assert_eq!(resp.finish_reason, FinishReason::Stop);
    assert_eq!((resp.usage.input_tokens, resp.usage.output_tokens), (14, 7));
    assert_eq!(resp.model, "qwen-fake");
    let sent = &fake.requests()[0];
    assert_eq!(sent.path, "/api/chat");
    assert_eq!(sent.body["stream"], false);
    assert_eq!(sent.body["model"], "qwen2.5-coder:0.5b");
    assert_eq!(
        sent.body["options"],
        json!({"temperature": 0.0, "num_predict": 32})
    );
    assert_eq!(sent.body["format"], json!({"type": "object"}));
}

#[tokio::test]
async fn tool_calls_get_ids_and_their_results_name_the_tool() {
    let fake = FakeServer::ollama().await;
    fake.push(ollama::tool_call("query_assets", json!({"env": "prod"})));
    let mut req = ask("hosts?");
    req.tools = tools();
    req.tool_choice = ToolChoice::Tool("query_assets".into());
    let resp = provider(&fake).chat(&req).await.unwrap();
    assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
    assert_eq!(
        resp.message.tool_calls,
        vec![ToolCallRequest {
            id: "call_0".into(),
            name: "query_assets".into(),
            arguments: json!({"env": "prod"})
        }]
    );
    // Ollama has no tool_choice: a forced tool is the only one offered.
    let sent = &fake.requests()[0].body;
    assert_eq!(sent["tools"].as_array().unwrap().len(), 1);
    assert_eq!(sent["tools"][0]["function"]["name"], "query_assets");
    assert!(sent.get("tool_choice").is_none());

    fake.push(ollama::text("two hosts"));
    req.messages.push(resp.message);
    req.messages
        .push(Message::tool_result("call_0", r#"["a","b"]"#));
    req.tool_choice = ToolChoice::None;
    assert_eq!(
        provider(&fake).chat(&req).await.unwrap().message.content,
        "two hosts"
    );
    let sent = &fake.requests()[1].body;
    assert!(
        sent.get("tools").is_none(),
        "tool_choice none offers no tools"
    );
    assert_eq!(
        sent["messages"][1]["tool_calls"][0]["function"]["arguments"],
        json!({"env": "prod"})
    );
    assert_eq!(
        sent["messages"][2],
        json!({"role": "tool", "content": "[\"a\",\"b\"]", "tool_name": "query_assets"})
    );
}

#[tokio::test]
async fn a_bare_json_tool_call_in_content_is_a_tool_call() {
    let fake = FakeServer::ollama().await;
    fake.push(ollama::text(
        r#"{"name": "read_file", "arguments": {"path": "a.txt"}}"#,
    ));
    let mut req = ask("read a.txt");
    req.tools = tools();
    let resp = provider(&fake).chat(&req).await.unwrap();
    assert_eq!(resp.message.tool_calls[0].name, "read_file");
    assert_eq!(
        resp.message.tool_calls[0].arguments,
        json!({"path": "a.txt"})
    );
}

#[tokio::test]
async fn a_streamed_answer_is_read_line_by_line() {
    let fake = FakeServer::ollama().await;
    fake.push(ollama::stream_text(&["a", "b", "c"]));
    let seen = Mutex::new(Vec::new());
    let progress = |e: StreamEvent| seen.lock().unwrap().push(e);
    let resp = provider(&fake)
        .chat_streaming(&ask("x"), &progress)
        .await
        .unwrap();
    assert_eq!(resp.message.content, "abc");
    assert_eq!((resp.usage.input_tokens, resp.usage.output_tokens), (14, 3));
    assert_eq!(seen.lock().unwrap().len(), 4);
    assert_eq!(fake.requests()[0].body["stream"], true);
}

#[tokio::test]
async fn an_unknown_model_is_an_http_error_with_ollamas_message() {
    let fake = FakeServer::ollama().await;
    fake.push(ollama::error(
        404,
        "model \"nope\" not found, try pulling it first",
    ));
    let err = provider(&fake).chat(&ask("x")).await.unwrap_err();
    assert!(matches!(&err, LlmError::Http { status: 404, body } if body.contains("try pulling")));
}
