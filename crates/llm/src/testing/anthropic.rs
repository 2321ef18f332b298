//! Replies and request checks of the fake Anthropic Messages server.
//!
//! The checks are the real API's: `anthropic-version` header (400), with
//! [`super::FakeServer::require_api_key`] a matching `x-api-key` (401), `model` and
//! `max_tokens` (400), `messages` non-empty with only `user` / `assistant` roles, starting with
//! `user` and alternating (400), and every `tool_result` answering a `tool_use` id of the
//! assistant turn just before it (400).

use super::{FakeBody, FakeReply, RecordedRequest};
use serde_json::{Value, json};

/// An error in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`.
pub fn error(status: u16, message: &str) -> FakeReply {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    FakeReply {
        status,
        ..FakeReply::json(json!({"type": "error", "error": {"type": kind, "message": message}}))
    }
}

/// A message with `content` blocks and `stop_reason`, usage 12 in / 6 out.
pub fn message(content: Value, stop_reason: &str) -> FakeReply {
    FakeReply::json(json!({
        "id": "msg_fake", "type": "message", "role": "assistant", "model": "claude-fake",
        "content": content, "stop_reason": stop_reason, "stop_sequence": null,
        "usage": {"input_tokens": 12, "output_tokens": 6},
    }))
}

/// A text answer (`stop_reason: end_turn`).
pub fn text(t: &str) -> FakeReply {
    message(json!([{"type": "text", "text": t}]), "end_turn")
}

/// A tool use `name(input)` with id `toolu_1`, after a short text (`stop_reason: tool_use`).
pub fn tool_use(name: &str, input: Value) -> FakeReply {
    message(
        json!([
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": name, "input": input},
        ]),
        "tool_use",
    )
}

/// A refusal (`stop_reason: refusal`).
pub fn refusal() -> FakeReply {
    message(json!([]), "refusal")
}

fn event(kind: &str, data: Value) -> String {
    format!("event: {kind}\ndata: {data}\n\n")
}

/// A streamed text answer: `message_start`, a `ping`, one text block with a `text_delta` per
/// piece, `message_delta` (`end_turn`, one output token per piece), `message_stop`.
pub fn stream_text(pieces: &[&str]) -> FakeReply {
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message",
                "role": "assistant", "model": "claude-fake", "content": [], "stop_reason": null,
                "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        ),
        event("ping", json!({"type": "ping"})),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    for p in pieces {
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": p}}),
        ));
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": pieces.len()}}),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    FakeReply {
        body: FakeBody::RawSse(events),
        ..FakeReply::json(Value::Null)
    }
}

/// A streamed tool use `name(input)` (id `toolu_1`), its input in two `input_json_delta`s.
pub fn stream_tool_use(name: &str, input: Value) -> FakeReply {
    let s = input.to_string();
    let (a, b) = s.split_at(s.len() / 2);
    let events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message",
                "role": "assistant", "model": "claude-fake", "content": [],
                "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block":
                {"type": "tool_use", "id": "toolu_1", "name": name, "input": {}}}),
        ),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "input_json_delta", "partial_json": a}}),
        ),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "input_json_delta", "partial_json": b}}),
        ),
        event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                   "usage": {"output_tokens": 9}}),
        ),
        event("message_stop", json!({"type": "message_stop"})),
    ];
    FakeReply {
        body: FakeBody::RawSse(events),
        ..FakeReply::json(Value::Null)
    }
}

/// The answer of the real Messages API to a request it rejects, if it would.
pub(super) fn check(req: &RecordedRequest, api_key: Option<&str>) -> Result<(), FakeReply> {
    if req.path != "/v1/messages" {
        return Err(error(404, &format!("no route {}", req.path)));
    }
    if let Some(key) = api_key
        && req.headers.get("x-api-key").map(String::as_str) != Some(key)
    {
        return Err(error(401, "invalid x-api-key"));
    }
    if !req.headers.contains_key("anthropic-version") {
        return Err(error(400, "anthropic-version: header is required"));
    }
    let body = &req.body;
    if !body["model"].is_string() {
        return Err(error(400, "model: Field required"));
    }
    if !body["max_tokens"].is_u64() {
        return Err(error(400, "max_tokens: Field required"));
    }
    let Some(messages) = body["messages"].as_array().filter(|m| !m.is_empty()) else {
        return Err(error(400, "messages: at least one message is required"));
    };
    let mut expected = "user";
    let mut open_tool_uses: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or_default();
        if role != "user" && role != "assistant" {
            return Err(error(
                400,
                &format!("messages.{i}.role: unexpected role {role:?}"),
            ));
        }
        if role != expected {
            return Err(error(
                400,
                "messages: roles must alternate between \"user\" and \"assistant\", starting with \"user\"",
            ));
        }
        let blocks = m["content"].as_array().cloned().unwrap_or_default();
        if role == "user" {
            for b in &blocks {
                if b["type"] == "tool_result" {
                    let id = b["tool_use_id"].as_str().unwrap_or_default();
                    if !open_tool_uses.iter().any(|u| u == id) {
                        return Err(error(
                            400,
                            &format!(
                                "messages.{i}: tool_result block(s) provided when previous message does not contain tool_use {id}"
                            ),
                        ));
                    }
                }
            }
            open_tool_uses.clear();
        } else {
            open_tool_uses = blocks
                .iter()
                .filter(|b| b["type"] == "tool_use")
                .filter_map(|b| b["id"].as_str().map(str::to_string))
                .collect();
        }
        expected = if role == "user" { "assistant" } else { "user" };
    }
    Ok(())
}
