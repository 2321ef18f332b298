//! Protobuf messages and gRPC services of Baton, package `baton.v1` (see `proto/baton/v1`).
//!
//! The generated types are re-exported at the crate root. This crate also holds what every
//! service needs to handle them: subject names ([`subject`]), the event-body name used by the
//! audit log ([`event_kind`]), and timestamps ([`now`]).

#[allow(missing_docs, clippy::all)]
mod generated {
    tonic::include_proto!("baton.v1");
}

pub use generated::*;
pub use prost_types::Timestamp;

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
}

/// NATS subjects of the path. All live in stream `BATON` except dead letters (`BATON_DEAD`).
pub mod subject {
    /// Prefix of trigger subjects: `baton.trigger.<source>`.
    pub const TRIGGER_PREFIX: &str = "baton.trigger";
    /// Wildcard over all trigger sources (a source may have several tokens:
    /// `baton.trigger.webhook.github`).
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

    /// `baton.agent.<role>`.
    pub fn agent(role: &str) -> String {
        format!("{AGENT_PREFIX}.{role}")
    }
    /// `baton.trigger.<source>`.
    pub fn trigger(source: &str) -> String {
        format!("{TRIGGER_PREFIX}.{source}")
    }
    /// `baton.execution.<event>`.
    pub fn execution(event: &str) -> String {
        format!("{EXECUTION_PREFIX}.{event}")
    }
    /// `baton.dead.<service>`.
    pub fn dead(service: &str) -> String {
        format!("{DEAD_PREFIX}.{service}")
    }
}

/// Short snake_case name of an event body (`task_received`, `dead_letter`, …), as stored in the
/// audit log's `kind` column; `unknown` for an event whose body this build does not know.
pub fn event_kind(event: &Event) -> &'static str {
    use event::Body;
    match &event.body {
        Some(Body::TriggerRejected(_)) => "trigger_rejected",
        Some(Body::TaskReceived(_)) => "task_received",
        Some(Body::TaskRouted(_)) => "task_routed",
        Some(Body::PlanProposed(_)) => "plan_proposed",
        Some(Body::AwaitingApproval(_)) => "awaiting_approval",
        Some(Body::TaskApproved(_)) => "task_approved",
        Some(Body::TaskRejected(_)) => "task_rejected",
        Some(Body::ExecutionStarted(_)) => "execution_started",
        Some(Body::PhaseStarted(_)) => "phase_started",
        Some(Body::AssetUpdated(_)) => "asset_updated",
        Some(Body::PhaseCompleted(_)) => "phase_completed",
        Some(Body::RollbackStarted(_)) => "rollback_started",
        Some(Body::TaskCompleted(_)) => "task_completed",
        Some(Body::TaskFailed(_)) => "task_failed",
        Some(Body::DeadLetter(_)) => "dead_letter",
        None => "unknown",
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
        }
    }
    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<TaskStatus> {
        TaskStatus::from_str_name(&format!("TASK_STATUS_{}", s.to_ascii_uppercase()))
    }
}
