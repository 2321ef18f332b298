//! Validation: the gate between an agent's plan and its execution.
//!
//! Consumes `baton.task.proposed` (durable consumer `validation`, body `PlanProposed`), and for
//! each plan:
//!
//! 1. evaluates the Rego policies (built in, or those of `policy_dir`) in-process with
//!    `regorus` ([`policy::PolicySet`]), collecting the `deny` and `require_approval` sets of every
//!    `baton.*` package — adding a policy file adds policies without code changes;
//! 2. computes the five-dimension quality score ([`quality`]);
//! 3. decides a verdict ([`quality::verdict`]) and publishes it:
//!    - approved → `TaskApproved` (approver `policy`) on `baton.task.approved`, stage `approved`;
//!    - awaiting approval → stores a `PendingApproval` under the task id in the JetStream KV
//!      bucket [`APPROVALS_BUCKET`], then publishes `TaskAwaitingApproval` on
//!      `baton.task.awaiting_approval`, stage `awaiting_approval`;
//!    - rejected → `TaskRejected` on `baton.task.rejected`, stage `rejected`.
//!
//! Every `TaskApproved` is signed (Ed25519, [`baton_runtime::signing`]) with the key of
//! `signing_key` over the task, spec, plan, validation result and approval, and the approval
//! names the hash of the plan approved; execution runs nothing that does not verify against
//! its trusted keys.
//!
//! It also serves `baton.v1.ApprovalService` ([`approval`]): `ListPending`, `Approve`,
//! `Reject` over the KV bucket. A decision is claimed in the bucket with a compare-and-set
//! before it is published, so concurrent `Approve` and `Reject` calls on one task (on any
//! replicas) publish exactly one decision; the loser gets FAILED_PRECONDITION. A redelivered
//! proposal never reopens a decided task.
//!
//! # Policies
//!
//! By default validation uses its built-in policies: the repository's `policies/*.rego`
//! (except `*_test.rego`), embedded at compile time by the crate's build script
//! ([`policy::BUILTIN`]), so `baton up` works from any directory and adding a file to
//! `policies/` embeds it on the next build. Setting `policy_dir` loads that directory instead,
//! at startup. Either way, every live policy must declare `package baton.<name>`. Rules:
//! - `deny contains msg if { … }` — a set of reasons; any member rejects the plan;
//! - `require_approval contains msg if { … }` — a set of reasons; any member sends the plan to
//!   a human.
//!
//! `*_test.rego` files hold `test_*` rules run by [`policy::run_policy_tests`] (and this
//! crate's tests), never as live policies. The policy version in every decision is the
//! SHA-256 (hex) over the sorted file names and contents — the same for the same files,
//! built in or loaded from a directory.
//!
//! # Policy input document
//!
//! Policies see this `input` (built by [`policy::input_document`]); they depend on its shape:
//!
//! ```json
//! {
//!   "task": {"task_id": "…", "tenant": "acme", "text": "fix drift on web", "submitted_by": "alice"},
//!   "spec": {"role": "drift", "task_type": "drift_remediation", "environment": "production",
//!            "risk": "high", "tools": ["http"], "target": "web"},
//!   "plan": {
//!     "summary": "…", "total_assets": 10, "step_count": 3,
//!     "phases": [
//!       {"index": 0, "name": "canary", "kind": "canary", "assets": ["web-01"],
//!        "steps": [{"asset": "web-01", "action": "http", "has_rollback": true,
//!                   "has_health_check": true}]}
//!     ],
//!     "delivery_only": false,
//!     "artifacts": [{"name": "fix.py", "media_type": "text/x-python", "size": 812,
//!                    "report": null, "sandbox_exit_code": 0,
//!                    "sandbox_ended_by": "exited", "sandbox_network": false},
//!                   {"name": "report", "media_type": "application/json", "size": 230,
//!                    "report": {"answer": "…", "findings": ["…"], "recommendations": ["…"]},
//!                    "sandbox_exit_code": null, "sandbox_ended_by": null,
//!                    "sandbox_network": null}],
//!     "agent": {"kind": "runbook", "name": "drift-runbook@1"}
//!   }
//! }
//! ```
//!
//! - `spec.risk`: `low|medium|high|critical|unspecified`; `spec.environment` as the decision
//!   service set it (policies reject unknown ones).
//! - `phases[].kind`: `canary|wave|unspecified`; `phases[].assets`: the distinct asset ids of
//!   the phase's steps, in order; `steps[].action`: `http|noop|sandbox|none`, or a plug-in
//!   action's kind name (`PluginAction.kind`); `has_rollback`: the step has a rollback action.
//! - `artifacts[]`: the plan's artifacts (generated code, reports). `sandbox_exit_code` (the
//!   program's exit code, 137 when killed), `sandbox_ended_by` (`exited`, or the limit that
//!   ended the run: `timeout|memory|pids|output`; `unspecified` when the report does not say)
//!   and `sandbox_network` (the run had network access) come from the artifact's `SandboxRun`;
//!   all three are `null` when the artifact was not run in the sandbox. `policies/sandbox.rego`
//!   denies code-generation plans whose code did not run there, failed or hit a limit.
//! - `artifacts[].size`: the content's size in bytes. `artifacts[].report`: for the artifact
//!   named `report`, its content parsed ([`baton_proto::report::Report`]: `answer`,
//!   `findings`, `recommendations`, each item a string or an object as the agent wrote it), so
//!   a policy can read what a report says (`some f in a.report.findings`); `null` for every
//!   other artifact. `plan.delivery_only`: the plan has no steps and delivers artifacts (a
//!   report, generated code).
//! - `plan.total_assets`: assets in scope (changed or not), the base of phase-size rules.
//!
//! # Built-in checks
//!
//! Before the score, [`refusals`] adds deny reasons no policy directory can remove: a plan with
//! no steps and no artifacts (nothing to run, nothing to deliver: the agent must attach its
//! answer as a report), and a report artifact that is not a report (not `application/json`,
//! not JSON, no answer). A *delivery-only* plan (no steps; a report, or generated code with
//! its sandbox run) is validated like any other — policies, score and thresholds apply (it changes nothing, but a model-backed agent
//! earns no human-review points, so in production it waits for an approver) — and execution
//! completes it without a rollout.
//!
//! # Quality score and verdict
//!
//! See [`quality`]: structural, policy compliance, test coverage, operational history and
//! human review, 20 points each. Any deny rejects. Production: ≥ 80 without approval reasons
//! → approved, ≥ 60 → awaiting approval, < 60 → rejected; staging: 60 / 40; development:
//! approved unless a policy asks for approval. Thresholds are in [`Config`].
//!
//! Not yet: self-approval prevention, approval quorum, timeouts and escalation (later
//! releases); operational history is a neutral 10 until it is derived from the audit log.

pub mod approval;
pub mod policy;
pub mod quality;

use baton_bus::kv::{Entry, Kv, KvError};
use baton_bus::{ConsumerSpec, Delivery, HandlerError};
use baton_proto::{
    Approval, Event, PendingApproval, PlanProposed, TaskApproved, TaskAwaitingApproval,
    TaskRejected, ValidationResult, Verdict, event::Body, subject,
};
use baton_runtime::Context;
use baton_runtime::metrics::VerdictLabels;
use baton_runtime::signing::{self, SigningKey};
use policy::PolicySet;
use quality::Thresholds;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Producer name on events and the metrics label.
pub const SERVICE: &str = "validation";

/// gRPC services served, for gRPC health.
pub const GRPC_SERVICES: &[&str] = &["baton.v1.ApprovalService"];

/// JetStream KV bucket of plans awaiting a human: key = task id, value = an
/// [`approval::Stored`]: the protobuf `PendingApproval` until a human decides, then the
/// claimed decision, which stays as the task's record (see [`approval`]).
pub const APPROVALS_BUCKET: &str = "baton_approvals";

/// Revisions kept per key of [`APPROVALS_BUCKET`]. The latest revision of a decided task is its
/// decision, which lets a redelivered proposal see that it was already decided.
pub const APPROVALS_HISTORY: i64 = 5;

/// Settings of the validation service (`[validation]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory of the Rego policies to load at startup: every `*.rego` except `*_test.rego`.
    /// Default none: the built-in policies ([`policy::BUILTIN`], the repository's `policies/`
    /// as of the build). An empty path (`BATON_VALIDATION__POLICY_DIR=`) also means none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_dir: Option<PathBuf>,
    /// Score thresholds for production plans (default: 80 auto-approve, 60 with approval).
    pub production: Thresholds,
    /// Score thresholds for staging plans (default: 60 auto-approve, 40 with approval).
    pub staging: Thresholds,
    /// Plans validated at once by this process.
    pub concurrency: usize,
    /// Runbook agents whose plans count as human-reviewed (20 quality points), by the name
    /// and version the agent runner stamps on every plan (`drift-runbook@1`). A runbook not
    /// listed here, a new version of a listed one, and every model-backed agent get 0 for
    /// human review, so their production plans wait for a human unless a higher score says
    /// otherwise. Default: the built-in runbooks, `drift-runbook@1` and `noop@1`.
    pub reviewed_agents: Vec<String>,
    /// File of the Ed25519 private key that signs every approved task (64 hex characters of
    /// seed, readable by its owner only). Execution must list its public key in
    /// `execution.trusted_keys`. Empty: `<data_dir>/validation.key`, created on first start
    /// (development; in production mount a secret here). A service built without
    /// [`Service::prepare`](baton_runtime::service::Service::prepare) and with this empty signs
    /// with a new in-memory key that no execution trusts, so nothing it approves runs.
    #[serde(skip_serializing_if = "is_empty_path")]
    pub signing_key: PathBuf,
}

/// True for an unset path (serde `skip_serializing_if`).
fn is_empty_path(p: &std::path::Path) -> bool {
    p.as_os_str().is_empty()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            policy_dir: None,
            production: Thresholds {
                auto_approve: 80,
                with_approval: 60,
            },
            staging: Thresholds {
                auto_approve: 60,
                with_approval: 40,
            },
            concurrency: 16,
            reviewed_agents: vec!["drift-runbook@1".into(), "noop@1".into()],
            signing_key: PathBuf::new(),
        }
    }
}

impl Config {
    /// The policy directory to load, `None` for the built-in policies (unset or empty).
    pub fn policy_source(&self) -> Option<&std::path::Path> {
        self.policy_dir
            .as_deref()
            .filter(|d| !d.as_os_str().is_empty())
    }

    /// Checks the thresholds: each at most 100, `with_approval` ≤ `auto_approve`.
    pub fn validate(&self) -> Result<(), Error> {
        for (name, t) in [("production", self.production), ("staging", self.staging)] {
            if t.auto_approve > 100 || t.with_approval > t.auto_approve {
                return Err(Error::Config(format!(
                    "validation.{name} thresholds must satisfy with_approval <= auto_approve <= 100 \
                     (got with_approval {}, auto_approve {})",
                    t.with_approval, t.auto_approve
                )));
            }
        }
        if self.concurrency == 0 {
            return Err(Error::Config(
                "validation.concurrency must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// What went wrong in validation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A policy file is unusable (does not parse, wrong package, does not compile).
    #[error("policy {file}: {reason}; fix the file and restart validation")]
    Policy {
        /// The file (or the policy directory, for errors across files).
        file: PathBuf,
        /// regorus's message (with line and column) or ours.
        reason: String,
    },
    /// The policy directory is missing, unreadable or empty.
    #[error("policy directory {dir}: {reason}")]
    PolicyDir {
        /// The directory as configured (`validation.policy_dir`).
        dir: PathBuf,
        /// What is wrong with it: missing, unreadable, or without `*.rego` files.
        reason: String,
    },
    /// The configuration is unusable.
    #[error("invalid validation configuration: {0}")]
    Config(String),
    /// NATS (stream, consumer or KV bucket) failed.
    #[error(transparent)]
    Bus(#[from] baton_bus::BusError),
    /// The KV bucket of pending approvals failed.
    #[error("approvals bucket {APPROVALS_BUCKET}: {0}; is NATS up?")]
    Store(String),
    /// No plan awaits approval under this id (or it belongs to another tenant).
    #[error("no plan awaiting approval for task {0}")]
    NotFound(String),
    /// The approver saw another plan than the one validation holds.
    #[error(
        "task {task_id}: the plan hash given ({given}) is not the hash of the plan awaiting \
         approval ({held}); list the pending plans again and approve the plan shown"
    )]
    PlanChanged {
        /// The task.
        task_id: String,
        /// `ApproveRequest.plan_hash`.
        given: String,
        /// The hash of the plan validation holds.
        held: String,
    },
    /// The signing key cannot be used.
    #[error("validation.signing_key: {0}")]
    Key(#[from] baton_runtime::signing::KeyError),
    /// A request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// A human already took the opposite decision on this task.
    #[error("task {task_id} was already {decision} by {by}")]
    AlreadyDecided {
        /// The task whose plan was already decided.
        task_id: String,
        /// `approved` or `rejected`.
        decision: &'static str,
        /// JWT `sub` of who decided.
        by: String,
    },
    /// A stored pending approval cannot be decoded.
    #[error(
        "pending approval {task_id} is corrupt: {reason}; delete it from bucket {APPROVALS_BUCKET}"
    )]
    Corrupt {
        /// The task id the entry is stored under in the approvals bucket.
        task_id: String,
        /// Decode error.
        reason: String,
    },
}

impl From<KvError> for Error {
    fn from(e: KvError) -> Self {
        match e {
            KvError::Decode { key, reason, .. } => Error::Corrupt {
                task_id: key,
                reason,
            },
            KvError::Unavailable { reason, .. } => Error::Store(reason),
            e @ (KvError::Conflict { .. } | KvError::InvalidKey { .. }) => {
                Error::Store(e.to_string())
            }
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            Error::AlreadyDecided { .. } | Error::PlanChanged { .. } => {
                tonic::Status::failed_precondition(msg)
            }
            Error::Bus(_) | Error::Store(_) => tonic::Status::unavailable(msg),
            Error::Corrupt { .. } => tonic::Status::data_loss(msg),
            Error::Policy { .. } | Error::PolicyDir { .. } | Error::Config(_) | Error::Key(_) => {
                tonic::Status::failed_precondition(msg)
            }
        }
    }
}

/// The validation service: loaded policies, the approvals bucket, the consumer and the gRPC
/// approval service.
pub struct Validation {
    /// Shared with the gRPC service.
    inner: Arc<Inner>,
}

/// State shared by the consumer and the gRPC service.
pub(crate) struct Inner {
    /// NATS, auth and metrics.
    pub(crate) ctx: Context,
    /// Thresholds and policy directory.
    pub(crate) config: Config,
    /// The prepared policies.
    pub(crate) policies: PolicySet,
    /// Pending approvals (then decisions) by task id.
    pub(crate) approvals: Kv<approval::Stored>,
    /// Signs every approved task.
    pub(crate) key: SigningKey,
}

impl Validation {
    /// Validates `config`, loads the signing key and the policies and opens the approvals
    /// bucket.
    ///
    /// Errors: [`Error::Config`]; [`Error::Key`] when `signing_key` cannot be read (missing,
    /// readable by others, malformed); [`Error::Policy`]/[`Error::PolicyDir`] when a policy does
    /// not load (the message names the file and says what to fix); [`Error::Bus`] when the
    /// bucket cannot be opened.
    pub async fn new(ctx: Context, config: Config) -> Result<Self, Error> {
        let key = if config.signing_key.as_os_str().is_empty() {
            warn!(
                "validation.signing_key is empty: signing with a new in-memory key that no execution trusts"
            );
            SigningKey::generate()?
        } else {
            SigningKey::load(&config.signing_key)?
        };
        Self::with_key(ctx, config, key).await
    }

    /// [`Validation::new`] signing with `key` instead of the key file (tests, embedders).
    pub async fn with_key(ctx: Context, config: Config, key: SigningKey) -> Result<Self, Error> {
        config.validate()?;
        info!(key_id = key.key_id(), public_key = %key.public_key(), "validation signs approvals with this key");
        let policies = match config.policy_source() {
            Some(dir) => PolicySet::load(dir)?,
            None => PolicySet::builtin()?,
        };
        info!(
            source = %config.policy_source().unwrap_or(std::path::Path::new(policy::BUILTIN_ORIGIN)).display(),
            files = ?policies.files(),
            version = policies.version(),
            "policies loaded"
        );
        let approvals = open_approvals(&ctx.bus).await?;
        Ok(Validation {
            inner: Arc::new(Inner {
                ctx,
                config,
                policies,
                approvals,
                key,
            }),
        })
    }

    /// The public key of the signing key (for `execution.trusted_keys`).
    pub fn public_key(&self) -> baton_runtime::signing::PublicKey {
        self.inner.key.public_key()
    }

    /// The loaded policies (file names and version).
    pub fn policies(&self) -> &PolicySet {
        &self.inner.policies
    }

    /// Validates one plan without publishing anything: policies, score, verdict.
    pub fn validate(&self, proposed: &PlanProposed) -> ValidationResult {
        self.inner.validate(proposed)
    }

    /// Adds `baton.v1.ApprovalService` to `routes`.
    pub fn add_grpc(&self, routes: &mut tonic::service::RoutesBuilder) {
        routes.add_service(
            baton_proto::approval_service_server::ApprovalServiceServer::new(approval::Approvals {
                inner: self.inner.clone(),
            }),
        );
    }

    /// Consumes `baton.task.proposed` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let spec = ConsumerSpec::new(SERVICE, SERVICE, subject::TASK_PROPOSED)
            .concurrency(self.inner.config.concurrency);
        let inner = self.inner.clone();
        self.inner
            .ctx
            .bus
            .consume(spec, shutdown, move |delivery| {
                let inner = inner.clone();
                async move { inner.handle(delivery).await }
            })
            .await?;
        Ok(())
    }
}

/// Opens (creating if needed) the approvals bucket.
async fn open_approvals(bus: &baton_bus::Bus) -> Result<Kv<approval::Stored>, Error> {
    Ok(bus.kv(APPROVALS_BUCKET, APPROVALS_HISTORY).await?)
}

/// Convenience matching the design's `run(config, shutdown)`.
pub async fn run(ctx: Context, config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    Validation::new(ctx, config).await?.run(shutdown).await
}

/// Why `plan` cannot be accepted whatever the policies say (the built-in checks, which a
/// `policy_dir` cannot replace); empty when there is nothing against it:
/// - a plan with no steps and no artifacts: it has nothing to run and nothing to deliver (an
///   agent that has only an answer attaches it as a report,
///   [`baton_proto::report::Report::to_artifact`]; generated code comes as artifacts too);
/// - a report artifact that is not a report ([`baton_proto::report::ReportError`]).
///
/// Each reason says what is wrong and what the agent must do instead.
pub fn refusals(plan: &baton_proto::Plan) -> Vec<String> {
    use baton_proto::report::{REPORT_ARTIFACT, REPORT_MEDIA_TYPE, Report};
    let mut reasons = Vec::new();
    match plan.report_artifact() {
        None if plan.step_count() == 0 && plan.artifacts.is_empty() => reasons.push(format!(
            "the plan has no steps and no artifacts: nothing to run and nothing to deliver; \
             an agent with only an answer must attach it as an artifact named \"{REPORT_ARTIFACT}\" \
             ({REPORT_MEDIA_TYPE} with an answer, findings and recommendations)"
        )),
        None => {}
        Some(artifact) => {
            if let Err(e) = Report::parse(artifact) {
                reasons.push(format!(
                    "{e}; a report is {{\"answer\": \"…\", \"findings\": [..], \"recommendations\": [..]}} as {REPORT_MEDIA_TYPE}"
                ));
            }
        }
    }
    reasons
}

/// Label of a verdict for metrics and logs.
fn verdict_label(v: Verdict) -> &'static str {
    match v {
        Verdict::Approved => "approved",
        Verdict::AwaitingApproval => "awaiting_approval",
        Verdict::Rejected => "rejected",
        Verdict::Unspecified => "unspecified",
    }
}

impl Inner {
    /// Policies, score and verdict of one plan.
    pub(crate) fn validate(&self, proposed: &PlanProposed) -> ValidationResult {
        let input = policy::input_document(proposed);
        let span = baton_bus::exported_span!(
            "policy.evaluate",
            deny = tracing::field::Empty,
            require_approval = tracing::field::Empty,
        );
        let mut outcome = span.in_scope(|| self.policies.evaluate(&input));
        span.record("deny", outcome.deny.len());
        span.record("require_approval", outcome.require_approval.len());
        let plan = proposed.plan.clone().unwrap_or_default();
        let refusals = refusals(&plan);
        if !refusals.is_empty() {
            outcome.deny.extend(refusals);
            outcome.deny.sort();
            outcome.deny.dedup();
        }
        let quality = quality::score(&plan, &outcome, &self.config.reviewed_agents);
        let environment = proposed
            .spec
            .as_ref()
            .map(|s| s.environment.as_str())
            .unwrap_or("");
        let (verdict, reasons) = quality::verdict(
            environment,
            quality.total,
            &outcome,
            self.config.staging,
            self.config.production,
        );
        ValidationResult {
            policy: Some(self.policies.decision(&outcome)),
            quality: Some(quality),
            verdict: verdict as i32,
            reasons,
        }
    }

    /// Handles one `baton.task.proposed` message; see the crate docs for the outputs.
    async fn handle(&self, delivery: Delivery) -> Result<(), HandlerError> {
        let started = Instant::now();
        let result = self.handle_inner(&delivery).await;
        self.ctx.metrics.observe_handler(SERVICE, started, result)
    }

    async fn handle_inner(&self, delivery: &Delivery) -> Result<&'static str, HandlerError> {
        let (event, proposed) = delivery.expect::<PlanProposed>()?;
        let missing = |what: &str| {
            HandlerError::Reject(format!(
                "plan_proposed event {} has no {what}",
                event.event_id
            ))
        };
        let task = proposed.task.clone().ok_or_else(|| missing("task"))?;
        let spec = proposed.spec.clone().ok_or_else(|| missing("spec"))?;
        let plan = proposed.plan.clone().ok_or_else(|| missing("plan"))?;

        let validation = self.validate(&proposed);
        let verdict = validation.verdict();
        let label = verdict_label(verdict);
        info!(
            task_id = %event.task_id,
            verdict = label,
            score = validation.quality.as_ref().map(|q| q.total).unwrap_or(0),
            reasons = ?validation.reasons,
            "plan validated"
        );
        match verdict {
            Verdict::Approved => {
                let approval = Approval {
                    task_id: event.task_id.clone(),
                    approver: "policy".into(),
                    approved: true,
                    reason: validation.reasons.join("; "),
                    decided_at: Some(baton_proto::now()),
                    plan_hash: signing::plan_hash(&plan),
                    ..Default::default()
                };
                let mut approved = TaskApproved {
                    task: Some(task),
                    spec: Some(spec),
                    plan: Some(plan),
                    validation: Some(validation),
                    approval: Some(approval),
                    signature: None,
                };
                signing::sign_approved(&self.key, &mut approved)
                    .map_err(|e| HandlerError::Reject(format!("cannot sign the approval: {e}")))?;
                let body = Body::TaskApproved(approved);
                self.ctx
                    .bus
                    .publish(
                        subject::TASK_APPROVED,
                        &event.follow("approved", SERVICE, body),
                    )
                    .await?;
            }
            Verdict::AwaitingApproval => {
                if !self
                    .store_pending(&event, task, spec, plan, validation)
                    .await?
                {
                    return Ok("already_decided");
                }
            }
            _ => {
                let body = Body::TaskRejected(TaskRejected {
                    reasons: validation.reasons.clone(),
                    validation: Some(validation),
                    approval: None,
                });
                self.ctx
                    .bus
                    .publish(
                        subject::TASK_REJECTED,
                        &event.follow("rejected", SERVICE, body),
                    )
                    .await?;
            }
        }
        self.ctx
            .metrics
            .policy_decisions
            .get_or_create(&VerdictLabels {
                verdict: label.into(),
            })
            .inc();
        Ok(label)
    }

    /// Stores the pending approval (KV first, only if the key is new: compare-and-set on
    /// revision 0), then publishes `TaskAwaitingApproval`. A redelivered proposal whose
    /// pending approval is stored re-publishes what was stored. Returns false when the task is
    /// already decided (a claimed decision, or the delete marker older versions left): a
    /// redelivered proposal must not reopen it.
    async fn store_pending(
        &self,
        event: &Event,
        task: baton_proto::Task,
        spec: baton_proto::TaskSpec,
        plan: baton_proto::Plan,
        validation: ValidationResult,
    ) -> Result<bool, HandlerError> {
        let key = event.task_id.as_str();
        let store_err = |e: String| HandlerError::Retry(format!("approvals bucket: {e}"));
        let fresh = PendingApproval {
            plan_hash: signing::plan_hash(&plan),
            task_id: event.task_id.clone(),
            tenant: event.tenant.clone(),
            submitted_by: task.submitted_by.clone(),
            spec: Some(spec),
            plan: Some(plan),
            validation: Some(validation),
            requested_at: Some(baton_proto::now()),
            traceparent: baton_bus::trace::current_traceparent(),
            task: Some(task),
        };
        let mut attempts = 0;
        let pending = loop {
            attempts += 1;
            let existing = self.approvals.entry(key).await.map_err(|e| match e {
                KvError::InvalidKey { .. } => {
                    HandlerError::Reject(format!("task id {key:?} is not a valid key-value key"))
                }
                e @ KvError::Decode { .. } => {
                    HandlerError::Reject(format!("stored pending approval {key} is corrupt: {e}"))
                }
                e => store_err(e.to_string()),
            })?;
            match existing {
                Entry::Deleted { .. }
                | Entry::Occupied {
                    value: approval::Stored::Decided(_),
                    ..
                } => {
                    warn!(task_id = %key, "redelivered proposal of an already decided task; ignoring it");
                    return Ok(false);
                }
                // Redelivery after the KV write: publish what was stored.
                Entry::Occupied {
                    value: approval::Stored::Pending(pending),
                    ..
                } => break pending,
                // Only if the key is new (revision 0), so a decision is never overwritten.
                Entry::Vacant => {
                    let value = approval::Stored::Pending(fresh.clone());
                    match self.approvals.update(key, &value, 0).await {
                        Ok(_) => break fresh,
                        // Another delivery stored it first: handle what it stored.
                        Err(KvError::Conflict { .. }) if attempts < 3 => continue,
                        Err(e) => return Err(store_err(e.to_string())),
                    }
                }
            }
        };
        let body = Body::AwaitingApproval(TaskAwaitingApproval {
            pending: Some(pending),
        });
        self.ctx
            .bus
            .publish(
                subject::TASK_AWAITING_APPROVAL,
                &event.follow("awaiting_approval", SERVICE, body),
            )
            .await?;
        Ok(true)
    }
}

impl baton_runtime::service::Service for Validation {
    type Config = Config;
    type Error = Error;
    const NAME: &'static str = SERVICE;
    const SECTION: &'static str = "validation";
    const GRPC_SERVICES: &'static [&'static str] = GRPC_SERVICES;

    /// An empty `signing_key` becomes `<data_dir>/validation.key`, created when missing (the
    /// development key `baton up` generates on first start, which execution trusts by default).
    fn prepare(config: &mut Config, common: &baton_runtime::config::CommonConfig) {
        if config.signing_key.as_os_str().is_empty() {
            config.signing_key = common.data_dir.join(signing::VALIDATION_KEY_FILE);
            if let Err(e) = signing::dev_key(&common.data_dir, signing::VALIDATION_KEY_FILE) {
                // Reported by `start`, which cannot read the file either.
                warn!(error = %e, "cannot create the development signing key");
            }
        }
    }

    fn validate(config: &Config) -> Result<(), Error> {
        config.validate()
    }

    fn start(
        ctx: Context,
        config: Config,
    ) -> impl std::future::Future<Output = Result<Self, Error>> + Send {
        Validation::new(ctx, config)
    }

    fn add_grpc(&self, routes: &mut tonic::service::RoutesBuilder) {
        Validation::add_grpc(self, routes)
    }

    fn serve(
        self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send {
        self.run(shutdown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::report::Report;
    use baton_proto::{Artifact, Phase, Plan, Step};

    #[test]
    fn an_empty_plan_needs_a_valid_report() {
        let empty = Plan::default();
        let reasons = refusals(&empty);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].contains("no steps and no artifacts") && reasons[0].contains("\"report\""),
            "{reasons:?}"
        );
        let report = Report {
            answer: "the bill grew with egress".into(),
            ..Default::default()
        };
        let report_only = Plan {
            artifacts: vec![report.to_artifact()],
            ..Default::default()
        };
        assert!(refusals(&report_only).is_empty());
        let broken = Plan {
            artifacts: vec![Artifact {
                name: "report".into(),
                media_type: "application/json".into(),
                content: b"{\"findings\": []}".to_vec(),
                sandbox_run: None,
            }],
            ..Default::default()
        };
        let reasons = refusals(&broken);
        assert!(
            reasons.len() == 1 && reasons[0].contains("missing field `answer`"),
            "{reasons:?}"
        );
        // A plan with steps needs no report; one it carries must still be a report.
        let mut with_steps = Plan {
            phases: vec![Phase {
                steps: vec![Step::default()],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(refusals(&with_steps).is_empty());
        with_steps.artifacts = broken.artifacts.clone();
        assert_eq!(refusals(&with_steps).len(), 1);
    }

    #[test]
    fn bucket_errors_map_to_distinct_grpc_codes() {
        let corrupt = Error::from(KvError::Decode {
            bucket: APPROVALS_BUCKET.into(),
            key: "t-1".into(),
            revision: 3,
            reason: "invalid wire type".into(),
        });
        assert!(
            matches!(&corrupt, Error::Corrupt { task_id, .. } if task_id == "t-1"),
            "{corrupt:?}"
        );
        assert_eq!(tonic::Status::from(corrupt).code(), tonic::Code::DataLoss);
        let down = Error::from(KvError::Unavailable {
            bucket: APPROVALS_BUCKET.into(),
            key: "t-1".into(),
            reason: "timed out".into(),
        });
        let message = down.to_string();
        assert!(message.contains("timed out"), "{message}");
        assert_eq!(tonic::Status::from(down).code(), tonic::Code::Unavailable);
    }
}
