//! The model tier against the protocol-faithful OpenAI fake (`baton_llm::testing`): the role
//! it answers, a schema error repaired once, answers that stay wrong, a model that cannot tell,
//! and every provider down, which leave the task to a human; once against the real local model
//! (`LocalModel`, SKIPPED when `deploy/local-model.sh --env` is not exported).

use baton_decision::Opinion;
use baton_decision::llm::{LlmClassifier, LlmTierConfig, UNCLEAR};
use baton_decision::rules::RuleSet;
use baton_decision::{AWAITING_CLARIFICATION, Decider, Error, WhenUnsure, tiers};
use baton_llm::config::{LlmConfig, ProviderConfig};
use baton_llm::testing::{FakeServer, LocalModel, openai};
use baton_llm::{FailoverChain, ProviderLimits, ProviderRegistry};
use baton_proto::{DecisionTier, Task, Trigger};
use baton_runtime::catalog::Catalog;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// A request no rule matches (no keyword of `rules.toml`).
const UNRULED: &str = "checkout requests keep timing out since noon";

fn task(text: &str) -> Task {
    Task {
        task_id: "t-1".into(),
        tenant: "default".into(),
        trigger: Some(Trigger {
            text: text.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A registry with provider `name` at `base_url`, no retries, a short timeout.
fn registry(providers: &[(&str, String)]) -> ProviderRegistry {
    let mut config = LlmConfig::default();
    for (name, url) in providers {
        config.providers.insert(
            name.to_string(),
            ProviderConfig {
                base_url: url.clone(),
                model: "router".into(),
                retries: 0,
                timeout: Duration::from_secs(10),
                ..Default::default()
            },
        );
    }
    config.registry(|_| None).unwrap()
}

fn tier_config(providers: &[&str]) -> LlmTierConfig {
    LlmTierConfig {
        providers: providers.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    }
}

/// Rules, then the model tier, then a human.
fn chain(registry: &ProviderRegistry, providers: &[&str]) -> Decider {
    let rules = Arc::new(RuleSet::builtin());
    let tier = LlmClassifier::from_registry(
        registry,
        &tier_config(providers),
        Catalog::default().roles,
        rules.clone(),
    )
    .unwrap();
    Decider::new(RuleSet::builtin())
        .with_tier(Arc::new(tier))
        .when_unsure(WhenUnsure::Clarify)
}

fn answer(role: &str, reason: &str) -> String {
    json!({"role": role, "reason": reason}).to_string()
}

/// A loopback URL nothing listens on.
fn closed_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn the_model_tier_routes_what_no_rule_matches_with_its_reason() {
    let fake = FakeServer::openai().await;
    fake.push(openai::text(&answer(
        "incident",
        "requests failing now is an outage",
    )));
    let reg = registry(&[("fake", fake.base_url())]);
    let explained = chain(&reg, &["fake"])
        .explain(&task(UNRULED))
        .await
        .unwrap();
    let d = &explained.decision;
    assert_eq!(d.tier(), DecisionTier::Llm, "{d:?}");
    assert_eq!(d.spec.as_ref().unwrap().role, "incident");
    assert_eq!(d.matched_by, "llm:fake");
    assert!(
        (d.confidence - LlmTierConfig::default().answer_confidence).abs() < 1e-9,
        "{d:?}"
    );
    assert!(
        d.explanation.contains("requests failing now is an outage"),
        "{}",
        d.explanation
    );

    // One call, asking for a json_schema answer whose role is an enum of the twelve roles and
    // `unclear`, with the request's text in the conversation.
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let body = &requests[0].body;
    let format = &body["response_format"];
    assert_eq!(format["type"], "json_schema", "{body}");
    let schema = &format["json_schema"]["schema"];
    let mut roles: Vec<String> = schema["properties"]["role"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    roles.sort();
    let mut expected: Vec<String> = Catalog::default().roles;
    expected.push(UNCLEAR.into());
    expected.sort();
    assert_eq!(roles, expected);
    assert_eq!(schema["required"], json!(["role", "reason"]));
    assert!(body.to_string().contains(UNRULED), "{body}");
}

#[tokio::test]
async fn an_answer_that_fails_the_schema_is_repaired_once() {
    let fake = FakeServer::openai().await;
    fake.push_all([
        openai::text(&answer("firefighting", "it is on fire")),
        openai::text(&answer("incident", "an outage in progress")),
    ]);
    let reg = registry(&[("fake", fake.base_url())]);
    let d = chain(&reg, &["fake"]).decide(&task(UNRULED)).await.unwrap();
    assert_eq!(d.tier(), DecisionTier::Llm, "{d:?}");
    assert_eq!(d.spec.as_ref().unwrap().role, "incident");
    assert!(d.explanation.contains("repair"), "{}", d.explanation);
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    // The repair call carries the schema error about the first answer.
    assert!(
        requests[1].body.to_string().contains("firefighting"),
        "{}",
        requests[1].body
    );
}

#[tokio::test]
async fn answers_that_stay_invalid_or_unclear_leave_the_task_to_a_human() {
    let fake = FakeServer::openai().await;
    fake.push_all([
        openai::text("incident, I think"),
        openai::text(&answer("sre", "not a role")),
    ]);
    let reg = registry(&[("fake", fake.base_url())]);
    let c = chain(&reg, &["fake"]);
    let d = c.decide(&task(UNRULED)).await.unwrap();
    assert_eq!(d.tier(), DecisionTier::Human, "{d:?}");
    assert_eq!(d.matched_by, AWAITING_CLARIFICATION);
    assert_eq!(fake.request_count(), 2);
    // The operator sees why the model tier had no opinion: its second answer's role.
    assert!(
        d.explanation.contains("llm: no opinion, "),
        "{}",
        d.explanation
    );
    assert!(d.explanation.contains("sre"), "{}", d.explanation);

    fake.push(openai::text(&answer(UNCLEAR, "these are random letters")));
    let d = c.decide(&task("qwxz vbnm plokij")).await.unwrap();
    assert_eq!(d.tier(), DecisionTier::Human, "{d:?}");
    assert_eq!(fake.request_count(), 3);
    assert!(
        d.explanation.contains(
            "llm: no opinion, the model found the request unclear: these are random letters"
        ),
        "{}",
        d.explanation
    );
}

#[tokio::test]
async fn a_provider_down_fails_over_and_all_down_goes_to_a_human() {
    let fake = FakeServer::openai().await;
    fake.push(openai::text(&answer("cost", "a question about spending")));
    let reg = registry(&[("down", closed_url()), ("fake", fake.base_url())]);

    // The first provider refuses connections: the second answers.
    let d = chain(&reg, &["down", "fake"])
        .decide(&task("why did the invoice grow so much"))
        .await
        .unwrap();
    assert_eq!(d.tier(), DecisionTier::Llm, "{d:?}");
    assert_eq!(d.spec.as_ref().unwrap().role, "cost");
    assert_eq!(d.matched_by, "llm:fake");

    // Only the dead one: no opinion, so an operator decides; not an error, not a guess.
    let d = chain(&reg, &["down"]).decide(&task(UNRULED)).await.unwrap();
    assert_eq!(d.tier(), DecisionTier::Human, "{d:?}");
    assert_eq!(d.matched_by, AWAITING_CLARIFICATION);
    // ... and is told the model tier could not be asked, not merely that it was unsure.
    assert!(
        d.explanation
            .contains("llm: no opinion, no provider answered: "),
        "{}",
        d.explanation
    );
}

#[tokio::test]
async fn the_threshold_of_the_model_tier_is_respected() {
    let fake = FakeServer::openai().await;
    fake.push(openai::text(&answer("incident", "an outage")));
    let reg = registry(&[("fake", fake.base_url())]);
    let rules = Arc::new(RuleSet::builtin());
    let config = LlmTierConfig {
        answer_confidence: 0.4,
        min_confidence: 0.6,
        ..tier_config(&["fake"])
    };
    let tier =
        LlmClassifier::from_registry(&reg, &config, Catalog::default().roles, rules).unwrap();
    let explained = Decider::new(RuleSet::builtin())
        .with_tier(Arc::new(tier))
        .when_unsure(WhenUnsure::Clarify)
        .explain(&task(UNRULED))
        .await
        .unwrap();
    // The model answered, below the tier's threshold: a suggestion for the operator.
    assert_eq!(explained.decision.tier(), DecisionTier::Human);
    assert_eq!(
        explained.decision.spec.as_ref().unwrap().role,
        "incident",
        "the best guess is kept"
    );
    assert!(
        explained
            .candidates
            .iter()
            .any(|c| c.tier() == DecisionTier::Llm)
    );
}

#[tokio::test]
async fn unknown_or_missing_providers_are_refused_at_start() {
    let reg = registry(&[("fake", closed_url())]);
    let rules = Arc::new(RuleSet::builtin());
    let err = LlmClassifier::from_registry(
        &reg,
        &tier_config(&["openai"]),
        Catalog::default().roles,
        rules.clone(),
    )
    .err()
    .unwrap();
    let text = err.to_string();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(
        text.contains("openai") && text.contains("fake"),
        "names the unknown provider and the configured ones: {text}"
    );
    let err =
        LlmClassifier::from_registry(&reg, &tier_config(&[]), Catalog::default().roles, rules)
            .err()
            .unwrap();
    assert!(err.to_string().contains("decision.llm.providers"), "{err}");

    // eval-routing's offline chain without [llm] providers says what to configure.
    let config = baton_decision::Config {
        llm: tier_config(&["fake"]),
        ..Default::default()
    };
    let err = tiers::offline(&config, &Catalog::default(), &["llm".to_string()])
        .err()
        .unwrap();
    assert!(err.to_string().contains("[llm]"), "{err}");
    let chain = tiers::offline_with_models(
        &config,
        &Catalog::default(),
        &["rules".to_string(), "llm".to_string()],
        Some(&reg),
    )
    .unwrap();
    assert_eq!(chain.tier_names(), ["rules", "llm"]);
}

#[tokio::test]
async fn the_real_local_model_answers_with_a_catalog_role() {
    let Some(local) = LocalModel::start("the_real_local_model_answers_with_a_catalog_role").await
    else {
        return;
    };
    let model = FailoverChain::new().with("local", local.provider(), ProviderLimits::default());
    let tier = LlmClassifier::new(
        Arc::new(model),
        vec!["local".into()],
        Catalog::default().roles,
        LlmTierConfig::default(),
        Arc::new(RuleSet::builtin()),
    );
    let opinion = tier
        .decide(&task(
            "Write a Python script that prints the ten largest files in a directory",
        ))
        .await
        .unwrap();
    let Opinion::Decided(d) = opinion else {
        panic!("the local model names a role: {opinion:?}")
    };
    assert_eq!(d.tier(), DecisionTier::Llm);
    assert_eq!(d.matched_by, "llm:local");
    let role = &d.spec.as_ref().unwrap().role;
    assert!(Catalog::default().has_role(role), "{d:?}");
    assert_eq!(role, "codegen", "{}", d.explanation);
}
