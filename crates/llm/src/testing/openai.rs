//! Replies and request checks of the fake OpenAI chat completions server.
//!
//! The checks are the ones real servers make and Baton must satisfy: `model` and a non-empty
//! `messages` are required (400); with [`super::FakeServer::require_api_key`], a missing or
//! wrong `Authorization: Bearer` is 401; an assistant message with `tool_calls` and a `null`
//! (or missing) `content` is answered 500 as llama.cpp does; tool call `arguments` must be a
//! JSON string (400); a `tool` message needs a `tool_call_id` (400).

use super::{FakeReply, RecordedRequest};
use serde_json::{Value, json};

/// A complete answer with `content`, `finish_reason: stop` and usage 10 in / 5 out.
pub fn text(content: &str) -> FakeReply {
    completion(json!({"role": "assistant", "content": content}), "stop")
}

/// A complete answer asking for one tool call `name(arguments)` with id `call_1`, in
/// `tool_calls` with the arguments as a JSON string, `finish_reason: tool_calls`.
pub fn tool_call(name: &str, arguments: Value) -> FakeReply {
    completion(
        json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": "call_1",
                "type": "function",
                "function": {"name": name, "arguments": arguments.to_string()},
            }],
        }),
        "tool_calls",
    )
}

/// A tool call the way small local models send it: bare JSON `{"name", "arguments"}` in
/// `content`, no `tool_calls`, `finish_reason: stop`.
pub fn bare_tool_call(name: &str, arguments: Value) -> FakeReply {
    text(&json!({"name": name, "arguments": arguments}).to_string())
}

/// A refusal (`message.refusal` set, `content` null).
pub fn refusal(reason: &str) -> FakeReply {
    completion(
        json!({"role": "assistant", "content": null, "refusal": reason}),
        "stop",
    )
}

/// A complete answer with `message`, `finish_reason` and usage 10 in / 5 out.
pub fn completion(message: Value, finish_reason: &str) -> FakeReply {
    FakeReply::json(json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "fake-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }))
}

/// A streamed answer: one chunk with the role, one per piece of `pieces`, one with
/// `finish_reason: stop`, one with usage (10 in, one output token per piece), then `[DONE]`.
pub fn stream_text(pieces: &[&str]) -> FakeReply {
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": "fake-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
        .to_string()
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for p in pieces {
        events.push(chunk(json!({"content": p}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    events.push(
        json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": "fake-model",
            "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": pieces.len(),
                      "total_tokens": 10 + pieces.len()},
        })
        .to_string(),
    );
    events.push("[DONE]".into());
    FakeReply::sse(events)
}

/// A streamed tool call `name(arguments)` (id `call_1`), its arguments split over two chunks.
pub fn stream_tool_call(name: &str, arguments: Value) -> FakeReply {
    let args = arguments.to_string();
    let (a, b) = args.split_at(args.len() / 2);
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": "fake-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
        .to_string()
    };
    FakeReply::sse(vec![
        chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
                "id": "call_1", "type": "function", "function": {"name": name, "arguments": a}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": b}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
        "[DONE]".into(),
    ])
}

/// The answer of a real OpenAI-compatible server to a request it rejects, if it would.
pub(super) fn check(req: &RecordedRequest, api_key: Option<&str>) -> Result<(), FakeReply> {
    if req.path != "/v1/chat/completions" {
        return Err(FakeReply::error(404, &format!("no route {}", req.path)));
    }
    if let Some(key) = api_key {
        let expected = format!("Bearer {key}");
        if req.headers.get("authorization") != Some(&expected) {
            return Err(FakeReply::error(401, "Incorrect API key provided"));
        }
    }
    let body = &req.body;
    if !body.is_object() {
        return Err(FakeReply::error(400, "the body is not a JSON object"));
    }
    if !body["model"].is_string() {
        return Err(FakeReply::error(400, "'model' is required"));
    }
    let Some(messages) = body["messages"].as_array().filter(|m| !m.is_empty()) else {
        return Err(FakeReply::error(
            400,
            "'messages' must be a non-empty array",
        ));
    };
    for m in messages {
        let has_calls = m["tool_calls"].as_array().is_some_and(|c| !c.is_empty());
        if m["role"] == "assistant" && has_calls && !m["content"].is_string() {
            // llama.cpp: "Expected 'content' to be a string or an array"
            return Err(FakeReply::error(
                500,
                "Expected 'content' to be a string or an array",
            ));
        }
        if has_calls {
            for c in m["tool_calls"].as_array().into_iter().flatten() {
                if !c["function"]["arguments"].is_string() {
                    return Err(FakeReply::error(
                        400,
                        "tool call arguments must be a string",
                    ));
                }
            }
        }
        if m["role"] == "tool" && !m["tool_call_id"].is_string() {
            return Err(FakeReply::error(400, "a tool message needs 'tool_call_id'"));
        }
    }
    Ok(())
}
