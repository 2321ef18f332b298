//! Execution service: runs approved plans as phased rollouts (canary first, then waves), checks
//! the health of every changed asset after each phase, and rolls every change back when an
//! action fails or an asset stays unhealthy.
//!
//! - In: `baton.task.approved` ([`TaskApproved`]), durable consumer `execution`. Before the
//!   first action, the message must verify ([`baton_runtime::signing::verify_approved`]):
//!   signed by one of `trusted_keys` over its task, spec, plan, validation result and approval,
//!   the plan's hash the one approved and signed, the envelope's task and tenant the signed
//!   ones. Anything else runs nothing: it is dead-lettered on `baton.dead.execution` with the
//!   reason (`unverified approval: …`), which audit records as a security event.
//! - Out: `baton.execution.started`, `.phase_started`, `.asset_updated`, `.phase_completed`,
//!   `.rollback_started`; finally `baton.task.completed` or `baton.task.failed`
//!   (stage `execution`, code `rolled_back` or `rollback_failed`). Events published back to
//!   back are merged ([`rollout::state::merge`]): `started` carries the first phase's start,
//!   `phase_completed` the asset changes right before it, and a success's `task_completed` the
//!   last phase's completion ([`rollout::state::fold_into_end`]; `Body::unmerged` splits them).
//! - State: one protobuf [`Execution`](baton_proto::Execution) per task in the JetStream
//!   key-value bucket `baton_executions`, written after every step, so a restarted service
//!   resumes a rollout where it stopped (see [`rollout`] for the invariants).
//! - A *delivery-only* plan (no steps, and artifacts — a report, generated code —
//!   [`baton_proto::Plan::is_delivery_only`]) has nothing to run: once its approval verifies,
//!   it is completed at once — one `baton.task.completed` (`<task>.completed`, carrying an
//!   `Execution` that succeeded with no phases and the plan, so its artifacts travel with it),
//!   no `execution_started`, no state in KV (`GetExecution` answers NOT_FOUND: there is no
//!   rollout). A redelivery publishes the same event id, which the stream drops. A plan with
//!   no steps and no artifacts never gets here (validation refuses it); if a signed one did,
//!   it would run as an empty rollout, as before.
//! - gRPC: `baton.v1.ExecutionService` (`GetExecution`).
//!
//! Actions and health checks run through one [`Dispatcher`], which picks the [`ActionRunner`]
//! registered for the kind (`http`, `noop`, `tcp`, or a plug-in kind). The built-in runners
//! ([`builtin_runners`]) and the plug-ins in `ctx.plugins` are both [`RunnerFactory`] values,
//! combined in that order when the service starts (see [`runner`]).
//!
//! Delivery and redelivery:
//! - While a rollout runs, the handler sends JetStream an in-progress ack every
//!   `min(execution.progress_interval, nats.ack_wait / 3)`, so a rollout longer than
//!   `ack_wait` is not redelivered to a second handler.
//! - A rollout whose state another handler wrote meanwhile (a compare-and-set conflict) is
//!   left to that handler: the message is settled as interrupted and redelivered later, when
//!   it resumes from (or replays) the saved state.
//! - The consumer is resumable: deliveries cut short by shutdown never dead-letter it, yet they
//!   raise JetStream's delivery count. So the handler counts its own transient failures (NATS
//!   or the store failing mid-rollout) per task, in the bucket `baton_execution_attempts`.
//!   Below `nats.max_deliver` failures it waits the backoff for that count (still sending
//!   in-progress acks) and settles as interrupted; the failure that reaches `max_deliver` is
//!   settled as a retry, which the bus dead-letters (the count is reset then, and when the
//!   rollout ends). Restarts therefore never bring a rollout closer to the dead-letter stream;
//!   only real failures do.

#![forbid(unsafe_code)]

mod grpc;
pub mod http;
pub mod rollout;
pub mod runner;
pub mod store;
pub mod tcp;
#[cfg(feature = "testing")]
pub mod testing;

pub use http::HttpRunner;
pub use rollout::{Control, Interrupt, Outcome};
pub use runner::{
    ActionError, ActionOutcome, ActionRunner, Dispatcher, NoopRunner, ProbeError, ProbeResult,
    RunnerFactory, builtin_runners,
};
pub use store::{Attempts, Store};
pub use tcp::TcpRunner;

use baton_bus::{ConsumerSpec, Delivery, HandlerError};
use baton_proto::{FailureCode, TaskApproved, subject};
use baton_runtime::Context;
use baton_runtime::metrics::StageLabels;
use baton_runtime::signing::{self, TrustedKeys, VerifyError};
use rollout::{Halt, Shared};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Producer name on events, durable consumer name, metrics label.
pub const SERVICE: &str = "execution";

/// Outcome label (metrics) of a delivery-only plan, completed without a rollout.
pub const DELIVERY_ONLY: &str = "delivery_only";

/// gRPC services this crate serves, for gRPC health.
pub const GRPC_SERVICES: &[&str] = &["baton.v1.ExecutionService"];

/// `[execution]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Timeout of one action or health probe request (connect included). The built-in runners
    /// use it; the dispatcher cuts off any runner a second after it.
    #[serde(with = "humantime_serde")]
    pub action_timeout: Duration,
    /// Health-check attempts when a check does not say (`attempts = 0`).
    pub health_check_attempts: u32,
    /// Pause between health-check attempts when a check does not say (`interval_ms = 0`).
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// HTTP status meaning healthy when an `http` check does not say (`expect_status = 0`).
    pub health_check_expect_status: u16,
    /// Steps (actions, and health checks) run at once within one phase.
    pub max_concurrent_steps: usize,
    /// How often a running rollout tells JetStream it is still at work, so the message is not
    /// redelivered to another replica. More than 0; capped at a third of `nats.ack_wait`.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
    /// Rollouts run at once by this process (consumer concurrency).
    pub max_concurrent_rollouts: usize,
    /// Public keys (64 hex characters each) whose signatures on `task_approved` are trusted:
    /// validation's key, and during a rotation its next one too. At least one. Empty: the
    /// public key of the development key `<data_dir>/validation.key` (what `baton up`
    /// generates), filled in when the configuration is loaded.
    pub trusted_keys: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            action_timeout: Duration::from_secs(10),
            health_check_attempts: 3,
            health_check_interval: Duration::from_millis(200),
            health_check_expect_status: 200,
            max_concurrent_steps: 8,
            progress_interval: Duration::from_secs(5),
            max_concurrent_rollouts: 32,
            trusted_keys: Vec::new(),
        }
    }
}

impl Config {
    /// Checks the values; the message names the key and what to set.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.action_timeout.is_zero() {
            return bad("execution.action_timeout must be more than 0 (e.g. \"10s\")");
        }
        if self.health_check_attempts == 0 {
            return bad("execution.health_check_attempts must be at least 1");
        }
        if !(100..=599).contains(&self.health_check_expect_status) {
            return bad("execution.health_check_expect_status must be an http status (100-599)");
        }
        if self.max_concurrent_steps == 0 {
            return bad("execution.max_concurrent_steps must be at least 1");
        }
        if self.progress_interval < Duration::from_millis(100) {
            return bad("execution.progress_interval must be at least 100ms (e.g. \"5s\")");
        }
        if self.max_concurrent_rollouts == 0 {
            return bad("execution.max_concurrent_rollouts must be at least 1");
        }
        if self.trusted()?.is_empty() {
            return bad(
                "execution.trusted_keys is empty: list validation's public key (it is logged by \
                 validation at start as public_key)",
            );
        }
        Ok(())
    }

    /// The parsed `trusted_keys`. Errors: [`Error::Config`] naming the malformed entry.
    pub fn trusted(&self) -> Result<TrustedKeys, Error> {
        TrustedKeys::parse("execution.trusted_keys", &self.trusted_keys)
            .map_err(|e| Error::Config(e.to_string()))
    }
}

/// What can go wrong in the execution service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid execution configuration: {0}")]
    Config(String),
    /// NATS failed (publish, consumer, bucket).
    #[error(transparent)]
    Bus(#[from] baton_bus::BusError),
    /// Reading or writing the rollout state failed.
    #[error("execution state of task {task_id}: {reason}; check that NATS JetStream is reachable")]
    Store {
        /// The task whose rollout state could not be read or written.
        task_id: String,
        /// The store's reason.
        reason: String,
    },
    /// Another process wrote the rollout state since this one read it.
    #[error(
        "execution state of task {task_id} was changed by another process; leaving the rollout to it"
    )]
    Conflict {
        /// The task whose rollout another process took over.
        task_id: String,
    },
    /// The stored state cannot be used.
    #[error(
        "stored execution of task {task_id} is unusable: {reason}; delete key {task_id} from \
         bucket baton_executions to run the plan again"
    )]
    CorruptState {
        /// The task whose stored rollout state cannot be used.
        task_id: String,
        /// What is wrong.
        reason: String,
    },
    /// No execution (visible to the caller) for this task.
    #[error(
        "no execution for task {0:?}: check the id (an execution starts once its plan is approved)"
    )]
    NotFound(String),
    /// A registered runner could not be built when the service started.
    #[error("cannot build the runner for kinds {kinds}: {reason}")]
    Runner {
        /// The action and probe kinds it was to serve (`http, tcp`).
        kinds: String,
        /// The factory's reason.
        reason: String,
    },
    /// The caller is not authenticated.
    #[error(transparent)]
    Auth(#[from] baton_runtime::auth::AuthError),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::Config(_) => tonic::Status::failed_precondition(msg),
            Error::Bus(_) | Error::Store { .. } => tonic::Status::unavailable(msg),
            Error::Conflict { .. } => tonic::Status::aborted(msg),
            Error::CorruptState { .. } => tonic::Status::data_loss(msg),
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::Runner { .. } => tonic::Status::internal(msg),
            Error::Auth(a) => a.into(),
        }
    }
}

/// The execution service: the `baton.task.approved` consumer and the `ExecutionService` gRPC
/// server. (Named for what it does, so it does not shadow the proto [`Execution`] it stores.)
///
/// [`Execution`]: baton_proto::Execution
pub struct Executor {
    /// Bus, auth and metrics.
    ctx: Context,
    /// What rollouts share (store, runner, config).
    shared: Arc<Shared>,
}

impl Executor {
    /// Validates `config`, opens the `baton_executions` bucket and builds the runners: the
    /// built-ins ([`builtin_runners`]), then every [`RunnerFactory`] in `ctx.plugins` (a later
    /// one serving a kind replaces the earlier for that kind).
    ///
    /// Errors: [`Error::Config`], [`Error::Bus`] when the bucket cannot be opened,
    /// [`Error::Runner`] when a runner cannot be built.
    pub async fn new(ctx: Context, config: Config) -> Result<Self, Error> {
        config.validate()?;
        let builtins = builtin_runners();
        let plugins = ctx.plugins.all::<RunnerFactory>();
        let dispatcher = Dispatcher::build(&config, builtins.iter().chain(plugins))?;
        tracing::info!(
            actions = ?dispatcher.action_kinds(),
            probes = ?dispatcher.probe_kinds(),
            plugins = plugins.len(),
            "execution runners"
        );
        Self::with_runner(ctx, config, Arc::new(dispatcher)).await
    }

    /// Like [`Executor::new`], with `runner` running every action and probe instead of the
    /// registered runners (tests that wrap or count runs).
    pub async fn with_runner(
        ctx: Context,
        config: Config,
        runner: Arc<dyn ActionRunner>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let progress_interval = progress_interval(&config, ctx.bus.config().ack_wait)?;
        let trusted = config.trusted()?;
        tracing::info!(trusted_keys = ?trusted.ids(), "execution runs approvals signed by these keys");
        let store = Store::open(&ctx.bus).await?;
        let attempts = Attempts::open(&ctx.bus).await?;
        let shared = Arc::new(Shared {
            trusted,
            bus: ctx.bus.clone(),
            store,
            runner,
            config,
            attempts,
            progress_interval,
        });
        Ok(Executor { ctx, shared })
    }

    /// Adds the `baton.v1.ExecutionService` server to `routes`.
    pub fn add_grpc(&self, routes: &mut tonic::service::RoutesBuilder) {
        routes.add_service(grpc::server(
            self.ctx.auth.clone(),
            self.shared.store.clone(),
        ));
    }

    /// The stored execution of `task_id`, if any (no tenant check: callers check).
    pub async fn execution(&self, task_id: &str) -> Result<Option<baton_proto::Execution>, Error> {
        Ok(self.shared.store.load(task_id).await?.map(|(e, _)| e))
    }

    /// Consumes `baton.task.approved` until `shutdown`. Rollouts in progress stop at their
    /// next step and are resumed from their saved state by whichever replica gets the
    /// redelivered message.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let spec = ConsumerSpec::new(SERVICE, SERVICE, subject::TASK_APPROVED)
            .concurrency(self.shared.config.max_concurrent_rollouts)
            .resumable();
        let (shared, ctx) = (self.shared, self.ctx);
        let stop = shutdown.clone();
        tracing::info!(
            consumer = SERVICE,
            subject = subject::TASK_APPROVED,
            progress_interval = ?shared.progress_interval,
            ack_wait = ?ctx.bus.config().ack_wait,
            "execution service started"
        );
        let bus = ctx.bus.clone();
        let ctx = Arc::new(ctx);
        bus.consume(spec, shutdown, move |delivery| {
            let (shared, ctx, stop) = (shared.clone(), ctx.clone(), stop.clone());
            async move {
                // Keep the message ours while it is handled (a rollout may outlast ack_wait).
                let _progress = keep_in_progress(&delivery, shared.progress_interval);
                let started = Instant::now();
                let Handled { outcome, settle } =
                    handle(&shared, &ctx, &delivery, stop.clone()).await;
                ctx.metrics
                    .observe(SERVICE, outcome, started.elapsed().as_secs_f64());
                match settle {
                    Err(HandlerError::Retry(reason)) => {
                        Err(transient_failure(&shared, &delivery, reason, &stop).await)
                    }
                    other => other,
                }
            }
        })
        .await?;
        Ok(())
    }
}

impl baton_runtime::service::Service for Executor {
    type Config = Config;
    type Error = Error;
    const NAME: &'static str = SERVICE;
    const SECTION: &'static str = "execution";
    const GRPC_SERVICES: &'static [&'static str] = GRPC_SERVICES;

    /// Empty `trusted_keys`: the public key of the development key `<data_dir>/validation.key`
    /// (created when missing, as validation's `prepare` does), so `baton up` trusts the key it
    /// generated.
    fn prepare(config: &mut Config, common: &baton_runtime::config::CommonConfig) {
        if config.trusted_keys.is_empty() {
            match signing::dev_key(&common.data_dir, signing::VALIDATION_KEY_FILE) {
                Ok(key) => config.trusted_keys = vec![key.public_key().to_string()],
                // `validate` then says that no key is trusted.
                Err(e) => tracing::warn!(error = %e, "cannot read the development signing key"),
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
        Executor::new(ctx, config)
    }

    fn add_grpc(&self, routes: &mut tonic::service::RoutesBuilder) {
        Executor::add_grpc(self, routes)
    }

    fn serve(
        self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send {
        self.run(shutdown)
    }
}

/// Convenience matching the design's `run(config, shutdown)`.
pub async fn run(ctx: Context, config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    Executor::new(ctx, config).await?.run(shutdown).await
}

/// The in-progress ack period: `config.progress_interval`, or a third of `ack_wait` when that
/// is shorter (so two acks can be lost before the server redelivers).
fn progress_interval(config: &Config, ack_wait: Duration) -> Result<Duration, Error> {
    let every = config.progress_interval.min(ack_wait / 3);
    if every.is_zero() {
        return Err(Error::Config(format!(
            "nats.ack_wait ({ack_wait:?}) is too short to keep rollouts alive; set it to a few seconds"
        )));
    }
    if every < config.progress_interval {
        tracing::info!(
            configured = ?config.progress_interval,
            ?ack_wait,
            effective = ?every,
            "execution.progress_interval shortened to a third of nats.ack_wait"
        );
    }
    Ok(every)
}

/// Sends an in-progress ack for `delivery` every `every` until the returned guard is dropped.
fn keep_in_progress(delivery: &Delivery, every: Duration) -> tokio_util::sync::DropGuard {
    let ticker = CancellationToken::new();
    let (d, stop) = (delivery.clone(), ticker.clone());
    tokio::spawn(async move {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = interval.tick() => d.in_progress().await,
            }
        }
    });
    ticker.drop_guard()
}

/// Settles a transient failure of the handler by its own failure count for the task (see the
/// crate docs): below `nats.max_deliver`, waits that count's backoff and returns
/// [`HandlerError::Interrupted`] (never dead-lettered, whatever the delivery count); at
/// `max_deliver`, resets the count and returns [`HandlerError::Retry`], which the bus
/// dead-letters. When the count cannot be read or written, falls back to `Retry`.
async fn transient_failure(
    shared: &Shared,
    delivery: &Delivery,
    reason: String,
    shutdown: &CancellationToken,
) -> HandlerError {
    let Ok(task_id) = delivery.event().map(|e| e.task_id) else {
        return HandlerError::Retry(reason);
    };
    let bus = shared.bus.config();
    let attempt = match shared.attempts.record_failure(&task_id).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(task_id = %task_id, error = %e, "cannot count the failure; leaving it to the delivery count");
            return HandlerError::Retry(reason);
        }
    };
    if attempt >= bus.max_deliver.max(1) as u64 {
        tracing::warn!(task_id = %task_id, attempt, %reason, "rollout failed at its last attempt");
        if let Err(e) = shared.attempts.reset(&task_id).await {
            tracing::warn!(task_id = %task_id, error = %e, "cannot reset the failure count");
        }
        return HandlerError::Retry(format!("failed {attempt} times: {reason}"));
    }
    let delay = bus.backoff_for(attempt as i64);
    tracing::warn!(task_id = %task_id, attempt, ?delay, %reason, "rollout interrupted by a failure; will resume");
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
    HandlerError::Interrupted(format!(
        "failure {attempt} of at most {}: {reason}",
        bus.max_deliver
    ))
}

/// How [`handle`] dealt with one delivery: the metrics outcome and how to settle it.
struct Handled {
    /// Metrics label: a rollout [`Outcome`], `not_approved`, `unverified`, `stopped`, or the
    /// settling error's.
    outcome: &'static str,
    /// `Ok` to ack; a [`HandlerError::Retry`] goes through [`transient_failure`] first.
    settle: Result<(), HandlerError>,
}

impl Handled {
    /// Settled with `e`, counted under its own label.
    fn failed(e: impl Into<HandlerError>) -> Handled {
        let e = e.into();
        Handled {
            outcome: e.outcome(),
            settle: Err(e),
        }
    }

    /// Acked, counted under `outcome`.
    fn done(outcome: &'static str) -> Handled {
        Handled {
            outcome,
            settle: Ok(()),
        }
    }
}

/// Handles one `task_approved` delivery.
async fn handle(
    shared: &Shared,
    ctx: &Context,
    delivery: &Delivery,
    shutdown: CancellationToken,
) -> Handled {
    let (event, approved) = match delivery.expect::<TaskApproved>() {
        Ok(expected) => expected,
        Err(e) => return Handled::failed(e),
    };
    // Before anything else: only a decision validation signed runs.
    let refused = match signing::verify_approved(&shared.trusted, &event, &approved) {
        Ok(key_id) => {
            tracing::debug!(task_id = %event.task_id, %key_id, "approval verified");
            None
        }
        // Signed, but a no: reported below as a failed task.
        Err(VerifyError::NotApproved) => None,
        Err(e) => Some(e),
    };
    if let Some(e) = refused {
        tracing::warn!(
            task_id = %event.task_id,
            tenant = %event.tenant,
            producer = %event.producer,
            reason = %e,
            "security: refused an unverified approval; nothing was run"
        );
        return Handled {
            outcome: "unverified",
            settle: Err(HandlerError::Reject(format!(
                "unverified approval: {e}; nothing was run"
            ))),
        };
    }
    if !store::valid_key(&event.task_id) {
        return Handled::failed(HandlerError::Reject(format!(
            "task id {:?} cannot be a key-value key (letters, digits, -/_=. only)",
            event.task_id
        )));
    }
    let Some(plan) = approved.plan else {
        return Handled::failed(HandlerError::Reject(format!(
            "task_approved {} carries no plan",
            event.event_id
        )));
    };
    if approved.approval.as_ref().is_some_and(|a| !a.approved) {
        // Never run a plan whose approval record says no.
        let failed = event.fail(
            SERVICE,
            FailureCode::NotApproved,
            "task_approved carries an approval that is not approved; nothing was run",
            None,
        );
        if let Err(e) = shared.bus.publish(subject::TASK_FAILED, &failed).await {
            return Handled::failed(e);
        }
        return Handled::done("not_approved");
    }

    if plan.is_delivery_only() {
        // Nothing to run: the artifacts are the delivery. Completed at once, without a rollout.
        let completed = rollout::delivery_only_completion(&event, plan);
        if let Err(e) = shared
            .bus
            .publish(subject::TASK_COMPLETED, &completed)
            .await
        {
            return Handled::failed(e);
        }
        tracing::info!(task_id = %event.task_id, "delivery-only plan completed without a rollout");
        let labels = StageLabels {
            service: SERVICE.into(),
            outcome: DELIVERY_ONLY.into(),
        };
        ctx.metrics.executions.get_or_create(&labels).inc();
        return Handled::done(DELIVERY_ONLY);
    }

    match rollout::run(shared, &event, plan, Control::new(shutdown)).await {
        Ok(outcome) => {
            if outcome != Outcome::Replayed {
                let labels = StageLabels {
                    service: SERVICE.into(),
                    outcome: outcome.label().into(),
                };
                ctx.metrics.executions.get_or_create(&labels).inc();
            }
            // A failure is only ever recorded by an earlier delivery: the first one has nothing
            // to clear (and skipping the read keeps the hot path free of a KV round trip).
            if delivery.deliveries() > 1
                && let Err(e) = shared.attempts.reset(&event.task_id).await
            {
                tracing::warn!(task_id = %event.task_id, error = %e, "cannot reset the failure count");
            }
            Handled::done(outcome.label())
        }
        Err(Halt::Interrupted(interrupt)) => {
            tracing::info!(task_id = %event.task_id, ?interrupt, "rollout stopped; it resumes on redelivery");
            Handled {
                outcome: "stopped",
                settle: Err(HandlerError::Interrupted(
                    "stopped early; resumes from saved state".into(),
                )),
            }
        }
        Err(Halt::Failed(e @ Error::Conflict { .. })) => {
            // Not a failure: another handler (a redelivery) advanced the rollout meanwhile.
            tracing::debug!(task_id = %event.task_id, error = %e, "rollout owned by another handler");
            Handled::failed(HandlerError::Interrupted(e.to_string()))
        }
        Err(Halt::Failed(e)) => {
            tracing::warn!(task_id = %event.task_id, error = %e, "rollout interrupted; will retry");
            Handled::failed(HandlerError::Retry(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_round_trips() {
        // Valid once it trusts a key (filled in from the development key by `prepare`).
        let c = Config {
            trusted_keys: vec![
                signing::SigningKey::from_seed([1; 32])
                    .public_key()
                    .to_string(),
            ],
            ..Config::default()
        };
        c.validate().unwrap();
        assert!(
            matches!(Config::default().validate(), Err(Error::Config(m)) if m.contains("execution.trusted_keys is empty"))
        );
        let bad = Config {
            trusted_keys: vec!["zz".into()],
            ..c.clone()
        };
        assert!(
            matches!(bad.validate(), Err(Error::Config(m)) if m.contains("execution.trusted_keys[0]"))
        );
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"action_timeout\":\"10s\""), "{json}");
        let back: Config = serde_json::from_str(&json).unwrap();
        assert_eq!(back.max_concurrent_steps, 8);
    }

    #[test]
    fn bad_config_names_the_key() {
        let c = Config {
            max_concurrent_steps: 0,
            ..Default::default()
        };
        assert!(
            matches!(c.validate(), Err(Error::Config(m)) if m.contains("max_concurrent_steps"))
        );
        let unknown = serde_json::from_str::<Config>(r#"{"nope": 1}"#);
        assert!(unknown.is_err());
    }

    #[test]
    fn progress_interval_is_positive_and_a_third_of_ack_wait_at_most() {
        let zero = Config {
            progress_interval: Duration::ZERO,
            ..Default::default()
        };
        assert!(
            matches!(zero.validate(), Err(Error::Config(m)) if m.contains("progress_interval"))
        );
        let c = Config::default();
        assert_eq!(
            progress_interval(&c, Duration::from_secs(30)).unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(
            progress_interval(&c, Duration::from_secs(2)).unwrap(),
            Duration::from_secs(2) / 3
        );
        assert_eq!(
            progress_interval(&c, Duration::from_secs(1)).unwrap(),
            Duration::from_secs(1) / 3
        );
        assert!(
            matches!(progress_interval(&c, Duration::ZERO), Err(Error::Config(m)) if m.contains("nats.ack_wait"))
        );
    }

    #[test]
    fn errors_map_to_distinct_grpc_codes() {
        assert_eq!(
            tonic::Status::from(Error::NotFound("t".into())).code(),
            tonic::Code::NotFound
        );
        assert_eq!(
            tonic::Status::from(Error::Conflict {
                task_id: "t".into()
            })
            .code(),
            tonic::Code::Aborted
        );
        let store = Error::Store {
            task_id: "t".into(),
            reason: "timeout".into(),
        };
        assert_eq!(tonic::Status::from(store).code(), tonic::Code::Unavailable);
        let runner = Error::Runner {
            kinds: "docker".into(),
            reason: "no socket".into(),
        };
        assert_eq!(tonic::Status::from(runner).code(), tonic::Code::Internal);
    }
}
