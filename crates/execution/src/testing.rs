//! What tests of rollouts share (feature `testing`, for dev-dependencies only): an approval
//! signed the way validation signs it, by a fixed test key the executor is configured to
//! trust, and reading back the events the execution service published for a task.

use crate::{Config, SERVICE};
use baton_bus::Bus;
use baton_proto::{Approval, Event, Plan, Task, TaskApproved, event::Body};
use baton_runtime::signing::{SigningKey, sign_approved};
use std::time::Duration;

/// The key validation signs with in tests (a fixed seed, so every test agrees on it).
pub fn validation_key() -> SigningKey {
    SigningKey::from_seed([7; 32])
}

/// The default configuration, trusting [`validation_key`].
pub fn trusting() -> Config {
    Config {
        trusted_keys: vec![validation_key().public_key().to_string()],
        ..Config::default()
    }
}

/// `approved` as validation publishes it: every part present, signed with [`validation_key`].
pub fn signed(mut approved: TaskApproved) -> TaskApproved {
    approved.spec.get_or_insert_default();
    approved.validation.get_or_insert_default();
    sign_approved(&validation_key(), &mut approved).expect("signable");
    approved
}

/// The `task_approved` event of `task_id` in `tenant` for `plan`, approved by policy and
/// signed with [`validation_key`].
pub fn approved(task_id: &str, tenant: &str, plan: Plan) -> Event {
    Event::first(
        task_id,
        tenant,
        "approved",
        "validation",
        Body::TaskApproved(signed(TaskApproved {
            task: Some(Task {
                task_id: task_id.into(),
                tenant: tenant.into(),
                ..Default::default()
            }),
            plan: Some(plan),
            approval: Some(Approval {
                task_id: task_id.into(),
                approver: "policy".into(),
                approved: true,
                ..Default::default()
            }),
            ..Default::default()
        })),
    )
}

/// The events the execution service published for `task_id`, in stream order (read from the
/// `BATON` stream by sequence).
pub async fn task_events(bus: &Bus, task_id: &str) -> Vec<Event> {
    let mut stream = bus
        .jetstream()
        .get_stream("BATON")
        .await
        .expect("the BATON stream");
    let last = stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let event = baton_bus::decode_event(&m.payload).expect("an event");
        if event.task_id == task_id && event.producer == SERVICE {
            out.push(event);
        }
    }
    out
}

/// Waits up to `patience` for the task's `task_completed` or `task_failed`; panics after.
pub async fn final_event(bus: &Bus, task_id: &str, patience: Duration) -> Event {
    tokio::time::timeout(patience, async {
        loop {
            let found = task_events(bus, task_id).await.into_iter().find(|e| {
                matches!(
                    e.body,
                    Some(Body::TaskCompleted(_)) | Some(Body::TaskFailed(_))
                )
            });
            if let Some(e) = found {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the rollout ends")
}
