//! What one forward pass of the embedding encoder (all-MiniLM-L6-v2) costs, at each precision
//! (`f32`, `int8`): a table of milliseconds per pass at 8, 16, 32 and 64 tokens (mean, p50,
//! p99), then the same for embedding the texts of the held-out routing sets
//! (`routing/heldout*.jsonl`, tokenizer included), which is what a classification pays, and
//! the passes per second of four threads embedding those texts at once.
//!
//! Run: `export $(bash deploy/minilm.sh --env); cargo bench -p baton-decision --bench forward`.
//! Without `BATON_MINILM_DIR` it says SKIPPED and exits 0. `BENCH_ITERS` sets the passes per
//! row (default 200); `BENCH_PRECISION` (`f32` or `int8`) times only that precision.

use baton_decision::embedding::{Encoder, Precision};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn row(label: &str, mut ms: Vec<f64>) {
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    ms.sort_by(f64::total_cmp);
    println!(
        "{label:>14} {mean:>9.2} {:>9.2} {:>9.2}",
        percentile(&ms, 0.5),
        percentile(&ms, 0.99)
    );
}

fn main() {
    let Some(dir) = std::env::var_os("BATON_MINILM_DIR").map(PathBuf::from) else {
        println!("SKIPPED: BATON_MINILM_DIR is unset; run `export $(bash deploy/minilm.sh --env)`");
        return;
    };
    let iters: usize = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../routing");
    let mut texts = Vec::new();
    for name in [
        "heldout.jsonl",
        "heldout2.jsonl",
        "heldout3.jsonl",
        "heldout4.jsonl",
        "heldout5.jsonl",
    ] {
        let Ok(body) = std::fs::read_to_string(root.join(name)) else {
            continue;
        };
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            texts.push(v["text"].as_str().unwrap_or_default().to_string());
        }
    }
    let only = std::env::var("BENCH_PRECISION").ok();
    for precision in [Precision::F32, Precision::Int8] {
        if only.as_deref().is_some_and(|p| p != precision.as_str()) {
            continue;
        }
        bench(&dir, precision, iters, &texts);
    }
}

fn bench(dir: &Path, precision: Precision, iters: usize, texts: &[String]) {
    let started = Instant::now();
    let encoder = Encoder::load_with(dir, precision).expect("load the model");
    println!(
        "\n{}: loaded {} in {:.0} ms; {iters} passes per row after 10 warm-up",
        precision.as_str(),
        dir.display(),
        started.elapsed().as_secs_f64() * 1e3
    );
    println!(
        "{:>14} {:>9} {:>9} {:>9}",
        "ms per pass", "mean", "p50", "p99"
    );
    for n in [8usize, 16, 32, 64] {
        // [CLS] w w … [SEP]: ids of an ordinary word piece, all attended (as `eval-routing
        // --bench` times them).
        let mut ids = vec![101u32];
        ids.extend(std::iter::repeat_n(2000u32, n - 2));
        ids.push(102);
        let mask = vec![1u32; n];
        for _ in 0..10 {
            encoder.forward(&ids, &mask).unwrap();
        }
        let times = (0..iters)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(encoder.forward(&ids, &mask).unwrap());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        row(&format!("{n} tokens"), times);
    }

    if texts.is_empty() {
        return;
    }
    let tokens: Vec<usize> = texts
        .iter()
        .map(|t| encoder.token_count(t).unwrap())
        .collect();
    let mut sorted = tokens.clone();
    sorted.sort();
    for t in texts.iter().take(10) {
        encoder.embed(t).unwrap();
    }
    let rounds = (iters / 50).max(1);
    let mut times = Vec::new();
    for _ in 0..rounds {
        for t in texts {
            let s = Instant::now();
            std::hint::black_box(encoder.embed(t).unwrap());
            times.push(s.elapsed().as_secs_f64() * 1e3);
        }
    }
    row("held-out embed", times);
    // Concurrent callers: passes overlap, so each runs on a lane of its own (a pass alone on
    // the machine is split across the cores instead); what matters here is passes per second.
    let callers = 4;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for c in 0..callers {
            let encoder = &encoder;
            scope.spawn(move || {
                for t in texts.iter().skip(c).step_by(callers) {
                    std::hint::black_box(encoder.embed(t).unwrap());
                }
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{:>14} {:>9.0} passes/s ({callers} threads, each text once)",
        "concurrent",
        texts.len() as f64 / elapsed
    );
    println!(
        "held-out: {} texts, tokens p50 {} p99 {} max {}",
        texts.len(),
        percentile(&sorted.iter().map(|&t| t as f64).collect::<Vec<_>>(), 0.5),
        percentile(&sorted.iter().map(|&t| t as f64).collect::<Vec<_>>(), 0.99),
        sorted.last().unwrap()
    );
}
