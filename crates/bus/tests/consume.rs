//! `Delivery::expect` in a real consumer: the expected body reaches the handler, any other kind
//! is dead-lettered with a reason naming the subject and both kinds.

use baton_bus::ConsumerSpec;
use baton_bus::testing::TestNats;
use baton_proto::{Event, PlanProposed, Task, TaskReceived, event::Body, subject};
use futures::StreamExt;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn expect_hands_over_the_body_and_rejects_another_kind_naming_subject_and_kind() {
    let nats = TestNats::start().await;
    let good = Event::first(
        "t-ok",
        "acme",
        "received",
        "test",
        TaskReceived {
            task: Some(Task {
                task_id: "t-ok".into(),
                ..Default::default()
            }),
        }
        .into(),
    );
    // A plan on the received-task subject: a producer's mistake, poison for this consumer.
    let wrong = Event::first(
        "t-wrong",
        "acme",
        "proposed",
        "test",
        PlanProposed::default().into(),
    );
    for event in [&wrong, &good] {
        nats.bus
            .publish(subject::TASK_RECEIVED, event)
            .await
            .unwrap();
    }

    let (tx, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let (bus, sd) = (nats.bus.clone(), shutdown.clone());
    let consumer = tokio::spawn(async move {
        bus.consume(
            ConsumerSpec::new("decision", "decision", subject::TASK_RECEIVED),
            sd,
            move |d| {
                let tx = tx.clone();
                async move {
                    let (event, received) = d.expect::<TaskReceived>()?;
                    tx.send((event, received)).unwrap();
                    Ok(())
                }
            },
        )
        .await
    });

    let (event, received) = tokio::time::timeout(Duration::from_secs(10), handled.recv())
        .await
        .expect("the task_received event is handled")
        .unwrap();
    assert_eq!(event.event_id, "t-ok.received");
    assert_eq!(event.tenant, "acme");
    assert_eq!(event.body, None, "the body is handed over, not copied");
    assert_eq!(received.task.unwrap().task_id, "t-ok");

    let dead = nats.bus.jetstream().get_stream("BATON_DEAD").await.unwrap();
    let reader = dead
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let msg = tokio::time::timeout(
        Duration::from_secs(10),
        reader.messages().await.unwrap().next(),
    )
    .await
    .expect("the plan_proposed event is dead-lettered")
    .unwrap()
    .unwrap();
    shutdown.cancel();
    consumer.await.unwrap().unwrap();
    assert!(
        handled.try_recv().is_err(),
        "only the expected kind was handled"
    );

    let letter = baton_bus::decode_event(&msg.payload).unwrap();
    let Some(Body::DeadLetter(dl)) = letter.body else {
        panic!("not a dead letter: {letter:?}")
    };
    assert_eq!(dl.deliveries, 1, "rejected at once, not retried");
    assert_eq!(
        dl.reason,
        "expected a task_received event on baton.task.received, got a plan_proposed \
         (event \"t-wrong.proposed\")"
    );
    assert_eq!(dl.subject, subject::TASK_RECEIVED);
}
