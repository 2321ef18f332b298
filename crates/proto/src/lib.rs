//! Protobuf messages and gRPC services of Baton, package `baton.v1` (see `proto/baton/v1`).
//!
//! The generated types are re-exported at the crate root. This crate also holds what every
//! service needs to handle them: subject names ([`subject`]), the event-body name used by the
//! audit log ([`event_kind`]), typed access to an event's body ([`EventBody`]), the one way to
//! fail a task ([`Event::fail`] with a [`FailureCode`]), timestamps ([`now`]), the bounded
//! record of a refused trigger ([`TriggerRejected::for_payload`]) and the redaction of secrets
//! from what is stored or logged ([`redact`]) and the shape of an agent's report ([`report`]).

#[allow(missing_docs, clippy::all)]
mod generated {
    tonic::include_proto!("baton.v1");
}

pub mod redact;
mod rejected;
pub mod report;

pub use generated::*;
pub use prost_types::Timestamp;
pub use rejected::{TRIGGER_REJECTED_PREFIX_MAX, TRIGGER_REJECTED_REASON_MAX};

/// Encoded `FileDescriptorSet` of `baton.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("baton_descriptor");

/// The twelve agent roles a deployment knows by default (`[catalog] roles` in the
/// configuration replaces the list; see `baton_runtime::catalog`).
pub const DEFAULT_ROLES: &[&str] = &[
    "drift",
    "patch",
    "compliance",
    "incident",
    "dr",
    "cost",
    "security",
    "image",
    "sop",
    "adapter",
    "codegen",
    "assistant",
];

/// The environments a task may target by default (`[catalog] environments`).
pub const DEFAULT_ENVIRONMENTS: &[&str] = &["development", "staging", "production"];

/// The current time as a protobuf timestamp.
pub fn now() -> Timestamp {
    Timestamp::from(std::time::SystemTime::now())
}

impl Event {
    /// The first event of a task (no cause), with id `<task_id>.<stage>`.
    pub fn first(
        task_id: &str,
        tenant: &str,
        stage: &str,
        producer: &str,
        body: event::Body,
    ) -> Event {
        Event {
            event_id: format!("{task_id}.{stage}"),
            task_id: task_id.to_string(),
            causation_id: String::new(),
            tenant: tenant.to_string(),
            producer: producer.to_string(),
            time: Some(now()),
            body: Some(body),
        }
    }

    /// An event caused by `self`, for the same task and tenant, with the deterministic id
    /// `<task_id>.<stage>`: handling a redelivered `self` again yields the same id, which the
    /// stream's duplicate window drops.
    pub fn follow(&self, stage: &str, producer: &str, body: event::Body) -> Event {
        Event {
            event_id: format!("{}.{stage}", self.task_id),
            task_id: self.task_id.clone(),
            causation_id: self.event_id.clone(),
            tenant: self.tenant.clone(),
            producer: producer.to_string(),
            time: Some(now()),
            body: Some(body),
        }
    }

    /// The [`TaskFailed`] that ends the task of `self` (for `baton.task.failed`): event id
    /// `<task_id>.failed`, caused by `self`, published by `stage` (the failing service, also
    /// `TaskFailed.stage`), with `code` both as [`TaskFailed::failure`] and as its word in
    /// `TaskFailed.code`. `execution` is the rollout's final state when execution fails it.
    pub fn fail(
        &self,
        stage: &str,
        code: FailureCode,
        reason: impl Into<String>,
        execution: Option<Execution>,
    ) -> Event {
        self.follow(
            "failed",
            stage,
            event::Body::TaskFailed(TaskFailed {
                stage: stage.to_string(),
                code: code.as_str().to_string(),
                reason: reason.into(),
                execution,
                failure: code as i32,
            }),
        )
    }
}

impl FailureCode {
    /// The code's word: its proto name without `FAILURE_CODE_`, lowercase (`no_agent_for_role`,
    /// `rolled_back`; `unspecified` for none). It is what `TaskFailed.code` holds.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::Unspecified => "unspecified",
            FailureCode::InvalidTask => "invalid_task",
            FailureCode::UnknownRole => "unknown_role",
            FailureCode::UnknownEnvironment => "unknown_environment",
            FailureCode::DecisionMisconfigured => "decision_misconfigured",
            FailureCode::NoAgentForRole => "no_agent_for_role",
            FailureCode::AgentFailed => "agent_failed",
            FailureCode::AgentUnavailable => "agent_unavailable",
            FailureCode::NotApproved => "not_approved",
            FailureCode::RolledBack => "rolled_back",
            FailureCode::RollbackFailed => "rollback_failed",
            FailureCode::Cancelled => "cancelled",
        }
    }

    /// The code whose word (see [`FailureCode::as_str`]) is `word`; `None` for other words.
    pub fn parse(word: &str) -> Option<FailureCode> {
        FailureCode::from_str_name(&format!("FAILURE_CODE_{}", word.to_ascii_uppercase()))
            .filter(|c| c.as_str() == word)
    }
}

impl std::fmt::Display for FailureCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TaskFailed {
    /// Why the task failed: [`TaskFailed::failure`] when set, else the word in `code` (events
    /// from builds before the enum), else [`FailureCode::Unspecified`].
    pub fn failure_code(&self) -> FailureCode {
        match self.failure() {
            FailureCode::Unspecified => {
                FailureCode::parse(&self.code).unwrap_or(FailureCode::Unspecified)
            }
            code => code,
        }
    }
}

/// A message that is one kind of [`Event`] body (`TaskRouted`, `PlanProposed`, …): what a
/// consumer expects on its subject. Every variant of [`event::Body`] has one.
pub trait EventBody: Sized + Into<event::Body> {
    /// The body's name as [`event_kind`] gives it (`task_routed`).
    const KIND: &'static str;

    /// The message inside `body` when `body` is of this kind; otherwise `body` back.
    // Large `Err`: the body is handed back by move when it is another kind, never copied.
    #[allow(clippy::result_large_err)]
    fn from_body(body: event::Body) -> Result<Self, event::Body>;
}

/// Implements [`EventBody`], `From<message> for event::Body` and [`event::Body::kind`] for
/// each variant, so the list of kinds lives in one place.
macro_rules! event_bodies {
    ($($variant:ident($message:ident) => $kind:literal,)*) => {
        impl event::Body {
            /// The body's short snake_case name (`task_received`, `dead_letter`, …), as stored
            /// in the audit log's `kind` column.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(event::Body::$variant(_) => $kind,)*
                }
            }
        }
        $(
            impl EventBody for $message {
                const KIND: &'static str = $kind;
                #[allow(clippy::result_large_err)]
                fn from_body(body: event::Body) -> Result<Self, event::Body> {
                    match body {
                        event::Body::$variant(message) => Ok(message),
                        other => Err(other),
                    }
                }
            }
            impl From<$message> for event::Body {
                fn from(message: $message) -> Self {
                    event::Body::$variant(message)
                }
            }
        )*
    };
}

event_bodies! {
    TriggerRejected(TriggerRejected) => "trigger_rejected",
    TaskReceived(TaskReceived) => "task_received",
    TaskRouted(TaskRouted) => "task_routed",
    PlanProposed(PlanProposed) => "plan_proposed",
    AwaitingApproval(TaskAwaitingApproval) => "awaiting_approval",
    TaskApproved(TaskApproved) => "task_approved",
    TaskRejected(TaskRejected) => "task_rejected",
    ExecutionStarted(ExecutionStarted) => "execution_started",
    PhaseStarted(PhaseStarted) => "phase_started",
    AssetUpdated(AssetUpdated) => "asset_updated",
    PhaseCompleted(PhaseCompleted) => "phase_completed",
    RollbackStarted(RollbackStarted) => "rollback_started",
    TaskCompleted(TaskCompleted) => "task_completed",
    TaskFailed(TaskFailed) => "task_failed",
    DeadLetter(DeadLetter) => "dead_letter",
    AwaitingClarification(TaskAwaitingClarification) => "awaiting_clarification",
    ToolCallAwaitingApproval(ToolCallAwaitingApproval) => "tool_call_awaiting_approval",
    ToolCallDecided(ToolCallDecided) => "tool_call_decided",
}

/// NATS subjects of the path. All live in stream `BATON` except dead letters (`BATON_DEAD`).
pub mod subject {
    /// Prefix of trigger subjects: `baton.trigger.<tenant>.<source…>`. The tenant token is the
    /// task's tenant: a trigger publisher's NATS identity may publish only under its own
    /// tenant's token, so the tenant comes from what the server allowed, never from a header.
    pub const TRIGGER_PREFIX: &str = "baton.trigger";
    /// Wildcard over all trigger subjects (a source may have several tokens:
    /// `baton.trigger.acme.webhook.github`).
    pub const TRIGGERS: &str = "baton.trigger.>";
    /// Ingestion → decision.
    pub const TASK_RECEIVED: &str = "baton.task.received";
    /// Triggers ingestion refused.
    pub const TRIGGER_REJECTED: &str = "baton.ingestion.rejected";
    /// Prefix of role subjects: `baton.agent.<role>`.
    pub const AGENT_PREFIX: &str = "baton.agent";
    /// Agent-runner → validation.
    pub const TASK_PROPOSED: &str = "baton.task.proposed";
    /// Validation → operators (HITL gate).
    pub const TASK_AWAITING_APPROVAL: &str = "baton.task.awaiting_approval";
    /// Decision → operators: no tier was confident about the task's role.
    pub const TASK_AWAITING_CLARIFICATION: &str = "baton.task.awaiting_clarification";
    /// Agent-runner → operators: an agent's tool call waits for a human (HITL per tool call).
    pub const TOOL_CALL_AWAITING_APPROVAL: &str = "baton.task.tool_call_awaiting_approval";
    /// Validation/approval → execution.
    pub const TASK_APPROVED: &str = "baton.task.approved";
    /// Validation/approval: the plan will not run.
    pub const TASK_REJECTED: &str = "baton.task.rejected";
    /// Prefix of execution progress: `baton.execution.<event>`.
    pub const EXECUTION_PREFIX: &str = "baton.execution";
    /// Final success.
    pub const TASK_COMPLETED: &str = "baton.task.completed";
    /// Final failure, from any stage.
    pub const TASK_FAILED: &str = "baton.task.failed";
    /// Prefix of dead letters: `baton.dead.<service>`.
    pub const DEAD_PREFIX: &str = "baton.dead";
    /// Prefix of agent progress on core NATS (no stream): `baton.progress.<tenant>.<task_id>`.
    pub const PROGRESS_PREFIX: &str = "baton.progress";

    /// `baton.agent.<role>`.
    pub fn agent(role: &str) -> String {
        format!("{AGENT_PREFIX}.{role}")
    }
    /// `baton.trigger.<tenant>.<source>`: where a trigger of `tenant` from `source` is
    /// published (`source` may have several tokens).
    pub fn trigger(tenant: &str, source: &str) -> String {
        format!("{TRIGGER_PREFIX}.{tenant}.{source}")
    }

    /// The tenant and source of a trigger subject `baton.trigger.<tenant>[.<source…>]`
    /// (`nats` when no source follows the tenant), or `None` for a subject outside
    /// `baton.trigger.>`.
    pub fn parse_trigger(subject: &str) -> Option<(&str, &str)> {
        let rest = subject.strip_prefix(TRIGGER_PREFIX)?.strip_prefix('.')?;
        let (tenant, source) = rest.split_once('.').unwrap_or((rest, "nats"));
        (!tenant.is_empty() && !source.is_empty()).then_some((tenant, source))
    }
    /// `baton.execution.<event>`.
    pub fn execution(event: &str) -> String {
        format!("{EXECUTION_PREFIX}.{event}")
    }
    /// `baton.dead.<service>`.
    pub fn dead(service: &str) -> String {
        format!("{DEAD_PREFIX}.{service}")
    }
    /// `baton.progress.<tenant>.<task_id>`: where the agent runner publishes a task's
    /// [`Progress`](crate::Progress); `tenant` `*` subscribes to every tenant's.
    pub fn progress(tenant: &str, task_id: &str) -> String {
        format!("{PROGRESS_PREFIX}.{tenant}.{task_id}")
    }
}

/// Short snake_case name of an event body (`task_received`, `dead_letter`, …), as stored in the
/// audit log's `kind` column; `unknown` for an event whose body this build does not know.
pub fn event_kind(event: &Event) -> &'static str {
    event.body.as_ref().map_or("unknown", event::Body::kind)
}

impl event::Body {
    /// How many events this body stands for: the length of [`event::Body::unmerged`], without
    /// building them (1 for a body that carries nothing merged).
    pub fn stands_for(&self) -> usize {
        use event::Body;
        match self {
            Body::ExecutionStarted(e) => 1 + usize::from(e.first_phase.is_some()),
            Body::PhaseCompleted(p) => 1 + p.assets.len(),
            Body::TaskCompleted(c) => 1 + c.last_phase.as_ref().map_or(0, |p| 1 + p.assets.len()),
            _ => 1,
        }
    }

    /// The events this body stands for, in the order they happened. Execution merges events it
    /// publishes back to back, with no action, probe or wait in between, into one:
    /// - `execution_started` with `first_phase`: the `execution_started` (without it), then
    ///   the first phase's `phase_started`;
    /// - `phase_completed` with `assets`: an `asset_updated` per asset (of phase `index`), then
    ///   the `phase_completed` (without them);
    /// - `task_completed` with `last_phase`: the last phase's completion unmerged as above (its
    ///   `asset_updated`s, then its `phase_completed`), then the `task_completed` (without it).
    ///
    /// The events carried keep the ids they have on their own, derived from their fields:
    /// `<task>.exec.p<index>.started`, `<task>.exec.p<index>.<asset>.<state>`,
    /// `<task>.exec.p<index>.completed`.
    ///
    /// Any other body (and one of an older build, which carries nothing merged) stands for
    /// itself alone: `vec![self.clone()]`. Readers that show or count events one by one (the
    /// audit projection, `baton watch`) read every event through this, so the merged form reads
    /// the same as the separate events did.
    pub fn unmerged(&self) -> Vec<event::Body> {
        debug_assert!(self.stands_for() >= 1);
        use event::Body;
        match self {
            Body::ExecutionStarted(e) if e.first_phase.is_some() => {
                let mut started = e.clone();
                let first = started.first_phase.take();
                vec![Body::ExecutionStarted(started)]
                    .into_iter()
                    .chain(first.map(Body::PhaseStarted))
                    .collect()
            }
            Body::PhaseCompleted(p) if !p.assets.is_empty() => {
                let mut completed = p.clone();
                let assets = std::mem::take(&mut completed.assets);
                assets
                    .into_iter()
                    .map(|a| {
                        Body::AssetUpdated(AssetUpdated {
                            phase_index: p.index,
                            asset: Some(a),
                        })
                    })
                    .chain([Body::PhaseCompleted(completed)])
                    .collect()
            }
            Body::TaskCompleted(c) if c.last_phase.is_some() => {
                let mut completed = c.clone();
                let last = completed.last_phase.take();
                last.map(|p| Body::PhaseCompleted(p).unmerged())
                    .unwrap_or_default()
                    .into_iter()
                    .chain([Body::TaskCompleted(completed)])
                    .collect()
            }
            other => vec![other.clone()],
        }
    }
}

/// True when an event of this kind (see [`event_kind`]) ends its task: nothing more is recorded
/// for it. A dead letter carrying a task id ends the task too (it is marked failed).
pub fn ends_task(kind: &str) -> bool {
    matches!(
        kind,
        "task_completed" | "task_failed" | "task_rejected" | "trigger_rejected" | "dead_letter"
    )
}

impl AgentKind {
    /// Lowercase name as policies and people see it (`runbook`, `llm`; `unspecified`).
    pub fn label(self) -> &'static str {
        match self {
            AgentKind::Unspecified => "unspecified",
            AgentKind::Runbook => "runbook",
            AgentKind::Llm => "llm",
        }
    }
}

impl Risk {
    /// Lowercase name as policies see it (`low`, `high`, …; `unspecified`).
    pub fn label(self) -> &'static str {
        match self {
            Risk::Unspecified => "unspecified",
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
            Risk::Critical => "critical",
        }
    }
    /// Parses `low|medium|high|critical` (case-insensitive).
    pub fn parse(s: &str) -> Option<Risk> {
        match s.to_ascii_lowercase().as_str() {
            "low" => Some(Risk::Low),
            "medium" => Some(Risk::Medium),
            "high" => Some(Risk::High),
            "critical" => Some(Risk::Critical),
            _ => None,
        }
    }
}

impl TaskStatus {
    /// True for statuses after which no more events come for the task.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Rejected
        )
    }
    /// Lowercase name (`awaiting_approval`, …).
    pub fn label(self) -> &'static str {
        match self {
            TaskStatus::Unspecified => "unspecified",
            TaskStatus::Received => "received",
            TaskStatus::Routed => "routed",
            TaskStatus::Proposed => "proposed",
            TaskStatus::AwaitingApproval => "awaiting_approval",
            TaskStatus::Approved => "approved",
            TaskStatus::Executing => "executing",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Rejected => "rejected",
            TaskStatus::AwaitingClarification => "awaiting_clarification",
        }
    }
    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<TaskStatus> {
        TaskStatus::from_str_name(&format!("TASK_STATUS_{}", s.to_ascii_uppercase()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_code_word_is_its_proto_name_and_parses_back() {
        for n in 0.. {
            let Ok(code) = FailureCode::try_from(n) else {
                assert!(n > 11, "failure codes are dense from 0");
                break;
            };
            let name = code.as_str_name().strip_prefix("FAILURE_CODE_").unwrap();
            assert_eq!(code.as_str(), name.to_ascii_lowercase());
            assert_eq!(FailureCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(FailureCode::parse("NO_AGENT_FOR_ROLE"), None);
        assert_eq!(FailureCode::parse("health_check_failed"), None);
    }

    #[test]
    fn fail_follows_the_cause_and_carries_the_code_twice() {
        let cause = Event::first(
            "t-1",
            "acme",
            "routed",
            "decision",
            TaskRouted::default().into(),
        );
        let failed = cause.fail(
            "agent-runner",
            FailureCode::NoAgentForRole,
            "no agent",
            None,
        );
        assert_eq!(failed.event_id, "t-1.failed");
        assert_eq!(failed.causation_id, "t-1.routed");
        assert_eq!(
            (failed.tenant.as_str(), failed.producer.as_str()),
            ("acme", "agent-runner")
        );
        let Some(event::Body::TaskFailed(f)) = failed.body else {
            panic!("not a task_failed: {failed:?}")
        };
        assert_eq!(
            (f.stage.as_str(), f.code.as_str(), f.reason.as_str()),
            ("agent-runner", "no_agent_for_role", "no agent")
        );
        assert_eq!(f.failure(), FailureCode::NoAgentForRole);
    }

    #[test]
    fn failure_code_reads_events_from_before_the_enum() {
        let old = TaskFailed {
            code: "rolled_back".into(),
            ..Default::default()
        };
        assert_eq!(old.failure_code(), FailureCode::RolledBack);
        let unknown = TaskFailed {
            code: "something_new".into(),
            ..Default::default()
        };
        assert_eq!(unknown.failure_code(), FailureCode::Unspecified);
    }

    #[test]
    fn a_body_converts_to_its_message_only_for_its_own_kind() {
        let body: event::Body = PlanProposed::default().into();
        assert_eq!(body.kind(), PlanProposed::KIND);
        let back = TaskRouted::from_body(body).unwrap_err();
        assert_eq!(back.kind(), "plan_proposed");
        assert_eq!(
            PlanProposed::from_body(back).unwrap(),
            PlanProposed::default()
        );
        assert_eq!(TaskAwaitingApproval::KIND, "awaiting_approval");
    }

    #[test]
    fn a_merged_body_unmerges_into_the_events_it_stands_for_in_order() {
        use event::Body;
        let first = PhaseStarted {
            index: 0,
            name: "canary".into(),
            kind: PhaseKind::Canary as i32,
            asset_ids: vec!["web-01".into()],
        };
        let started = Body::ExecutionStarted(ExecutionStarted {
            phases: 2,
            steps: 3,
            first_phase: Some(first.clone()),
        });
        assert_eq!(
            started.unmerged(),
            [
                Body::ExecutionStarted(ExecutionStarted {
                    phases: 2,
                    steps: 3,
                    first_phase: None,
                }),
                Body::PhaseStarted(first),
            ]
        );
        let asset = |id: &str| AssetStatus {
            asset_id: id.into(),
            state: AssetState::Applied as i32,
            detail: format!("{id} done"),
        };
        let completed = PhaseCompleted {
            index: 1,
            name: "wave 1".into(),
            healthy: true,
            assets: vec![asset("b"), asset("c")],
        };
        assert_eq!(started.stands_for(), 2);
        assert_eq!(Body::PhaseCompleted(completed.clone()).stands_for(), 3);
        let unmerged = Body::PhaseCompleted(completed.clone()).unmerged();
        assert_eq!(
            unmerged,
            [
                Body::AssetUpdated(AssetUpdated {
                    phase_index: 1,
                    asset: Some(asset("b")),
                }),
                Body::AssetUpdated(AssetUpdated {
                    phase_index: 1,
                    asset: Some(asset("c")),
                }),
                Body::PhaseCompleted(PhaseCompleted {
                    assets: vec![],
                    ..completed.clone()
                }),
            ]
        );
        // The end carries the last phase's completion, itself carrying its asset changes.
        let execution = Execution {
            task_id: "t1".into(),
            ..Default::default()
        };
        let ended = Body::TaskCompleted(TaskCompleted {
            execution: Some(execution.clone()),
            last_phase: Some(completed.clone()),
        });
        assert_eq!(ended.stands_for(), 4);
        assert_eq!(
            ended.unmerged(),
            unmerged
                .iter()
                .cloned()
                .chain([Body::TaskCompleted(TaskCompleted {
                    execution: Some(execution),
                    last_phase: None,
                })])
                .collect::<Vec<_>>()
        );
        let bare = Body::TaskCompleted(TaskCompleted {
            last_phase: Some(PhaseCompleted {
                assets: vec![],
                ..completed.clone()
            }),
            ..Default::default()
        });
        assert_eq!(bare.stands_for(), 2);
        assert_eq!(bare.unmerged().len(), 2);
        // Events that carry nothing merged (every other kind, and older builds' events) stand
        // for themselves.
        for alone in [
            Body::ExecutionStarted(ExecutionStarted::default()),
            Body::PhaseCompleted(PhaseCompleted::default()),
            Body::TaskCompleted(TaskCompleted::default()),
        ] {
            assert_eq!(alone.unmerged(), std::slice::from_ref(&alone));
            assert_eq!(alone.stands_for(), 1);
        }
    }
}
