//! Unary gRPC and HTTP round trips from a real client on loopback, one call at a time over one
//! persistent connection, against all six services in one process (`baton up`'s code).
//!
//! `cargo bench -p baton-tests --bench unary` (`-- --calls 1000` to change the count). Prints
//! p50/p99/max per call. Its purpose is the Nagle stall: a response written in more than one
//! TCP segment (HTTP/2 headers, data and trailers; an HTTP/1 head and body) waits for the
//! client's delayed ACK (~40 ms on Linux) unless the listener sets `TCP_NODELAY`. Every row
//! well under a millisecond means no call waits; a row near 40 ms means one does.

use baton_proto::{ClassifyRequest, ListRolesRequest, ListTasksRequest, Trigger};
use baton_runtime::auth::Role;
use baton_tests::bench::{arg, pct};
use baton_tests::test_config;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

// The allocator `baton` ships with, so the figures are the binary's.
#[global_allocator]
static ALLOC: baton_runtime::Allocator = baton_runtime::Allocator;

/// Times `calls` sequential calls of `call` (after 20 unmeasured ones) and prints a row.
async fn row<F, Fut>(name: &str, calls: usize, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..20 {
        call().await;
    }
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        call().await;
        times.push(t.elapsed());
    }
    times.sort();
    let ms = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1e3);
    println!(
        "| {name:<40} | {:>10} | {:>10} | {:>10} |",
        ms(pct(&times, 0.5)),
        ms(pct(&times, 0.99)),
        ms(*times.last().unwrap())
    );
}

/// One `GET path` on a kept-alive HTTP/1.1 connection; reads the whole response.
async fn http_get(conn: &mut BufReader<tokio::net::TcpStream>, host: &str, path: &str) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    conn.get_mut().write_all(req.as_bytes()).await.unwrap();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).await.unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await.unwrap();
}

#[tokio::main]
async fn main() {
    let calls = arg("--calls", 500);
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.audit.database_url = baton_audit::Config::sqlite_url(data.path());
    config.common.log.filter = "error".into();
    baton_runtime::telemetry::init(&config.common.log);
    let baton = baton::up::Baton::start(config, &baton::up::ServiceName::ALL)
        .await
        .expect("baton starts");
    let token = baton.token("bench", "default", &[Role::Admin]);
    let c = baton::client::Clients::connect(&baton.grpc_url(), &token)
        .await
        .unwrap();
    let channel = tonic::transport::Channel::from_shared(baton.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();

    println!(
        "unary round trips, {calls} sequential calls each, tonic client / raw HTTP/1.1 on loopback"
    );
    println!(
        "| {:<40} | {:>10} | {:>10} | {:>10} |",
        "call", "p50", "p99", "max"
    );
    println!("|{:-<42}|{:->12}|{:->12}|{:->12}|", "", "", "", "");
    let health = tonic_health::pb::health_client::HealthClient::new(channel);
    row("grpc.health.v1.Health/Check", calls, || {
        let mut h = health.clone();
        async move {
            h.check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .unwrap();
        }
    })
    .await;
    let decisions = c.decisions.clone();
    row("DecisionService/Classify", calls, || {
        let mut d = decisions.clone();
        async move {
            d.classify(ClassifyRequest {
                trigger: Some(Trigger {
                    text: "Fix drift on production web servers".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        }
    })
    .await;
    row("DecisionService/ListRoles", calls, || {
        let mut d = decisions.clone();
        async move {
            d.list_roles(ListRolesRequest {}).await.unwrap();
        }
    })
    .await;
    let tasks = c.tasks.clone();
    row("TaskService/ListTasks", calls, || {
        let mut t = tasks.clone();
        async move {
            t.list_tasks(ListTasksRequest::default()).await.unwrap();
        }
    })
    .await;
    let host = baton.http_addr.to_string();
    let conn = tokio::sync::Mutex::new(BufReader::new(
        tokio::net::TcpStream::connect(&host).await.unwrap(),
    ));
    for path in ["/ready", "/metrics"] {
        row(&format!("HTTP GET {path} (keep-alive)"), calls, || {
            let host = host.clone();
            let conn = &conn;
            async move {
                let mut c = conn.lock().await;
                http_get(&mut c, &host, path).await;
            }
        })
        .await;
    }
    drop(decisions);
    baton.stop().await;
}
