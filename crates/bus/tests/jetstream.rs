//! The bus against a real nats-server: dedupe by message id, ack, retry, dead letters.

use baton_bus::testing::TestNats;
use baton_bus::{ConsumerSpec, HandlerError};
use baton_proto::{Event, Task, TaskReceived, event::Body, subject};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn received(task_id: &str) -> Event {
    Event::first(
        task_id,
        "acme",
        "received",
        "test",
        Body::TaskReceived(TaskReceived {
            task: Some(Task {
                task_id: task_id.into(),
                ..Default::default()
            }),
        }),
    )
}

#[tokio::test]
async fn same_event_id_is_stored_once() {
    let nats = TestNats::start().await;
    let first = nats
        .bus
        .publish(subject::TASK_RECEIVED, &received("t1"))
        .await
        .unwrap();
    let second = nats
        .bus
        .publish(subject::TASK_RECEIVED, &received("t1"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate, "the stream must drop the second copy");
    assert_eq!(first.sequence, second.sequence);
    let other = nats
        .bus
        .publish(subject::TASK_RECEIVED, &received("t2"))
        .await
        .unwrap();
    assert_eq!(other.sequence, first.sequence + 1);
}

#[tokio::test]
async fn handled_messages_are_acked_and_retries_are_redelivered() {
    let nats = TestNats::start().await;
    for id in ["a", "b", "c"] {
        nats.bus
            .publish(subject::TASK_RECEIVED, &received(id))
            .await
            .unwrap();
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let failures = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let (s, f) = (seen.clone(), failures.clone());
    let bus = nats.bus.clone();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            bus.consume(
                ConsumerSpec::new("test", "test", subject::TASK_RECEIVED),
                shutdown,
                move |d| {
                    let (s, f) = (s.clone(), f.clone());
                    async move {
                        let ev = d.event()?;
                        // "b" fails once, then succeeds on redelivery.
                        if ev.task_id == "b" && d.deliveries() == 1 {
                            f.fetch_add(1, Ordering::SeqCst);
                            return Err(HandlerError::Retry("dependency down".into()));
                        }
                        s.lock().unwrap().push(ev.task_id);
                        Ok(())
                    }
                },
            )
            .await
        }
    });
    tokio::time::timeout(Duration::from_secs(10), async {
        while seen.lock().unwrap().len() < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("all three handled");
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, ["a", "b", "c"]);
    assert_eq!(failures.load(Ordering::SeqCst), 1);
    let info = nats
        .bus
        .pull_consumer(&ConsumerSpec::new("test", "test", subject::TASK_RECEIVED))
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.num_ack_pending, 0, "everything acked");
    assert_eq!(info.num_pending, 0);
}

#[tokio::test]
async fn poison_message_is_dead_lettered_with_its_reason() {
    let nats = TestNats::start().await;
    nats.bus
        .publish_raw(
            subject::TASK_RECEIVED,
            "junk-1",
            Default::default(),
            b"\xff\xffnot protobuf".to_vec().into(),
        )
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let bus = nats.bus.clone();
    let sd = shutdown.clone();
    let task = tokio::spawn(async move {
        bus.consume(
            ConsumerSpec::new("decision", "decision", subject::TASK_RECEIVED),
            sd,
            |d| async move {
                d.event()?;
                Ok(())
            },
        )
        .await
    });
    let dead = nats.bus.jetstream().get_stream("BATON_DEAD").await.unwrap();
    let consumer = dead
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let msg = tokio::time::timeout(
        Duration::from_secs(10),
        consumer.messages().await.unwrap().next(),
    )
    .await
    .expect("a dead letter arrives")
    .unwrap()
    .unwrap();
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(msg.subject.as_str(), "baton.dead.decision");
    let ev = baton_bus::decode_event(&msg.payload).unwrap();
    let Some(Body::DeadLetter(dl)) = ev.body else {
        panic!("not a dead letter: {ev:?}")
    };
    assert_eq!(dl.subject, subject::TASK_RECEIVED);
    assert!(
        dl.reason.contains("not a valid baton.v1.Event"),
        "{}",
        dl.reason
    );
    assert_eq!(dl.payload, b"\xff\xffnot protobuf");
}

#[tokio::test]
async fn unreachable_nats_is_a_clear_error() {
    let config = baton_bus::BusConfig {
        url: "nats://127.0.0.1:1".into(),
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let err = baton_bus::Bus::connect(config)
        .await
        .err()
        .expect("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("cannot connect to NATS at nats://127.0.0.1:1"),
        "{msg}"
    );
    assert!(msg.contains("nats-server -js"), "{msg}");
}

#[tokio::test]
async fn key_value_bucket_is_created_once_and_keeps_values() {
    let nats = TestNats::start().await;
    let kv = nats
        .bus
        .key_value("baton_test", 3)
        .await
        .expect("create bucket on nats-server 2.9");
    kv.put("task-1", b"state-1".to_vec().into()).await.unwrap();
    let again = nats
        .bus
        .key_value("baton_test", 3)
        .await
        .expect("open existing bucket");
    assert_eq!(
        again.get("task-1").await.unwrap().unwrap().as_ref(),
        b"state-1"
    );
    again.delete("task-1").await.unwrap();
    assert!(kv.get("task-1").await.unwrap().is_none());
}
