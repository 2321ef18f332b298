//! Human-in-the-loop per tool call: the store of agent tool calls waiting for a human, shared by
//! the agent runner (which asks, resumes and times out) and validation's `ApprovalService`
//! (through which humans decide).
//!
//! # The record
//!
//! KV bucket [`BUCKET`], key `<task_id>.<step>` ([`key`]), value a [`ToolCallApproval`]: first
//! the [`PendingToolCall`] alone, then with its `decision` ([`Approval`] with `step` and
//! `arguments_hash`). The agent runner writes the pending call with `create` (two runners
//! racing on one step keep the first); a decision is *claimed* with a compare-and-set on the
//! pending revision before anything is published, so a human's `Approve`, another human's
//! `Reject` and the runner's timeout racing on one call (on any replicas) settle on exactly one
//! decision. The claimer then publishes [`ToolCallDecided`] on `baton.agent.<role>` (event id
//! `<task_id>.tool_call_decided.<step>`, so a re-publication is dropped by the stream) and marks
//! the record `published`. A claim whose publisher died before publishing is published by the
//! next repeat of the same decision or by the runner's sweep ([`ToolApprovals::sweep`]).
//!
//! # Trust
//!
//! The record, not the event, is the truth: the runner resumes a task's loop when
//! `ToolCallDecided` arrives, but reads the decision from the bucket (which only validation and
//! the agent runner may write) and runs the call only when the held decision approves exactly
//! that step, that tool and that arguments hash.

use baton_bus::kv::{Kv, KvError, Revision};
use baton_bus::{Bus, BusError};
use baton_proto::{
    Approval, Event, PendingToolCall, ToolCallApproval, ToolCallDecided, event::Body, subject,
};
use sha2::{Digest, Sha256};

/// The KV bucket of tool calls waiting for (or decided by) a human.
pub const BUCKET: &str = "baton_tool_approvals";

/// `Approval.approver` of a tool call nobody decided before its deadline.
pub const TIMEOUT_APPROVER: &str = "timeout";

/// Attempts at claiming a decision before giving up (each failure means another writer changed
/// the record, after which the re-read sees its claim).
const CLAIM_ATTEMPTS: usize = 5;

/// The key of the tool call at `step` of `task_id`: `<task_id>.<step, 4 digits>`, with every
/// character of the id but ASCII letters, digits, `-` and `_` replaced by `_`.
pub fn key(task_id: &str, step: u32) -> String {
    let safe: String = task_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.{step:04}")
}

/// Canonical JSON of `value`: object keys sorted (recursively), no whitespace.
pub fn canonical_json(value: &serde_json::Value) -> String {
    fn canon(v: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::Object(m) => {
                let sorted: std::collections::BTreeMap<_, _> =
                    m.iter().map(|(k, v)| (k.clone(), canon(v))).collect();
                serde_json::to_value(sorted).unwrap_or(Value::Null)
            }
            Value::Array(a) => Value::Array(a.iter().map(canon).collect()),
            other => other.clone(),
        }
    }
    canon(value).to_string()
}

/// Lowercase hex SHA-256 of the canonical JSON ([`canonical_json`]) of a call's arguments: what
/// an approval of a tool call is bound to.
pub fn arguments_hash(arguments: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(canonical_json(arguments).as_bytes()))
}

/// Why a tool call could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No tool call waits at this step of this task (or it belongs to another tenant).
    #[error("no tool call awaiting approval at agent step {step} of task {task_id}")]
    NotFound {
        /// The task.
        task_id: String,
        /// The step named.
        step: u32,
    },
    /// The approver saw other arguments than the call held.
    #[error(
        "task {task_id} step {step}: the arguments hash given ({given}) is not the hash of the \
         tool call awaiting approval ({held}); list the pending items again and approve the call \
         shown"
    )]
    ArgumentsChanged {
        /// The task.
        task_id: String,
        /// The step.
        step: u32,
        /// `ApproveRequest.arguments_hash`.
        given: String,
        /// The held call's hash.
        held: String,
    },
    /// The opposite decision was taken already (by a human, or by the timeout).
    #[error("the tool call at agent step {step} of task {task_id} was already {decision} by {by}")]
    AlreadyDecided {
        /// The task.
        task_id: String,
        /// The step.
        step: u32,
        /// `approved` or `denied`.
        decision: &'static str,
        /// Who decided (`timeout` for the deadline).
        by: String,
    },
    /// The record is unusable (a claim without its decision, an undecodable value).
    #[error("tool approval {key} of bucket {BUCKET} is corrupt: {reason}; delete the key")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The bucket failed (not a conflict): may pass on a retry.
    #[error("tool approvals bucket {BUCKET}: {0}; is NATS up?")]
    Store(String),
    /// Publishing the decision failed: the claim stands and is published by a retry or the sweep.
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl From<KvError> for Error {
    fn from(e: KvError) -> Self {
        match e {
            KvError::Decode { key, reason, .. } => Error::Corrupt { key, reason },
            other => Error::Store(other.to_string()),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::NotFound { .. } => tonic::Status::not_found(msg),
            Error::ArgumentsChanged { .. } | Error::AlreadyDecided { .. } => {
                tonic::Status::failed_precondition(msg)
            }
            Error::Corrupt { .. } => tonic::Status::data_loss(msg),
            Error::Store(_) | Error::Bus(_) => tonic::Status::unavailable(msg),
        }
    }
}

/// `approved` or `denied`.
fn label(approved: bool) -> &'static str {
    if approved { "approved" } else { "denied" }
}

/// The store of tool approvals on one bus. Cheap to clone.
#[derive(Clone)]
pub struct ToolApprovals {
    kv: Kv<ToolCallApproval>,
    bus: Bus,
}

impl std::fmt::Debug for ToolApprovals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolApprovals")
            .field("bucket", &self.kv.bucket())
            .finish()
    }
}

impl ToolApprovals {
    /// Opens (creating if needed) the bucket on `bus` (history 1).
    pub async fn open(bus: &Bus) -> Result<ToolApprovals, BusError> {
        Ok(ToolApprovals {
            kv: bus.kv::<ToolCallApproval>(BUCKET, 1).await?,
            bus: bus.clone(),
        })
    }

    /// The record of `step` of `task_id` and its revision, if the step ever waited.
    pub async fn get(
        &self,
        task_id: &str,
        step: u32,
    ) -> Result<Option<(ToolCallApproval, Revision)>, KvError> {
        self.kv.get(&key(task_id, step)).await
    }

    /// Stores `pending` unless its step already has a record; returns the record in force (the
    /// first one written when another runner wrote the step meanwhile).
    pub async fn request(&self, pending: PendingToolCall) -> Result<ToolCallApproval, KvError> {
        let k = key(&pending.task_id, pending.step);
        let record = ToolCallApproval {
            pending: Some(pending),
            decision: None,
            published: false,
        };
        match self.kv.create(&k, &record).await {
            Ok(_) => Ok(record),
            Err(KvError::Conflict { .. }) => Ok(self.kv.get(&k).await?.map_or(record, |(r, _)| r)),
            Err(e) => Err(e),
        }
    }

    /// Every record of the bucket (pending and decided), in key order. A key deleted between
    /// listing and reading is skipped.
    pub async fn all(&self) -> Result<Vec<(String, ToolCallApproval, Revision)>, KvError> {
        let mut keys = self.kv.keys().await?;
        keys.sort();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some((record, revision)) = self.kv.get(&k).await? {
                out.push((k, record, revision));
            }
        }
        Ok(out)
    }

    /// The tool calls still waiting for a human whose tenant `can_see` accepts, oldest first.
    pub async fn list_pending(
        &self,
        can_see: impl Fn(&str) -> bool,
    ) -> Result<Vec<PendingToolCall>, KvError> {
        let mut pending: Vec<PendingToolCall> = self
            .all()
            .await?
            .into_iter()
            .filter(|(_, r, _)| r.decision.is_none())
            .filter_map(|(_, r, _)| r.pending)
            .filter(|p| can_see(&p.tenant))
            .collect();
        pending.sort_by(|a, b| {
            let t = |p: &PendingToolCall| {
                p.requested_at
                    .map(|t| (t.seconds, t.nanos))
                    .unwrap_or_default()
            };
            t(a).cmp(&t(b))
                .then_with(|| a.task_id.cmp(&b.task_id))
                .then_with(|| a.step.cmp(&b.step))
        });
        Ok(pending)
    }

    /// Decides the tool call at `step` of `task_id` (see the module docs): claims `decision`
    /// with a compare-and-set, publishes [`ToolCallDecided`], marks the record published.
    /// `decision.arguments_hash`, when not empty and the decision approves, must be the held
    /// call's hash. Returns the decision in force (for a repeat of the same decision, the
    /// first one).
    ///
    /// Errors: [`Error::NotFound`] (no record, or `can_see` refuses its tenant),
    /// [`Error::ArgumentsChanged`], [`Error::AlreadyDecided`] (the opposite decision was
    /// claimed), [`Error::Store`]/[`Error::Bus`].
    pub async fn decide(
        &self,
        task_id: &str,
        step: u32,
        can_see: impl Fn(&str) -> bool,
        mut decision: Approval,
    ) -> Result<Approval, Error> {
        let k = key(task_id, step);
        let not_found = || Error::NotFound {
            task_id: task_id.into(),
            step,
        };
        for _ in 0..CLAIM_ATTEMPTS {
            let Some((record, revision)) = self.kv.get(&k).await? else {
                return Err(not_found());
            };
            let pending = record.pending.clone().ok_or_else(|| Error::Corrupt {
                key: k.clone(),
                reason: "the record has no pending call".into(),
            })?;
            if !can_see(&pending.tenant) {
                return Err(not_found());
            }
            let held = pending.arguments_hash.clone();
            if decision.approved
                && !decision.arguments_hash.is_empty()
                && decision.arguments_hash != held
            {
                return Err(Error::ArgumentsChanged {
                    task_id: task_id.into(),
                    step,
                    given: decision.arguments_hash,
                    held,
                });
            }
            if let Some(prior) = record.decision.clone() {
                if prior.approved != decision.approved {
                    return Err(Error::AlreadyDecided {
                        task_id: task_id.into(),
                        step,
                        decision: label(prior.approved),
                        by: prior.approver,
                    });
                }
                if record.published {
                    return Ok(prior);
                }
                // Claimed but not (known to be) published: publish the claimed decision.
                return self.publish(&k, record, revision).await;
            }
            decision.task_id = pending.task_id.clone();
            decision.step = step;
            decision.arguments_hash = held;
            let claimed = ToolCallApproval {
                pending: Some(pending),
                decision: Some(decision.clone()),
                published: false,
            };
            match self.kv.update(&k, &claimed, revision).await {
                Ok(revision) => return self.publish(&k, claimed, revision).await,
                Err(KvError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Store(format!(
            "tool call {k} changed under {CLAIM_ATTEMPTS} attempts to decide it; retry the call"
        )))
    }

    /// Publishes a claimed decision on `baton.agent.<role>`, then marks it published at
    /// `revision` (the claim's).
    async fn publish(
        &self,
        k: &str,
        mut record: ToolCallApproval,
        revision: Revision,
    ) -> Result<Approval, Error> {
        let pending = record.pending.clone().unwrap_or_default();
        let approval = record.decision.clone().ok_or_else(|| Error::Corrupt {
            key: k.into(),
            reason: "a published record has no decision".into(),
        })?;
        let body = Body::ToolCallDecided(ToolCallDecided {
            pending: Some(pending.clone()),
            approval: Some(approval.clone()),
        });
        let mut event = Event::first(
            &pending.task_id,
            &pending.tenant,
            &format!("tool_call_decided.{}", pending.step),
            if approval.approver == TIMEOUT_APPROVER {
                "agent-runner"
            } else {
                "validation"
            },
            body,
        );
        event.causation_id = format!(
            "{}.tool_call_awaiting_approval.{}",
            pending.task_id, pending.step
        );
        let span = tracing::info_span!("tool_call_decided", task_id = %pending.task_id, step = pending.step);
        baton_bus::trace::set_parent_traceparent(&span, &pending.traceparent);
        {
            use tracing::Instrument;
            self.bus
                .publish(&subject::agent(&pending.role), &event)
                .instrument(span)
                .await?;
        }
        record.published = true;
        match self.kv.update(k, &record, revision).await {
            Ok(_) | Err(KvError::Conflict { .. }) => {}
            Err(e) => {
                tracing::warn!(key = %k, error = %e, "tool call decision published but not marked published")
            }
        }
        Ok(approval)
    }

    /// The runner's sweep, run by every replica: denies each pending call whose deadline is
    /// before `now` (approver [`TIMEOUT_APPROVER`], through [`ToolApprovals::decide`], so a
    /// human deciding at the same moment or another replica's sweep settles on one decision),
    /// and publishes each claimed decision not yet published. Returns how many records it
    /// decided or published.
    pub async fn sweep(&self, now: std::time::SystemTime) -> Result<usize, Error> {
        let now = baton_proto::Timestamp::from(now);
        let mut acted = 0;
        for (k, record, revision) in self.all().await? {
            let Some(pending) = record.pending.clone() else {
                continue;
            };
            match &record.decision {
                Some(_) if !record.published => {
                    self.publish(&k, record, revision).await?;
                    acted += 1;
                }
                Some(_) => {}
                None => {
                    let Some(deadline) = pending.deadline else {
                        continue;
                    };
                    if (deadline.seconds, deadline.nanos) > (now.seconds, now.nanos) {
                        continue;
                    }
                    let decision = Approval {
                        approver: TIMEOUT_APPROVER.into(),
                        approved: false,
                        reason: format!(
                            "no approver decided within the approval timeout (deadline {})",
                            rfc3339(&deadline)
                        ),
                        decided_at: Some(now),
                        ..Default::default()
                    };
                    match self
                        .decide(&pending.task_id, pending.step, |_| true, decision)
                        .await
                    {
                        Ok(_) => acted += 1,
                        // A human decided first: theirs stands.
                        Err(Error::AlreadyDecided { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(acted)
    }
}

/// A timestamp as RFC 3339 seconds (UTC), e.g. `2026-11-30T10:40:00Z`.
pub fn rfc3339(t: &baton_proto::Timestamp) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.seconds.max(0) as u64);
    humantime_serde::re::humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_arguments_hash_ignores_key_order_and_sees_every_value() {
        let a =
            arguments_hash(&json!({"method": "POST", "url": "http://x", "body": {"b": 1, "a": 2}}));
        let b =
            arguments_hash(&json!({"url": "http://x", "body": {"a": 2, "b": 1}, "method": "POST"}));
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert_ne!(
            a,
            arguments_hash(&json!({"method": "POST", "url": "http://y", "body": {"a": 2, "b": 1}}))
        );
    }

    #[test]
    fn keys_are_safe_and_times_are_rfc3339() {
        assert_eq!(key("t.1/x", 7), "t_1_x.0007");
        let t = baton_proto::Timestamp {
            seconds: 1_796_000_000,
            nanos: 0,
        };
        assert_eq!(rfc3339(&t), "2026-11-30T00:53:20Z");
    }
}
