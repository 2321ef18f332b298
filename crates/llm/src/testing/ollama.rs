//! Replies and request checks of the fake Ollama `/api/chat` server.
//!
//! The checks are Ollama's: `model` is required (400 `{"error": "model is required"}`), roles
//! are `system` / `user` / `assistant` / `tool`, and tool call `arguments` are JSON objects
//! (Ollama cannot read a string there: 400). With [`super::FakeServer::require_api_key`] a
//! matching `Authorization: Bearer` is required (401), as a proxy in front of Ollama would.

use super::{FakeReply, RecordedRequest};
use serde_json::{Value, json};

/// An error in Ollama's shape: `{"error": message}`.
pub fn error(status: u16, message: &str) -> FakeReply {
    FakeReply {
        status,
        ..FakeReply::json(json!({"error": message}))
    }
}

/// A complete (non-streamed) answer with `message`, `done_reason`, 14 tokens in, 7 out.
pub fn response(message: Value, done_reason: &str) -> FakeReply {
    FakeReply::json(json!({
        "model": "qwen-fake", "created_at": "2026-01-01T00:00:00Z", "message": message,
        "done": true, "done_reason": done_reason, "total_duration": 1_000_000,
        "prompt_eval_count": 14, "eval_count": 7,
    }))
}

/// A text answer.
pub fn text(t: &str) -> FakeReply {
    response(json!({"role": "assistant", "content": t}), "stop")
}

/// A tool call `name(arguments)` (arguments an object, no id, as Ollama sends them).
pub fn tool_call(name: &str, arguments: Value) -> FakeReply {
    response(
        json!({"role": "assistant", "content": "",
               "tool_calls": [{"function": {"name": name, "arguments": arguments}}]}),
        "stop",
    )
}

/// A streamed answer: one NDJSON line per piece, then the `done` line with the counts (14 in,
/// one out per piece).
pub fn stream_text(pieces: &[&str]) -> FakeReply {
    let mut lines: Vec<Value> = pieces
        .iter()
        .map(|p| {
            json!({"model": "qwen-fake", "created_at": "2026-01-01T00:00:00Z",
                   "message": {"role": "assistant", "content": p}, "done": false})
        })
        .collect();
    lines.push(
        json!({"model": "qwen-fake", "created_at": "2026-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "stop",
        "prompt_eval_count": 14, "eval_count": pieces.len()}),
    );
    FakeReply::ndjson(lines)
}

/// The answer of a real Ollama to a request it rejects, if it would.
pub(super) fn check(req: &RecordedRequest, api_key: Option<&str>) -> Result<(), FakeReply> {
    if req.path != "/api/chat" {
        return Err(error(404, "404 page not found"));
    }
    if let Some(key) = api_key
        && req.headers.get("authorization") != Some(&format!("Bearer {key}"))
    {
        return Err(error(401, "unauthorized"));
    }
    let body = &req.body;
    if body["model"].as_str().is_none_or(|m| m.is_empty()) {
        return Err(error(400, "model is required"));
    }
    for m in body["messages"].as_array().into_iter().flatten() {
        let role = m["role"].as_str().unwrap_or_default();
        if !["system", "user", "assistant", "tool"].contains(&role) {
            return Err(error(400, &format!("invalid role: {role}")));
        }
        for c in m["tool_calls"].as_array().into_iter().flatten() {
            if !c["function"]["arguments"].is_object() {
                return Err(error(
                    400,
                    "json: cannot unmarshal string into Go struct field .messages.tool_calls.function.arguments of type api.ToolCallFunctionArguments",
                ));
            }
        }
    }
    Ok(())
}
