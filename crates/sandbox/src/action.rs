//! The execution service's runner for the `sandbox` action kind ([`SandboxAction`]): a rollout
//! step that runs a program in a sandbox container. Built with this crate's `execution` feature,
//! so baton-execution itself never depends on Docker.
//!
//! Register it with the execution service as a plug-in runner:
//!
//! ```ignore
//! let sandbox = Arc::new(Sandbox::connect(config.sandbox).await?);
//! plugins.register(baton_sandbox::action::factory(sandbox.clone()));
//! ```
//!
//! A run never has network access (network is a policy decision, not part of a plan). The
//! action succeeds when the program exits 0 with no limit hit; its detail gives the exit code,
//! the duration and the image. Otherwise it fails ([`ActionError::Failed`]) naming the exit code
//! or the limit and the end of stderr, and the rollout rolls back as for any failed step. A bad
//! action (unknown language, empty command, a timeout above `sandbox.timeout`) is
//! [`ActionError::Invalid`]; Docker trouble is [`ActionError::Transport`].
//!
//! Keep `execution.action_timeout` above `sandbox.timeout` plus a container start (about a
//! second), or the execution service gives up on the step before the sandbox reports.

use std::sync::Arc;
use std::time::Duration;

use baton_execution::runner::SANDBOX;
use baton_execution::{ActionError, ActionOutcome, ActionRunner, RunnerFactory};
use baton_proto::{Action, SandboxAction, action};
use futures::future::BoxFuture;

use crate::{EndedBy, Error, Report, RunRequest, Sandbox};

/// Bytes of stderr quoted in a failure's detail (its end, where the error usually is).
const STDERR_EXCERPT: usize = 300;

/// Runs [`SandboxAction`]s in a shared [`Sandbox`]. The caller owns the sandbox's lifetime and
/// calls [`Sandbox::shutdown`] when stopping.
#[derive(Clone)]
pub struct SandboxRunner {
    sandbox: Arc<Sandbox>,
}

impl SandboxRunner {
    /// A runner using `sandbox` for every action.
    pub fn new(sandbox: Arc<Sandbox>) -> SandboxRunner {
        SandboxRunner { sandbox }
    }
}

/// The [`RunnerFactory`] serving the `sandbox` action kind with `sandbox`.
pub fn factory(sandbox: Arc<Sandbox>) -> RunnerFactory {
    RunnerFactory::of(SandboxRunner::new(sandbox)).actions([SANDBOX])
}

/// The sandbox request for `spec`: its files, its command, its timeout (0 = the configured
/// one), no network.
fn request(spec: &SandboxAction) -> RunRequest {
    let mut request = RunRequest {
        language: spec.language.clone(),
        files: Vec::new(),
        command: spec.command.clone(),
        timeout: None,
        network: crate::Network::None,
    };
    for (path, contents) in &spec.files {
        request = request.file(path.clone(), contents.clone().into_bytes());
    }
    if spec.timeout_ms > 0 {
        request = request.timeout(Duration::from_millis(spec.timeout_ms));
    }
    request
}

/// The action's outcome from the run's report: success only for exit 0 with no limit hit.
fn outcome(report: &Report) -> Result<ActionOutcome, ActionError> {
    let ms = report.duration.as_millis();
    if report.succeeded() {
        return Ok(ActionOutcome {
            detail: format!("sandbox {}: exit code 0 in {ms}ms", report.image),
        });
    }
    let why = match report.ended_by {
        EndedBy::Exited => format!("exited with code {}", report.exit_code),
        EndedBy::Timeout => "hit the timeout limit".to_string(),
        EndedBy::Memory => "hit the memory limit (killed out of memory)".to_string(),
        EndedBy::Pids => "hit the pids limit (too many processes)".to_string(),
        EndedBy::Output => "hit the output limit (wrote more than the cap)".to_string(),
    };
    let code = if report.ended_by.is_limit() {
        format!(", exit code {}", report.exit_code)
    } else {
        String::new()
    };
    let stderr = report.stderr.trim();
    let excerpt = if stderr.is_empty() {
        String::new()
    } else {
        let start = stderr
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| stderr.len() - i <= STDERR_EXCERPT)
            .unwrap_or(stderr.len());
        format!("; stderr: {}", &stderr[start..])
    };
    Err(ActionError::Failed(format!(
        "sandbox {}: the program {why}{code} after {ms}ms{excerpt}",
        report.image
    )))
}

impl ActionRunner for SandboxRunner {
    fn run<'a>(&'a self, a: &'a Action) -> BoxFuture<'a, Result<ActionOutcome, ActionError>> {
        Box::pin(async move {
            let Some(action::Kind::Sandbox(spec)) = &a.kind else {
                return Err(ActionError::Unsupported(
                    "the sandbox runner runs sandbox actions only".into(),
                ));
            };
            match self.sandbox.run(request(spec)).await {
                Ok(report) => outcome(&report),
                Err(e @ (Error::InvalidRequest(_) | Error::UnknownLanguage(_))) => {
                    Err(ActionError::Invalid(e.to_string()))
                }
                Err(e) => Err(ActionError::Transport(e.to_string())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ended_by: EndedBy, exit_code: i64, stderr: &str) -> Report {
        Report {
            image: "baton-sandbox-python:1".into(),
            ended_by,
            exit_code,
            stdout: String::new(),
            stderr: stderr.into(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration: Duration::from_millis(640),
            network: false,
            warm: true,
        }
    }

    #[test]
    fn success_gives_exit_code_and_duration() {
        let ok = outcome(&report(EndedBy::Exited, 0, "")).unwrap();
        assert_eq!(
            ok.detail,
            "sandbox baton-sandbox-python:1: exit code 0 in 640ms"
        );
    }

    #[test]
    fn failures_name_the_exit_code_or_the_limit() {
        let err = outcome(&report(EndedBy::Exited, 3, "Traceback\nValueError: x\n")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "sandbox baton-sandbox-python:1: the program exited with code 3 after 640ms; \
             stderr: Traceback\nValueError: x"
        );
        let err = outcome(&report(EndedBy::Timeout, 137, "")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "sandbox baton-sandbox-python:1: the program hit the timeout limit, exit code 137 \
             after 640ms"
        );
        let long = "é".repeat(400);
        let err = outcome(&report(EndedBy::Memory, 137, &long)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("memory limit"), "{text}");
        assert!(text.ends_with(&"é".repeat(150)), "{text}");
    }

    #[test]
    fn request_carries_files_command_and_timeout_and_no_network() {
        let spec = SandboxAction {
            language: "python".into(),
            command: vec!["python3".into(), "main.py".into()],
            files: [("main.py".to_string(), "print(1)".to_string())].into(),
            timeout_ms: 1500,
        };
        let r = request(&spec);
        assert_eq!(r.language, "python");
        assert_eq!(r.command, ["python3", "main.py"]);
        assert_eq!(r.files.len(), 1);
        assert_eq!(r.files[0].path, "main.py");
        assert_eq!(r.files[0].contents, b"print(1)");
        assert_eq!(r.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(r.network, crate::Network::None);
        assert_eq!(request(&SandboxAction::default()).timeout, None);
    }
}
