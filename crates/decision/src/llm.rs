//! The model tier: when the tiers before it are not confident, a language model is asked for
//! the role, through the `[llm]` providers (`baton_llm`), as a structured answer: a JSON object
//! `{"role": …, "reason": …}` whose `role` is an enum of the catalog's roles plus
//! [`UNCLEAR`], checked by `baton_llm::chat_structured` (one repair call on a schema error).
//!
//! The decision is tier LLM, `matched_by` `llm:<provider>`, with the configured
//! `answer_confidence` and the model's reason in the explanation. An answer of [`UNCLEAR`], an
//! answer that fails the schema twice, or every provider down is no opinion: the chain goes on
//! to a human (`awaiting_clarification`) instead of guessing. Providers are named in
//! `[decision.llm] providers`, in failover order, and come from the process's
//! [`ProviderRegistry`] (`baton up` registers it as a plug-in from `[llm]`).

use crate::rules::RuleSet;
use crate::{Classifier, Error, Opinion};
use baton_llm::config::ProviderRegistry;
use baton_llm::structured::{StructuredError, chat_structured};
use baton_llm::{ChatModel, ChatRequest, FailoverChain, Message, ResponseSchema, Role};
use baton_proto::{Decision, DecisionTier, Task};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Name of the tier (`decision.tiers`).
pub const TIER: &str = "llm";
/// The answer of a model that cannot tell: no opinion, so a human decides.
pub const UNCLEAR: &str = "unclear";
/// Longest reason kept from the model's answer, in characters.
pub const MAX_REASON_CHARS: usize = 200;

/// Settings of the model tier (`[decision.llm]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmTierConfig {
    /// Providers from `[llm.providers]`, by name, in failover order. Empty: no model tier.
    pub providers: Vec<String>,
    /// The confidence (0–1) recorded for an answer that names a role. A small model's own
    /// estimate of its certainty is not calibrated, so this is a setting: measure the tier
    /// with `baton eval-routing --tiers rules,classifier,llm` and set it to the accuracy seen.
    pub answer_confidence: f64,
    /// The tier decides only at or above this confidence (0–1); with `answer_confidence`
    /// below it, every answer goes to a human as a suggestion.
    pub min_confidence: f64,
    /// Cap on the answer's tokens.
    pub max_tokens: u32,
}

impl Default for LlmTierConfig {
    fn default() -> Self {
        LlmTierConfig {
            providers: Vec::new(),
            answer_confidence: 0.7,
            min_confidence: 0.5,
            max_tokens: 120,
        }
    }
}

impl LlmTierConfig {
    /// Checks the values; the message names the key.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |key: &str, why: &str| Err(Error::Config(format!("decision.llm.{key} {why}")));
        if !(0.0..=1.0).contains(&self.answer_confidence) {
            return bad("answer_confidence", "must be between 0 and 1");
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return bad("min_confidence", "must be between 0 and 1");
        }
        if self.max_tokens < 16 {
            return bad("max_tokens", "must be at least 16");
        }
        Ok(())
    }
}

/// What each of the built-in roles is for, in the prompt (a role without a line here is named
/// only): the table and boundaries of `routing/ROLES.md`, the guide examples and held-out sets
/// are labelled by, in one line each.
pub const ROLE_DESCRIPTIONS: &[(&str, &str)] = &[
    (
        "drift",
        "put assets back to their golden (declared) configuration: settings changed by hand or differing from git, IaC or config management",
    ),
    (
        "patch",
        "update packages, kernels or OS releases on running hosts: security updates, upgrades for a CVE, patch windows",
    ),
    (
        "compliance",
        "check or report assets against a standard or policy (CIS, PCI, SOC 2, the golden baseline), report only, evidence for auditors",
    ),
    (
        "incident",
        "something is failing or degraded now (errors, outages, slowness, alerts), whatever the likely cause",
    ),
    (
        "dr",
        "readiness to recover: our backups, restores, replication, failover, recovery drills, our RPO/RTO",
    ),
    (
        "cost",
        "spend explained or reduced: cloud bills, waste, idle resources, rightsizing, reservations",
    ),
    (
        "security",
        "weaknesses in configuration and access, found or fixed: exposure, open ports, credentials and secrets, certificates, hardening",
    ),
    (
        "image",
        "machine or container images and the versions or OS releases assets run: golden images, AMIs, Dockerfiles, base images",
    ),
    (
        "sop",
        "write a procedure, runbook or checklist down for people, or do routine work no other role covers (restarts, cleanups, housekeeping, handovers)",
    ),
    (
        "adapter",
        "code that connects Baton or a tool to another system's API or events: connectors, webhooks, API clients",
    ),
    (
        "codegen",
        "other code written and tested: scripts, functions, unit tests, small programs",
    ),
    (
        "assistant",
        "an answer, explanation or summary with nothing done to assets: concepts (even in another role's words), general questions, lookups",
    ),
];

/// The model tier: a failover chain and the roles it may answer.
pub struct LlmClassifier {
    model: Arc<dyn ChatModel>,
    provider_names: Vec<String>,
    roles: Vec<String>,
    config: LlmTierConfig,
    rules: Arc<RuleSet>,
}

impl LlmClassifier {
    /// A tier asking `model` (a provider or a failover chain), choosing among `roles`.
    pub fn new(
        model: Arc<dyn ChatModel>,
        provider_names: Vec<String>,
        roles: Vec<String>,
        config: LlmTierConfig,
        rules: Arc<RuleSet>,
    ) -> LlmClassifier {
        LlmClassifier {
            model,
            provider_names,
            roles,
            config,
            rules,
        }
    }

    /// The tier over `config.providers` from `registry`, choosing among `roles`.
    ///
    /// Errors: [`Error::Config`] when no provider is named, or one is not in `[llm.providers]`
    /// (naming it and the configured ones).
    pub fn from_registry(
        registry: &ProviderRegistry,
        config: &LlmTierConfig,
        roles: Vec<String>,
        rules: Arc<RuleSet>,
    ) -> Result<LlmClassifier, Error> {
        config.validate()?;
        if config.providers.is_empty() {
            return Err(Error::Config(
                "decision.llm.providers is empty: name the [llm.providers] the model tier asks, in failover order".into(),
            ));
        }
        let chain: FailoverChain = registry
            .chain(&config.providers)
            .map_err(|e| Error::Config(format!("decision.llm.providers: {e}")))?;
        Ok(LlmClassifier::new(
            Arc::new(chain),
            config.providers.clone(),
            roles,
            config.clone(),
            rules,
        ))
    }

    /// The answer's JSON schema: `role` one of the roles or [`UNCLEAR`], and a short `reason`.
    pub fn schema(&self) -> ResponseSchema {
        let mut roles: Vec<&str> = self.roles.iter().map(String::as_str).collect();
        roles.push(UNCLEAR);
        ResponseSchema {
            name: "route".into(),
            schema: serde_json::json!({
                "type": "object",
                "properties": {
                    "role": {"type": "string", "enum": roles},
                    "reason": {"type": "string", "maxLength": 400},
                },
                "required": ["role", "reason"],
                "additionalProperties": false,
            }),
        }
    }

    /// The request for `text`: the roles with what each is for, then the text.
    pub fn request(&self, text: &str) -> ChatRequest {
        let mut system = String::from(
            "You route requests sent to an infrastructure operations platform to the agent role that should handle them.\nRoles:\n",
        );
        for role in &self.roles {
            match ROLE_DESCRIPTIONS.iter().find(|(r, _)| r == role) {
                Some((_, d)) => system.push_str(&format!("- {role}: {d}\n")),
                None => system.push_str(&format!("- {role}\n")),
            }
        }
        system.push_str(&format!(
            "Answer with one JSON object {{\"role\": <one role>, \"reason\": <one short sentence>}}. Use \"{UNCLEAR}\" only when the request is meaningless."
        ));
        ChatRequest {
            messages: vec![
                Message::text(Role::System, system),
                Message::text(Role::User, format!("Request: {text}")),
            ],
            max_tokens: Some(self.config.max_tokens),
            temperature: Some(0.0),
            ..Default::default()
        }
    }

    /// Asks the model about `task` (tier LLM).
    ///
    /// Errors: [`Error::InvalidRequest`], [`Error::UnknownEnvironment`] from building the spec.
    /// A provider failure, an answer that fails the schema twice, or `unclear` is no opinion
    /// ([`Opinion::NoOpinion`] with the failure or the model's reason; a failure is also
    /// logged), so that the task goes to a human who sees why.
    pub async fn decide(&self, task: &Task) -> Result<Opinion, Error> {
        let text = task
            .trigger
            .as_ref()
            .map(|t| t.text.as_str())
            .unwrap_or_default();
        if text.trim().is_empty() {
            return Ok(Opinion::NoOpinion("the request is empty".into()));
        }
        let answer = match chat_structured(&*self.model, &self.request(text), &self.schema()).await
        {
            Ok(a) => a,
            Err(e) => {
                let why = match &e {
                    StructuredError::Model { error, .. } => {
                        format!("no provider answered: {error}")
                    }
                    other => other.to_string(),
                };
                tracing::warn!(providers = ?self.provider_names, reason = %why, "model tier has no opinion");
                return Ok(Opinion::NoOpinion(why));
            }
        };
        let role = answer.value["role"].as_str().unwrap_or(UNCLEAR).to_string();
        let reason: String = answer.value["reason"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .chars()
            .take(MAX_REASON_CHARS)
            .collect();
        if role == UNCLEAR {
            return Ok(Opinion::NoOpinion(format!(
                "the model found the request unclear: {reason}"
            )));
        }
        let provider = answer
            .attempts
            .last()
            .map(|a| a.response.provider.clone())
            .unwrap_or_default();
        let (spec, context) = self.rules.spec_for_role(task, &role)?;
        let repaired = if answer.attempts.len() > 1 {
            " (after one repair of an answer that failed the schema)"
        } else {
            ""
        };
        Ok(Opinion::from(Decision {
            spec: Some(spec),
            confidence: self.config.answer_confidence,
            tier: DecisionTier::Llm.into(),
            matched_by: format!("{TIER}:{provider}"),
            explanation: format!("model {provider} chose {role}{repaired}: {reason}; {context}"),
        }))
    }
}

impl Classifier for LlmClassifier {
    fn name(&self) -> &str {
        TIER
    }
    fn min_confidence(&self) -> Option<f64> {
        Some(self.config.min_confidence)
    }
    fn classify<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Opinion, Error>> {
        Box::pin(self.decide(task))
    }
}
