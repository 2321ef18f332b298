//! What the `bare_chain` and `pipeline` benches share: the bare 6-stage JetStream chain that
//! Baton is measured against, and a count of the JetStream operations a run caused (messages
//! stored per stream, deliveries per consumer), read from the server's stream and consumer info,
//! and the acks of consumers that ack cumulatively, counted on their ack subjects.

#![allow(dead_code)]

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Stages of the bare chain: one per Baton service.
pub const STAGES: usize = 6;

/// `d` in milliseconds with two decimals (`1.23 ms`).
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// The bare chain's figures.
pub struct ChainFigures {
    /// Sequential publish → last stage's output, sorted (one message in flight).
    pub latencies: Vec<Duration>,
    /// Messages through all stages per second with `pipelined` published at once.
    pub throughput: f64,
    /// JetStream operations per message during the pipelined run.
    pub cost: Cost,
    /// Messages of the pipelined run.
    pub pipelined: usize,
}

/// Runs the bare chain on its own nats-server (file store, in a temporary directory): each
/// stage a durable pull consumer that consumes, publishes to the next subject, awaits the
/// publish ack, then acks — no decoding, no work. 50 warm-up messages, then `sequential` one at
/// a time, then `pipelined` published at once. The server is stopped before it returns.
pub async fn bare_chain(sequential: usize, pipelined: usize) -> ChainFigures {
    let dir = tempfile::tempdir().unwrap();
    let server = baton_bus::server::NatsServer::start("nats-server", dir.path(), 0)
        .await
        .unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "CHAIN".into(),
        subjects: vec!["chain.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    let stream = js.get_stream("CHAIN").await.unwrap();
    let mut stages = Vec::new();
    for stage in 0..STAGES {
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(format!("s{stage}")),
                filter_subject: format!("chain.{stage}"),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: 1024,
                ..Default::default()
            })
            .await
            .unwrap();
        let js = js.clone();
        stages.push(tokio::spawn(async move {
            let messages = consumer.messages().await.unwrap();
            messages
                .for_each_concurrent(64, |m| {
                    let js = js.clone();
                    async move {
                        let m = m.unwrap();
                        js.publish(format!("chain.{}", stage + 1), m.payload.clone())
                            .await
                            .unwrap()
                            .await
                            .unwrap();
                        m.ack().await.unwrap();
                    }
                })
                .await;
        }));
    }
    let mut done = client.subscribe(format!("chain.{STAGES}")).await.unwrap();
    client.flush().await.unwrap();
    let payload = bytes::Bytes::from(vec![b'x'; 200]);

    for _ in 0..50 {
        js.publish("chain.0", payload.clone())
            .await
            .unwrap()
            .await
            .unwrap();
        done.next().await.unwrap();
    }
    let mut latencies = Vec::with_capacity(sequential);
    for _ in 0..sequential {
        let t = Instant::now();
        js.publish("chain.0", payload.clone())
            .await
            .unwrap()
            .await
            .unwrap();
        done.next().await.unwrap();
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let before = Counts::read(&js, None).await;
    let t = Instant::now();
    let publisher = {
        let js = js.clone();
        let payload = payload.clone();
        tokio::spawn(async move {
            for _ in 0..pipelined {
                js.publish("chain.0", payload.clone()).await.unwrap();
            }
        })
    };
    for _ in 0..pipelined {
        tokio::time::timeout(Duration::from_secs(30), done.next())
            .await
            .expect("chain stalled")
            .unwrap();
    }
    let elapsed = t.elapsed();
    publisher.await.unwrap();
    // The last stage's ack may trail its output: wait for the consumers to settle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cost = Counts::read(&js, None).await.since(&before, pipelined);
    for stage in stages {
        stage.abort();
    }
    server.stop().await;
    ChainFigures {
        latencies,
        throughput: pipelined as f64 / elapsed.as_secs_f64(),
        cost,
        pipelined,
    }
}

/// Counts the acks clients send for the consumers that ack cumulatively (`AckPolicy::All`,
/// audit's), whose acks are not one per delivery: one subscription per such consumer to its
/// ack subject, `$JS.ACK.<stream>.<consumer>.>`, which sees every ack, nak and terminate sent
/// for it (in-progress acks are not counted, as for the other consumers). It costs the
/// server one more delivery per such ack, about one per audit commit.
pub struct AckTap {
    /// `stream/consumer` → acks seen.
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl AckTap {
    /// Subscribes to the ack subject of every consumer with `AckPolicy::All` that exists now.
    pub async fn start(client: &async_nats::Client, js: &jetstream::Context) -> AckTap {
        let counts: Arc<Mutex<BTreeMap<String, u64>>> = Default::default();
        let mut tasks = Vec::new();
        let mut streams = js.streams();
        while let Some(Ok(info)) = streams.next().await {
            let Ok(stream) = js.get_stream(&info.config.name).await else {
                continue;
            };
            let mut consumers = stream.consumers();
            while let Some(Ok(c)) = consumers.next().await {
                if c.config.ack_policy != jetstream::consumer::AckPolicy::All {
                    continue;
                }
                let key = format!("{}/{}", info.config.name, c.name);
                counts.lock().unwrap().insert(key.clone(), 0);
                let mut sub = client
                    .subscribe(format!("$JS.ACK.{}.{}.>", info.config.name, c.name))
                    .await
                    .unwrap();
                let counts = counts.clone();
                tasks.push(tokio::spawn(async move {
                    while let Some(m) = sub.next().await {
                        let p = m.payload.as_ref();
                        if p.is_empty() || p == b"+ACK" || p.starts_with(b"-NAK") || p == b"+TERM" {
                            *counts.lock().unwrap().entry(key.clone()).or_default() += 1;
                        }
                    }
                }));
            }
        }
        client.flush().await.unwrap();
        AckTap {
            counts,
            _tasks: tasks,
        }
    }
}

/// JetStream counters at one moment: last sequence of every stream (messages ever stored in
/// it, so KV writes for a `KV_` stream), deliveries of every consumer, and acks of the
/// cumulative ones an [`AckTap`] watches.
#[derive(Default)]
pub struct Counts {
    /// Stream name → last sequence.
    streams: BTreeMap<String, u64>,
    /// `stream/consumer` → deliveries.
    consumers: BTreeMap<String, u64>,
    /// `stream/consumer` → acks sent, for the consumers acked cumulatively; every other
    /// consumer's deliveries are settled by one ack each.
    cumulative_acks: BTreeMap<String, u64>,
}

impl Counts {
    /// Reads every stream's and consumer's info (a handful of requests), and `tap`'s counts.
    pub async fn read(js: &jetstream::Context, tap: Option<&AckTap>) -> Counts {
        let mut counts = Counts::default();
        if let Some(tap) = tap {
            counts.cumulative_acks = tap.counts.lock().unwrap().clone();
        }
        let mut streams = js.streams();
        while let Some(info) = streams.next().await {
            let Ok(info) = info else { continue };
            counts
                .streams
                .insert(info.config.name.clone(), info.state.last_sequence);
            let Ok(stream) = js.get_stream(&info.config.name).await else {
                continue;
            };
            let mut consumers = stream.consumers();
            while let Some(c) = consumers.next().await {
                let Ok(c) = c else { continue };
                counts.consumers.insert(
                    format!("{}/{}", info.config.name, c.name),
                    c.delivered.consumer_sequence,
                );
            }
        }
        counts
    }

    /// Operations per unit of work (`units` messages or tasks) since `before`.
    pub fn since(&self, before: &Counts, units: usize) -> Cost {
        let per = |now: u64, then: u64| now.saturating_sub(then) as f64 / units as f64;
        let mut cost = Cost::default();
        for (name, now) in &self.streams {
            let then = before.streams.get(name).copied().unwrap_or(0);
            if *now > then {
                let what = match name.strip_prefix("KV_") {
                    Some(bucket) => format!("KV writes, bucket {bucket}"),
                    None => format!("publishes, stream {name}"),
                };
                if name.starts_with("KV_") {
                    cost.kv_writes += per(*now, then);
                } else {
                    cost.publishes += per(*now, then);
                }
                cost.rows.push((what, per(*now, then)));
            }
        }
        for (name, now) in &self.consumers {
            let then = before.consumers.get(name).copied().unwrap_or(0);
            if *now > then {
                cost.deliveries += per(*now, then);
                cost.rows
                    .push((format!("deliveries, consumer {name}"), per(*now, then)));
                match self.cumulative_acks.get(name) {
                    Some(acks) => {
                        let acked = per(
                            *acks,
                            before.cumulative_acks.get(name).copied().unwrap_or(0),
                        );
                        cost.acks += acked;
                        cost.rows
                            .push((format!("acks, consumer {name} (cumulative)"), acked));
                    }
                    None => cost.acks += per(*now, then),
                }
            }
        }
        cost
    }
}

/// JetStream operations per unit of work, by stream and consumer.
#[derive(Default)]
pub struct Cost {
    /// (what, per unit), streams first.
    pub rows: Vec<(String, f64)>,
    /// Messages stored in non-KV streams per unit.
    pub publishes: f64,
    /// Messages stored in KV buckets per unit.
    pub kv_writes: f64,
    /// Deliveries to durable consumers per unit.
    pub deliveries: f64,
    /// Acks (naks, terminates) per unit: one per delivery, except for consumers acked
    /// cumulatively, whose acks an [`AckTap`] counted.
    pub acks: f64,
}

impl Cost {
    /// Publishes + KV writes + deliveries + acks.
    pub fn total(&self) -> f64 {
        self.publishes + self.kv_writes + self.deliveries + self.acks
    }

    /// Prints the rows as a Markdown table.
    pub fn print(&self, unit: &str) {
        println!("| JetStream operations per {unit:<23} | value  |");
        println!("|-----------------------------------------------------------|--------|");
        for (what, n) in &self.rows {
            println!("| {what:<57} | {n:>6.2} |");
        }
        println!(
            "| total: publishes + KV writes + deliveries + acks          | {:>6.2} |",
            self.total()
        );
    }
}
