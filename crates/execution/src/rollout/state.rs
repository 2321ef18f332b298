//! The rollout's state and its transitions, free of I/O: [`State::next`] says what to do next
//! from the state alone, and each transition applies what came of it and returns the
//! [`Effects`] the I/O shell ([`crate::rollout`]) must carry out — the events to publish and
//! whether the change must be saved before anything else happens.
//!
//! The state is converted from and to the stored protobuf [`Execution`](proto::Execution) at
//! the boundary ([`TryFrom`], [`State::to_proto`]), so the transitions work on plain enums
//! ([`Status`], [`StepState`]) rather than `i32` fields.
//!
//! What the transitions guarantee (tested below without NATS):
//! - A transition whose change must survive a crash (an action's or a probe's result, the start
//!   of a rollback, the end) asks for a save, and the events reporting the change come with it
//!   or were asked for earlier: the shell publishes every returned event before the next save,
//!   so a saved state never holds a change no event reported.
//! - A transition that does not ask for a save (a phase's start or completion) is one that
//!   [`State::next`] asks for again, with the same event ids, when a resume starts from the last
//!   saved state.
//! - A step whose result is saved is never asked to run again.

use crate::Error;
use baton_proto::event::Body;
use baton_proto::{
    self as proto, AssetUpdated, ExecutionStarted, PhaseCompleted, PhaseKind, PhaseStarted, Plan,
    RollbackStarted, Timestamp,
};

/// Where a rollout, or one of its phases, stands: the proto `ExecutionStatus` without its
/// unspecified value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not started (a phase before its turn).
    Pending,
    /// Running its phases (a rollout), or its actions and checks (a phase).
    Running,
    /// Not produced yet; a paused rollout is driven like a running one.
    Paused,
    /// Undoing every change, newest first.
    RollingBack,
    /// Every phase healthy (a rollout); every step healthy (a phase).
    Succeeded,
    /// At least one change could not be undone (a rollout); a step failed (a phase).
    Failed,
    /// Every change undone (a rollout); a succeeded phase whose changes were undone.
    RolledBack,
    /// Not produced yet.
    Cancelled,
}

impl Status {
    /// True for a rollout status after which nothing more happens.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Succeeded | Status::Failed | Status::RolledBack | Status::Cancelled
        )
    }
}

impl TryFrom<i32> for Status {
    type Error = String;

    fn try_from(value: i32) -> Result<Self, String> {
        use proto::ExecutionStatus as S;
        Ok(match S::try_from(value) {
            Ok(S::Pending) => Status::Pending,
            Ok(S::Running) => Status::Running,
            Ok(S::Paused) => Status::Paused,
            Ok(S::RollingBack) => Status::RollingBack,
            Ok(S::Succeeded) => Status::Succeeded,
            Ok(S::Failed) => Status::Failed,
            Ok(S::RolledBack) => Status::RolledBack,
            Ok(S::Cancelled) => Status::Cancelled,
            Ok(S::Unspecified) | Err(_) => return Err(format!("unknown execution status {value}")),
        })
    }
}

impl From<Status> for proto::ExecutionStatus {
    fn from(s: Status) -> Self {
        use proto::ExecutionStatus as S;
        match s {
            Status::Pending => S::Pending,
            Status::Running => S::Running,
            Status::Paused => S::Paused,
            Status::RollingBack => S::RollingBack,
            Status::Succeeded => S::Succeeded,
            Status::Failed => S::Failed,
            Status::RolledBack => S::RolledBack,
            Status::Cancelled => S::Cancelled,
        }
    }
}

/// Where one step's asset stands: the proto `AssetState` without its unspecified value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    /// Its action has not run (or its result was not saved).
    Pending,
    /// Its action succeeded; its health check (if any) has not passed yet.
    Applied,
    /// Its health check passed.
    Healthy,
    /// Its health check failed every attempt.
    Unhealthy,
    /// Its action failed (and so, presumably, changed nothing).
    Failed,
    /// Its rollback action succeeded.
    RolledBack,
    /// Its rollback action failed or it has none.
    RollbackFailed,
}

impl StepState {
    /// True when the step's action took effect (whether undone since or not): the steps a
    /// rollback covers.
    pub fn changed(self) -> bool {
        matches!(
            self,
            StepState::Applied
                | StepState::Healthy
                | StepState::Unhealthy
                | StepState::RolledBack
                | StepState::RollbackFailed
        )
    }

    /// True when the step's rollback has been tried (whatever came of it).
    pub fn rollback_tried(self) -> bool {
        matches!(self, StepState::RolledBack | StepState::RollbackFailed)
    }

    /// The suffix of the step's event stage and of its name in logs (`applied`, `healthy`).
    fn name(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Applied => "applied",
            StepState::Healthy => "healthy",
            StepState::Unhealthy => "unhealthy",
            StepState::Failed => "failed",
            StepState::RolledBack => "rolled_back",
            StepState::RollbackFailed => "rollback_failed",
        }
    }
}

impl TryFrom<i32> for StepState {
    type Error = String;

    fn try_from(value: i32) -> Result<Self, String> {
        use proto::AssetState as A;
        Ok(match A::try_from(value) {
            Ok(A::Pending) => StepState::Pending,
            Ok(A::Applied) => StepState::Applied,
            Ok(A::Healthy) => StepState::Healthy,
            Ok(A::Unhealthy) => StepState::Unhealthy,
            Ok(A::Failed) => StepState::Failed,
            Ok(A::RolledBack) => StepState::RolledBack,
            Ok(A::RollbackFailed) => StepState::RollbackFailed,
            Ok(A::Unspecified) | Err(_) => return Err(format!("unknown asset state {value}")),
        })
    }
}

impl From<StepState> for proto::AssetState {
    fn from(s: StepState) -> Self {
        use proto::AssetState as A;
        match s {
            StepState::Pending => A::Pending,
            StepState::Applied => A::Applied,
            StepState::Healthy => A::Healthy,
            StepState::Unhealthy => A::Unhealthy,
            StepState::Failed => A::Failed,
            StepState::RolledBack => A::RolledBack,
            StepState::RollbackFailed => A::RollbackFailed,
        }
    }
}

/// One step's asset within the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepProgress {
    /// The asset's id (empty when the step names no asset).
    pub asset_id: String,
    /// Where it stands.
    pub state: StepState,
    /// The last result's detail (`PUT …: 200`, `expected 200, got 503`).
    pub detail: String,
}

impl StepProgress {
    fn to_proto(&self) -> proto::AssetStatus {
        proto::AssetStatus {
            asset_id: self.asset_id.clone(),
            state: proto::AssetState::from(self.state) as i32,
            detail: self.detail.clone(),
        }
    }
}

/// One phase within the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseProgress {
    /// The plan's name for it (`canary`, `wave 1`).
    pub name: String,
    /// Canary or wave.
    pub kind: PhaseKind,
    /// Pending, running, then succeeded or failed (rolled back when undone afterwards).
    pub status: Status,
    /// One per step of the plan's phase, in the plan's order.
    pub steps: Vec<StepProgress>,
}

impl PhaseProgress {
    fn any(&self, state: StepState) -> bool {
        self.steps.iter().any(|s| s.state == state)
    }
}

/// One rollout's state: what is saved after every change (as the proto `Execution`).
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// The task.
    pub task_id: String,
    /// The task's tenant.
    pub tenant: String,
    /// Where the rollout stands.
    pub status: Status,
    /// One per phase of the plan, in order.
    pub phases: Vec<PhaseProgress>,
    /// Index of the phase started last.
    pub current_phase: u32,
    /// Why it failed (empty unless rolling back or ended badly).
    pub error: String,
    /// When it was created.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// The plan being run.
    pub plan: Plan,
}

/// An event a transition asks the shell to publish: `baton.execution.<event>` with id
/// `<task>.<stage>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    /// The subject's last token (`phase_started`, `asset_updated`, …).
    pub event: &'static str,
    /// The event id's stage (`exec.p1.web-02.applied`).
    pub stage: String,
    /// The event body.
    pub body: Body,
}

/// What a transition asks of the shell: publish `events` (in order), then, when `save`, save
/// the state before doing anything else. Events of a transition that asks for no save go out
/// with the next save (or before the next action runs).
#[derive(Debug, Clone, PartialEq)]
#[must_use = "the shell must publish the events and honour the save"]
pub struct Effects {
    /// Events reporting the change.
    pub events: Vec<Emit>,
    /// Whether the change must be saved now.
    pub save: bool,
}

/// What the rollout does next, decided from its state alone ([`State::next`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// It ended before (a redelivery): publish its final event again, nothing else.
    Replay,
    /// Announce this phase ([`State::start_phase`]), then run it.
    StartPhase(usize),
    /// Run the actions of these pending steps of `phase` (then [`State::record_action`]).
    Apply {
        /// The phase.
        phase: usize,
        /// Its steps still pending, in order.
        steps: Vec<usize>,
    },
    /// Probe the health checks of these applied steps of `phase` (then
    /// [`State::record_check`]).
    Check {
        /// The phase.
        phase: usize,
        /// Its applied steps that have a health check, in order.
        steps: Vec<usize>,
    },
    /// Every step of the phase has its result: complete it ([`State::complete_phase`]).
    CompletePhase(usize),
    /// A phase failed: start rolling back for this reason ([`State::begin_rollback`]).
    BeginRollback(String),
    /// Run the rollback action of this step (then [`State::record_rollback`]).
    RollBack {
        /// The phase.
        phase: usize,
        /// The step.
        step: usize,
    },
    /// Every phase succeeded: end ([`State::succeed`]).
    Succeed,
    /// Every changed step's rollback was tried: end ([`State::end_rollback`]).
    EndRollback,
}

/// How a rollout ended, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every phase healthy.
    Succeeded,
    /// A step failed and every change was undone.
    RolledBack,
    /// A step failed and at least one change could not be undone.
    RollbackFailed,
    /// The rollout had already ended; its final event was published again.
    Replayed,
}

impl Outcome {
    /// Metrics label (`succeeded`, `rolled_back`, `rollback_failed`, `replayed`).
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::RolledBack => "rolled_back",
            Outcome::RollbackFailed => "rollback_failed",
            Outcome::Replayed => "replayed",
        }
    }
}

impl State {
    /// A new rollout of `plan` for `task_id`: running, every phase and step pending.
    pub fn new(task_id: &str, tenant: &str, plan: Plan, started_at: Timestamp) -> State {
        let phases = plan
            .phases
            .iter()
            .map(|p| PhaseProgress {
                name: p.name.clone(),
                kind: p.kind(),
                status: Status::Pending,
                steps: p
                    .steps
                    .iter()
                    .map(|s| StepProgress {
                        asset_id: s.asset.as_ref().map(|a| a.id.clone()).unwrap_or_default(),
                        state: StepState::Pending,
                        detail: String::new(),
                    })
                    .collect(),
            })
            .collect();
        State {
            task_id: task_id.to_string(),
            tenant: tenant.to_string(),
            status: Status::Running,
            phases,
            current_phase: 0,
            error: String::new(),
            started_at: Some(started_at),
            finished_at: None,
            plan,
        }
    }

    /// The stored form.
    pub fn to_proto(&self) -> proto::Execution {
        proto::Execution {
            task_id: self.task_id.clone(),
            tenant: self.tenant.clone(),
            status: proto::ExecutionStatus::from(self.status) as i32,
            phases: self
                .phases
                .iter()
                .map(|p| proto::PhaseStatus {
                    name: p.name.clone(),
                    kind: p.kind as i32,
                    status: proto::ExecutionStatus::from(p.status) as i32,
                    assets: p.steps.iter().map(StepProgress::to_proto).collect(),
                })
                .collect(),
            current_phase: self.current_phase,
            error: self.error.clone(),
            started_at: self.started_at,
            finished_at: self.finished_at,
            plan: Some(self.plan.clone()),
        }
    }

    /// True for a running rollout none of whose phases has started: its `execution_started`
    /// may not have been published yet.
    pub fn nothing_recorded(&self) -> bool {
        self.status == Status::Running && self.phases.iter().all(|p| p.status == Status::Pending)
    }

    /// The `execution_started` event (stage `exec.started`).
    pub fn announcement(&self) -> Emit {
        Emit {
            event: "started",
            stage: "exec.started".into(),
            body: Body::ExecutionStarted(ExecutionStarted {
                phases: self.phases.len() as u32,
                steps: self.phases.iter().map(|p| p.steps.len() as u32).sum(),
            }),
        }
    }

    /// What to do next. Phases run in order; within a phase, actions first, then health checks
    /// (skipped once an action failed), then the phase completes. A failed phase starts the
    /// rollback; a rollback undoes changed steps newest first.
    pub fn next(&self) -> Next {
        if self.status.is_final() {
            return Next::Replay;
        }
        if self.status == Status::RollingBack {
            return match self
                .changed()
                .into_iter()
                .find(|&(i, j)| !self.phases[i].steps[j].state.rollback_tried())
            {
                Some((phase, step)) => Next::RollBack { phase, step },
                None => Next::EndRollback,
            };
        }
        // Running, or a status this version does not drive yet (pending, paused).
        for (i, phase) in self.phases.iter().enumerate() {
            match phase.status {
                Status::Succeeded => continue,
                Status::Pending => return Next::StartPhase(i),
                Status::Failed => {
                    let reason = self
                        .failure(i)
                        .unwrap_or_else(|| format!("phase {} failed", phase.name));
                    return Next::BeginRollback(reason);
                }
                _ => {
                    if phase.any(StepState::Failed) {
                        return Next::CompletePhase(i);
                    }
                    let pending = self.steps_in(i, |_, s| s.state == StepState::Pending);
                    if !pending.is_empty() {
                        return Next::Apply {
                            phase: i,
                            steps: pending,
                        };
                    }
                    let due = self.steps_in(i, |j, s| {
                        s.state == StepState::Applied
                            && self.plan.phases[i].steps[j].health_check.is_some()
                    });
                    if !due.is_empty() {
                        return Next::Check {
                            phase: i,
                            steps: due,
                        };
                    }
                    return Next::CompletePhase(i);
                }
            }
        }
        Next::Succeed
    }

    /// Starts phase `i`: running, the current phase. Reported by `phase_started`; saved with
    /// the phase's first result (a resume before that starts it again, same event id).
    pub fn start_phase(&mut self, i: usize) -> Effects {
        let phase = &mut self.phases[i];
        phase.status = Status::Running;
        self.current_phase = i as u32;
        let phase = &self.phases[i];
        let body = Body::PhaseStarted(PhaseStarted {
            index: i as u32,
            name: phase.name.clone(),
            kind: phase.kind as i32,
            asset_ids: phase.steps.iter().map(|s| s.asset_id.clone()).collect(),
        });
        Effects {
            events: vec![Emit {
                event: "phase_started",
                stage: format!("exec.p{i}.started"),
                body,
            }],
            save: false,
        }
    }

    /// Records the result of step `j`'s action in phase `i`: applied with the runner's detail,
    /// or failed with why. Reported by `asset_updated`; saved at once.
    pub fn record_action(&mut self, i: usize, j: usize, result: Result<String, String>) -> Effects {
        let (state, detail) = match result {
            Ok(detail) => (StepState::Applied, detail),
            Err(detail) => (StepState::Failed, detail),
        };
        self.update_step(i, j, state, detail, None)
    }

    /// Records the verdict of step `j`'s health check in phase `i`: healthy, or unhealthy with
    /// what the last attempt saw. Reported by `asset_updated`; saved at once.
    pub fn record_check(&mut self, i: usize, j: usize, result: Result<(), String>) -> Effects {
        let (state, detail) = match result {
            Ok(()) => (StepState::Healthy, String::new()),
            Err(detail) => (StepState::Unhealthy, detail),
        };
        self.update_step(i, j, state, detail, None)
    }

    /// Completes phase `i`: succeeded when no step failed or is unhealthy, else failed.
    /// Reported by `phase_completed`; saved with the next change (the next phase's first
    /// result, the rollback start or the end), so a resume before that completes it again.
    pub fn complete_phase(&mut self, i: usize) -> Effects {
        let healthy = self.failure(i).is_none();
        let phase = &mut self.phases[i];
        phase.status = if healthy {
            Status::Succeeded
        } else {
            Status::Failed
        };
        let body = Body::PhaseCompleted(PhaseCompleted {
            index: i as u32,
            name: phase.name.clone(),
            healthy,
        });
        Effects {
            events: vec![Emit {
                event: "phase_completed",
                stage: format!("exec.p{i}.completed"),
                body,
            }],
            save: false,
        }
    }

    /// Starts rolling back for `reason` (kept as the rollout's error). Reported by
    /// `rollback_started`, naming the changed assets newest first; saved at once.
    pub fn begin_rollback(&mut self, reason: String) -> Effects {
        let asset_ids = self
            .changed()
            .iter()
            .map(|&(i, j)| self.phases[i].steps[j].asset_id.clone())
            .collect();
        self.error = reason.clone();
        self.status = Status::RollingBack;
        Effects {
            events: vec![Emit {
                event: "rollback_started",
                stage: "exec.rollback".into(),
                body: Body::RollbackStarted(RollbackStarted { reason, asset_ids }),
            }],
            save: true,
        }
    }

    /// Records the result of step `j`'s rollback action in phase `i`: rolled back, or rollback
    /// failed with why. Reported by `asset_updated` (stage `exec.rb.p<i>.<asset>`); saved at
    /// once.
    pub fn record_rollback(
        &mut self,
        i: usize,
        j: usize,
        result: Result<String, String>,
    ) -> Effects {
        let (state, detail) = match result {
            Ok(detail) => (StepState::RolledBack, detail),
            Err(detail) => (StepState::RollbackFailed, detail),
        };
        let stage = format!("exec.rb.p{i}.{}", self.phases[i].steps[j].asset_id);
        self.update_step(i, j, state, detail, Some(stage))
    }

    /// Ends a rollout whose phases all succeeded, at `now`. Saved, then the final event goes out.
    pub fn succeed(&mut self, now: Timestamp) -> Outcome {
        self.status = Status::Succeeded;
        self.finished_at = Some(now);
        Outcome::Succeeded
    }

    /// Ends a rollback at `now`: rolled back when every changed step was undone, else failed;
    /// the error gains what was undone (`…; rolled back 3 assets`, `…; rollback failed on
    /// web-02 (and 1 more): …; rolled back 1 of 3 assets`), and succeeded phases with an undone
    /// step become rolled back. Saved, then the final event goes out.
    pub fn end_rollback(&mut self, now: Timestamp) -> Outcome {
        let changed = self.changed();
        let failed: Vec<&StepProgress> = changed
            .iter()
            .map(|&(i, j)| &self.phases[i].steps[j])
            .filter(|s| s.state == StepState::RollbackFailed)
            .collect();
        let undone = changed.len() - failed.len();
        let outcome = match failed.first() {
            None => {
                let noun = if undone == 1 { "asset" } else { "assets" };
                self.error = format!("{}; rolled back {undone} {noun}", self.error);
                Outcome::RolledBack
            }
            Some(first) => {
                let more = if failed.len() > 1 {
                    format!(" (and {} more)", failed.len() - 1)
                } else {
                    String::new()
                };
                self.error = format!(
                    "{}; rollback failed on {}{more}: {}; rolled back {undone} of {} assets",
                    self.error,
                    first.asset_id,
                    first.detail,
                    changed.len()
                );
                Outcome::RollbackFailed
            }
        };
        for p in &mut self.phases {
            if p.status == Status::Succeeded && p.any(StepState::RolledBack) {
                p.status = Status::RolledBack;
            }
        }
        self.status = match outcome {
            Outcome::RolledBack => Status::RolledBack,
            _ => Status::Failed,
        };
        self.finished_at = Some(now);
        outcome
    }

    /// Why phase `i` failed: its first failed or unhealthy step, in the plan's order.
    fn failure(&self, i: usize) -> Option<String> {
        let phase = &self.phases[i];
        phase.steps.iter().find_map(|s| match s.state {
            StepState::Failed => Some(format!(
                "action failed on {} in {}: {}",
                s.asset_id, phase.name, s.detail
            )),
            StepState::Unhealthy => Some(format!(
                "health check failed on {} in {}: {}",
                s.asset_id, phase.name, s.detail
            )),
            _ => None,
        })
    }

    /// Steps whose action took effect, newest first: later phases before earlier ones, later
    /// steps before earlier ones.
    pub fn changed(&self) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = self
            .phases
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                p.steps
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.state.changed())
                    .map(move |(j, _)| (i, j))
            })
            .collect();
        out.reverse();
        out
    }

    fn steps_in(&self, i: usize, keep: impl Fn(usize, &StepProgress) -> bool) -> Vec<usize> {
        self.phases[i]
            .steps
            .iter()
            .enumerate()
            .filter(|(j, s)| keep(*j, s))
            .map(|(j, _)| j)
            .collect()
    }

    /// Sets step `j` of phase `i` and reports it (stage `exec.p<i>.<asset>.<state>` unless
    /// given); saved at once.
    fn update_step(
        &mut self,
        i: usize,
        j: usize,
        state: StepState,
        detail: String,
        stage: Option<String>,
    ) -> Effects {
        let step = &mut self.phases[i].steps[j];
        step.state = state;
        step.detail = detail;
        let stage =
            stage.unwrap_or_else(|| format!("exec.p{i}.{}.{}", step.asset_id, state.name()));
        let body = Body::AssetUpdated(AssetUpdated {
            phase_index: i as u32,
            asset: Some(step.to_proto()),
        });
        Effects {
            events: vec![Emit {
                event: "asset_updated",
                stage,
                body,
            }],
            save: true,
        }
    }
}

impl TryFrom<proto::Execution> for State {
    type Error = Error;

    /// Reads a stored rollout. Errors ([`Error::CorruptState`]): no plan, an unknown status or
    /// state, or phases and steps that do not match the plan's.
    fn try_from(exec: proto::Execution) -> Result<State, Error> {
        let corrupt = |reason: String| Error::CorruptState {
            task_id: exec.task_id.clone(),
            reason,
        };
        let Some(plan) = exec.plan.clone() else {
            return Err(corrupt("it holds no plan".into()));
        };
        let planned: Vec<usize> = plan.phases.iter().map(|p| p.steps.len()).collect();
        let stored: Vec<usize> = exec.phases.iter().map(|p| p.assets.len()).collect();
        if planned != stored {
            return Err(corrupt(
                "its phases and assets do not match its plan".into(),
            ));
        }
        let mut phases = Vec::with_capacity(exec.phases.len());
        for p in &exec.phases {
            let mut steps = Vec::with_capacity(p.assets.len());
            for a in &p.assets {
                steps.push(StepProgress {
                    asset_id: a.asset_id.clone(),
                    state: StepState::try_from(a.state).map_err(corrupt)?,
                    detail: a.detail.clone(),
                });
            }
            phases.push(PhaseProgress {
                name: p.name.clone(),
                kind: p.kind(),
                status: Status::try_from(p.status).map_err(corrupt)?,
                steps,
            });
        }
        Ok(State {
            status: Status::try_from(exec.status).map_err(corrupt)?,
            phases,
            current_phase: exec.current_phase,
            started_at: exec.started_at,
            finished_at: exec.finished_at,
            plan,
            error: exec.error,
            tenant: exec.tenant,
            task_id: exec.task_id,
        })
    }
}
