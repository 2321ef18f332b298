//! The agent seam: an [`Agent`] turns a routed task into a [`Plan`]. Runbooks (deterministic
//! code such as [`crate::drift::DriftRunbook`]) implement it today; LLM-backed agents with a
//! tool-calling loop implement the same trait later and fill the plan's `agent_run` with model
//! and tool calls.

use baton_proto::{Action, AgentKind, Asset, Phase, PhaseKind, Plan, Step, Task, TaskSpec, action};
use futures::future::BoxFuture;

/// Why an agent could not propose a plan. The kind decides what happens to the task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// Might work later (an asset or model is unreachable, a timeout): the message is
    /// redelivered with backoff and, once the bus gives up, dead-lettered on
    /// `baton.dead.agent-runner` (the task is failed with code `agent_unavailable` then).
    #[error("{0}")]
    Transient(String),
    /// Can never work for this task (bad inventory, unknown target group): the task is failed
    /// at once with code `agent_failed` and this message as the reason.
    #[error("{0}")]
    Permanent(String),
    /// Not a failure: the agent paused durably on a tool call that waits for a human (see
    /// [`crate::tool_approval`]). The runner acks the message without publishing anything; the
    /// decision (`ToolCallDecided` on `baton.agent.<role>`) runs the agent again. The message
    /// says what waits and how to decide it.
    #[error("{0}")]
    AwaitingApproval(String),
}

impl AgentError {
    /// A [`AgentError::Transient`] with this message.
    pub fn transient(msg: impl Into<String>) -> AgentError {
        AgentError::Transient(msg.into())
    }
    /// A [`AgentError::Permanent`] with this message.
    pub fn permanent(msg: impl Into<String>) -> AgentError {
        AgentError::Permanent(msg.into())
    }
    /// True for [`AgentError::Transient`].
    pub fn is_transient(&self) -> bool {
        matches!(self, AgentError::Transient(_))
    }
}

/// Something that proposes plans for one role.
///
/// Contract: the same task and spec give the same phases and steps (agents are deterministic
/// up to timing fields), because a redelivered message is planned again and the published
/// event is deduplicated by id. The agent records the tool and model calls it made in
/// `plan.agent_run`; the runner then overwrites `plan.task_id`, `agent_run.agent`,
/// `agent_run.kind` and `agent_run.duration_ms` with what it knows: the name and kind are read
/// once, when the agent is registered, and whatever the plan says about them is replaced —
/// validation's trust in a plan (its human-review points) rests on them, so an agent cannot
/// claim to be something else.
pub trait Agent: Send + Sync + 'static {
    /// Name and version, as recorded in `AgentRun.agent` (`drift-runbook@1`). Validation's
    /// `reviewed_agents` lists names of this form.
    fn name(&self) -> &str;

    /// [`AgentKind::Runbook`] for deterministic, versioned code, [`AgentKind::Llm`] for
    /// model-backed agents (`AgentRun.kind`). Required: there is no safe default.
    fn kind(&self) -> AgentKind;

    /// Proposes a plan for `task` as the decision service specified it.
    fn plan<'a>(
        &'a self,
        task: &'a Task,
        spec: &'a TaskSpec,
    ) -> BoxFuture<'a, Result<Plan, AgentError>>;
}

/// An agent that proposes one step doing nothing, for benchmarks and dry runs of the path:
/// one phase `noop` of kind WAVE with one step whose action is `noop`, `total_assets` 1, no
/// health check and no rollback.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopAgent;

impl Agent for NoopAgent {
    fn name(&self) -> &str {
        "noop@1"
    }

    fn kind(&self) -> AgentKind {
        AgentKind::Runbook
    }

    fn plan<'a>(
        &'a self,
        task: &'a Task,
        _spec: &'a TaskSpec,
    ) -> BoxFuture<'a, Result<Plan, AgentError>> {
        let plan = Plan {
            task_id: task.task_id.clone(),
            summary: "no-op plan: one step that changes nothing".into(),
            phases: vec![Phase {
                name: "noop".into(),
                kind: PhaseKind::Wave as i32,
                steps: vec![Step {
                    asset: Some(Asset {
                        id: "noop".into(),
                        name: "noop".into(),
                        kind: "noop".into(),
                        ..Default::default()
                    }),
                    action: Some(Action {
                        idempotency_key: format!("{}:noop:apply", task.task_id),
                        description: "do nothing".into(),
                        kind: Some(action::Kind::Noop(baton_proto::NoopAction {})),
                    }),
                    rollback: None,
                    health_check: None,
                    reason: "no-op agent".into(),
                }],
            }],
            total_assets: 1,
            ..Default::default()
        };
        Box::pin(async move { Ok(plan) })
    }
}
