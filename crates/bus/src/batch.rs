//! Batch consumers: one or more durable pull consumers merged into one stream of batches for a
//! handler that works best on many messages at once (audit: one database transaction per
//! batch), with the same guarantees as [`Bus::consume`].
//!
//! Guards, and why each exists:
//! - **Ack after output.** A message is settled only after the handler returned its result:
//!   ack on `Ok`, nak with backoff on [`HandlerError::Retry`] (dead letter once `max_deliver`
//!   deliveries failed), dead letter now on [`HandlerError::Reject`], nak soon on
//!   [`HandlerError::Interrupted`] — exactly [`Bus::settle`].
//! - **Unsettled redeliveries.** A message delivered more than `max_deliver` times without
//!   being settled (the handler crashed or hung on it each time) is dead-lettered before the
//!   handler sees it again: the guard [`Bus::consume`] uses.
//! - **One bad message cannot sink its batch.** A message delivered before (`deliveries > 1`)
//!   is handed to the handler in a batch of its own. So when a batch fails as a whole — the
//!   handler returns one error for all, panics, runs past its timeout, or the process dies —
//!   its messages come back one by one: the good ones are handled and acked, and only the
//!   message that keeps failing uses up its deliveries and is dead-lettered. Redeliveries are
//!   rare (at most `max_ack_pending` messages are ever out), so the hot path stays batched.
//! - **Linger.** With [`BatchSpec::linger`] set, a batch is handed over once it holds
//!   `max_messages`, or `linger` after its first message arrived, whichever comes first
//!   (tokio-stream's `chunks_timeout`), so messages that arrive a little apart (the events of
//!   one task, published by several services within a few milliseconds) share one batch
//!   instead of making one each. Zero hands over whatever is ready at once. Shutdown and a
//!   message stream that ends cut the linger short: the messages in hand are handled and
//!   settled before `consume_batch` returns. The guards below apply to a lingered batch as to
//!   any other (a redelivered message is still handled alone).
//! - **Cumulative acks.** A source marked [`ConsumerSpec::cumulative_ack`] (audit's) is a
//!   durable with `AckPolicy::All`: one ack settles the batch and every earlier message, so
//!   the server handles one ack per batch instead of one per message. Such an ack must never
//!   cover a message this process has not handled, so each such source keeps:
//!   - `held`: messages handled (stored, or dead-lettered) and not yet acked — what a
//!     dead-lettered message would get as a terminate under explicit acks (a terminate is
//!     cumulative too under `AckPolicy::All`) waits here for the ack instead;
//!   - `clean`: whether every message the server counts as delivered and unacked below the
//!     newest one seen is in `held` or still on its way to the handler in order. It starts
//!     true only when the consumer has nothing pending, and becomes false on a redelivery,
//!     on a jump in the consumer's delivery sequence (deliveries this process never
//!     received), on a nak (a failed message comes back later, below newer ones), and when
//!     the message stream is pulled again.
//!
//!   After each batch a clean source acks its newest held message. A source that is not
//!   clean acks nothing until the consumer's info (one request) shows exactly `held` pending:
//!   then every message pending is one this process handled, the ack covers exactly those,
//!   and the source is clean again. Until then held messages get in-progress acks every
//!   `ack_wait / 3`, and the info is asked again then and after each batch. So a failed
//!   batch, a crash (messages pending from the dead process come back after `ack_wait`) or a
//!   lost delivery delays acks, never loses a message; the guards above work as before, since
//!   the server still counts each message's deliveries.
//! - **Ack wait.** While the handler works, every message of the batch gets an in-progress ack
//!   each `ack_wait / 3`, so a slow batch is not redelivered under its feet; a handler still
//!   running after [`BatchSpec::timeout`] is cancelled (its future dropped) and its batch is
//!   nak'ed as a failed delivery. A handler that panics is treated the same way.

use crate::consumer::{ConsumerSpec, Delivery, HandlerError, Outcome};
use crate::{Bus, BusError};
use futures::future::Either;
use futures::{FutureExt as _, StreamExt as _};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, error, info_span, warn};

/// What a batch consumer reads and how big its batches are.
#[derive(Debug, Clone)]
pub struct BatchSpec {
    /// The consumers whose messages are merged into one stream of batches (audit: `BATON` and
    /// `BATON_DEAD`). Each message is settled through its own: its dead letter names that
    /// consumer's stream and goes to `baton.dead.<service>` of that consumer.
    pub sources: Vec<ConsumerSpec>,
    /// Most messages handed to the handler at once; a batch holds whatever is ready (or
    /// arrives within [`BatchSpec::linger`]), up to this many (at least 1).
    pub max_messages: usize,
    /// Longest the handler may work on one batch before it is cancelled and the batch is
    /// nak'ed as a failed delivery. `None` means the bus's `ack_wait`.
    pub timeout: Option<Duration>,
    /// How long a batch waits, after its first message arrived, for more (up to
    /// `max_messages`) before it is handed to the handler. Zero (the default): whatever is
    /// ready at once. Messages wait this long unacknowledged on top of the handler's time, so
    /// keep it well under the bus's `ack_wait`.
    pub linger: Duration,
}

impl BatchSpec {
    /// A batch consumer of `sources`, at most `max_messages` per batch, timeout `ack_wait`,
    /// no linger.
    pub fn new(sources: Vec<ConsumerSpec>, max_messages: usize) -> BatchSpec {
        BatchSpec {
            sources,
            max_messages: max_messages.max(1),
            timeout: None,
            linger: Duration::ZERO,
        }
    }

    /// Sets how long a batch waits for more messages after its first (see
    /// [`BatchSpec::linger`]).
    pub fn linger(mut self, linger: Duration) -> BatchSpec {
        self.linger = linger;
        self
    }

    /// Sets how long the handler may work on one batch (see [`BatchSpec::timeout`]).
    pub fn timeout(mut self, timeout: Duration) -> BatchSpec {
        self.timeout = Some(timeout);
        self
    }
}

/// What a batch handler made of its batch, which decides how each message is settled.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchResult {
    /// One result for every message of the batch (a database transaction that committed or
    /// did not).
    All(Result<(), HandlerError>),
    /// One result per message, in the order of the batch handed to the handler. A list of the
    /// wrong length is a bug in the handler: messages without a result are retried.
    Each(Vec<Result<(), HandlerError>>),
}

impl Bus {
    /// Runs `handler` on batches of the messages of every consumer in `spec.sources` until
    /// `shutdown` is cancelled, one batch at a time; then stops pulling and returns once the
    /// batch in hand is settled.
    ///
    /// The handler gets the batch's deliveries (never empty) and returns a [`BatchResult`];
    /// each message is then settled as [`Bus::settle`] does for [`Bus::consume`] (ack, nak with
    /// backoff, dead letter after `max_deliver` failed deliveries or at once on
    /// [`HandlerError::Reject`]). Besides, as in `consume`, a message delivered more than
    /// `max_deliver` times without being settled is dead-lettered without reaching the
    /// handler. A redelivered message is handed over in a batch of its own, so a message that
    /// fails, panics or hangs its batch cannot take the others with it. While the handler
    /// works, its messages get in-progress acks every `ack_wait / 3`; after
    /// [`BatchSpec::timeout`] it is cancelled, and a panic is caught: both count as a failed
    /// delivery of the whole batch. When a message stream ends (NATS restarted), all are
    /// pulled again after half a second.
    ///
    /// Errors: [`BusError::Consumer`] when a consumer cannot be created or pulled from.
    pub async fn consume_batch<F, Fut>(
        &self,
        spec: BatchSpec,
        shutdown: CancellationToken,
        mut handler: F,
    ) -> Result<(), BusError>
    where
        F: FnMut(Vec<Delivery>) -> Fut,
        Fut: Future<Output = BatchResult>,
    {
        let mut consumers = Vec::with_capacity(spec.sources.len());
        let mut order = Vec::with_capacity(spec.sources.len());
        for source in &spec.sources {
            let consumer = self.pull_consumer(source).await?;
            order.push(
                source
                    .cumulative_ack
                    .then(|| InOrder::start(consumer.cached_info())),
            );
            consumers.push(consumer);
        }
        let every = (self.config().ack_wait / 3).max(Duration::from_millis(10));
        let mut keep = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // Idle stretches (nothing held) must not make the ticks due pile up.
        keep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pulled = false;
        while !shutdown.is_cancelled() {
            if std::mem::replace(&mut pulled, true) {
                // Pulled again: what was delivered meanwhile may never have arrived.
                for o in order.iter_mut().flatten() {
                    o.clean = false;
                }
            }
            let mut streams = Vec::with_capacity(consumers.len());
            for (i, consumer) in consumers.iter().enumerate() {
                let source = &spec.sources[i];
                let messages = consumer.messages().await.map_err(|e| BusError::Consumer {
                    stream: source.stream.clone(),
                    consumer: source.durable.clone(),
                    reason: e.to_string(),
                })?;
                // Each source ends with a `None`, so the merged stream ends as soon as any
                // message stream does (then all are pulled again).
                streams.push(
                    messages
                        .map(move |m| Some((i, m)))
                        .chain(futures::stream::iter([None]))
                        .boxed(),
                );
            }
            let messages = futures::stream::select_all(streams)
                .take_while(|item| std::future::ready(item.is_some()))
                .filter_map(std::future::ready)
                .take_until(shutdown.cancelled());
            // The end of `messages` (shutdown, a stream that ended) hands over a lingering
            // batch at once.
            let batches = if spec.linger.is_zero() {
                Either::Left(messages.ready_chunks(spec.max_messages))
            } else {
                Either::Right(tokio_stream::StreamExt::chunks_timeout(
                    messages,
                    spec.max_messages,
                    spec.linger,
                ))
            };
            let mut batches = std::pin::pin!(batches);
            loop {
                let holding = order.iter().flatten().any(|o| !o.held.is_empty());
                let chunk = tokio::select! {
                    chunk = batches.next() => match chunk {
                        Some(chunk) => chunk,
                        None => break,
                    },
                    _ = keep.tick(), if holding => {
                        for (i, o) in order.iter_mut().enumerate() {
                            if let Some(o) = o {
                                o.keep(self, &spec.sources[i]).await;
                            }
                        }
                        continue;
                    }
                };
                let mut fresh = Vec::with_capacity(chunk.len());
                let mut again = Vec::new();
                for (i, item) in chunk {
                    let source = &spec.sources[i];
                    let msg = match item {
                        Ok(msg) => msg,
                        Err(e) => {
                            warn!(error = %e, consumer = %source.durable, "pull consumer error");
                            continue;
                        }
                    };
                    let delivery = Delivery::new(msg);
                    if let Some(o) = &mut order[i] {
                        o.observe(&delivery);
                    }
                    if let Err(e) = self.redelivery_guard(source, &delivery) {
                        match &mut order[i] {
                            Some(o) => {
                                o.settle(self, source, &delivery, Err(e)).await;
                                o.ack(self, source).await;
                            }
                            None => self.settle(source, &delivery, Err(e)).await,
                        }
                    } else if delivery.deliveries() > 1 {
                        again.push((i, delivery));
                    } else {
                        fresh.push((i, delivery));
                    }
                }
                if !fresh.is_empty() {
                    self.handle_batch(&spec, fresh, &mut handler, &mut order)
                        .await;
                }
                for one in again {
                    self.handle_batch(&spec, vec![one], &mut handler, &mut order)
                        .await;
                }
            }
            if !shutdown.is_cancelled() {
                // A message stream ended (server gone); pull again after a pause.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        // Settle what was handled, if the server's count allows it; otherwise it comes back
        // to the next process and is found stored.
        for (i, o) in order.iter_mut().enumerate() {
            if let Some(o) = o {
                o.ack(self, &spec.sources[i]).await;
            }
        }
        Ok(())
    }

    /// Runs `handler` on one batch (sending in-progress acks while it works, cancelling it at
    /// the timeout, catching a panic), then settles every message by its result.
    async fn handle_batch<F, Fut>(
        &self,
        spec: &BatchSpec,
        batch: Vec<(usize, Delivery)>,
        handler: &mut F,
        order: &mut [Option<InOrder>],
    ) where
        F: FnMut(Vec<Delivery>) -> Fut,
        Fut: Future<Output = BatchResult>,
    {
        let n = batch.len();
        let service = &spec.sources[batch[0].0].service;
        let span = info_span!("handle_batch", service = %service, messages = n);
        // Exported traces get one `handle` span per message in its task's trace (the batch
        // span belongs to no task), linked to the batch span, ended once the message is settled.
        let _message_spans: Vec<tracing::Span> = if crate::trace::exporting() {
            batch
                .iter()
                .map(|(_, d)| {
                    let s = info_span!(
                        "handle",
                        service = %service,
                        subject = d.subject(),
                        task_id = d.header(crate::TASK_ID_HEADER).unwrap_or(""),
                        otel.name = tracing::field::Empty,
                        otel.kind = tracing::field::Empty,
                        trace_id = tracing::field::Empty,
                    );
                    crate::trace::set_parent(&s, d.headers());
                    crate::trace::label_consumer_span(&s, service);
                    s.follows_from(&span);
                    s
                })
                .collect()
        } else {
            Vec::new()
        };
        let deliveries: Vec<Delivery> = batch.iter().map(|(_, d)| d.clone()).collect();
        let ack_wait = self.config().ack_wait;
        let timeout = spec.timeout.unwrap_or(ack_wait);
        let work = AssertUnwindSafe(async { handler(deliveries).await })
            .catch_unwind()
            .instrument(span.clone());
        let mut work = std::pin::pin!(tokio::time::timeout(timeout, work));
        let every = (ack_wait / 3).max(Duration::from_millis(10));
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let outcome = loop {
            tokio::select! {
                outcome = &mut work => break outcome,
                _ = progress.tick() => {
                    futures::future::join_all(batch.iter().map(|(_, d)| d.in_progress())).await;
                }
            }
        };
        let all = |e: HandlerError| vec![Err(e); n];
        let results = match outcome {
            Err(_) => all(HandlerError::Retry(format!(
                "the batch handler did not finish within {timeout:?}; it was cancelled"
            ))),
            Ok(Err(panic)) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                error!(parent: &span, panic = %what, "batch handler panicked");
                all(HandlerError::Retry(format!(
                    "the batch handler panicked: {what}"
                )))
            }
            Ok(Ok(BatchResult::All(result))) => vec![result; n],
            Ok(Ok(BatchResult::Each(mut results))) => {
                if results.len() != n {
                    error!(parent: &span, results = results.len(), messages = n,
                        "batch handler returned the wrong number of results; retrying the rest");
                    results.resize(
                        n,
                        Err(HandlerError::Retry(
                            "the batch handler returned no result for this message".into(),
                        )),
                    );
                }
                results
            }
        };
        let mut explicit = Vec::with_capacity(n);
        for ((i, d), result) in batch.iter().zip(results) {
            match &mut order[*i] {
                Some(o) => o.settle(self, &spec.sources[*i], d, result).await,
                None => explicit.push(self.settle(&spec.sources[*i], d, result)),
            }
        }
        futures::future::join_all(explicit).instrument(span).await;
        for (i, o) in order.iter_mut().enumerate() {
            if let Some(o) = o {
                o.ack(self, &spec.sources[i]).await;
            }
        }
    }
}

/// The state of one [`ConsumerSpec::cumulative_ack`] source (see the module's docs).
struct InOrder {
    /// Every message the server counts as delivered and unacked, up to the newest seen, is in
    /// `held` or on its way to the handler in stream order.
    clean: bool,
    /// The consumer's delivery sequence of the newest delivery seen.
    last_delivery: u64,
    /// Handled (stored or dead-lettered) and not yet acked, by stream sequence.
    held: std::collections::BTreeMap<u64, Delivery>,
}

impl InOrder {
    /// The state for a consumer whose info (at creation) is `info`: clean only when nothing
    /// is pending (a process before this one may have died holding messages).
    fn start(info: &async_nats::jetstream::consumer::Info) -> InOrder {
        InOrder {
            clean: info.num_ack_pending == 0,
            last_delivery: info.delivered.consumer_sequence,
            held: Default::default(),
        }
    }

    /// Notes a delivery: a redelivery, or one that skips delivery sequences, means the
    /// server holds messages this process has not handled.
    fn observe(&mut self, d: &Delivery) {
        if d.deliveries() > 1 || d.consumer_sequence() != self.last_delivery + 1 {
            self.clean = false;
        }
        self.last_delivery = self.last_delivery.max(d.consumer_sequence());
    }

    /// Settles `d` as [`Bus::settle`] does, except that a handled or dead-lettered message
    /// is held for the next cumulative ack, and a nak makes the source unclean (the message
    /// comes back after newer ones).
    async fn settle(
        &mut self,
        bus: &Bus,
        source: &ConsumerSpec,
        d: &Delivery,
        result: Result<(), HandlerError>,
    ) {
        match bus.outcome(source, d, result).await {
            Outcome::Handled | Outcome::DeadLettered => {
                self.held.insert(d.stream_sequence(), d.clone());
            }
            Outcome::Again(delay) => {
                self.clean = false;
                d.nak(delay).await;
            }
        }
    }

    /// Acks the newest held message, settling all held ones, when that covers nothing else:
    /// at once when clean; otherwise only once the consumer's info shows exactly `held`
    /// pending.
    async fn ack(&mut self, bus: &Bus, source: &ConsumerSpec) {
        let Some((_, newest)) = self.held.last_key_value() else {
            return;
        };
        if !self.clean {
            match bus
                .consumer_info(bus.stream_of(source), &source.durable)
                .await
            {
                Ok(info) if info.num_ack_pending == self.held.len() => {
                    self.clean = true;
                    self.last_delivery = self.last_delivery.max(info.delivered.consumer_sequence);
                }
                Ok(_) => return,
                Err(e) => {
                    warn!(error = %e, consumer = %source.durable, "cannot read consumer info; holding acks");
                    return;
                }
            }
        }
        match newest.ack().await {
            Ok(()) => self.held.clear(),
            Err(e) => {
                // Kept: the next ack covers them, once the server's count says it may.
                error!(error = %e, consumer = %source.durable, "cannot ack; holding");
                self.clean = false;
            }
        }
    }

    /// While acks are held: in-progress acks for the held messages (so they are not
    /// redelivered meanwhile), then another try at [`InOrder::ack`].
    async fn keep(&mut self, bus: &Bus, source: &ConsumerSpec) {
        if self.held.is_empty() {
            return;
        }
        futures::future::join_all(self.held.values().map(|d| d.in_progress())).await;
        self.ack(bus, source).await;
    }
}
