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
use std::collections::BTreeMap;
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
