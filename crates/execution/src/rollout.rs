//! The rollout state machine: one approved plan run phase by phase, with its state (the proto
//! [`Execution`]) written to the key-value store after every change, so a restarted service
//! resumes where the last one stopped.
//!
//! ```text
//!            ┌────────── phase i (canary, wave 1, …) ─────────┐
//! RUNNING ─► │ actions (bounded, concurrent) → health checks  │ ─► next phase … ─► SUCCEEDED
//!            └────────────────────────┬───────────────────────┘
//!                 failed / unhealthy  ▼
//!            ROLLING_BACK: undo every changed asset, newest first ─► ROLLED_BACK | FAILED
//! ```
//!
//! Invariants:
//! - Every event is published *before* the state change it reports is saved, so an event is
//!   never lost: after a crash the step is redone and the event re-published with the same id
//!   (deterministic `<task>.exec.…` ids; the stream drops the copy). Steps recorded as done are
//!   skipped and their events not re-published.
//! - Events are queued and published together (one round trip, in order) right before the next
//!   save, or before anything happens that observers should see them first (a phase's actions).
//!   A save records only what was published; a change that a resume can redo without running
//!   an action again is not saved on its own but with the next one: a phase start (with its
//!   first action outcome), a phase end (with the next phase's first outcome, the rollback start,
//!   or the end). Redoing it re-publishes the same event id, which the stream drops. Every
//!   action outcome (and health-check verdict) is saved before anything else happens, so a
//!   recorded action is never run again and a phase's verdict always reflects saved outcomes.
//! - A new rollout is stored (all pending) before its `execution_started` is published; a
//!   stored rollout with nothing recorded yet publishes it again when it resumes.
//! - Actions carry idempotency keys, so redoing an action whose result was not yet saved does
//!   not apply it twice at a receiver that honours them.
//! - State writes are compare-and-set on the revision ([`crate::store::Store::update`]).
//! - Between steps the rollout asks its [`Control`] whether to go on; today only shutdown stops
//!   it (the message is redelivered and the rollout resumes), pause and cancel come later.

use crate::action::{ActionError, ActionRunner};
use crate::store::{Attempts, Store, Stored};
use crate::{Config, Error, SERVICE};
use baton_proto::event::Body;
use baton_proto::{
    AssetState, AssetStatus, AssetUpdated, Event, Execution, ExecutionStarted, ExecutionStatus,
    FailureCode, Phase, PhaseCompleted, PhaseStarted, PhaseStatus, Plan, RollbackStarted,
    TaskCompleted, subject,
};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What every rollout of a process shares.
pub(crate) struct Shared {
    /// Publishes progress and final events.
    pub bus: baton_bus::Bus,
    /// Rollout state.
    pub store: Store,
    /// Runs actions and health probes.
    pub runner: Arc<dyn ActionRunner>,
    /// Limits and defaults.
    pub config: Config,
    /// The handler's own transient failures, per task.
    pub attempts: Attempts,
    /// How often a running rollout sends an in-progress ack: `config.progress_interval`, or a
    /// third of `nats.ack_wait` when that is shorter.
    pub progress_interval: Duration,
}

/// Why a rollout stops before its end without failing. Checked between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The service is shutting down; the message is redelivered and the rollout resumes.
    Shutdown,
}

/// The flags a rollout checks between steps. Pause and cancel requests will be further flags.
#[derive(Debug, Clone)]
pub struct Control {
    /// The service's shutdown token.
    shutdown: CancellationToken,
}

impl Control {
    /// A control that stops when `shutdown` is cancelled.
    pub fn new(shutdown: CancellationToken) -> Control {
        Control { shutdown }
    }

    /// `Err` when the rollout must stop before its next step.
    pub fn check(&self) -> Result<(), Stop> {
        if self.shutdown.is_cancelled() {
            Err(Stop::Shutdown)
        } else {
            Ok(())
        }
    }

    /// Sleeps for `d`, or less when the rollout must stop.
    async fn sleep(&self, d: Duration) -> Result<(), Stop> {
        tokio::select! {
            _ = self.shutdown.cancelled() => Err(Stop::Shutdown),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }
}

/// Why [`run`] returned without reaching an end.
#[derive(Debug)]
pub(crate) enum Halt {
    /// Told to stop; the state is saved and the rollout can resume.
    Stopped(Stop),
    /// NATS or the store failed; retry later.
    Error(Error),
}

impl From<Error> for Halt {
    fn from(e: Error) -> Self {
        Halt::Error(e)
    }
}

impl From<Stop> for Halt {
    fn from(s: Stop) -> Self {
        Halt::Stopped(s)
    }
}

/// How a handled rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// Every phase healthy.
    Succeeded,
    /// A step failed and every change was undone.
    RolledBack,
    /// A step failed and at least one change could not be undone.
    RollbackFailed,
    /// The execution had already ended; its final event was published again.
    Replayed,
}

impl Finish {
    /// Metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Finish::Succeeded => "succeeded",
            Finish::RolledBack => "rolled_back",
            Finish::RollbackFailed => "rollback_failed",
            Finish::Replayed => "replayed",
        }
    }
}

/// A new execution of `plan` for the task of `cause`: every phase and asset pending.
pub(crate) fn new_execution(cause: &Event, plan: Plan) -> Execution {
    let phases = plan
        .phases
        .iter()
        .map(|p| PhaseStatus {
            name: p.name.clone(),
            kind: p.kind,
            status: ExecutionStatus::Pending as i32,
            assets: p
                .steps
                .iter()
                .map(|s| AssetStatus {
                    asset_id: asset_id(s),
                    state: AssetState::Pending as i32,
                    detail: String::new(),
                })
                .collect(),
        })
        .collect();
    Execution {
        task_id: cause.task_id.clone(),
        tenant: cause.tenant.clone(),
        status: ExecutionStatus::Running as i32,
        phases,
        current_phase: 0,
        error: String::new(),
        started_at: Some(baton_proto::now()),
        finished_at: None,
        plan: Some(plan),
    }
}

fn asset_id(step: &baton_proto::Step) -> String {
    step.asset
        .as_ref()
        .map(|a| a.id.clone())
        .unwrap_or_default()
}

/// True for statuses after which nothing more happens.
pub(crate) fn is_final(status: ExecutionStatus) -> bool {
    matches!(
        status,
        ExecutionStatus::Succeeded
            | ExecutionStatus::Failed
            | ExecutionStatus::RolledBack
            | ExecutionStatus::Cancelled
    )
}

/// Runs (or resumes) the rollout of `plan` for the task of `cause` to its end.
pub(crate) async fn run(
    shared: &Shared,
    cause: &Event,
    plan: Plan,
    control: Control,
) -> Result<Finish, Halt> {
    let fresh = new_execution(cause, plan);
    let (exec, revision) = match shared.store.create_or_load(&fresh).await? {
        Stored::Created(revision) => {
            let steps: u32 = fresh.phases.iter().map(|p| p.assets.len() as u32).sum();
            tracing::info!(task_id = %cause.task_id, phases = fresh.phases.len(), steps, "execution started");
            (fresh, revision)
        }
        Stored::Existing(mut exec, revision) => {
            if exec.plan.is_none() {
                exec.plan = fresh.plan;
            }
            check_shape(&exec)?;
            tracing::info!(task_id = %cause.task_id, status = ?exec.status(), "resuming execution");
            (*exec, revision)
        }
    };
    let mut r = Rollout {
        shared,
        cause,
        exec,
        revision,
        control,
        queued: Vec::new(),
    };
    if nothing_recorded(&r.exec) {
        // Stored before it was announced: announce it (again; the stream drops a copy).
        let phases = r.exec.phases.len() as u32;
        let steps = r.exec.phases.iter().map(|p| p.assets.len() as u32).sum();
        r.queue(
            "started",
            "exec.started",
            Body::ExecutionStarted(ExecutionStarted { phases, steps }),
        );
    }
    r.drive().await
}

/// True for a running execution none of whose phases has started (as saved).
fn nothing_recorded(exec: &Execution) -> bool {
    exec.status() == ExecutionStatus::Running
        && exec
            .phases
            .iter()
            .all(|p| p.status() == ExecutionStatus::Pending)
}

/// Checks that a stored execution has one status per phase and step of its plan.
fn check_shape(exec: &Execution) -> Result<(), Error> {
    let plan = exec
        .plan
        .as_ref()
        .map(|p| p.phases.iter().map(|p| p.steps.len()).collect::<Vec<_>>());
    let state: Vec<usize> = exec.phases.iter().map(|p| p.assets.len()).collect();
    if plan.as_ref() == Some(&state) {
        Ok(())
    } else {
        Err(Error::CorruptState {
            task_id: exec.task_id.clone(),
            reason: "its phases and assets do not match its plan".into(),
        })
    }
}

/// One rollout in progress.
struct Rollout<'a> {
    /// Process-wide handles.
    shared: &'a Shared,
    /// The `task_approved` event: the cause of every event published.
    cause: &'a Event,
    /// The state, as last saved (or about to be).
    exec: Execution,
    /// Revision of the saved state, for compare-and-set.
    revision: u64,
    /// Whether to go on.
    control: Control,
    /// Events (subject, event) to publish before the next save or publish, in order.
    queued: Vec<(String, Event)>,
}

/// A phase's verdict: `None` when healthy, else why not.
type PhaseVerdict = Option<String>;

impl Rollout<'_> {
    async fn drive(&mut self) -> Result<Finish, Halt> {
        loop {
            match self.exec.status() {
                s if is_final(s) => {
                    self.publish_final().await?;
                    return Ok(Finish::Replayed);
                }
                ExecutionStatus::RollingBack => return self.roll_back().await,
                // Running, or a status this version does not drive yet (paused, pending).
                _ => match self.run_phases().await? {
                    None => return self.succeed().await,
                    Some(reason) => self.begin_rollback(reason).await?,
                },
            }
        }
    }

    fn plan(&self) -> &Plan {
        self.exec
            .plan
            .as_ref()
            .expect("an execution always holds its plan")
    }

    /// Publishes the queued events, then saves the state.
    async fn save(&mut self) -> Result<(), Error> {
        self.flush().await?;
        self.revision = self.shared.store.update(&self.exec, self.revision).await?;
        Ok(())
    }

    /// Queues the event `baton.execution.<event>` with id `<task>.<stage>`.
    fn queue(&mut self, event: &str, stage: &str, body: Body) {
        self.queued.push((
            subject::execution(event),
            self.cause.follow(stage, SERVICE, body),
        ));
    }

    /// Publishes the queued events in order, awaiting their acks together.
    async fn flush(&mut self) -> Result<(), Error> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let batch: Vec<(&str, &Event)> = self.queued.iter().map(|(s, e)| (s.as_str(), e)).collect();
        self.shared.bus.publish_all(&batch).await?;
        self.queued.clear();
        Ok(())
    }

    /// Publishes the queued events and then this one.
    async fn publish(&mut self, event: &str, stage: &str, body: Body) -> Result<(), Error> {
        self.queue(event, stage, body);
        self.flush().await
    }

    /// Runs the phases not yet succeeded; `Some(reason)` when one failed.
    async fn run_phases(&mut self) -> Result<PhaseVerdict, Halt> {
        for i in 0..self.exec.phases.len() {
            if self.exec.phases[i].status() == ExecutionStatus::Succeeded {
                continue;
            }
            if let Some(reason) = self.run_phase(i).await? {
                return Ok(Some(reason));
            }
        }
        Ok(None)
    }

    async fn run_phase(&mut self, i: usize) -> Result<PhaseVerdict, Halt> {
        self.control.check()?;
        let phase: Phase = self.plan().phases[i].clone();
        let idx = i as u32;
        if self.exec.phases[i].status() == ExecutionStatus::Pending {
            let asset_ids = self.exec.phases[i]
                .assets
                .iter()
                .map(|a| a.asset_id.clone())
                .collect();
            let body = Body::PhaseStarted(PhaseStarted {
                index: idx,
                name: phase.name.clone(),
                kind: phase.kind,
                asset_ids,
            });
            self.queue("phase_started", &format!("exec.p{i}.started"), body);
            self.exec.phases[i].status = ExecutionStatus::Running as i32;
            self.exec.current_phase = idx;
            tracing::info!(task_id = %self.exec.task_id, phase = %phase.name, index = i, "phase started");
        }
        // Announce the phase before its actions run; its start is saved with its first outcome
        // (a resume before that starts the phase again, with the same event id).
        self.flush().await?;

        self.apply_phase(i, &phase).await?;
        self.control.check()?;
        if !self.any_in_phase(i, AssetState::Failed) {
            self.check_phase(i, &phase).await?;
            self.control.check()?;
        }

        let failure = self.exec.phases[i]
            .assets
            .iter()
            .find_map(|a| match a.state() {
                AssetState::Failed => Some(format!(
                    "action failed on {} in {}: {}",
                    a.asset_id, phase.name, a.detail
                )),
                AssetState::Unhealthy => Some(format!(
                    "health check failed on {} in {}: {}",
                    a.asset_id, phase.name, a.detail
                )),
                _ => None,
            });
        let healthy = failure.is_none();
        let body = Body::PhaseCompleted(PhaseCompleted {
            index: idx,
            name: phase.name.clone(),
            healthy,
        });
        self.queue("phase_completed", &format!("exec.p{i}.completed"), body);
        self.exec.phases[i].status = if healthy {
            ExecutionStatus::Succeeded
        } else {
            ExecutionStatus::Failed
        } as i32;
        // Published and saved with the next change: the next phase's start and first outcome,
        // the rollback start or the end. A resume before that finds every outcome of the phase
        // saved, runs nothing, and completes the phase again with the same event.
        tracing::info!(task_id = %self.exec.task_id, phase = %phase.name, index = i, healthy, "phase completed");
        Ok(failure)
    }

    fn any_in_phase(&self, i: usize, state: AssetState) -> bool {
        self.exec.phases[i]
            .assets
            .iter()
            .any(|a| a.state() == state)
    }

    /// Runs the actions of the phase's pending steps, at most `max_concurrent_steps` at once;
    /// none is started after one failed or the rollout was told to stop.
    async fn apply_phase(&mut self, i: usize, phase: &Phase) -> Result<(), Halt> {
        let pending: Vec<usize> = (0..phase.steps.len())
            .filter(|&j| self.exec.phases[i].assets[j].state() == AssetState::Pending)
            .collect();
        let runner = self.shared.runner.clone();
        let control = self.control.clone();
        // After a restart, a failure recorded earlier in this phase still stops new actions.
        let failed = Arc::new(AtomicBool::new(self.any_in_phase(i, AssetState::Failed)));
        let steps = phase.steps.clone();
        let mut results = futures::stream::iter(pending)
            .map(move |j| {
                let (runner, control, failed) = (runner.clone(), control.clone(), failed.clone());
                let action = steps[j].action.clone();
                async move {
                    if control.check().is_err() || failed.load(Ordering::SeqCst) {
                        return (j, None);
                    }
                    let result = match &action {
                        Some(a) => runner.run(a).await,
                        None => Err(ActionError::Unsupported("the step has no action".into())),
                    };
                    if result.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    (j, Some(result))
                }
            })
            .buffer_unordered(self.shared.config.max_concurrent_steps);
        while let Some((j, result)) = results.next().await {
            let Some(result) = result else { continue };
            let (state, detail, suffix) = match result {
                Ok(outcome) => (AssetState::Applied, outcome.detail, "applied"),
                Err(e) => (AssetState::Failed, e.to_string(), "failed"),
            };
            let id = &self.exec.phases[i].assets[j].asset_id;
            let stage = format!("exec.p{i}.{id}.{suffix}");
            self.update_asset(i, j, state, detail, &stage).await?;
        }
        Ok(())
    }

    /// Health-checks the phase's applied assets that have a check, at most
    /// `max_concurrent_steps` at once.
    async fn check_phase(&mut self, i: usize, phase: &Phase) -> Result<(), Halt> {
        let due: Vec<usize> = (0..phase.steps.len())
            .filter(|&j| {
                self.exec.phases[i].assets[j].state() == AssetState::Applied
                    && phase.steps[j].health_check.is_some()
            })
            .collect();
        let runner = self.shared.runner.clone();
        let control = self.control.clone();
        let config = self.shared.config.clone();
        let steps = phase.steps.clone();
        let mut results = futures::stream::iter(due)
            .map(move |j| {
                let (runner, control, config) = (runner.clone(), control.clone(), config.clone());
                let check = steps[j].health_check.clone().unwrap_or_default();
                async move { (j, check_health(&*runner, &control, &config, &check).await) }
            })
            .buffer_unordered(self.shared.config.max_concurrent_steps);
        let mut stopped = None;
        while let Some((j, result)) = results.next().await {
            let (state, detail, suffix) = match result {
                Ok(Ok(())) => (AssetState::Healthy, String::new(), "healthy"),
                Ok(Err(detail)) => (AssetState::Unhealthy, detail, "unhealthy"),
                Err(stop) => {
                    stopped = Some(stop);
                    continue;
                }
            };
            let id = &self.exec.phases[i].assets[j].asset_id;
            let stage = format!("exec.p{i}.{id}.{suffix}");
            self.update_asset(i, j, state, detail, &stage).await?;
        }
        match stopped {
            Some(stop) => Err(Halt::Stopped(stop)),
            None => Ok(()),
        }
    }

    /// Publishes an asset's new state, then saves it.
    async fn update_asset(
        &mut self,
        i: usize,
        j: usize,
        state: AssetState,
        detail: String,
        stage: &str,
    ) -> Result<(), Error> {
        let status = AssetStatus {
            asset_id: self.exec.phases[i].assets[j].asset_id.clone(),
            state: state as i32,
            detail,
        };
        tracing::info!(task_id = %self.exec.task_id, asset = %status.asset_id, state = ?state, detail = %status.detail, "asset updated");
        let body = Body::AssetUpdated(AssetUpdated {
            phase_index: i as u32,
            asset: Some(status.clone()),
        });
        self.publish("asset_updated", stage, body).await?;
        self.exec.phases[i].assets[j] = status;
        self.save().await
    }

    /// Assets whose action took effect (and may have been rolled back since), newest first:
    /// later phases before earlier ones, later steps before earlier ones.
    fn changed(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (i, p) in self.exec.phases.iter().enumerate() {
            for (j, a) in p.assets.iter().enumerate() {
                if matches!(
                    a.state(),
                    AssetState::Applied
                        | AssetState::Healthy
                        | AssetState::Unhealthy
                        | AssetState::RolledBack
                        | AssetState::RollbackFailed
                ) {
                    out.push((i, j));
                }
            }
        }
        out.reverse();
        out
    }

    async fn begin_rollback(&mut self, reason: String) -> Result<(), Halt> {
        let asset_ids = self
            .changed()
            .iter()
            .map(|&(i, j)| self.exec.phases[i].assets[j].asset_id.clone())
            .collect();
        tracing::warn!(task_id = %self.exec.task_id, %reason, "rolling back");
        let body = Body::RollbackStarted(RollbackStarted {
            reason: reason.clone(),
            asset_ids,
        });
        self.publish("rollback_started", "exec.rollback", body)
            .await?;
        self.exec.error = reason;
        self.exec.status = ExecutionStatus::RollingBack as i32;
        self.save().await?;
        Ok(())
    }

    /// Runs the rollback action of every changed asset not yet rolled back, newest first,
    /// then ends the execution.
    async fn roll_back(&mut self) -> Result<Finish, Halt> {
        let changed = self.changed();
        for &(i, j) in &changed {
            if matches!(
                self.exec.phases[i].assets[j].state(),
                AssetState::RolledBack | AssetState::RollbackFailed
            ) {
                continue;
            }
            self.control.check()?;
            let rollback = self.plan().phases[i].steps[j].rollback.clone();
            let result = match &rollback {
                Some(action) => self
                    .shared
                    .runner
                    .run(action)
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("the step has no rollback action".to_string()),
            };
            let (state, detail) = match result {
                Ok(outcome) => (AssetState::RolledBack, outcome.detail),
                Err(detail) => (AssetState::RollbackFailed, detail),
            };
            let stage = format!("exec.rb.p{i}.{}", self.exec.phases[i].assets[j].asset_id);
            self.update_asset(i, j, state, detail, &stage).await?;
        }

        let failed: Vec<&AssetStatus> = changed
            .iter()
            .map(|&(i, j)| &self.exec.phases[i].assets[j])
            .filter(|a| a.state() == AssetState::RollbackFailed)
            .collect();
        let undone = changed.len() - failed.len();
        let (status, finish) = match failed.first() {
            None => {
                let noun = if undone == 1 { "asset" } else { "assets" };
                self.exec.error = format!("{}; rolled back {undone} {noun}", self.exec.error);
                (ExecutionStatus::RolledBack, Finish::RolledBack)
            }
            Some(first) => {
                let more = if failed.len() > 1 {
                    format!(" (and {} more)", failed.len() - 1)
                } else {
                    String::new()
                };
                self.exec.error = format!(
                    "{}; rollback failed on {}{more}: {}; rolled back {undone} of {} assets",
                    self.exec.error,
                    first.asset_id,
                    first.detail,
                    changed.len()
                );
                (ExecutionStatus::Failed, Finish::RollbackFailed)
            }
        };
        for p in &mut self.exec.phases {
            let touched = p.assets.iter().any(|a| a.state() == AssetState::RolledBack);
            if touched && p.status() == ExecutionStatus::Succeeded {
                p.status = ExecutionStatus::RolledBack as i32;
            }
        }
        self.exec.status = status as i32;
        self.exec.finished_at = Some(baton_proto::now());
        self.save().await?;
        tracing::warn!(task_id = %self.exec.task_id, error = %self.exec.error, "execution failed");
        self.publish_final().await?;
        Ok(finish)
    }

    async fn succeed(&mut self) -> Result<Finish, Halt> {
        self.exec.status = ExecutionStatus::Succeeded as i32;
        self.exec.finished_at = Some(baton_proto::now());
        self.save().await?;
        tracing::info!(task_id = %self.exec.task_id, "execution succeeded");
        self.publish_final().await?;
        Ok(Finish::Succeeded)
    }

    /// Publishes `task_completed` or `task_failed` for a finished execution (saved, so nothing
    /// is queued).
    async fn publish_final(&self) -> Result<(), Error> {
        debug_assert!(self.queued.is_empty(), "events queued behind the final one");
        let event = final_event(self.cause, &self.exec);
        let subject = match event.body {
            Some(Body::TaskCompleted(_)) => subject::TASK_COMPLETED,
            _ => subject::TASK_FAILED,
        };
        self.shared.bus.publish(subject, &event).await?;
        Ok(())
    }
}

/// The final event of a finished execution (`<task>.completed` or `<task>.failed`).
pub(crate) fn final_event(cause: &Event, exec: &Execution) -> Event {
    if exec.status() == ExecutionStatus::Succeeded {
        return cause.follow(
            "completed",
            SERVICE,
            Body::TaskCompleted(TaskCompleted {
                execution: Some(exec.clone()),
            }),
        );
    }
    let code = match exec.status() {
        ExecutionStatus::RolledBack => FailureCode::RolledBack,
        ExecutionStatus::Cancelled => FailureCode::Cancelled,
        _ => FailureCode::RollbackFailed,
    };
    cause.fail(SERVICE, code, exec.error.clone(), Some(exec.clone()))
}

/// Probes `check` up to its attempts (config default when 0), pausing its interval between
/// attempts. `Ok(Ok)` healthy, `Ok(Err(detail))` unhealthy, `Err` told to stop.
async fn check_health(
    runner: &dyn ActionRunner,
    control: &Control,
    config: &Config,
    check: &baton_proto::HealthCheck,
) -> Result<Result<(), String>, Stop> {
    let expect = if check.expect_status == 0 {
        config.health_check_expect_status
    } else {
        check.expect_status as u16
    };
    let attempts = if check.attempts == 0 {
        config.health_check_attempts
    } else {
        check.attempts
    }
    .max(1);
    let interval = if check.interval_ms == 0 {
        config.health_check_interval
    } else {
        Duration::from_millis(u64::from(check.interval_ms))
    };
    let mut last = String::new();
    for attempt in 1..=attempts {
        control.check()?;
        match runner.probe(check, expect).await {
            Ok(()) => return Ok(Ok(())),
            Err(detail) => last = detail,
        }
        if attempt < attempts {
            control.sleep(interval).await?;
        }
    }
    Ok(Err(last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{Asset, Step};

    fn plan() -> Plan {
        let step = |id: &str| Step {
            asset: Some(Asset {
                id: id.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Plan {
            task_id: "t1".into(),
            phases: vec![
                Phase {
                    name: "canary".into(),
                    steps: vec![step("a")],
                    ..Default::default()
                },
                Phase {
                    name: "wave 1".into(),
                    steps: vec![step("b"), step("c")],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn cause() -> Event {
        Event {
            event_id: "t1.approved".into(),
            task_id: "t1".into(),
            tenant: "acme".into(),
            ..Default::default()
        }
    }

    #[test]
    fn new_execution_has_every_asset_pending() {
        let e = new_execution(&cause(), plan());
        assert_eq!(e.status(), ExecutionStatus::Running);
        assert_eq!(e.tenant, "acme");
        let ids: Vec<_> = e
            .phases
            .iter()
            .flat_map(|p| p.assets.iter().map(|a| a.asset_id.as_str()))
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(
            e.phases
                .iter()
                .all(|p| p.status() == ExecutionStatus::Pending)
        );
        assert!(
            e.phases
                .iter()
                .flat_map(|p| &p.assets)
                .all(|a| a.state() == AssetState::Pending)
        );
    }

    #[test]
    fn final_event_codes_follow_the_status() {
        let mut e = new_execution(&cause(), plan());
        e.status = ExecutionStatus::Succeeded as i32;
        let ev = final_event(&cause(), &e);
        assert_eq!(ev.event_id, "t1.completed");
        assert!(matches!(ev.body, Some(Body::TaskCompleted(_))));
        for (status, code) in [
            (ExecutionStatus::RolledBack, "rolled_back"),
            (ExecutionStatus::Failed, "rollback_failed"),
            (ExecutionStatus::Cancelled, "cancelled"),
        ] {
            e.status = status as i32;
            e.error = "why".into();
            let ev = final_event(&cause(), &e);
            assert_eq!(ev.event_id, "t1.failed");
            let Some(Body::TaskFailed(f)) = ev.body else {
                panic!("not task_failed")
            };
            assert_eq!(
                (f.stage.as_str(), f.code.as_str(), f.reason.as_str()),
                ("execution", code, "why")
            );
        }
    }

    #[test]
    fn only_a_running_execution_with_no_phase_started_has_nothing_recorded() {
        let mut e = new_execution(&cause(), plan());
        assert!(nothing_recorded(&e));
        e.phases[0].status = ExecutionStatus::Running as i32;
        assert!(!nothing_recorded(&e));
        let mut empty = new_execution(&cause(), Plan::default());
        assert!(nothing_recorded(&empty));
        empty.status = ExecutionStatus::Succeeded as i32;
        assert!(!nothing_recorded(&empty));
    }

    #[test]
    fn only_finished_statuses_are_final() {
        assert!(is_final(ExecutionStatus::RolledBack));
        assert!(!is_final(ExecutionStatus::Running));
        assert!(!is_final(ExecutionStatus::RollingBack));
        assert!(!is_final(ExecutionStatus::Paused));
    }
}
