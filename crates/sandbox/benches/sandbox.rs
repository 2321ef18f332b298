//! Sandbox run latency: cold (a container created for the run), warm (from the pool) and, for
//! comparison, the docker CLI's `docker run --rm` of the same image with the same limits, all in
//! one process run. The program is a trivial Python one (`print(1)`).
//!
//! `cargo bench -p baton-sandbox --bench sandbox [-- RUNS]` (default 30 runs of each); needs
//! Docker and the images (`bash deploy/docker.sh && bash deploy/sandbox-images.sh`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_sandbox::{Config, RunRequest, Sandbox};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn row(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<34} {:>5} {:>9.1} {:>9.1} {:>9.1}",
        samples.len(),
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 99.0)),
        ms(samples[0]),
    );
}

fn request() -> RunRequest {
    RunRequest::new("python", &["python3", "main.py"]).file("main.py", "print(1)\n")
}

async fn sandbox_runs(config: Config, runs: usize, warm: bool) -> Vec<Duration> {
    let sb = Sandbox::connect(config)
        .await
        .expect("docker and the sandbox images");
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        if warm {
            // Measure the run, not the refill: wait until the pool has a container again (in
            // service, the refill overlaps the time between runs).
            while sb.warm("python") == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let started = Instant::now();
        let report = sb.run(request()).await.expect("sandbox run");
        samples.push(started.elapsed());
        assert!(report.succeeded() && report.stdout == "1\n", "{report:?}");
        assert_eq!(report.warm, warm);
    }
    sb.shutdown().await;
    samples
}

fn cli_runs(config: &Config, runs: usize) -> Vec<Duration> {
    let docker = if std::path::Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    };
    let memory = format!("{}m", config.memory_mb);
    let image = config.image("python").unwrap();
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            let out = Command::new(docker)
                .args([
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    "--memory",
                    &memory,
                    "--read-only",
                ])
                .args([
                    "--user",
                    &config.user,
                    "--cap-drop",
                    "ALL",
                    "--security-opt",
                    "no-new-privileges",
                ])
                .args([image, "python3", "-c", "print(1)"])
                .stdin(Stdio::null())
                .output()
                .expect("docker cli");
            let elapsed = started.elapsed();
            assert!(out.status.success() && out.stdout == b"1\n", "{out:?}");
            elapsed
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30);
    let config = Config::default();
    let cold = sandbox_runs(
        Config {
            warm_pool: 0,
            ..config.clone()
        },
        runs,
        false,
    )
    .await;
    let warm = sandbox_runs(
        Config {
            warm_pool: 2,
            ..config.clone()
        },
        runs,
        true,
    )
    .await;
    let cli = cli_runs(&config, runs);
    println!(
        "trivial python program (print(1)), {} MiB memory, network none",
        config.memory_mb
    );
    println!(
        "{:<34} {:>5} {:>9} {:>9} {:>9}",
        "", "runs", "p50 ms", "p99 ms", "min ms"
    );
    row("sandbox, cold (create per run)", cold);
    row("sandbox, warm (pooled container)", warm);
    row("docker run --rm (cli)", cli);
}
