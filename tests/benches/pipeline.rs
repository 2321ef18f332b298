//! Trigger-to-completed through all six services in one process, on a real nats-server and
//! SQLite: a JSON trigger on `baton.trigger.bench` for the `assistant` role served by the
//! built-in no-op agent, in development (auto-approved), a no-op action, and the audit log
//! storing every event.
//!
//! `cargo bench -p baton-tests --bench pipeline` (add `-- --tasks 5000` to change the load).
//! Prints a table: sequential latency (p50, p90, p99, max), pipelined throughput, and how
//! long the audit log needed to catch up after the last completion.

use baton_proto::subject;
use baton_tests::test_config;
use futures::StreamExt;
use std::time::{Duration, Instant};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() {
    let sequential = arg("--sequential", 300);
    let tasks = arg("--tasks", 3000);
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.agents.noop_roles = vec!["assistant".into()];
    config.audit.database_url = baton_audit::Config::sqlite_url(data.path());
    config.log.filter = "error".into();
    baton_runtime::telemetry::init(&config.log);
    let baton = baton::up::Baton::start(config, &baton::up::ServiceName::ALL).await.expect("baton starts");
    let nats = async_nats::connect(&baton.config.nats.url).await.unwrap();
    let mut completed = nats.subscribe(subject::TASK_COMPLETED).await.unwrap();
    let mut failed = nats.subscribe(subject::TASK_FAILED).await.unwrap();
    nats.flush().await.unwrap();
    let trigger = |i: usize| {
        format!(r#"{{"text":"noop {i}","role":"assistant","environment":"development","idempotency_key":"bench-{i}"}}"#)
    };
    let wait_one = async |completed: &mut async_nats::Subscriber, failed: &mut async_nats::Subscriber| {
        tokio::select! {
            m = completed.next() => m.expect("completed subscription"),
            m = failed.next() => panic!("a task failed: {:?}", baton_bus::decode_event(&m.unwrap().payload)),
            _ = tokio::time::sleep(Duration::from_secs(30)) => panic!("no completion within 30 s"),
        }
    };

    // Warm up (connections, consumers, SQLite pages).
    for i in 0..50 {
        nats.publish(subject::trigger("bench"), trigger(i).into()).await.unwrap();
        wait_one(&mut completed, &mut failed).await;
    }

    // Sequential: one task in flight, trigger → completed.
    let mut lat = Vec::with_capacity(sequential);
    for i in 0..sequential {
        let t = Instant::now();
        nats.publish(subject::trigger("bench"), trigger(1_000_000 + i).into()).await.unwrap();
        wait_one(&mut completed, &mut failed).await;
        lat.push(t.elapsed());
    }
    lat.sort();

    // Pipelined: publish all, count completions.
    let audit_before = baton.ctx.metrics.audit_records.get();
    let t = Instant::now();
    let publisher = {
        let nats = nats.clone();
        tokio::spawn(async move {
            for i in 0..tasks {
                nats.publish(subject::trigger("bench"), trigger(2_000_000 + i).into()).await.unwrap();
            }
            nats.flush().await.unwrap();
        })
    };
    for _ in 0..tasks {
        wait_one(&mut completed, &mut failed).await;
    }
    let elapsed = t.elapsed();
    publisher.await.unwrap();
    // Wait until the audit log stops growing: it has stored every event of the run.
    let t_audit = Instant::now();
    let mut last = baton.ctx.metrics.audit_records.get();
    let audit_lag = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = baton.ctx.metrics.audit_records.get();
        if now == last {
            break t_audit.elapsed().saturating_sub(Duration::from_millis(20));
        }
        last = now;
    };
    let stored = last - audit_before;

    println!();
    println!("Baton pipeline benchmark: 6 services in one process, nats-server (file store), SQLite audit");
    println!("no-op agent and action, auto-approved; {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!("| measure                             | value        |");
    println!("|-------------------------------------|--------------|");
    println!("| sequential tasks                    | {:>12} |", sequential);
    println!("| trigger→completed p50               | {:>12} |", ms(pct(&lat, 0.50)));
    println!("| trigger→completed p90               | {:>12} |", ms(pct(&lat, 0.90)));
    println!("| trigger→completed p99               | {:>12} |", ms(pct(&lat, 0.99)));
    println!("| trigger→completed max               | {:>12} |", ms(*lat.last().unwrap()));
    println!("| pipelined tasks                     | {:>12} |", tasks);
    println!("| pipelined throughput                | {:>8.0} t/s |", tasks as f64 / elapsed.as_secs_f64());
    println!("| audit records stored (pipelined)    | {:>12} |", stored);
    println!("| audit caught up after last completed| {:>12} |", ms(audit_lag));
    baton.stop().await;
}
