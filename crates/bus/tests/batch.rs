//! `Bus::consume_batch` against a real nats-server: one message that keeps failing, panicking
//! or hanging its batch is dead-lettered after `max_deliver` deliveries while the good messages
//! of its batch are stored exactly once; a message that keeps coming back unsettled (the
//! consumer died each time) is dead-lettered without reaching the handler again. With a
//! linger, messages that arrive a little apart share a batch, a lone one is still handed over,
//! and shutdown does not wait for the linger.

use baton_bus::testing::TestNats;
use baton_bus::{BatchResult, BatchSpec, Bus, BusConfig, ConsumerSpec, HandlerError};
use baton_proto::{DeadLetter, Event, Task, TaskReceived, event::Body, subject};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const POISON: &str = "poison";

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

/// How the handler misbehaves on the poison message.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Returns a retryable error for it, `Ok` for the others.
    Fails,
    /// Panics on any batch that holds it (before storing anything).
    Panics,
    /// Never returns on any batch that holds it.
    Hangs,
}

/// Waits for the next dead letter on `baton.dead.<service>`.
async fn next_dead_letter(bus: &Bus, service: &str) -> DeadLetter {
    let dead = bus.jetstream().get_stream("BATON_DEAD").await.unwrap();
    let consumer = dead
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: subject::dead(service),
            ..Default::default()
        })
        .await
        .unwrap();
    let msg = tokio::time::timeout(
        Duration::from_secs(30),
        consumer.messages().await.unwrap().next(),
    )
    .await
    .expect("a dead letter arrives")
    .unwrap()
    .unwrap();
    let ev = baton_bus::decode_event(&msg.payload).unwrap();
    let Some(Body::DeadLetter(dl)) = ev.body else {
        panic!("not a dead letter: {ev:?}")
    };
    dl
}

async fn poison_in_a_batch_is_dead_lettered_and_the_rest_stored_once(fault: Fault) {
    let nats = TestNats::start().await;
    let max_deliver = nats.config.max_deliver;
    let goods: Vec<String> = (0..8).map(|i| format!("good-{i}")).collect();
    // The poison sits in the middle of the burst, so it shares its first batch with good ones.
    for id in goods[..4]
        .iter()
        .map(String::as_str)
        .chain([POISON])
        .chain(goods[4..].iter().map(String::as_str))
    {
        nats.bus
            .publish(subject::TASK_RECEIVED, &received(id))
            .await
            .unwrap();
    }
    // Event id → times stored; attempts on the poison; sizes of batches that held it.
    let stored = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let poison_attempts = Arc::new(AtomicUsize::new(0));
    let poison_batches = Arc::new(Mutex::new(Vec::<usize>::new()));
    let shutdown = CancellationToken::new();
    let spec = BatchSpec::new(
        vec![ConsumerSpec::new("test", "test", subject::TASK_RECEIVED)],
        100,
    )
    .timeout(Duration::from_millis(500));
    let task = tokio::spawn({
        let (bus, shutdown) = (nats.bus.clone(), shutdown.clone());
        let (stored, attempts, batches) = (
            stored.clone(),
            poison_attempts.clone(),
            poison_batches.clone(),
        );
        async move {
            bus.consume_batch(spec, shutdown, move |batch| {
                let (stored, attempts, batches) =
                    (stored.clone(), attempts.clone(), batches.clone());
                async move {
                    let ids: Vec<String> =
                        batch.iter().map(|d| d.event().unwrap().task_id).collect();
                    let has_poison = ids.iter().any(|id| id == POISON);
                    if has_poison {
                        attempts.fetch_add(1, Ordering::SeqCst);
                        batches.lock().unwrap().push(ids.len());
                        match fault {
                            Fault::Fails => {}
                            Fault::Panics => panic!("the handler crashed on {POISON}"),
                            Fault::Hangs => std::future::pending::<()>().await,
                        }
                    }
                    let mut stored = stored.lock().unwrap();
                    BatchResult::Each(
                        ids.into_iter()
                            .map(|id| {
                                if id == POISON {
                                    return Err(HandlerError::Retry("cannot store it".into()));
                                }
                                *stored.entry(id).or_default() += 1;
                                Ok(())
                            })
                            .collect(),
                    )
                }
            })
            .await
        }
    });
    let dl = next_dead_letter(&nats.bus, "test").await;
    assert_eq!(dl.subject, subject::TASK_RECEIVED);
    assert_eq!(dl.deliveries, max_deliver as u64, "{dl:?}");
    assert!(
        dl.reason
            .contains(&format!("gave up after {max_deliver} deliveries")),
        "{}",
        dl.reason
    );
    let carried = baton_bus::decode_event(&dl.payload).unwrap();
    assert_eq!(carried.task_id, POISON);
    // Everything settles: the good ones acked, the poison terminated.
    let consumer = nats
        .bus
        .pull_consumer(&ConsumerSpec::new("test", "test", subject::TASK_RECEIVED))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut c = consumer.clone();
            let info = c.info().await.unwrap();
            if info.num_ack_pending == 0 && info.num_pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every message settled");
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        poison_attempts.load(Ordering::SeqCst),
        max_deliver as usize,
        "the handler saw the poison once per delivery"
    );
    let stored = stored.lock().unwrap().clone();
    let expected: HashMap<String, usize> = goods.iter().map(|g| (g.clone(), 1)).collect();
    assert_eq!(stored, expected, "every good message stored exactly once");
    let batches = poison_batches.lock().unwrap().clone();
    assert!(
        batches[0] > 1,
        "the poison's first delivery shares a batch with good messages: {batches:?}"
    );
    assert!(
        batches[1..].iter().all(|&n| n == 1),
        "redeliveries of the poison are handled alone: {batches:?}"
    );
}

#[tokio::test]
async fn a_message_that_keeps_failing_is_dead_lettered_and_its_batch_stored_once() {
    poison_in_a_batch_is_dead_lettered_and_the_rest_stored_once(Fault::Fails).await;
}

#[tokio::test]
async fn a_message_that_keeps_panicking_its_batch_is_dead_lettered_and_the_rest_stored_once() {
    poison_in_a_batch_is_dead_lettered_and_the_rest_stored_once(Fault::Panics).await;
}

#[tokio::test]
async fn a_message_that_keeps_hanging_its_batch_is_dead_lettered_and_the_rest_stored_once() {
    poison_in_a_batch_is_dead_lettered_and_the_rest_stored_once(Fault::Hangs).await;
}

#[tokio::test]
async fn a_message_never_settled_is_dead_lettered_without_reaching_the_handler_again() {
    let nats = TestNats::start().await;
    // Quick redeliveries: the server redelivers what a dead consumer held after `ack_wait`.
    let config = BusConfig {
        ack_wait: Duration::from_secs(1),
        max_deliver: 2,
        ..nats.config.clone()
    };
    let bus = Bus::connect(config).await.unwrap();
    bus.publish(subject::TASK_RECEIVED, &received(POISON))
        .await
        .unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let spec = BatchSpec::new(
        vec![ConsumerSpec::new("test", "test", subject::TASK_RECEIVED)],
        10,
    )
    .timeout(Duration::from_secs(3600));
    let dead = tokio::spawn({
        let bus = bus.clone();
        async move { next_dead_letter(&bus, "test").await }
    });
    // Each run takes the message and dies with it in hand (the task is aborted, as a process
    // that crashes would stop), until the guard dead-letters it.
    let mut runs = 0;
    while !dead.is_finished() && runs < 10 {
        runs += 1;
        let seen = attempts.load(Ordering::SeqCst);
        let (bus, spec, counter) = (bus.clone(), spec.clone(), attempts.clone());
        let run = tokio::spawn(async move {
            bus.consume_batch(spec, CancellationToken::new(), move |_batch| {
                counter.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<BatchResult>()
            })
            .await
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while attempts.load(Ordering::SeqCst) == seen && !dead.is_finished() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        run.abort();
        let _ = run.await;
    }
    let dl = dead.await.unwrap();
    assert!(dl.reason.contains("without being settled"), "{}", dl.reason);
    assert_eq!(dl.deliveries, 3);
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        2,
        "the handler saw it max_deliver times, not the third"
    );
}

/// The task ids of each batch handed to a handler, in order.
type Batches = Arc<Mutex<Vec<Vec<String>>>>;

/// Runs a batch consumer of `spec` on `bus` that records the task ids of each batch and acks
/// them; returns the recorded batches and the running consumer.
fn record_batches(
    bus: &Bus,
    spec: BatchSpec,
    shutdown: CancellationToken,
) -> (
    Batches,
    tokio::task::JoinHandle<Result<(), baton_bus::BusError>>,
) {
    let batches: Batches = Default::default();
    let task = tokio::spawn({
        let (bus, batches) = (bus.clone(), batches.clone());
        async move {
            bus.consume_batch(spec, shutdown, move |batch| {
                let ids = batch.iter().map(|d| d.event().unwrap().task_id).collect();
                batches.lock().unwrap().push(ids);
                std::future::ready(BatchResult::All(Ok(())))
            })
            .await
        }
    });
    (batches, task)
}

/// Waits until `batches` holds `n` messages in all.
async fn wait_for_messages(batches: &Mutex<Vec<Vec<String>>>, n: usize) {
    tokio::time::timeout(Duration::from_secs(15), async {
        while batches.lock().unwrap().iter().map(Vec::len).sum::<usize>() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} messages handled: {batches:?}"));
}

#[tokio::test]
async fn messages_arriving_within_the_linger_share_a_batch_and_a_lone_one_is_handed_over() {
    let nats = TestNats::start().await;
    let shutdown = CancellationToken::new();
    // Messages 30 ms apart: without a linger each is ready alone and makes a batch of its
    // own; within a 1 s linger they share one.
    let spec = BatchSpec::new(
        vec![ConsumerSpec::new("test", "test", subject::TASK_RECEIVED)],
        100,
    )
    .linger(Duration::from_secs(1));
    let (batches, task) = record_batches(&nats.bus, spec, shutdown.clone());
    let n = 8;
    for i in 0..n {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        nats.bus
            .publish(subject::TASK_RECEIVED, &received(&format!("t-{i}")))
            .await
            .unwrap();
    }
    wait_for_messages(&batches, n).await;
    let seen = batches.lock().unwrap().clone();
    assert!(
        (1..=2).contains(&seen.len()),
        "{n} messages within the linger make one batch (two if the publisher stalled): {seen:?}"
    );
    // A message alone is handed over when its linger ends.
    nats.bus
        .publish(subject::TASK_RECEIVED, &received("alone"))
        .await
        .unwrap();
    wait_for_messages(&batches, n + 1).await;
    assert_eq!(
        batches.lock().unwrap().last().unwrap(),
        &vec!["alone".to_string()]
    );
    // Everything was acked: nothing is left for the consumer.
    let consumer = nats
        .bus
        .pull_consumer(&ConsumerSpec::new("test", "test", subject::TASK_RECEIVED))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let info = consumer.clone().info().await.unwrap().clone();
            if info.num_ack_pending == 0 && info.num_pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every message acked");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_during_a_linger_hands_over_the_batch_in_hand_at_once() {
    let nats = TestNats::start().await;
    let shutdown = CancellationToken::new();
    // A linger far longer than the test may take.
    let spec = BatchSpec::new(
        vec![ConsumerSpec::new("test", "test", subject::TASK_RECEIVED)],
        100,
    )
    .linger(Duration::from_secs(3600));
    let (batches, task) = record_batches(&nats.bus, spec, shutdown.clone());
    nats.bus
        .publish(subject::TASK_RECEIVED, &received("in-hand"))
        .await
        .unwrap();
    // Let the consumer take it (its linger starts), then stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("consume_batch returns on shutdown, not after the linger")
        .unwrap()
        .unwrap();
    assert_eq!(
        *batches.lock().unwrap(),
        vec![vec!["in-hand".to_string()]],
        "the batch in hand was handled before consume_batch returned"
    );
}
