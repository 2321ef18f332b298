//! The reference Baton is measured against: a bare 6-stage JetStream chain on the same kind of
//! nats-server (file store), each stage a durable pull consumer that consumes, publishes to the
//! next subject, awaits the publish ack, then acks. No decoding, no work.
//!
//! `cargo bench -p baton-tests --bench bare_chain` (run it next to `--bench pipeline`, since
//! this machine's speed varies from run to run).

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use std::time::{Duration, Instant};

const STAGES: usize = 6;

#[tokio::main]
async fn main() {
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
        tokio::spawn(async move {
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
        });
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
    let mut lat = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        js.publish("chain.0", payload.clone())
            .await
            .unwrap()
            .await
            .unwrap();
        done.next().await.unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    let n = 3000;
    let t = Instant::now();
    let publisher = {
        let js = js.clone();
        let payload = payload.clone();
        tokio::spawn(async move {
            for _ in 0..n {
                js.publish("chain.0", payload.clone()).await.unwrap();
            }
        })
    };
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(30), done.next())
            .await
            .expect("chain stalled")
            .unwrap();
    }
    let elapsed = t.elapsed();
    publisher.await.unwrap();
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    println!();
    println!("Bare {STAGES}-stage JetStream chain (consume, publish, await ack, ack), file store");
    println!("| measure              | value        |");
    println!("|----------------------|--------------|");
    println!("| sequential p50       | {:>12} |", ms(lat[lat.len() / 2]));
    println!(
        "| sequential p99       | {:>12} |",
        ms(lat[lat.len() * 99 / 100])
    );
    println!(
        "| pipelined throughput | {:>8.0} m/s |",
        n as f64 / elapsed.as_secs_f64()
    );
    server.stop().await;
}
