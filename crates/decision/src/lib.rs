//! The decision service: turns a received task into a [`TaskSpec`](baton_proto::TaskSpec) and
//! routes it to an agent role.
//!
//! In: `baton.task.received` (`TaskReceived`, durable consumer `decision`), and gRPC
//! `baton.v1.DecisionService/Classify` (a dry run: the same decision, nothing published).
//! Out: `baton.agent.<role>` (`TaskRouted`, event id `<task_id>.routed`), or
//! `baton.task.failed` (`TaskFailed{stage: "decision"}`, event id `<task_id>.failed`) when the
//! task cannot be classified (an unknown explicit role, say).
//!
//! Classification is a chain of tiers ([`Decider`]): an explicit `trigger.role` wins (tier
//! EXPLICIT); then each [`Classifier`] in turn, the first confident one winning. Only the
//! rules tier ([`rules::RuleSet`], a TOML file checked at startup) ships today; a trained
//! classifier and an LLM tier plug in behind the same trait, registered as [`TierFactory`]
//! plug-ins and ordered by `decision.tiers` (see [`tiers`]). When no tier is confident the
//! fallback rule routes the task to the assistant. `DecisionService/ListRoles` reports the
//! catalog's roles and environments.

pub mod rules;
pub mod tiers;

pub use tiers::{TierFactory, TierSetup};

use baton_bus::{ConsumerSpec, Delivery, HandlerError};
use baton_proto::decision_service_server::{
    DecisionService as DecisionServiceApi, DecisionServiceServer,
};
use baton_proto::{
    ClassifyRequest, ClassifyResponse, FailureCode, ListRolesRequest, ListRolesResponse, Task,
    TaskReceived, TaskRouted, event::Body, subject,
};
use baton_runtime::Context;
use futures::future::BoxFuture;
use rules::RuleSet;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Producer name on events and the metrics label.
pub const SERVICE: &str = "decision";
/// gRPC services this crate serves (for gRPC health).
pub const GRPC_SERVICES: &[&str] = &["baton.v1.DecisionService"];
/// Durable consumer name on `baton.task.received`.
pub const DURABLE: &str = "decision";
/// `TaskFailed.stage` of the failures this service publishes.
pub const STAGE: &str = "decision";

/// Settings of the decision service (`[decision]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Rules file (TOML, format of `crates/decision/rules.toml`); unset uses the built-in rules.
    pub rules_path: Option<PathBuf>,
    /// Tasks classified at once by this process.
    pub concurrency: usize,
    /// The classification tiers after an explicit role, in order, by [`TierFactory`] name
    /// (`["rules", "embedding"]`). Empty (the default) means `rules`, then every tier
    /// registered as a plug-in, in registration order. A name nobody registered is refused at
    /// start with the list of registered tiers.
    pub tiers: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rules_path: None,
            concurrency: 64,
            tiers: Vec::new(),
        }
    }
}

impl Config {
    /// Checks the values; the message names the key. (The rules file is checked when it is
    /// loaded, at start.)
    pub fn validate(&self) -> Result<(), Error> {
        if self.concurrency == 0 {
            return Err(Error::Config(
                "decision.concurrency must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// What went wrong in decision.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rules file does not check; names the file, the rule and the problem.
    #[error("rules file {file}: {problem}")]
    Rules {
        /// The file (or `<built-in rules.toml>`).
        file: String,
        /// What is wrong, starting with the rule's name when one rule is at fault.
        problem: String,
    },
    /// The rules file cannot be read.
    #[error(
        "cannot read rules file {}: {source}; fix decision.rules_path or unset it to use the built-in rules",
        path.display()
    )]
    ReadRules {
        /// The configured path.
        path: PathBuf,
        /// The file system's error (missing file, permissions).
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("invalid decision configuration: {0}")]
    Config(String),
    /// The trigger names a role no agent has.
    #[error("unknown role {role:?}: use one of {known}, or leave it empty to let the rules decide")]
    UnknownRole {
        /// The role as given.
        role: String,
        /// The catalog's roles, comma-separated.
        known: String,
    },
    /// The trigger names an environment the catalog does not list.
    #[error("unknown environment {environment:?}: use {known}, or leave it empty")]
    UnknownEnvironment {
        /// The environment as given.
        environment: String,
        /// The catalog's environments, comma-separated.
        known: String,
    },
    /// The task or request lacks what classification needs.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A classifier tier failed in a way that may pass (a model endpoint down).
    #[error("classifier {tier} unavailable: {reason}; retry")]
    ClassifierUnavailable {
        /// The tier's name.
        tier: String,
        /// The tier's own reason (timeout, refused connection, 5xx).
        reason: String,
    },
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] baton_bus::BusError),
}

impl Error {
    /// The `TaskFailed` code of an error that fails the task; `None` for errors that may pass
    /// on a retry.
    pub fn failure_code(&self) -> Option<FailureCode> {
        match self {
            Error::UnknownRole { .. } => Some(FailureCode::UnknownRole),
            Error::UnknownEnvironment { .. } => Some(FailureCode::UnknownEnvironment),
            Error::InvalidRequest(_) => Some(FailureCode::InvalidTask),
            Error::Rules { .. } | Error::ReadRules { .. } | Error::Config(_) => {
                Some(FailureCode::DecisionMisconfigured)
            }
            Error::ClassifierUnavailable { .. } | Error::Bus(_) => None,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::UnknownRole { .. }
            | Error::UnknownEnvironment { .. }
            | Error::InvalidRequest(_) => tonic::Code::InvalidArgument,
            Error::Rules { .. } | Error::ReadRules { .. } | Error::Config(_) => {
                tonic::Code::FailedPrecondition
            }
            Error::ClassifierUnavailable { .. } | Error::Bus(_) => tonic::Code::Unavailable,
        };
        tonic::Status::new(code, e.to_string())
    }
}

/// One tier of classification. A tier returns its best decision for a task (with its
/// confidence), or `None` when it has no opinion; the [`Decider`] accepts the first decision at
/// or above the rules' `min_confidence`. Async so that model-backed tiers fit.
pub trait Classifier: Send + Sync {
    /// Short name for logs (`rules`, `classifier`, `llm`).
    fn name(&self) -> &str;
    /// Classifies `task`.
    ///
    /// Errors: [`Error::ClassifierUnavailable`] for a transient failure (the task is retried),
    /// other variants fail the task.
    fn classify<'a>(
        &'a self,
        task: &'a Task,
    ) -> BoxFuture<'a, Result<Option<baton_proto::Decision>, Error>>;
}

/// The rules file as a [`Classifier`] (tier RULES).
pub struct RulesClassifier(pub Arc<RuleSet>);

impl Classifier for RulesClassifier {
    fn name(&self) -> &str {
        "rules"
    }
    fn classify<'a>(
        &'a self,
        task: &'a Task,
    ) -> BoxFuture<'a, Result<Option<baton_proto::Decision>, Error>> {
        Box::pin(std::future::ready(self.0.matched(task)))
    }
}

/// The classification chain: explicit role, then the tiers in order, then the fallback rule.
#[derive(Clone)]
pub struct Decider {
    rules: Arc<RuleSet>,
    tiers: Vec<Arc<dyn Classifier>>,
}

impl Decider {
    /// A chain with only the rules tier.
    pub fn new(rules: RuleSet) -> Decider {
        let rules = Arc::new(rules);
        Decider::with_tiers(rules.clone(), vec![Arc::new(RulesClassifier(rules))])
    }

    /// A chain of `tiers`, in order; `rules` still give the explicit role check, the
    /// `min_confidence` every tier must reach, and the fallback.
    pub fn with_tiers(rules: Arc<RuleSet>, tiers: Vec<Arc<dyn Classifier>>) -> Decider {
        Decider { rules, tiers }
    }

    /// The tiers' names, in order (`["rules"]`).
    pub fn tier_names(&self) -> Vec<String> {
        self.tiers.iter().map(|t| t.name().to_string()).collect()
    }

    /// Appends a tier, tried after the existing ones.
    pub fn with_tier(mut self, tier: Arc<dyn Classifier>) -> Decider {
        self.tiers.push(tier);
        self
    }

    /// The rules in use.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Classifies `task`.
    ///
    /// Errors: [`Error::UnknownRole`], [`Error::UnknownEnvironment`], [`Error::InvalidRequest`]
    /// for a task that cannot be routed; [`Error::ClassifierUnavailable`] from a tier.
    pub async fn decide(&self, task: &Task) -> Result<baton_proto::Decision, Error> {
        rules::check_task(task)?;
        if let Some(d) = self.rules.explicit(task)? {
            return Ok(d);
        }
        let mut best: Option<baton_proto::Decision> = None;
        for tier in &self.tiers {
            match tier.classify(task).await? {
                Some(d) if d.confidence >= self.rules.min_confidence => return Ok(d),
                Some(d) if best.as_ref().is_none_or(|b| d.confidence > b.confidence) => {
                    best = Some(d)
                }
                _ => {}
            }
        }
        self.rules.fallback(task, best.as_ref())
    }
}

/// The decision service (named for its job, routing tasks to agent roles, so that it does not
/// shadow the proto [`baton_proto::Decision`] it produces): the `baton.task.received` consumer
/// and the `DecisionService` gRPC server.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Context,
    config: Config,
    decider: Decider,
}

impl Router {
    /// Loads and checks the rules (from `config.rules_path`, or the built-in ones).
    ///
    /// Errors: [`Error::ReadRules`], [`Error::Rules`] (naming file, rule and problem),
    /// [`Error::Config`].
    pub async fn new(ctx: Context, config: Config) -> Result<Self, Error> {
        config.validate()?;
        let rules = Arc::new(RuleSet::load(config.rules_path.as_deref(), &ctx.catalog)?);
        info!(rules = %rules.source, count = rules.rules.len(), "decision rules loaded");
        let decider = tiers::assemble(&ctx, &config, rules)?;
        info!(tiers = ?decider.tier_names(), "decision tiers");
        Ok(Router::with_decider(ctx, config, decider))
    }

    /// Builds the service around a ready [`Decider`] (to add classifier tiers).
    pub fn with_decider(ctx: Context, config: Config, decider: Decider) -> Self {
        Router {
            inner: Arc::new(Inner {
                ctx,
                config,
                decider,
            }),
        }
    }

    /// The classification chain.
    pub fn decider(&self) -> &Decider {
        &self.inner.decider
    }

    /// Adds `baton.v1.DecisionService` to `routes`.
    pub fn add_grpc(&self, routes: &mut tonic::service::RoutesBuilder) {
        routes.add_service(DecisionServiceServer::new(DecisionApi {
            inner: self.inner.clone(),
        }));
    }

    /// Consumes `baton.task.received` until `shutdown`, then finishes the tasks in hand.
    ///
    /// Errors: [`Error::Bus`] when the consumer cannot be created.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let spec = ConsumerSpec::new(SERVICE, DURABLE, subject::TASK_RECEIVED)
            .concurrency(self.inner.config.concurrency);
        let inner = self.inner.clone();
        info!(
            filter = subject::TASK_RECEIVED,
            "decision consuming received tasks"
        );
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

impl Inner {
    async fn handle(&self, delivery: Delivery) -> Result<(), HandlerError> {
        let started = Instant::now();
        let result = self.route(&delivery).await;
        self.ctx.metrics.observe_handler(SERVICE, started, result)
    }

    /// Classifies and publishes; returns the metrics outcome.
    async fn route(&self, d: &Delivery) -> Result<&'static str, HandlerError> {
        let (event, received) = d.expect::<TaskReceived>()?;
        let task = received.task.ok_or_else(|| {
            HandlerError::Reject(format!(
                "event {} is a TaskReceived without a task",
                event.event_id
            ))
        })?;
        match self.decider.decide(&task).await {
            Ok(decision) => {
                let spec = decision.spec.as_ref().expect("decisions carry a spec");
                let subject = subject::agent(&spec.role);
                info!(
                    task_id = %event.task_id,
                    role = %spec.role,
                    task_type = %spec.task_type,
                    environment = %spec.environment,
                    risk = spec.risk().label(),
                    matched_by = %decision.matched_by,
                    confidence = decision.confidence,
                    "task routed"
                );
                let out = event.follow(
                    "routed",
                    SERVICE,
                    Body::TaskRouted(TaskRouted {
                        task: Some(task),
                        decision: Some(decision),
                    }),
                );
                self.ctx.bus.publish(&subject, &out).await?;
                Ok("routed")
            }
            Err(e) => match e.failure_code() {
                None => Err(HandlerError::Retry(e.to_string())),
                Some(code) => {
                    warn!(task_id = %event.task_id, %code, error = %e, "task cannot be routed");
                    let out = event.fail(STAGE, code, e.to_string(), None);
                    self.ctx.bus.publish(subject::TASK_FAILED, &out).await?;
                    Ok("failed")
                }
            },
        }
    }
}

/// The `DecisionService` gRPC server.
struct DecisionApi {
    inner: Arc<Inner>,
}

#[tonic::async_trait]
impl DecisionServiceApi for DecisionApi {
    async fn classify(
        &self,
        request: tonic::Request<ClassifyRequest>,
    ) -> Result<tonic::Response<ClassifyResponse>, tonic::Status> {
        let principal = self.inner.ctx.auth.authenticate(&request).await?;
        let trigger = request.into_inner().trigger.ok_or_else(|| {
            Error::InvalidRequest("trigger is missing: set ClassifyRequest.trigger".into())
        })?;
        let task = Task {
            task_id: String::new(),
            tenant: principal.tenant,
            submitted_by: principal.subject,
            trigger: Some(trigger),
            received_at: Some(baton_proto::now()),
        };
        let decision = self.inner.decider.decide(&task).await?;
        Ok(tonic::Response::new(ClassifyResponse {
            decision: Some(decision),
        }))
    }

    async fn list_roles(
        &self,
        request: tonic::Request<ListRolesRequest>,
    ) -> Result<tonic::Response<ListRolesResponse>, tonic::Status> {
        self.inner.ctx.auth.authenticate(&request).await?;
        let catalog = &self.inner.ctx.catalog;
        Ok(tonic::Response::new(ListRolesResponse {
            roles: catalog.roles.clone(),
            environments: catalog.environments.clone(),
        }))
    }
}

impl baton_runtime::service::Service for Router {
    type Config = Config;
    type Error = Error;
    const NAME: &'static str = SERVICE;
    const SECTION: &'static str = "decision";
    const GRPC_SERVICES: &'static [&'static str] = GRPC_SERVICES;

    fn validate(config: &Config) -> Result<(), Error> {
        config.validate()
    }

    fn start(
        ctx: Context,
        config: Config,
    ) -> impl std::future::Future<Output = Result<Self, Error>> + Send {
        Router::new(ctx, config)
    }

    fn add_grpc(&self, routes: &mut tonic::service::RoutesBuilder) {
        Router::add_grpc(self, routes)
    }

    fn serve(
        self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send {
        self.run(shutdown)
    }
}

/// Loads the rules and consumes received tasks until `shutdown` (the design's `run(config,
/// shutdown)`; the gRPC server is the caller's, via [`Router::add_grpc`]).
pub async fn run(ctx: Context, config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    Router::new(ctx, config).await?.run(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{DecisionTier, Trigger};

    fn task(text: &str) -> Task {
        Task {
            trigger: Some(Trigger {
                text: text.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A stand-in later tier that is confident about one phrase.
    struct Oracle;
    impl Classifier for Oracle {
        fn name(&self) -> &str {
            "oracle"
        }
        fn classify<'a>(
            &'a self,
            task: &'a Task,
        ) -> BoxFuture<'a, Result<Option<baton_proto::Decision>, Error>> {
            let text = task
                .trigger
                .as_ref()
                .map(|t| t.text.as_str())
                .unwrap_or_default();
            let d = (text == "the thing with the stuff").then(|| baton_proto::Decision {
                spec: Some(baton_proto::TaskSpec {
                    role: "sop".into(),
                    ..Default::default()
                }),
                confidence: 0.7,
                tier: DecisionTier::Classifier as i32,
                matched_by: "oracle".into(),
                explanation: "oracle".into(),
            });
            Box::pin(std::future::ready(Ok(d)))
        }
    }

    #[tokio::test]
    async fn later_tiers_are_asked_only_when_rules_are_not_confident() {
        let decider = Decider::new(RuleSet::builtin()).with_tier(Arc::new(Oracle));
        let d = decider
            .decide(&task("the thing with the stuff"))
            .await
            .unwrap();
        assert_eq!(d.tier(), DecisionTier::Classifier);
        let d = decider.decide(&task("Fix drift")).await.unwrap();
        assert_eq!(d.tier(), DecisionTier::Rules);
        assert_eq!(d.matched_by, "drift");
        let d = decider.decide(&task("Bananas")).await.unwrap();
        assert_eq!(d.matched_by, rules::FALLBACK_MATCHED_BY);
    }

    #[test]
    fn errors_map_to_codes_and_failure_codes() {
        let unknown = Error::UnknownRole {
            role: "x".into(),
            known: "drift".into(),
        };
        assert_eq!(
            unknown.failure_code().map(FailureCode::as_str),
            Some("unknown_role")
        );
        assert_eq!(
            tonic::Status::from(unknown).code(),
            tonic::Code::InvalidArgument
        );
        let down = Error::ClassifierUnavailable {
            tier: "llm".into(),
            reason: "timeout".into(),
        };
        assert_eq!(down.failure_code(), None);
        assert_eq!(tonic::Status::from(down).code(), tonic::Code::Unavailable);
    }
}
