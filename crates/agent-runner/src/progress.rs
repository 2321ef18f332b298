//! Progress a person can watch: an agent announces each model call and each tool call as it
//! happens, and `baton watch <task>` prints them while the task runs.
//!
//! An agent built by an [`AgentFactory`](crate::AgentFactory) keeps a [`ProgressPublisher`]
//! (made from `setup.ctx.bus`), starts a [`Progress`] per task it plans, and calls it after
//! each call:
//!
//! ```ignore
//! let progress = self.progress.start(task, self.name());
//! let call: ModelCall = /* after the model answered */;
//! progress.model_call(&call).await;
//! progress.tool_call(&tool_call).await;                 // allowed by the policy, and ran
//! progress.tool_denied(&tool_call, &policy_reason).await; // denied: it did not run
//! ```
//!
//! Each call publishes one [`baton_proto::Progress`] (protobuf) on **core NATS**, subject
//! `baton.progress.<tenant>.<task_id>` ([`baton_proto::subject::progress`]); audit relays them
//! to `TaskService/WatchProgress` callers. Core NATS and not a JetStream stream, on purpose:
//! progress is informational — the authoritative record of every call is the plan's
//! `AgentRun` (`model_calls`, `tool_calls`), which validation sees and the audit log keeps — so
//! progress needs no storage, no acknowledgement and no place in the audit log; a watcher that
//! is not listening simply misses it (the numbered `sequence` shows a gap), and `baton task`
//! shows the whole record afterwards.
//!
//! Publishing never fails the agent: NATS being down costs the watchers their view, nothing
//! else (the error is logged at debug level). A tool call's `arguments` are redacted
//! ([`baton_proto::redact`]) and cut to [`ARGUMENTS_MAX`] bytes, and its `result` is left out:
//! watchers see what ran, not the data it returned. The agent runner's NATS identity may
//! publish `baton.progress.>`; only audit's may subscribe.

use baton_proto::progress::{Call, ToolDecision};
use baton_proto::{ModelCall, Task, ToolCall};
use prost::Message as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most bytes of a tool call's arguments a progress message carries (cut at a character
/// boundary, ending with `…`).
pub const ARGUMENTS_MAX: usize = 1024;

/// Makes a [`Progress`] per task; cheap to clone. Holds the bus it publishes on, or nothing
/// ([`ProgressPublisher::disabled`]).
#[derive(Clone, Default)]
pub struct ProgressPublisher {
    /// Where progress goes; `None` publishes nothing.
    bus: Option<baton_bus::Bus>,
}

impl std::fmt::Debug for ProgressPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressPublisher")
            .field("enabled", &self.bus.is_some())
            .finish()
    }
}

impl ProgressPublisher {
    /// Publishes on `bus` (the agent runner's: `AgentSetup::ctx.bus`).
    pub fn new(bus: &baton_bus::Bus) -> ProgressPublisher {
        ProgressPublisher {
            bus: Some(bus.clone()),
        }
    }

    /// Publishes nothing (an agent run outside Baton, unit tests).
    pub fn disabled() -> ProgressPublisher {
        ProgressPublisher { bus: None }
    }

    /// The progress of `agent` (name and version, `cost@1`) planning `task`, numbered from 1.
    pub fn start(&self, task: &Task, agent: &str) -> Progress {
        Progress {
            bus: self.bus.clone(),
            subject: baton_proto::subject::progress(&task.tenant, &task.task_id),
            task_id: task.task_id.clone(),
            tenant: task.tenant.clone(),
            agent: agent.to_string(),
            sequence: AtomicU64::new(0),
        }
    }
}

/// The progress of one agent run on one task (see the module doc).
pub struct Progress {
    /// Where it goes; `None` publishes nothing.
    bus: Option<baton_bus::Bus>,
    /// `baton.progress.<tenant>.<task_id>`.
    subject: String,
    /// The task planned.
    task_id: String,
    /// Its tenant.
    tenant: String,
    /// Agent name and version.
    agent: String,
    /// Messages made so far (published or not); the next one is numbered one more.
    sequence: AtomicU64,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("subject", &self.subject)
            .field("agent", &self.agent)
            .field("count", &self.count())
            .field("enabled", &self.bus.is_some())
            .finish()
    }
}

impl Progress {
    /// Announces a model call (provider, model, tokens, latency, cost), as recorded in
    /// `AgentRun.model_calls`.
    pub async fn model_call(&self, call: &ModelCall) {
        self.publish(Call::ModelCall(call.clone()), ToolDecision::Unspecified, "")
            .await;
    }

    /// Announces a tool call the tool policy allowed and that ran (`call.ok` says whether it
    /// succeeded).
    pub async fn tool_call(&self, call: &ToolCall) {
        self.publish(Call::ToolCall(shown(call)), ToolDecision::Allowed, "")
            .await;
    }

    /// Announces a tool call the tool policy denied (it did not run), with the policy's reason.
    pub async fn tool_denied(&self, call: &ToolCall, reason: &str) {
        self.publish(Call::ToolCall(shown(call)), ToolDecision::Denied, reason)
            .await;
    }

    /// Announces a tool call that waits for a human approver, with the policy's reason.
    pub async fn tool_awaiting_approval(&self, call: &ToolCall, reason: &str) {
        self.publish(
            Call::ToolCall(shown(call)),
            ToolDecision::ApprovalRequired,
            reason,
        )
        .await;
    }

    /// Messages made so far (the last one's `sequence`).
    pub fn count(&self) -> u64 {
        self.sequence.load(Ordering::Relaxed)
    }

    /// Numbers, encodes and publishes one message; failures are logged, never returned.
    async fn publish(&self, call: Call, decision: ToolDecision, reason: &str) {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let Some(bus) = &self.bus else {
            return;
        };
        let message = baton_proto::Progress {
            task_id: self.task_id.clone(),
            tenant: self.tenant.clone(),
            agent: self.agent.clone(),
            sequence,
            time: Some(baton_proto::now()),
            call: Some(call),
            tool_decision: decision as i32,
            reason: baton_proto::redact::for_log(reason).into_owned(),
        };
        if let Err(e) = bus
            .client()
            .publish(self.subject.clone(), message.encode_to_vec().into())
            .await
        {
            tracing::debug!(task_id = %self.task_id, error = %e, "cannot publish progress; watchers miss it");
        }
    }
}

/// `call` as watchers see it: arguments redacted and cut to [`ARGUMENTS_MAX`], no result.
fn shown(call: &ToolCall) -> ToolCall {
    let arguments = baton_proto::redact::for_log(&call.arguments);
    let arguments = if arguments.len() > ARGUMENTS_MAX {
        let mut cut = ARGUMENTS_MAX;
        while !arguments.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…", &arguments[..cut])
    } else {
        arguments.into_owned()
    };
    ToolCall {
        arguments,
        result: String::new(),
        ..call.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_bus::testing::TestNats;
    use futures::StreamExt;

    fn task() -> Task {
        Task {
            task_id: "t-1".into(),
            tenant: "acme".into(),
            ..Default::default()
        }
    }

    #[test]
    fn tool_arguments_are_redacted_and_cut_and_results_left_out() {
        let call = ToolCall {
            tool: "http_request".into(),
            arguments: format!(r#"{{"password": "hunter2", "pad": "{}"}}"#, "é".repeat(900)),
            result: "secret data".into(),
            ok: true,
            latency_ms: 12,
            ..Default::default()
        };
        let s = shown(&call);
        assert!(!s.arguments.contains("hunter2"), "{}", s.arguments);
        assert!(s.arguments.len() <= ARGUMENTS_MAX + '…'.len_utf8());
        assert!(s.arguments.ends_with('…'));
        assert!(s.result.is_empty());
        assert_eq!(
            (s.tool.as_str(), s.ok, s.latency_ms),
            ("http_request", true, 12)
        );
        let short = shown(&ToolCall {
            arguments: "{}".into(),
            ..call
        });
        assert_eq!(short.arguments, "{}");
    }

    #[tokio::test]
    async fn calls_are_published_in_order_on_the_task_subject() {
        let nats = TestNats::start().await;
        let mut sub = nats
            .bus
            .client()
            .subscribe("baton.progress.acme.t-1")
            .await
            .unwrap();
        nats.bus.client().flush().await.unwrap();
        let progress = ProgressPublisher::new(&nats.bus).start(&task(), "cost@1");
        let model = ModelCall {
            provider: "llama".into(),
            model: "qwen".into(),
            input_tokens: 500,
            output_tokens: 40,
            latency_ms: 900,
            cost_micros: 0,
            ..Default::default()
        };
        let tool = ToolCall {
            tool: "query_assets".into(),
            arguments: "{}".into(),
            ok: false,
            ..Default::default()
        };
        progress.model_call(&model).await;
        progress.tool_call(&tool).await;
        progress
            .tool_denied(&tool, "role cost may not call write_file")
            .await;
        let mut got = Vec::new();
        for _ in 0..3 {
            let m = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next())
                .await
                .expect("progress arrives")
                .unwrap();
            got.push(baton_proto::Progress::decode(m.payload.as_ref()).unwrap());
        }
        assert_eq!(
            got.iter().map(|p| p.sequence).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(
            got.iter()
                .all(|p| p.task_id == "t-1" && p.tenant == "acme" && p.agent == "cost@1")
        );
        assert_eq!(got[0].call, Some(Call::ModelCall(model)));
        assert_eq!(got[1].tool_decision(), ToolDecision::Allowed);
        assert_eq!(got[2].tool_decision(), ToolDecision::Denied);
        assert_eq!(got[2].reason, "role cost may not call write_file");
        assert_eq!(progress.count(), 3);
        // Disabled: counts, publishes nothing, never fails.
        let quiet = ProgressPublisher::disabled().start(&task(), "cost@1");
        quiet.model_call(&ModelCall::default()).await;
        assert_eq!(quiet.count(), 1);
    }
}
