//! Tenant isolation on every gRPC call: a caller of tenant `acme` holding every role but admin
//! cannot see or act on a task of tenant `globex` — each call answers as if the task did not
//! exist (NOT_FOUND), lists leave it out, and nothing of it changes. Every test also checks
//! that `globex` itself does see its task, so a call that answered NOT_FOUND to everybody
//! would fail here. One test per RPC; each starts its own Baton.

use baton::client::Clients;
use baton_proto::{
    ApproveRequest, ClassifyRequest, Decision, DecisionTier, GetExecutionRequest, GetTaskRequest,
    ListPendingRequest, ListRolesRequest, ListTasksRequest, RejectRequest, SubmitTaskRequest, Task,
    TaskSpec, TaskStatus, Trigger, VerifyAuditRequest, WatchTaskRequest,
};
use baton_runtime::auth::Role;
use baton_runtime::plugins::Plugins;
use baton_tests::{Db, Harness};
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SCENARIO: &str = "Fix drift on production web servers";
const T: Duration = Duration::from_secs(30);
/// Every role except admin (which sees all tenants by design).
const ALL_BUT_ADMIN: &[Role] = &[Role::Submitter, Role::Approver, Role::Operator];

/// A caller of tenant `acme` with every role but admin.
async fn acme(h: &Harness) -> Clients {
    h.clients_of("ann", "acme", ALL_BUT_ADMIN).await
}

/// A caller of tenant `globex` with every role but admin.
async fn globex(h: &Harness) -> Clients {
    h.clients_of("gus", "globex", ALL_BUT_ADMIN).await
}

/// Submits the scenario as `globex` (with idempotency key `key` when given) and waits until
/// its plan waits for approval; returns the task id.
async fn globex_task(h: &Harness, key: &str) -> String {
    let mut g = globex(h).await;
    let id = g
        .triggers
        .submit_task(SubmitTaskRequest {
            trigger: Some(Trigger {
                text: SCENARIO.into(),
                environment: "production".into(),
                idempotency_key: key.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .task_id;
    h.wait_for(&id, TaskStatus::AwaitingApproval, T).await;
    id
}

/// The status of task `id` as `globex` sees it.
async fn status_for_globex(h: &Harness, id: &str) -> TaskStatus {
    globex(h)
        .await
        .tasks
        .get_task(GetTaskRequest { task_id: id.into() })
        .await
        .expect("globex sees its own task")
        .into_inner()
        .task
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_task_of_another_tenant_is_not_found() {
    let h = Harness::start(Db::Sqlite).await;
    let id = globex_task(&h, "").await;
    let err = acme(&h)
        .await
        .tasks
        .get_task(GetTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(!err.message().contains("globex"), "{}", err.message());
    assert_eq!(
        status_for_globex(&h, &id).await,
        TaskStatus::AwaitingApproval
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_tasks_leaves_out_another_tenants_tasks() {
    let h = Harness::start(Db::Sqlite).await;
    let id = globex_task(&h, "").await;
    let mut a = acme(&h).await;
    for request in [
        ListTasksRequest::default(),
        ListTasksRequest {
            status: TaskStatus::AwaitingApproval as i32,
            ..Default::default()
        },
        ListTasksRequest {
            tenant: "acme".into(),
            ..Default::default()
        },
    ] {
        let tasks = a
            .tasks
            .list_tasks(request)
            .await
            .unwrap()
            .into_inner()
            .tasks;
        assert!(
            tasks.iter().all(|t| t.task_id != id && t.tenant == "acme"),
            "acme's list shows another tenant's task: {tasks:?}"
        );
    }
    // Asking for globex's list outright is refused (it needs admin).
    let err = a
        .tasks
        .list_tasks(ListTasksRequest {
            tenant: "globex".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let theirs = globex(&h)
        .await
        .tasks
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(theirs.iter().any(|t| t.task_id == id), "{theirs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_task_of_another_tenant_is_not_found_no_sooner_than_a_missing_one() {
    let h = Harness::start(Db::Sqlite).await;
    let id = globex_task(&h, "").await;
    let wait = h.baton.config.audit.watch_wait;
    let mut a = acme(&h).await;
    let started = std::time::Instant::now();
    let err = a
        .tasks
        .watch_task(WatchTaskRequest {
            task_id: id.clone(),
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(
        started.elapsed() >= wait - Duration::from_millis(100),
        "NOT_FOUND after {:?}, sooner than the {wait:?} a missing task takes: the delay tells that the id exists",
        started.elapsed()
    );
    // globex's own watch streams the task's records.
    use futures::StreamExt;
    let mut stream = globex(&h)
        .await
        .tasks
        .watch_task(WatchTaskRequest { task_id: id })
        .await
        .unwrap()
        .into_inner();
    assert!(stream.next().await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_audit_tells_another_tenant_nothing_about_a_task() {
    use sqlx::Connection;
    let h = Harness::start(Db::Sqlite).await;
    let id = globex_task(&h, "").await;
    let mut a = acme(&h).await;
    let v = a
        .tasks
        .verify_audit(VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{v:?}");

    // A record of globex's task is changed: acme's operator learns that the log is broken and
    // where, never whose task or what it said.
    let records = globex(&h)
        .await
        .tasks
        .get_task(GetTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let victim = records[1].sequence as i64;
    let mut db = sqlx::SqliteConnection::connect(&h.database_url)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET payload = x'00' WHERE sequence = ?")
        .bind(victim)
        .execute(&mut db)
        .await
        .unwrap();
    let v = a
        .tasks
        .verify_audit(VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!v.ok);
    assert_eq!(v.first_bad_sequence as i64, victim);
    let shown = format!("{v:?}");
    for secret in [id.as_str(), "globex", SCENARIO, "gus"] {
        assert!(
            !shown.contains(secret),
            "VerifyAudit shows `{secret}`: {shown}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pending_leaves_out_another_tenants_plans() {
    let h = Harness::start(Db::Sqlite).await;
    let id = globex_task(&h, "").await;
    let mine = acme(&h)
        .await
        .approvals
        .list_pending(ListPendingRequest {})
        .await
        .unwrap()
        .into_inner()
        .pending;
    assert!(mine.is_empty(), "acme sees: {mine:?}");
    let theirs = globex(&h)
        .await
        .approvals
        .list_pending(ListPendingRequest {})
        .await
        .unwrap()
        .into_inner()
        .pending;
    assert_eq!(
        theirs
            .iter()
            .map(|p| p.task_id.as_str())
            .collect::<Vec<_>>(),
        [id.as_str()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_of_another_tenants_plan_is_not_found_and_changes_nothing() {
    let h = Harness::start(Db::Sqlite).await;
    let id = globex_task(&h, "").await;
    let err = acme(&h)
        .await
        .approvals
        .approve(ApproveRequest {
            task_id: id.clone(),
            reason: "looks fine to me".into(),
            plan_hash: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status_for_globex(&h, &id).await,
        TaskStatus::AwaitingApproval
    );
    // The plan is still globex's to decide.
    globex(&h)
        .await
        .approvals
        .approve(ApproveRequest {
            task_id: id.clone(),
            reason: "ours".into(),
            plan_hash: String::new(),
            ..Default::default()
        })
        .await
        .expect("globex's approver may approve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_of_another_tenants_plan_is_not_found_and_changes_nothing() {
    let h = Harness::start(Db::Sqlite).await;
    let id = globex_task(&h, "").await;
    let err = acme(&h)
        .await
        .approvals
        .reject(RejectRequest {
            task_id: id.clone(),
            reason: "sabotage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status_for_globex(&h, &id).await,
        TaskStatus::AwaitingApproval
    );
    globex(&h)
        .await
        .approvals
        .reject(RejectRequest {
            task_id: id.clone(),
            reason: "not today".into(),
            ..Default::default()
        })
        .await
        .expect("globex's approver may reject");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_execution_of_another_tenant_is_not_found() {
    let h = Harness::start(Db::Sqlite).await;
    let id = globex_task(&h, "").await;
    globex(&h)
        .await
        .approvals
        .approve(ApproveRequest {
            task_id: id.clone(),
            reason: "go".into(),
            plan_hash: String::new(),
            ..Default::default()
        })
        .await
        .unwrap();
    h.wait_for(&id, TaskStatus::Completed, T).await;
    let err = acme(&h)
        .await
        .executions
        .get_execution(GetExecutionRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let theirs = globex(&h)
        .await
        .executions
        .get_execution(GetExecutionRequest { task_id: id })
        .await
        .expect("globex sees its own rollout")
        .into_inner();
    assert_eq!(theirs.execution.unwrap().tenant, "globex");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_task_lands_in_the_callers_tenant_whatever_the_request_says() {
    let h = Harness::start(Db::Sqlite).await;
    let theirs = globex_task(&h, "deploy-42").await;
    // acme reuses globex's idempotency key and claims globex everywhere a client could.
    let mut a = acme(&h).await;
    let mut request = tonic::Request::new(SubmitTaskRequest {
        trigger: Some(Trigger {
            text: SCENARIO.into(),
            environment: "production".into(),
            idempotency_key: "deploy-42".into(),
            labels: [("tenant".to_string(), "globex".to_string())].into(),
            ..Default::default()
        }),
    });
    // The header NATS triggers carried the tenant in, sent as gRPC metadata.
    request
        .metadata_mut()
        .insert("baton-tenant", "globex".parse().unwrap());
    let r = a.triggers.submit_task(request).await.unwrap().into_inner();
    assert!(
        !r.deduplicated,
        "a key is per tenant: acme's trigger is not globex's task"
    );
    assert_ne!(r.task_id, theirs);
    let mine = h
        .wait_for(&r.task_id, TaskStatus::AwaitingApproval, T)
        .await;
    assert_eq!(mine.task.unwrap().tenant, "acme");
    let err = globex(&h)
        .await
        .tasks
        .get_task(GetTaskRequest {
            task_id: r.task_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert_eq!(
        status_for_globex(&h, &theirs).await,
        TaskStatus::AwaitingApproval
    );
}

/// A tier that remembers the tenant of every task it is asked about, and has no opinion.
struct TenantRecorder(Arc<Mutex<Vec<(String, String)>>>);

impl baton_decision::Classifier for TenantRecorder {
    fn name(&self) -> &str {
        "tenant-recorder"
    }

    fn classify<'a>(
        &'a self,
        task: &'a Task,
    ) -> BoxFuture<'a, Result<baton_decision::Opinion, baton_decision::Error>> {
        let text = task
            .trigger
            .as_ref()
            .map(|t| t.text.clone())
            .unwrap_or_default();
        self.0
            .lock()
            .unwrap()
            .push((task.tenant.clone(), text.clone()));
        let d = text.contains("probe").then(|| Decision {
            spec: Some(TaskSpec {
                task_type: "probe".into(),
                role: "sre".into(),
                environment: "staging".into(),
                intent: text,
                ..Default::default()
            }),
            confidence: 0.99,
            tier: DecisionTier::Classifier as i32,
            matched_by: format!("tenant-recorder for {}", task.tenant),
            explanation: "recorded".into(),
        });
        let opinion = d.map_or(
            baton_decision::Opinion::NoOpinion("not a probe".into()),
            baton_decision::Opinion::from,
        );
        Box::pin(std::future::ready(Ok(opinion)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_uses_the_callers_tenant_only() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = seen.clone();
    let plugins = Plugins::new().with(baton_decision::TierFactory::new(
        "tenant-recorder",
        move |_| {
            Ok(Arc::new(TenantRecorder(recorder.clone())) as Arc<dyn baton_decision::Classifier>)
        },
    ));
    let h = Harness::start_with_plugins(
        Db::Sqlite,
        |c| c.decision.tiers = vec!["tenant-recorder".into(), "rules".into()],
        plugins,
    )
    .await;
    let before = globex(&h)
        .await
        .tasks
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks
        .len();
    let mut a = acme(&h).await;
    let mut request = tonic::Request::new(ClassifyRequest {
        trigger: Some(Trigger {
            text: "tenant probe for globex".into(),
            labels: [("tenant".to_string(), "globex".to_string())].into(),
            ..Default::default()
        }),
    });
    // The header NATS triggers carried the tenant in, sent as gRPC metadata.
    request
        .metadata_mut()
        .insert("baton-tenant", "globex".parse().unwrap());
    let d = a.decisions.classify(request).await.unwrap().into_inner();
    assert_eq!(d.decision.unwrap().matched_by, "tenant-recorder for acme");
    let probes: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, text)| text.contains("probe"))
        .cloned()
        .collect();
    assert_eq!(
        probes,
        [("acme".to_string(), "tenant probe for globex".to_string())]
    );
    // A dry run: nothing was submitted into globex (or anywhere).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = globex(&h)
        .await
        .tasks
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks
        .len();
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_roles_is_the_configured_catalog_for_every_tenant() {
    let h = Harness::start(Db::Sqlite).await;
    let _id = globex_task(&h, "").await;
    let mut answers = Vec::new();
    for mut c in [acme(&h).await, globex(&h).await] {
        let r = c.decisions.list_roles(ListRolesRequest {}).await;
        answers.push(r.expect("any role may list roles").into_inner());
    }
    // Nothing in it depends on (or names) a tenant: both see the same configured lists.
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].roles, h.baton.config.common.catalog.roles);
}
