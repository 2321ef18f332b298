//! `baton.v1.TaskService`: task views and records from the store, live records from the
//! writer's broadcast.

use crate::projection::is_final_kind;
use crate::store::Witness;
use crate::store::{Store, StoredRecord, TaskQuery};
use baton_proto::{
    AuditRecord, GetTaskRequest, GetTaskResponse, ListTasksRequest, ListTasksResponse, TaskStatus,
    VerifyAuditRequest, VerifyAuditResponse, WatchTaskRequest, task_service_server::TaskService,
};
use baton_runtime::auth::{Authenticator, Role};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::debug;

/// Tasks per `ListTasks` page when the request says 0.
const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest `ListTasks` page.
const MAX_PAGE_SIZE: u32 = 500;

/// The `TaskService` implementation.
pub(crate) struct TaskApi {
    pub(crate) store: Arc<Store>,
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) live: broadcast::Sender<Arc<StoredRecord>>,
    pub(crate) watch_wait: Duration,
    pub(crate) stopped: CancellationToken,
    /// The head anchored outside the database, which `VerifyAudit` checks too.
    pub(crate) anchor: Arc<crate::anchor::Anchor>,
}

fn not_found(task_id: &str) -> Status {
    Status::not_found(format!("task {task_id} not found"))
}

fn require_task_id(task_id: &str) -> Result<(), Status> {
    if task_id.is_empty() {
        return Err(Status::invalid_argument("task_id is required"));
    }
    Ok(())
}

#[tonic::async_trait]
impl TaskService for TaskApi {
    async fn get_task(
        &self,
        request: Request<GetTaskRequest>,
    ) -> Result<Response<GetTaskResponse>, Status> {
        let principal = self.auth.authenticate(&request).await?;
        let task_id = request.into_inner().task_id;
        require_task_id(&task_id)?;
        // One snapshot: the view reflects exactly the records returned.
        let (task, records) = match self.store.task_with_records(&task_id).await? {
            Some((t, records)) if principal.can_see(&t.tenant) => (t, records),
            _ => return Err(not_found(&task_id)),
        };
        let events = records.iter().map(StoredRecord::to_proto).collect();
        Ok(Response::new(GetTaskResponse {
            task: Some(task),
            events,
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let principal = self.auth.authenticate(&request).await?;
        let r = request.into_inner();
        let page_size = match r.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n <= MAX_PAGE_SIZE => n,
            n => {
                return Err(Status::invalid_argument(format!(
                    "page_size {n} is too large: use 1–{MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"
                )));
            }
        };
        let status = match TaskStatus::try_from(r.status) {
            Ok(TaskStatus::Unspecified) => None,
            Ok(s) => Some(s),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown status {}",
                    r.status
                )));
            }
        };
        let tenant = if principal.has(Role::Admin) {
            Some(r.tenant).filter(|t| !t.is_empty())
        } else if r.tenant.is_empty() || r.tenant == principal.tenant {
            Some(principal.tenant.clone())
        } else {
            return Err(Status::permission_denied(format!(
                "{} may list only tasks of tenant {} (listing another tenant needs the admin role)",
                principal.subject, principal.tenant
            )));
        };
        let page = self
            .store
            .list_tasks(&TaskQuery {
                status,
                role: Some(r.role).filter(|x| !x.is_empty()),
                tenant,
                page_size,
                page_token: r.page_token,
            })
            .await?;
        Ok(Response::new(ListTasksResponse {
            tasks: page.tasks,
            next_page_token: page.next_page_token,
        }))
    }

    type WatchTaskStream = ReceiverStream<Result<AuditRecord, Status>>;

    async fn watch_task(
        &self,
        request: Request<WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let principal = self.auth.authenticate(&request).await?;
        let task_id = request.into_inner().task_id;
        require_task_id(&task_id)?;
        // Subscribe before reading, so no record falls between the read and the live feed.
        let mut live = self.live.subscribe();
        let deadline = tokio::time::Instant::now() + self.watch_wait;
        let task = loop {
            if let Some(t) = self.store.get_task(&task_id).await? {
                break t;
            }
            // Not recorded yet (the client may watch right after submitting): wait for it.
            loop {
                match tokio::time::timeout_at(deadline, live.recv()).await {
                    Err(_) => return Err(not_found(&task_id)),
                    Ok(Ok(r)) if r.record.task_id == task_id => break,
                    Ok(Ok(_)) => {}
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) => {
                        return Err(Status::unavailable(
                            "the audit service is shutting down; watch again",
                        ));
                    }
                }
            }
        };
        if !principal.can_see(&task.tenant) {
            // Answer no sooner than for a task that does not exist, so the delay does not tell
            // another tenant's caller that the id is taken.
            tokio::time::sleep_until(deadline).await;
            return Err(not_found(&task_id));
        }
        let (tx, rx) = mpsc::channel(64);
        let store = self.store.clone();
        let stopped = self.stopped.clone();
        tokio::spawn(async move {
            let mut last = 0u64;
            // Sends records after `last`; returns false when the stream is over.
            async fn send_all(
                tx: &mpsc::Sender<Result<AuditRecord, Status>>,
                records: impl IntoIterator<Item = StoredRecord>,
                last: &mut u64,
            ) -> bool {
                for r in records {
                    if (r.sequence as u64) <= *last {
                        continue;
                    }
                    *last = r.sequence as u64;
                    if tx.send(Ok(r.to_proto())).await.is_err() || is_final_kind(&r.record.kind) {
                        return false;
                    }
                }
                true
            }
            match store.task_records(&task_id, 0).await {
                Ok(records) => {
                    if !send_all(&tx, records, &mut last).await {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            }
            loop {
                let received = tokio::select! {
                    _ = tx.closed() => return,
                    _ = stopped.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("the audit service is shutting down; watch again"))).await;
                        return;
                    }
                    r = live.recv() => r,
                };
                let more = match received {
                    Ok(r) if r.record.task_id == task_id => {
                        send_all(&tx, [StoredRecord::clone(&r)], &mut last).await
                    }
                    Ok(_) => true,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        debug!(%task_id, skipped = n, "watcher lagged; re-reading from the database");
                        match store.task_records(&task_id, last).await {
                            Ok(records) => send_all(&tx, records, &mut last).await,
                            Err(e) => {
                                let _ = tx.send(Err(e.into())).await;
                                false
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = tx
                            .send(Err(Status::unavailable(
                                "the audit service is shutting down; watch again",
                            )))
                            .await;
                        false
                    }
                };
                if !more {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn verify_audit(
        &self,
        request: Request<VerifyAuditRequest>,
    ) -> Result<Response<VerifyAuditResponse>, Status> {
        let principal = self.auth.authenticate(&request).await?;
        principal.require(Role::Operator)?;
        let mut expected = vec![(Witness::Writer, self.store.head().await)];
        match self.anchor.read().await {
            Ok(Some(anchored)) => expected.push((Witness::Anchor, anchored)),
            Ok(None) => {}
            Err(e @ crate::Error::AnchorForged(_)) => {
                return Ok(Response::new(VerifyAuditResponse {
                    ok: false,
                    records_checked: 0,
                    first_bad_sequence: 0,
                    problem: e.to_string(),
                    verified_at: Some(baton_proto::now()),
                }));
            }
            Err(e) => return Err(e.into()),
        }
        let v = self
            .store
            .verify_with(&expected)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(VerifyAuditResponse {
            ok: v.ok,
            records_checked: v.records_checked,
            first_bad_sequence: v.first_bad_sequence,
            problem: v.problem,
            verified_at: Some(baton_proto::now()),
        }))
    }
}
