//! Test doubles (feature `testing`): protocol-faithful fake model servers on loopback.
//!
//! A [`FakeServer`] speaks one wire format ([`Wire`]) on `127.0.0.1:<free port>`, answers each
//! request with the next [`FakeReply`] of its queue (status, headers such as `Retry-After`, a
//! JSON body, an SSE or NDJSON stream, an optional delay), checks each request the way the
//! real server would (a rejected request is answered with the real server's status and is not
//! given a scripted reply), and records every request it received.
//!
//! ```no_run
//! # async fn demo() {
//! use baton_llm::testing::{FakeServer, openai};
//! use baton_llm::{ChatModel, ChatRequest, Message, Role, ProviderSettings, OpenAiProvider};
//! let fake = FakeServer::openai().await;
//! fake.push(openai::text("hello"));
//! let model = OpenAiProvider::new(ProviderSettings::new("fake", fake.base_url(), "m")).unwrap();
//! let req = ChatRequest { messages: vec![Message::text(Role::User, "hi")], ..Default::default() };
//! assert_eq!(model.chat(&req).await.unwrap().message.content, "hello");
//! assert_eq!(fake.request_count(), 1);
//! assert_eq!(fake.requests()[0].body["messages"][0]["content"], "hi");
//! # }
//! ```
//!
//! With an empty queue the server answers HTTP 500 `no scripted reply left`, so a test that
//! makes one call too many fails loudly. The builders of each format's replies are in
//! [`openai`], [`anthropic`] and [`ollama`].
//!
//! [`LocalModel`] starts the real local model (llama-server) for a test, or says the test is
//! skipped when the environment does not name it.

pub mod anthropic;
mod local;
pub mod ollama;
pub mod openai;

pub use local::LocalModel;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which wire format a [`FakeServer`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI chat completions: `POST /v1/chat/completions`; [`FakeServer::base_url`] ends in
    /// `/v1`.
    OpenAi,
    /// Anthropic Messages: `POST /v1/messages`; [`FakeServer::base_url`] is the bare origin.
    Anthropic,
    /// Ollama's native chat: `POST /api/chat`; [`FakeServer::base_url`] is the bare origin.
    Ollama,
}

/// The body of a scripted reply.
#[derive(Debug, Clone)]
pub enum FakeBody {
    /// One JSON document (`content-type: application/json`).
    Json(Value),
    /// Server-sent events: each item is sent as `data: <item>\n\n`, one write per item
    /// (`content-type: text/event-stream`).
    Sse(Vec<String>),
    /// Newline-delimited JSON: one document per line, one write per line
    /// (`content-type: application/x-ndjson`).
    Ndjson(Vec<Value>),
    /// Server-sent events already framed (`event: …\ndata: …\n\n`), one write per item.
    RawSse(Vec<String>),
    /// Plain text (an HTML error page, a proxy's answer).
    Text(String),
}

/// One scripted answer: status, extra headers, body and a delay before the answer.
#[derive(Debug, Clone)]
pub struct FakeReply {
    /// HTTP status code.
    pub status: u16,
    /// Extra response headers (`Retry-After`).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: FakeBody,
    /// Wait this long before answering (to trip a client's timeout).
    pub delay: Duration,
}

impl FakeReply {
    /// A 200 with a JSON body.
    pub fn json(body: Value) -> FakeReply {
        FakeReply {
            status: 200,
            headers: Vec::new(),
            body: FakeBody::Json(body),
            delay: Duration::ZERO,
        }
    }
    /// An error `status` with a JSON error body `{"error": {"message": <message>, …}}`.
    pub fn error(status: u16, message: &str) -> FakeReply {
        FakeReply {
            status,
            ..FakeReply::json(serde_json::json!({
                "error": {"message": message, "type": "server_error", "code": status}
            }))
        }
    }
    /// A 200 streaming `events` as SSE `data:` lines.
    pub fn sse(events: Vec<String>) -> FakeReply {
        FakeReply {
            body: FakeBody::Sse(events),
            ..FakeReply::json(Value::Null)
        }
    }
    /// A 200 streaming `lines` as NDJSON.
    pub fn ndjson(lines: Vec<Value>) -> FakeReply {
        FakeReply {
            body: FakeBody::Ndjson(lines),
            ..FakeReply::json(Value::Null)
        }
    }
    /// With header `name: value`.
    pub fn with_header(mut self, name: &str, value: &str) -> FakeReply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    /// With `Retry-After: <seconds>`.
    pub fn retry_after(self, seconds: u64) -> FakeReply {
        self.with_header("retry-after", &seconds.to_string())
    }
    /// Answered after `delay`.
    pub fn delayed(mut self, delay: Duration) -> FakeReply {
        self.delay = delay;
        self
    }
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Path (`/v1/chat/completions`).
    pub path: String,
    /// Headers, names lowercase.
    pub headers: BTreeMap<String, String>,
    /// The JSON body (`Value::Null` when it was not JSON).
    pub body: Value,
    /// The body as received.
    pub raw: String,
}

#[derive(Default)]
struct Shared {
    queue: VecDeque<FakeReply>,
    requests: Vec<RecordedRequest>,
    api_key: Option<String>,
}

struct AppState {
    wire: Wire,
    shared: Mutex<Shared>,
}

/// A fake model server on loopback; stops when dropped.
pub struct FakeServer {
    addr: SocketAddr,
    wire: Wire,
    state: Arc<AppState>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    /// A fake OpenAI chat completions server.
    pub async fn openai() -> FakeServer {
        FakeServer::start(Wire::OpenAi).await
    }

    /// A fake Anthropic Messages server.
    pub async fn anthropic() -> FakeServer {
        FakeServer::start(Wire::Anthropic).await
    }

    /// A fake Ollama server.
    pub async fn ollama() -> FakeServer {
        FakeServer::start(Wire::Ollama).await
    }

    /// A fake server speaking `wire` on `127.0.0.1:<free port>`.
    pub async fn start(wire: Wire) -> FakeServer {
        let state = Arc::new(AppState {
            wire,
            shared: Mutex::new(Shared::default()),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the fake model server");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeServer {
            addr,
            wire,
            state,
            task,
        }
    }

    /// The base URL a provider is configured with (`http://127.0.0.1:<port>/v1` for OpenAI).
    pub fn base_url(&self) -> String {
        match self.wire {
            Wire::OpenAi => format!("http://{}/v1", self.addr),
            Wire::Anthropic | Wire::Ollama => format!("http://{}", self.addr),
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requires this API key (`Authorization: Bearer` for OpenAI and Ollama, `x-api-key` for
    /// Anthropic); other requests get 401.
    pub fn require_api_key(&self, key: &str) {
        self.shared().api_key = Some(key.to_string());
    }

    /// Queues `reply` as the answer to the next request.
    pub fn push(&self, reply: FakeReply) {
        self.shared().queue.push_back(reply);
    }

    /// Queues several replies, in order.
    pub fn push_all(&self, replies: impl IntoIterator<Item = FakeReply>) {
        self.shared().queue.extend(replies);
    }

    /// Every request received so far (rejected ones included), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared().requests.clone()
    }

    /// How many requests it received.
    pub fn request_count(&self) -> usize {
        self.shared().requests.len()
    }

    /// Scripted replies not yet used.
    pub fn pending_replies(&self) -> usize {
        self.shared().queue.len()
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.state.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
    raw: String,
) -> Response {
    let body: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
    let recorded = RecordedRequest {
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
        body: body.clone(),
        raw,
    };
    let reply = {
        let mut shared = state.shared.lock().unwrap_or_else(|e| e.into_inner());
        let checked = check(state.wire, &recorded, shared.api_key.as_deref());
        shared.requests.push(recorded);
        // A request the real server would reject does not consume a scripted reply.
        match checked {
            Err(rejection) => rejection,
            Ok(()) => shared
                .queue
                .pop_front()
                .unwrap_or_else(|| FakeReply::error(500, "no scripted reply left")),
        }
    };
    respond(reply).await
}

/// The real server's answer to a request it would reject, or `Ok` to serve the script.
fn check(wire: Wire, req: &RecordedRequest, api_key: Option<&str>) -> Result<(), FakeReply> {
    match wire {
        Wire::OpenAi => openai::check(req, api_key),
        Wire::Anthropic => anthropic::check(req, api_key),
        Wire::Ollama => ollama::check(req, api_key),
    }
}

async fn respond(reply: FakeReply) -> Response {
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = Response::builder().status(status);
    for (k, v) in &reply.headers {
        builder = builder.header(k, v);
    }
    let body = match reply.body {
        FakeBody::Json(v) => {
            builder = builder.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        FakeBody::Text(t) => {
            builder = builder.header("content-type", "text/plain");
            Body::from(t)
        }
        FakeBody::Sse(events) => {
            builder = builder.header("content-type", "text/event-stream");
            stream_body(
                events
                    .into_iter()
                    .map(|e| format!("data: {e}\n\n"))
                    .collect(),
            )
        }
        FakeBody::RawSse(events) => {
            builder = builder.header("content-type", "text/event-stream");
            stream_body(events)
        }
        FakeBody::Ndjson(lines) => {
            builder = builder.header("content-type", "application/x-ndjson");
            stream_body(lines.into_iter().map(|l| format!("{l}\n")).collect())
        }
    };
    builder
        .body(body)
        .unwrap_or_else(|_| Response::new(Body::from("bad scripted reply")))
}

/// A body written in `pieces`, one write each, with a short pause between them so a client
/// sees them arrive separately.
fn stream_body(pieces: Vec<String>) -> Body {
    let stream = futures::stream::unfold(pieces.into_iter(), |mut it| async move {
        let next = it.next()?;
        tokio::time::sleep(Duration::from_millis(2)).await;
        Some((Ok::<_, std::convert::Infallible>(next), it))
    });
    Body::from_stream(stream)
}
