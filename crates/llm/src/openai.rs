//! The OpenAI-compatible chat completions provider (`POST {base}/chat/completions`): OpenAI,
//! Groq, OpenRouter, vLLM, LM Studio, llama.cpp's `llama-server`, Ollama's `/v1`.
//!
//! Wire format, as hand-written serde structs (only the fields Baton reads or writes):
//! - request: `model`, `messages` (`role`, `content`, assistant `tool_calls` with
//!   `function.arguments` as a JSON *string*, tool `tool_call_id`), `tools`
//!   (`{type: function, function: {name, description, parameters}}`), `tool_choice`
//!   (`auto` | `none` | `required` | `{type: function, function: {name}}`), `response_format`
//!   (`{type: json_schema, json_schema: {name, schema, strict: true}}`), `max_tokens`,
//!   `temperature`, `stream` with `stream_options.include_usage`;
//! - response: `choices[0].message` (`content`, `tool_calls`, `refusal`),
//!   `choices[0].finish_reason`, `usage.prompt_tokens` / `completion_tokens`, `model`;
//! - stream: SSE `data:` lines of chunks with `choices[0].delta` (content pieces, tool call
//!   pieces keyed by `index`), a last chunk with `usage`, then `data: [DONE]`.
//!
//! Quirks of real servers handled here (seen with llama.cpp and Qwen):
//! - an assistant turn's `content` is sent as `""` next to `tool_calls`, never `null` (which
//!   llama.cpp rejects with HTTP 500);
//! - a tool call sent as bare JSON `{"name": …, "arguments": …}` in `content` (optionally in a
//!   code fence or `<tool_call>` tags) instead of `tool_calls` becomes a tool call, when the
//!   name is one of the offered tools; its id is made up as `call_0`;
//! - `arguments` that arrive as a JSON string are parsed (an empty string is `{}`).

use crate::http::{Transport, sse_data};
use crate::provider::ProviderSettings;
use crate::{
    ChatModel, ChatRequest, ChatResponse, FinishReason, LlmError, Message, Role, StreamEvent,
    ToolCallRequest, ToolChoice, ToolDefinition, Usage,
};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Instant;

/// A provider speaking OpenAI's chat completions.
#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    http: Transport,
}

impl OpenAiProvider {
    /// A provider for `settings` (`base_url` up to and including `/v1`). Sends
    /// `Authorization: Bearer <key>` when a key is set.
    ///
    /// Errors: [`LlmError::Config`] when the HTTP client cannot be built.
    pub fn new(settings: ProviderSettings) -> Result<OpenAiProvider, LlmError> {
        Ok(OpenAiProvider {
            http: Transport::new(settings)?,
        })
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &ProviderSettings {
        &self.http.settings
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        match &self.http.settings.api_key {
            Some(k) => vec![("authorization", format!("Bearer {}", k.expose()))],
            None => Vec::new(),
        }
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
            .post("/chat/completions", &self.headers(), &body)
            .await?;
        let wire = match progress {
            None => self.http.json::<WireResponse>(resp).await?,
            Some(progress) => self.read_stream(resp, progress).await?,
        };
        let out = parse_response(wire, request, &self.http.settings.model)?;
        Ok(self.http.account(out, started))
    }

    /// Folds a stream of chunks into one response, reporting text pieces as they come.
    async fn read_stream(
        &self,
        resp: reqwest::Response,
        progress: &(dyn Fn(StreamEvent) + Send + Sync),
    ) -> Result<WireResponse, LlmError> {
        let mut acc = StreamAccumulator::default();
        self.http
            .for_each_line(resp, |line| {
                let Some(data) = sse_data(line) else {
                    return Ok(true);
                };
                if data.trim() == "[DONE]" {
                    return Ok(false);
                }
                let chunk: WireResponse = serde_json::from_str(data).map_err(|e| {
                    LlmError::Protocol(format!("bad stream chunk: {e}: {}", self.http.redact(data)))
                })?;
                acc.add(chunk, progress);
                Ok(true)
            })
            .await?;
        Ok(acc.finish())
    }
}

impl ChatModel for OpenAiProvider {
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

// ---- wire format ----

#[derive(Debug, Serialize, Deserialize, Default)]
struct WireMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    /// Always a string when Baton sends it (never `null`).
    #[serde(default)]
    content: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    tool_calls: Vec<WireToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<String>,
    #[serde(default, skip_serializing)]
    refusal: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, Default, Clone)]
struct WireToolCall {
    /// Position of the call in a streamed answer (chunks of one call share it).
    #[serde(default, skip_serializing)]
    index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default)]
    function: WireFunction,
}

#[derive(Debug, Serialize, Deserialize, Default, Clone)]
struct WireFunction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// A JSON string on the wire; some servers send an object.
    #[serde(default)]
    arguments: Value,
}

#[derive(Debug, Deserialize, Default)]
struct WireResponse {
    #[serde(default)]
    model: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize, Default)]
struct WireChoice {
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    delta: Option<WireMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// The JSON body of a chat completions request for `model`.
fn request_body(model: &str, request: &ChatRequest, stream: bool) -> Value {
    let messages: Vec<WireMessage> = request.messages.iter().map(wire_message).collect();
    let mut body = json!({
        "model": model,
        "messages": messages,
        "stream": stream,
    });
    let obj = body.as_object_mut().expect("an object");
    if stream {
        obj.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if !request.tools.is_empty() {
        obj.insert(
            "tools".into(),
            Value::Array(request.tools.iter().map(wire_tool).collect()),
        );
        let choice = match &request.tool_choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        };
        obj.insert("tool_choice".into(), choice);
    }
    if let Some(schema) = &request.response_schema {
        obj.insert(
            "response_format".into(),
            json!({
                "type": "json_schema",
                "json_schema": {"name": schema.name, "schema": schema.schema, "strict": true},
            }),
        );
    }
    if let Some(n) = request.max_tokens {
        obj.insert("max_tokens".into(), json!(n));
    }
    if let Some(t) = request.temperature {
        obj.insert("temperature".into(), json!(t));
    }
    body
}

fn wire_tool(t: &ToolDefinition) -> Value {
    json!({
        "type": "function",
        "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
    })
}

fn wire_message(m: &Message) -> WireMessage {
    let role = match m.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    WireMessage {
        role: Some(role.to_string()),
        // `""`, never null: llama.cpp answers 500 to a null content next to tool calls.
        content: Some(m.content.clone()),
        tool_calls: m
            .tool_calls
            .iter()
            .map(|c| WireToolCall {
                index: None,
                id: Some(c.id.clone()),
                kind: Some("function".into()),
                function: WireFunction {
                    name: Some(c.name.clone()),
                    arguments: Value::String(c.arguments.to_string()),
                },
            })
            .collect(),
        tool_call_id: m.tool_call_id.clone(),
        refusal: None,
    }
}

/// The provider-neutral answer of a (complete or folded) response.
fn parse_response(
    wire: WireResponse,
    request: &ChatRequest,
    asked_model: &str,
) -> Result<ChatResponse, LlmError> {
    let choice = wire
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| LlmError::Protocol("the answer has no choices".into()))?;
    let msg = choice
        .message
        .ok_or_else(|| LlmError::Protocol("the answer's choice has no message".into()))?;
    let mut finish_reason = match choice.finish_reason.as_deref() {
        Some("stop") | None => FinishReason::Stop,
        Some("tool_calls") | Some("function_call") => FinishReason::ToolCalls,
        Some("length") => FinishReason::Length,
        Some("content_filter") => FinishReason::Refusal,
        Some(other) => FinishReason::Other(other.to_string()),
    };
    let mut content = msg.content.unwrap_or_default();
    if let Some(refusal) = msg.refusal.filter(|r| !r.is_empty()) {
        finish_reason = FinishReason::Refusal;
        if content.is_empty() {
            content = refusal;
        }
    }
    let mut tool_calls = Vec::with_capacity(msg.tool_calls.len());
    for (i, c) in msg.tool_calls.into_iter().enumerate() {
        let name = c
            .function
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| LlmError::Protocol(format!("tool call {i} has no function name")))?;
        tool_calls.push(ToolCallRequest {
            id: c
                .id
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| format!("call_{i}")),
            arguments: parse_arguments(&name, c.function.arguments)?,
            name,
        });
    }
    if tool_calls.is_empty()
        && let Some(call) = bare_tool_call(&content, &request.tools)?
    {
        tool_calls.push(call);
        content.clear();
    }
    if !tool_calls.is_empty() && finish_reason == FinishReason::Stop {
        finish_reason = FinishReason::ToolCalls;
    }
    let usage = wire.usage.unwrap_or_default();
    Ok(ChatResponse {
        message: Message {
            role: Role::Assistant,
            content,
            tool_calls,
            tool_call_id: None,
        },
        finish_reason,
        usage: Usage {
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
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

/// Tool call arguments as a JSON value: a JSON string is parsed (empty is `{}`), `null` is
/// `{}`, anything else is taken as it is.
pub(crate) fn parse_arguments(tool: &str, arguments: Value) -> Result<Value, LlmError> {
    match arguments {
        Value::String(s) if s.trim().is_empty() => Ok(json!({})),
        Value::String(s) => serde_json::from_str(&s).map_err(|e| {
            LlmError::Protocol(format!("arguments of tool call {tool} are not JSON: {e}"))
        }),
        Value::Null => Ok(json!({})),
        v => Ok(v),
    }
}

/// A tool call written as bare JSON in the answer's text (`{"name": …, "arguments": …}`,
/// possibly in a ```json fence or `<tool_call>` tags), when `name` is one of `tools`.
pub(crate) fn bare_tool_call(
    content: &str,
    tools: &[ToolDefinition],
) -> Result<Option<ToolCallRequest>, LlmError> {
    if tools.is_empty() {
        return Ok(None);
    }
    let mut text = content.trim();
    if let Some(inner) = text
        .strip_prefix("<tool_call>")
        .and_then(|t| t.trim_end().strip_suffix("</tool_call>"))
    {
        text = inner.trim();
    }
    if let Some(inner) = text.strip_prefix("```") {
        let inner = inner.strip_prefix("json").unwrap_or(inner);
        text = inner.trim_end().strip_suffix("```").unwrap_or(inner).trim();
    }
    if !text.starts_with('{') {
        return Ok(None);
    }
    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(text) else {
        return Ok(None);
    };
    let Some(Value::String(name)) = obj.remove("name") else {
        return Ok(None);
    };
    if !tools.iter().any(|t| t.name == name) {
        return Ok(None);
    }
    let arguments = obj
        .remove("arguments")
        .or_else(|| obj.remove("parameters"))
        .unwrap_or(Value::Null);
    Ok(Some(ToolCallRequest {
        id: "call_0".into(),
        arguments: parse_arguments(&name, arguments)?,
        name,
    }))
}

/// Folds streamed chunks into one [`WireResponse`].
#[derive(Default)]
struct StreamAccumulator {
    model: Option<String>,
    content: String,
    refusal: String,
    calls: Vec<WireToolCall>,
    finish_reason: Option<String>,
    usage: Option<WireUsage>,
}

impl StreamAccumulator {
    fn add(&mut self, chunk: WireResponse, progress: &(dyn Fn(StreamEvent) + Send + Sync)) {
        if chunk.model.is_some() {
            self.model = chunk.model;
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
            progress(StreamEvent::Tokens(u.completion_tokens));
        }
        for choice in chunk.choices {
            if choice.finish_reason.is_some() {
                self.finish_reason = choice.finish_reason;
            }
            let Some(delta) = choice.delta.or(choice.message) else {
                continue;
            };
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                self.content.push_str(&text);
                progress(StreamEvent::TextDelta(text));
            }
            if let Some(r) = delta.refusal {
                self.refusal.push_str(&r);
            }
            for piece in delta.tool_calls {
                let index = piece.index.unwrap_or(self.calls.len() as u32) as usize;
                while self.calls.len() <= index {
                    self.calls.push(WireToolCall {
                        function: WireFunction {
                            name: None,
                            arguments: Value::String(String::new()),
                        },
                        ..Default::default()
                    });
                }
                let call = &mut self.calls[index];
                if piece.id.is_some() {
                    call.id = piece.id;
                }
                if let Some(name) = piece.function.name {
                    call.function
                        .name
                        .get_or_insert_with(String::new)
                        .push_str(&name);
                }
                match (&mut call.function.arguments, piece.function.arguments) {
                    (Value::String(acc), Value::String(more)) => acc.push_str(&more),
                    (slot, Value::Null) => {
                        let _ = slot;
                    }
                    (slot, v) => *slot = v,
                }
            }
        }
    }

    fn finish(self) -> WireResponse {
        WireResponse {
            model: self.model,
            choices: vec![WireChoice {
                message: Some(WireMessage {
                    role: Some("assistant".into()),
                    content: Some(self.content),
                    tool_calls: self.calls,
                    tool_call_id: None,
                    refusal: (!self.refusal.is_empty()).then_some(self.refusal),
                }),
                delta: None,
                finish_reason: self.finish_reason,
            }],
            usage: self.usage,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> ToolDefinition {
        ToolDefinition {
            name: name.into(),
            description: String::new(),
            parameters: json!({"type": "object"}),
        }
    }

    #[test]
    fn bare_json_in_content_is_a_tool_call_only_for_an_offered_tool() {
        let tools = [tool("query_assets")];
        let c = bare_tool_call(
            r#"{"name": "query_assets", "arguments": "{\"env\": \"prod\"}"}"#,
            &tools,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.name, "query_assets");
        assert_eq!(c.arguments, json!({"env": "prod"}));
        let fenced = "```json\n{\"name\": \"query_assets\", \"arguments\": {\"a\": 1}}\n```";
        assert_eq!(
            bare_tool_call(fenced, &tools).unwrap().unwrap().arguments,
            json!({"a": 1})
        );
        let tagged = "<tool_call>\n{\"name\": \"query_assets\", \"arguments\": {}}\n</tool_call>";
        assert!(bare_tool_call(tagged, &tools).unwrap().is_some());
        assert!(
            bare_tool_call(r#"{"name": "rm_rf", "arguments": {}}"#, &tools)
                .unwrap()
                .is_none()
        );
        assert!(
            bare_tool_call(r#"{"name": "query_assets"}"#, &[])
                .unwrap()
                .is_none()
        );
        assert!(
            bare_tool_call("the answer is 42", &tools)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn an_assistant_turn_with_tool_calls_is_sent_with_empty_content_and_string_arguments() {
        let req = ChatRequest {
            messages: vec![Message {
                role: Role::Assistant,
                content: String::new(),
                tool_calls: vec![ToolCallRequest {
                    id: "c1".into(),
                    name: "t".into(),
                    arguments: json!({"x": 1}),
                }],
                tool_call_id: None,
            }],
            ..Default::default()
        };
        let body = request_body("m", &req, false);
        let m = &body["messages"][0];
        assert_eq!(m["content"], json!(""));
        assert_eq!(
            m["tool_calls"][0]["function"]["arguments"],
            json!("{\"x\":1}")
        );
        assert_eq!(m["tool_calls"][0]["type"], json!("function"));
    }
}
