//! One tonic server for whatever set of Baton services a process runs, plus the standard gRPC
//! health service (`grpc.health.v1.Health`) and server reflection, so `grpcurl` can list and
//! call everything.

use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

/// Serves `routes` on `addr` in plain HTTP/2 until `shutdown`. `names` are the
/// fully-qualified service names to report as SERVING (`baton.v1.TriggerService`, …).
/// Returns the bound address and the server task.
pub async fn serve(
    addr: SocketAddr,
    routes: Routes,
    names: &[&str],
    shutdown: CancellationToken,
) -> std::io::Result<(
    SocketAddr,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
)> {
    serve_tls(addr, routes, names, None, shutdown).await
}

/// [`serve`] over TLS when `tls` is given (see [`crate::tls::GrpcTlsConfig::server_config`];
/// with a client CA, mutual TLS).
pub async fn serve_tls(
    addr: SocketAddr,
    routes: Routes,
    names: &[&str],
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: CancellationToken,
) -> std::io::Result<(
    SocketAddr,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
)> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("grpc_tls: the certificate or key is unusable: {e}"),
            )
        })?;
    }
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in names {
        reporter
            .set_service_status(*name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(baton_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(std::io::Error::other)?;
    let routes = routes.add_service(health).add_service(reflection);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    // Without TCP_NODELAY, a response written in more than one segment waits for the client's
    // delayed ACK (Nagle's algorithm): ~40 ms per unary call on Linux loopback.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let task = tokio::spawn(async move {
        builder
            .trace_fn(request_span)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
    });
    Ok((local, task))
}

/// The span of one gRPC request: `grpc{path}`, a child of the caller's W3C `traceparent`
/// metadata when it sends one, so events published while handling the call continue its trace.
fn request_span(req: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc",
        path = %req.uri().path(),
        otel.kind = "server",
        trace_id = tracing::field::Empty,
    );
    baton_bus::trace::set_parent_from(&span, &|k| {
        req.headers().get(k).and_then(|v| v.to_str().ok())
    });
    baton_bus::trace::record_trace_id(&span);
    span
}
