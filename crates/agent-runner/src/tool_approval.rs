//! Human-in-the-loop per tool call, the agent loop's side: what happens to a call the tool
//! policy answers `call_requires_approval` for.
//!
//! The record lives in KV `baton_tool_approvals` ([`baton_runtime::tool_approvals`]), under
//! `<task_id>.<step>`, the call's journal step. [`gate`] is asked each time the loop reaches
//! such a call whose step is not in the journal:
//!
//! - no record: the [`PendingToolCall`] is stored (tool, SHA-256 of the arguments' canonical
//!   JSON, the arguments redacted for the approver, the policy's reason, requested at, deadline
//!   `agents.tool_approval_timeout` later, and the task and spec to resume with),
//!   `ToolCallAwaitingApproval` is published on `baton.task.tool_call_awaiting_approval` (the
//!   audit log records it; event id `<task_id>.tool_call_awaiting_approval.<step>`), and the
//!   loop stops with [`AgentError::AwaitingApproval`]: the runner acks the message, no worker
//!   waits;
//! - a record still pending (a redelivery): the event is published again (same id: the stream
//!   drops the copy) and the loop stops the same way;
//! - approved: the call runs only if it is the call approved — the same tool and the same
//!   arguments hash — else it is refused with a reason the model reads;
//! - denied by a human, or by the timeout: the call is refused, and the model reads the denial
//!   with its reason as the tool's error.
//!
//! A decision arrives as `ToolCallDecided` on `baton.agent.<role>`; the runner then runs the
//! task's loop again, which replays the journal up to this step (no model call is repeated) and
//! asks [`gate`] again. The outcome of the step is then journaled like any other call.

use crate::AgentError;
use baton_proto::redact;
use baton_proto::{
    Decision, Event, PendingToolCall, Task, TaskSpec, ToolCallAwaitingApproval, event::Body,
    subject,
};
use baton_runtime::tool_approvals::{self, TIMEOUT_APPROVER, ToolApprovals};
use serde_json::Value;
use std::time::{Duration, SystemTime};

/// What the loop does with a call that needs a human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// A human approved exactly this call: run it.
    Run {
        /// Who approved it (JWT `sub`).
        approver: String,
    },
    /// Denied (by a human, by the timeout, or the approval was for another call): the reason
    /// goes back to the model as the tool's error.
    Deny(String),
}

/// The call the loop asks about.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// The task and its spec (stored for the resume).
    pub task: &'a Task,
    /// The task's spec.
    pub spec: &'a TaskSpec,
    /// The agent's role and name.
    pub role: &'a str,
    /// The agent's name (`cost-llm@1`).
    pub agent: &'a str,
    /// The journal step of the call.
    pub step: u32,
    /// Tool name.
    pub tool: &'a str,
    /// The call's arguments as the model sent them.
    pub arguments: &'a Value,
    /// The policy's reasons for asking a human.
    pub reason: &'a str,
}

/// Asks the store about `call` (see the module docs). `Ok` is the decision; `Err` is
/// [`AgentError::AwaitingApproval`] while nobody decided, or [`AgentError::Transient`] when
/// NATS fails.
pub async fn gate(
    store: &ToolApprovals,
    bus: &baton_bus::Bus,
    call: &Call<'_>,
    timeout: Duration,
) -> Result<Gate, AgentError> {
    let unavailable =
        |e: String| AgentError::transient(format!("cannot reach the tool approvals: {e}"));
    let hash = tool_approvals::arguments_hash(call.arguments);
    let record = match store
        .get(&call.task.task_id, call.step)
        .await
        .map_err(|e| unavailable(e.to_string()))?
    {
        Some((record, _)) => record,
        None => {
            let now = SystemTime::now();
            let mut shown = call.arguments.clone();
            redact::json(&mut shown);
            let pending = PendingToolCall {
                task_id: call.task.task_id.clone(),
                tenant: call.task.tenant.clone(),
                role: call.role.to_string(),
                agent: call.agent.to_string(),
                step: call.step,
                tool: call.tool.to_string(),
                arguments_hash: hash.clone(),
                arguments: tool_approvals::canonical_json(&shown),
                reason: call.reason.to_string(),
                requested_at: Some(now.into()),
                deadline: Some((now + timeout).into()),
                task: Some(call.task.clone()),
                decision: Some(Decision {
                    spec: Some(call.spec.clone()),
                    ..Default::default()
                }),
                traceparent: baton_bus::trace::current_traceparent(),
            };
            store
                .request(pending)
                .await
                .map_err(|e| unavailable(e.to_string()))?
        }
    };
    let pending = record.pending.clone().unwrap_or_default();
    let Some(decision) = record.decision else {
        let mut event = Event::first(
            &pending.task_id,
            &pending.tenant,
            &format!("tool_call_awaiting_approval.{}", pending.step),
            crate::SERVICE,
            Body::ToolCallAwaitingApproval(ToolCallAwaitingApproval {
                pending: Some(pending.clone()),
            }),
        );
        event.causation_id = format!("{}.routed", pending.task_id);
        bus.publish(subject::TOOL_CALL_AWAITING_APPROVAL, &event)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        tracing::info!(task_id = %pending.task_id, step = pending.step, tool = %pending.tool, arguments_hash = %pending.arguments_hash, "tool call waits for an approver");
        return Err(AgentError::AwaitingApproval(format!(
            "tool call {} at agent step {} of task {} waits for an approver until {} ({}); decide with `baton approve {} --step {}` or `baton reject`",
            pending.tool,
            pending.step,
            pending.task_id,
            pending
                .deadline
                .as_ref()
                .map(tool_approvals::rfc3339)
                .unwrap_or_default(),
            pending.reason,
            pending.task_id,
            pending.step
        )));
    };
    if !decision.approved {
        return Ok(Gate::Deny(if decision.approver == TIMEOUT_APPROVER {
            format!(
                "this call needed a human's approval ({}) and {}; it was not made",
                pending.reason, decision.reason
            )
        } else {
            format!(
                "a human ({}) denied this call: {}; it was not made",
                decision.approver, decision.reason
            )
        }));
    }
    if pending.tool != call.tool || decision.arguments_hash != hash {
        return Ok(Gate::Deny(format!(
            "the approval at agent step {} was for {} with arguments hash {}, not this call ({} with arguments hash {}); it was not made",
            call.step, pending.tool, decision.arguments_hash, call.tool, hash
        )));
    }
    Ok(Gate::Run {
        approver: decision.approver,
    })
}
