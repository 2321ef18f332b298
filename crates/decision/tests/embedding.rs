//! The embedding tier on the real all-MiniLM-L6-v2 weights (`deploy/minilm.sh`, from its cache
//! when present; `BATON_MINILM_DIR` names a prepared directory).

#![cfg(feature = "embedding")]

use baton_decision::embedding::{
    EmbeddingClassifier, EmbeddingConfig, Encoder, Scoring, load_examples, parse_examples,
};
use baton_decision::rules::RuleSet;
use baton_decision::{AWAITING_CLARIFICATION, Decider, Error, WhenUnsure, eval};
use baton_proto::{DecisionTier, Task, Trigger};
use baton_runtime::catalog::Catalog;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The weights' directory: `BATON_MINILM_DIR`, else what `deploy/minilm.sh --env` prepares.
fn model_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(d) = std::env::var("BATON_MINILM_DIR") {
            return PathBuf::from(d);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/minilm.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg("--env")
            .output()
            .expect("run deploy/minilm.sh");
        assert!(
            out.status.success(),
            "deploy/minilm.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(line.trim().strip_prefix("BATON_MINILM_DIR=").unwrap())
    })
    .clone()
}

fn encoder() -> Arc<Encoder> {
    static ENC: OnceLock<Arc<Encoder>> = OnceLock::new();
    ENC.get_or_init(|| Arc::new(Encoder::load(&model_dir()).expect("load the model")))
        .clone()
}

fn config() -> EmbeddingConfig {
    EmbeddingConfig {
        model_dir: Some(model_dir()),
        ..Default::default()
    }
}

fn classifier(config: EmbeddingConfig, rules: Arc<RuleSet>) -> Arc<EmbeddingClassifier> {
    let examples = load_examples(None, &Catalog::default()).unwrap();
    Arc::new(EmbeddingClassifier::new(encoder(), examples, config, rules).unwrap())
}

/// Rules, then the embedding tier, then a human.
fn chain(config: EmbeddingConfig) -> Decider {
    let rules = Arc::new(RuleSet::builtin());
    let tier = classifier(config, rules.clone());
    Decider::new(RuleSet::builtin())
        .with_tier(tier)
        .when_unsure(WhenUnsure::Clarify)
}

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

#[test]
fn embeddings_are_unit_length_and_similar_for_paraphrases() {
    let e = encoder();
    let a = e.embed("the website is down").unwrap();
    let b = e.embed("our site is not reachable").unwrap();
    let c = e.embed("build a new container image").unwrap();
    assert_eq!(a.len(), 384);
    let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
    assert!(
        dot(&a, &b) > dot(&a, &c) + 0.2,
        "paraphrase {} vs unrelated {}",
        dot(&a, &b),
        dot(&a, &c)
    );
    // No padding: the token count is the text's own.
    assert_eq!(e.token_count("the website is down").unwrap(), 6);
}

#[tokio::test]
async fn requests_no_rule_matches_are_routed_by_the_classifier() {
    let rules = RuleSet::builtin();
    let decider = chain(config());
    for (text, role) in [
        ("Anything on my calendar for this week?", "assistant"),
        (
            "why are checkout requests timing out since noon?",
            "incident",
        ),
        (
            "the invoice from our hosting provider went up a lot",
            "cost",
        ),
        (
            "bring back the orders database from yesterday's snapshot",
            "dr",
        ),
        (
            "someone changed sshd_config by hand on the bastion",
            "drift",
        ),
        ("make Baton open tasks from our Opsgenie alerts", "adapter"),
    ] {
        assert!(
            rules.best_match(text).is_none(),
            "{text:?} has a rule keyword; pick a text without one"
        );
        let d = decider.decide(&task(text)).await.unwrap();
        assert_eq!(d.tier(), DecisionTier::Classifier, "{text:?}: {d:?}");
        assert_eq!(d.spec.as_ref().unwrap().role, role, "{text:?}: {d:?}");
        assert!(d.confidence >= 0.5, "{text:?}: {d:?}");
        // The explanation names the nearest labelled examples with their similarity.
        assert!(
            d.explanation.contains("nearest examples"),
            "{}",
            d.explanation
        );
        assert!(d.matched_by.starts_with("embedding:"), "{}", d.matched_by);
    }
}

#[tokio::test]
async fn gibberish_awaits_clarification_instead_of_a_guess() {
    let decider = chain(config());
    for text in ["asdf qwer zxcv uiop", "xq7 zzkr plmb", "hmm"] {
        let e = decider.explain(&task(text)).await.unwrap();
        assert!(e.awaits_clarification(), "{text:?}: {:?}", e.decision);
        assert_eq!(e.decision.matched_by, AWAITING_CLARIFICATION);
        assert_eq!(e.decision.tier(), DecisionTier::Human);
    }
    // With `fallback`, the same request is routed by the rules file's fallback rule.
    let decider = chain(config()).when_unsure(WhenUnsure::Fallback);
    let d = decider.decide(&task("asdf qwer zxcv uiop")).await.unwrap();
    assert_eq!(d.matched_by, baton_decision::rules::FALLBACK_MATCHED_BY);
}

#[tokio::test]
async fn each_tier_is_held_to_its_own_threshold() {
    let text = "the invoice from our hosting provider went up a lot";
    // The classifier's own threshold: unreachable, so the task waits for a human even though
    // the classifier's best guess is right.
    let strict = chain(EmbeddingConfig {
        min_confidence: 1.0,
        ..config()
    });
    let e = strict.explain(&task(text)).await.unwrap();
    assert!(e.awaits_clarification(), "{:?}", e.decision);
    assert_eq!(e.candidates.len(), 1, "only the classifier had an opinion");
    assert_eq!(e.candidates[0].spec.as_ref().unwrap().role, "cost");
    assert!(e.candidates[0].confidence < 1.0);

    // The rules' threshold: a keyword hit scoring 0.9 does not decide under a 0.95 minimum, so
    // the classifier is asked, and decides.
    let toml = RuleSet::builtin_text().replace("min_confidence = 0.5", "min_confidence = 0.95");
    let rules = Arc::new(RuleSet::parse(&toml, "strict", &Catalog::default()).unwrap());
    let decider = Decider::with_tiers(
        rules.clone(),
        vec![
            Arc::new(baton_decision::RulesClassifier(rules.clone())),
            classifier(config(), rules),
        ],
    );
    let d = decider
        .decide(&task("our cloud bill doubled, find out why"))
        .await
        .unwrap();
    assert_eq!(d.tier(), DecisionTier::Classifier, "{d:?}");
    assert_eq!(d.spec.unwrap().role, "cost");
}

#[tokio::test]
async fn held_out_requests_are_mostly_routed_right_without_a_model() {
    let training: std::collections::HashSet<String> = load_examples(None, &Catalog::default())
        .unwrap()
        .into_iter()
        .map(|e| e.text.to_lowercase())
        .collect();
    let decider = chain(config());
    for file in [
        "heldout.jsonl",
        "heldout2.jsonl",
        "heldout3.jsonl",
        "heldout4.jsonl",
    ] {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../routing")
                .join(file),
        )
        .unwrap();
        let held = parse_examples(&text, file, &Catalog::default()).unwrap();
        assert!(
            held.iter()
                .all(|e| !training.contains(&e.text.to_lowercase())),
            "{file} shares a request with the examples"
        );
        let report = eval::evaluate(&decider, &held).await.unwrap();
        // Measured 0.875–0.90 with the shipped rules and examples and linear scoring (the
        // issue's target is 0.95; not reached yet): a guard against regressions, not the goal.
        assert!(report.accuracy() >= 0.82, "{file}: {report}");
    }
}

#[test]
fn missing_or_corrupt_weights_name_the_file_and_the_fix() {
    let empty = tempfile::tempdir().unwrap();
    let err = Encoder::load(empty.path()).unwrap_err();
    assert!(matches!(err, Error::Model { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("config.json"), "{msg}");
    assert!(msg.contains("deploy/minilm.sh"), "{msg}");

    let corrupt = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(model_dir().join(f), corrupt.path().join(f)).unwrap();
    }
    std::fs::write(
        corrupt.path().join("model.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    let msg = Encoder::load(corrupt.path()).unwrap_err().to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");
    assert!(msg.contains("deploy/minilm.sh"), "{msg}");

    // A truncated weights file (a cut download).
    let bytes = std::fs::read(model_dir().join("model.safetensors")).unwrap();
    std::fs::write(
        corrupt.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let msg = Encoder::load(corrupt.path()).unwrap_err().to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");

    // No model directory configured: the tier refuses to start and says how to get one.
    let msg = EmbeddingClassifier::load(
        &EmbeddingConfig::default(),
        &Catalog::default(),
        Arc::new(RuleSet::builtin()),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(msg.contains("decision.embedding.model_dir"), "{msg}");
    assert!(msg.contains("deploy/minilm.sh"), "{msg}");
}

#[test]
fn an_example_with_an_unknown_role_is_refused_with_its_line() {
    let text = "{\"text\": \"fix drift\", \"role\": \"drift\"}\n\n{\"text\": \"make coffee\", \"role\": \"barista\"}\n";
    let err = parse_examples(text, "mine.jsonl", &Catalog::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("examples file mine.jsonl line 3: role \"barista\""),
        "{msg}"
    );
    let err = parse_examples("{\"text\": 1}", "bad.jsonl", &Catalog::default()).unwrap_err();
    assert!(err.to_string().contains("line 1"), "{err}");
    // The built-in examples cover every role of the default catalog.
    let examples = load_examples(None, &Catalog::default()).unwrap();
    for role in &Catalog::default().roles {
        assert!(
            examples.iter().filter(|e| &e.role == role).count() >= 10,
            "too few examples for {role}"
        );
    }
}

/// The built-in examples embedded once for the tests below, scored by `scoring`.
fn shared(scoring: Scoring) -> EmbeddingClassifier {
    static BASE: OnceLock<Arc<EmbeddingClassifier>> = OnceLock::new();
    let base = BASE.get_or_init(|| classifier(config(), Arc::new(RuleSet::builtin())));
    base.reconfigured(EmbeddingConfig {
        scoring,
        ..config()
    })
    .unwrap()
}

#[test]
fn linear_scoring_gives_probabilities_and_trains_the_same_every_time() {
    let a = shared(Scoring::Linear);
    let b = shared(Scoring::Linear);
    for (text, role) in [
        (
            "the bill for our object storage tripled, what happened?",
            "cost",
        ),
        (
            "checkout pages return errors for every customer",
            "incident",
        ),
        (
            "go through the usual monthly steps on the print servers",
            "sop",
        ),
        ("make me a terraform module for an s3 bucket", "codegen"),
    ] {
        let s = a.score(text).unwrap();
        assert_eq!(s.roles[0].0, role, "{text:?}: {s:?}");
        // A role's score is its probability: they sum to 1, the best one is the confidence.
        let total: f32 = s.roles.iter().map(|r| r.1).sum();
        assert!((total - 1.0).abs() < 1e-3, "{text:?}: {s:?}");
        assert!((s.confidence - s.roles[0].1 as f64).abs() < 1e-6, "{s:?}");
        assert!(s.roles.windows(2).all(|w| w[0].1 >= w[1].1), "{s:?}");
        // The explanation still has the nearest examples.
        assert_eq!(s.neighbours.len(), 3, "{s:?}");
        // Deterministic training: a second classifier trained from scratch agrees exactly, so
        // a recorded decision replays the same (shadow mode relies on it).
        let t = b.score(text).unwrap();
        assert_eq!(s.confidence.to_bits(), t.confidence.to_bits(), "{text:?}");
        assert_eq!(s.roles, t.roles, "{text:?}");
    }
}

#[tokio::test]
async fn linear_scoring_routes_without_keywords_and_leaves_gibberish_to_a_human() {
    let rules = Arc::new(RuleSet::builtin());
    let decider = Decider::with_tiers(
        rules.clone(),
        vec![
            Arc::new(baton_decision::RulesClassifier(rules.clone())),
            Arc::new(shared(Scoring::Linear)),
        ],
    )
    .when_unsure(WhenUnsure::Clarify);
    for (text, role) in [
        (
            "why are checkout requests timing out since noon?",
            "incident",
        ),
        (
            "someone changed sshd_config by hand on the bastion",
            "drift",
        ),
        (
            "bring back the orders database from yesterday's snapshot",
            "dr",
        ),
    ] {
        assert!(rules.best_match(text).is_none(), "{text:?} has a keyword");
        let d = decider.decide(&task(text)).await.unwrap();
        assert_eq!(d.tier(), DecisionTier::Classifier, "{text:?}: {d:?}");
        assert_eq!(d.spec.as_ref().unwrap().role, role, "{text:?}: {d:?}");
        assert!(
            d.explanation.contains("nearest examples"),
            "{}",
            d.explanation
        );
    }
    // Like nothing labelled: below min_similarity the probability does not count.
    for text in ["asdf qwer zxcv uiop", "hmm"] {
        let e = decider.explain(&task(text)).await.unwrap();
        assert!(e.awaits_clarification(), "{text:?}: {:?}", e.decision);
    }
}

#[test]
fn cross_validation_scores_each_example_without_having_seen_it() {
    let c = shared(Scoring::Linear);
    let scored = c.cross_validate(10).unwrap();
    let examples = load_examples(None, &Catalog::default()).unwrap();
    assert_eq!(scored.len(), examples.len());
    for ((ex, s), original) in scored.iter().zip(&examples) {
        assert_eq!(ex, original, "file order");
        // Held out: the example itself is not among its neighbours.
        assert!(
            s.neighbours.iter().all(|n| n.text != ex.text),
            "{:?} was in its own training fold",
            ex.text
        );
    }
    let report = eval::cross_validate(&c, 10).unwrap();
    assert_eq!(report.outcomes.len(), examples.len());
    // Measured 0.89 (10 folds, built-in examples): a guard against regressions.
    assert!(report.accuracy() >= 0.8, "{report}");
    assert!(matches!(
        c.cross_validate(1),
        Err(Error::Config(m)) if m.contains("folds")
    ));
}
