//! Shadow mode (`baton shadow`): the decisions recorded in the audit log replayed through a
//! candidate classification chain (another rules file, another example set), listing the tasks
//! whose role would change. Nothing is routed or published: the candidate chain classifies
//! in process, and the recorded events are only read.

use crate::eval::UNDECIDED;
use crate::{Decider, Error};
use baton_proto::event::Body;
use baton_proto::{Decision, Event, Task};

/// A decision as the audit log recorded it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The task as decision received it.
    pub task: Task,
    /// What decision decided (for a task left for an operator: the best candidate, tier HUMAN).
    pub decision: Decision,
    /// Whether the task was left for an operator (its role is then [`UNDECIDED`]).
    pub awaited: bool,
}

impl Recorded {
    /// The decision recorded by `event`: a `TaskRouted` (decision's route or an operator's) or
    /// a `TaskAwaitingClarification`; `None` for other events.
    pub fn from_event(event: &Event) -> Option<Recorded> {
        match event.body.as_ref()? {
            Body::TaskRouted(r) => Some(Recorded {
                task: r.task.clone()?,
                decision: r.decision.clone()?,
                awaited: false,
            }),
            Body::AwaitingClarification(a) => Some(Recorded {
                task: a.task.clone()?,
                decision: a.decision.clone()?,
                awaited: true,
            }),
            _ => None,
        }
    }

    /// The recorded role, or [`UNDECIDED`].
    pub fn role(&self) -> &str {
        if self.awaited {
            UNDECIDED
        } else {
            self.decision
                .spec
                .as_ref()
                .map(|s| s.role.as_str())
                .unwrap_or(UNDECIDED)
        }
    }
}

/// A task whose role the candidate chain would change.
#[derive(Debug, Clone)]
pub struct Change {
    /// The task.
    pub task_id: String,
    /// The request's words.
    pub text: String,
    /// The recorded role (or [`UNDECIDED`]).
    pub old_role: String,
    /// The candidate's role (or [`UNDECIDED`]: it would wait for an operator).
    pub new_role: String,
    /// The recorded decision.
    pub old: Decision,
    /// The candidate's decision.
    pub new: Decision,
}

/// Classifies every recorded task again with `candidate` and returns those whose role would
/// change, in the order given. Tasks the operator routed by hand are compared like any other.
///
/// Errors: the candidate's classification errors (an unknown explicit role, say).
pub async fn replay(candidate: &Decider, recorded: &[Recorded]) -> Result<Vec<Change>, Error> {
    let mut changes = Vec::new();
    for r in recorded {
        let explained = candidate.explain(&r.task).await?;
        let new_role = if explained.awaits_clarification() {
            UNDECIDED.to_string()
        } else {
            explained
                .decision
                .spec
                .as_ref()
                .map(|s| s.role.clone())
                .unwrap_or_default()
        };
        if new_role != r.role() {
            changes.push(Change {
                task_id: r.task.task_id.clone(),
                text: r
                    .task
                    .trigger
                    .as_ref()
                    .map(|t| t.text.clone())
                    .unwrap_or_default(),
                old_role: r.role().to_string(),
                new_role,
                old: r.decision.clone(),
                new: explained.decision,
            });
        }
    }
    Ok(changes)
}
