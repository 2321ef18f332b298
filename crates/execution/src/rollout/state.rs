//! The rollout's state and its transitions, free of I/O: [`State::next`] says what to do next
//! from the state alone, and each transition applies what came of it and returns the
//! [`Effects`] the I/O shell ([`crate::rollout`]) must carry out — the events to publish and
//! whether the change must be saved before the rollout touches the outside world again.
//!
//! The state is converted from and to the stored protobuf [`Execution`](proto::Execution) at
//! the boundary ([`TryFrom`], [`State::to_proto`]), so the transitions work on plain enums
//! ([`Status`], [`StepState`]) rather than `i32` fields.
//!
//! What the transitions guarantee (tested below without NATS):
//! - A transition whose change must survive a crash (an action's or a probe's result, the start
//!   of a rollback, the end) asks for a save, and the events reporting the change come with it
//!   or were asked for earlier: the shell publishes every returned event before the next save,
//!   so a saved state never holds a change no event reported. The shell saves it before the
//!   next action, probe or rollback action starts (or the end), so changes that need no I/O in
//!   between — the last result of a phase, its completion, the next phase's start — go into one
//!   save.
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
    /// The task this rollout carries out (the key of its saved state).
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
    /// The stages of the events [`merge`] folded into this one (their ids had they gone out on
    /// their own), in the order they happened; empty for an event that carries none.
    pub carries: Vec<String>,
}

impl Emit {
    /// The stages of every event this one stands for, in the order they happened: its own and
    /// those it carries (a rollout's start before its first phase's; a phase's asset changes
    /// before its completion).
    pub fn stages(&self) -> Vec<String> {
        match &self.body {
            Body::PhaseCompleted(_) => self
                .carries
                .iter()
                .cloned()
                .chain([self.stage.clone()])
                .collect(),
            _ => [self.stage.clone()]
                .into_iter()
                .chain(self.carries.iter().cloned())
                .collect(),
        }
    }
}

/// Folds events the rollout publishes back to back — queued together, with no action, probe,
/// rollback action or wait between them, so no observer could see one without the next —
/// into fewer, each keeping its own id (stage):
/// - `execution_started` followed by the first phase's `phase_started`: the phase start rides
///   in `ExecutionStarted.first_phase`;
/// - `asset_updated`s of phase `i` right before its `phase_completed`: they ride in
///   `PhaseCompleted.assets`, in order.
///
/// Every other event, and every event with an action or probe between it and the next (the
/// shell publishes what is queued before each), stays as it is. Merging depends only on the
/// queue, which a resumed rollout rebuilds the same from its saved state, so a redone step
/// re-publishes the same merged event under the same id. At a success, what this leaves
/// queued before the end — the last phase's completion — is folded once more, into the final
/// `task_completed` ([`fold_into_end`]). `Body::unmerged` gives the events back (the audit
/// projection and `baton watch` read them through it).
pub fn merge(queued: Vec<Emit>) -> Vec<Emit> {
    let mut out: Vec<Emit> = Vec::with_capacity(queued.len());
    for mut emit in queued {
        match &mut emit.body {
            Body::PhaseStarted(p) if p.index == 0 => {
                if let Some(prev) = out.last_mut()
                    && let Body::ExecutionStarted(e) = &mut prev.body
                    && e.first_phase.is_none()
                {
                    e.first_phase = Some(p.clone());
                    prev.carries.push(emit.stage);
                    continue;
                }
            }
            Body::PhaseCompleted(c) => {
                let mut from = out.len();
                while from > 0
                    && matches!(&out[from - 1].body, Body::AssetUpdated(u) if u.phase_index == c.index && u.asset.is_some())
                {
                    from -= 1;
                }
                let mut carried = Vec::new();
                for prev in out.drain(from..) {
                    if let Body::AssetUpdated(AssetUpdated {
                        asset: Some(asset), ..
                    }) = prev.body
                    {
                        c.assets.push(asset);
                        carried.push(prev.stage);
                    }
                }
                carried.append(&mut emit.carries);
                emit.carries = carried;
            }
            _ => {}
        }
        out.push(emit);
    }
    out
}

/// The queued events as one phase completion the final `task_completed` can carry
/// (`TaskCompleted.last_phase`), or `None` when they must go out as they are.
///
/// At the end of a successful rollout the queue normally holds what [`merge`] publishes back
/// to back right before the final event: the last phase's `phase_completed` carrying its last
/// asset changes. Then the shell folds it into the final event and publishes one message instead
/// of two, *before* it saves the end (see the module docs of [`crate::rollout`]). Anything else
/// — an `execution_started` not yet published (a plan without phases), a phase start, a
/// completion that is not healthy, or more than one event after merging — gives `None`; the
/// shell then saves (publishing them) and publishes the final event on its own, as before.
/// Like [`merge`], this depends only on the queue, which a resume rebuilds the same, so a
/// re-published end carries the same events under the same id (`<task>.completed`).
pub fn fold_into_end(queued: &[Emit]) -> Option<Emit> {
    match <[Emit; 1]>::try_from(merge(queued.to_vec())) {
        Ok([last]) if matches!(&last.body, Body::PhaseCompleted(c) if c.healthy) => Some(last),
        _ => None,
    }
}

/// What a transition asks of the shell: publish `events` (in order), then, when `save`, save
/// the state before the next action, probe or rollback action starts, or the rollout ends
/// (while other results of a concurrent batch are still due: at once). Events of a transition
/// that asks for no save go out with the next save (or before the next action runs).
#[derive(Debug, Clone, PartialEq)]
#[must_use = "the shell must publish the events and honour the save"]
pub struct Effects {
    /// Events reporting the change.
    pub events: Vec<Emit>,
    /// Whether the change must be saved before the rollout touches the outside world again.
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
                first_phase: None,
            }),
            carries: Vec::new(),
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
                carries: Vec::new(),
            }],
            save: false,
        }
    }

    /// Records the result of step `j`'s action in phase `i`: applied with the runner's detail,
    /// or failed with why. Reported by `asset_updated`; saved before the next I/O.
    pub fn record_action(&mut self, i: usize, j: usize, result: Result<String, String>) -> Effects {
        let (state, detail) = match result {
            Ok(detail) => (StepState::Applied, detail),
            Err(detail) => (StepState::Failed, detail),
        };
        self.update_step(i, j, state, detail, None)
    }

    /// Records the verdict of step `j`'s health check in phase `i`: healthy, or unhealthy with
    /// what the last attempt saw. Reported by `asset_updated`; saved before the next I/O.
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
            assets: Vec::new(),
        });
        Effects {
            events: vec![Emit {
                event: "phase_completed",
                stage: format!("exec.p{i}.completed"),
                body,
                carries: Vec::new(),
            }],
            save: false,
        }
    }

    /// Starts rolling back for `reason` (kept as the rollout's error). Reported by
    /// `rollback_started`, naming the changed assets newest first; saved before the first rollback action.
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
                carries: Vec::new(),
            }],
            save: true,
        }
    }

    /// Records the result of step `j`'s rollback action in phase `i`: rolled back, or rollback
    /// failed with why. Reported by `asset_updated` (stage `exec.rb.p<i>.<asset>`); saved
    /// before the next rollback action or the end.
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

    /// Ends a rollout whose phases all succeeded, at `now`. The final event goes out carrying
    /// the last phase's completion ([`fold_into_end`]), then the end is saved; when the queue
    /// cannot be folded, the end is saved (publishing the queue), then the final event goes out.
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
    /// given); saved before the next I/O.
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
                carries: Vec::new(),
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

#[cfg(test)]
mod tests {
    //! Every transition without NATS: a model of the shell ([`drive`]) runs the machine against
    //! a scripted world and records its I/O in order, so the invariants (publish before save,
    //! resume skips recorded steps) are checked at every save point.

    use super::*;
    use baton_proto::{Action, Asset, HealthCheck, NoopAction, Phase, Step, action};
    use std::collections::{BTreeMap, HashSet};

    fn at() -> Timestamp {
        Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }
    }

    fn noop(key: String) -> Action {
        Action {
            idempotency_key: key,
            kind: Some(action::Kind::Noop(NoopAction {})),
            ..Default::default()
        }
    }

    /// A step on asset `id` with an action, a rollback and (when `checked`) a health check.
    fn step(id: &str, checked: bool) -> Step {
        Step {
            asset: Some(Asset {
                id: id.into(),
                ..Default::default()
            }),
            action: Some(noop(format!("{id}:apply"))),
            rollback: Some(noop(format!("{id}:rollback"))),
            health_check: checked.then(HealthCheck::default),
            reason: String::new(),
        }
    }

    /// A canary of the first group's assets, then one wave per further group; every step
    /// checked.
    fn plan(groups: &[&[&str]]) -> Plan {
        let phases = groups
            .iter()
            .enumerate()
            .map(|(n, ids)| Phase {
                name: if n == 0 {
                    "canary".into()
                } else {
                    format!("wave {n}")
                },
                kind: if n == 0 {
                    PhaseKind::Canary
                } else {
                    PhaseKind::Wave
                } as i32,
                steps: ids.iter().map(|id| step(id, true)).collect(),
            })
            .collect();
        Plan {
            task_id: "t1".into(),
            phases,
            ..Default::default()
        }
    }

    fn fresh(plan: Plan) -> State {
        State::new("t1", "acme", plan, at())
    }

    /// How the scripted world answers, by asset id.
    #[derive(Debug, Clone, Default)]
    struct World {
        /// Assets whose action fails.
        failing: HashSet<&'static str>,
        /// Assets whose health check fails.
        unhealthy: HashSet<&'static str>,
        /// Assets whose rollback action fails.
        stuck: HashSet<&'static str>,
    }

    /// One piece of I/O the model shell did, in order.
    #[derive(Debug, Clone, PartialEq)]
    enum Io {
        /// An event published (its stage).
        Publish(String),
        /// An event carried by the one published next to it ([`merge`]; the final event's
        /// carried ones come right before it: [`fold_into_end`]), in the order they happened
        /// (its stage).
        Carried(String),
        /// The state saved.
        Save(Box<State>),
        /// An action run (its idempotency key).
        Run(String),
        /// A health probe (the asset).
        Probe(String),
        /// The final event, for this status.
        Final(Status),
    }

    /// Where the model shell crashes.
    #[derive(Debug, Clone, Copy)]
    enum Crash {
        /// Never.
        Never,
        /// Right after the n-th save (1-based).
        AfterSave(usize),
        /// After publishing the events of the n-th save, before saving it.
        BeforeSave(usize),
    }

    /// The model of the shell ([`crate::rollout`]): same loop, same queue, same order of
    /// publish and save; actions run one at a time in step order (the shell runs them
    /// concurrently but starts none after a failure). Returns the I/O and the outcome (`None`
    /// when it crashed).
    fn drive(state: &mut State, world: &World, crash: Crash) -> (Vec<Io>, Option<Outcome>) {
        struct Model<'a> {
            io: Vec<Io>,
            queued: Vec<Emit>,
            /// A change to save before the next action, probe or rollback action, or the end.
            unsaved: bool,
            saves: usize,
            crash: Crash,
            world: &'a World,
        }
        impl Model<'_> {
            fn flush(&mut self) {
                for emit in merge(std::mem::take(&mut self.queued)) {
                    for stage in emit.stages() {
                        self.io.push(if stage == emit.stage {
                            Io::Publish(stage)
                        } else {
                            Io::Carried(stage)
                        });
                    }
                }
            }
            /// `false` when it crashed.
            fn save(&mut self, state: &State) -> bool {
                self.flush();
                self.write(state)
            }
            /// Saves without publishing the queue first. `false` when it crashed.
            fn write(&mut self, state: &State) -> bool {
                self.saves += 1;
                if matches!(self.crash, Crash::BeforeSave(n) if n == self.saves) {
                    return false;
                }
                self.io.push(Io::Save(Box::new(state.clone())));
                self.unsaved = false;
                !matches!(self.crash, Crash::AfterSave(n) if n == self.saves)
            }
            /// Queues the events; a change to save is saved at the next `settle`, or at once
            /// when `more` results of its batch are still due.
            fn take(&mut self, effects: Effects, state: &State, more: bool) -> bool {
                self.queued.extend(effects.events);
                self.unsaved |= effects.save;
                !(more && self.unsaved) || self.save(state)
            }
            /// Before touching the outside world: publish, and save an unsaved change.
            fn settle(&mut self, state: &State) -> bool {
                if self.unsaved {
                    self.save(state)
                } else {
                    self.flush();
                    true
                }
            }
            fn run(
                &mut self,
                action: &Option<Action>,
                asset: &str,
                fails: bool,
            ) -> Result<String, String> {
                let Some(action) = action else {
                    return Err("the step has no rollback action".into());
                };
                self.io.push(Io::Run(action.idempotency_key.clone()));
                let _ = self.world;
                if fails {
                    Err(format!("{asset} said no"))
                } else {
                    Ok(format!("{asset} done"))
                }
            }
        }
        let mut m = Model {
            io: Vec::new(),
            queued: Vec::new(),
            unsaved: false,
            saves: 0,
            crash,
            world,
        };
        if state.nothing_recorded() {
            m.queued.push(state.announcement());
        }
        loop {
            match state.next() {
                Next::Replay => {
                    m.io.push(Io::Final(state.status));
                    return (m.io, Some(Outcome::Replayed));
                }
                Next::StartPhase(i) => {
                    let fx = state.start_phase(i);
                    if !m.take(fx, state, false) {
                        return (m.io, None);
                    }
                }
                Next::Apply { phase, steps } => {
                    if !m.settle(state) {
                        return (m.io, None);
                    }
                    let last = steps.len() - 1;
                    for (k, j) in steps.into_iter().enumerate() {
                        let id = state.phases[phase].steps[j].asset_id.clone();
                        let action = state.plan.phases[phase].steps[j].action.clone();
                        let result = m.run(&action, &id, world.failing.contains(id.as_str()));
                        let failed = result.is_err();
                        let fx = state.record_action(phase, j, result);
                        // The shell starts none after a failure: its result is the batch's last.
                        if !m.take(fx, state, k < last && !failed) {
                            return (m.io, None);
                        }
                        if failed {
                            break;
                        }
                    }
                }
                Next::Check { phase, steps } => {
                    if !m.settle(state) {
                        return (m.io, None);
                    }
                    let last = steps.len() - 1;
                    for (k, j) in steps.into_iter().enumerate() {
                        let id = state.phases[phase].steps[j].asset_id.clone();
                        m.io.push(Io::Probe(id.clone()));
                        let verdict = if world.unhealthy.contains(id.as_str()) {
                            Err("expected 200, got 503".to_string())
                        } else {
                            Ok(())
                        };
                        let fx = state.record_check(phase, j, verdict);
                        if !m.take(fx, state, k < last) {
                            return (m.io, None);
                        }
                    }
                }
                Next::CompletePhase(i) => {
                    let fx = state.complete_phase(i);
                    if !m.take(fx, state, false) {
                        return (m.io, None);
                    }
                }
                Next::BeginRollback(reason) => {
                    let fx = state.begin_rollback(reason);
                    if !m.take(fx, state, false) {
                        return (m.io, None);
                    }
                }
                Next::RollBack { phase, step } => {
                    if !m.settle(state) {
                        return (m.io, None);
                    }
                    let id = state.phases[phase].steps[step].asset_id.clone();
                    let rollback = state.plan.phases[phase].steps[step].rollback.clone();
                    let result = m.run(&rollback, &id, world.stuck.contains(id.as_str()));
                    let fx = state.record_rollback(phase, step, result);
                    if !m.take(fx, state, false) {
                        return (m.io, None);
                    }
                }
                Next::Succeed => {
                    let outcome = state.succeed(at());
                    if let Some(last) = fold_into_end(&m.queued) {
                        // The final event carries the last phase's completion and goes out
                        // first; a crash before the save resumes from the previous one.
                        m.queued.clear();
                        m.io.extend(last.stages().into_iter().map(Io::Carried));
                        m.io.push(Io::Final(state.status));
                        if !m.write(state) {
                            return (m.io, None);
                        }
                        return (m.io, Some(outcome));
                    }
                    if !m.save(state) {
                        return (m.io, None);
                    }
                    m.io.push(Io::Final(state.status));
                    return (m.io, Some(outcome));
                }
                Next::EndRollback => {
                    let outcome = state.end_rollback(at());
                    if !m.save(state) {
                        return (m.io, None);
                    }
                    m.io.push(Io::Final(state.status));
                    return (m.io, Some(outcome));
                }
            }
        }
    }

    /// The events published, by stage (a merged event by its own).
    fn published(io: &[Io]) -> Vec<String> {
        io.iter()
            .filter_map(|e| match e {
                Io::Publish(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    /// The events reported, by stage: those published and those they carry, in the order they
    /// happened (what a build before the merging published one by one).
    fn reported(io: &[Io]) -> Vec<String> {
        io.iter()
            .filter_map(|e| match e {
                Io::Publish(s) | Io::Carried(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    fn runs(io: &[Io]) -> Vec<String> {
        io.iter()
            .filter_map(|e| match e {
                Io::Run(k) => Some(k.clone()),
                _ => None,
            })
            .collect()
    }

    fn saves(io: &[Io]) -> Vec<State> {
        io.iter()
            .filter_map(|e| match e {
                Io::Save(s) => Some((**s).clone()),
                _ => None,
            })
            .collect()
    }

    fn states(state: &State) -> Vec<(&str, StepState)> {
        state
            .phases
            .iter()
            .flat_map(|p| p.steps.iter().map(|s| (s.asset_id.as_str(), s.state)))
            .collect()
    }

    /// The scenarios the invariants are checked on.
    fn scenarios() -> Vec<(&'static str, Plan, World)> {
        let three = || plan(&[&["a"], &["b", "c"], &["d", "e", "f"]]);
        vec![
            ("healthy", three(), World::default()),
            (
                "unhealthy in wave 2",
                three(),
                World {
                    unhealthy: ["e"].into(),
                    ..Default::default()
                },
            ),
            (
                "action fails in wave 1",
                three(),
                World {
                    failing: ["b"].into(),
                    ..Default::default()
                },
            ),
            (
                "rollback fails",
                three(),
                World {
                    unhealthy: ["c"].into(),
                    stuck: ["a"].into(),
                    ..Default::default()
                },
            ),
            ("empty plan", Plan::default(), World::default()),
        ]
    }

    #[test]
    fn a_new_state_has_every_phase_and_step_pending() {
        let s = fresh(plan(&[&["a"], &["b", "c"]]));
        assert_eq!(s.status, Status::Running);
        assert_eq!(s.tenant, "acme");
        assert_eq!(
            states(&s),
            [
                ("a", StepState::Pending),
                ("b", StepState::Pending),
                ("c", StepState::Pending)
            ]
        );
        assert!(s.phases.iter().all(|p| p.status == Status::Pending));
        assert_eq!(s.next(), Next::StartPhase(0));
        let started = s.announcement();
        assert_eq!(started.stage, "exec.started");
        assert_eq!(
            started.body,
            Body::ExecutionStarted(ExecutionStarted {
                phases: 2,
                steps: 3,
                first_phase: None,
            })
        );
    }

    #[test]
    fn only_a_running_state_with_no_phase_started_has_nothing_recorded() {
        let mut s = fresh(plan(&[&["a"], &["b"]]));
        assert!(s.nothing_recorded());
        let _ = s.start_phase(0);
        assert!(!s.nothing_recorded());
        let mut empty = fresh(Plan::default());
        assert!(empty.nothing_recorded());
        let _ = empty.succeed(at());
        assert!(!empty.nothing_recorded());
    }

    #[test]
    fn only_ended_statuses_are_final() {
        for s in [
            Status::Succeeded,
            Status::Failed,
            Status::RolledBack,
            Status::Cancelled,
        ] {
            assert!(s.is_final(), "{s:?}");
        }
        for s in [
            Status::Pending,
            Status::Running,
            Status::Paused,
            Status::RollingBack,
        ] {
            assert!(!s.is_final(), "{s:?}");
        }
    }

    #[test]
    fn the_stored_form_round_trips_and_bad_ones_are_corrupt() {
        let mut s = fresh(plan(&[&["a"], &["b", "c"]]));
        let _ = s.start_phase(0);
        let _ = s.record_action(0, 0, Ok("a done".into()));
        let proto = s.to_proto();
        assert_eq!(proto.status, proto::ExecutionStatus::Running as i32);
        assert_eq!(
            proto.phases[0].assets[0].state,
            proto::AssetState::Applied as i32
        );
        assert_eq!(State::try_from(proto.clone()).unwrap(), s);

        let corrupt = |p: proto::Execution| matches!(State::try_from(p), Err(Error::CorruptState { task_id, .. }) if task_id == "t1");
        let mut no_plan = proto.clone();
        no_plan.plan = None;
        assert!(corrupt(no_plan));
        let mut short = proto.clone();
        short.phases[1].assets.pop();
        assert!(corrupt(short));
        let mut unknown = proto.clone();
        unknown.status = 0;
        assert!(corrupt(unknown));
        let mut bad_asset = proto;
        bad_asset.phases[0].assets[0].state = 42;
        assert!(corrupt(bad_asset));
    }

    #[test]
    fn an_empty_plan_announces_itself_and_succeeds() {
        let mut s = fresh(Plan::default());
        assert_eq!(s.next(), Next::Succeed);
        let (io, outcome) = drive(&mut s, &World::default(), Crash::Never);
        assert_eq!(outcome, Some(Outcome::Succeeded));
        assert_eq!(
            io,
            [
                Io::Publish("exec.started".into()),
                Io::Save(Box::new(s.clone())),
                Io::Final(Status::Succeeded)
            ]
        );
        assert_eq!(s.finished_at, Some(at()));
    }

    #[test]
    fn a_healthy_canary_leads_to_the_waves_and_success() {
        let mut s = fresh(plan(&[&["a"], &["b", "c"]]));
        let (io, outcome) = drive(&mut s, &World::default(), Crash::Never);
        assert_eq!(outcome, Some(Outcome::Succeeded));
        assert_eq!(
            reported(&io),
            [
                "exec.started",
                "exec.p0.started",
                "exec.p0.a.applied",
                "exec.p0.a.healthy",
                "exec.p0.completed",
                "exec.p1.started",
                "exec.p1.b.applied",
                "exec.p1.c.applied",
                "exec.p1.b.healthy",
                "exec.p1.c.healthy",
                "exec.p1.completed",
            ]
        );
        // Published: the first phase's start rides in the rollout's, each phase's last
        // verdict in its completion, the last phase's completion in the final event; the rest
        // have a probe or an action after them.
        assert_eq!(
            published(&io),
            [
                "exec.started",
                "exec.p0.a.applied",
                "exec.p0.completed",
                "exec.p1.started",
                "exec.p1.b.applied",
                "exec.p1.c.applied",
                "exec.p1.b.healthy",
            ]
        );
        // The end goes out carrying them, then it is saved.
        assert_eq!(
            io[io.len() - 4..],
            [
                Io::Carried("exec.p1.c.healthy".into()),
                Io::Carried("exec.p1.completed".into()),
                Io::Final(Status::Succeeded),
                Io::Save(Box::new(s.clone())),
            ]
        );
        assert_eq!(runs(&io), ["a:apply", "b:apply", "c:apply"]);
        assert_eq!(s.status, Status::Succeeded);
        assert!(s.phases.iter().all(|p| p.status == Status::Succeeded));
        assert!(states(&s).iter().all(|(_, st)| *st == StepState::Healthy));
        assert_eq!(s.current_phase, 1);
        // Ended: a redelivery only replays the final event.
        assert_eq!(s.next(), Next::Replay);
        let (io, outcome) = drive(&mut s, &World::default(), Crash::Never);
        assert_eq!(
            (io, outcome),
            (vec![Io::Final(Status::Succeeded)], Some(Outcome::Replayed))
        );
    }

    #[test]
    fn results_are_saved_before_the_next_io_and_a_batch_last_with_the_next_change() {
        // One step, no health check: its result, the phase's completion and the end are one
        // save (besides the new rollout's, which the model does not show).
        let mut one = fresh(plan(&[&["a"]]));
        one.plan.phases[0].steps[0].health_check = None;
        let (io, outcome) = drive(&mut one, &World::default(), Crash::Never);
        assert_eq!(outcome, Some(Outcome::Succeeded));
        let saved = saves(&io);
        assert_eq!(saved.len(), 1, "{io:?}");
        assert_eq!(saved[0].status, Status::Succeeded);
        // Canary (one step, checked) and a wave of two: every result that is followed by
        // another action or probe is saved before it starts.
        let mut s = fresh(plan(&[&["a"], &["b", "c"]]));
        let (io, _) = drive(&mut s, &World::default(), Crash::Never);
        let order: Vec<String> = io
            .iter()
            .filter_map(|e| match e {
                Io::Run(k) => Some(format!("run {k}")),
                Io::Probe(id) => Some(format!("probe {id}")),
                Io::Save(st) => Some(format!("save {:?}", states(st))),
                _ => None,
            })
            .collect();
        use StepState::*;
        let expected: Vec<String> = [
            "run a:apply".to_string(),
            format!(
                "save {:?}",
                [("a", Applied), ("b", Pending), ("c", Pending)]
            ),
            "probe a".to_string(),
            format!(
                "save {:?}",
                [("a", Healthy), ("b", Pending), ("c", Pending)]
            ),
            "run b:apply".to_string(),
            format!(
                "save {:?}",
                [("a", Healthy), ("b", Applied), ("c", Pending)]
            ),
            "run c:apply".to_string(),
            format!(
                "save {:?}",
                [("a", Healthy), ("b", Applied), ("c", Applied)]
            ),
            "probe b".to_string(),
            format!(
                "save {:?}",
                [("a", Healthy), ("b", Healthy), ("c", Applied)]
            ),
            "probe c".to_string(),
            format!(
                "save {:?}",
                [("a", Healthy), ("b", Healthy), ("c", Healthy)]
            ),
        ]
        .into();
        assert_eq!(order, expected);
        assert_eq!(saves(&io).last().unwrap().status, Status::Succeeded);
    }

    #[test]
    fn a_one_step_phase_without_a_health_check_publishes_its_start_and_its_end_carrying_the_rest() {
        let mut s = fresh(plan(&[&["a"]]));
        s.plan.phases[0].steps[0].health_check = None;
        let (io, outcome) = drive(&mut s, &World::default(), Crash::Never);
        assert_eq!(outcome, Some(Outcome::Succeeded));
        assert_eq!(
            io.iter()
                .filter(|e| !matches!(e, Io::Save(_)))
                .cloned()
                .collect::<Vec<_>>(),
            [
                Io::Publish("exec.started".into()),
                Io::Carried("exec.p0.started".into()),
                Io::Run("a:apply".into()),
                Io::Carried("exec.p0.a.applied".into()),
                Io::Carried("exec.p0.completed".into()),
                Io::Final(Status::Succeeded),
            ]
        );
    }

    #[test]
    fn an_asset_change_followed_by_a_probe_or_an_action_is_published_before_it() {
        // A checked step: `applied` goes out on its own before the probe; the verdict rides
        // in the completion.
        let mut s = fresh(plan(&[&["a"]]));
        let (io, _) = drive(&mut s, &World::default(), Crash::Never);
        let applied = io
            .iter()
            .position(|e| *e == Io::Publish("exec.p0.a.applied".into()))
            .unwrap();
        let probe = io.iter().position(|e| *e == Io::Probe("a".into())).unwrap();
        assert!(applied < probe, "{io:?}");
        assert!(io.contains(&Io::Carried("exec.p0.a.healthy".into())));
        // Two unchecked steps: the first result goes out (with its save) before the second
        // action; only the last rides in the completion.
        let mut p = plan(&[&["a", "b"]]);
        for step in &mut p.phases[0].steps {
            step.health_check = None;
        }
        let mut s = fresh(p);
        let (io, _) = drive(&mut s, &World::default(), Crash::Never);
        let a = io
            .iter()
            .position(|e| *e == Io::Publish("exec.p0.a.applied".into()))
            .unwrap();
        let b = io
            .iter()
            .position(|e| *e == Io::Run("b:apply".into()))
            .unwrap();
        assert!(a < b, "{io:?}");
        assert_eq!(published(&io), ["exec.started", "exec.p0.a.applied"]);
        assert!(io.contains(&Io::Carried("exec.p0.b.applied".into())));
        assert!(io.contains(&Io::Carried("exec.p0.completed".into())));
    }

    #[test]
    fn merge_folds_only_events_queued_back_to_back() {
        let mut s = fresh(plan(&[&["a"], &["b"]]));
        let started = s.announcement();
        let p0 = s.start_phase(0).events;
        // The first phase's start joins the rollout's start.
        let merged = merge([vec![started.clone()], p0.clone()].concat());
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].stage, "exec.started");
        assert_eq!(merged[0].stages(), ["exec.started", "exec.p0.started"]);
        let Body::ExecutionStarted(e) = &merged[0].body else {
            panic!("{merged:?}")
        };
        let Body::PhaseStarted(first) = &p0[0].body else {
            unreachable!()
        };
        assert_eq!(e.first_phase.as_ref(), Some(first));
        // Apart (another flush in between), each goes as it is.
        assert_eq!(merge(p0.clone()), p0);
        assert_eq!(merge(vec![started.clone()]), vec![started]);
        // A phase's last results join its completion; a later phase's start stays apart.
        let applied = s.record_action(0, 0, Ok("a done".into())).events;
        let completed = s.complete_phase(0).events;
        let p1 = s.start_phase(1).events;
        let merged = merge([applied.clone(), completed, p1.clone()].concat());
        assert_eq!(merged.len(), 2);
        assert_eq!(
            merged[0].stages(),
            ["exec.p0.a.applied", "exec.p0.completed"]
        );
        let Body::PhaseCompleted(c) = &merged[0].body else {
            panic!("{merged:?}")
        };
        let Body::AssetUpdated(u) = &applied[0].body else {
            unreachable!()
        };
        assert_eq!(c.assets, [u.asset.clone().unwrap()]);
        assert_eq!(merged[1], p1[0]);
        // An asset change of another phase does not join a completion.
        let b = s.record_action(1, 0, Ok("b done".into())).events;
        let mut other = s.complete_phase(1).events;
        let Body::PhaseCompleted(c) = &mut other[0].body else {
            unreachable!()
        };
        c.index = 0;
        assert_eq!(merge([b.clone(), other.clone()].concat()).len(), 2);
    }

    #[test]
    fn only_a_last_healthy_completion_with_its_asset_changes_folds_into_the_end() {
        let mut s = fresh(plan(&[&["a", "b"]]));
        let started = s.announcement();
        let p0 = s.start_phase(0).events;
        let a = s.record_action(0, 0, Ok("a done".into())).events;
        let b = s.record_action(0, 1, Ok("b done".into())).events;
        let completed = s.complete_phase(0).events;
        // The completion with the asset changes right before it: what merge would publish
        // back to back before the end, as one event.
        let folded = fold_into_end(&[a.clone(), b.clone(), completed.clone()].concat()).unwrap();
        assert_eq!(
            folded.stages(),
            [
                "exec.p0.a.applied",
                "exec.p0.b.applied",
                "exec.p0.completed"
            ]
        );
        assert_eq!(
            folded,
            merge([a.clone(), b.clone(), completed.clone()].concat())[0]
        );
        // Alone (its last result saved before a stop, say) too.
        assert_eq!(fold_into_end(&completed).unwrap(), completed[0]);
        // Anything else goes out apart: an unpublished start (and a plan without phases), a
        // phase start, an empty queue, a completion that is not healthy.
        assert_eq!(fold_into_end(std::slice::from_ref(&started)), None);
        assert_eq!(fold_into_end(&[]), None);
        assert_eq!(
            fold_into_end(&[vec![started], p0.clone(), completed.clone()].concat()),
            None
        );
        assert_eq!(fold_into_end(&[p0, completed.clone()].concat()), None);
        let mut unhealthy = completed;
        let Body::PhaseCompleted(c) = &mut unhealthy[0].body else {
            unreachable!()
        };
        c.healthy = false;
        assert_eq!(fold_into_end(&unhealthy), None);
    }

    #[test]
    fn a_crash_between_the_end_and_its_save_redoes_only_the_unsaved_and_publishes_the_same_end() {
        for (name, plan, world) in scenarios() {
            let mut whole = fresh(plan.clone());
            let (full, outcome) = drive(&mut whole, &world, Crash::Never);
            if outcome != Some(Outcome::Succeeded) || whole.phases.is_empty() {
                continue;
            }
            // The end's save is the last; crash after its final event went out.
            let last = saves(&full).len();
            let mut s = fresh(plan.clone());
            let (before, ended) = drive(&mut s, &world, Crash::BeforeSave(last));
            assert_eq!(ended, None, "{name}");
            let end = |io: &[Io]| -> Vec<Io> {
                let at = io.iter().position(|e| matches!(e, Io::Final(_))).unwrap();
                let from = io[..at]
                    .iter()
                    .rposition(|e| !matches!(e, Io::Carried(_)))
                    .map_or(0, |k| k + 1);
                io[from..=at].to_vec()
            };
            assert_eq!(
                before.last(),
                Some(&Io::Final(Status::Succeeded)),
                "{name}: the end went out before its save"
            );
            let stored = saves(&before).pop().unwrap_or_else(|| fresh(plan.clone()));
            assert_ne!(stored.status, Status::Succeeded, "{name}");
            let mut resumed = State::try_from(stored.to_proto()).unwrap();
            let (after, again) = drive(&mut resumed, &world, Crash::Never);
            assert_eq!(again, Some(Outcome::Succeeded), "{name}");
            assert_eq!(resumed, whole, "{name}: same end state");
            // The same end, carrying the same events, under the same id: the stream drops it.
            assert_eq!(end(&after), end(&before), "{name}");
            assert_eq!(end(&before), end(&full), "{name}");
            // At most the one action whose result was not saved runs again.
            let again: Vec<String> = runs(&after);
            assert!(again.len() <= 1, "{name}: {again:?}");
            assert!(
                again.iter().all(|k| runs(&before).contains(k)),
                "{name}: {again:?}"
            );
            assert!(matches!(after.last(), Some(Io::Save(end)) if **end == whole));
        }
    }

    #[test]
    fn the_phase_transitions_report_themselves_and_save_only_results() {
        let mut s = fresh(plan(&[&["a"]]));
        let started = s.start_phase(0);
        assert!(!started.save);
        assert_eq!(
            started.events[0].body,
            Body::PhaseStarted(PhaseStarted {
                index: 0,
                name: "canary".into(),
                kind: PhaseKind::Canary as i32,
                asset_ids: vec!["a".into()],
            })
        );
        assert_eq!(s.phases[0].status, Status::Running);
        assert_eq!(
            s.next(),
            Next::Apply {
                phase: 0,
                steps: vec![0]
            }
        );
        let applied = s.record_action(0, 0, Ok("PUT /config: 200".into()));
        assert!(applied.save);
        assert_eq!(applied.events[0].event, "asset_updated");
        assert_eq!(applied.events[0].stage, "exec.p0.a.applied");
        assert_eq!(
            s.next(),
            Next::Check {
                phase: 0,
                steps: vec![0]
            }
        );
        let checked = s.record_check(0, 0, Ok(()));
        assert!(checked.save);
        assert_eq!(s.phases[0].steps[0].state, StepState::Healthy);
        assert_eq!(s.next(), Next::CompletePhase(0));
        let completed = s.complete_phase(0);
        assert!(!completed.save);
        assert_eq!(
            completed.events[0].body,
            Body::PhaseCompleted(PhaseCompleted {
                index: 0,
                name: "canary".into(),
                healthy: true,
                assets: vec![],
            })
        );
        assert_eq!(s.next(), Next::Succeed);
    }

    #[test]
    fn steps_without_a_health_check_stay_applied_and_are_not_probed() {
        let mut p = plan(&[&["a", "b"]]);
        p.phases[0].steps[1].health_check = None;
        let mut s = fresh(p);
        let (io, outcome) = drive(&mut s, &World::default(), Crash::Never);
        assert_eq!(outcome, Some(Outcome::Succeeded));
        assert_eq!(
            states(&s),
            [("a", StepState::Healthy), ("b", StepState::Applied)]
        );
        assert!(!io.contains(&Io::Probe("b".into())));
    }

    #[test]
    fn an_unhealthy_step_rolls_back_every_changed_step_newest_first() {
        let mut s = fresh(plan(&[&["a"], &["b", "c"], &["d", "e", "f"]]));
        let world = World {
            unhealthy: ["e"].into(),
            ..Default::default()
        };
        let (io, outcome) = drive(&mut s, &world, Crash::Never);
        assert_eq!(outcome, Some(Outcome::RolledBack));
        let rollbacks: Vec<String> = runs(&io)
            .into_iter()
            .filter(|k| k.ends_with(":rollback"))
            .collect();
        assert_eq!(
            rollbacks,
            [
                "f:rollback",
                "e:rollback",
                "d:rollback",
                "c:rollback",
                "b:rollback",
                "a:rollback"
            ]
        );
        let events = reported(&io);
        let rb = events.iter().position(|e| e == "exec.rollback").unwrap();
        assert_eq!(events[rb - 1], "exec.p2.completed");
        assert_eq!(events[rb + 1], "exec.rb.p2.f");
        assert_eq!(events.last().unwrap(), "exec.rb.p0.a");
        assert_eq!(s.status, Status::RolledBack);
        assert_eq!(
            s.error,
            "health check failed on e in wave 2: expected 200, got 503; rolled back 6 assets"
        );
        assert_eq!(
            s.phases.iter().map(|p| p.status).collect::<Vec<_>>(),
            [Status::RolledBack, Status::RolledBack, Status::Failed]
        );
        assert!(
            states(&s)
                .iter()
                .all(|(_, st)| *st == StepState::RolledBack)
        );
        assert_eq!(io.last(), Some(&Io::Final(Status::RolledBack)));
    }

    #[test]
    fn begin_rollback_names_the_changed_assets_newest_first_and_saves() {
        let mut s = fresh(plan(&[&["a"], &["b", "c"]]));
        let _ = s.start_phase(0);
        let _ = s.record_action(0, 0, Ok(String::new()));
        let _ = s.record_check(0, 0, Ok(()));
        let _ = s.complete_phase(0);
        let _ = s.start_phase(1);
        let _ = s.record_action(1, 0, Err("boom".into()));
        assert_eq!(
            s.next(),
            Next::CompletePhase(1),
            "no new action after a failure"
        );
        let _ = s.complete_phase(1);
        assert_eq!(s.phases[1].status, Status::Failed);
        let reason = "action failed on b in wave 1: boom".to_string();
        assert_eq!(s.next(), Next::BeginRollback(reason.clone()));
        let fx = s.begin_rollback(reason.clone());
        assert!(fx.save);
        assert_eq!(
            fx.events[0].body,
            Body::RollbackStarted(RollbackStarted {
                reason,
                asset_ids: vec!["a".into()],
            })
        );
        assert_eq!(s.status, Status::RollingBack);
        assert_eq!(s.next(), Next::RollBack { phase: 0, step: 0 });
        let fx = s.record_rollback(0, 0, Ok("restored".into()));
        assert_eq!(fx.events[0].stage, "exec.rb.p0.a");
        assert_eq!(s.next(), Next::EndRollback);
    }

    #[test]
    fn a_failed_action_stops_its_phase_skips_its_checks_and_rolls_back_what_changed() {
        let mut s = fresh(plan(&[&["a"], &["b", "c"], &["d"]]));
        let world = World {
            failing: ["b"].into(),
            ..Default::default()
        };
        let (io, outcome) = drive(&mut s, &world, Crash::Never);
        assert_eq!(outcome, Some(Outcome::RolledBack));
        assert_eq!(runs(&io), ["a:apply", "b:apply", "a:rollback"]);
        assert!(!io.contains(&Io::Probe("b".into())) && !io.contains(&Io::Probe("c".into())));
        assert_eq!(
            states(&s),
            [
                ("a", StepState::RolledBack),
                ("b", StepState::Failed),
                ("c", StepState::Pending),
                ("d", StepState::Pending)
            ]
        );
        assert_eq!(
            s.error,
            "action failed on b in wave 1: b said no; rolled back 1 asset"
        );
        assert!(!reported(&io).iter().any(|e| e.starts_with("exec.p2.")));
    }

    #[test]
    fn a_failed_rollback_ends_failed_and_says_what_was_undone() {
        let mut s = fresh(plan(&[&["a"], &["b", "c"]]));
        let world = World {
            unhealthy: ["c"].into(),
            stuck: ["a", "b"].into(),
            ..Default::default()
        };
        let (_, outcome) = drive(&mut s, &world, Crash::Never);
        assert_eq!(outcome, Some(Outcome::RollbackFailed));
        assert_eq!(s.status, Status::Failed);
        assert_eq!(
            s.error,
            "health check failed on c in wave 1: expected 200, got 503; rollback failed on b \
             (and 1 more): b said no; rolled back 1 of 3 assets"
        );
        // The canary's only step could not be undone: it stays succeeded.
        assert_eq!(s.phases[0].status, Status::Succeeded);

        // A step without a rollback action cannot be undone either.
        let mut p = plan(&[&["a"], &["b"]]);
        p.phases[0].steps[0].rollback = None;
        let mut s = fresh(p);
        let world = World {
            unhealthy: ["b"].into(),
            ..Default::default()
        };
        let (_, outcome) = drive(&mut s, &world, Crash::Never);
        assert_eq!(outcome, Some(Outcome::RollbackFailed));
        assert!(
            s.error.contains(
                "rollback failed on a: the step has no rollback action; rolled back 1 of 2 assets"
            ),
            "{}",
            s.error
        );
    }

    #[test]
    fn outcome_labels_are_the_metrics_ones() {
        assert_eq!(
            [
                Outcome::Succeeded,
                Outcome::RolledBack,
                Outcome::RollbackFailed,
                Outcome::Replayed
            ]
            .map(Outcome::label),
            ["succeeded", "rolled_back", "rollback_failed", "replayed"]
        );
    }

    /// The events that report what `state` holds.
    fn reported_by(state: &State) -> Vec<String> {
        let mut out = vec!["exec.started".to_string()];
        for (i, p) in state.phases.iter().enumerate() {
            if p.status != Status::Pending {
                out.push(format!("exec.p{i}.started"));
            }
            if matches!(
                p.status,
                Status::Succeeded | Status::Failed | Status::RolledBack
            ) {
                out.push(format!("exec.p{i}.completed"));
            }
            for s in &p.steps {
                let id = &s.asset_id;
                match s.state {
                    StepState::Pending => {}
                    StepState::Applied => out.push(format!("exec.p{i}.{id}.applied")),
                    StepState::Failed => out.push(format!("exec.p{i}.{id}.failed")),
                    StepState::Healthy | StepState::Unhealthy => {
                        out.push(format!("exec.p{i}.{id}.applied"));
                        out.push(format!("exec.p{i}.{id}.{}", s.state.name()));
                    }
                    StepState::RolledBack | StepState::RollbackFailed => {
                        out.push(format!("exec.p{i}.{id}.applied"));
                        out.push(format!("exec.rb.p{i}.{id}"));
                    }
                }
            }
        }
        if !state.error.is_empty() {
            out.push("exec.rollback".into());
        }
        out
    }

    #[test]
    fn every_saved_change_was_published_before_the_save() {
        for (name, plan, world) in scenarios() {
            let mut s = fresh(plan);
            let (io, outcome) = drive(&mut s, &world, Crash::Never);
            assert!(outcome.is_some(), "{name}");
            let mut seen = HashSet::new();
            for e in &io {
                match e {
                    Io::Publish(stage) | Io::Carried(stage) => {
                        assert!(
                            seen.insert(stage.clone()),
                            "{name}: {stage} published twice"
                        );
                    }
                    Io::Save(saved) => {
                        for stage in reported_by(saved) {
                            assert!(
                                seen.contains(&stage),
                                "{name}: saved before {stage} went out"
                            );
                        }
                    }
                    _ => {}
                }
            }
            // The final event goes out once, after every save but the end's; the end is
            // saved right after it when it carries the last phase's completion (a success).
            let finals: Vec<usize> = (0..io.len())
                .filter(|&k| matches!(io[k], Io::Final(_)))
                .collect();
            assert_eq!(finals.len(), 1, "{name}: {io:?}");
            let after: Vec<&Io> = io[finals[0] + 1..].iter().collect();
            match s.status {
                Status::Succeeded if !s.phases.is_empty() => assert!(
                    matches!(after.as_slice(), [Io::Save(end)] if **end == s),
                    "{name}: the end is saved right after the final event: {io:?}"
                ),
                _ => assert!(
                    after.is_empty(),
                    "{name}: the final event goes out after the last save: {io:?}"
                ),
            }
        }
    }

    #[test]
    fn a_resume_from_any_save_point_skips_recorded_steps_and_ends_the_same() {
        for (name, plan, world) in scenarios() {
            let mut whole = fresh(plan.clone());
            let (full, outcome) = drive(&mut whole, &world, Crash::Never);
            let save_count = saves(&full).len();
            let mut all_ids: Vec<String> = published(&full);
            all_ids.sort();
            for k in 1..=save_count {
                for crash in [Crash::AfterSave(k), Crash::BeforeSave(k)] {
                    let mut s = fresh(plan.clone());
                    let (before, ended) = drive(&mut s, &world, crash);
                    assert_eq!(ended, None, "{name} {crash:?}");
                    // What the store holds: the last save, or the created state.
                    let stored = saves(&before).pop().unwrap_or_else(|| fresh(plan.clone()));
                    let mut resumed = State::try_from(stored.to_proto()).unwrap();
                    let (after, again) = drive(&mut resumed, &world, Crash::Never);
                    // A crash after the last save (the end) leaves only the final event to
                    // publish again.
                    let expected = match crash {
                        Crash::AfterSave(n) if n == save_count => Some(Outcome::Replayed),
                        _ => outcome,
                    };
                    assert_eq!(again, expected, "{name} {crash:?}");
                    assert_eq!(resumed, whole, "{name} {crash:?}: same end state");

                    // Recorded steps are not run again: an action runs twice only when it
                    // ran and its result was lost (the crash before its save).
                    let mut ran: BTreeMap<String, usize> = BTreeMap::new();
                    for k in runs(&before).into_iter().chain(runs(&after)) {
                        *ran.entry(k).or_default() += 1;
                    }
                    let redone: Vec<_> = ran.iter().filter(|(_, n)| **n > 1).collect();
                    let expected: Vec<String> = runs(&full);
                    assert_eq!(
                        ran.keys().cloned().collect::<HashSet<_>>(),
                        expected.iter().cloned().collect::<HashSet<_>>(),
                        "{name} {crash:?}"
                    );
                    match crash {
                        Crash::AfterSave(_) => {
                            assert!(redone.is_empty(), "{name} {crash:?}: {redone:?}")
                        }
                        _ => assert!(redone.len() <= 1, "{name} {crash:?}: {redone:?}"),
                    }
                    // Nor are recorded health checks probed again.
                    for e in &after {
                        if let Io::Probe(id) = e {
                            let recorded = stored
                                .phases
                                .iter()
                                .flat_map(|p| &p.steps)
                                .find(|s| &s.asset_id == id)
                                .map(|s| s.state);
                            assert!(
                                matches!(recorded, Some(StepState::Pending | StepState::Applied)),
                                "{name} {crash:?}: {id} probed again though {recorded:?}"
                            );
                        }
                    }

                    // The same event ids, none new; a re-published one is a step redone.
                    let mut ids: Vec<String> = published(&before)
                        .into_iter()
                        .chain(published(&after))
                        .collect::<HashSet<_>>()
                        .into_iter()
                        .collect();
                    ids.sort();
                    assert_eq!(ids, all_ids, "{name} {crash:?}");
                    let recorded = reported_by(&stored);
                    for stage in reported(&after) {
                        assert!(
                            !recorded.contains(&stage)
                                || stage == "exec.started"
                                || stage.ends_with(".started")
                                || stage.ends_with(".completed"),
                            "{name} {crash:?}: {stage} re-published though its change was saved"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn next_treats_a_stored_failed_phase_as_the_start_of_a_rollback() {
        // A failed phase is saved only with the rollback's start, but a state that holds one
        // while running (written by hand, or an older version) still rolls back, not on.
        let mut s = fresh(plan(&[&["a"], &["b"]]));
        let _ = s.start_phase(0);
        let _ = s.record_action(0, 0, Ok(String::new()));
        let _ = s.record_check(0, 0, Err("down".into()));
        let _ = s.complete_phase(0);
        let stored = State::try_from(s.to_proto()).unwrap();
        assert_eq!(
            stored.next(),
            Next::BeginRollback("health check failed on a in canary: down".into())
        );
    }
}
