//! Measuring a classification chain against labelled requests (`baton eval-routing`): overall
//! accuracy, accuracy and share per deciding tier, the tiers that had no opinion and why, a
//! confusion matrix, and classify latency percentiles. A request left for a human counts as not routed right (its predicted role is
//! `?`), so a chain cannot score by refusing to decide.

use crate::embedding::Example;
use crate::{Abstention, Decider, Error};
use baton_proto::{DecisionTier, Task, Trigger};
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// Predicted role of a request that waits for an operator.
pub const UNDECIDED: &str = "?";

/// One request's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The request.
    pub text: String,
    /// The labelled role.
    pub expected: String,
    /// The role the chain chose, or [`UNDECIDED`].
    pub predicted: String,
    /// The tier that decided (`rules`, `classifier`, `llm`, `human`, `fallback`).
    pub tier: String,
    /// Its confidence.
    pub confidence: f64,
    /// The decision's explanation.
    pub explanation: String,
    /// Wall time of the classification.
    pub latency: Duration,
    /// The tiers asked that had no opinion, and why (a model tier that could not be reached
    /// shows here, not as a wrong answer).
    pub abstentions: Vec<Abstention>,
}

impl Outcome {
    /// Whether the chain chose the labelled role.
    pub fn correct(&self) -> bool {
        self.expected == self.predicted
    }
}

/// The evaluation of a chain over a labelled file.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every request's outcome, in file order.
    pub outcomes: Vec<Outcome>,
}

/// The tier label of a decision (`fallback` for the rules' fallback rule).
pub fn tier_label(d: &baton_proto::Decision) -> &'static str {
    match d.tier() {
        DecisionTier::Rules if d.matched_by == crate::rules::FALLBACK_MATCHED_BY => "fallback",
        DecisionTier::Rules => "rules",
        DecisionTier::Classifier => "classifier",
        DecisionTier::Llm => "llm",
        DecisionTier::Human => "human",
        DecisionTier::Explicit => "explicit",
        DecisionTier::Unspecified => "unspecified",
    }
}

/// Classifies every example with `decider` (nothing is published) and times each.
///
/// Errors: the first classification error, naming the request.
pub async fn evaluate(decider: &Decider, examples: &[Example]) -> Result<Report, Error> {
    let mut outcomes = Vec::with_capacity(examples.len());
    for ex in examples {
        let task = Task {
            task_id: String::new(),
            tenant: "eval".into(),
            submitted_by: "eval".into(),
            trigger: Some(Trigger {
                text: ex.text.clone(),
                ..Default::default()
            }),
            received_at: None,
        };
        let started = Instant::now();
        let explained = decider.explain(&task).await?;
        let latency = started.elapsed();
        let d = &explained.decision;
        let predicted = if explained.awaits_clarification() {
            UNDECIDED.to_string()
        } else {
            d.spec.as_ref().map(|s| s.role.clone()).unwrap_or_default()
        };
        outcomes.push(Outcome {
            text: ex.text.clone(),
            expected: ex.role.clone(),
            predicted,
            tier: tier_label(d).to_string(),
            confidence: d.confidence,
            explanation: d.explanation.clone(),
            latency,
            abstentions: explained.abstentions.clone(),
        });
    }
    Ok(Report { outcomes })
}

impl Report {
    /// Share of requests routed to their labelled role (0–1; 0 for an empty report).
    pub fn accuracy(&self) -> f64 {
        if self.outcomes.is_empty() {
            return 0.0;
        }
        self.outcomes.iter().filter(|o| o.correct()).count() as f64 / self.outcomes.len() as f64
    }

    /// The `p`-th percentile (0–100) of classification latency (nearest rank).
    pub fn latency_percentile(&self, p: f64) -> Duration {
        let mut l: Vec<Duration> = self.outcomes.iter().map(|o| o.latency).collect();
        if l.is_empty() {
            return Duration::ZERO;
        }
        l.sort();
        let rank = ((p / 100.0) * l.len() as f64).ceil().max(1.0) as usize;
        l[rank.min(l.len()) - 1]
    }

    /// Per deciding tier: (requests, correct).
    pub fn by_tier(&self) -> BTreeMap<String, (usize, usize)> {
        let mut m: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for o in &self.outcomes {
            let e = m.entry(o.tier.clone()).or_default();
            e.0 += 1;
            e.1 += usize::from(o.correct());
        }
        m
    }

    /// Per tier name ([`crate::Classifier::name`]): how many requests it had no opinion on,
    /// and each distinct reason with its count.
    pub fn abstentions(&self) -> BTreeMap<String, (usize, BTreeMap<String, usize>)> {
        let mut m: BTreeMap<String, (usize, BTreeMap<String, usize>)> = BTreeMap::new();
        for a in self.outcomes.iter().flat_map(|o| &o.abstentions) {
            let e = m.entry(a.tier.clone()).or_default();
            e.0 += 1;
            *e.1.entry(a.reason.clone()).or_default() += 1;
        }
        m
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.outcomes.len();
        let correct = self.outcomes.iter().filter(|o| o.correct()).count();
        writeln!(
            f,
            "accuracy {:.1}% ({correct}/{n})",
            100.0 * self.accuracy()
        )?;
        writeln!(
            f,
            "classify latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.latency_percentile(50.0).as_secs_f64() * 1e3,
            self.latency_percentile(99.0).as_secs_f64() * 1e3,
            self.latency_percentile(100.0).as_secs_f64() * 1e3,
        )?;
        writeln!(f, "\nper tier:   share  accuracy")?;
        for (tier, (count, ok)) in self.by_tier() {
            writeln!(
                f,
                "  {tier:<10} {:>5.1}%  {:>5.1}% ({ok}/{count})",
                100.0 * count as f64 / n.max(1) as f64,
                100.0 * ok as f64 / count.max(1) as f64
            )?;
        }
        let abstentions = self.abstentions();
        if !abstentions.is_empty() {
            writeln!(f, "\nno opinion:  requests  (most frequent reasons)")?;
            for (tier, (count, reasons)) in abstentions {
                let mut reasons: Vec<(String, usize)> = reasons.into_iter().collect();
                reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let listed = reasons
                    .iter()
                    .take(3)
                    .map(|(r, c)| format!("{c}× {}", r.chars().take(100).collect::<String>()))
                    .collect::<Vec<_>>()
                    .join("; ");
                writeln!(f, "  {tier:<10} {count:>8}  ({listed})")?;
            }
        }
        let mut roles: Vec<String> = self.outcomes.iter().map(|o| o.expected.clone()).collect();
        roles.extend(self.outcomes.iter().map(|o| o.predicted.clone()));
        roles.sort();
        roles.dedup();
        let mut matrix: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for o in &self.outcomes {
            *matrix
                .entry((o.expected.as_str(), o.predicted.as_str()))
                .or_default() += 1;
        }
        let short = |r: &str| r.chars().take(5).collect::<String>();
        writeln!(f, "\nconfusion (rows: labelled, columns: routed to):")?;
        write!(f, "  {:<11}", "")?;
        for r in &roles {
            write!(f, "{:>6}", short(r))?;
        }
        writeln!(f)?;
        for e in &roles {
            if !self.outcomes.iter().any(|o| &o.expected == e) {
                continue;
            }
            write!(f, "  {e:<11}")?;
            for p in &roles {
                match matrix.get(&(e.as_str(), p.as_str())) {
                    Some(c) => write!(f, "{c:>6}")?,
                    None => write!(f, "{:>6}", ".")?,
                }
            }
            writeln!(f)?;
        }
        let wrong: Vec<&Outcome> = self.outcomes.iter().filter(|o| !o.correct()).collect();
        if !wrong.is_empty() {
            writeln!(f, "\nmisrouted:")?;
            for o in wrong {
                writeln!(
                    f,
                    "  {:?}: {} → {} ({} {:.2}): {}",
                    o.text, o.expected, o.predicted, o.tier, o.confidence, o.explanation
                )?;
            }
        }
        Ok(())
    }
}

/// `folds`-fold cross-validation of the embedding tier alone over its own examples
/// ([`crate::embedding::EmbeddingClassifier::cross_validate`]): each example is scored by a
/// classifier that never saw it, and counts as decided (tier `classifier`) when its confidence
/// reaches the tier's `min_confidence`, else as left for a human ([`UNDECIDED`]). Latencies are
/// zero (nothing is embedded again).
///
/// Errors: those of `cross_validate`.
#[cfg(feature = "embedding")]
pub fn cross_validate(
    classifier: &crate::embedding::EmbeddingClassifier,
    folds: usize,
) -> Result<Report, Error> {
    Ok(cross_validation_report(
        classifier,
        classifier.cross_validate(folds)?,
    ))
}

/// The [`Report`] of scores a cross-validation gave ([`cross_validate`] from what
/// `classifier.cross_validate` returned): for a caller that also looks at the scores.
#[cfg(feature = "embedding")]
pub fn cross_validation_report(
    classifier: &crate::embedding::EmbeddingClassifier,
    scored: Vec<(crate::embedding::Example, crate::embedding::Scored)>,
) -> Report {
    let min = classifier.config().min_confidence;
    let outcomes = scored
        .into_iter()
        .map(|(example, scored)| {
            let decided = scored.confidence >= min;
            let best = scored
                .roles
                .first()
                .map(|r| r.0.clone())
                .unwrap_or_default();
            let nearest = scored.neighbours_listed();
            let words = scored.words_explained(&best);
            Outcome {
                text: example.text,
                expected: example.role,
                predicted: if decided {
                    best.clone()
                } else {
                    UNDECIDED.into()
                },
                tier: if decided { "classifier" } else { "human" }.into(),
                confidence: scored.confidence,
                explanation: format!("best {best}; nearest examples {nearest}{words}"),
                latency: Duration::ZERO,
                abstentions: Vec::new(),
            }
        })
        .collect();
    Report { outcomes }
}
