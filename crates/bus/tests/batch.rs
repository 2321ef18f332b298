//! `Bus::consume_batch` against a real nats-server: one message that keeps failing, panicking
//! or hanging its batch is dead-lettered after `max_deliver` deliveries while the good messages
//! of its batch are stored exactly once; a message that keeps coming back unsettled (the
//! consumer died each time) is dead-lettered without reaching the handler again — with explicit
//! acks and with cumulative ones (audit's). With cumulative acks, a batch costs one ack, and no
//! ack covers a message not yet handled: not one that failed and comes back later, not one a
//! crashed process held. With a linger, messages that arrive a little apart share a batch, a
//! lone one is still handed over, and shutdown does not wait for the linger.

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

/// The consumer of these tests: acks explicit or cumulative.
fn consumer_spec(cumulative: bool) -> ConsumerSpec {
    let spec = ConsumerSpec::new("test", "test", subject::TASK_RECEIVED);
    if cumulative {
        spec.cumulative_ack()
    } else {
        spec
    }
}

/// Waits until the consumer of `spec` has nothing pending and nothing unacked.
async fn wait_settled(bus: &Bus, spec: &ConsumerSpec) {
    let consumer = bus.pull_consumer(spec).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let info = consumer.clone().info().await.unwrap().clone();
            if info.num_ack_pending == 0 && info.num_pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every message settled");
}

async fn poison_in_a_batch_is_dead_lettered_and_the_rest_stored_once(
    fault: Fault,
    cumulative: bool,
) {
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
    let spec =
        BatchSpec::new(vec![consumer_spec(cumulative)], 100).timeout(Duration::from_millis(500));
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
    // Everything settles: the good ones acked, the poison terminated (or, with cumulative
    // acks, covered by the next ack).
    wait_settled(&nats.bus, &consumer_spec(cumulative)).await;
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
    poison_in_a_batch_is_dead_lettered_and_the_rest_stored_once(Fault::Fails, false).await;
}

#[tokio::test]
async fn with_cumulative_acks_a_message_that_keeps_failing_is_dead_lettered_and_its_batch_stored_once()
 {
    poison_in_a_batch_is_dead_lettered_and_the_rest_stored_once(Fault::Fails, true).await;
}

#[tokio::test]
async fn a_message_that_keeps_panicking_its_batch_is_dead_lettered_and_the_rest_stored_once() {
    poison_in_a_batch_is_dead_lettered_and_the_rest_stored_once(Fault::Panics, false).await;
}

#[tokio::test]
async fn with_cumulative_acks_a_message_that_keeps_panicking_its_batch_is_dead_lettered_and_the_rest_stored_once()
 {
    poison_in_a_batch_is_dead_lettered_and_the_rest_stored_once(Fault::Panics, true).await;
}

#[tokio::test]
async fn a_message_that_keeps_hanging_its_batch_is_dead_lettered_and_the_rest_stored_once() {
    poison_in_a_batch_is_dead_lettered_and_the_rest_stored_once(Fault::Hangs, false).await;
}

#[tokio::test]
async fn with_cumulative_acks_a_message_that_keeps_hanging_its_batch_is_dead_lettered_and_the_rest_stored_once()
 {
    poison_in_a_batch_is_dead_lettered_and_the_rest_stored_once(Fault::Hangs, true).await;
}

#[tokio::test]
async fn a_message_never_settled_is_dead_lettered_without_reaching_the_handler_again() {
    never_settled_is_dead_lettered(false).await;
}

#[tokio::test]
async fn with_cumulative_acks_a_message_never_settled_is_dead_lettered_without_reaching_the_handler_again()
 {
    never_settled_is_dead_lettered(true).await;
}

async fn never_settled_is_dead_lettered(cumulative: bool) {
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
    let spec =
        BatchSpec::new(vec![consumer_spec(cumulative)], 10).timeout(Duration::from_secs(3600));
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
    // The dead-lettering run was aborted too; the next one settles the dead-lettered message
    // (under cumulative acks: once the consumer's count shows nothing else pending).
    let shutdown = CancellationToken::new();
    let (bus2, spec2) = (bus.clone(), spec.clone());
    let run = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            bus2.consume_batch(spec2, shutdown, |_| {
                std::future::ready(BatchResult::All(Ok(())))
            })
            .await
        }
    });
    wait_settled(&bus, &consumer_spec(cumulative)).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// Counts the messages published on `subject` from now on whose payload `counts` accepts.
async fn count_on(bus: &Bus, subject: &'static str, counts: fn(&[u8]) -> bool) -> Arc<AtomicUsize> {
    let seen = Arc::new(AtomicUsize::new(0));
    let mut sub = bus.client().subscribe(subject).await.unwrap();
    bus.client().flush().await.unwrap();
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if counts(&m.payload) {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    seen
}

/// Counts the acks (`+ACK`, or an empty payload) clients send for the consumer `test` of the
/// main stream.
async fn count_acks(bus: &Bus) -> Arc<AtomicUsize> {
    count_on(bus, "$JS.ACK.BATON.test.>", |p| {
        p.is_empty() || p == b"+ACK"
    })
    .await
}

#[tokio::test]
async fn with_cumulative_acks_a_batch_costs_one_ack_and_a_failed_message_is_not_acked_by_a_later_one()
 {
    let nats = TestNats::start().await;
    let acks = count_acks(&nats.bus).await;
    // The first message fails once (a store that hiccups); the others, and its second
    // delivery, succeed. Its nak sends it back after newer messages were stored: an ack of
    // those must not cover it before it is stored.
    let stored = Arc::new(Mutex::new(Vec::<String>::new()));
    let failed_once = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let spec = BatchSpec::new(vec![consumer_spec(true)], 100).linger(Duration::from_millis(200));
    let task = tokio::spawn({
        let (bus, shutdown, stored, failed_once) = (
            nats.bus.clone(),
            shutdown.clone(),
            stored.clone(),
            failed_once.clone(),
        );
        async move {
            bus.consume_batch(spec, shutdown, move |batch| {
                let ids: Vec<String> = batch.iter().map(|d| d.event().unwrap().task_id).collect();
                let mut stored = stored.lock().unwrap();
                let results = ids
                    .into_iter()
                    .map(|id| {
                        if id == "first" && failed_once.fetch_add(1, Ordering::SeqCst) == 0 {
                            return Err(HandlerError::Retry("the store hiccuped".into()));
                        }
                        stored.push(id);
                        Ok(())
                    })
                    .collect();
                std::future::ready(BatchResult::Each(results))
            })
            .await
        }
    });
    let burst = |ids: Vec<String>| {
        let bus = nats.bus.clone();
        async move {
            for id in ids {
                bus.publish(subject::TASK_RECEIVED, &received(&id))
                    .await
                    .unwrap();
            }
        }
    };
    burst(
        std::iter::once("first".to_string())
            .chain((0..19).map(|i| format!("a-{i}")))
            .collect(),
    )
    .await;
    // A second burst while the first message waits for its redelivery.
    burst((0..20).map(|i| format!("b-{i}")).collect()).await;
    wait_settled(&nats.bus, &consumer_spec(true)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let stored = stored.lock().unwrap().clone();
    assert_eq!(
        failed_once.load(Ordering::SeqCst),
        2,
        "the first message was handled twice"
    );
    assert_eq!(stored.len(), 40, "every message stored once: {stored:?}");
    assert!(stored.contains(&"first".to_string()), "{stored:?}");
    let acks = acks.load(Ordering::SeqCst);
    assert!(
        (1..=10).contains(&acks),
        "40 messages in a few batches are settled by a few cumulative acks, not one each: {acks}"
    );
}

#[tokio::test]
async fn with_cumulative_acks_a_consumer_that_loses_nothing_asks_no_consumer_info() {
    let nats = TestNats::start().await;
    let shutdown = CancellationToken::new();
    let spec = BatchSpec::new(vec![consumer_spec(true)], 100);
    let (batches, task) = record_batches(&nats.bus, spec, shutdown.clone());
    nats.bus
        .publish(subject::TASK_RECEIVED, &received("first"))
        .await
        .unwrap();
    wait_for_messages(&batches, 1).await;
    // From here on, every consumer info request for it is counted.
    let infos = count_on(&nats.bus, "$JS.API.CONSUMER.INFO.BATON.test", |_| true).await;
    for round in 0..5 {
        for i in 0..40 {
            nats.bus
                .publish(subject::TASK_RECEIVED, &received(&format!("r{round}-{i}")))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_messages(&batches, 201).await;
    assert_eq!(
        infos.load(Ordering::SeqCst),
        0,
        "in-order deliveries are acked at once, without asking the server"
    );
    wait_settled(&nats.bus, &consumer_spec(true)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn with_cumulative_acks_messages_a_crashed_process_held_are_handled_before_an_ack_covers_them()
 {
    let nats = TestNats::start().await;
    // Quick redeliveries: the server redelivers what a dead process held after `ack_wait`.
    let config = BusConfig {
        ack_wait: Duration::from_secs(1),
        ..nats.config.clone()
    };
    let bus = Bus::connect(config).await.unwrap();
    let spec = consumer_spec(true);
    let consumer = bus.pull_consumer(&spec).await.unwrap();
    for i in 0..3 {
        bus.publish(subject::TASK_RECEIVED, &received(&format!("held-{i}")))
            .await
            .unwrap();
    }
    // A process takes them and dies without acking.
    let mut taken = consumer.fetch().max_messages(3).messages().await.unwrap();
    let mut n = 0;
    while let Some(m) = taken.next().await {
        m.unwrap();
        n += 1;
    }
    assert_eq!(n, 3);
    drop(taken);
    // The next process starts, and new messages arrive before the held ones come back.
    let shutdown = CancellationToken::new();
    let (batches, task) = record_batches(
        &bus,
        BatchSpec::new(vec![spec.clone()], 100),
        shutdown.clone(),
    );
    for i in 0..3 {
        bus.publish(subject::TASK_RECEIVED, &received(&format!("new-{i}")))
            .await
            .unwrap();
    }
    wait_for_messages(&batches, 6).await;
    wait_settled(&bus, &spec).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let mut seen: Vec<String> = batches.lock().unwrap().concat();
    seen.sort();
    assert_eq!(
        seen,
        ["held-0", "held-1", "held-2", "new-0", "new-1", "new-2"],
        "the held messages were handed over, not acked away by the new ones' ack"
    );
}

#[tokio::test]
async fn consume_refuses_cumulative_acks_and_says_what_to_use_instead() {
    let nats = TestNats::start().await;
    let err = nats
        .bus
        .consume(consumer_spec(true), CancellationToken::new(), |_| async {
            Ok(())
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cumulative acks") && err.contains("use consume_batch"),
        "{err}"
    );
}

#[tokio::test]
async fn a_durable_whose_ack_policy_changed_is_replaced_and_resumes_after_its_ack_floor() {
    let nats = TestNats::start().await;
    let explicit = consumer_spec(false);
    let consumer = nats.bus.pull_consumer(&explicit).await.unwrap();
    for i in 0..4 {
        nats.bus
            .publish(subject::TASK_RECEIVED, &received(&format!("m-{i}")))
            .await
            .unwrap();
    }
    // An earlier version acked the first two.
    let mut first = consumer.fetch().max_messages(2).messages().await.unwrap();
    while let Some(m) = first.next().await {
        m.unwrap().double_ack().await.unwrap();
    }
    drop(first);
    let shutdown = CancellationToken::new();
    let (batches, task) = record_batches(
        &nats.bus,
        BatchSpec::new(vec![consumer_spec(true)], 100),
        shutdown.clone(),
    );
    wait_for_messages(&batches, 2).await;
    wait_settled(&nats.bus, &consumer_spec(true)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(batches.lock().unwrap().concat(), ["m-2", "m-3"]);
    let info = nats.bus.consumer_info("BATON", "test").await.unwrap();
    assert_eq!(
        info.config.ack_policy,
        async_nats::jetstream::consumer::AckPolicy::All
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
    wait_settled(&nats.bus, &consumer_spec(false)).await;
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
