//! What `baton task` and `baton watch` print: a task with its events and what it delivered (its
//! report, its other artifacts, the sandbox runs of generated code, the agent's calls), one
//! artifact's raw content, and a task followed live together with its agent's progress.
//!
//! Each command is a function over [`Clients`] writing to any [`Write`], so the end-to-end
//! tests check exactly what a person sees.

use crate::client::{Clients, describe, is_final};
use baton_proto::event::Body;
use baton_proto::progress::{Call, ToolDecision};
use baton_proto::report::{REPORT_ARTIFACT, Report, item_text};
use baton_proto::{
    AgentRun, AuditRecord, GetTaskRequest, GetTaskResponse, Plan, Progress, SandboxEnd, SandboxRun,
    TaskArtifact, WatchTaskRequest,
};
use std::io::Write;

/// Lines of a sandbox run's stdout and stderr shown (the last ones).
pub const TAIL_LINES: usize = 10;
/// Characters of a sandbox run's stdout and stderr shown at most (the last ones).
pub const TAIL_CHARS: usize = 2000;

/// Why a command could not show what was asked.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The call failed (not found, unauthenticated, Baton down).
    #[error("{}", .0.message())]
    Rpc(#[from] tonic::Status),
    /// The task has no artifact of that name.
    #[error("task {task_id} has no artifact {name:?}; {}", available_text(.available))]
    UnknownArtifact {
        /// The task asked about.
        task_id: String,
        /// The name asked for.
        name: String,
        /// The names its plan has, in order.
        available: Vec<String>,
    },
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Io(#[from] std::io::Error),
}

fn available_text(names: &[String]) -> String {
    if names.is_empty() {
        "it has no artifacts".into()
    } else {
        format!("it has: {}", names.join(", "))
    }
}

/// `baton task <id>`: the task's view and events, then what it delivered: the agent's calls,
/// the report (answer, findings, recommendations), the other artifacts, and each sandbox run
/// (exit code, what ended it, duration, the tails of stdout and stderr).
pub async fn show_task(
    clients: &mut Clients,
    task_id: &str,
    out: &mut impl Write,
) -> Result<(), InspectError> {
    let r = clients
        .tasks
        .get_task(GetTaskRequest {
            task_id: task_id.to_string(),
        })
        .await?
        .into_inner();
    write_task(&r, out)?;
    Ok(())
}

/// Writes a `GetTask` answer as [`show_task`] shows it.
pub fn write_task(r: &GetTaskResponse, out: &mut impl Write) -> std::io::Result<()> {
    let t = r.task.clone().unwrap_or_default();
    writeln!(
        out,
        "task {} [{}] tenant {} · role {} · {} · risk {}",
        t.task_id,
        t.status().label(),
        t.tenant,
        t.role,
        t.environment,
        t.risk().label()
    )?;
    writeln!(out, "  \"{}\"", t.text)?;
    if !t.reason.is_empty() {
        writeln!(out, "  reason: {}", t.reason)?;
    }
    for rec in &r.events {
        writeln!(out, "{}", describe(rec))?;
    }
    if let Some(run) = recorded_plan(&r.events).and_then(|p| p.agent_run) {
        write_agent_run(&run, out)?;
    }
    if let Some(report) = r.artifacts.iter().find(|a| a.name == REPORT_ARTIFACT) {
        write_report(report, out)?;
    }
    if !r.artifacts.is_empty() {
        writeln!(out, "artifacts:")?;
        for a in &r.artifacts {
            writeln!(
                out,
                "  {:<20} {:<24} {} bytes{}",
                a.name,
                a.media_type,
                a.size,
                if a.content_omitted {
                    " (content in the plan event)"
                } else {
                    ""
                }
            )?;
        }
        for a in &r.artifacts {
            if let Some(run) = &a.sandbox_run {
                write_sandbox_run(&a.name, run, out)?;
            }
        }
        writeln!(
            out,
            "write one with: baton task {} --artifact NAME [-o FILE]",
            t.task_id
        )?;
    }
    Ok(())
}

/// The plan of the latest recorded event that carries one.
fn recorded_plan(events: &[AuditRecord]) -> Option<Plan> {
    events
        .iter()
        .rev()
        .filter_map(|r| r.event.as_ref()?.body.as_ref())
        .find_map(|body| match body {
            Body::PlanProposed(p) => p.plan.clone(),
            Body::AwaitingApproval(a) => a.pending.as_ref()?.plan.clone(),
            Body::TaskApproved(a) => a.plan.clone(),
            Body::TaskCompleted(c) => c.execution.as_ref()?.plan.clone(),
            _ => None,
        })
}

/// `agent cost@1 (llm): 3 model calls, 1530 tokens; 2 tool calls, 1 failed`, when the agent
/// made any call.
fn write_agent_run(run: &AgentRun, out: &mut impl Write) -> std::io::Result<()> {
    if run.model_calls.is_empty() && run.tool_calls.is_empty() {
        return Ok(());
    }
    let tokens: u64 = run
        .model_calls
        .iter()
        .map(|c| u64::from(c.input_tokens) + u64::from(c.output_tokens))
        .sum();
    let failed = run.tool_calls.iter().filter(|c| !c.ok).count();
    writeln!(
        out,
        "agent {} ({}): {} model calls, {tokens} tokens; {} tool calls{}",
        run.agent,
        run.kind().label(),
        run.model_calls.len(),
        run.tool_calls.len(),
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        }
    )
}

/// The report, readable: answer, then findings and recommendations as lists.
fn write_report(artifact: &TaskArtifact, out: &mut impl Write) -> std::io::Result<()> {
    if artifact.content_omitted {
        return writeln!(
            out,
            "report: {} bytes, too large to show here; write it with --artifact {REPORT_ARTIFACT}",
            artifact.size
        );
    }
    let report = match Report::from_json(&artifact.content) {
        Ok(r) => r,
        Err(e) => {
            return writeln!(
                out,
                "report: cannot be shown ({e}); write it with --artifact {REPORT_ARTIFACT}"
            );
        }
    };
    writeln!(out, "report:")?;
    writeln!(out, "  answer: {}", report.answer.trim())?;
    for (title, items) in [
        ("findings", &report.findings),
        ("recommendations", &report.recommendations),
    ] {
        if items.is_empty() {
            writeln!(out, "  {title}: none")?;
            continue;
        }
        writeln!(out, "  {title}:")?;
        for item in items {
            writeln!(out, "    - {}", item_text(item))?;
        }
    }
    Ok(())
}

/// What ended a sandbox run, in words.
pub fn ended_by(end: SandboxEnd) -> &'static str {
    match end {
        SandboxEnd::Exited => "the program",
        SandboxEnd::Timeout => "the timeout",
        SandboxEnd::Memory => "the memory limit",
        SandboxEnd::Pids => "the pids limit",
        SandboxEnd::Output => "the output cap",
        SandboxEnd::Unspecified => "unknown",
    }
}

/// A sandbox run, readable: exit code, what ended it, duration, network, and the tails of its
/// output.
fn write_sandbox_run(name: &str, run: &SandboxRun, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "sandbox run of {name}{}: exit code {}, ended by {}, {}{}",
        if run.image.is_empty() {
            String::new()
        } else {
            format!(" ({})", run.image)
        },
        run.exit_code,
        ended_by(run.ended_by()),
        duration(run.duration_ms),
        if run.network { ", with network" } else { "" }
    )?;
    for (stream, text, truncated) in [
        ("stdout", &run.stdout, run.stdout_truncated),
        ("stderr", &run.stderr, run.stderr_truncated),
    ] {
        if text.trim().is_empty() {
            writeln!(out, "  {stream}: (empty)")?;
            continue;
        }
        let (shown, cut) = tail(text);
        writeln!(
            out,
            "  {stream}{}:",
            match (cut, truncated) {
                (true, _) => format!(" (last {TAIL_LINES} lines at most)"),
                (false, true) => " (cut at the sandbox's output cap)".to_string(),
                _ => String::new(),
            }
        )?;
        for line in shown.lines() {
            writeln!(out, "    {line}")?;
        }
    }
    Ok(())
}

/// The end of `text`: at most [`TAIL_LINES`] lines and [`TAIL_CHARS`] characters; true when
/// something was left out.
fn tail(text: &str) -> (String, bool) {
    let text = text.trim_end();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    let mut shown = lines[start..].join("\n");
    let mut cut = start > 0;
    let chars = shown.chars().count();
    if chars > TAIL_CHARS {
        shown = shown.chars().skip(chars - TAIL_CHARS).collect();
        cut = true;
    }
    (shown, cut)
}

/// Milliseconds as `212 ms` or `1.92 s`.
fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.2} s", ms as f64 / 1000.0)
    }
}

/// `baton task <id> --artifact NAME`: writes the artifact's raw content to `out` and returns
/// its size. The content comes from `GetTask`'s artifacts, or, for one too large to be
/// returned inline, from the plan event among its events.
///
/// Errors: [`InspectError::UnknownArtifact`] (naming the artifacts the task has) when the
/// plan has no artifact `name`; [`InspectError::Rpc`] for a task that does not exist.
pub async fn write_artifact(
    clients: &mut Clients,
    task_id: &str,
    name: &str,
    out: &mut impl Write,
) -> Result<u64, InspectError> {
    let r = clients
        .tasks
        .get_task(GetTaskRequest {
            task_id: task_id.to_string(),
        })
        .await?
        .into_inner();
    let Some(artifact) = r.artifacts.iter().find(|a| a.name == name) else {
        return Err(InspectError::UnknownArtifact {
            task_id: task_id.to_string(),
            name: name.to_string(),
            available: r.artifacts.iter().map(|a| a.name.clone()).collect(),
        });
    };
    let content = if artifact.content_omitted {
        recorded_plan(&r.events)
            .and_then(|p| p.artifacts.into_iter().find(|a| a.name == name))
            .map(|a| a.content)
            .unwrap_or_default()
    } else {
        artifact.content.clone()
    };
    out.write_all(&content)?;
    out.flush()?;
    Ok(content.len() as u64)
}

/// One line for a progress message: `  · model llama/qwen 512→88 tokens, 1.92 s`,
/// `  · tool query_assets allowed, ok, 12 ms`, `  · tool write_file DENIED: <reason>`.
pub fn describe_progress(p: &Progress) -> String {
    let detail = match &p.call {
        Some(Call::ModelCall(m)) => format!(
            "model {}{} {}→{} tokens, {}{}",
            if m.provider.is_empty() {
                String::new()
            } else {
                format!("{}/", m.provider)
            },
            m.model,
            m.input_tokens,
            m.output_tokens,
            duration(m.latency_ms),
            if m.cost_micros > 0 {
                format!(", ${:.4}", m.cost_micros as f64 / 1e6)
            } else {
                String::new()
            }
        ),
        Some(Call::ToolCall(t)) => match p.tool_decision() {
            ToolDecision::Denied => format!("tool {} DENIED: {}", t.tool, p.reason),
            ToolDecision::ApprovalRequired => {
                format!("tool {} waits for approval: {}", t.tool, p.reason)
            }
            ToolDecision::Allowed | ToolDecision::Unspecified => format!(
                "tool {} allowed, {}, {}",
                t.tool,
                if t.ok { "ok" } else { "FAILED" },
                duration(t.latency_ms)
            ),
        },
        None => "(progress of an unknown kind)".into(),
    };
    format!("  · {detail}")
}

/// `baton watch <id>`: prints the task's events as they are recorded and, while its agent
/// works, each model and tool call as it happens (`TaskService/WatchProgress`; a server
/// without it just gives no progress). When the task completes with a report, prints it.
/// Returns true when the task completed.
pub async fn watch(
    clients: &mut Clients,
    task_id: &str,
    out: &mut impl Write,
) -> Result<bool, InspectError> {
    let request = || WatchTaskRequest {
        task_id: task_id.to_string(),
    };
    let (mut tasks, mut progress_client) = (clients.tasks.clone(), clients.tasks.clone());
    let (records, progress) = tokio::join!(
        tasks.watch_task(request()),
        progress_client.watch_progress(request())
    );
    let mut records = records?.into_inner();
    let mut progress = match progress {
        Ok(stream) => Some(stream.into_inner()),
        Err(status) if status.code() == tonic::Code::Unimplemented => None,
        Err(status) => return Err(status.into()),
    };
    let mut last = None;
    loop {
        tokio::select! {
            message = async { progress.as_mut().expect("guarded").message().await }, if progress.is_some() => {
                match message {
                    Ok(Some(p)) => writeln!(out, "{}", describe_progress(&p))?,
                    // Ended (the plan is recorded) or broken: the events go on regardless.
                    Ok(None) | Err(_) => progress = None,
                }
            }
            record = records.message() => {
                let Some(rec) = record? else { break };
                writeln!(out, "{}", describe(&rec))?;
                if is_final(&rec) {
                    last = Some(rec);
                    break;
                }
            }
        }
        out.flush()?;
    }
    let completed = last.and_then(|r| r.event).and_then(|e| match e.body {
        Some(Body::TaskCompleted(c)) => Some(c),
        _ => None,
    });
    let Some(completed) = completed else {
        return Ok(false);
    };
    let report = completed
        .execution
        .and_then(|e| e.plan)
        .and_then(|p| p.report_artifact().cloned());
    if let Some(a) = report {
        let shown = TaskArtifact {
            size: a.content.len() as u64,
            name: a.name,
            media_type: a.media_type,
            content: a.content,
            content_omitted: false,
            sandbox_run: None,
        };
        write_report(&shown, out)?;
    }
    out.flush()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{ModelCall, ToolCall};

    #[test]
    fn progress_lines_say_what_happened() {
        let model = Progress {
            call: Some(Call::ModelCall(ModelCall {
                provider: "llama".into(),
                model: "qwen".into(),
                input_tokens: 512,
                output_tokens: 88,
                latency_ms: 1920,
                cost_micros: 0,
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(
            describe_progress(&model),
            "  · model llama/qwen 512→88 tokens, 1.92 s"
        );
        let tool = |ok, decision: ToolDecision, reason: &str| Progress {
            call: Some(Call::ToolCall(ToolCall {
                tool: "query_assets".into(),
                ok,
                latency_ms: 12,
                ..Default::default()
            })),
            tool_decision: decision as i32,
            reason: reason.into(),
            ..Default::default()
        };
        assert_eq!(
            describe_progress(&tool(true, ToolDecision::Allowed, "")),
            "  · tool query_assets allowed, ok, 12 ms"
        );
        assert_eq!(
            describe_progress(&tool(false, ToolDecision::Allowed, "")),
            "  · tool query_assets allowed, FAILED, 12 ms"
        );
        assert_eq!(
            describe_progress(&tool(false, ToolDecision::Denied, "not for cost")),
            "  · tool query_assets DENIED: not for cost"
        );
    }

    #[test]
    fn sandbox_runs_show_their_end_and_output_tails() {
        let run = SandboxRun {
            image: "baton-python".into(),
            exit_code: 1,
            duration_ms: 212,
            stdout: (1..=15).map(|i| format!("line {i}\n")).collect(),
            stderr: "AssertionError\n".into(),
            ended_by: SandboxEnd::Exited as i32,
            ..Default::default()
        };
        let mut out = Vec::new();
        write_sandbox_run("main.py", &run, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(
                "sandbox run of main.py (baton-python): exit code 1, ended by the program, 212 ms"
            ),
            "{text}"
        );
        assert!(text.contains("stdout (last 10 lines at most):"), "{text}");
        assert!(
            text.contains("    line 15") && !text.contains("line 5\n"),
            "{text}"
        );
        assert!(text.contains("  stderr:\n    AssertionError"), "{text}");
    }
}
