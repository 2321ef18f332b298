//! baton-llm: language models behind one trait, [`ChatModel`].
//!
//! An agent (crates/agent-runner) talks to a model only through [`ChatModel::chat`]: a
//! provider-neutral [`ChatRequest`] (messages, tool definitions, an optional JSON schema for the
//! answer) in, a [`ChatResponse`] (the assistant's message with its tool calls, token usage,
//! latency, which provider and model served it) out. Providers translate this to and from their
//! wire formats: OpenAI-compatible chat completions, Anthropic Messages, Ollama's `/api/chat`.
//! A failover chain of providers is itself a [`ChatModel`], so an agent never knows how many
//! models stand behind it.
//!
//! The types here are the seam between the agent loop and the providers: keep them
//! provider-neutral (no field that only one wire format has).

pub mod accounting;
pub mod anthropic;
pub mod chain;
pub mod config;
mod http;
pub mod local;
pub mod ollama;
pub mod openai;
pub mod provider;
pub mod structured;
#[cfg(feature = "testing")]
pub mod testing;

pub use anthropic::AnthropicProvider;
pub use chain::{Circuit, FailoverChain, GuardedProvider, ProviderLimits};
pub use config::{LlmConfig, ProviderRegistry};
pub use ollama::OllamaProvider;
pub use openai::OpenAiProvider;
pub use provider::{ApiKey, Price, ProviderSettings};
pub use structured::{OutputSchema, StructuredAnswer, StructuredError, chat_structured};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// Who wrote a [`Message`] of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions from the agent's prompt template.
    System,
    /// The request and the context the agent gives the model.
    User,
    /// What the model answered (text and/or tool calls).
    Assistant,
    /// The result of one tool call, answering the [`ToolCallRequest`] with the same id.
    Tool,
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Text; may be empty (an assistant turn with only tool calls).
    pub content: String,
    /// Tool calls the model asked for ([`Role::Assistant`] only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallRequest>,
    /// For [`Role::Tool`]: the id of the call this message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A message of `role` with text only.
    pub fn text(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
    /// A [`Role::Tool`] message carrying the result (or error text) of call `id`.
    pub fn tool_result(id: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: Role::Tool,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(id.into()),
        }
    }
}

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallRequest {
    /// Id the provider gave the call (or one Baton made up when the wire format has none, e.g.
    /// a call sent as bare JSON in `content`); tool results refer to it.
    pub id: String,
    /// Tool name, as in [`ToolDefinition::name`].
    pub name: String,
    /// Arguments as a JSON value (providers that send a JSON string are parsed; unparseable
    /// arguments are a [`LlmError::Protocol`]).
    pub arguments: serde_json::Value,
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// Name the model calls it by (`query_assets`).
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON schema of its arguments (an object schema).
    pub parameters: serde_json::Value,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ToolChoice {
    /// The model decides (unreliable on small local models).
    #[default]
    Auto,
    /// No tool call: answer in text.
    None,
    /// Some tool call is required.
    Required,
    /// This tool must be called.
    Tool(String),
}

/// A JSON schema the final answer must satisfy (`response_format: json_schema` where the server
/// supports it; otherwise the schema is put in the prompt and the answer checked after).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseSchema {
    /// Schema name (`[a-zA-Z0-9_-]`, as OpenAI requires).
    pub name: String,
    /// The JSON schema.
    pub schema: serde_json::Value,
}

/// One request to a model.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The conversation so far, oldest first.
    pub messages: Vec<Message>,
    /// Tools offered; empty for none.
    pub tools: Vec<ToolDefinition>,
    /// Tool choice (ignored when `tools` is empty).
    pub tool_choice: ToolChoice,
    /// Schema of the answer, when the answer must be JSON.
    pub response_schema: Option<ResponseSchema>,
    /// Cap on output tokens.
    pub max_tokens: Option<u32>,
    /// Sampling temperature; agents use 0 for reproducible plans.
    pub temperature: Option<f32>,
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// A complete answer.
    Stop,
    /// It asked for tool calls.
    ToolCalls,
    /// It hit `max_tokens`.
    Length,
    /// It refused (a content filter, a refusal stop reason).
    Refusal,
    /// Anything else the provider said, verbatim.
    Other(String),
}

/// Tokens a call used, as the provider counted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Completion tokens.
    pub output_tokens: u32,
}

/// A model's answer with its accounting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The assistant's message (text and/or tool calls).
    pub message: Message,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// Tokens used.
    pub usage: Usage,
    /// Provider name as configured (`local`, `openai`, …) that served the call.
    pub provider: String,
    /// Model name as the provider reported it.
    pub model: String,
    /// Wall time of the call that succeeded, in milliseconds (retries excluded).
    pub latency_ms: u64,
    /// Estimated cost in micro-dollars when a price is configured, else 0.
    pub cost_micros: u64,
    /// Index in the failover list of the provider that served it (0: the first choice).
    pub fallback_index: u32,
}

/// Why a model call failed. Variants say whether the next provider should be tried.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// No answer within the configured timeout.
    #[error("model call timed out after {0} ms")]
    Timeout(u64),
    /// The provider answered 429; `retry_after_ms` is its `Retry-After`, when given.
    #[error("rate limited by the provider (retry after {retry_after_ms:?} ms)")]
    RateLimited {
        /// The provider's `Retry-After`, in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// The provider answered with another HTTP error status.
    #[error("provider answered HTTP {status}: {body}")]
    Http {
        /// HTTP status code.
        status: u16,
        /// The start of the response body (never the request, which may hold secrets).
        body: String,
    },
    /// The model refused to answer.
    #[error("the model refused: {0}")]
    Refusal(String),
    /// The answer could not be understood (bad JSON, missing fields).
    #[error("unexpected answer from the provider: {0}")]
    Protocol(String),
    /// The provider cannot be reached (connection refused, DNS, TLS) or its circuit is open.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// Every provider of a failover chain failed; one line per attempt.
    #[error("all model providers failed: {}", .0.join("; "))]
    Exhausted(Vec<String>),
    /// A configuration error (unknown provider kind, missing API key); not retried.
    #[error("invalid model configuration: {0}")]
    Config(String),
}

impl LlmError {
    /// True when another attempt (the same provider after backoff, or the next one) may work:
    /// timeouts, 429, 5xx, refusals (the next model may answer) and unreachable providers.
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Timeout(_)
            | LlmError::RateLimited { .. }
            | LlmError::Refusal(_)
            | LlmError::Unavailable(_) => true,
            LlmError::Http { status, .. } => *status >= 500,
            LlmError::Protocol(_) | LlmError::Exhausted(_) | LlmError::Config(_) => false,
        }
    }
}

/// Progress of a streamed answer, for watchers (`baton watch`).
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A piece of the answer's text.
    TextDelta(String),
    /// Tokens generated so far.
    Tokens(u32),
}

/// A language model (one provider, or a failover chain of them).
pub trait ChatModel: Send + Sync + 'static {
    /// Sends `request` and returns the complete answer.
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>>;

    /// Like [`ChatModel::chat`], streaming the answer and reporting progress to `progress` as
    /// it arrives; the result is the same complete answer. The default does not stream.
    fn chat_streaming<'a>(
        &'a self,
        request: &'a ChatRequest,
        progress: &'a (dyn Fn(StreamEvent) + Send + Sync),
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        let _ = progress;
        self.chat(request)
    }
}
