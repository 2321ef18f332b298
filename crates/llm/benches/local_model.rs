//! Model-call latency and generation speed on the real local model (llama-server with
//! Qwen2.5-Coder-0.5B Q4_K_M on loopback, through [`baton_llm::OpenAiProvider`]):
//!
//! ```text
//! export $(bash deploy/local-model.sh --env)
//! cargo bench -p baton-llm --bench local_model            # BATON_BENCH_CALLS=10 by default
//! ```
//!
//! One warm-up call, then N sequential calls of a short prompt asking for about 64 output
//! tokens (`max_tokens: 64`, temperature 0). Prints p50/p99 latency of the whole call (HTTP
//! included), and tokens/s as output tokens over the call's wall time (prompt processing
//! included, as an agent sees it). Skipped, saying so, when the environment does not name the
//! server and model. The server runs one thread (`--threads 1 --poll 0`, as in the tests), and
//! the bench raises its session's scheduling priority where the kernel allows it.

use baton_llm::testing::LocalModel;
use baton_llm::{ChatModel, ChatRequest, Message, Role};
use std::time::Instant;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let calls: usize = std::env::var("BATON_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .max(1);
    let Some(local) = LocalModel::start("bench local_model").await else {
        return;
    };
    // The machine may be busy with builds: raise the priority of this session's autogroup
    // (the bench and its llama-server) where the kernel allows it, as the agents' tests do.
    // (The autogroup is the session's and outlives the bench: its nice is restored at the end.)
    let before = std::fs::read_to_string("/proc/self/autogroup").unwrap_or_default();
    let before_nice = before
        .rsplit_once("nice ")
        .and_then(|(_, n)| n.trim().parse::<i32>().ok());
    let raised = std::fs::write("/proc/self/autogroup", "-10").is_ok();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let model = local.provider();
    let request = ChatRequest {
        messages: vec![
            Message::text(Role::System, "You are a helpful assistant."),
            Message::text(
                Role::User,
                "Explain in one paragraph why idempotent retries matter in distributed systems.",
            ),
        ],
        max_tokens: Some(64),
        temperature: Some(0.0),
        ..Default::default()
    };
    model.chat(&request).await.expect("warm-up call");
    let mut latencies = Vec::with_capacity(calls);
    let mut rates = Vec::with_capacity(calls);
    let mut tokens = 0u64;
    let started = Instant::now();
    for i in 0..calls {
        let t = Instant::now();
        let resp = model.chat(&request).await.expect("model call");
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "call {}/{calls}: {:.0} ms, {} output tokens",
            i + 1,
            secs * 1000.0,
            resp.usage.output_tokens
        );
        latencies.push(secs * 1000.0);
        rates.push(f64::from(resp.usage.output_tokens) / secs);
        tokens += u64::from(resp.usage.output_tokens);
    }
    let total = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    rates.sort_by(f64::total_cmp);
    println!(
        "local model: {} via llama-server, {calls} sequential calls, max_tokens 64",
        std::env::var("BATON_LOCAL_MODEL").unwrap_or_default()
    );
    println!(
        "load average before: {} · autogroup priority raised: {raised} · after: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let (true, Some(n)) = (raised, before_nice) {
        let _ = std::fs::write("/proc/self/autogroup", n.to_string());
    }
    println!("| metric                                   | value      |");
    println!("|------------------------------------------|------------|");
    println!(
        "| model-call latency p50                   | {:>7.0} ms |",
        percentile(&latencies, 50.0)
    );
    println!(
        "| model-call latency p99                   | {:>7.0} ms |",
        percentile(&latencies, 99.0)
    );
    println!(
        "| output tokens per call (mean)            | {:>10.1} |",
        tokens as f64 / calls as f64
    );
    println!(
        "| tokens/s per call, p50                   | {:>10.1} |",
        percentile(&rates, 50.0)
    );
    println!(
        "| tokens/s overall (all tokens / all time) | {:>10.1} |",
        tokens as f64 / total
    );
}
