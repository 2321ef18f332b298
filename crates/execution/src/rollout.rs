//! The rollout state machine: one approved plan run phase by phase, with its state written to
//! the key-value store after every change, so a restarted service resumes where the last one
//! stopped.
//!
//! ```text
//!            ┌────────── phase i (canary, wave 1, …) ─────────┐
//! RUNNING ─► │ actions (bounded, concurrent) → health checks  │ ─► next phase … ─► SUCCEEDED
//!            └────────────────────────┬───────────────────────┘
//!                 failed / unhealthy  ▼
//!            ROLLING_BACK: undo every changed asset, newest first ─► ROLLED_BACK | FAILED
//! ```
//!
//! Two layers: [`state`] is the machine itself, without I/O — [`State::next`] says what to do
//! next and each transition returns the events to publish and whether to save — and this
//! module is the thin shell that does it: runs actions and probes through the runner, publishes
//! events, saves the state, and asks its [`Control`] between steps whether to go on.
//!
//! Invariants:
//! - Every event is published *before* the state change it reports is saved, so an event is
//!   never lost: after a crash the step is redone and the event re-published with the same id
//!   (deterministic `<task>.exec.…` ids; the stream drops the copy). Steps recorded as done are
//!   skipped and their events not re-published. That holds for the end too: a success's
//!   `task_completed` goes out before the end is saved (below).
//! - Events are queued and published together (one round trip, in order) right before the next
//!   save, or before anything happens that observers should see them first (a phase's actions).
//!   Those queued back to back are merged as they go out ([`state::merge`]: the first phase's
//!   start into `execution_started`, a phase's last asset changes into its `phase_completed`),
//!   each merged event keeping its own id; the queue holds nothing across an action, probe or
//!   rollback action, so what is merged never hides a change an observer could have seen
//!   before the next step. A resume rebuilds the same queue from the saved state, so it
//!   re-publishes the same merged event under the same id.
//!   A save records only what was published; a change that a resume can redo without running
//!   an action again is not saved on its own but with the next one: a phase start (with its
//!   first action outcome), a phase end (with the next phase's first outcome, the rollback start,
//!   or the end). Redoing it re-publishes the same event id, which the stream drops.
//! - At a success the queue normally holds just the last phase's completion with its last
//!   asset changes ([`state::fold_into_end`]): it rides in the final `task_completed`
//!   (`TaskCompleted.last_phase`), which is published (one round trip) and *then* the end is
//!   saved — one publish and one write where there were two publishes and a write. A crash in
//!   between resumes from the previous save, redoes at most the one action whose result was
//!   not saved (its idempotency key), rebuilds the same queue and re-publishes the same end
//!   under `<task>.completed`, which the stream drops (within its duplicate window, like
//!   every re-published event). Any other queue is saved (published) first and the final
//!   event goes out alone, as does every rollback's `task_failed`; an ended rollout's replay
//!   re-publishes the plain final event (its id is the same).
//! - Every action outcome (and health-check verdict, rollback start and rollback outcome) is
//!   saved before the rollout touches the outside world again — before the next action, probe
//!   or rollback action starts, and before the end — so a recorded action is never run again and
//!   a phase's verdict always reflects saved outcomes. Within a batch of concurrent actions or
//!   probes each result is saved as it comes while others are still running; the batch's last
//!   result rides with the next save (the next phase's start, the rollback start or the end), so
//!   a one-step phase costs one save, not two. A crash before that save redoes at most that one
//!   action (idempotency keys make it harmless) and re-publishes its event under the same id.
//!   A rollout stopped by its [`Control`] saves what it holds before it returns.
//! - A new rollout is stored (all pending) before its `execution_started` is published; a
//!   stored rollout with nothing recorded yet publishes it again when it resumes.
//! - Actions carry idempotency keys, so redoing an action whose result was not yet saved does
//!   not apply it twice at a receiver that honours them.
//! - State writes are compare-and-set on the revision ([`crate::store::Store::update`]).
//! - Before each phase start, batch of actions or probes, phase completion and rollback action
//!   the rollout asks its [`Control`] whether to go on; today only shutdown says no (an
//!   [`Interrupt`]: the message is redelivered and the rollout resumes), pause and cancel come
//!   later.
//!
//! The names of how a rollout run returns, one per idea:
//! - [`Interrupt`]: a request to stop before the next step (shutdown), from the [`Control`].
//! - `Halt`: why `run` returned without an ending — interrupted, or failed on NATS or the
//!   store; the rollout resumes from its saved state either way.
//! - [`Outcome`]: how a rollout ended (succeeded, rolled back, rollback failed, replayed).

pub mod state;

use crate::runner::{ActionError, ActionRunner, ProbeError};
use crate::store::{Attempts, Store, Stored};
use crate::{Config, Error, SERVICE};
use baton_proto::event::Body;
use baton_proto::{
    Event, Execution, ExecutionStatus, FailureCode, HealthCheck, Plan, TaskCompleted, subject,
};
use futures::StreamExt;
use state::{Effects, Emit, Next};
pub use state::{Outcome, State};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// What every rollout of a process shares.
pub(crate) struct Shared {
    /// Publishes progress and final events.
    pub bus: baton_bus::Bus,
    /// Rollout state.
    pub store: Store,
    /// Runs actions and health probes (the [`Dispatcher`](crate::Dispatcher) of the
    /// registered runners).
    pub runner: Arc<dyn ActionRunner>,
    /// Limits and defaults.
    pub config: Config,
    /// The handler's own transient failures, per task.
    pub attempts: Attempts,
    /// How often a running rollout sends an in-progress ack: `config.progress_interval`, or a
    /// third of `nats.ack_wait` when that is shorter.
    pub progress_interval: Duration,
    /// Keys whose signature on `task_approved` is trusted (`execution.trusted_keys`).
    pub trusted: baton_runtime::signing::TrustedKeys,
}

/// A request to stop a rollout before its next step, without failing it. Checked between
/// steps by [`Control::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
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
    /// A control that interrupts when `shutdown` is cancelled.
    pub fn new(shutdown: CancellationToken) -> Control {
        Control { shutdown }
    }

    /// `Err` when the rollout must stop before its next step.
    pub fn check(&self) -> Result<(), Interrupt> {
        if self.shutdown.is_cancelled() {
            Err(Interrupt::Shutdown)
        } else {
            Ok(())
        }
    }

    /// Sleeps for `d`, or less when the rollout must stop.
    async fn sleep(&self, d: Duration) -> Result<(), Interrupt> {
        tokio::select! {
            _ = self.shutdown.cancelled() => Err(Interrupt::Shutdown),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }
}

/// Why [`run`] returned without an [`Outcome`]. Either way the state is saved as far as it
/// got and the rollout resumes from it on redelivery.
#[derive(Debug)]
pub(crate) enum Halt {
    /// Told to stop.
    Interrupted(Interrupt),
    /// NATS or the store failed (or another handler owns the rollout: [`Error::Conflict`]).
    Failed(Error),
}

impl From<Error> for Halt {
    fn from(e: Error) -> Self {
        Halt::Failed(e)
    }
}

impl From<Interrupt> for Halt {
    fn from(i: Interrupt) -> Self {
        Halt::Interrupted(i)
    }
}

/// Runs (or resumes) the rollout of `plan` for the task of `cause` to its end.
pub(crate) async fn run(
    shared: &Shared,
    cause: &Event,
    plan: Plan,
    control: Control,
) -> Result<Outcome, Halt> {
    let fresh = State::new(&cause.task_id, &cause.tenant, plan, baton_proto::now());
    let (state, revision) = match shared.store.create_or_load(&fresh.to_proto()).await? {
        Stored::Created(revision) => {
            let steps: usize = fresh.phases.iter().map(|p| p.steps.len()).sum();
            tracing::info!(task_id = %cause.task_id, phases = fresh.phases.len(), steps, "execution started");
            (fresh, revision)
        }
        Stored::Existing(exec, revision) => {
            let mut exec = *exec;
            if exec.plan.is_none() {
                exec.plan = Some(fresh.plan);
            }
            let state = State::try_from(exec)?;
            tracing::info!(task_id = %cause.task_id, status = ?state.status, "resuming execution");
            (state, revision)
        }
    };
    let mut shell = Shell {
        shared,
        cause,
        state,
        revision,
        control,
        queued: Vec::new(),
        unsaved: false,
    };
    if shell.state.nothing_recorded() {
        // Stored before it was announced: announce it (again; the stream drops a copy).
        let started = shell.state.announcement();
        shell.queue(started);
    }
    let result = shell.drive().await;
    if let Err(Halt::Interrupted(_)) = &result
        && shell.unsaved
    {
        // Stopped between a result and its save: keep the result, so the resumed rollout does
        // not run that action again. Failing here only means it will.
        if let Err(e) = shell.save().await {
            tracing::warn!(task_id = %cause.task_id, error = %e, "cannot save the rollout's last result before stopping; it is redone on resume");
        }
    }
    result
}

/// One rollout in progress: the state and the I/O around it.
struct Shell<'a> {
    /// Process-wide handles.
    shared: &'a Shared,
    /// The `task_approved` event: the cause of every event published.
    cause: &'a Event,
    /// The state, as last saved (or about to be).
    state: State,
    /// Revision of the saved state, for compare-and-set.
    revision: u64,
    /// Whether to go on.
    control: Control,
    /// Events to publish before the next save or action, in order ([`state::merge`]d when
    /// they go out).
    queued: Vec<Emit>,
    /// A change that must be saved before the rollout touches the outside world again (the
    /// next action, probe or rollback action) or ends: see the module's invariants.
    unsaved: bool,
}

impl Shell<'_> {
    /// Does what the state says next until the rollout ends.
    async fn drive(&mut self) -> Result<Outcome, Halt> {
        let task_id = self.cause.task_id.as_str();
        // `rollout.phase`, for exported traces only: from a phase's start to its completion,
        // with the index of the phase it belongs to. A rollout resumed in the middle of a phase
        // (its start was saved before the process died) opens the span when it next works in
        // that phase, marked `resumed`, so the phase's remaining actions and checks still sit
        // under their phase.
        let mut phase_span = (tracing::Span::none(), None::<usize>);
        let resumed_span = |state: &state::State, i: usize| {
            baton_bus::exported_span!(
                "rollout.phase",
                task_id,
                phase = %state.phases[i].name,
                index = i,
                resumed = true,
                healthy = tracing::field::Empty,
            )
        };
        loop {
            match self.state.next() {
                Next::Replay => {
                    self.publish_final(None).await?;
                    return Ok(Outcome::Replayed);
                }
                Next::StartPhase(i) => {
                    self.control.check()?;
                    tracing::info!(%task_id, phase = %self.state.phases[i].name, index = i, "phase started");
                    phase_span = (
                        baton_bus::exported_span!(
                            "rollout.phase",
                            task_id,
                            phase = %self.state.phases[i].name,
                            index = i,
                            healthy = tracing::field::Empty,
                        ),
                        Some(i),
                    );
                    let effects = self.state.start_phase(i);
                    self.take(effects);
                }
                Next::Apply { phase, steps } => {
                    self.control.check()?;
                    // Announce what is queued (the phase's start) and save the results so far
                    // before its actions run.
                    self.settle().await?;
                    if phase_span.1 != Some(phase) {
                        phase_span = (resumed_span(&self.state, phase), Some(phase));
                    }
                    let span = phase_span.0.clone();
                    self.apply(phase, steps).instrument(span).await?;
                }
                Next::Check { phase, steps } => {
                    self.control.check()?;
                    self.settle().await?;
                    if phase_span.1 != Some(phase) {
                        phase_span = (resumed_span(&self.state, phase), Some(phase));
                    }
                    let span = phase_span.0.clone();
                    self.check(phase, steps).instrument(span).await?;
                }
                Next::CompletePhase(i) => {
                    self.control.check()?;
                    let effects = self.state.complete_phase(i);
                    let healthy = self.state.phases[i].status == state::Status::Succeeded;
                    tracing::info!(%task_id, phase = %self.state.phases[i].name, index = i, healthy, "phase completed");
                    phase_span.0.record("healthy", healthy);
                    phase_span = (tracing::Span::none(), None);
                    self.take(effects);
                }
                Next::BeginRollback(reason) => {
                    tracing::warn!(%task_id, %reason, "rolling back");
                    let effects = self.state.begin_rollback(reason);
                    self.take(effects);
                }
                Next::RollBack { phase, step } => {
                    self.control.check()?;
                    self.settle().await?;
                    let rollback = self.state.plan.phases[phase].steps[step].rollback.clone();
                    let result = match &rollback {
                        Some(action) => self
                            .shared
                            .runner
                            .run(action)
                            .await
                            .map(|o| o.detail)
                            .map_err(|e| e.to_string()),
                        None => Err("the step has no rollback action".to_string()),
                    };
                    let effects = self.state.record_rollback(phase, step, result);
                    self.take(effects);
                }
                Next::Succeed => {
                    let outcome = self.state.succeed(baton_proto::now());
                    match state::fold_into_end(&self.queued) {
                        Some(Emit {
                            body: Body::PhaseCompleted(last),
                            ..
                        }) => {
                            // One message for the last phase's completion and the end, then the
                            // save: a crash in between resumes from the previous save and
                            // publishes the same end again under its id, which the stream drops.
                            self.queued.clear();
                            self.publish_final(Some(last)).await?;
                            self.write().await?;
                            tracing::info!(%task_id, "execution succeeded");
                        }
                        _ => {
                            self.save().await?;
                            tracing::info!(%task_id, "execution succeeded");
                            self.publish_final(None).await?;
                        }
                    }
                    return Ok(outcome);
                }
                Next::EndRollback => {
                    let outcome = self.state.end_rollback(baton_proto::now());
                    self.save().await?;
                    tracing::warn!(%task_id, error = %self.state.error, "execution failed");
                    self.publish_final(None).await?;
                    return Ok(outcome);
                }
            }
        }
    }

    /// Queues a transition's events and, when it asks for a save, marks the state unsaved: the
    /// save happens at the next [`Shell::settle`] (before the next action, probe or rollback
    /// action), at the next result of a batch still running, or at the end.
    fn take(&mut self, effects: Effects) {
        for emit in effects.events {
            if let Body::AssetUpdated(u) = &emit.body
                && let Some(a) = &u.asset
            {
                tracing::info!(task_id = %self.cause.task_id, asset = %a.asset_id, state = ?a.state(), detail = %a.detail, "asset updated");
            }
            self.queue(emit);
        }
        self.unsaved |= effects.save;
    }

    /// Before the rollout touches the outside world: publishes the queued events and saves the
    /// state when it holds an unsaved change.
    async fn settle(&mut self) -> Result<(), Error> {
        if self.unsaved {
            self.save().await
        } else {
            self.flush().await
        }
    }

    /// Publishes the queued events, then saves the state.
    async fn save(&mut self) -> Result<(), Error> {
        self.flush().await?;
        self.write().await
    }

    /// Saves the state, publishing nothing: only once what it reports went out.
    async fn write(&mut self) -> Result<(), Error> {
        self.revision = self
            .shared
            .store
            .update(&self.state.to_proto(), self.revision)
            .await?;
        self.unsaved = false;
        Ok(())
    }

    /// Queues the event `baton.execution.<event>` with id `<task>.<stage>`.
    fn queue(&mut self, emit: Emit) {
        self.queued.push(emit);
    }

    /// Publishes the queued events in order, those published back to back merged
    /// ([`state::merge`]), awaiting their acks together.
    async fn flush(&mut self) -> Result<(), Error> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let events: Vec<(String, Event)> = state::merge(std::mem::take(&mut self.queued))
            .into_iter()
            .map(|emit| {
                (
                    subject::execution(emit.event),
                    self.cause.follow(&emit.stage, SERVICE, emit.body),
                )
            })
            .collect();
        let batch: Vec<(&str, &Event)> = events.iter().map(|(s, e)| (s.as_str(), e)).collect();
        // On failure the rollout halts (see `run`) and its resume, from the saved state, queues
        // these again.
        self.shared.bus.publish_all(&batch).await?;
        Ok(())
    }

    /// Runs the actions of `steps` of phase `i`, at most `max_concurrent_steps` at once,
    /// recording (publishing and saving) each result as it comes while others are still due —
    /// the last one is saved with the next change — none is started after one failed or the
    /// rollout was told to stop.
    async fn apply(&mut self, i: usize, steps: Vec<usize>) -> Result<(), Halt> {
        let mut due = steps.len();
        let runner = self.shared.runner.clone();
        let control = self.control.clone();
        let failed = Arc::new(AtomicBool::new(false));
        let plan_steps = self.state.plan.phases[i].steps.clone();
        let mut results = futures::stream::iter(steps)
            .map(move |j| {
                let (runner, control, failed) = (runner.clone(), control.clone(), failed.clone());
                let action = plan_steps[j].action.clone();
                let span = baton_bus::exported_span!(
                    "rollout.action",
                    step = j,
                    asset = plan_steps[j]
                        .asset
                        .as_ref()
                        .map(|a| a.name.as_str())
                        .unwrap_or(""),
                    ok = tracing::field::Empty,
                );
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
                    tracing::Span::current().record("ok", result.is_ok());
                    (j, Some(result))
                }
                .instrument(span)
            })
            .buffer_unordered(self.shared.config.max_concurrent_steps);
        while let Some((j, result)) = results.next().await {
            due -= 1;
            let Some(result) = result else { continue };
            let result = result.map(|o| o.detail).map_err(|e| e.to_string());
            let effects = self.state.record_action(i, j, result);
            self.take(effects);
            if due > 0 {
                self.save().await?;
            }
        }
        Ok(())
    }

    /// Probes the health checks of `steps` of phase `i`, at most `max_concurrent_steps` at
    /// once, recording each verdict as it comes (saved at once while others are still due, the
    /// last one with the next change).
    async fn check(&mut self, i: usize, steps: Vec<usize>) -> Result<(), Halt> {
        let mut due = steps.len();
        let runner = self.shared.runner.clone();
        let control = self.control.clone();
        let config = self.shared.config.clone();
        let plan_steps = self.state.plan.phases[i].steps.clone();
        let mut results = futures::stream::iter(steps)
            .map(move |j| {
                let (runner, control, config) = (runner.clone(), control.clone(), config.clone());
                let check = plan_steps[j].health_check.clone().unwrap_or_default();
                let span = baton_bus::exported_span!(
                    "rollout.health_check",
                    step = j,
                    asset = plan_steps[j]
                        .asset
                        .as_ref()
                        .map(|a| a.name.as_str())
                        .unwrap_or(""),
                );
                async move { (j, check_health(&*runner, &control, &config, &check).await) }
                    .instrument(span)
            })
            .buffer_unordered(self.shared.config.max_concurrent_steps);
        let mut interrupted = None;
        while let Some((j, result)) = results.next().await {
            due -= 1;
            match result {
                Ok(verdict) => {
                    let effects = self.state.record_check(i, j, verdict);
                    self.take(effects);
                    if due > 0 {
                        self.save().await?;
                    }
                }
                Err(interrupt) => interrupted = Some(interrupt),
            }
        }
        match interrupted {
            Some(interrupt) => Err(Halt::Interrupted(interrupt)),
            None => Ok(()),
        }
    }

    /// Publishes `task_completed` or `task_failed` for an ended rollout, with nothing queued
    /// behind it. `last_phase`: the last phase's completion (with its asset changes) that a
    /// success's `task_completed` carries instead of it going out on its own
    /// ([`state::fold_into_end`]); that end is published before it is saved, every other one
    /// after.
    async fn publish_final(
        &self,
        last_phase: Option<baton_proto::PhaseCompleted>,
    ) -> Result<(), Error> {
        debug_assert!(self.queued.is_empty(), "events queued behind the final one");
        let mut event = final_event(self.cause, &self.state.to_proto());
        if let Some(Body::TaskCompleted(completed)) = &mut event.body {
            completed.last_phase = last_phase;
        }
        let subject = match event.body {
            Some(Body::TaskCompleted(_)) => subject::TASK_COMPLETED,
            _ => subject::TASK_FAILED,
        };
        self.shared.bus.publish(subject, &event).await?;
        Ok(())
    }
}

/// The `<task>.completed` event of a delivery-only plan (see the crate docs): an `Execution`
/// that succeeded at once, with no phases, carrying the plan (and so its artifacts).
pub(crate) fn delivery_only_completion(cause: &Event, plan: Plan) -> Event {
    let now = baton_proto::now();
    let exec = Execution {
        task_id: cause.task_id.clone(),
        tenant: cause.tenant.clone(),
        status: ExecutionStatus::Succeeded as i32,
        phases: Vec::new(),
        current_phase: 0,
        error: String::new(),
        started_at: Some(now),
        finished_at: Some(now),
        plan: Some(plan),
    };
    final_event(cause, &exec)
}

/// The final event of a finished execution (`<task>.completed` or `<task>.failed`).
pub(crate) fn final_event(cause: &Event, exec: &Execution) -> Event {
    if exec.status() == ExecutionStatus::Succeeded {
        return cause.follow(
            "completed",
            SERVICE,
            Body::TaskCompleted(TaskCompleted {
                execution: Some(exec.clone()),
                last_phase: None,
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
/// attempts; an unsupported kind is not probed again. `Ok(Ok)` healthy, `Ok(Err(detail))`
/// unhealthy, `Err` told to stop.
async fn check_health(
    runner: &dyn ActionRunner,
    control: &Control,
    config: &Config,
    check: &HealthCheck,
) -> Result<Result<(), String>, Interrupt> {
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
        match runner.probe(check).await {
            Ok(()) => return Ok(Ok(())),
            Err(e @ ProbeError::Unsupported(_)) => return Ok(Err(e.to_string())),
            Err(ProbeError::Unhealthy(detail)) => last = detail,
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
    use baton_proto::{Asset, Phase, Step};

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
    fn final_event_codes_follow_the_status() {
        let mut e = State::new("t1", "acme", plan(), baton_proto::now()).to_proto();
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

    #[tokio::test(start_paused = true)]
    async fn control_interrupts_checks_and_sleeps_once_shutdown_is_cancelled() {
        let token = CancellationToken::new();
        let control = Control::new(token.clone());
        assert_eq!(control.check(), Ok(()));
        assert_eq!(control.sleep(Duration::from_millis(10)).await, Ok(()));
        let sleeper = control.clone();
        let sleeping = tokio::spawn(async move { sleeper.sleep(Duration::from_secs(3600)).await });
        tokio::task::yield_now().await;
        token.cancel();
        assert_eq!(sleeping.await.unwrap(), Err(Interrupt::Shutdown));
        assert_eq!(control.check(), Err(Interrupt::Shutdown));
    }

    /// Answers every probe with `answer`, counting the attempts.
    struct Probe {
        answer: ProbeError,
        attempts: std::sync::atomic::AtomicU32,
    }

    impl ActionRunner for Probe {
        fn probe<'a>(
            &'a self,
            _: &'a HealthCheck,
        ) -> futures::future::BoxFuture<'a, crate::runner::ProbeResult> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { Err(self.answer.clone()) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn health_is_probed_up_to_its_attempts_but_an_unsupported_kind_once() {
        let control = Control::new(CancellationToken::new());
        let config = Config::default();
        let check = HealthCheck {
            attempts: 4,
            interval_ms: 10,
            ..Default::default()
        };
        let down = Probe {
            answer: ProbeError::Unhealthy("expected 200, got 503".into()),
            attempts: Default::default(),
        };
        assert_eq!(
            check_health(&down, &control, &config, &check).await,
            Ok(Err("expected 200, got 503".into()))
        );
        assert_eq!(down.attempts.load(Ordering::SeqCst), 4);
        let unknown = Probe {
            answer: ProbeError::Unsupported("no runner for health-check kind \"grpc\"".into()),
            attempts: Default::default(),
        };
        let verdict = check_health(&unknown, &control, &config, &check).await;
        assert!(
            matches!(&verdict, Ok(Err(m)) if m.starts_with("unsupported health check: no runner")),
            "{verdict:?}"
        );
        assert_eq!(unknown.attempts.load(Ordering::SeqCst), 1);
    }
}
