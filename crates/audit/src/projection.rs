//! Task views projected from the audit log: how one stored event changes a task's row.
//!
//! Status follows the pipeline (received → routed → proposed → awaiting approval → approved →
//! executing → completed/failed/rejected) and only moves forward: an event that arrives late
//! (after a redelivery) never moves a task back, and a final status (completed, failed,
//! rejected) never changes again. Descriptive fields (role, text, …) are filled in whenever an
//! event carries them.
//!
//! A trigger ingestion rejected has no task, only the start of its raw payload (at most
//! [`baton_proto::TRIGGER_REJECTED_PREFIX_MAX`] bytes, with the whole payload's size and
//! SHA-256): its view shows what can be shown of it ([`rejected_trigger_text`]): the trigger's
//! text when that start decodes far enough to have one, else a bounded, printable excerpt of
//! it; the reason is the view's `reason`.

use baton_proto::{Event, Risk, TaskStatus, TaskView, event::Body};

/// One task's projected row (the `tasks` table; read with the derived `sqlx::FromRow`, written
/// by `store::rows`).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TaskRow {
    /// Task id (primary key).
    pub task_id: String,
    /// Owning tenant.
    pub tenant: String,
    /// Current status (stored as its label).
    #[sqlx(try_from = "crate::store::Label")]
    pub status: TaskStatus,
    /// Agent role, once routed.
    pub role: String,
    /// Task type, once routed.
    pub task_type: String,
    /// Target environment (from the trigger, then from the decision).
    pub environment: String,
    /// Risk, once routed (stored as its label).
    #[sqlx(try_from = "crate::store::Label")]
    pub risk: Risk,
    /// The trigger's text.
    pub text: String,
    /// Who submitted it.
    pub submitted_by: String,
    /// Why it failed or was rejected.
    pub reason: String,
    /// Time of its earliest event, microseconds since the Unix epoch.
    pub created_at: i64,
    /// Time of its latest event, microseconds since the Unix epoch.
    pub updated_at: i64,
    /// Number of the task's events: one per stored record, except that a record execution
    /// merged from several events (`Body::unmerged`: a rollout's start with its first phase's,
    /// a phase's completion with its last asset changes, the task's completion with the last
    /// phase's) counts each of them.
    pub event_count: i64,
}

impl TaskRow {
    /// An empty row for a task first seen now.
    pub fn new(task_id: &str, tenant: &str, at: i64) -> TaskRow {
        TaskRow {
            task_id: task_id.to_string(),
            tenant: tenant.to_string(),
            status: TaskStatus::Unspecified,
            role: String::new(),
            task_type: String::new(),
            environment: String::new(),
            risk: Risk::Unspecified,
            text: String::new(),
            submitted_by: String::new(),
            reason: String::new(),
            created_at: at,
            updated_at: at,
            event_count: 0,
        }
    }

    /// The protobuf view.
    pub fn to_view(&self) -> TaskView {
        TaskView {
            task_id: self.task_id.clone(),
            tenant: self.tenant.clone(),
            status: self.status as i32,
            role: self.role.clone(),
            task_type: self.task_type.clone(),
            environment: self.environment.clone(),
            risk: self.risk as i32,
            text: self.text.clone(),
            submitted_by: self.submitted_by.clone(),
            reason: self.reason.clone(),
            created_at: Some(micros_to_timestamp(self.created_at)),
            updated_at: Some(micros_to_timestamp(self.updated_at)),
            event_count: self.event_count.max(0) as u64,
        }
    }

    /// Applies one stored event (`event` is `None` when the payload did not decode). `at` is
    /// the event's time in microseconds (its recording time when it had none).
    pub fn apply(&mut self, tenant: &str, event: Option<&Event>, at: i64) {
        // An event execution merged from several (`Body::unmerged`) counts as each of them, so
        // a task's view is the same whether its rollout published them apart or merged.
        let stands_for = event
            .and_then(|e| e.body.as_ref())
            .map_or(1, |b| b.stands_for());
        self.event_count += stands_for as i64;
        self.created_at = self.created_at.min(at);
        self.updated_at = self.updated_at.max(at);
        if self.tenant.is_empty() {
            self.tenant = tenant.to_string();
        }
        let Some(body) = event.and_then(|e| e.body.as_ref()) else {
            return;
        };
        let (status, reason) = match body {
            Body::TriggerRejected(r) => {
                if self.text.is_empty() {
                    let (start, size) = r.shown_payload();
                    self.text = rejected_trigger_text(start, size);
                }
                (TaskStatus::Rejected, Some(r.reason.clone()))
            }
            Body::TaskReceived(r) => {
                if let Some(task) = &r.task {
                    self.fill_task(task);
                }
                (TaskStatus::Received, None)
            }
            Body::TaskRouted(r) => {
                if let Some(task) = &r.task {
                    self.fill_task(task);
                }
                if let Some(spec) = r.decision.as_ref().and_then(|d| d.spec.as_ref()) {
                    set(&mut self.role, &spec.role);
                    set(&mut self.task_type, &spec.task_type);
                    set(&mut self.environment, &spec.environment);
                    if spec.risk() != Risk::Unspecified {
                        self.risk = spec.risk();
                    }
                }
                (TaskStatus::Routed, None)
            }
            Body::AwaitingClarification(a) => {
                if let Some(task) = &a.task {
                    self.fill_task(task);
                }
                (TaskStatus::AwaitingClarification, None)
            }
            // The task stays with its agent while a tool call waits for a human (the
            // statuses are the plan's path; the reason says what the agent waits for).
            Body::ToolCallAwaitingApproval(a) => (
                TaskStatus::Routed,
                a.pending.as_ref().map(|p| {
                    format!(
                        "tool call {} (agent step {}) waits for an approver: {}",
                        p.tool, p.step, p.reason
                    )
                }),
            ),
            Body::ToolCallDecided(_) => (TaskStatus::Routed, None),
            Body::PlanProposed(_) => (TaskStatus::Proposed, None),
            Body::AwaitingApproval(_) => (TaskStatus::AwaitingApproval, None),
            Body::TaskApproved(_) => (TaskStatus::Approved, None),
            Body::TaskRejected(r) => (TaskStatus::Rejected, Some(r.reasons.join("; "))),
            Body::ExecutionStarted(_)
            | Body::PhaseStarted(_)
            | Body::PhaseCompleted(_)
            | Body::AssetUpdated(_)
            | Body::RollbackStarted(_) => (TaskStatus::Executing, None),
            Body::TaskCompleted(_) => (TaskStatus::Completed, None),
            Body::TaskFailed(f) => {
                let reason = if f.reason.is_empty() {
                    f.code.clone()
                } else {
                    f.reason.clone()
                };
                (TaskStatus::Failed, Some(reason))
            }
            // Audit's own outage is not the task's failure (see `NewRecord::unwrap_own_dead_letter`).
            Body::DeadLetter(d) if d.service == crate::SERVICE => return,
            Body::DeadLetter(d) => (
                TaskStatus::Failed,
                Some(format!("dead-lettered by {}: {}", d.service, d.reason)),
            ),
        };
        if !self.status.is_final() && rank(status) >= rank(self.status) {
            self.status = status;
            if let Some(reason) = reason {
                self.reason = reason;
            }
        }
    }

    fn fill_task(&mut self, task: &baton_proto::Task) {
        set(&mut self.tenant, &task.tenant);
        set(&mut self.submitted_by, &task.submitted_by);
        if let Some(trigger) = &task.trigger {
            set(&mut self.text, &trigger.text);
            if self.environment.is_empty() {
                set(&mut self.environment, &trigger.environment);
            }
        }
    }
}

/// Longest text shown for a rejected trigger, in characters (an ellipsis marks a cut).
pub const REJECTED_TEXT_MAX: usize = 200;

/// What a task view shows as the text of a trigger ingestion rejected, from the start of the
/// payload its `TriggerRejected` carried (`start`: the prefix, at most
/// [`baton_proto::TRIGGER_REJECTED_PREFIX_MAX`] bytes, or the whole payload of an event from an
/// older build; `size`: the whole payload's size in bytes):
/// - the trigger's `text`, trimmed, when `start` is the whole payload and it decodes far enough
///   to have a non-empty one (a JSON object with a string `text`, whatever else is wrong with
///   it; or a protobuf `Trigger`);
/// - else an excerpt of the payload as text, with control characters escaped (`\n`, `\u{1b}`)
///   so it prints on one line;
/// - else, for a payload that is not text, `binary payload, <size> bytes: <hex of its start>`;
/// - `empty payload` when there was nothing.
///
/// At most [`REJECTED_TEXT_MAX`] characters of text (the hex shows at most 32 bytes); an
/// excerpt of a payload larger than `start` ends with `…`.
pub fn rejected_trigger_text(start: &[u8], size: u64) -> String {
    let payload = start;
    if payload.is_empty() {
        return "empty payload".into();
    }
    // A cut JSON document never parses; a protobuf cut at a field boundary decodes to the
    // fields it has, and its text is then whole.
    let whole = size <= payload.len() as u64;
    if let Some(text) = decoded_trigger_text(payload) {
        return bounded(&printable(&text));
    }
    // The payload may have been cut inside a character: judge the valid start.
    let text = match std::str::from_utf8(payload) {
        Ok(s) => s,
        Err(e) if e.valid_up_to() > 0 && payload.len() - e.valid_up_to() < 4 => {
            std::str::from_utf8(&payload[..e.valid_up_to()]).unwrap_or_default()
        }
        Err(_) => "",
    };
    let controls = text
        .chars()
        .filter(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        .count();
    if !text.is_empty() && controls * 10 <= text.chars().count() {
        let excerpt = bounded(&printable(text.trim()));
        return if whole || excerpt.ends_with('…') {
            excerpt
        } else {
            format!("{excerpt}…")
        };
    }
    const HEX_MAX: usize = 32;
    let start = &payload[..payload.len().min(HEX_MAX)];
    format!(
        "binary payload, {} bytes: {}{}",
        size.max(payload.len() as u64),
        hex::encode(start),
        if size.max(payload.len() as u64) > HEX_MAX as u64 {
            "…"
        } else {
            ""
        }
    )
}

/// The `text` of a trigger payload, when it has a non-empty one.
fn decoded_trigger_text(payload: &[u8]) -> Option<String> {
    let looks_json = payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let text = if looks_json {
        let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
        value.get("text")?.as_str()?.to_string()
    } else {
        use prost::Message as _;
        baton_proto::Trigger::decode(payload).ok()?.text
    };
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// `s` on one line: control characters escaped (`\n`, `\u{1b}`).
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// `s` cut to [`REJECTED_TEXT_MAX`] characters, with `…` when cut.
fn bounded(s: &str) -> String {
    match s.char_indices().nth(REJECTED_TEXT_MAX) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// The artifacts of a task's plan as `GetTask` returns them, from the task's records (in
/// sequence order): the plan of the latest record that carries one (`plan_proposed`, then the
/// same plan in `awaiting_approval`, `task_approved` and `task_completed`), so what is returned
/// is what the audit log holds — redacted like every stored event. An artifact's content is
/// included up to [`crate::ARTIFACT_CONTENT_MAX`] bytes; a larger one comes with its size and
/// `content_omitted`, its content staying in the plan's event. Empty before a plan is recorded.
pub fn task_artifacts(records: &[baton_proto::AuditRecord]) -> Vec<baton_proto::TaskArtifact> {
    let plan = records
        .iter()
        .rev()
        .filter_map(|r| r.event.as_ref()?.body.as_ref())
        .find_map(|body| match body {
            Body::PlanProposed(p) => p.plan.as_ref(),
            Body::AwaitingApproval(a) => a.pending.as_ref()?.plan.as_ref(),
            Body::TaskApproved(a) => a.plan.as_ref(),
            Body::TaskCompleted(c) => c.execution.as_ref()?.plan.as_ref(),
            _ => None,
        });
    let Some(plan) = plan else {
        return Vec::new();
    };
    plan.artifacts
        .iter()
        .map(|a| {
            let omitted = a.content.len() > crate::ARTIFACT_CONTENT_MAX;
            baton_proto::TaskArtifact {
                name: a.name.clone(),
                media_type: a.media_type.clone(),
                size: a.content.len() as u64,
                content: if omitted {
                    Vec::new()
                } else {
                    a.content.clone()
                },
                content_omitted: omitted,
                sandbox_run: a.sandbox_run.clone(),
            }
        })
        .collect()
}

/// True when a record of this kind ends its task (nothing more will be recorded for it).
pub fn is_final_kind(kind: &str) -> bool {
    baton_proto::ends_task(kind)
}

/// Overwrites `dst` with `src` unless `src` is empty.
fn set(dst: &mut String, src: &str) {
    if !src.is_empty() {
        *dst = src.to_string();
    }
}

/// Position of a status along the pipeline; finals share the top rank.
fn rank(s: TaskStatus) -> u8 {
    match s {
        TaskStatus::Unspecified => 0,
        TaskStatus::Received => 1,
        TaskStatus::AwaitingClarification => 2,
        TaskStatus::Routed => 3,
        TaskStatus::Proposed => 4,
        TaskStatus::AwaitingApproval => 5,
        TaskStatus::Approved => 6,
        TaskStatus::Executing => 7,
        TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Rejected => 8,
    }
}

/// Microseconds since the Unix epoch of a protobuf timestamp.
pub fn timestamp_to_micros(t: &baton_proto::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(t.nanos) / 1_000)
}

/// A protobuf timestamp from microseconds since the Unix epoch.
pub fn micros_to_timestamp(us: i64) -> baton_proto::Timestamp {
    baton_proto::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{
        DeadLetter, Decision, PlanProposed, Task, TaskCompleted, TaskFailed, TaskReceived,
        TaskRejected, TaskRouted, TaskSpec, Trigger,
    };

    fn ev(body: Body) -> Event {
        Event::first("t1", "acme", "x", "test", body)
    }

    fn received() -> Event {
        ev(Body::TaskReceived(TaskReceived {
            task: Some(Task {
                task_id: "t1".into(),
                tenant: "acme".into(),
                submitted_by: "alice".into(),
                trigger: Some(Trigger {
                    text: "fix drift".into(),
                    environment: "staging".into(),
                    ..Default::default()
                }),
                received_at: None,
            }),
        }))
    }

    #[test]
    fn fields_fill_in_along_the_pipeline() {
        let mut row = TaskRow::new("t1", "", 10);
        row.apply("acme", Some(&received()), 10);
        assert_eq!(
            (row.status, row.text.as_str(), row.submitted_by.as_str()),
            (TaskStatus::Received, "fix drift", "alice")
        );
        assert_eq!(row.environment, "staging");
        let spec = TaskSpec {
            role: "drift".into(),
            task_type: "drift_remediation".into(),
            environment: "production".into(),
            risk: Risk::High as i32,
            ..Default::default()
        };
        row.apply(
            "acme",
            Some(&ev(Body::TaskRouted(TaskRouted {
                task: None,
                decision: Some(Decision {
                    spec: Some(spec),
                    ..Default::default()
                }),
            }))),
            20,
        );
        assert_eq!(
            (
                row.status,
                row.role.as_str(),
                row.environment.as_str(),
                row.risk
            ),
            (TaskStatus::Routed, "drift", "production", Risk::High)
        );
        assert_eq!(
            (
                row.created_at,
                row.updated_at,
                row.event_count,
                row.tenant.as_str()
            ),
            (10, 20, 2, "acme")
        );
    }

    #[test]
    fn final_status_never_moves_back_and_late_events_do_not_regress() {
        let mut row = TaskRow::new("t1", "acme", 0);
        row.apply(
            "acme",
            Some(&ev(Body::PlanProposed(PlanProposed::default()))),
            1,
        );
        row.apply("acme", Some(&received()), 2);
        assert_eq!(
            row.status,
            TaskStatus::Proposed,
            "a late received must not regress"
        );
        row.apply(
            "acme",
            Some(&ev(Body::TaskFailed(TaskFailed {
                reason: "boom".into(),
                ..Default::default()
            }))),
            3,
        );
        row.apply(
            "acme",
            Some(&ev(Body::TaskCompleted(TaskCompleted::default()))),
            4,
        );
        row.apply(
            "acme",
            Some(&ev(Body::TaskRejected(TaskRejected {
                reasons: vec!["x".into()],
                ..Default::default()
            }))),
            5,
        );
        assert_eq!(
            (row.status, row.reason.as_str()),
            (TaskStatus::Failed, "boom")
        );
        assert_eq!(row.event_count, 5);
    }

    #[test]
    fn a_rollout_whose_events_were_merged_projects_the_same_view_as_one_published_apart() {
        use baton_proto::{
            AssetState, AssetStatus, AssetUpdated, ExecutionStarted, PhaseCompleted, PhaseKind,
            PhaseStarted,
        };
        let phase = |index: u32, name: &str, ids: &[&str]| PhaseStarted {
            index,
            name: name.into(),
            kind: if index == 0 {
                PhaseKind::Canary
            } else {
                PhaseKind::Wave
            } as i32,
            asset_ids: ids.iter().map(|s| s.to_string()).collect(),
        };
        let asset = |id: &str, state: AssetState| AssetStatus {
            asset_id: id.into(),
            state: state as i32,
            detail: format!("{id} ok"),
        };
        let updated = |i: u32, a: AssetStatus| {
            Body::AssetUpdated(AssetUpdated {
                phase_index: i,
                asset: Some(a),
            })
        };
        let completed = |index: u32, name: &str, assets: Vec<AssetStatus>| PhaseCompleted {
            index,
            name: name.into(),
            healthy: true,
            assets,
        };
        let counts = ExecutionStarted {
            phases: 2,
            steps: 3,
            first_phase: None,
        };
        // A canary of one unchecked step, then a wave of two checked ones, as a build before
        // the merging published it: (time, body), events of one round trip at one time.
        let apart = vec![
            (1, Body::ExecutionStarted(counts.clone())),
            (1, Body::PhaseStarted(phase(0, "canary", &["a"]))),
            (2, updated(0, asset("a", AssetState::Applied))),
            (2, Body::PhaseCompleted(completed(0, "canary", vec![]))),
            (2, Body::PhaseStarted(phase(1, "wave 1", &["b", "c"]))),
            (3, updated(1, asset("b", AssetState::Applied))),
            (4, updated(1, asset("c", AssetState::Applied))),
            (5, updated(1, asset("b", AssetState::Healthy))),
            (6, updated(1, asset("c", AssetState::Healthy))),
            (6, Body::PhaseCompleted(completed(1, "wave 1", vec![]))),
            (6, Body::TaskCompleted(TaskCompleted::default())),
        ];
        // The same rollout merged: the first phase's start rides in the rollout's, each
        // phase's last asset change in its completion.
        let merged = vec![
            (
                1,
                Body::ExecutionStarted(ExecutionStarted {
                    first_phase: Some(phase(0, "canary", &["a"])),
                    ..counts
                }),
            ),
            (
                2,
                Body::PhaseCompleted(completed(
                    0,
                    "canary",
                    vec![asset("a", AssetState::Applied)],
                )),
            ),
            (2, Body::PhaseStarted(phase(1, "wave 1", &["b", "c"]))),
            (3, updated(1, asset("b", AssetState::Applied))),
            (4, updated(1, asset("c", AssetState::Applied))),
            (5, updated(1, asset("b", AssetState::Healthy))),
            (
                6,
                Body::PhaseCompleted(completed(
                    1,
                    "wave 1",
                    vec![asset("c", AssetState::Healthy)],
                )),
            ),
            (6, Body::TaskCompleted(TaskCompleted::default())),
        ];
        // And with the last phase's completion folded into the end: one message for both.
        let mut folded = merged.clone();
        let (_, Body::PhaseCompleted(last)) = folded.remove(folded.len() - 2) else {
            unreachable!()
        };
        *folded.last_mut().unwrap() = (
            6,
            Body::TaskCompleted(TaskCompleted {
                last_phase: Some(last),
                ..Default::default()
            }),
        );
        assert!(merged.len() < apart.len());
        assert_eq!(folded.len(), merged.len() - 1);
        let apart_bodies: Vec<Body> = apart.iter().map(|(_, b)| b.clone()).collect();
        for form in [&merged, &folded] {
            let unmerged: Vec<Body> = form.iter().flat_map(|(_, b)| b.unmerged()).collect();
            assert_eq!(
                unmerged, apart_bodies,
                "the merged form carries every event"
            );
        }
        let project = |events: &[(i64, Body)]| {
            let mut row = TaskRow::new("t1", "acme", 0);
            row.apply("acme", Some(&received()), 0);
            let mut statuses = Vec::new();
            for (at, body) in events {
                row.apply("acme", Some(&ev(body.clone())), *at);
                statuses.push((*at, row.status));
            }
            statuses.dedup();
            (row, statuses)
        };
        let (apart_row, apart_statuses) = project(&apart);
        let (merged_row, merged_statuses) = project(&merged);
        assert_eq!(merged_row, apart_row);
        assert_eq!(merged_row.event_count, 12);
        assert_eq!(merged_row.to_view(), apart_row.to_view());
        assert_eq!(
            merged_statuses, apart_statuses,
            "the same statuses at the same times"
        );
        let (folded_row, folded_statuses) = project(&folded);
        assert_eq!(folded_row, apart_row);
        assert_eq!(folded_row.event_count, 12);
        assert_eq!(folded_row.to_view(), apart_row.to_view());
        // What a reader sees after each round trip: the status once each time's events are in
        // (the folded end no longer passes through `executing` within its own message).
        let settled = |statuses: Vec<(i64, TaskStatus)>| {
            let mut out: Vec<(i64, TaskStatus)> = Vec::new();
            for (at, status) in statuses {
                match out.last_mut() {
                    Some(last) if last.0 == at => last.1 = status,
                    _ => out.push((at, status)),
                }
            }
            out
        };
        assert_eq!(
            settled(folded_statuses),
            settled(apart_statuses),
            "the same status after each time's events"
        );
    }

    #[test]
    fn rejections_and_dead_letters_carry_reasons() {
        let mut row = TaskRow::new("t1", "acme", 0);
        row.apply(
            "acme",
            Some(&ev(Body::TaskRejected(TaskRejected {
                reasons: vec!["a".into(), "b".into()],
                ..Default::default()
            }))),
            1,
        );
        assert_eq!(
            (row.status, row.reason.as_str()),
            (TaskStatus::Rejected, "a; b")
        );
        let mut row = TaskRow::new("t2", "acme", 0);
        row.apply(
            "acme",
            Some(&ev(Body::DeadLetter(DeadLetter {
                service: "decision".into(),
                reason: "bad".into(),
                ..Default::default()
            }))),
            1,
        );
        assert_eq!(
            (row.status, row.reason.as_str()),
            (TaskStatus::Failed, "dead-lettered by decision: bad")
        );
        let mut row = TaskRow::new("t3", "acme", 0);
        row.apply(
            "acme",
            Some(&ev(Body::DeadLetter(DeadLetter {
                service: "audit".into(),
                ..Default::default()
            }))),
            1,
        );
        assert_eq!(
            row.status,
            TaskStatus::Unspecified,
            "audit's own dead letters fail no task"
        );
    }

    #[test]
    fn rejected_triggers_show_their_text_or_an_excerpt_and_their_reason() {
        // As ingestion records it: hash, size and a bounded prefix.
        let rejected = |payload: &[u8]| {
            let mut row = TaskRow::new("t1", "acme", 0);
            row.apply(
                "acme",
                Some(&ev(Body::TriggerRejected(
                    baton_proto::TriggerRejected::for_payload(
                        "baton.trigger.cli",
                        "unknown environment \"prod\"",
                        payload,
                    ),
                ))),
                1,
            );
            assert_eq!(
                (row.status, row.reason.as_str()),
                (TaskStatus::Rejected, "unknown environment \"prod\"")
            );
            row.text
        };
        // Decoded: the text, whatever else was wrong.
        assert_eq!(
            rejected(br#"{"text":"  fix drift ","environment":"prod"}"#),
            "fix drift"
        );
        let proto = Trigger {
            text: "restart web".into(),
            environment: "prod".into(),
            ..Default::default()
        };
        assert_eq!(
            rejected(&prost::Message::encode_to_vec(&proto)),
            "restart web"
        );
        // Not decodable, or no text: the payload itself, on one line.
        assert_eq!(rejected(br#"{"text":""}"#), r#"{"text":""}"#);
        assert_eq!(
            rejected(b"{\"text\": \"fix\nit\",}"),
            r#"{"text": "fix\nit",}"#
        );
        assert_eq!(rejected(b"fix drift\x1b[31m"), r"fix drift\u{1b}[31m");
        // Cut inside a character (by the sender, or by ingestion keeping only a prefix): still
        // text, and an excerpt of a payload larger than its prefix says so.
        assert_eq!(
            rejected("caf\u{e9}".as_bytes().split_last().unwrap().1),
            "caf"
        );
        let mut cut = b" ".repeat(baton_proto::TRIGGER_REJECTED_PREFIX_MAX - 5);
        cut.extend_from_slice("fix \u{e9}t\u{e9} and more".as_bytes());
        assert_eq!(rejected(&cut), "fix…");
        // Not text: its size and the start of its bytes.
        assert_eq!(
            rejected(b"\xff\x00\x01\x02"),
            "binary payload, 4 bytes: ff000102"
        );
        let binary = rejected(&[0u8; 100]);
        assert_eq!(
            binary,
            format!("binary payload, 100 bytes: {}…", "00".repeat(32))
        );
        // The size is the whole payload's, not the prefix's.
        assert_eq!(
            rejected(&vec![0u8; 1 << 20]),
            format!("binary payload, 1048576 bytes: {}…", "00".repeat(32))
        );
        assert_eq!(rejected(b""), "empty payload");
        // Bounded.
        let long = rejected(format!(r#"{{"text":"{}"}}"#, "é".repeat(5_000)).as_bytes());
        assert_eq!(long.chars().count(), REJECTED_TEXT_MAX + 1);
        assert!(long.ends_with('…'));
        let long = rejected("x".repeat(70_000).as_bytes());
        assert_eq!(long.chars().count(), REJECTED_TEXT_MAX + 1);
    }

    #[test]
    fn rejections_stored_by_older_builds_show_their_payload() {
        // Before the hash, size and prefix, the payload itself was carried (cut at 64 KiB).
        let mut row = TaskRow::new("t1", "acme", 0);
        row.apply(
            "acme",
            Some(&ev(Body::TriggerRejected(baton_proto::TriggerRejected {
                reason: "unknown environment \"prod\"".into(),
                payload: br#"{"text":"fix drift","environment":"prod"}"#.to_vec(),
                ..Default::default()
            }))),
            1,
        );
        assert_eq!(
            (row.status, row.text.as_str(), row.reason.as_str()),
            (
                TaskStatus::Rejected,
                "fix drift",
                "unknown environment \"prod\""
            )
        );
    }

    #[test]
    fn a_rejection_keeps_a_text_the_task_already_has() {
        let mut row = TaskRow::new("t1", "acme", 0);
        row.apply("acme", Some(&received()), 1);
        row.apply(
            "acme",
            Some(&ev(Body::TriggerRejected(baton_proto::TriggerRejected {
                payload: b"other".to_vec(),
                ..Default::default()
            }))),
            2,
        );
        assert_eq!(row.text, "fix drift");
    }

    #[test]
    fn undecodable_events_only_count() {
        let mut row = TaskRow::new("t1", "acme", 5);
        row.apply("acme", None, 7);
        assert_eq!(
            (row.status, row.event_count, row.updated_at),
            (TaskStatus::Unspecified, 1, 7)
        );
    }

    #[test]
    fn timestamps_round_trip_through_micros() {
        let t = baton_proto::Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_000,
        };
        assert_eq!(micros_to_timestamp(timestamp_to_micros(&t)), t);
        let neg = micros_to_timestamp(-1);
        assert_eq!((neg.seconds, neg.nanos), (-1, 999_999_000));
    }

    #[test]
    fn artifacts_come_from_the_recorded_plan_and_big_content_is_omitted() {
        use baton_proto::{Artifact, AuditRecord, Plan, SandboxRun, TaskApproved};
        let record = |body| AuditRecord {
            event: Some(ev(body)),
            ..Default::default()
        };
        let report = baton_proto::report::Report {
            answer: "a".into(),
            ..Default::default()
        }
        .to_artifact();
        let big = Artifact {
            name: "dump.txt".into(),
            media_type: "text/plain".into(),
            content: vec![b'x'; crate::ARTIFACT_CONTENT_MAX + 1],
            sandbox_run: Some(SandboxRun {
                exit_code: 0,
                ..Default::default()
            }),
        };
        let plan = Plan {
            artifacts: vec![report.clone(), big],
            ..Default::default()
        };
        assert!(task_artifacts(&[record(received().body.unwrap())]).is_empty());
        let records = [
            record(received().body.unwrap()),
            record(Body::PlanProposed(PlanProposed {
                plan: Some(plan.clone()),
                ..Default::default()
            })),
            record(Body::TaskApproved(TaskApproved {
                plan: Some(plan),
                ..Default::default()
            })),
        ];
        let artifacts = task_artifacts(&records);
        assert_eq!(artifacts.len(), 2);
        assert_eq!(artifacts[0].name, "report");
        assert_eq!(artifacts[0].content, report.content);
        assert_eq!(artifacts[0].size, report.content.len() as u64);
        assert!(!artifacts[0].content_omitted);
        assert_eq!(artifacts[1].size, crate::ARTIFACT_CONTENT_MAX as u64 + 1);
        assert!(artifacts[1].content.is_empty() && artifacts[1].content_omitted);
        assert!(artifacts[1].sandbox_run.is_some());
    }
}
