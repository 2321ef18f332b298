//! The OTLP receiver of the compose cluster test (deploy/cluster-test.sh): proves that a task
//! is one trace across the six services, each in its own container, exporting over OTLP.
//!
//! ```text
//! cluster-trace <bind-ip>
//! ```
//! Listens on `<bind-ip>` (an address the containers reach, e.g. the Docker bridge's gateway)
//! and prints `<http-port> <grpc-port>` on a line of standard output; point the services at
//! `http://<host>:<http-port>` (OTLP HTTP/protobuf) or `<grpc-port>` (protocol `grpc`). Then
//! reads commands from standard input, one a line:
//! - `killed <service.name>`: that process was just killed (SIGKILL), so the spans it sent so
//!   far may have parents that never arrive;
//! - `check <task-id> <timeout-seconds>`: waits until the task's trace has arrived whole (see
//!   [`task_trace_complete`]), checks it ([`check_task_trace`], one process per service),
//!   prints what it found on standard error and exits 0, or 1 with what was wrong.
//!
//! It exits 2 on a usage error and 1 when standard input closes before a `check`.

use baton_tests::otlp::{OtlpReceiver, TraceLayout, check_task_trace, task_trace_complete};
use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::time::Duration;

fn say(what: &str) {
    eprintln!("cluster-trace: {what}");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [ip] = args.as_slice() else {
        say(
            "usage: cluster-trace <bind-ip> (then `killed <service.name>` and `check <task-id> <timeout-seconds>` on standard input)",
        );
        std::process::exit(2);
    };
    let rx = OtlpReceiver::start(&format!("{ip}:0")).await;
    println!("{} {}", rx.http_addr.port(), rx.grpc_addr.port());
    std::io::stdout().flush().expect("stdout");
    let mut layout = TraceLayout {
        process_per_service: true,
        killed: None,
    };
    // Standard input on a thread of its own (blocking reads), line by line.
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["killed", service] => {
                let n = rx.spans().len();
                say(&format!("{service} killed after {n} spans arrived"));
                layout.killed = Some((service.to_string(), n));
            }
            ["check", task_id, timeout] => {
                let Ok(secs) = timeout.parse::<u64>() else {
                    say(&format!("timeout {timeout:?} is not a number of seconds"));
                    std::process::exit(2);
                };
                let waited = rx
                    .wait_until(
                        Duration::from_secs(secs),
                        || async {},
                        |spans| task_trace_complete(spans, task_id),
                    )
                    .await;
                let spans = match waited {
                    Ok(spans) => spans,
                    Err(spans) => {
                        let mut by_service: BTreeMap<&str, usize> = BTreeMap::new();
                        for s in &spans {
                            *by_service.entry(s.service_name.as_str()).or_default() += 1;
                        }
                        say(&format!(
                            "FAILED: task {task_id}'s trace never had all six services after {secs} s; {} spans arrived, by service.name: {by_service:?}",
                            spans.len()
                        ));
                        std::process::exit(1);
                    }
                };
                match check_task_trace(&spans, task_id, &layout) {
                    Ok(t) => {
                        say(&format!(
                            "task {task_id} is one trace {} across {} processes, parent links right: spans by service.name {:?}{}",
                            t.trace_id,
                            t.spans_by_service.len(),
                            t.spans_by_service,
                            match &layout.killed {
                                Some((service, _)) => format!(
                                    "; {} spans lost their parent with the killed {service} (its own, and audit's of the events it published)",
                                    t.cut_short
                                ),
                                None => String::new(),
                            }
                        ));
                        std::process::exit(0);
                    }
                    Err(e) => {
                        say(&format!("FAILED: {e}"));
                        std::process::exit(1);
                    }
                }
            }
            [] => {}
            _ => {
                say(&format!("unknown command {line:?}"));
                std::process::exit(2);
            }
        }
    }
    say("standard input closed before a check");
    std::process::exit(1);
}
