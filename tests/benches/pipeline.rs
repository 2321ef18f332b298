//! Trigger-to-completed through all six services in one process, on a real nats-server and
//! SQLite: a JSON trigger on `baton.trigger.bench` for the `assistant` role served by the
//! built-in no-op agent, in development (auto-approved), a no-op action, and the audit log
//! storing every event.
//!
//! `cargo bench -p baton-tests --bench pipeline` (add `-- --tasks 5000` to change the load,
//! `-- --sequential 300` the sequential run, `-- --without-audit` to run the five other
//! services only and see what the audit log costs, `-- --without-bare` to skip the reference,
//! `-- --split` to run each service as its own `baton serve <service>` process — build the
//! binary first with `cargo build --release -p baton`; `-- --sustained-rate 400` and
//! `-- --sustained-secs 3` set the paced run described below, `--sustained-rate 0` skips it;
//! `-- --audit-linger-ms 0` sets `audit.batch_linger`, to see what the linger saves).
//! First runs the bare 6-stage JetStream chain (`common::bare_chain`, the `bare_chain` bench)
//! with the same load, then Baton, and prints them side by side with the ratios — on a shared
//! machine whose speed varies from run to run, the ratio is the figure to compare. Then
//! Baton's own table: sequential latency (p50, p90, p99, max), pipelined throughput, how long
//! the audit log needed to catch up after the last completion, CPU, the JetStream operations
//! per task (per stream and consumer), the time in each service's handler, and where a
//! sequential task's time goes: the p50 and p99 between consecutive events of one task, by the
//! server's timestamps, so a ratio to the bare chain can be traced to a hop. Last, a paced
//! run at a sustained rate below the maximum (by default half the pipelined throughput, for 3 s)
//! gives the audit log's lag at that rate — event time to storage, from
//! `baton_audit_lag_seconds` (in-process runs only) — and how long it needed to catch up after
//! the paced run's last completion.

mod common;

use baton_proto::subject;
use baton_tests::bench::{arg, flag, pct};
use baton_tests::test_config;
use common::ms;
use futures::StreamExt;
use std::time::{Duration, Instant};

// The allocator `baton` ships with, so the figures are the binary's.
#[global_allocator]
static ALLOC: baton_runtime::Allocator = baton_runtime::Allocator;

#[tokio::main]
async fn main() {
    let sequential = arg("--sequential", 300);
    let tasks = arg("--tasks", 3000);
    let sustained_secs = arg("--sustained-secs", 3);
    let with_audit = !flag("--without-audit");
    let split = flag("--split");
    let bare = if flag("--without-bare") {
        None
    } else {
        Some(common::bare_chain(sequential, tasks).await)
    };
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.agents.noop_roles = vec!["assistant".into()];
    config.audit.database_url = baton_audit::Config::sqlite_url(data.path());
    if std::env::args().any(|a| a == "--audit-linger-ms") {
        config.audit.batch_linger = Duration::from_millis(arg("--audit-linger-ms", 0) as u64);
    }
    config.common.log.filter = "error".into();
    // The default, not the tests' 2 s: on a loaded machine a burst's messages can wait longer
    // than 2 s in a consumer's buffer, and their redeliveries would be counted as the path's cost.
    config.common.nats.ack_wait = baton_bus::BusConfig::default().ack_wait;
    baton_runtime::telemetry::init(&config.common.log);
    let services: Vec<baton::up::ServiceName> = baton::up::ServiceName::ALL
        .into_iter()
        .filter(|s| with_audit || *s != baton::up::ServiceName::Audit)
        .collect();
    // In-process: all services in this process. Split: this process runs nats-server only,
    // and each service is a `baton serve <service>` child with its own NATS identity.
    let (baton, children) = if split {
        let baton = baton::up::Baton::start(config, &[])
            .await
            .expect("nats-server starts");
        let children = spawn_services(&baton, &services, data.path());
        (baton, children)
    } else {
        let baton = baton::up::Baton::start(config, &services)
            .await
            .expect("baton starts");
        (baton, Vec::new())
    };
    let admin = baton_bus::identity::ADMIN;
    let seed = baton
        .identities
        .as_ref()
        .and_then(|i| i.seed_file(admin))
        .unwrap();
    let nats = baton_bus::identity::client_as(&baton.config.common.nats.url, admin, seed)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(nats.clone());
    let mut completed = nats.subscribe(subject::TASK_COMPLETED).await.unwrap();
    let mut failed = nats.subscribe(subject::TASK_FAILED).await.unwrap();
    nats.flush().await.unwrap();
    let trigger = |i: usize| {
        format!(
            r#"{{"text":"noop {i}","role":"assistant","environment":"development","idempotency_key":"bench-{i}"}}"#
        )
    };
    let wait_within = async |completed: &mut async_nats::Subscriber,
                             failed: &mut async_nats::Subscriber,
                             within: Duration| {
        tokio::select! {
            m = completed.next() => m.expect("completed subscription"),
            m = failed.next() => panic!("a task failed: {:?}", baton_bus::decode_event(&m.unwrap().payload)),
            _ = tokio::time::sleep(within) => panic!("no completion within {within:?}"),
        }
    };
    let wait_one = async |completed: &mut async_nats::Subscriber,
                          failed: &mut async_nats::Subscriber| {
        wait_within(completed, failed, Duration::from_secs(30)).await
    };

    // Split: the first task waits for the children to start (their consumers pick it up).
    if split {
        nats.publish(
            subject::trigger("default", "bench"),
            trigger(999_999).into(),
        )
        .await
        .unwrap();
        wait_within(&mut completed, &mut failed, Duration::from_secs(120)).await;
    }

    // Warm up (connections, consumers, SQLite pages).
    for i in 0..50 {
        nats.publish(subject::trigger("default", "bench"), trigger(i).into())
            .await
            .unwrap();
        wait_one(&mut completed, &mut failed).await;
    }

    // Let the audit log catch up with the warm-up, so its tail is not counted as the
    // sequential run's events (on a slow build that made `per_task` one too many, and the
    // pipelined run then waited for events that never come).
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Sequential: one task in flight, trigger → completed.
    let audit_records = || baton.ctx.metrics.audit_records.get();
    let audit_batches = || baton.ctx.metrics.audit_batches.get();
    let audit_before_seq = audit_records();
    let batches_before_seq = audit_batches();
    let stream = js
        .get_stream(&baton.config.common.nats.stream)
        .await
        .unwrap();
    let last_sequence = async || stream.clone().info().await.unwrap().state.last_sequence;
    let first_seq = last_sequence().await + 1;
    let mut lat = Vec::with_capacity(sequential);
    for i in 0..sequential {
        let t = Instant::now();
        nats.publish(
            subject::trigger("default", "bench"),
            trigger(1_000_000 + i).into(),
        )
        .await
        .unwrap();
        wait_one(&mut completed, &mut failed).await;
        lat.push(t.elapsed());
    }
    lat.sort();
    let hops = hops(&stream, first_seq, last_sequence().await).await;

    // Every task makes the same events: learn how many from the sequential run (once the audit
    // log has caught up with it).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let audit_before = audit_records();
    let per_task = ((audit_before - audit_before_seq) as f64 / sequential as f64).round();
    // The audit log's commits (one database transaction each) in the sequential run.
    let commits_seq = Commits::new(
        audit_batches() - batches_before_seq,
        audit_before - audit_before_seq,
        sequential,
    );
    let batches_before = audit_batches();

    // Pipelined: publish all, count completions.
    let nats_pid = nats_server_pid(data.path());
    let written_0 = storage_writes();
    let child_pids: Vec<String> = children
        .iter()
        .filter_map(|c| c.id())
        .map(|p| p.to_string())
        .collect();
    let cpu_baton_now = || {
        if split {
            child_pids.iter().map(|p| cpu_seconds(p)).sum()
        } else {
            cpu_seconds("self")
        }
    };
    let (cpu_baton_0, cpu_nats_0) = (
        cpu_baton_now(),
        nats_pid.as_deref().map(cpu_seconds).unwrap_or(0.0),
    );
    // Audit acks cumulatively: its acks are counted, not assumed one per delivery (every
    // consumer exists by now, in split runs too).
    let acks = common::AckTap::start(&nats, &js).await;
    let counts_0 = common::Counts::read(&js, Some(&acks)).await;
    let t = Instant::now();
    let publisher = {
        let nats = nats.clone();
        tokio::spawn(async move {
            for i in 0..tasks {
                nats.publish(
                    subject::trigger("default", "bench"),
                    trigger(2_000_000 + i).into(),
                )
                .await
                .unwrap();
            }
            nats.flush().await.unwrap();
        })
    };
    for _ in 0..tasks {
        wait_one(&mut completed, &mut failed).await;
    }
    let elapsed = t.elapsed();
    publisher.await.unwrap();
    let (cpu_baton, cpu_nats) = (
        cpu_baton_now() - cpu_baton_0,
        nats_pid.as_deref().map(cpu_seconds).unwrap_or(0.0) - cpu_nats_0,
    );
    // Wait until the audit log holds every event of the run.
    // In-process, audit's record counter; split, audit's consumer (ack after commit, so
    // nothing pending or unacked means every event is stored).
    let expected = audit_before + (per_task * tasks as f64).round() as u64;
    let t_audit = Instant::now();
    while with_audit && t_audit.elapsed() < Duration::from_secs(120) {
        let caught_up = if split {
            let bus = &baton.ctx.bus;
            match bus
                .consumer_info(&bus.config().stream, baton_audit::DURABLE)
                .await
            {
                Ok(info) => info.num_pending == 0 && info.num_ack_pending == 0,
                Err(_) => false,
            }
        } else {
            audit_records() >= expected
        };
        if caught_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let audit_lag = t_audit.elapsed();
    // Let the last acks land before counting deliveries.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cost = common::Counts::read(&js, Some(&acks))
        .await
        .since(&counts_0, tasks);
    let throughput = tasks as f64 / elapsed.as_secs_f64();
    let written = storage_writes().saturating_sub(written_0);
    let stored = audit_records() - audit_before;
    let commits_pipelined = Commits::new(audit_batches() - batches_before, stored, tasks);

    // Sustained: tasks published at a steady rate below the maximum; the audit log's lag at
    // that rate (what an operator sees in steady state), not after a burst.
    let rate = arg("--sustained-rate", (throughput / 2.0) as usize);
    let sustained = if rate > 0 && sustained_secs > 0 {
        let n = rate * sustained_secs;
        let lag_0 = lag_histogram(&baton.ctx.metrics.render());
        let audit_0 = audit_records();
        let counts_0 = common::Counts::read(&js, Some(&acks)).await;
        let publisher = {
            let nats = nats.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
                for i in 0..n {
                    tick.tick().await;
                    nats.publish(
                        subject::trigger("default", "bench"),
                        trigger(3_000_000 + i).into(),
                    )
                    .await
                    .unwrap();
                }
                nats.flush().await.unwrap();
            })
        };
        for _ in 0..n {
            wait_one(&mut completed, &mut failed).await;
        }
        publisher.await.unwrap();
        let expected = audit_0 + (per_task * n as f64).round() as u64;
        let t = Instant::now();
        while with_audit && !split && t.elapsed() < Duration::from_secs(60) {
            if audit_records() >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let caught_up = t.elapsed();
        let lag = lag_histogram(&baton.ctx.metrics.render()).since(&lag_0);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cost = common::Counts::read(&js, Some(&acks))
            .await
            .since(&counts_0, n);
        Some((rate, n, caught_up, lag, cost))
    } else {
        None
    };

    println!();
    println!(
        "Baton pipeline benchmark: {} {}, nats-server (file store)",
        if with_audit {
            "6 services, SQLite audit,"
        } else {
            "5 services (no audit)"
        },
        if split {
            "one `baton serve` process each"
        } else {
            "in one process"
        }
    );
    if split {
        println!(
            "(split: audit records, events per task, SQLite writes and handler times are in the \
             children and not shown; CPU is the children's)"
        );
    }
    println!(
        "no-op agent and action, auto-approved; {} cores; audit.batch_linger {:?}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        baton.config.audit.batch_linger
    );
    println!("| measure                             | value        |");
    println!("|-------------------------------------|--------------|");
    println!(
        "| sequential tasks                    | {:>12} |",
        sequential
    );
    println!(
        "| trigger→completed p50               | {:>12} |",
        ms(pct(&lat, 0.50))
    );
    println!(
        "| trigger→completed p90               | {:>12} |",
        ms(pct(&lat, 0.90))
    );
    println!(
        "| trigger→completed p99               | {:>12} |",
        ms(pct(&lat, 0.99))
    );
    println!(
        "| trigger→completed max               | {:>12} |",
        ms(*lat.last().unwrap())
    );
    println!("| pipelined tasks                     | {:>12} |", tasks);
    println!(
        "| pipelined throughput                | {:>8.0} t/s |",
        throughput
    );
    if !split {
        println!("| audit records stored (pipelined)    | {:>12} |", stored);
    }
    println!(
        "| audit caught up after last completed| {:>12} |",
        ms(audit_lag)
    );
    if !split {
        println!(
            "| events per task                     | {:>12.1} |",
            per_task
        );
        for (run, c) in [
            ("sequential", &commits_seq),
            ("pipelined", &commits_pipelined),
        ] {
            println!(
                "| {:<36}| {:>12.2} |",
                format!("audit commits per task, {run}"),
                c.per_task()
            );
            println!(
                "| {:<36}| {:>12.1} |",
                format!("audit records per commit, {run}"),
                c.records_per_commit()
            );
        }
        println!(
            "| storage writes per task (SQLite)    | {:>9.1} KB |",
            written as f64 / tasks as f64 / 1024.0
        );
    }
    println!(
        "| CPU, baton (all services), pipelined| {:>8.2} cores |",
        cpu_baton / elapsed.as_secs_f64()
    );
    println!(
        "| CPU, nats-server, pipelined         | {:>8.2} cores |",
        cpu_nats / elapsed.as_secs_f64()
    );
    if let Some((rate, n, caught_up, lag, _)) = &sustained
        && with_audit
        && !split
    {
        println!("| sustained run: tasks at {rate:>5} t/s   | {n:>12} |");
        println!(
            "| audit lag at that rate, mean        | {:>12} |",
            ms(lag.mean())
        );
        println!(
            "| audit lag at that rate, p50 (bound) | {:>9.0} ms |",
            lag.quantile_bound(0.50) * 1e3
        );
        println!(
            "| audit lag at that rate, p99 (bound) | {:>9.0} ms |",
            lag.quantile_bound(0.99) * 1e3
        );
        println!(
            "| audit caught up after last (paced)  | {:>12} |",
            ms(*caught_up)
        );
    }
    println!();
    cost.print("task (pipelined)");
    if with_audit && !split {
        println!(
            "audit commits per task: {:.2} sequential, {:.2} pipelined ({:.1} and {:.1} records \
             per commit)",
            commits_seq.per_task(),
            commits_pipelined.per_task(),
            commits_seq.records_per_commit(),
            commits_pipelined.records_per_commit()
        );
    }
    if let Some((rate, _, _, _, cost)) = &sustained {
        println!();
        cost.print(&format!("task (at {rate} t/s)"));
    }
    if !split {
        println!();
        println!("Time in each service's handler (from baton_handler_seconds, all runs):");
        println!("| service       | messages | mean      |");
        println!("|---------------|----------|-----------|");
        for (service, count, sum) in handler_totals(&baton.ctx.metrics.render()) {
            println!(
                "| {service:<13} | {count:>8} | {:>6.3} ms |",
                sum / count as f64 * 1e3
            );
        }
    }
    println!();
    println!(
        "Where a sequential task's time goes: between consecutive events of one task, by the \
         server's timestamps (delivery + handler + publish of the next)"
    );
    println!("| from → to                                              | p50       | p99       |");
    println!("|--------------------------------------------------------|-----------|-----------|");
    for (hop, mut times) in hops {
        times.sort_unstable();
        let at = |p: f64| pct(&times, p).as_secs_f64() * 1e3;
        println!("| {hop:<54} | {:>6.3} ms | {:>6.3} ms |", at(0.5), at(0.99));
    }
    if let Some(bare) = &bare {
        println!();
        println!(
            "Side by side, one run: bare {}-stage chain vs Baton (sequential {sequential}, \
             pipelined {tasks})",
            common::STAGES
        );
        println!("| measure                  | bare chain   | Baton        | Baton / bare |");
        println!("|--------------------------|--------------|--------------|--------------|");
        for (name, p) in [("sequential p50", 0.50), ("sequential p99", 0.99)] {
            let (b, t) = (pct(&bare.latencies, p), pct(&lat, p));
            println!(
                "| {name:<24} | {:>12} | {:>12} | {:>11.2}x |",
                ms(b),
                ms(t),
                t.as_secs_f64() / b.as_secs_f64()
            );
        }
        println!(
            "| pipelined throughput     | {:>8.0} m/s | {:>8.0} t/s | {:>11.0}% |",
            bare.throughput,
            throughput,
            throughput / bare.throughput * 100.0
        );
        println!(
            "| JetStream ops per unit   | {:>12.1} | {:>12.1} | {:>11.2}x |",
            bare.cost.total(),
            cost.total(),
            cost.total() / bare.cost.total()
        );
    }
    for mut child in children {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    baton.stop().await;
}

/// The time between consecutive messages of the main stream from `first` to `last` (one task
/// in flight at a time, so consecutive messages are consecutive steps of one task), by the
/// server's receive timestamps (to the microsecond), keyed by `from → to` subject in the order
/// first seen.
/// The step from a task's last event to the next task's trigger (the bench's turnaround) is
/// left out.
async fn hops(
    stream: &async_nats::jetstream::stream::Stream,
    first: u64,
    last: u64,
) -> Vec<(String, Vec<Duration>)> {
    let mut hops: Vec<(String, Vec<Duration>)> = Vec::new();
    let mut previous: Option<async_nats::jetstream::message::StreamMessage> = None;
    for seq in first..=last {
        let Ok(msg) = stream.get_raw_message(seq).await else {
            continue;
        };
        if let Some(p) = previous.take()
            && subject::parse_trigger(&msg.subject).is_none()
        {
            let hop = format!("{} → {}", p.subject, msg.subject);
            let micros = (msg.time - p.time).whole_microseconds().max(0) as u64;
            let took = Duration::from_micros(micros);
            match hops.iter_mut().find(|(h, _)| *h == hop) {
                Some((_, v)) => v.push(took),
                None => hops.push((hop, vec![took])),
            }
        }
        previous = Some(msg);
    }
    hops
}

/// Starts `baton serve <service>` for each of `services`, against the nats-server of `baton`
/// and with its configuration, each connecting as its own NATS identity (its configuration in
/// `<data>/serve-<service>.toml`, its log in `<data>/serve-<service>.log`). The `baton`
/// executable is `$BATON_BIN`, else the one next to this bench's (`cargo build --release -p
/// baton` first). The children are killed when dropped.
fn spawn_services(
    baton: &baton::up::Baton,
    services: &[baton::up::ServiceName],
    data: &std::path::Path,
) -> Vec<tokio::process::Child> {
    let bin = std::env::var_os("BATON_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("the bench's path");
            // target/<profile>/deps/pipeline-<hash> → target/<profile>/baton
            exe.parent()
                .and_then(|deps| deps.parent())
                .expect("the bench sits in target/<profile>/deps")
                .join("baton")
        });
    assert!(
        bin.exists(),
        "--split runs `baton serve`, and {} does not exist: build it first with \
         `cargo build --release -p baton`, or set BATON_BIN",
        bin.display()
    );
    let ids = baton
        .identities
        .as_ref()
        .expect("baton started nats-server");
    services
        .iter()
        .map(|&service| {
            let mut config = baton.config.clone();
            config.common.nats =
                ids.bus_config(&config.common.nats, &baton::nats_auth::user_of(service));
            let file = data.join(format!("serve-{service}.toml"));
            std::fs::write(&file, config.to_toml().expect("config as TOML")).unwrap();
            let log = std::fs::File::create(data.join(format!("serve-{service}.log"))).unwrap();
            tokio::process::Command::new(&bin)
                .arg("serve")
                .arg(service.to_string())
                .env("BATON_CONFIG", &file)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {} serve {service}: {e}", bin.display()))
        })
        .collect()
}

/// Bytes this process caused to be written to storage (`write_bytes` of /proc/self/io; the
/// SQLite audit log and its WAL — nats-server is another process).
fn storage_writes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of a process (`self` or a pid), from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" of the command name: utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The pid of the nats-server whose store is under `data`.
fn nats_server_pid(data: &std::path::Path) -> Option<String> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        (cmd.contains("nats-server") && cmd.contains(&*data.to_string_lossy()))
            .then(|| e.file_name().to_string_lossy().to_string())
    })
}

/// (service, messages, seconds) summed over outcomes, from the Prometheus text.
fn handler_totals(text: &str) -> Vec<(String, u64, f64)> {
    let mut totals: std::collections::BTreeMap<String, (u64, f64)> = Default::default();
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let service = name
            .split("service=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default()
            .to_string();
        let value: f64 = value.parse().unwrap_or(0.0);
        if name.starts_with("baton_handler_seconds_count") {
            totals.entry(service).or_default().0 += value as u64;
        } else if name.starts_with("baton_handler_seconds_sum") {
            totals.entry(service).or_default().1 += value;
        }
    }
    totals
        .into_iter()
        .filter(|(_, (c, _))| *c > 0)
        .map(|(s, (c, t))| (s, c, t))
        .collect()
}

/// The audit log's commits in one run (from `baton_audit_batches_total` and
/// `baton_audit_records_total`, in-process runs only).
struct Commits {
    /// Batches committed (database transactions).
    batches: u64,
    /// Records they stored.
    records: u64,
    /// Tasks of the run.
    tasks: usize,
}

impl Commits {
    fn new(batches: u64, records: u64, tasks: usize) -> Commits {
        Commits {
            batches,
            records,
            tasks,
        }
    }

    /// Database transactions per task.
    fn per_task(&self) -> f64 {
        self.batches as f64 / self.tasks.max(1) as f64
    }

    /// Records stored per transaction.
    fn records_per_commit(&self) -> f64 {
        self.records as f64 / self.batches.max(1) as f64
    }
}

/// A histogram read from the Prometheus text: cumulative counts per upper bound, sum, count.
#[derive(Default)]
struct LagHistogram {
    /// (upper bound in seconds, cumulative count), in the order printed (ascending, `+Inf` last).
    buckets: Vec<(f64, u64)>,
    /// Sum of the observations, seconds.
    sum: f64,
    /// Number of observations.
    count: u64,
}

impl LagHistogram {
    /// What was observed between `before` and this reading.
    fn since(&self, before: &LagHistogram) -> LagHistogram {
        LagHistogram {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, c)| {
                    let then = before
                        .buckets
                        .iter()
                        .find(|(b, _)| *b == le)
                        .map(|(_, c)| *c)
                        .unwrap_or(0);
                    (le, c.saturating_sub(then))
                })
                .collect(),
            sum: self.sum - before.sum,
            count: self.count.saturating_sub(before.count),
        }
    }

    /// Mean observation.
    fn mean(&self) -> Duration {
        Duration::from_secs_f64(if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        })
    }

    /// The upper bound of the bucket holding quantile `q` (seconds; the buckets double from
    /// 1 ms, so this is within a factor of 2 of the quantile).
    fn quantile_bound(&self, q: f64) -> f64 {
        let want = (q * self.count as f64).ceil() as u64;
        self.buckets
            .iter()
            .find(|(_, c)| *c >= want.max(1))
            .map(|(le, _)| *le)
            .unwrap_or(f64::INFINITY)
    }
}

/// `baton_audit_lag_seconds` from the Prometheus text.
fn lag_histogram(text: &str) -> LagHistogram {
    let name = baton_runtime::metrics::names::AUDIT_LAG_SECONDS;
    let mut h = LagHistogram::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let Some((key, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        if let Some(le) = key
            .strip_prefix("_bucket{le=\"")
            .and_then(|r| r.strip_suffix("\"}"))
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            h.buckets.push((le, value.parse().unwrap_or(0)));
        } else if key == "_sum" {
            h.sum = value.parse().unwrap_or(0.0);
        } else if key == "_count" {
            h.count = value.parse().unwrap_or(0);
        }
    }
    h
}
