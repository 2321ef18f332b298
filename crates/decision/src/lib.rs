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
//! EXPLICIT); then each [`Classifier`] in turn, the first confident one winning, except that a
//! rules decision may be overruled by a more confident next tier ([`Config::overrule_rules`]).
//! The rules ([`rules::RuleSet`], a TOML file checked at startup), the embedding classifier
//! ([`embedding`]) and the model tier ([`llm`]) ship; every tier is a [`TierFactory`] plug-in,
//! ordered by `decision.tiers` (see [`tiers`]). When no tier is confident the task waits for
//! an operator, or (rules only, or `when_unsure = "fallback"`) the fallback rule routes it to
//! the assistant. `DecisionService/ListRoles` reports the
//! catalog's roles and environments.

pub mod embedding;
pub mod eval;
pub mod llm;
pub mod rules;
pub mod shadow;
pub mod tiers;

pub use tiers::{TierFactory, TierSetup};

use baton_bus::kv::Kv;
use baton_bus::{ConsumerSpec, Delivery, HandlerError};
use baton_proto::decision_service_server::{
    DecisionService as DecisionServiceApi, DecisionServiceServer,
};
use baton_proto::{
    ClassifyRequest, ClassifyResponse, DecisionTier, FailureCode, ListAwaitingRequest,
    ListAwaitingResponse, ListRolesRequest, ListRolesResponse, RejectTaskRequest,
    RejectTaskResponse, RouteRequest, RouteResponse, Task, TaskAwaitingClarification, TaskReceived,
    TaskRouted, event::Body, subject,
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
    /// `[decision.embedding]`: the in-process embedding classifier (model directory, examples,
    /// thresholds). Without `model_dir` there is no embedding tier.
    pub embedding: embedding::EmbeddingConfig,
    /// `[decision.llm]`: the model tier (providers from `[llm]` by name, thresholds). Without
    /// `providers` there is no model tier.
    pub llm: llm::LlmTierConfig,
    /// What happens when no tier is confident: `clarify` (the task waits as
    /// `awaiting_clarification` until an operator routes or rejects it) or `fallback` (the
    /// rules file's fallback rule, the assistant). `clarify` takes effect only when a tier
    /// besides the rules is active: routing by keywords alone keeps the fallback.
    pub when_unsure: WhenUnsure,
    /// Whether a rules decision gets a second opinion from the next tier (the classifier):
    /// when that tier is confident (at its own `min_confidence`), names another role, and is
    /// more confident than the rule's score (the rule's `confidence`, plus 0.03 per extra
    /// hit), it decides instead, and the explanation names the rule it overruled. One keyword
    /// can mislead ("run the patch runbook" is `patch`, not `sop`), and the classifier reads
    /// the whole request; a rule given `confidence = 0.99` (or several hits) is overruled only
    /// by a near-certain classifier. Off: the first confident tier decides, as for every other
    /// tier.
    pub overrule_rules: bool,
}

/// What the decision service does with a task no tier is confident about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenUnsure {
    /// Ask a human: publish `TaskAwaitingClarification` and wait for `baton route`.
    #[default]
    Clarify,
    /// Route by the rules file's fallback rule.
    Fallback,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rules_path: None,
            concurrency: 64,
            tiers: Vec::new(),
            embedding: embedding::EmbeddingConfig::default(),
            llm: llm::LlmTierConfig::default(),
            when_unsure: WhenUnsure::default(),
            overrule_rules: true,
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
        self.embedding.validate()?;
        self.llm.validate()
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
    /// A file of the embedding model is missing or does not load.
    #[error(
        "embedding model file {}: {problem}; run `{}` and set decision.embedding.model_dir to the directory it prints",
        file.display(), embedding::FETCH_COMMAND
    )]
    Model {
        /// The file at fault.
        file: PathBuf,
        /// What is wrong (no such file, not valid safetensors, a tensor missing).
        problem: String,
    },
    /// The labelled examples do not check.
    #[error("examples file {file} line {line}: {problem}")]
    Examples {
        /// The file (or `<built-in examples.jsonl>`).
        file: String,
        /// 1-based line number (0: the file as a whole).
        line: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// The embedding forward pass failed.
    #[error("embedding failed: {0}")]
    Embedding(String),
    /// No task with that id awaits clarification (for this tenant).
    #[error("no task {0:?} awaits clarification: list them with `baton pending`")]
    NotAwaiting(String),
    /// The caller may not route or reject tasks.
    #[error("{0}")]
    PermissionDenied(String),
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] baton_bus::BusError),
    /// The bucket of tasks awaiting clarification failed.
    #[error(transparent)]
    Kv(#[from] baton_bus::KvError),
}

impl Error {
    /// The `TaskFailed` code of an error that fails the task; `None` for errors that may pass
    /// on a retry.
    pub fn failure_code(&self) -> Option<FailureCode> {
        match self {
            Error::UnknownRole { .. } => Some(FailureCode::UnknownRole),
            Error::UnknownEnvironment { .. } => Some(FailureCode::UnknownEnvironment),
            Error::InvalidRequest(_) => Some(FailureCode::InvalidTask),
            Error::Rules { .. }
            | Error::ReadRules { .. }
            | Error::Config(_)
            | Error::Model { .. }
            | Error::Examples { .. } => Some(FailureCode::DecisionMisconfigured),
            Error::ClassifierUnavailable { .. }
            | Error::Embedding(_)
            | Error::Bus(_)
            | Error::Kv(_)
            | Error::NotAwaiting(_)
            | Error::PermissionDenied(_) => None,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::UnknownRole { .. }
            | Error::UnknownEnvironment { .. }
            | Error::InvalidRequest(_) => tonic::Code::InvalidArgument,
            Error::Rules { .. }
            | Error::ReadRules { .. }
            | Error::Config(_)
            | Error::Model { .. }
            | Error::Examples { .. } => tonic::Code::FailedPrecondition,
            Error::ClassifierUnavailable { .. } | Error::Bus(_) | Error::Kv(_) => {
                tonic::Code::Unavailable
            }
            Error::Embedding(_) => tonic::Code::Internal,
            Error::NotAwaiting(_) => tonic::Code::NotFound,
            Error::PermissionDenied(_) => tonic::Code::PermissionDenied,
        };
        tonic::Status::new(code, e.to_string())
    }
}

/// What one tier made of a task: its best decision (with its confidence, taken when it
/// reaches the tier's threshold), or no opinion and why.
#[derive(Debug, Clone, PartialEq)]
pub enum Opinion {
    /// The tier's best decision, whatever its confidence (boxed: it is the large variant).
    Decided(Box<baton_proto::Decision>),
    /// The tier has no opinion; the reason is for the operator who routes the task by hand
    /// (`no rule matched`, `the request is empty`, `no provider answered: …`), a short phrase
    /// without the tier's name.
    NoOpinion(String),
}

impl From<baton_proto::Decision> for Opinion {
    fn from(d: baton_proto::Decision) -> Opinion {
        Opinion::Decided(Box::new(d))
    }
}

/// A tier that had no opinion about a task, and why (see [`Opinion::NoOpinion`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Abstention {
    /// The tier's [`Classifier::name`] (`rules`, `classifier`, `llm`).
    pub tier: String,
    /// Why it had no opinion.
    pub reason: String,
}

/// One tier of classification. A tier returns its best decision for a task (with its
/// confidence), or no opinion and why; the [`Decider`] accepts the first decision at or above
/// the tier's `min_confidence`. Async so that model-backed tiers fit.
pub trait Classifier: Send + Sync {
    /// Short name for logs and explanations (`rules`, `classifier`, `llm`).
    fn name(&self) -> &str;
    /// The confidence this tier's decisions must reach to be taken; `None` (the default) uses
    /// the rules file's `defaults.min_confidence`.
    fn min_confidence(&self) -> Option<f64> {
        None
    }
    /// Classifies `task`. A failure the tier can live with (a model provider down) is
    /// [`Opinion::NoOpinion`] with the failure as the reason, so that the task goes to the next
    /// tier or a human and the operator sees why.
    ///
    /// Errors: [`Error::ClassifierUnavailable`] for a transient failure (the task is retried),
    /// other variants fail the task.
    fn classify<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Opinion, Error>>;
}

/// The rules file as a [`Classifier`] (tier RULES).
pub struct RulesClassifier(pub Arc<RuleSet>);

impl Classifier for RulesClassifier {
    fn name(&self) -> &str {
        "rules"
    }
    fn classify<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Opinion, Error>> {
        Box::pin(std::future::ready(self.0.matched(task).map(|d| match d {
            Some(d) => Opinion::from(d),
            None => Opinion::NoOpinion("no rule matched".into()),
        })))
    }
}

/// `Decision.matched_by` of a task left for a human (tier HUMAN, no role chosen yet).
pub const AWAITING_CLARIFICATION: &str = "awaiting_clarification";

/// A decision with what every tier thought on the way to it.
#[derive(Debug, Clone)]
pub struct Explained {
    /// The decision taken: a route, or (tier HUMAN, matched_by [`AWAITING_CLARIFICATION`]) a
    /// task left for an operator, whose spec is the best candidate's (a guess, not a route).
    pub decision: baton_proto::Decision,
    /// Each tier's candidate, in the order asked (tiers with no opinion are left out).
    pub candidates: Vec<baton_proto::Decision>,
    /// The tiers asked that had no opinion, in the order asked, with why.
    pub abstentions: Vec<Abstention>,
}

impl Explained {
    /// Whether the task waits for an operator.
    pub fn awaits_clarification(&self) -> bool {
        self.decision.tier() == DecisionTier::Human
    }
}

/// The classification chain: explicit role, then the tiers in order, then a human (or the
/// fallback rule).
#[derive(Clone)]
pub struct Decider {
    rules: Arc<RuleSet>,
    tiers: Vec<Arc<dyn Classifier>>,
    when_unsure: WhenUnsure,
    overrule_rules: bool,
}

impl Decider {
    /// A chain with only the rules tier.
    pub fn new(rules: RuleSet) -> Decider {
        let rules = Arc::new(rules);
        Decider::with_tiers(rules.clone(), vec![Arc::new(RulesClassifier(rules))])
    }

    /// A chain of `tiers`, in order; `rules` still give the explicit role check, the
    /// `min_confidence` of tiers that set none, and the fallback. When no tier is confident,
    /// the fallback rule routes the task unless [`Decider::when_unsure`] says `clarify`.
    pub fn with_tiers(rules: Arc<RuleSet>, tiers: Vec<Arc<dyn Classifier>>) -> Decider {
        Decider {
            rules,
            tiers,
            when_unsure: WhenUnsure::Fallback,
            overrule_rules: false,
        }
    }

    /// Sets whether the tier after the rules may overrule a rules decision it is more
    /// confident about ([`Config::overrule_rules`]); off by default.
    pub fn overrule_rules(mut self, overrule: bool) -> Decider {
        self.overrule_rules = overrule;
        self
    }

    /// Sets what happens when no tier is confident.
    pub fn when_unsure(mut self, when_unsure: WhenUnsure) -> Decider {
        self.when_unsure = when_unsure;
        self
    }

    /// Whether an unsure task waits for a human: `clarify` and a tier other than the rules.
    pub fn clarifies(&self) -> bool {
        self.when_unsure == WhenUnsure::Clarify
            && self.tiers.iter().any(|t| t.name() != tiers::RULES_TIER)
    }

    /// The tiers' names, in order (`["rules"]`).
    pub fn tier_names(&self) -> Vec<String> {
        self.tiers.iter().map(|t| t.name().to_string()).collect()
    }

    /// The tiers, in order.
    pub fn tiers(&self) -> &[Arc<dyn Classifier>] {
        &self.tiers
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

    /// The rules in use, shared.
    pub fn rules_arc(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Classifies `task`.
    ///
    /// Errors: [`Error::UnknownRole`], [`Error::UnknownEnvironment`], [`Error::InvalidRequest`]
    /// for a task that cannot be routed; [`Error::ClassifierUnavailable`] from a tier.
    pub async fn decide(&self, task: &Task) -> Result<baton_proto::Decision, Error> {
        Ok(self.explain(task).await?.decision)
    }

    /// Classifies `task` and keeps every tier's candidate.
    ///
    /// Errors: as [`Decider::decide`].
    pub async fn explain(&self, task: &Task) -> Result<Explained, Error> {
        rules::check_task(task)?;
        if let Some(d) = self.rules.explicit(task)? {
            return Ok(Explained {
                decision: d,
                candidates: Vec::new(),
                abstentions: Vec::new(),
            });
        }
        let mut candidates: Vec<baton_proto::Decision> = Vec::new();
        let mut abstentions: Vec<Abstention> = Vec::new();
        let mut best: Option<baton_proto::Decision> = None;
        for (i, tier) in self.tiers.iter().enumerate() {
            let Some(d) = self
                .ask(tier.as_ref(), task, &mut candidates, &mut abstentions)
                .await?
            else {
                continue;
            };
            if d.confidence >= self.threshold(tier.as_ref()) {
                if self.overrule_rules
                    && tier.name() == tiers::RULES_TIER
                    && let Some(next) = self.tiers.get(i + 1)
                    && let Some(overruling) = self
                        .second_opinion(next.as_ref(), task, &d, &mut candidates, &mut abstentions)
                        .await?
                {
                    return Ok(Explained {
                        decision: overruling,
                        candidates,
                        abstentions,
                    });
                }
                return Ok(Explained {
                    decision: d,
                    candidates,
                    abstentions,
                });
            }
            if best.as_ref().is_none_or(|b| d.confidence > b.confidence) {
                best = Some(d);
            }
        }
        if self.clarifies() {
            let mut decision = match &best {
                Some(b) => b.clone(),
                None => self.rules.fallback(task, None)?,
            };
            let opinions = candidates
                .iter()
                .map(|c| format!("{} {:.2}", c.matched_by, c.confidence))
                .chain(
                    abstentions
                        .iter()
                        .map(|a| format!("{}: no opinion, {}", a.tier, a.reason)),
                )
                .collect::<Vec<_>>()
                .join("; ");
            let opinions = if opinions.is_empty() {
                "none had an opinion".to_string()
            } else {
                opinions
            };
            decision.explanation = format!(
                "no tier was confident ({opinions}); waiting for an operator: `baton route <task-id> --role <role>`"
            );
            decision.tier = DecisionTier::Human.into();
            decision.matched_by = AWAITING_CLARIFICATION.to_string();
            return Ok(Explained {
                decision,
                candidates,
                abstentions,
            });
        }
        Ok(Explained {
            decision: self.rules.fallback(task, best.as_ref())?,
            candidates,
            abstentions,
        })
    }

    /// The confidence `tier`'s decisions must reach: its own, else the rules file's
    /// `defaults.min_confidence`.
    fn threshold(&self, tier: &dyn Classifier) -> f64 {
        tier.min_confidence().unwrap_or(self.rules.min_confidence)
    }

    /// Asks `tier` about `task` and records its candidate (or its abstention, with why).
    async fn ask(
        &self,
        tier: &dyn Classifier,
        task: &Task,
        candidates: &mut Vec<baton_proto::Decision>,
        abstentions: &mut Vec<Abstention>,
    ) -> Result<Option<baton_proto::Decision>, Error> {
        match tier.classify(task).await? {
            Opinion::Decided(d) => {
                candidates.push((*d).clone());
                Ok(Some(*d))
            }
            Opinion::NoOpinion(reason) => {
                abstentions.push(Abstention {
                    tier: tier.name().to_string(),
                    reason,
                });
                Ok(None)
            }
        }
    }

    /// Asks `next` about a task the rules decided as `ruled`; its decision when it is
    /// confident, routes elsewhere and is more confident than the rule, explained as
    /// overruling it. Its candidate (or abstention) is recorded either way.
    async fn second_opinion(
        &self,
        next: &dyn Classifier,
        task: &Task,
        ruled: &baton_proto::Decision,
        candidates: &mut Vec<baton_proto::Decision>,
        abstentions: &mut Vec<Abstention>,
    ) -> Result<Option<baton_proto::Decision>, Error> {
        let Some(mut d) = self.ask(next, task, candidates, abstentions).await? else {
            return Ok(None);
        };
        let role = |d: &baton_proto::Decision| d.spec.as_ref().map(|s| s.role.clone());
        if d.confidence < self.threshold(next)
            || d.confidence <= ruled.confidence
            || role(&d) == role(ruled)
        {
            return Ok(None);
        }
        d.explanation = format!(
            "{}; this overrules {:?} (rules, confidence {:.2}, role {}): the {} is more confident",
            d.explanation,
            ruled.matched_by,
            ruled.confidence,
            role(ruled).unwrap_or_default(),
            next.name()
        );
        Ok(Some(d))
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
    /// Tasks waiting for an operator, by task id (bucket [`AWAITING_BUCKET`]); opened on the
    /// first use.
    awaiting: tokio::sync::OnceCell<Kv<TaskAwaitingClarification>>,
}

/// KV bucket of the tasks awaiting clarification (key: task id; a routed or rejected task's
/// key is purged).
pub const AWAITING_BUCKET: &str = "baton_clarifications";
/// Revisions kept per key of [`AWAITING_BUCKET`].
pub const AWAITING_HISTORY: i64 = 1;

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
                awaiting: tokio::sync::OnceCell::new(),
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
        match self.decider.explain(&task).await {
            Ok(explained) if explained.awaits_clarification() => {
                info!(
                    task_id = %event.task_id,
                    candidates = ?explained.candidates.iter().map(|c| (&c.matched_by, c.confidence)).collect::<Vec<_>>(),
                    "no tier is confident: task awaits clarification"
                );
                let waiting = TaskAwaitingClarification {
                    task: Some(task),
                    decision: Some(explained.decision),
                    candidates: explained.candidates,
                };
                // Saved before it is announced, so that `baton route` finds every task `baton
                // pending` lists; a redelivery finds the key taken and announces again (the
                // event id makes the second publish a duplicate).
                let kv = self
                    .awaiting()
                    .await
                    .map_err(|e| HandlerError::Retry(e.to_string()))?;
                match kv.create(&event.task_id, &waiting).await {
                    Ok(_) | Err(baton_bus::KvError::Conflict { .. }) => {}
                    Err(e) => return Err(HandlerError::Retry(e.to_string())),
                }
                let out = event.follow(
                    "awaiting_clarification",
                    SERVICE,
                    Body::AwaitingClarification(waiting),
                );
                self.ctx
                    .bus
                    .publish(subject::TASK_AWAITING_CLARIFICATION, &out)
                    .await?;
                Ok("awaiting_clarification")
            }
            Ok(Explained { decision, .. }) => {
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

impl Inner {
    /// The bucket of tasks awaiting clarification.
    async fn awaiting(&self) -> Result<&Kv<TaskAwaitingClarification>, Error> {
        self.awaiting
            .get_or_try_init(|| self.ctx.bus.kv(AWAITING_BUCKET, AWAITING_HISTORY))
            .await
            .map_err(Error::from)
    }

    /// The waiting task `task_id`, if `principal` may see it.
    async fn waiting(
        &self,
        principal: &baton_runtime::auth::Principal,
        task_id: &str,
    ) -> Result<TaskAwaitingClarification, Error> {
        let not_found = || Error::NotAwaiting(task_id.to_string());
        if task_id.is_empty() || task_id.contains(['.', '*', '>', ' ']) {
            return Err(not_found());
        }
        let (w, _) = self
            .awaiting()
            .await?
            .get(task_id)
            .await?
            .ok_or_else(not_found)?;
        let tenant = w
            .task
            .as_ref()
            .map(|t| t.tenant.as_str())
            .unwrap_or_default();
        if !principal.can_see(tenant) {
            return Err(not_found());
        }
        Ok(w)
    }

    /// The first event of an operator's answer to waiting task `w`.
    fn answer(w: &TaskAwaitingClarification, stage: &str, body: Body) -> baton_proto::Event {
        let task = w.task.clone().unwrap_or_default();
        let mut e = baton_proto::Event::first(&task.task_id, &task.tenant, stage, SERVICE, body);
        e.causation_id = format!("{}.awaiting_clarification", task.task_id);
        e
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
        let explained = self.inner.decider.explain(&task).await?;
        Ok(tonic::Response::new(ClassifyResponse {
            decision: Some(explained.decision),
            candidates: explained.candidates,
        }))
    }

    async fn list_awaiting(
        &self,
        request: tonic::Request<ListAwaitingRequest>,
    ) -> Result<tonic::Response<ListAwaitingResponse>, tonic::Status> {
        let principal = self.inner.ctx.auth.authenticate(&request).await?;
        let kv = self.inner.awaiting().await?;
        let mut awaiting = Vec::new();
        for key in kv.keys().await.map_err(Error::from)? {
            // A key purged between listing and reading has been answered meanwhile.
            if let Some((w, _)) = kv.get(&key).await.map_err(Error::from)?
                && principal.can_see(
                    w.task
                        .as_ref()
                        .map(|t| t.tenant.as_str())
                        .unwrap_or_default(),
                )
            {
                awaiting.push(w);
            }
        }
        let received = |w: &TaskAwaitingClarification| {
            w.task
                .as_ref()
                .and_then(|t| t.received_at)
                .map(|t| (t.seconds, t.nanos))
                .unwrap_or_default()
        };
        awaiting.sort_by_key(|w| (received(w), w.task.as_ref().map(|t| t.task_id.clone())));
        Ok(tonic::Response::new(ListAwaitingResponse { awaiting }))
    }

    async fn route(
        &self,
        request: tonic::Request<RouteRequest>,
    ) -> Result<tonic::Response<RouteResponse>, tonic::Status> {
        let principal = self.inner.ctx.auth.authenticate(&request).await?;
        principal.require(baton_runtime::auth::Role::Operator)?;
        let req = request.into_inner();
        let w = self.inner.waiting(&principal, &req.task_id).await?;
        let task = w.task.clone().unwrap_or_default();
        let role = req.role.trim().to_ascii_lowercase();
        if !self.inner.ctx.catalog.has_role(&role) {
            return Err(Error::UnknownRole {
                role: req.role,
                known: self.inner.ctx.catalog.roles_text(),
            }
            .into());
        }
        let (spec, context) = self.inner.decider.rules().spec_for_role(&task, &role)?;
        let reason = if req.reason.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", req.reason.trim())
        };
        let decision = baton_proto::Decision {
            spec: Some(spec),
            confidence: 1.0,
            tier: DecisionTier::Human.into(),
            matched_by: format!("operator:{}", principal.subject),
            explanation: format!(
                "routed to {role} by {}{reason}; {context}",
                principal.subject
            ),
        };
        let out = Inner::answer(
            &w,
            "routed",
            Body::TaskRouted(TaskRouted {
                task: Some(task.clone()),
                decision: Some(decision.clone()),
            }),
        );
        self.inner
            .ctx
            .bus
            .publish(&subject::agent(&role), &out)
            .await
            .map_err(Error::from)?;
        self.inner
            .awaiting()
            .await?
            .purge(&task.task_id)
            .await
            .map_err(Error::from)?;
        info!(task_id = %task.task_id, %role, operator = %principal.subject, "task routed by an operator");
        Ok(tonic::Response::new(RouteResponse {
            decision: Some(decision),
        }))
    }

    async fn reject_task(
        &self,
        request: tonic::Request<RejectTaskRequest>,
    ) -> Result<tonic::Response<RejectTaskResponse>, tonic::Status> {
        let principal = self.inner.ctx.auth.authenticate(&request).await?;
        principal.require(baton_runtime::auth::Role::Operator)?;
        let req = request.into_inner();
        if req.reason.trim().is_empty() {
            return Err(Error::InvalidRequest(
                "reason is required: say why the task is rejected".into(),
            )
            .into());
        }
        let w = self.inner.waiting(&principal, &req.task_id).await?;
        let task_id = w
            .task
            .as_ref()
            .map(|t| t.task_id.clone())
            .unwrap_or_default();
        let approval = baton_proto::Approval {
            task_id: task_id.clone(),
            approver: principal.subject.clone(),
            approved: false,
            reason: req.reason.trim().to_string(),
            decided_at: Some(baton_proto::now()),
            plan_hash: String::new(),
            ..Default::default()
        };
        let out = Inner::answer(
            &w,
            "rejected",
            Body::TaskRejected(baton_proto::TaskRejected {
                validation: None,
                approval: Some(approval.clone()),
                reasons: vec![format!(
                    "rejected by {} while awaiting clarification: {}",
                    principal.subject,
                    req.reason.trim()
                )],
            }),
        );
        self.inner
            .ctx
            .bus
            .publish(subject::TASK_REJECTED, &out)
            .await
            .map_err(Error::from)?;
        self.inner
            .awaiting()
            .await?
            .purge(&task_id)
            .await
            .map_err(Error::from)?;
        info!(task_id = %task_id, operator = %principal.subject, "waiting task rejected by an operator");
        Ok(tonic::Response::new(RejectTaskResponse {
            approval: Some(approval),
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
    use baton_proto::Trigger;

    fn task(text: &str) -> Task {
        Task {
            trigger: Some(Trigger {
                text: text.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A stand-in later tier with one opinion about every request.
    struct Sure {
        role: &'static str,
        confidence: f64,
    }
    impl Classifier for Sure {
        fn name(&self) -> &str {
            "sure"
        }
        fn min_confidence(&self) -> Option<f64> {
            Some(0.3)
        }
        fn classify<'a>(&'a self, _task: &'a Task) -> BoxFuture<'a, Result<Opinion, Error>> {
            let d = baton_proto::Decision {
                spec: Some(baton_proto::TaskSpec {
                    role: self.role.into(),
                    ..Default::default()
                }),
                confidence: self.confidence,
                tier: DecisionTier::Classifier as i32,
                matched_by: format!("sure:{}", self.role),
                explanation: "sure".into(),
            };
            Box::pin(std::future::ready(Ok(Opinion::from(d))))
        }
    }

    #[tokio::test]
    async fn the_next_tier_overrules_a_rule_only_when_more_confident_and_elsewhere() {
        let chain = |role, confidence, overrule| {
            Decider::new(RuleSet::builtin())
                .with_tier(Arc::new(Sure { role, confidence }))
                .overrule_rules(overrule)
        };
        let text = task("fix drift on web-1");
        // One keyword: the shipped drift rule scores 0.6; a classifier at 0.7 for sop
        // overrules it.
        let e = chain("sop", 0.7, true).explain(&text).await.unwrap();
        assert_eq!(e.decision.tier(), DecisionTier::Classifier, "{e:?}");
        assert_eq!(e.decision.spec.as_ref().unwrap().role, "sop");
        assert!(
            e.decision
                .explanation
                .contains(r#"overrules "drift" (rules, confidence 0.60, role drift)"#),
            "{}",
            e.decision.explanation
        );
        assert_eq!(e.candidates.len(), 2, "both opinions are kept");
        // Less confident than the rule, or of the same role: the rule stands, the second
        // opinion is recorded.
        for (role, confidence) in [("sop", 0.55), ("drift", 0.99)] {
            let e = chain(role, confidence, true).explain(&text).await.unwrap();
            assert_eq!(e.decision.matched_by, "drift", "{role} {confidence}: {e:?}");
            assert_eq!(e.candidates.len(), 2);
        }
        // Off: the rule decides and the classifier is not asked.
        let e = chain("sop", 0.7, false).explain(&text).await.unwrap();
        assert_eq!(e.decision.matched_by, "drift");
        assert_eq!(e.candidates.len(), 1);
    }

    /// A stand-in later tier that is confident about one phrase.
    struct Oracle;
    impl Classifier for Oracle {
        fn name(&self) -> &str {
            "oracle"
        }
        fn classify<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Opinion, Error>> {
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
            let opinion = d.map_or(Opinion::NoOpinion("not the phrase".into()), Opinion::from);
            Box::pin(std::future::ready(Ok(opinion)))
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
