//! `baton.v1.ApprovalService`: the human gate over the [`APPROVALS_BUCKET`](crate::APPROVALS_BUCKET).
//!
//! - `ListPending`: any authenticated caller; the caller's tenant (admin: all tenants).
//! - `Approve`: role approver; publishes `TaskApproved` (approver = the token's `sub`) on
//!   `baton.task.approved`, then deletes the entry.
//! - `Reject`: role approver, reason required; publishes `TaskRejected` on
//!   `baton.task.rejected`, then deletes the entry.
//!
//! Publishing before deleting keeps a decision crash-safe: a retried call finds the entry
//! still there and re-publishes the same event id (`<task_id>.approved`), which the stream
//! drops as a duplicate. A task of another tenant is NOT_FOUND, so ids cannot be probed.
//!
//! Not yet (later releases): preventing submitters from approving their own plans, quorum of
//! several approvers, timeouts and escalation, and making concurrent Approve/Reject calls on
//! different replicas mutually exclusive (today both events could be published).

use crate::{Error, Inner, SERVICE};
use baton_proto::approval_service_server::ApprovalService;
use baton_proto::{
    Approval, ApproveRequest, ApproveResponse, Event, ListPendingRequest, ListPendingResponse,
    PendingApproval, RejectRequest, RejectResponse, TaskApproved, TaskRejected, event::Body, subject,
};
use baton_runtime::auth::Role;
use futures::TryStreamExt;
use prost::Message as _;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::info;

/// The gRPC service; built by [`Validation::add_grpc`](crate::Validation::add_grpc).
pub struct Approvals {
    /// Shared with the consumer.
    pub(crate) inner: Arc<Inner>,
}

impl Inner {
    /// The pending approval of `task_id`, if any.
    async fn pending(&self, task_id: &str) -> Result<Option<PendingApproval>, Error> {
        let bytes = match self.approvals.get(task_id).await {
            Ok(b) => b,
            Err(e) if e.kind() == async_nats::jetstream::kv::EntryErrorKind::InvalidKey => return Ok(None),
            Err(e) => return Err(Error::Store(e.to_string())),
        };
        bytes
            .map(|b| {
                PendingApproval::decode(b.as_ref())
                    .map_err(|e| Error::Corrupt { task_id: task_id.into(), reason: e.to_string() })
            })
            .transpose()
    }

    /// The pending approval of `task_id` if `can_see` its tenant; NOT_FOUND otherwise.
    async fn visible_pending(
        &self,
        task_id: &str,
        can_see: impl Fn(&str) -> bool,
    ) -> Result<PendingApproval, Error> {
        if task_id.is_empty() {
            return Err(Error::InvalidArgument("task_id is required".into()));
        }
        match self.pending(task_id).await? {
            Some(p) if can_see(&p.tenant) => Ok(p),
            _ => Err(Error::NotFound(task_id.into())),
        }
    }

    /// Publishes the human decision on `pending`, then removes it from the bucket.
    async fn decide(&self, pending: PendingApproval, stage: &str, subject: &str, body: Body) -> Result<(), Error> {
        let mut event = Event::first(&pending.task_id, &pending.tenant, stage, SERVICE, body);
        event.causation_id = format!("{}.awaiting_approval", pending.task_id);
        self.ctx.bus.publish(subject, &event).await?;
        self.approvals
            .delete(&pending.task_id)
            .await
            .map_err(|e| Error::Store(e.to_string()))?;
        Ok(())
    }
}

#[tonic::async_trait]
impl ApprovalService for Approvals {
    async fn list_pending(
        &self,
        request: Request<ListPendingRequest>,
    ) -> Result<Response<ListPendingResponse>, Status> {
        let principal = self.inner.ctx.auth.authenticate(&request)?;
        let keys: Vec<String> = self
            .inner
            .approvals
            .keys()
            .await
            .map_err(|e| Error::Store(e.to_string()))?
            .try_collect()
            .await
            .map_err(|e| Error::Store(e.to_string()))?;
        let mut pending = Vec::new();
        for key in keys {
            // A key deleted between listing and reading is simply no longer pending.
            if let Some(p) = self.inner.pending(&key).await?
                && principal.can_see(&p.tenant)
            {
                pending.push(p);
            }
        }
        pending.sort_by(|a, b| {
            let t = |p: &PendingApproval| p.requested_at.map(|t| (t.seconds, t.nanos)).unwrap_or_default();
            t(a).cmp(&t(b)).then_with(|| a.task_id.cmp(&b.task_id))
        });
        Ok(Response::new(ListPendingResponse { pending }))
    }

    async fn approve(&self, request: Request<ApproveRequest>) -> Result<Response<ApproveResponse>, Status> {
        let principal = self.inner.ctx.auth.authenticate(&request)?;
        principal.require(Role::Approver)?;
        let req = request.into_inner();
        let pending = self.inner.visible_pending(&req.task_id, |t| principal.can_see(t)).await?;
        let approval = Approval {
            task_id: pending.task_id.clone(),
            approver: principal.subject.clone(),
            approved: true,
            reason: req.reason,
            decided_at: Some(baton_proto::now()),
        };
        let body = Body::TaskApproved(TaskApproved {
            task: pending.task.clone(),
            spec: pending.spec.clone(),
            plan: pending.plan.clone(),
            validation: pending.validation.clone(),
            approval: Some(approval.clone()),
        });
        self.inner.decide(pending, "approved", subject::TASK_APPROVED, body).await?;
        info!(task_id = %approval.task_id, approver = %approval.approver, "plan approved by a human");
        Ok(Response::new(ApproveResponse { approval: Some(approval) }))
    }

    async fn reject(&self, request: Request<RejectRequest>) -> Result<Response<RejectResponse>, Status> {
        let principal = self.inner.ctx.auth.authenticate(&request)?;
        principal.require(Role::Approver)?;
        let req = request.into_inner();
        if req.reason.trim().is_empty() {
            return Err(Error::InvalidArgument("a rejection needs a reason".into()).into());
        }
        let pending = self.inner.visible_pending(&req.task_id, |t| principal.can_see(t)).await?;
        let approval = Approval {
            task_id: pending.task_id.clone(),
            approver: principal.subject.clone(),
            approved: false,
            reason: req.reason.clone(),
            decided_at: Some(baton_proto::now()),
        };
        let body = Body::TaskRejected(TaskRejected {
            validation: pending.validation.clone(),
            approval: Some(approval.clone()),
            reasons: vec![req.reason],
        });
        self.inner.decide(pending, "rejected", subject::TASK_REJECTED, body).await?;
        info!(task_id = %approval.task_id, approver = %approval.approver, "plan rejected by a human");
        Ok(Response::new(RejectResponse { approval: Some(approval) }))
    }
}
