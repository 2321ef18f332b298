//! The HTTP side of a process: the operational endpoints every process serves — `/health`
//! (alive), `/ready` (connected to NATS, every service started, and every [`Readiness`] probe
//! a service added passing), `/metrics` (Prometheus text) — and the
//! routes services add through [`HttpRoutes`] (webhooks, a REST front), which require the same
//! bearer token as gRPC.

use crate::auth::{AuthError, Authenticator};
use crate::metrics::Metrics;
use axum::{
    Router,
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A readiness probe: returns `Err(reason)` when not ready.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The readiness probes the services of a process add at start (`ctx.readiness`), checked by
/// `/ready` after the NATS connection: the audit log's database answering, each service's own
/// NATS connection under `baton up`. A probe must be cheap and must not block: one that needs
/// I/O reads a state a background task keeps up to date.
#[derive(Default)]
pub struct Readiness {
    probes: std::sync::Mutex<Vec<(String, ReadyCheck)>>,
}

impl Readiness {
    /// Adds the probe `name` (`audit database`), reported as `<name>: <reason>` when it fails.
    pub fn add(&self, name: impl Into<String>, probe: ReadyCheck) {
        self.probes
            .lock()
            .expect("readiness lock")
            .push((name.into(), probe));
    }

    /// `Ok` when every probe passes, else the failures, `; `-separated.
    pub fn check(&self) -> Result<(), String> {
        let failures: Vec<String> = self
            .probes
            .lock()
            .expect("readiness lock")
            .iter()
            .filter_map(|(name, probe)| probe().err().map(|r| format!("{name}: {r}")))
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    ready: ReadyCheck,
}

/// The router of `/health`, `/ready`, `/metrics`; callers may merge more routes into it.
pub fn router(metrics: Arc<Metrics>, ready: ReadyCheck) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(AppState { metrics, ready })
}

async fn ready_handler(State(s): State<AppState>) -> impl IntoResponse {
    match (s.ready)() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// Routes a service adds to the process's HTTP server ([`Service::add_http`]), beside
/// `/health`, `/ready` and `/metrics`.
///
/// Every route added here is authenticated like a gRPC call: a request without a valid
/// `Authorization: Bearer <jwt>` is answered `401` (`403` is the handler's to give, for a
/// missing role) with the reason as text, and a handler finds the caller as
/// `axum::Extension<Principal>`. Paths must not collide with another service's or with the
/// operational endpoints (axum panics at start on a duplicate route, naming it).
///
/// [`Service::add_http`]: crate::service::Service::add_http
/// [`Principal`]: crate::auth::Principal
#[derive(Default)]
pub struct HttpRoutes {
    /// The routes added so far, not yet behind the authentication layer.
    router: Router,
}

impl HttpRoutes {
    /// Adds every route of `router` (which carries its own state, already applied).
    pub fn add(&mut self, router: Router) -> &mut HttpRoutes {
        self.router = std::mem::take(&mut self.router).merge(router);
        self
    }

    /// The added routes behind bearer-token authentication with `auth`.
    pub fn into_router(self, auth: Arc<Authenticator>) -> Router {
        self.router
            .layer(axum::middleware::from_fn_with_state(auth, require_token))
    }
}

/// HTTP routes a program adds to its processes as a plug-in (a webhook that turns a POST into
/// a trigger, a status page), without writing a service: register one in the process's
/// [`Plugins`](crate::plugins::Plugins) and every process serving HTTP mounts its routes,
/// built from the process's [`Context`](crate::Context), behind the same authentication as
/// [`HttpRoutes`].
#[derive(Clone)]
pub struct HttpPlugin {
    /// For logs (`billing-webhook`).
    pub name: String,
    /// Builds the routes (with their state applied) once, when the HTTP server starts.
    pub routes: Arc<dyn Fn(&crate::Context) -> Router + Send + Sync>,
}

impl HttpPlugin {
    /// A plug-in named `name` whose routes `routes` builds.
    pub fn new(
        name: &str,
        routes: impl Fn(&crate::Context) -> Router + Send + Sync + 'static,
    ) -> HttpPlugin {
        HttpPlugin {
            name: name.to_string(),
            routes: Arc::new(routes),
        }
    }
}

/// The authentication layer of [`HttpRoutes`]: verifies the bearer token and hands the
/// principal to the handler as a request extension.
async fn require_token(
    State(auth): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Response {
    match auth.authenticate_http(request.headers()).await {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(e @ (AuthError::MissingToken | AuthError::InvalidToken(_))) => {
            (StatusCode::UNAUTHORIZED, format!("{e}\n")).into_response()
        }
        Err(e @ AuthError::KeysUnavailable { .. }) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
        }
        Err(e) => (StatusCode::FORBIDDEN, format!("{e}\n")).into_response(),
    }
}

/// Binds `addr` and serves `router` until `shutdown`; returns the bound address and the task.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    use axum::serve::ListenerExt as _;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    // TCP_NODELAY, as on the gRPC listener: no Nagle delay on multi-segment responses.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an HTTP connection");
        }
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    });
    Ok((local, task))
}
