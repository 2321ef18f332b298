//! The Anthropic Messages provider (`POST {base}/v1/messages`), with tool use.
//!
//! Wire format, as hand-written serde (only what Baton reads or writes):
//! - headers: `x-api-key`, `anthropic-version: 2023-06-01`;
//! - request: `model`, `max_tokens` (required by the API: 1024 when the request has none),
//!   `system` (the system messages, joined; plus the answer's JSON schema as an instruction,
//!   since Messages has no `response_format`), `messages` alternating `user` / `assistant`
//!   (consecutive turns of one role are merged; a tool result is a `tool_result` block of a
//!   `user` turn; an assistant's tool calls are `tool_use` blocks with `input` objects),
//!   `tools` (`name`, `description`, `input_schema`), `tool_choice` (`auto` | `none` | `any` |
//!   `{type: tool, name}`), `temperature`, `stream`;
//! - response: `content` blocks (`text`, `tool_use`), `stop_reason` (`end_turn`,
//!   `tool_use`, `max_tokens`, `stop_sequence`, `refusal`), `usage.input_tokens` /
//!   `output_tokens`, `model`;
//! - stream: SSE events `message_start` (usage of the input), `content_block_start`,
//!   `content_block_delta` (`text_delta`, `input_json_delta`), `content_block_stop`,
//!   `message_delta` (`stop_reason`, output usage), `message_stop`, `ping`, `error`.

use crate::http::{Transport, sse_data};
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

/// The `anthropic-version` header Baton speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// `max_tokens` when the request sets none (the API requires one).
const DEFAULT_MAX_TOKENS: u32 = 1024;

/// A provider speaking Anthropic Messages.
#[derive(Debug, Clone)]
pub struct AnthropicProvider {
    http: Transport,
}

impl AnthropicProvider {
    /// A provider for `settings` (`base_url` like `https://api.anthropic.com`). Sends
    /// `x-api-key` when a key is set.
    ///
    /// Errors: [`LlmError::Config`] when the HTTP client cannot be built.
    pub fn new(settings: ProviderSettings) -> Result<AnthropicProvider, LlmError> {
        Ok(AnthropicProvider {
            http: Transport::new(settings)?,
        })
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![("anthropic-version", ANTHROPIC_VERSION.to_string())];
        if let Some(k) = &self.http.settings.api_key {
            h.push(("x-api-key", k.expose().to_string()));
        }
        h
    }

    async fn call(
        &self,
        request: &ChatRequest,
        progress: Option<&(dyn Fn(StreamEvent) + Send + Sync)>,
    ) -> Result<ChatResponse, LlmError> {
        let started = Instant::now();
        let body = request_body(&self.http.settings.model, request, progress.is_some());
        let resp = self
            .http
            .post("/v1/messages", &self.headers(), &body)
            .await?;
        let wire = match progress {
            None => self.http.json::<WireMessage>(resp).await?,
            Some(p) => self.read_stream(resp, p).await?,
        };
        let out = parse_response(wire, request, &self.http.settings.model)?;
        Ok(self.http.account(out, started))
    }

    async fn read_stream(
        &self,
        resp: reqwest::Response,
        progress: &(dyn Fn(StreamEvent) + Send + Sync),
    ) -> Result<WireMessage, LlmError> {
        let mut msg = WireMessage::default();
        // Partial JSON of each tool_use block's input, by block index.
        let mut partial: Vec<String> = Vec::new();
        let mut failure = None;
        self.http
            .for_each_line(resp, |line| {
                let Some(data) = sse_data(line) else {
                    return Ok(true);
                };
                let ev: Value = serde_json::from_str(data).map_err(|e| {
                    LlmError::Protocol(format!("bad stream event: {e}: {}", self.http.redact(data)))
                })?;
                match ev["type"].as_str().unwrap_or_default() {
                    "message_start" => {
                        let start: WireMessage =
                            serde_json::from_value(ev["message"].clone()).unwrap_or_default();
                        msg.model = start.model;
                        msg.usage = start.usage;
                    }
                    "content_block_start" => {
                        let i = ev["index"].as_u64().unwrap_or(msg.content.len() as u64) as usize;
                        let block: WireBlock = serde_json::from_value(ev["content_block"].clone())
                            .map_err(|e| LlmError::Protocol(format!("bad content block: {e}")))?;
                        while msg.content.len() <= i {
                            msg.content.push(WireBlock::default());
                            partial.push(String::new());
                        }
                        msg.content[i] = block;
                    }
                    "content_block_delta" => {
                        let i = ev["index"].as_u64().unwrap_or(0) as usize;
                        let (Some(block), Some(json)) =
                            (msg.content.get_mut(i), partial.get_mut(i))
                        else {
                            return Err(LlmError::Protocol(format!("delta for unknown block {i}")));
                        };
                        let delta = &ev["delta"];
                        match delta["type"].as_str() {
                            Some("text_delta") => {
                                let t = delta["text"].as_str().unwrap_or_default();
                                block.text.get_or_insert_with(String::new).push_str(t);
                                if !t.is_empty() {
                                    progress(StreamEvent::TextDelta(t.to_string()));
                                }
                            }
                            Some("input_json_delta") => {
                                json.push_str(delta["partial_json"].as_str().unwrap_or_default())
                            }
                            _ => {}
                        }
                    }
                    "message_delta" => {
                        if let Some(r) = ev["delta"]["stop_reason"].as_str() {
                            msg.stop_reason = Some(r.to_string());
                        }
                        if let Some(n) = ev["usage"]["output_tokens"].as_u64() {
                            msg.usage.output_tokens = n as u32;
                            progress(StreamEvent::Tokens(n as u32));
                        }
                    }
                    "message_stop" => return Ok(false),
                    "error" => {
                        failure = Some(LlmError::Http {
                            status: 500,
                            body: self.http.redact(&ev["error"].to_string()),
                        });
                        return Ok(false);
                    }
                    _ => {}
                }
                Ok(true)
            })
            .await?;
        if let Some(e) = failure {
            return Err(e);
        }
        for (block, json) in msg.content.iter_mut().zip(partial) {
            if block.kind == "tool_use" && !json.is_empty() {
                block.input = Value::String(json);
            }
        }
        Ok(msg)
    }
}

impl ChatModel for AnthropicProvider {
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
struct WireMessage {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    content: Vec<WireBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Debug, Deserialize, Default)]
struct WireBlock {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Value,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u32,
    #[serde(default)]
    output_tokens: u32,
}

/// The JSON body of a Messages request.
fn request_body(model: &str, request: &ChatRequest, stream: bool) -> Value {
    let mut system: Vec<String> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.clone())
        .collect();
    if let Some(schema) = &request.response_schema {
        system.push(format!(
            "Answer with one JSON document only, no prose, matching this JSON schema:\n{}",
            schema.schema
        ));
    }
    // Turns alternate user / assistant: merge consecutive blocks of one role.
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in request.messages.iter().filter(|m| m.role != Role::System) {
        let (role, blocks) = match m.role {
            Role::User => ("user", vec![json!({"type": "text", "text": m.content})]),
            Role::Tool => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id.clone().unwrap_or_default(),
                    "content": m.content,
                })],
            ),
            Role::Assistant => {
                let mut blocks = Vec::new();
                if !m.content.is_empty() {
                    blocks.push(json!({"type": "text", "text": m.content}));
                }
                for c in &m.tool_calls {
                    let input = if c.arguments.is_object() {
                        c.arguments.clone()
                    } else {
                        json!({})
                    };
                    blocks.push(
                        json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}),
                    );
                }
                if blocks.is_empty() {
                    blocks.push(json!({"type": "text", "text": ""}));
                }
                ("assistant", blocks)
            }
            Role::System => unreachable!("filtered out above"),
        };
        match turns.last_mut() {
            Some((last, b)) if *last == role => b.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    let mut body = json!({
        "model": model,
        "max_tokens": request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": messages,
        "stream": stream,
    });
    let obj = body.as_object_mut().expect("an object");
    if !system.is_empty() {
        obj.insert("system".into(), json!(system.join("\n\n")));
    }
    if !request.tools.is_empty() {
        obj.insert(
            "tools".into(),
            Value::Array(
                request
                    .tools
                    .iter()
                    .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
                    .collect(),
            ),
        );
        let choice = match &request.tool_choice {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
        };
        obj.insert("tool_choice".into(), choice);
    }
    if let Some(t) = request.temperature {
        obj.insert("temperature".into(), json!(t));
    }
    body
}

fn parse_response(
    wire: WireMessage,
    request: &ChatRequest,
    asked_model: &str,
) -> Result<ChatResponse, LlmError> {
    let mut content = String::new();
    let mut tool_calls = Vec::new();
    for (i, block) in wire.content.into_iter().enumerate() {
        match block.kind.as_str() {
            "text" => content.push_str(block.text.as_deref().unwrap_or_default()),
            "tool_use" => {
                let name = block
                    .name
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| LlmError::Protocol(format!("tool_use block {i} has no name")))?;
                tool_calls.push(ToolCallRequest {
                    id: block.id.unwrap_or_else(|| format!("call_{i}")),
                    arguments: parse_arguments(&name, block.input)?,
                    name,
                });
            }
            _ => {}
        }
    }
    if tool_calls.is_empty()
        && let Some(call) = bare_tool_call(&content, &request.tools)?
    {
        tool_calls.push(call);
        content.clear();
    }
    let finish_reason = match wire.stop_reason.as_deref() {
        Some("end_turn") | Some("stop_sequence") | None if !tool_calls.is_empty() => {
            FinishReason::ToolCalls
        }
        Some("end_turn") | Some("stop_sequence") | None => FinishReason::Stop,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("max_tokens") => FinishReason::Length,
        Some("refusal") => FinishReason::Refusal,
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
            input_tokens: wire.usage.input_tokens,
            output_tokens: wire.usage.output_tokens,
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
