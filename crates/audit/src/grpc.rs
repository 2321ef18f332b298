//! `baton.v1.TaskService`: task views, records and artifacts from the store, live records from
//! the writer's broadcast, and an agent's live progress from core NATS (`WatchProgress`).

use crate::projection::is_final_kind;
use crate::store::Witness;
use crate::store::{Store, StoredRecord, TaskQuery};
use baton_proto::{
    AuditRecord, GetTaskRequest, GetTaskResponse, ListTasksRequest, ListTasksResponse, Progress,
    TaskStatus, TaskView, VerifyAuditRequest, VerifyAuditResponse, WatchTaskRequest, subject,
    task_service_server::TaskService,
};
use baton_runtime::auth::{Authenticator, Role};
use futures::StreamExt;
use prost::Message as _;
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
    /// Core NATS, for `WatchProgress`'s subscription to `baton.progress.*.<task>`.
    pub(crate) nats: async_nats::Client,
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

/// Sends `message` to a `WatchProgress` caller when it is the task's progress (published on
/// `wanted`, the subject of the task's own tenant, and naming the task); false when the caller
/// went away.
async fn forward_progress(
    tx: &mpsc::Sender<Result<Progress, Status>>,
    wanted: &str,
    task_id: &str,
    message: async_nats::Message,
) -> bool {
    if message.subject.as_str() != wanted {
        return true;
    }
    match Progress::decode(message.payload.as_ref()) {
        Ok(p) if p.task_id == task_id => tx.send(Ok(p)).await.is_ok(),
        Ok(_) => true,
        Err(e) => {
            debug!(%task_id, error = %e, "undecodable progress message; skipped");
            true
        }
    }
}

/// How long `WatchProgress` still forwards progress after the task's plan was recorded.
const PROGRESS_GRACE: Duration = Duration::from_millis(250);

/// True while the task's agent may still be working: before its plan is proposed and before
/// the task ended.
fn agent_running(status: TaskStatus) -> bool {
    matches!(
        status,
        TaskStatus::Unspecified | TaskStatus::Received | TaskStatus::Routed
    )
}

impl TaskApi {
    /// The view of `task_id`; when it has no record yet (a client may watch right after
    /// submitting), waits for its first one on `live` until `deadline`, then NOT_FOUND.
    async fn await_task(
        &self,
        task_id: &str,
        live: &mut broadcast::Receiver<Arc<StoredRecord>>,
        deadline: tokio::time::Instant,
    ) -> Result<TaskView, Status> {
        loop {
            if let Some(t) = self.store.get_task(task_id).await? {
                return Ok(t);
            }
            loop {
                match tokio::time::timeout_at(deadline, live.recv()).await {
                    Err(_) => return Err(not_found(task_id)),
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
        }
    }
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
        let events: Vec<AuditRecord> = records.iter().map(StoredRecord::to_proto).collect();
        let artifacts = crate::projection::task_artifacts(&events);
        Ok(Response::new(GetTaskResponse {
            task: Some(task),
            events,
            artifacts,
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
        let task = self.await_task(&task_id, &mut live, deadline).await?;
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

    type WatchProgressStream = ReceiverStream<Result<Progress, Status>>;

    async fn watch_progress(
        &self,
        request: Request<WatchTaskRequest>,
    ) -> Result<Response<Self::WatchProgressStream>, Status> {
        let principal = self.auth.authenticate(&request).await?;
        let task_id = request.into_inner().task_id;
        require_task_id(&task_id)?;
        // The id becomes a subject token: refuse what would widen the subscription.
        if task_id
            .chars()
            .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
        {
            return Err(Status::invalid_argument(format!(
                "task id {task_id:?} is not a task id (no dots, wildcards or spaces)"
            )));
        }
        // Subscribe before looking the task up, so no progress falls in between.
        let mut progress = self
            .nats
            .subscribe(subject::progress("*", &task_id))
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "cannot subscribe to the agent's progress ({e}); is NATS up?"
                ))
            })?;
        let mut live = self.live.subscribe();
        let deadline = tokio::time::Instant::now() + self.watch_wait;
        let task = self.await_task(&task_id, &mut live, deadline).await?;
        if !principal.can_see(&task.tenant) {
            tokio::time::sleep_until(deadline).await;
            return Err(not_found(&task_id));
        }
        let (tx, rx) = mpsc::channel(64);
        if !agent_running(task.status()) {
            // The agent is done: there is no progress to come.
            return Ok(Response::new(ReceiverStream::new(rx)));
        }
        let (store, stopped, tenant) = (self.store.clone(), self.stopped.clone(), task.tenant);
        tokio::spawn(async move {
            let wanted = subject::progress(&tenant, &task_id);
            let forward = |m| forward_progress(&tx, &wanted, &task_id, m);
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = stopped.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("the audit service is shutting down; watch again"))).await;
                        return;
                    }
                    message = progress.next() => match message {
                        Some(m) => if !forward(m).await { return },
                        None => {
                            let _ = tx.send(Err(Status::unavailable("the progress subscription ended; watch again"))).await;
                            return;
                        }
                    },
                    record = live.recv() => {
                        let over = match record {
                            Ok(r) => r.record.task_id == task_id
                                && (r.record.kind == "plan_proposed" || is_final_kind(&r.record.kind)),
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                match store.get_task(&task_id).await {
                                    Ok(Some(t)) => !agent_running(t.status()),
                                    Ok(None) => false,
                                    Err(e) => {
                                        let _ = tx.send(Err(e.into())).await;
                                        return;
                                    }
                                }
                            }
                            Err(broadcast::error::RecvError::Closed) => true,
                        };
                        if over {
                            // Progress travels on core NATS and the plan through the stream
                            // and the database, so the last calls are normally here already;
                            // give stragglers a moment.
                            let grace = tokio::time::sleep(PROGRESS_GRACE);
                            tokio::pin!(grace);
                            loop {
                                tokio::select! {
                                    _ = &mut grace => return,
                                    message = progress.next() => match message {
                                        Some(m) => if !forward(m).await { return },
                                        None => return,
                                    },
                                }
                            }
                        }
                    }
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
