//! The quality score of a plan and the verdict it leads to.
//!
//! Five dimensions of 0–20 points each, total 0–100. Each dimension's doc comment says how it
//! is derived; [`QualityScore::notes`](baton_proto::QualityScore) says why points were withheld.
//! The verdict combines the score with the policies' reasons and per-environment thresholds
//! ([`Thresholds`]).

use crate::policy::PolicyOutcome;
use baton_proto::{AgentKind, Plan, QualityScore, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Points of each dimension at best.
pub const DIMENSION_MAX: u32 = 20;

/// Points withheld from [`structural`] per problem found.
pub const STRUCTURAL_PENALTY: u32 = 5;

/// Points of [`operational_history`] until it is derived from the audit history.
pub const NEUTRAL_HISTORY: u32 = 10;

/// **Structural** (0–20): is the plan well-formed? Starts at 20 and loses
/// [`STRUCTURAL_PENALTY`] (5) points per problem, down to 0. Problems: a step without an asset
/// id; a step without an action; an asset id used by more than one step of the plan; a phase
/// without steps; more steps than `total_assets` (the plan claims fewer assets in scope than
/// it changes). Each problem adds a note.
pub fn structural(plan: &Plan, notes: &mut Vec<String>) -> u32 {
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    let mut steps = 0usize;
    for phase in &plan.phases {
        if phase.steps.is_empty() {
            problems.push(format!("phase \"{}\" has no steps", phase.name));
        }
        for (i, step) in phase.steps.iter().enumerate() {
            steps += 1;
            let asset = step.asset.as_ref().map(|a| a.id.as_str()).unwrap_or("");
            if asset.is_empty() {
                problems.push(format!(
                    "step {} of phase \"{}\" has no asset id",
                    i + 1,
                    phase.name
                ));
            } else if !seen.insert(asset) {
                problems.push(format!("asset \"{asset}\" appears in more than one step"));
            }
            if step.action.as_ref().and_then(|a| a.kind.as_ref()).is_none() {
                problems.push(format!(
                    "step {} of phase \"{}\" has no action",
                    i + 1,
                    phase.name
                ));
            }
        }
    }
    if steps > plan.total_assets as usize {
        problems.push(format!(
            "the plan has {steps} steps but only {} assets in scope",
            plan.total_assets
        ));
    }
    let lost = (problems.len() as u32)
        .saturating_mul(STRUCTURAL_PENALTY)
        .min(DIMENSION_MAX);
    for p in problems {
        notes.push(format!("structural: {p} (-{STRUCTURAL_PENALTY})"));
    }
    DIMENSION_MAX - lost
}

/// **Policy compliance** (0–20): 20 when the policies gave no deny and no approval reason;
/// 10 when they asked for approval only; 0 when any `deny` fired.
pub fn policy_compliance(outcome: &PolicyOutcome, notes: &mut Vec<String>) -> u32 {
    if !outcome.deny.is_empty() {
        notes.push(format!(
            "policy compliance: {} deny reason(s) (0 of 20)",
            outcome.deny.len()
        ));
        0
    } else if !outcome.require_approval.is_empty() {
        notes.push(format!(
            "policy compliance: {} approval reason(s) (10 of 20)",
            outcome.require_approval.len()
        ));
        DIMENSION_MAX / 2
    } else {
        DIMENSION_MAX
    }
}

/// **Test coverage** (0–20): 20 × (steps with a health check ÷ steps), rounded down; a plan
/// without steps gets 20 (there is nothing to check).
pub fn test_coverage(plan: &Plan, notes: &mut Vec<String>) -> u32 {
    let steps: Vec<_> = plan.phases.iter().flat_map(|p| &p.steps).collect();
    if steps.is_empty() {
        return DIMENSION_MAX;
    }
    let checked = steps.iter().filter(|s| s.health_check.is_some()).count() as u32;
    let total = steps.len() as u32;
    let points = DIMENSION_MAX * checked / total;
    if checked < total {
        notes.push(format!(
            "test coverage: {} of {total} steps have no health check ({points} of 20)",
            total - checked
        ));
    }
    points
}

/// **Operational history** (0–20): a neutral [`NEUTRAL_HISTORY`] (10) for every plan for now;
/// a later release derives it from the audit history (how this task type and agent fared).
pub fn operational_history(notes: &mut Vec<String>) -> u32 {
    notes.push(format!(
        "operational history: neutral {NEUTRAL_HISTORY} of 20 until it is derived from the audit history"
    ));
    NEUTRAL_HISTORY
}

/// **Human review** (0–20): 20 only for a plan made by a *reviewed runbook*: its
/// `agent_run.kind` is [`AgentKind::Runbook`] and its `agent_run.agent` (name and version, as
/// the agent runner stamped it from the agent's registration) is one of `reviewed_agents`
/// (`validation.reviewed_agents`). Any other plan gets 0: a model-backed agent's plan, and a
/// runbook nobody listed as reviewed (a new agent, or a new version of a reviewed one).
///
/// Neither the kind nor the name is the agent's own claim: the runner overwrites both from the
/// registration, so an agent cannot earn these points by saying it is a runbook.
pub fn human_review(plan: &Plan, reviewed_agents: &[String], notes: &mut Vec<String>) -> u32 {
    let run = plan.agent_run.clone().unwrap_or_default();
    let kind = run.kind();
    let name = if run.agent.is_empty() {
        "an unnamed agent"
    } else {
        run.agent.as_str()
    };
    if kind != AgentKind::Runbook {
        notes.push(format!(
            "human review: the plan comes from {name} (kind {}), not a reviewed runbook (0 of 20)",
            kind.label()
        ));
        0
    } else if !reviewed_agents.contains(&run.agent) {
        notes.push(format!(
            "human review: runbook {name} is not in validation.reviewed_agents (0 of 20)"
        ));
        0
    } else {
        DIMENSION_MAX
    }
}

/// The quality score of `plan` given what the policies said; `reviewed_agents` are the
/// runbooks whose plans count as human-reviewed (see [`human_review`]).
pub fn score(plan: &Plan, outcome: &PolicyOutcome, reviewed_agents: &[String]) -> QualityScore {
    let mut notes = Vec::new();
    let structural = structural(plan, &mut notes);
    let policy_compliance = policy_compliance(outcome, &mut notes);
    let test_coverage = test_coverage(plan, &mut notes);
    let operational_history = operational_history(&mut notes);
    let human_review = human_review(plan, reviewed_agents, &mut notes);
    QualityScore {
        structural,
        policy_compliance,
        test_coverage,
        operational_history,
        human_review,
        total: structural + policy_compliance + test_coverage + operational_history + human_review,
        notes,
    }
}

/// Score thresholds of one environment (0–100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// At or above this score, a plan without approval reasons is approved automatically.
    pub auto_approve: u32,
    /// At or above this score (and below `auto_approve`, or with approval reasons) a plan
    /// waits for a human; below it the plan is rejected.
    pub with_approval: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            auto_approve: 80,
            with_approval: 60,
        }
    }
}

/// The verdict and its reasons.
///
/// Any deny → rejected. `development` → awaiting approval if the policies asked for it, else
/// approved. `staging`/`production` (and, to be safe, any other environment, treated like
/// production): score ≥ `auto_approve` and no approval reasons → approved; score ≥
/// `with_approval` → awaiting approval; lower → rejected.
pub fn verdict(
    environment: &str,
    total: u32,
    outcome: &PolicyOutcome,
    staging: Thresholds,
    production: Thresholds,
) -> (Verdict, Vec<String>) {
    if !outcome.deny.is_empty() {
        return (Verdict::Rejected, outcome.deny.clone());
    }
    let mut reasons = outcome.require_approval.clone();
    let (name, t) = match environment {
        "development" => {
            return if reasons.is_empty() {
                (
                    Verdict::Approved,
                    vec![format!("quality {total}, no approval required")],
                )
            } else {
                (Verdict::AwaitingApproval, reasons)
            };
        }
        "staging" => ("staging", staging),
        _ => ("production", production),
    };
    if total < t.with_approval {
        return (
            Verdict::Rejected,
            vec![format!(
                "quality score {total} is below {}, the minimum for {name}",
                t.with_approval
            )],
        );
    }
    if total >= t.auto_approve && reasons.is_empty() {
        return (
            Verdict::Approved,
            vec![format!("quality {total}, no approval required")],
        );
    }
    if total < t.auto_approve {
        reasons.push(format!(
            "quality score {total} is below {}, the minimum for automatic approval in {name}",
            t.auto_approve
        ));
    }
    (Verdict::AwaitingApproval, reasons)
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{
        Action, AgentKind, AgentRun, Asset, HealthCheck, NoopAction, Phase, PhaseKind, Step, action,
    };

    fn step(asset: &str, health: bool) -> Step {
        Step {
            asset: Some(Asset {
                id: asset.into(),
                ..Default::default()
            }),
            action: Some(Action {
                kind: Some(action::Kind::Noop(NoopAction {})),
                ..Default::default()
            }),
            rollback: None,
            health_check: health.then(HealthCheck::default),
            reason: String::new(),
        }
    }

    /// The reviewed runbook the tests' plans name.
    const REVIEWED: &str = "drift-runbook@1";

    fn reviewed() -> Vec<String> {
        vec![REVIEWED.to_string()]
    }

    /// A plan by `agent`: `runbook` is the reviewed runbook, `llm` a model-backed agent.
    fn plan(phases: Vec<Vec<Step>>, total: u32, agent: &str) -> Plan {
        let kind = match agent {
            "runbook" => AgentKind::Runbook,
            "llm" => AgentKind::Llm,
            other => panic!("unknown test agent {other}"),
        };
        Plan {
            phases: phases
                .into_iter()
                .enumerate()
                .map(|(i, steps)| Phase {
                    name: format!("p{i}"),
                    kind: PhaseKind::Wave as i32,
                    steps,
                })
                .collect(),
            total_assets: total,
            agent_run: Some(AgentRun {
                kind: kind as i32,
                agent: REVIEWED.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn clean() -> PolicyOutcome {
        PolicyOutcome::default()
    }

    #[test]
    fn well_formed_runbook_plan_scores_90() {
        let p = plan(
            vec![
                vec![step("a", true)],
                vec![step("b", true), step("c", true)],
            ],
            3,
            "runbook",
        );
        let s = score(&p, &clean(), &reviewed());
        assert_eq!(
            (
                s.structural,
                s.policy_compliance,
                s.test_coverage,
                s.operational_history,
                s.human_review
            ),
            (20, 20, 20, 10, 20)
        );
        assert_eq!(s.total, 90);
        assert_eq!(
            s.notes.len(),
            1,
            "only the neutral history note: {:?}",
            s.notes
        );
    }

    #[test]
    fn structural_problems_cost_five_points_each_with_notes() {
        let mut no_action = step("b", true);
        no_action.action = None;
        let mut no_asset = step("", true);
        no_asset.asset = None;
        // duplicate "a", missing action, missing asset, empty phase, 5 steps > 2 assets.
        let p = plan(
            vec![
                vec![step("a", true), step("a", true), no_action, no_asset],
                vec![],
            ],
            2,
            "runbook",
        );
        let mut notes = Vec::new();
        assert_eq!(structural(&p, &mut notes), 0);
        assert_eq!(notes.len(), 5, "{notes:?}");
        assert!(
            notes
                .iter()
                .any(|n| n.contains("asset \"a\" appears in more than one step"))
        );
        assert!(notes.iter().any(|n| n.contains("has no action")));
        assert!(notes.iter().any(|n| n.contains("has no asset id")));
        assert!(
            notes
                .iter()
                .any(|n| n.contains("phase \"p1\" has no steps"))
        );
        assert!(
            notes
                .iter()
                .any(|n| n.contains("4 steps but only 2 assets"))
        );

        let one_problem = plan(vec![vec![step("a", true)], vec![]], 5, "runbook");
        assert_eq!(structural(&one_problem, &mut Vec::new()), 15);
    }

    #[test]
    fn policy_compliance_bands() {
        let approval = PolicyOutcome {
            require_approval: vec!["x".into()],
            ..Default::default()
        };
        let deny = PolicyOutcome {
            deny: vec!["no".into()],
            require_approval: vec!["x".into()],
        };
        assert_eq!(policy_compliance(&clean(), &mut Vec::new()), 20);
        assert_eq!(policy_compliance(&approval, &mut Vec::new()), 10);
        assert_eq!(policy_compliance(&deny, &mut Vec::new()), 0);
    }

    #[test]
    fn test_coverage_is_the_share_of_checked_steps() {
        let half = plan(vec![vec![step("a", true), step("b", false)]], 2, "runbook");
        assert_eq!(test_coverage(&half, &mut Vec::new()), 10);
        let third = plan(
            vec![vec![step("a", true), step("b", false), step("c", false)]],
            3,
            "runbook",
        );
        assert_eq!(test_coverage(&third, &mut Vec::new()), 6, "rounded down");
        assert_eq!(
            test_coverage(&plan(vec![], 0, "runbook"), &mut Vec::new()),
            20
        );
    }

    #[test]
    fn human_review_only_for_reviewed_runbooks() {
        assert_eq!(
            human_review(&plan(vec![], 0, "runbook"), &reviewed(), &mut Vec::new()),
            20
        );
        let mut notes = Vec::new();
        assert_eq!(
            human_review(&plan(vec![], 0, "llm"), &reviewed(), &mut notes),
            0
        );
        assert!(notes[0].contains("(kind llm)"), "{notes:?}");
    }

    #[test]
    fn a_runbook_not_listed_as_reviewed_gets_no_review_points() {
        let mut p = plan(vec![], 0, "runbook");
        p.agent_run.as_mut().unwrap().agent = "my-runbook@1".into();
        let mut notes = Vec::new();
        assert_eq!(human_review(&p, &reviewed(), &mut notes), 0);
        assert!(
            notes[0].contains("my-runbook@1 is not in validation.reviewed_agents"),
            "{notes:?}"
        );
        // A new version of a reviewed runbook needs its own review.
        p.agent_run.as_mut().unwrap().agent = "drift-runbook@2".into();
        assert_eq!(human_review(&p, &reviewed(), &mut Vec::new()), 0);
    }

    #[test]
    fn a_plan_without_a_kind_is_not_trusted() {
        let mut p = plan(vec![], 0, "runbook");
        p.agent_run.as_mut().unwrap().kind = AgentKind::Unspecified as i32;
        let mut notes = Vec::new();
        assert_eq!(human_review(&p, &reviewed(), &mut notes), 0);
        assert!(notes[0].contains("(kind unspecified)"), "{notes:?}");
        p.agent_run = None;
        assert_eq!(human_review(&p, &reviewed(), &mut Vec::new()), 0);
    }

    fn v(env: &str, total: u32, outcome: &PolicyOutcome) -> (Verdict, Vec<String>) {
        verdict(
            env,
            total,
            outcome,
            Thresholds {
                auto_approve: 60,
                with_approval: 40,
            },
            Thresholds::default(),
        )
    }

    #[test]
    fn verdict_bands_per_environment() {
        let approval = PolicyOutcome {
            require_approval: vec!["human please".into()],
            ..Default::default()
        };
        let deny = PolicyOutcome {
            deny: vec!["no".into()],
            ..Default::default()
        };
        assert_eq!(
            v("production", 100, &deny),
            (Verdict::Rejected, vec!["no".to_string()])
        );
        assert_eq!(v("development", 0, &deny).0, Verdict::Rejected);

        assert_eq!(v("production", 80, &clean()).0, Verdict::Approved);
        assert_eq!(
            v("production", 80, &clean()).1,
            ["quality 80, no approval required"]
        );
        assert_eq!(v("production", 90, &approval).0, Verdict::AwaitingApproval);
        assert_eq!(v("production", 79, &clean()).0, Verdict::AwaitingApproval);
        assert_eq!(v("production", 60, &approval).0, Verdict::AwaitingApproval);
        assert_eq!(
            v("production", 55, &approval),
            (
                Verdict::Rejected,
                vec!["quality score 55 is below 60, the minimum for production".to_string()]
            )
        );

        assert_eq!(v("staging", 60, &clean()).0, Verdict::Approved);
        assert_eq!(v("staging", 59, &clean()).0, Verdict::AwaitingApproval);
        assert_eq!(v("staging", 40, &approval).0, Verdict::AwaitingApproval);
        assert_eq!(v("staging", 39, &clean()).0, Verdict::Rejected);

        assert_eq!(v("development", 0, &clean()).0, Verdict::Approved);
        assert_eq!(
            v("development", 0, &approval),
            (Verdict::AwaitingApproval, vec!["human please".to_string()])
        );

        // An environment no policy rejected is held to production's bar.
        assert_eq!(v("moon", 70, &clean()).0, Verdict::AwaitingApproval);
    }
}
