//! The reference Baton is measured against: a bare 6-stage JetStream chain on the same kind of
//! nats-server (file store), each stage a durable pull consumer that consumes, publishes to the
//! next subject, awaits the publish ack, then acks. No decoding, no work.
//!
//! `cargo bench -p baton-tests --bench bare_chain` (`-- --sequential 300 --tasks 3000`).
//! `--bench pipeline` runs this chain first and prints Baton next to it with the ratios.

mod common;

use baton_tests::bench::{arg, pct};
use common::{STAGES, ms};

// The allocator `baton` ships with, as in the pipeline bench that runs this chain beside it.
#[global_allocator]
static ALLOC: baton_runtime::Allocator = baton_runtime::Allocator;

#[tokio::main]
async fn main() {
    let sequential = arg("--sequential", 300);
    let tasks = arg("--tasks", 3000);
    let chain = common::bare_chain(sequential, tasks).await;
    println!();
    println!("Bare {STAGES}-stage JetStream chain (consume, publish, await ack, ack), file store");
    println!("| measure              | value        |");
    println!("|----------------------|--------------|");
    println!(
        "| sequential p50       | {:>12} |",
        ms(pct(&chain.latencies, 0.50))
    );
    println!(
        "| sequential p99       | {:>12} |",
        ms(pct(&chain.latencies, 0.99))
    );
    println!("| pipelined throughput | {:>8.0} m/s |", chain.throughput);
    println!();
    chain.cost.print("message (pipelined)");
}
