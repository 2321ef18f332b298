//! The Ollama native provider (`POST {base}/api/chat`).
//!
//! Wire format, as hand-written serde (only what Baton reads or writes):
//! - request: `model`, `messages` (`role`, `content`, an assistant's `tool_calls` as
//!   `{function: {name, arguments}}` with `arguments` an *object*, a tool result's `tool_name`),
//!   `tools` (`{type: function, function: {name, description, parameters}}`), `format` (the
//!   answer's JSON schema: Ollama's structured outputs), `stream` (always sent: Ollama streams
//!   by default), `options.temperature`, `options.num_predict`;
//! - response: `message` (`content`, `tool_calls`), `done`, `done_reason` (`stop`, `length`),
//!   `prompt_eval_count` / `eval_count` (tokens in / out), `model`;
//! - stream: NDJSON, one such object per line; the last has `done: true` and the counts.
//!
//! Ollama has no `tool_choice`: [`ToolChoice::None`] sends no tools, and
//! [`ToolChoice::Tool`] offers only that tool. Its tool calls have no ids: Baton numbers them
//! `call_0`, `call_1`, …. The bare-JSON tool call quirk is handled as for OpenAI.

use crate::http::Transport;
use crate::openai::{bare_tool_call, parse_arguments};
use crate::provider::ProviderSettings;
use crate::{
    ChatModel, ChatRequest, ChatResponse, FinishReason, LlmError, Message, Role, StreamEvent,
    ToolCallRequest, ToolChoice, Usage,
};
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Instant;

/// A provider speaking Ollama's native chat API.
#[derive(Debug, Clone)]
pub struct OllamaProvider {
    http: Transport,
}

impl OllamaProvider {
    /// A provider for `settings` (`base_url` like `http://127.0.0.1:11434`). Sends
    /// `Authorization: Bearer <key>` when a key is set (a proxy in front of Ollama).
    ///
    /// Errors: [`LlmError::Config`] when the HTTP client cannot be built.
    pub fn new(settings: ProviderSettings) -> Result<OllamaProvider, LlmError> {
        Ok(OllamaProvider {
            http: Transport::new(settings)?,
        })
    }

    async fn call(
        &self,
        request: &ChatRequest,
        progress: Option<&(dyn Fn(StreamEvent) + Send + Sync)>,
    ) -> Result<ChatResponse, LlmError> {
        let started = Instant::now();
        let headers: Vec<(&str, String)> = match &self.http.settings.api_key {
            Some(k) => vec![("authorization", format!("Bearer {}", k.expose()))],
            None => Vec::new(),
        };
        let body = request_body(&self.http.settings.model, request, progress.is_some());
        let resp = self.http.post("/api/chat", &headers, &body).await?;
        let wire = match progress {
            None => self.http.json::<WireChunk>(resp).await?,
            Some(progress) => {
                let mut acc = WireChunk::default();
                self.http
                    .for_each_line(resp, |line| {
                        if line.trim().is_empty() {
                            return Ok(true);
                        }
                        let chunk: WireChunk = serde_json::from_str(line).map_err(|e| {
                            LlmError::Protocol(format!(
                                "bad stream line: {e}: {}",
                                self.http.redact(line)
                            ))
                        })?;
                        if let Some(err) = chunk.error {
                            return Err(LlmError::Http {
                                status: 500,
                                body: self.http.redact(&err),
                            });
                        }
                        if !chunk.message.content.is_empty() {
                            progress(StreamEvent::TextDelta(chunk.message.content.clone()));
                        }
                        acc.message.content.push_str(&chunk.message.content);
                        acc.message.tool_calls.extend(chunk.message.tool_calls);
                        acc.model = chunk.model.or(acc.model.take());
                        if chunk.done {
                            acc.done = true;
                            acc.done_reason = chunk.done_reason;
                            acc.prompt_eval_count = chunk.prompt_eval_count;
                            acc.eval_count = chunk.eval_count;
                            progress(StreamEvent::Tokens(chunk.eval_count));
                            return Ok(false);
                        }
                        Ok(true)
                    })
                    .await?;
                acc
            }
        };
        let out = parse_response(wire, request, &self.http.settings.model)?;
        Ok(self.http.account(out, started))
    }
}

impl ChatModel for OllamaProvider {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(self.call(request, None))
    }

    fn chat_streaming<'a>(
        &'a self,
        request: &'a ChatRequest,
        progress: &'a (dyn Fn(StreamEvent) + Send + Sync),
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(self.call(request, Some(progress)))
    }
}

#[derive(Debug, Deserialize, Default)]
struct WireChunk {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    message: WireMessage,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: u32,
    #[serde(default)]
    eval_count: u32,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct WireMessage {
    #[serde(default)]
    content: String,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
}

#[derive(Debug, Deserialize, Default)]
struct WireToolCall {
    #[serde(default)]
    function: WireFunction,
}

#[derive(Debug, Deserialize, Default)]
struct WireFunction {
    #[serde(default)]
    name: String,
    #[serde(default)]
    arguments: Value,
}

fn request_body(model: &str, request: &ChatRequest, stream: bool) -> Value {
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|m| match m.role {
            Role::System => json!({"role": "system", "content": m.content}),
            Role::User => json!({"role": "user", "content": m.content}),
            Role::Assistant if m.tool_calls.is_empty() => {
                json!({"role": "assistant", "content": m.content})
            }
            Role::Assistant => json!({
                "role": "assistant",
                "content": m.content,
                "tool_calls": m.tool_calls.iter().map(|c| json!({
                    "function": {"name": c.name, "arguments": c.arguments}
                })).collect::<Vec<_>>(),
            }),
            Role::Tool => {
                // Ollama names the tool a result belongs to; find it by the call's id.
                let name = request
                    .messages
                    .iter()
                    .flat_map(|m| &m.tool_calls)
                    .find(|c| Some(&c.id) == m.tool_call_id.as_ref())
                    .map(|c| c.name.clone())
                    .unwrap_or_default();
                json!({"role": "tool", "content": m.content, "tool_name": name})
            }
        })
        .collect();
    let mut body = json!({"model": model, "messages": messages, "stream": stream});
    let obj = body.as_object_mut().expect("an object");
    let tools: Vec<Value> = request
        .tools
        .iter()
        .filter(|t| match &request.tool_choice {
            ToolChoice::None => false,
            ToolChoice::Tool(name) => &t.name == name,
            ToolChoice::Auto | ToolChoice::Required => true,
        })
        .map(|t| {
            json!({"type": "function",
                   "function": {"name": t.name, "description": t.description, "parameters": t.parameters}})
        })
        .collect();
    if !tools.is_empty() {
        obj.insert("tools".into(), Value::Array(tools));
    }
    if let Some(schema) = &request.response_schema {
        obj.insert("format".into(), schema.schema.clone());
    }
    let mut options = serde_json::Map::new();
    if let Some(t) = request.temperature {
        options.insert("temperature".into(), json!(t));
    }
    if let Some(n) = request.max_tokens {
        options.insert("num_predict".into(), json!(n));
    }
    if !options.is_empty() {
        obj.insert("options".into(), Value::Object(options));
    }
    body
}

fn parse_response(
    wire: WireChunk,
    request: &ChatRequest,
    asked_model: &str,
) -> Result<ChatResponse, LlmError> {
    if let Some(err) = wire.error {
        return Err(LlmError::Protocol(err));
    }
    let mut content = wire.message.content;
    let mut tool_calls = Vec::new();
    for (i, c) in wire.message.tool_calls.into_iter().enumerate() {
        if c.function.name.is_empty() {
            return Err(LlmError::Protocol(format!(
                "tool call {i} has no function name"
            )));
        }
        tool_calls.push(ToolCallRequest {
            id: format!("call_{i}"),
            arguments: parse_arguments(&c.function.name, c.function.arguments)?,
            name: c.function.name,
        });
    }
    if tool_calls.is_empty()
        && let Some(call) = bare_tool_call(&content, &request.tools)?
    {
        tool_calls.push(call);
        content.clear();
    }
    let finish_reason = match wire.done_reason.as_deref() {
        _ if !tool_calls.is_empty() => FinishReason::ToolCalls,
        Some("stop") | None => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        Some(other) => FinishReason::Other(other.to_string()),
    };
    Ok(ChatResponse {
        message: Message {
            role: Role::Assistant,
            content,
            tool_calls,
            tool_call_id: None,
        },
        finish_reason,
        usage: Usage {
            input_tokens: wire.prompt_eval_count,
            output_tokens: wire.eval_count,
        },
        provider: String::new(),
        model: wire
            .model
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| asked_model.to_string()),
        latency_ms: 0,
        cost_micros: 0,
        fallback_index: 0,
    })
}
