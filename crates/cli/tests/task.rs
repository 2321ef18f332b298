//! `baton task` as a user runs it, against a Baton started in this process: the report of a
//! delivery-only task shown readably, `--artifact report` to stdout and `-o FILE`, and an
//! unknown artifact refused with the names there are.

use baton::config::BatonConfig;
use baton::up::{Baton, ServiceName};
use baton_proto::report::Report;
use baton_proto::{AgentKind, Plan, SubmitTaskRequest, Task, TaskSpec, TaskStatus, Trigger};
use baton_runtime::auth::Role;
use baton_runtime::plugins::Plugins;
use futures::future::BoxFuture;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// Answers every task of role `assistant` with a report.
struct Answering;

impl baton_agent_runner::Agent for Answering {
    fn name(&self) -> &str {
        "answering@1"
    }

    fn kind(&self) -> AgentKind {
        AgentKind::Llm
    }

    fn plan<'a>(
        &'a self,
        task: &'a Task,
        _spec: &'a TaskSpec,
    ) -> BoxFuture<'a, Result<Plan, baton_agent_runner::AgentError>> {
        let plan = Plan {
            task_id: task.task_id.clone(),
            summary: "an answer".into(),
            artifacts: vec![report().to_artifact()],
            ..Default::default()
        };
        Box::pin(std::future::ready(Ok(plan)))
    }
}

fn report() -> Report {
    Report {
        answer: "Egress tripled.".into(),
        findings: vec!["bucket logs-eu is public".into()],
        recommendations: vec!["make it private".into()],
    }
}

/// The `baton` binary with a clean environment, talking to `baton` with a submitter's token.
fn cli(baton: &Baton) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_baton"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BATON_") {
            c.env_remove(k);
        }
    }
    c.arg("--url")
        .arg(baton.grpc_url())
        .arg("--token")
        .arg(baton.token("alice", "default", &[Role::Submitter]));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_task_shows_the_report_and_writes_artifacts() {
    let data = tempfile::tempdir().unwrap();
    let mut config = BatonConfig::default();
    config.common.data_dir = data.path().to_path_buf();
    config.nats_server.port = 0;
    config.common.grpc_addr = "127.0.0.1:0".parse().unwrap();
    config.common.http_addr = "127.0.0.1:0".parse().unwrap();
    config.common.log.filter = "warn".into();
    let plugins = Plugins::new().with(baton_agent_runner::AgentFactory::new(
        "answering",
        &["assistant"],
        |_| Ok(Arc::new(Answering) as Arc<dyn baton_agent_runner::Agent>),
    ));
    let baton = Baton::start_with(config, &ServiceName::ALL, plugins)
        .await
        .unwrap();
    let mut clients = baton::client::Clients::connect(
        &baton.grpc_url(),
        &baton.token("alice", "default", &[Role::Submitter]),
    )
    .await
    .unwrap();
    let id = clients
        .triggers
        .submit_task(SubmitTaskRequest {
            trigger: Some(Trigger {
                text: "Why did the bill jump?".into(),
                role: "assistant".into(),
                environment: "development".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = clients
            .tasks
            .get_task(baton_proto::GetTaskRequest {
                task_id: id.clone(),
            })
            .await;
        if let Ok(r) = r
            && r.get_ref().task.as_ref().map(|t| t.status()) == Some(TaskStatus::Completed)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task never completed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let run = |args: &[&str]| {
        let out = cli(&baton).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (ok, shown, err) = run(&["task", &id]);
    assert!(ok, "{err}");
    assert!(
        shown.contains(
            "report:\n  answer: Egress tripled.\n  findings:\n    - bucket logs-eu is public\n  recommendations:\n    - make it private"
        ),
        "{shown}"
    );

    let (ok, raw, err) = run(&["task", &id, "--artifact", "report"]);
    assert!(ok, "{err}");
    assert_eq!(Report::from_json(raw.as_bytes()).unwrap(), report());

    let file = data.path().join("out").join("report.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let (ok, stdout, err) = run(&[
        "task",
        &id,
        "--artifact",
        "report",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), raw);
    assert!(err.contains("to ") && err.contains("report.json"), "{err}");
    let left: Vec<_> = std::fs::read_dir(file.parent().unwrap()).unwrap().collect();
    assert_eq!(left.len(), 1, "no partial file is left behind");

    let (ok, _, err) = run(&["task", &id, "--artifact", "code.py"]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "task {id} has no artifact \"code.py\"; it has: report"
        )),
        "{err}"
    );
    baton.stop().await;
}
