//! The demo fleet: real HTTP web servers on loopback standing in for a production fleet.
//!
//! Each server has a configuration (string keys and values) and a health status:
//!
//! | request | answer |
//! |---|---|
//! | `GET /config` | `200 {"config": {...}}` |
//! | `PUT /config` with `{"config": {...}}` | `200 {"config": {...}, "applied": bool}`; a repeated `Idempotency-Key` is not applied twice (`applied: false`) |
//! | `GET /health` | `200 ok`, or `503 unhealthy` |
//! | `POST /admin/health` with `{"healthy": bool}` | sets the health now |
//! | `POST /admin/fail-after-change` with `{"enabled": bool}` | the next applied change makes it unhealthy |
//! | `GET /admin/state` | `{"config", "healthy", "applies", "fail_after_change"}` |
//!
//! [`Fleet::inventory_toml`] writes the inventory the drift runbook reads (format documented in
//! `baton-agent-runner`).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// A server's configuration: string keys to string values.
pub type ConfigMap = BTreeMap<String, String>;

/// What to start.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Asset group (`web`).
    pub group: String,
    /// Environment the assets belong to (`production`).
    pub environment: String,
    /// Id prefix (`web` gives `web-01`, `web-02`, …).
    pub prefix: String,
    /// How many servers.
    pub count: usize,
    /// The desired configuration.
    pub golden: ConfigMap,
    /// Indexes (0-based) of servers that start drifted from `golden`.
    pub drifted: Vec<usize>,
}

impl FleetSpec {
    /// The demo's production web tier: ten servers, six drifted.
    pub fn demo_web() -> FleetSpec {
        FleetSpec {
            group: "web".into(),
            environment: "production".into(),
            prefix: "web".into(),
            count: 10,
            golden: golden_web(),
            drifted: vec![1, 2, 4, 5, 7, 8],
        }
    }
}

/// The golden configuration of the demo's web tier.
pub fn golden_web() -> ConfigMap {
    [
        ("nginx_version", "1.24.0"),
        ("tls_min_version", "1.2"),
        ("worker_processes", "8"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A drifted variant of `golden` (older nginx, weaker TLS), different per server index.
pub fn drifted(golden: &ConfigMap, index: usize) -> ConfigMap {
    let mut c = golden.clone();
    c.insert("nginx_version".into(), "1.22.1".into());
    if index.is_multiple_of(2) {
        c.insert("tls_min_version".into(), "1.0".into());
    }
    c
}

#[derive(Debug, Default)]
struct ServerState {
    config: ConfigMap,
    healthy: bool,
    fail_after_change: bool,
    applies: u32,
    seen_keys: HashSet<String>,
    delay: std::time::Duration,
}

/// One running web server.
#[derive(Debug, Clone)]
pub struct WebServer {
    /// Asset id (`web-01`).
    pub id: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The host name in [`WebServer::url`] (the listening IP unless advertised otherwise).
    host: String,
    state: Arc<Mutex<ServerState>>,
}

impl WebServer {
    /// `http://127.0.0.1:<port>`, or `http://<advertised host>:<port>` (see
    /// [`Fleet::start_on`]).
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.addr.port())
    }
    /// Its current configuration.
    pub fn config(&self) -> ConfigMap {
        self.state.lock().unwrap().config.clone()
    }
    /// Replaces its configuration (as drift would).
    pub fn set_config(&self, config: ConfigMap) {
        self.state.lock().unwrap().config = config;
    }
    /// Sets its health.
    pub fn set_healthy(&self, healthy: bool) {
        self.state.lock().unwrap().healthy = healthy;
    }
    /// Makes the next applied change leave it unhealthy.
    pub fn fail_after_change(&self, enabled: bool) {
        self.state.lock().unwrap().fail_after_change = enabled;
    }
    /// Makes `PUT /config` answer only after `delay` (a slow server, to catch a rollout mid-phase).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.state.lock().unwrap().delay = delay;
    }
    /// How many changes it has applied.
    pub fn applies(&self) -> u32 {
        self.state.lock().unwrap().applies
    }
    /// True if it answers its health check with 200.
    pub fn is_healthy(&self) -> bool {
        self.state.lock().unwrap().healthy
    }
}

/// A set of running servers; stopped when dropped.
pub struct Fleet {
    /// The spec it was started from.
    pub spec: FleetSpec,
    /// The servers, in id order.
    pub servers: Vec<WebServer>,
    shutdown: CancellationToken,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[derive(Deserialize, Serialize)]
struct ConfigBody {
    config: ConfigMap,
}

#[derive(Deserialize)]
struct Flag {
    #[serde(alias = "healthy")]
    enabled: bool,
}

impl Fleet {
    /// Starts `spec.count` servers on free loopback ports.
    pub async fn start(spec: FleetSpec) -> std::io::Result<Fleet> {
        Fleet::start_on(spec, std::net::Ipv4Addr::LOCALHOST.into(), None).await
    }

    /// Starts `spec.count` servers on free ports of `ip`; the inventory names them by
    /// `advertise` (a host name other machines resolve, such as a container's service name)
    /// instead of `ip` when given. Errors: the listeners' (an address not of this machine).
    pub async fn start_on(
        spec: FleetSpec,
        ip: std::net::IpAddr,
        advertise: Option<String>,
    ) -> std::io::Result<Fleet> {
        let host = match (&advertise, ip) {
            (Some(h), _) => h.clone(),
            (None, std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
            (None, v4) => v4.to_string(),
        };
        let shutdown = CancellationToken::new();
        let mut servers = Vec::with_capacity(spec.count);
        for i in 0..spec.count {
            let config = if spec.drifted.contains(&i) {
                drifted(&spec.golden, i)
            } else {
                spec.golden.clone()
            };
            let state = Arc::new(Mutex::new(ServerState {
                config,
                healthy: true,
                ..Default::default()
            }));
            let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
            let addr = listener.local_addr()?;
            let app = Router::new()
                .route("/config", get(get_config).put(put_config))
                .route("/health", get(health))
                .route("/admin/health", post(set_health))
                .route("/admin/fail-after-change", post(set_fail_after_change))
                .route("/admin/state", get(admin_state))
                .with_state(state.clone());
            let sd = shutdown.clone();
            tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(sd.cancelled_owned())
                    .await;
            });
            servers.push(WebServer {
                id: format!("{}-{:02}", spec.prefix, i + 1),
                addr,
                host: host.clone(),
                state,
            });
        }
        Ok(Fleet {
            spec,
            servers,
            shutdown,
        })
    }

    /// The server with this id.
    pub fn server(&self, id: &str) -> Option<&WebServer> {
        self.servers.iter().find(|s| s.id == id)
    }

    /// Ids of servers whose configuration differs from the golden one.
    pub fn drifted_ids(&self) -> Vec<String> {
        self.servers
            .iter()
            .filter(|s| s.config() != self.spec.golden)
            .map(|s| s.id.clone())
            .collect()
    }

    /// The inventory (TOML) the drift runbook reads: one `[groups.<group>]` with the golden
    /// configuration, and one `[[assets]]` per server.
    pub fn inventory_toml(&self) -> String {
        #[derive(Serialize)]
        struct Group<'a> {
            kind: &'a str,
            golden: &'a ConfigMap,
        }
        #[derive(Serialize)]
        struct Asset<'a> {
            id: &'a str,
            group: &'a str,
            environment: &'a str,
            address: String,
        }
        #[derive(Serialize)]
        struct Inventory<'a> {
            groups: BTreeMap<&'a str, Group<'a>>,
            assets: Vec<Asset<'a>>,
        }
        let inv = Inventory {
            groups: [(
                self.spec.group.as_str(),
                Group {
                    kind: "web_server",
                    golden: &self.spec.golden,
                },
            )]
            .into(),
            assets: self
                .servers
                .iter()
                .map(|s| Asset {
                    id: &s.id,
                    group: &self.spec.group,
                    environment: &self.spec.environment,
                    address: s.url(),
                })
                .collect(),
        };
        toml::to_string(&inv).expect("inventory serialises")
    }

    /// Stops all servers.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

type Shared = State<Arc<Mutex<ServerState>>>;

async fn get_config(State(s): Shared) -> Json<ConfigBody> {
    Json(ConfigBody {
        config: s.lock().unwrap().config.clone(),
    })
}

async fn put_config(
    State(s): Shared,
    headers: HeaderMap,
    Json(body): Json<ConfigBody>,
) -> Json<serde_json::Value> {
    let delay = s.lock().unwrap().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut st = s.lock().unwrap();
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let fresh = key.map(|k| st.seen_keys.insert(k)).unwrap_or(true);
    if fresh {
        st.config = body.config;
        st.applies += 1;
        if st.fail_after_change {
            st.healthy = false;
            st.fail_after_change = false;
        }
    }
    Json(serde_json::json!({ "config": st.config, "applied": fresh }))
}

async fn health(State(s): Shared) -> (StatusCode, &'static str) {
    if s.lock().unwrap().healthy {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n")
    }
}

async fn set_health(State(s): Shared, Json(f): Json<Flag>) -> StatusCode {
    s.lock().unwrap().healthy = f.enabled;
    StatusCode::NO_CONTENT
}

async fn set_fail_after_change(State(s): Shared, Json(f): Json<Flag>) -> StatusCode {
    s.lock().unwrap().fail_after_change = f.enabled;
    StatusCode::NO_CONTENT
}

async fn admin_state(State(s): Shared) -> Json<serde_json::Value> {
    let st = s.lock().unwrap();
    Json(serde_json::json!({
        "config": st.config, "healthy": st.healthy, "applies": st.applies,
        "fail_after_change": st.fail_after_change,
    }))
}
