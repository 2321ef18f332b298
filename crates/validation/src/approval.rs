//! `baton.v1.ApprovalService`: the human gate over the [`APPROVALS_BUCKET`](crate::APPROVALS_BUCKET).
//!
//! - `ListPending`: any authenticated caller; the caller's tenant (admin: all tenants); plans
//!   already decided are not listed.
//! - `Approve`: role approver; publishes `TaskApproved` (approver = the token's `sub`) on
//!   `baton.task.approved`, stage `approved`, signed by validation's key. The approval binds
//!   the hash of the plan held (`Approval.plan_hash`); when the request names a `plan_hash`
//!   (what `ListPending` showed the approver) it must be that hash, else FAILED_PRECONDITION and
//!   nothing is decided.
//! - `Reject`: role approver, reason required; publishes `TaskRejected` on
//!   `baton.task.rejected`, stage `rejected`.
//!
//! # One decision per task
//!
//! A key of the bucket holds a [`Stored`] value: first the [`PendingApproval`], then a
//! [`Decided`] record. A decision is claimed before anything is published: the call reads the
//! entry with its revision and replaces the pending approval by `Decided { approval, pending,
//! published: false }` with a compare-and-set on that revision. Only the call whose write
//! lands publishes; a concurrent call finds the claim when it re-reads. So `Approve` and
//! `Reject` racing on one task (even on different replicas) publish exactly one of
//! `<task>.approved` / `<task>.rejected`. After publishing, the record is rewritten with
//! `published: true` and stays as the task's tombstone.
//!
//! On a claimed task:
//! - the opposite decision is refused with FAILED_PRECONDITION ("task t-1 was already approved
//!   by alice");
//! - the same decision (approve after approve, reject after reject) succeeds and returns the
//!   claimed [`Approval`]. If the claim is not yet marked published (the deciding process died
//!   between claim and publish, or is still publishing) it publishes the claimed decision: the
//!   event id `<task_id>.approved` is deterministic, so the stream drops a copy. Once
//!   published, nothing is published again.
//!
//! A task of another tenant is NOT_FOUND, so ids cannot be probed.
//!
//! # Tool calls (human-in-the-loop per tool call)
//!
//! The same three calls decide the agents' tool calls that the tool policy sent to a human
//! (`baton_runtime::tool_approvals`, KV `baton_tool_approvals`): `ListPending` lists them in
//! `tool_calls` beside the plans; `Approve`/`Reject` with `step` > 0 decide the call at that
//! agent step of the task, with the same role, tenant and claim-then-publish rules as plans.
//! An `Approve` naming an `arguments_hash` other than the held call's is FAILED_PRECONDITION
//! (like `plan_hash`). The decision goes to the agent runner as `ToolCallDecided` on
//! `baton.agent.<role>`; the runner resumes the task's loop.
//!
//! Not yet (later releases): preventing submitters from approving their own plans, quorum of
//! several approvers, timeouts and escalation.

use crate::{Error, Inner, SERVICE};
use baton_bus::kv::{Codec, KvError, Revision};
use baton_proto::approval_service_server::ApprovalService;
use baton_proto::{
    Approval, ApproveRequest, ApproveResponse, Event, ListPendingRequest, ListPendingResponse,
    PendingApproval, RejectRequest, RejectResponse, TaskApproved, TaskRejected, event::Body,
    subject,
};
use baton_runtime::auth::Role;
use baton_runtime::signing;
use baton_runtime::tool_approvals::{self, ToolApprovals};
use bytes::Bytes;
use prost::Message as _;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use tracing::{info, warn};

/// First byte of a [`Decided`] value in the bucket. A protobuf message never starts with a zero
/// byte (field number 0 is reserved), so a decided record cannot be mistaken for a
/// [`PendingApproval`].
const DECIDED_MARKER: u8 = 0;

/// Attempts at claiming a decision before giving up (each failed attempt means another writer
/// changed the entry, after which the re-read sees a claim; more than two is a bug or a storm).
const CLAIM_ATTEMPTS: usize = 5;

/// A decision claimed on a pending approval: the value of its key from the claim on.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Decided {
    /// The human decision (approver, approved, reason, time).
    #[prost(message, optional, tag = "1")]
    pub approval: Option<Approval>,
    /// The pending approval it decides (for the published event and tenant checks).
    #[prost(message, optional, tag = "2")]
    pub pending: Option<PendingApproval>,
    /// Whether the decision's event was published (false between claim and publish).
    #[prost(bool, tag = "3")]
    pub published: bool,
}

/// The value of a key of the approvals bucket.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// Waiting for a human.
    Pending(PendingApproval),
    /// Decided (claimed, and published once [`Decided::published`]).
    Decided(Decided),
}

impl Stored {
    /// Decodes a bucket value: [`Decided`] after a zero byte, else a [`PendingApproval`].
    pub fn decode(value: &[u8]) -> Result<Stored, prost::DecodeError> {
        match value.split_first() {
            Some((&DECIDED_MARKER, rest)) => Ok(Stored::Decided(Decided::decode(rest)?)),
            _ => Ok(Stored::Pending(PendingApproval::decode(value)?)),
        }
    }

    /// Encodes the value for the bucket (the inverse of [`Stored::decode`]).
    pub fn encode(&self) -> Bytes {
        match self {
            Stored::Pending(p) => p.encode_to_vec().into(),
            Stored::Decided(d) => {
                let mut buf = Vec::with_capacity(1 + d.encoded_len());
                buf.push(DECIDED_MARKER);
                d.encode(&mut buf).expect("a Vec grows as needed");
                buf.into()
            }
        }
    }
}

impl Codec for Stored {
    fn to_bytes(&self) -> Bytes {
        self.encode()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        Stored::decode(bytes).map_err(|e| e.to_string())
    }
}

/// `approved` or `rejected`.
fn decision_label(approved: bool) -> &'static str {
    if approved { "approved" } else { "rejected" }
}

/// The gRPC service; built by [`Validation::add_grpc`](crate::Validation::add_grpc).
pub struct Approvals {
    /// Shared with the consumer.
    pub(crate) inner: Arc<Inner>,
}

impl Inner {
    /// The value of `task_id` and its revision; `None` when there is none (or only a delete
    /// marker, left by versions that deleted decided entries).
    pub(crate) async fn stored(&self, task_id: &str) -> Result<Option<(Revision, Stored)>, Error> {
        match self.approvals.get(task_id).await {
            Ok(found) => Ok(found.map(|(stored, revision)| (revision, stored))),
            Err(KvError::InvalidKey { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Decides the pending approval of `task_id` (see the module docs): claims the decision
    /// with a compare-and-set, publishes it, marks it published. Returns the decision in
    /// force, which for a repeated decision is the first one.
    ///
    /// Errors: NotFound (nothing pending, or `can_see` refuses its tenant), AlreadyDecided
    /// (the opposite decision was claimed), Store/Bus.
    async fn decide(
        &self,
        task_id: &str,
        can_see: impl Fn(&str) -> bool,
        mut decision: Approval,
    ) -> Result<Approval, Error> {
        if task_id.is_empty() {
            return Err(Error::InvalidArgument("task_id is required".into()));
        }
        for _ in 0..CLAIM_ATTEMPTS {
            let (revision, decided) = match self.stored(task_id).await? {
                None => return Err(Error::NotFound(task_id.into())),
                Some((_, Stored::Pending(p))) if !can_see(&p.tenant) => {
                    return Err(Error::NotFound(task_id.into()));
                }
                Some((revision, Stored::Pending(pending))) => {
                    // Bind the hash of the plan held here; an approver who names the hash of
                    // the plan they saw must have seen this one.
                    let held = signing::plan_hash(&pending.plan.clone().unwrap_or_default());
                    if decision.approved
                        && !decision.plan_hash.is_empty()
                        && decision.plan_hash != held
                    {
                        return Err(Error::PlanChanged {
                            task_id: task_id.into(),
                            given: decision.plan_hash,
                            held,
                        });
                    }
                    decision.plan_hash = held;
                    let decided = Decided {
                        approval: Some(decision.clone()),
                        pending: Some(pending),
                        published: false,
                    };
                    match self
                        .approvals
                        .update(task_id, &Stored::Decided(decided.clone()), revision)
                        .await
                    {
                        Ok(revision) => (revision, decided),
                        // Another call claimed (or the entry changed) since the read: re-read.
                        Err(KvError::Conflict { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Some((revision, Stored::Decided(decided))) => {
                    let corrupt = |what: &str| Error::Corrupt {
                        task_id: task_id.into(),
                        reason: format!("decided record has no {what}"),
                    };
                    let tenant = decided
                        .pending
                        .as_ref()
                        .ok_or_else(|| corrupt("pending approval"))?
                        .tenant
                        .as_str();
                    if !can_see(tenant) {
                        return Err(Error::NotFound(task_id.into()));
                    }
                    let prior = decided
                        .approval
                        .clone()
                        .ok_or_else(|| corrupt("approval"))?;
                    if prior.approved != decision.approved {
                        return Err(Error::AlreadyDecided {
                            task_id: task_id.into(),
                            decision: decision_label(prior.approved),
                            by: prior.approver,
                        });
                    }
                    if decision.approved
                        && !decision.plan_hash.is_empty()
                        && decision.plan_hash != prior.plan_hash
                    {
                        return Err(Error::PlanChanged {
                            task_id: task_id.into(),
                            given: decision.plan_hash,
                            held: prior.plan_hash,
                        });
                    }
                    if decided.published {
                        return Ok(prior);
                    }
                    // Claimed but not (known to be) published: publish the claimed decision.
                    (revision, decided)
                }
            };
            return self.publish_decided(task_id, revision, decided).await;
        }
        Err(Error::Store(format!(
            "task {task_id} changed under {CLAIM_ATTEMPTS} attempts to decide it; retry the call"
        )))
    }

    /// Publishes a claimed decision, then marks it published (at `revision`, the claim's).
    async fn publish_decided(
        &self,
        task_id: &str,
        revision: Revision,
        mut decided: Decided,
    ) -> Result<Approval, Error> {
        let corrupt = |what: &str| Error::Corrupt {
            task_id: task_id.into(),
            reason: format!("decided record has no {what}"),
        };
        let approval = decided
            .approval
            .clone()
            .ok_or_else(|| corrupt("approval"))?;
        let pending = decided
            .pending
            .clone()
            .ok_or_else(|| corrupt("pending approval"))?;
        let (stage, subject, body) = if approval.approved {
            let mut approved = TaskApproved {
                task: pending.task.clone(),
                spec: pending.spec.clone(),
                plan: pending.plan.clone(),
                validation: pending.validation.clone(),
                approval: Some(approval.clone()),
                signature: None,
            };
            // The claim holds the approval with the plan hash bound when it was claimed, so a
            // re-publication signs the same content (Ed25519 is deterministic: same bytes).
            signing::sign_approved(&self.key, &mut approved).map_err(|e| Error::Corrupt {
                task_id: task_id.into(),
                reason: format!("cannot sign the claimed approval: {e}"),
            })?;
            (
                "approved",
                subject::TASK_APPROVED,
                Body::TaskApproved(approved),
            )
        } else {
            let body = Body::TaskRejected(TaskRejected {
                validation: pending.validation.clone(),
                approval: Some(approval.clone()),
                reasons: vec![approval.reason.clone()],
            });
            ("rejected", subject::TASK_REJECTED, body)
        };
        let mut event = Event::first(&pending.task_id, &pending.tenant, stage, SERVICE, body);
        event.causation_id = format!("{}.awaiting_approval", pending.task_id);
        // Continue the task's trace from the gate, not the approver's request.
        let span = tracing::info_span!("decision", task_id = %pending.task_id, stage);
        baton_bus::trace::set_parent_traceparent(&span, &pending.traceparent);
        self.ctx
            .bus
            .publish(subject, &event)
            .instrument(span)
            .await?;
        decided.published = true;
        match self
            .approvals
            .update(task_id, &Stored::Decided(decided), revision)
            .await
        {
            Ok(_) => {}
            // A concurrent repeat of the same decision marked it first.
            Err(KvError::Conflict { .. }) => {}
            // Published all the same; a repeat would re-publish the same id (deduplicated).
            Err(e) => {
                warn!(task_id = %task_id, error = %e, "decision published but not marked published")
            }
        }
        Ok(approval)
    }
}

impl Approvals {
    /// The store of tool calls waiting for a human (opened per call: decisions are rare and
    /// human-paced, and opening is idempotent).
    async fn tool_approvals(&self) -> Result<ToolApprovals, Status> {
        ToolApprovals::open(&self.inner.ctx.bus)
            .await
            .map_err(|e| Error::Bus(e).into())
    }

    /// Decides the tool call at `step` of `task_id` (see [`ToolApprovals::decide`]).
    async fn decide_tool_call(
        &self,
        task_id: &str,
        step: u32,
        can_see: impl Fn(&str) -> bool,
        decision: Approval,
    ) -> Result<Approval, Status> {
        if task_id.is_empty() {
            return Err(Error::InvalidArgument("task_id is required".into()).into());
        }
        Ok(self
            .tool_approvals()
            .await?
            .decide(task_id, step, can_see, decision)
            .await?)
    }
}

#[tonic::async_trait]
impl ApprovalService for Approvals {
    async fn list_pending(
        &self,
        request: Request<ListPendingRequest>,
    ) -> Result<Response<ListPendingResponse>, Status> {
        let principal = self.inner.ctx.auth.authenticate(&request).await?;
        let keys = self.inner.approvals.keys().await.map_err(Error::from)?;
        let mut pending = Vec::new();
        for key in keys {
            // A key deleted between listing and reading is simply no longer pending; a
            // decided one is not pending either.
            if let Some((_, Stored::Pending(p))) = self.inner.stored(&key).await?
                && principal.can_see(&p.tenant)
            {
                pending.push(p);
            }
        }
        pending.sort_by(|a, b| {
            let t = |p: &PendingApproval| {
                p.requested_at
                    .map(|t| (t.seconds, t.nanos))
                    .unwrap_or_default()
            };
            t(a).cmp(&t(b)).then_with(|| a.task_id.cmp(&b.task_id))
        });
        let tool_calls = self
            .tool_approvals()
            .await?
            .list_pending(|t| principal.can_see(t))
            .await
            .map_err(tool_approvals::Error::from)?;
        Ok(Response::new(ListPendingResponse {
            pending,
            tool_calls,
        }))
    }

    async fn approve(
        &self,
        request: Request<ApproveRequest>,
    ) -> Result<Response<ApproveResponse>, Status> {
        let principal = self.inner.ctx.auth.authenticate(&request).await?;
        principal.require(Role::Approver)?;
        let req = request.into_inner();
        if req.step > 0 {
            let decision = Approval {
                approver: principal.subject.clone(),
                approved: true,
                reason: req.reason,
                decided_at: Some(baton_proto::now()),
                arguments_hash: req.arguments_hash.trim().to_ascii_lowercase(),
                ..Default::default()
            };
            let approval = self
                .decide_tool_call(&req.task_id, req.step, |t| principal.can_see(t), decision)
                .await?;
            info!(task_id = %approval.task_id, step = approval.step, approver = %approval.approver, arguments_hash = %approval.arguments_hash, "tool call approved by a human");
            return Ok(Response::new(ApproveResponse {
                approval: Some(approval),
            }));
        }
        let decision = Approval {
            task_id: req.task_id.clone(),
            approver: principal.subject.clone(),
            approved: true,
            reason: req.reason,
            decided_at: Some(baton_proto::now()),
            plan_hash: req.plan_hash.trim().to_ascii_lowercase(),
            ..Default::default()
        };
        let approval = self
            .inner
            .decide(&req.task_id, |t| principal.can_see(t), decision)
            .await?;
        info!(task_id = %approval.task_id, approver = %approval.approver, plan_hash = %approval.plan_hash, "plan approved by a human");
        Ok(Response::new(ApproveResponse {
            approval: Some(approval),
        }))
    }

    async fn reject(
        &self,
        request: Request<RejectRequest>,
    ) -> Result<Response<RejectResponse>, Status> {
        let principal = self.inner.ctx.auth.authenticate(&request).await?;
        principal.require(Role::Approver)?;
        let req = request.into_inner();
        if req.reason.trim().is_empty() {
            return Err(Error::InvalidArgument("a rejection needs a reason".into()).into());
        }
        if req.step > 0 {
            let decision = Approval {
                approver: principal.subject.clone(),
                approved: false,
                reason: req.reason,
                decided_at: Some(baton_proto::now()),
                ..Default::default()
            };
            let approval = self
                .decide_tool_call(&req.task_id, req.step, |t| principal.can_see(t), decision)
                .await?;
            info!(task_id = %approval.task_id, step = approval.step, approver = %approval.approver, "tool call denied by a human");
            return Ok(Response::new(RejectResponse {
                approval: Some(approval),
            }));
        }
        let decision = Approval {
            task_id: req.task_id.clone(),
            approver: principal.subject.clone(),
            approved: false,
            reason: req.reason,
            decided_at: Some(baton_proto::now()),
            ..Default::default()
        };
        let approval = self
            .inner
            .decide(&req.task_id, |t| principal.can_see(t), decision)
            .await?;
        info!(task_id = %approval.task_id, approver = %approval.approver, "plan rejected by a human");
        Ok(Response::new(RejectResponse {
            approval: Some(approval),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_and_decided_values_round_trip_and_never_collide() {
        let pending = PendingApproval {
            task_id: "t-1".into(),
            tenant: "acme".into(),
            ..Default::default()
        };
        let stored = Stored::Pending(pending.clone());
        assert_eq!(Stored::decode(&stored.encode()).unwrap(), stored);
        let decided = Stored::Decided(Decided {
            approval: Some(Approval {
                task_id: "t-1".into(),
                approver: "alice".into(),
                approved: true,
                ..Default::default()
            }),
            pending: Some(pending),
            published: true,
        });
        assert_eq!(Stored::decode(&decided.encode()).unwrap(), decided);
        // A decided value is not a valid PendingApproval, so old readers cannot mistake it.
        assert!(PendingApproval::decode(decided.encode().as_ref()).is_err());
    }
}
