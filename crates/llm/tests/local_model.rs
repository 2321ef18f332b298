//! The OpenAI-compatible provider against the real local model (llama-server with
//! Qwen2.5-Coder-0.5B on loopback): a plain chat (streamed too), a json_schema answer, a forced
//! tool call. Each test prints `SKIPPED …` when BATON_LLAMA_SERVER / BATON_LOCAL_MODEL are unset
//! (deploy/test.sh sets them, so `.ci/run` runs these).

use baton_llm::testing::LocalModel;
use baton_llm::{
    ChatModel, ChatRequest, FinishReason, Message, ResponseSchema, Role, StreamEvent, ToolChoice,
    ToolDefinition, chat_structured,
};
use serde_json::json;
use std::sync::Mutex;

fn ask(text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![
            Message::text(Role::System, "You are a concise assistant."),
            Message::text(Role::User, text),
        ],
        max_tokens: Some(48),
        temperature: Some(0.0),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_plain_chat_and_a_streamed_one_on_the_local_model() {
    let Some(local) = LocalModel::start("a_plain_chat_and_a_streamed_one_on_the_local_model").await
    else {
        return;
    };
    let model = local.provider();
    let resp = model
        .chat(&ask("What is 2 + 2? Answer with the number only."))
        .await
        .unwrap();
    assert!(
        resp.message.content.contains('4'),
        "{:?}",
        resp.message.content
    );
    assert_eq!(resp.provider, "local");
    assert!(
        resp.usage.input_tokens > 10 && resp.usage.output_tokens > 0,
        "{:?}",
        resp.usage
    );
    assert!(resp.latency_ms > 0);

    let pieces = Mutex::new(Vec::new());
    let progress = |e: StreamEvent| {
        if let StreamEvent::TextDelta(t) = e {
            pieces.lock().unwrap().push(t);
        }
    };
    let streamed = model
        .chat_streaming(&ask("Name three colours, comma-separated."), &progress)
        .await
        .unwrap();
    let pieces = pieces.into_inner().unwrap();
    assert!(pieces.len() > 1, "the answer came in pieces: {pieces:?}");
    assert_eq!(pieces.concat(), streamed.message.content);
    assert!(
        streamed.usage.output_tokens > 0,
        "usage from the last chunk"
    );
    assert!(local.counter("llamacpp:tokens_predicted_total").await >= 2.0);
}

#[tokio::test]
async fn a_json_schema_answer_from_the_local_model_passes_the_schema() {
    let Some(local) =
        LocalModel::start("a_json_schema_answer_from_the_local_model_passes_the_schema").await
    else {
        return;
    };
    let schema = ResponseSchema {
        name: "capital".into(),
        schema: json!({
            "type": "object",
            "properties": {
                "country": {"type": "string"},
                "capital": {"type": "string"},
            },
            "required": ["country", "capital"],
            "additionalProperties": false,
        }),
    };
    let mut req = ask("What is the capital of France? Answer in JSON.");
    req.max_tokens = Some(64);
    let got = chat_structured(&local.provider(), &req, &schema)
        .await
        .unwrap();
    assert_eq!(got.attempts.len(), 1, "json_schema output needs no repair");
    assert!(
        got.value["capital"].as_str().unwrap().contains("Paris"),
        "{}",
        got.value
    );
}

#[tokio::test]
async fn a_forced_tool_call_from_the_local_model() {
    let Some(local) = LocalModel::start("a_forced_tool_call_from_the_local_model").await else {
        return;
    };
    let mut req = ask("What is the weather in Lisbon right now?");
    req.max_tokens = Some(96);
    req.tools = vec![ToolDefinition {
        name: "get_weather".into(),
        description: "Current weather of a city".into(),
        parameters: json!({
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        }),
    }];
    req.tool_choice = ToolChoice::Tool("get_weather".into());
    let resp = local.provider().chat(&req).await.unwrap();
    assert_eq!(resp.finish_reason, FinishReason::ToolCalls, "{resp:?}");
    let call = &resp.message.tool_calls[0];
    assert_eq!(call.name, "get_weather");
    // "Lisbon" or "Lisboa": the model's spelling.
    let city = call.arguments["city"].as_str().unwrap().to_lowercase();
    assert!(city.starts_with("lisb"), "{}", call.arguments);

    // The tool's result goes back (an assistant turn with tool calls and "" content, which
    // llama.cpp needs) and the model answers in text.
    req.messages.push(resp.message.clone());
    req.messages.push(Message::tool_result(
        call.id.clone(),
        r#"{"temp_c": 21, "sky": "clear"}"#,
    ));
    req.tool_choice = ToolChoice::None;
    let answer = local.provider().chat(&req).await.unwrap();
    assert!(answer.message.tool_calls.is_empty());
    assert!(
        answer.message.content.contains("21"),
        "{:?}",
        answer.message.content
    );
}
