//! A loopback OTLP trace receiver for tests: the OpenTelemetry Collector's `TraceService` over
//! gRPC (tonic, from `opentelemetry-proto`), and `POST /v1/traces` with a protobuf body over
//! HTTP (axum), both keeping every span they receive in memory.
//!
//! ```no_run
//! # async fn f() {
//! let rx = baton_tests::otlp::OtlpReceiver::start("127.0.0.1:0").await;
//! // point Baton at rx.grpc_endpoint() (protocol grpc) or rx.http_endpoint() (http/protobuf)
//! let spans = rx.spans();
//! # }
//! ```
//!
//! A cluster test can bind it to an address its containers reach (`0.0.0.0:0`, or the Docker
//! bridge's) and set `OTEL_EXPORTER_OTLP_ENDPOINT` of every service to it.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::{CancellationToken, DropGuard};

/// One received span, with its ids as lowercase hex (as in a W3C `traceparent`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; empty for a root span.
    pub parent_span_id: String,
    /// The span's name (`ingestion handle`, `policy.evaluate`, …).
    pub name: String,
    /// The `service.name` of the resource that sent it.
    pub service_name: String,
    /// The span's attributes, values rendered as text (strings unquoted).
    pub attributes: BTreeMap<String, String>,
}

impl ReceivedSpan {
    /// The attribute `key`, or `""`.
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map(String::as_str).unwrap_or("")
    }
}

/// The spans received so far, shared by both transports.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<ReceivedSpan>>>);

impl Sink {
    fn take(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().expect("spans lock");
        for rs in request.resource_spans {
            let service_name = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(ReceivedSpan {
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        name: s.name,
                        service_name: service_name.clone(),
                        attributes: s.attributes.iter().map(attribute).collect(),
                    });
                }
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(kv: &KeyValue) -> (String, String) {
    (kv.key.clone(), text(kv.value.as_ref()))
}

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The receiver: a gRPC and an HTTP listener on the same host, stopped when dropped.
pub struct OtlpReceiver {
    /// Where the gRPC `TraceService` listens.
    pub grpc_addr: SocketAddr,
    /// Where `POST /v1/traces` listens.
    pub http_addr: SocketAddr,
    sink: Sink,
    _stop: DropGuard,
}

impl OtlpReceiver {
    /// Starts both listeners on `host:0`-style `bind` (`127.0.0.1:0`: two free loopback
    /// ports). Panics when it cannot bind (a test fixture).
    pub async fn start(bind: &str) -> OtlpReceiver {
        let sink = Sink::default();
        let stop = CancellationToken::new();
        let grpc = tokio::net::TcpListener::bind(bind)
            .await
            .expect("bind OTLP gRPC");
        let grpc_addr = grpc.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(grpc);
        let service = TraceServiceServer::new(sink.clone());
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                .await;
        });
        let http = tokio::net::TcpListener::bind(bind)
            .await
            .expect("bind OTLP HTTP");
        let http_addr = http.local_addr().unwrap();
        let http_sink = sink.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: bytes::Bytes| {
                let sink = http_sink.clone();
                async move {
                    match <ExportTraceServiceRequest as prost::Message>::decode(body) {
                        Ok(request) => {
                            sink.take(request);
                            let response = ExportTraceServiceResponse {
                                partial_success: None,
                            };
                            (
                                axum::http::StatusCode::OK,
                                [("content-type", "application/x-protobuf")],
                                prost::Message::encode_to_vec(&response),
                            )
                        }
                        Err(e) => (
                            axum::http::StatusCode::BAD_REQUEST,
                            [("content-type", "text/plain")],
                            e.to_string().into_bytes(),
                        ),
                    }
                }
            }),
        );
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(http, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        OtlpReceiver {
            grpc_addr,
            http_addr,
            sink,
            _stop: stop.drop_guard(),
        }
    }

    /// `http://<grpc_addr>`: the endpoint for protocol `grpc`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// `http://<http_addr>`: the base endpoint for protocol `http/protobuf` (the exporter
    /// appends `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.sink.0.lock().expect("spans lock").clone()
    }

    /// Polls until `done(spans)` holds, every 100 ms after calling `flush` (which should make
    /// the exporter send what it holds); returns the spans then, or `Err` with the spans
    /// received by `timeout`.
    pub async fn wait_until<F, Fut>(
        &self,
        timeout: Duration,
        flush: F,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Result<Vec<ReceivedSpan>, Vec<ReceivedSpan>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            flush().await;
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(spans);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The six stages, in pipeline order; a consumer span is named `<stage> handle`.
pub const STAGES: [&str; 6] = [
    "ingestion",
    "decision",
    "agent-runner",
    "validation",
    "execution",
    "audit",
];

/// A consumer's span (`<service> handle`): its stage (the `service` attribute).
pub fn stage(s: &ReceivedSpan) -> Option<&str> {
    s.name.ends_with(" handle").then(|| s.attr("service"))
}

/// The stage of the nearest consumer span above `s` (its parent, or the parent's parent, …)
/// among `by_id`; `None` when the chain leaves `by_id` first.
pub fn stage_above<'a>(
    s: &ReceivedSpan,
    by_id: &HashMap<&str, &'a ReceivedSpan>,
) -> Option<&'a str> {
    let mut id = s.parent_span_id.as_str();
    while let Some(p) = by_id.get(id) {
        if let Some(stage) = stage(p) {
            return Some(stage);
        }
        id = p.parent_span_id.as_str();
    }
    None
}

/// The trace id of task `task_id`: the trace of decision's consumer span for it.
pub fn trace_of_task(spans: &[ReceivedSpan], task_id: &str) -> Option<String> {
    spans
        .iter()
        .find(|s| stage(s) == Some("decision") && s.attr("task_id") == task_id)
        .map(|s| s.trace_id.clone())
}

/// Whether the task's trace has arrived whole: a consumer span of each of the six stages,
/// and audit's span for `task.completed` (the audit log stores the final event last).
pub fn task_trace_complete(spans: &[ReceivedSpan], task_id: &str) -> bool {
    let Some(trace) = trace_of_task(spans, task_id) else {
        return false;
    };
    let in_trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace).collect();
    let stages: BTreeSet<&str> = in_trace.iter().filter_map(|s| stage(s)).collect();
    STAGES.iter().all(|s| stages.contains(s))
        && in_trace.iter().any(|s| {
            stage(s) == Some("audit") && s.attr("subject") == baton_proto::subject::TASK_COMPLETED
        })
}

/// How the processes that sent a trace were laid out, for [`check_task_trace`].
#[derive(Debug, Clone, Default)]
pub struct TraceLayout {
    /// Each service in its own process (the compose cluster): a stage's spans carry
    /// `service.name` `baton-<stage>`. Otherwise all six in one process named `baton`.
    pub process_per_service: bool,
    /// `(service.name, n)`: that process (`baton-<stage>`) was killed (SIGKILL) after the
    /// first `n` spans arrived. A killed process never ends, so never exports, the spans it
    /// had open: those are *lost*, known as the missing parents of its spans among the `n`.
    /// A span whose parent is lost (the killed process's own, or another service's consumer
    /// span of an event the killed one published) counts as under the killed stage.
    pub killed: Option<(String, usize)>,
}

/// What [`check_task_trace`] found: the trace id and its spans per `service.name`.
#[derive(Debug, Clone)]
pub struct TaskTrace {
    /// 32 hex digits.
    pub trace_id: String,
    /// Span count per `service.name`.
    pub spans_by_service: BTreeMap<String, usize>,
    /// Spans whose parent was lost with the killed process.
    pub cut_short: usize,
}

/// Checks that task `task_id` is one trace across the six services with the right parent
/// links (call once [`task_trace_complete`] holds):
/// - every consumer span of the task is in the trace, which has one root: ingestion's
///   handling of the trigger;
/// - every other span's parent was received (except a killed process's, see
///   [`TraceLayout::killed`]);
/// - each stage's consumer span sits under the previous stage's (audit's under any stage
///   that published the event it stores);
/// - one `policy.evaluate` under validation; at least two `rollout.phase`, `rollout.action`
///   (each inside its phase, with its asset, succeeded) and `rollout.health_check` under
///   execution;
/// - each span comes from the process of its stage (`service.name`, per `layout`).
///
/// Returns what it found, or `Err` with what was wrong and a dump of the trace.
pub fn check_task_trace(
    spans: &[ReceivedSpan],
    task_id: &str,
    layout: &TraceLayout,
) -> Result<TaskTrace, String> {
    let trace = trace_of_task(spans, task_id)
        .ok_or_else(|| format!("no decision span of task {task_id} arrived"))?;
    let in_trace: Vec<(usize, &ReceivedSpan)> = spans
        .iter()
        .enumerate()
        .filter(|(_, s)| s.trace_id == trace)
        .collect();
    let by_id: HashMap<&str, &ReceivedSpan> = in_trace
        .iter()
        .map(|(_, s)| (s.span_id.as_str(), *s))
        .collect();
    let dump = || {
        in_trace
            .iter()
            .map(|(_, s)| {
                format!(
                    "{} <- {} [{}] {} {:?}",
                    s.span_id, s.parent_span_id, s.service_name, s.name, s.attributes
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let fail = |what: String| Err(format!("{what}; the trace:\n{}", dump()));
    // The spans the killed process had open when it died: the missing parents of the spans
    // it sent before.
    let lost: BTreeSet<&str> = match &layout.killed {
        Some((service, n)) => in_trace
            .iter()
            .filter(|(i, s)| i < n && &s.service_name == service)
            .map(|(_, s)| s.parent_span_id.as_str())
            .filter(|p| !p.is_empty() && !by_id.contains_key(p))
            .collect(),
        None => BTreeSet::new(),
    };
    let killed_stage = layout
        .killed
        .as_ref()
        .map(|(service, _)| service.strip_prefix("baton-").unwrap_or(service));
    // The stage above `s`: the nearest consumer span among its ancestors, or the killed
    // stage when the chain ends at a lost span.
    let stage_above = |s: &ReceivedSpan| -> Option<&str> {
        let mut id = s.parent_span_id.as_str();
        loop {
            if lost.contains(id) {
                return killed_stage;
            }
            let p = by_id.get(id)?;
            if let Some(stage) = stage(p) {
                return Some(stage);
            }
            id = p.parent_span_id.as_str();
        }
    };
    let service_of = |stage: &str| {
        if layout.process_per_service {
            format!("baton-{stage}")
        } else {
            "baton".to_string()
        }
    };

    // Every consumer span of the task is in this one trace.
    for s in spans
        .iter()
        .filter(|s| stage(s).is_some() && s.attr("task_id") == task_id)
    {
        if s.trace_id != trace {
            return fail(format!(
                "{} of the task is in trace {}, not {trace}",
                s.name, s.trace_id
            ));
        }
    }
    // One root: ingestion's handling of the trigger; every other span's parent was received.
    let roots: Vec<&ReceivedSpan> = in_trace
        .iter()
        .map(|(_, s)| *s)
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    if roots.len() != 1 {
        return fail(format!("{} root spans, expected one", roots.len()));
    }
    if stage(roots[0]) != Some("ingestion")
        || !roots[0].attr("subject").starts_with("baton.trigger.")
    {
        return fail(format!(
            "the root is {:?}, not ingestion's trigger",
            roots[0]
        ));
    }
    let mut cut_short = 0;
    for (_, s) in &in_trace {
        if s.parent_span_id.is_empty() || by_id.contains_key(s.parent_span_id.as_str()) {
            continue;
        }
        if lost.contains(s.parent_span_id.as_str()) {
            cut_short += 1;
        } else {
            return fail(format!("{} has a parent outside the trace", s.name));
        }
    }
    // Each stage's span is a child of (a span within) the previous stage's; audit's of any
    // stage that published the event it stores. Each comes from its stage's process.
    let previous = |stage: &str| match stage {
        "decision" => &STAGES[..1],
        "agent-runner" => &STAGES[1..2],
        "validation" => &STAGES[2..3],
        "execution" => &STAGES[3..4],
        "audit" => &STAGES[..5],
        _ => &STAGES[..0],
    };
    for (_, s) in &in_trace {
        let Some(this) = stage(s) else { continue };
        if s.service_name != service_of(this) {
            return fail(format!(
                "{} came from {:?}, not {:?}",
                s.name,
                s.service_name,
                service_of(this)
            ));
        }
        if this == "ingestion" {
            continue;
        }
        let above = stage_above(s);
        if !above.is_some_and(|a| previous(this).contains(&a)) {
            return fail(format!(
                "{} ({}) sits under {above:?}",
                s.name,
                s.attr("subject")
            ));
        }
    }
    // The spans inside the stages: policy evaluation, the rollout's phases, actions and checks.
    let named = |name: &str| in_trace.iter().filter(|(_, s)| s.name == name).count();
    if named("policy.evaluate") != 1 {
        return fail(format!(
            "{} policy.evaluate spans, expected 1",
            named("policy.evaluate")
        ));
    }
    for (name, stage_name) in [
        ("policy.evaluate", "validation"),
        ("rollout.phase", "execution"),
        ("rollout.action", "execution"),
        ("rollout.health_check", "execution"),
    ] {
        if name != "policy.evaluate" && named(name) < 2 {
            return fail(format!("{} {name} spans, expected at least 2", named(name)));
        }
        for (_, s) in in_trace.iter().filter(|(_, s)| s.name == name) {
            if s.service_name != service_of(stage_name) {
                return fail(format!("{name} came from {:?}", s.service_name));
            }
            let above = stage_above(s);
            if above != Some(stage_name) {
                return fail(format!("{name} {:?} sits under {above:?}", s.attributes));
            }
        }
    }
    for (_, s) in in_trace.iter().filter(|(_, s)| s.name == "rollout.action") {
        if s.attr("asset").is_empty() || s.attr("ok") != "true" {
            return fail(format!("rollout.action {:?}", s.attributes));
        }
        match by_id.get(s.parent_span_id.as_str()) {
            Some(phase) if phase.name == "rollout.phase" => {}
            None if lost.contains(s.parent_span_id.as_str()) => {}
            other => {
                return fail(format!(
                    "rollout.action {:?} is inside {:?}, not its phase",
                    s.attributes,
                    other.map(|p| &p.name)
                ));
            }
        }
    }
    let mut spans_by_service = BTreeMap::new();
    for (_, s) in &in_trace {
        *spans_by_service.entry(s.service_name.clone()).or_default() += 1;
    }
    Ok(TaskTrace {
        trace_id: trace,
        spans_by_service,
        cut_short,
    })
}
