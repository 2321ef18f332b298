//! Durable pull consumers: at-least-once delivery, explicit acks after the handler's output is
//! published, nak with backoff on transient failures, and terminate plus a dead-letter event
//! on poison messages or once `max_deliver` is reached.

use crate::{Bus, BusError, DecodeError, TASK_ID_HEADER, TENANT_HEADER};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use baton_proto::{DeadLetter, Event, EventBody, event::Body, subject};
use futures::StreamExt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info_span, warn};

/// Largest payload copied into a dead-letter event.
const DEAD_PAYLOAD_MAX: usize = 64 * 1024;

/// What became of a delivered message: how [`Bus::settle`] settles it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Outcome {
    /// The handler succeeded: ack.
    Handled,
    /// Its dead letter is stored: terminate.
    DeadLettered,
    /// Deliver it again after this delay: nak.
    Again(Duration),
}

/// Which messages a consumer receives and who it is.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Stream to consume from; empty means the main stream.
    pub stream: String,
    /// Durable consumer name, shared by all replicas of the service (they split the work).
    pub durable: String,
    /// Subject filter (`baton.task.received`, `baton.agent.drift`, `baton.>`).
    pub filter_subject: String,
    /// Service name, for `baton.dead.<service>` and logs.
    pub service: String,
    /// Messages handled at once by this process.
    pub concurrency: usize,
    /// The handler's work survives interruption (it saves progress and resumes on
    /// redelivery, like a rollout): deliveries cut short by shutdown or a crash never
    /// dead-letter the message; only the handler's own failures count.
    pub resumable: bool,
    /// One ack settles every earlier message too (JetStream's `AckPolicy::All`), so a batch
    /// costs one ack instead of one per message. Only for [`Bus::consume_batch`] with one
    /// writer that stores messages in stream order (audit); [`Bus::consume`], whose handlers
    /// run concurrently, refuses it. See the `batch` module for how an ack is kept from
    /// covering a message this process has not handled.
    pub cumulative_ack: bool,
}

impl ConsumerSpec {
    /// A consumer of the main stream.
    pub fn new(service: &str, durable: &str, filter_subject: &str) -> ConsumerSpec {
        ConsumerSpec {
            stream: String::new(),
            durable: durable.to_string(),
            filter_subject: filter_subject.to_string(),
            service: service.to_string(),
            concurrency: 64,
            resumable: false,
            cumulative_ack: false,
        }
    }

    /// Acks cumulatively (see [`ConsumerSpec::cumulative_ack`]).
    pub fn cumulative_ack(mut self) -> ConsumerSpec {
        self.cumulative_ack = true;
        self
    }

    /// Marks the consumer's work as resumable (see [`ConsumerSpec::resumable`]).
    pub fn resumable(mut self) -> ConsumerSpec {
        self.resumable = true;
        self
    }

    /// Sets how many messages are handled at once.
    pub fn concurrency(mut self, n: usize) -> ConsumerSpec {
        self.concurrency = n.max(1);
        self
    }
}

/// How a handler failed, which decides what happens to the message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HandlerError {
    /// Might work later (NATS or a dependency is down): nak, redeliver after the backoff; after
    /// `max_deliver` attempts, dead-letter.
    #[error("transient failure: {0}")]
    Retry(String),
    /// Can never work (malformed payload, unknown body): terminate and dead-letter now.
    #[error("poison message: {0}")]
    Reject(String),
    /// The handler stopped early (shutdown) after saving its progress: redeliver soon, to
    /// this or another replica; never dead-lettered.
    #[error("interrupted: {0}")]
    Interrupted(String),
}

impl HandlerError {
    /// Metrics label of this outcome: `retry`, `poison` or `interrupted`.
    pub fn outcome(&self) -> &'static str {
        match self {
            HandlerError::Retry(_) => "retry",
            HandlerError::Reject(_) => "poison",
            HandlerError::Interrupted(_) => "interrupted",
        }
    }
}

impl From<DecodeError> for HandlerError {
    fn from(e: DecodeError) -> Self {
        HandlerError::Reject(e.to_string())
    }
}

impl From<BusError> for HandlerError {
    fn from(e: BusError) -> Self {
        HandlerError::Retry(e.to_string())
    }
}

/// One delivered message. Cheap to clone; the consumer loop settles (acks) it after the
/// handler returns.
#[derive(Clone)]
pub struct Delivery {
    msg: Arc<jetstream::Message>,
    deliveries: i64,
    stream_sequence: u64,
    consumer_sequence: u64,
    stored_at_millis: u64,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.subject())
            .field("stream_sequence", &self.stream_sequence)
            .field("deliveries", &self.deliveries)
            .finish()
    }
}

impl Delivery {
    /// Wraps a JetStream message.
    pub fn new(msg: jetstream::Message) -> Delivery {
        let (deliveries, stream_sequence, consumer_sequence, stored_at_millis) = msg
            .info()
            .map(|i| {
                let millis = i.published.unix_timestamp_nanos() / 1_000_000;
                (
                    i.delivered,
                    i.stream_sequence,
                    i.consumer_sequence,
                    u64::try_from(millis).unwrap_or(0),
                )
            })
            .unwrap_or((1, 0, 0, 0));
        Delivery {
            msg: Arc::new(msg),
            deliveries,
            stream_sequence,
            consumer_sequence,
            stored_at_millis,
        }
    }
    /// The subject it was published on.
    pub fn subject(&self) -> &str {
        self.msg.subject.as_str()
    }
    /// The raw payload.
    pub fn payload(&self) -> &[u8] {
        &self.msg.payload
    }
    /// All headers.
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.msg.headers.as_ref()
    }
    /// One header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.msg.headers.as_ref()?.get(name).map(|v| v.as_str())
    }
    /// How many times it has been delivered, this time included (from 1).
    pub fn deliveries(&self) -> i64 {
        self.deliveries
    }
    /// The stream it was delivered from (`BATON`, `BATON_DEAD`; empty when unknown).
    pub fn stream(&self) -> &str {
        self.msg.info().map(|i| i.stream).unwrap_or("")
    }
    /// Its sequence in the stream: stable across redeliveries, so a usable idempotency key.
    pub fn stream_sequence(&self) -> u64 {
        self.stream_sequence
    }
    /// Its delivery sequence in the consumer: one more for every delivery the consumer makes,
    /// redeliveries included, so a jump means deliveries this process never received.
    pub fn consumer_sequence(&self) -> u64 {
        self.consumer_sequence
    }
    /// When the stream stored it, in milliseconds since the Unix epoch: like
    /// [`Delivery::stream_sequence`], the same on every redelivery.
    pub fn stored_at_millis(&self) -> u64 {
        self.stored_at_millis
    }
    /// Decodes the payload as a protobuf [`Event`] with a known body.
    pub fn event(&self) -> Result<Event, DecodeError> {
        crate::decode_event(self.payload())
    }
    /// Decodes the payload as an [`Event`] whose body is a `T`, the one kind a handler of this
    /// subject accepts: returns the envelope (with its body moved out, so `body` is `None`)
    /// and the body.
    ///
    /// Errors (each a poison message: `?` in a handler turns it into
    /// [`HandlerError::Reject`], so it is dead-lettered with this reason):
    /// [`DecodeError::Protobuf`], [`DecodeError::UnknownBody`], and
    /// [`DecodeError::UnexpectedBody`] naming the subject, the kind expected and the kind
    /// received (`expected a task_routed event on baton.agent.drift, got a plan_proposed …`).
    pub fn expect<T: EventBody>(&self) -> Result<(Event, T), DecodeError> {
        let mut event = self.event()?;
        let Some(body) = event.body.take() else {
            return Err(DecodeError::UnknownBody {
                event_id: event.event_id,
            });
        };
        match T::from_body(body) {
            Ok(body) => Ok((event, body)),
            Err(other) => Err(DecodeError::UnexpectedBody {
                subject: self.subject().to_string(),
                expected: T::KIND,
                got: other.kind(),
                event_id: event.event_id,
            }),
        }
    }
    /// Acks it (and, on a [`ConsumerSpec::cumulative_ack`] consumer, every earlier message).
    pub(crate) async fn ack(&self) -> Result<(), async_nats::Error> {
        self.msg.ack_with(AckKind::Ack).await
    }
    /// Naks it: delivered again after `delay`.
    pub(crate) async fn nak(&self, delay: Duration) {
        if let Err(e) = self.msg.ack_with(AckKind::Nak(Some(delay))).await {
            error!(error = %e, subject = self.subject(), "cannot settle message");
        }
    }
    /// Tells the server the handler is still working, resetting the ack-wait timer. Long
    /// handlers (rollouts) call it periodically.
    pub async fn in_progress(&self) {
        if let Err(e) = self.msg.ack_with(AckKind::Progress).await {
            warn!(error = %e, subject = self.subject(), "cannot send in-progress ack");
        }
    }
}

impl Bus {
    /// The stream `spec` consumes from: its own, or the main stream when it names none.
    pub(crate) fn stream_of<'a>(&'a self, spec: &'a ConsumerSpec) -> &'a str {
        if spec.stream.is_empty() {
            &self.config().stream
        } else {
            &spec.stream
        }
    }

    /// Creates (or updates) the durable pull consumer described by `spec`.
    pub async fn pull_consumer(
        &self,
        spec: &ConsumerSpec,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>, BusError> {
        let c = self.config();
        let stream_name = self.stream_of(spec);
        let err = |reason: String| BusError::Consumer {
            stream: stream_name.to_string(),
            consumer: spec.durable.clone(),
            reason,
        };
        let stream = self
            .jetstream()
            .get_stream(stream_name)
            .await
            .map_err(|e| err(e.to_string()))?;
        let ack_policy = if spec.cumulative_ack {
            jetstream::consumer::AckPolicy::All
        } else {
            jetstream::consumer::AckPolicy::Explicit
        };
        // The server can change neither a durable's ack policy nor where it starts: an existing
        // durable keeps its start, and one of an earlier version with the other ack policy is
        // replaced by one that starts after its ack floor (everything at or below it is
        // settled; what was pending above it is delivered again, its delivery count starting
        // over).
        let mut deliver_policy = jetstream::consumer::DeliverPolicy::All;
        let existing = stream.consumer_info(&spec.durable).await.ok();
        if let Some(info) = &existing
            && info.config.ack_policy == ack_policy
        {
            deliver_policy = info.config.deliver_policy;
        } else if let Some(info) = existing {
            let floor = info.ack_floor.stream_sequence;
            warn!(
                consumer = %spec.durable,
                from = ?info.config.ack_policy,
                to = ?ack_policy,
                ack_floor = floor,
                "replacing a durable consumer whose ack policy changed; it resumes after its ack floor"
            );
            stream
                .delete_consumer(&spec.durable)
                .await
                .map_err(|e| err(format!("cannot replace it (ack policy changed): {e}")))?;
            if floor > 0 {
                deliver_policy = jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: floor + 1,
                };
            }
        }
        // No server-side `backoff` list: with one, the server waits only backoff[0] (not ack_wait)
        // for the first ack, redelivering long handlers while they still run. Retry delays come
        // from `settle`, which naks with the configured delay.
        let config = pull::Config {
            durable_name: Some(spec.durable.clone()),
            description: Some(format!("{} on {}", spec.service, spec.filter_subject)),
            ack_policy,
            deliver_policy,
            ack_wait: c.ack_wait,
            // Unlimited on the server: `consume` dead-letters after `max_deliver` itself, so a
            // message is never silently parked when its handler keeps crashing or hanging.
            max_deliver: -1,
            filter_subject: spec.filter_subject.clone(),
            max_ack_pending: c.max_ack_pending,
            ..Default::default()
        };
        // Create, or update an existing durable to this configuration (settings of an earlier
        // version must not linger).
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| err(e.to_string()))?;
        let key = (stream_name.to_string(), spec.durable.clone());
        let mut known = self.consumers.lock().expect("consumers lock");
        if !known.contains(&key) {
            known.push(key);
        }
        Ok(consumer)
    }

    /// `(stream, durable)` of every consumer this process created with
    /// [`Bus::pull_consumer`] (directly or through `consume`/`consume_batch`), in creation order.
    pub fn consumers(&self) -> Vec<(String, String)> {
        self.consumers.lock().expect("consumers lock").clone()
    }

    /// JetStream's info of the durable consumer `durable` of `stream` (one request: pending,
    /// ack-pending and redelivered counts, ack floor).
    ///
    /// Errors: [`BusError::Consumer`] when the consumer does not exist or NATS does not answer.
    pub async fn consumer_info(
        &self,
        stream: &str,
        durable: &str,
    ) -> Result<jetstream::consumer::Info, BusError> {
        let consumer: jetstream::consumer::Consumer<pull::Config> = self
            .js
            .get_consumer_from_stream(durable, stream)
            .await
            .map_err(|e| BusError::Consumer {
                stream: stream.to_string(),
                consumer: durable.to_string(),
                reason: e.to_string(),
            })?;
        Ok(consumer.cached_info().clone())
    }

    /// Runs `handler` on every message of the consumer until `shutdown` is cancelled, up to
    /// `spec.concurrency` at once; then stops pulling and waits for the in-flight handlers.
    ///
    /// Ok → ack. [`HandlerError::Retry`] → nak with the configured backoff, or dead-letter at
    /// the last attempt. [`HandlerError::Reject`] → dead-letter now. A dead letter is an
    /// [`Event`] with a [`DeadLetter`] body on `baton.dead.<service>`; the message is
    /// terminated only once that is stored, so nothing is lost if NATS hiccups.
    pub async fn consume<F, Fut>(
        &self,
        spec: ConsumerSpec,
        shutdown: CancellationToken,
        handler: F,
    ) -> Result<(), BusError>
    where
        F: Fn(Delivery) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send,
    {
        if spec.cumulative_ack {
            return Err(BusError::Consumer {
                stream: spec.stream.clone(),
                consumer: spec.durable.clone(),
                reason: "cumulative acks need one in-order writer: use consume_batch, not consume"
                    .into(),
            });
        }
        let consumer = self.pull_consumer(&spec).await?;
        let handler = Arc::new(handler);
        while !shutdown.is_cancelled() {
            let messages = consumer.messages().await.map_err(|e| BusError::Consumer {
                stream: spec.stream.clone(),
                consumer: spec.durable.clone(),
                reason: e.to_string(),
            })?;
            messages
                .take_until(shutdown.cancelled())
                .for_each_concurrent(spec.concurrency, |item| {
                    let handler = handler.clone();
                    let spec = &spec;
                    async move {
                        match item {
                            Ok(msg) => {
                                let delivery = Delivery::new(msg);
                                let span = info_span!(
                                    "handle",
                                    service = %spec.service,
                                    subject = delivery.subject(),
                                    task_id = delivery.header(TASK_ID_HEADER).unwrap_or(""),
                                    attempt = delivery.deliveries(),
                                    otel.name = tracing::field::Empty,
                                    otel.kind = tracing::field::Empty,
                                    trace_id = tracing::field::Empty,
                                );
                                crate::trace::set_parent(&span, delivery.headers());
                                crate::trace::label_consumer_span(&span, &spec.service);
                                let result = match self.redelivery_guard(spec, &delivery) {
                                    Ok(()) => {
                                        handler(delivery.clone()).instrument(span.clone()).await
                                    }
                                    Err(e) => Err(e),
                                };
                                self.settle(spec, &delivery, result).instrument(span).await;
                            }
                            Err(e) => {
                                warn!(error = %e, consumer = %spec.durable, "pull consumer error")
                            }
                        }
                    }
                })
                .await;
            if !shutdown.is_cancelled() {
                // The message stream ended (server gone); pull again after a pause.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Ok(())
    }

    /// The guard against messages that keep coming back unsettled: `Err(Reject)` when
    /// `delivery` has been delivered more than `max_deliver` times (the handler crashed, hung or
    /// outlived `ack_wait` each time, so no result ever counted), which dead-letters it instead
    /// of handing it to the handler again. Always `Ok` for a [`ConsumerSpec::resumable`] consumer.
    pub(crate) fn redelivery_guard(
        &self,
        spec: &ConsumerSpec,
        delivery: &Delivery,
    ) -> Result<(), HandlerError> {
        if spec.resumable || delivery.deliveries() <= self.config().max_deliver {
            return Ok(());
        }
        Err(HandlerError::Reject(format!(
            "delivered {} times without being settled (the handler crashed or outlived ack_wait \
             each time)",
            delivery.deliveries() - 1
        )))
    }

    /// Acks, naks or dead-letters `delivery` according to `result` (see [`Bus::consume`]).
    pub async fn settle(
        &self,
        spec: &ConsumerSpec,
        delivery: &Delivery,
        result: Result<(), HandlerError>,
    ) {
        let kind = match self.outcome(spec, delivery, result).await {
            Outcome::Handled => AckKind::Ack,
            Outcome::DeadLettered => AckKind::Term,
            Outcome::Again(delay) => AckKind::Nak(Some(delay)),
        };
        if let Err(e) = delivery.msg.ack_with(kind).await {
            error!(error = %e, subject = delivery.subject(), "cannot settle message");
        }
    }

    /// What becomes of `delivery` given the handler's `result`: handled; dead-lettered (the
    /// dead letter is stored) on [`HandlerError::Reject`] or a [`HandlerError::Retry`] at the
    /// last attempt; delivered again after a delay otherwise, or when the dead letter cannot
    /// be stored.
    pub(crate) async fn outcome(
        &self,
        spec: &ConsumerSpec,
        delivery: &Delivery,
        result: Result<(), HandlerError>,
    ) -> Outcome {
        match result {
            Ok(()) => Outcome::Handled,
            Err(HandlerError::Interrupted(reason)) => {
                debug!(%reason, "handler interrupted; redelivering soon");
                Outcome::Again(self.config().backoff_for(1))
            }
            Err(HandlerError::Retry(reason))
                if delivery.deliveries() < self.config().max_deliver =>
            {
                let delay = self.config().backoff_for(delivery.deliveries());
                warn!(reason = %baton_proto::redact::for_log(&reason), attempt = delivery.deliveries(), ?delay, "handler failed, will retry");
                Outcome::Again(delay)
            }
            Err(HandlerError::Retry(reason)) => {
                let reason = format!(
                    "gave up after {} deliveries: {reason}",
                    delivery.deliveries()
                );
                self.dead_letter_or_again(spec, delivery, reason).await
            }
            Err(HandlerError::Reject(reason)) => {
                self.dead_letter_or_again(spec, delivery, reason).await
            }
        }
    }

    async fn dead_letter_or_again(
        &self,
        spec: &ConsumerSpec,
        d: &Delivery,
        reason: String,
    ) -> Outcome {
        error!(reason = %baton_proto::redact::for_log(&reason), subject = d.subject(), service = %spec.service, "dead-lettering message");
        match self.dead_letter(spec, d, &reason).await {
            Ok(()) => Outcome::DeadLettered,
            Err(e) => {
                error!(error = %e, "cannot publish dead letter; will redeliver");
                Outcome::Again(self.config().backoff_for(d.deliveries()))
            }
        }
    }

    async fn dead_letter(
        &self,
        spec: &ConsumerSpec,
        d: &Delivery,
        reason: &str,
    ) -> Result<(), BusError> {
        let stream = self.stream_of(spec);
        let headers = d
            .headers()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            v.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(","),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let payload = &d.payload()[..d.payload().len().min(DEAD_PAYLOAD_MAX)];
        // A message published without Baton's headers (by hand, or forged) still names its
        // task in its envelope, so its dead letter is found under that task.
        let carried = d.event().ok();
        let or_carried = |header: &str, field: fn(&Event) -> &str| {
            d.header(header)
                .or_else(|| carried.as_ref().map(field))
                .unwrap_or_default()
                .to_string()
        };
        let event = Event {
            event_id: format!("dead.{}.{}.{}", spec.service, stream, d.stream_sequence()),
            task_id: or_carried(TASK_ID_HEADER, |e| &e.task_id),
            causation_id: String::new(),
            tenant: or_carried(TENANT_HEADER, |e| &e.tenant),
            producer: spec.service.clone(),
            time: Some(baton_proto::now()),
            body: Some(Body::DeadLetter(DeadLetter {
                service: spec.service.clone(),
                subject: d.subject().to_string(),
                reason: reason.to_string(),
                payload: payload.to_vec(),
                headers,
                stream_sequence: d.stream_sequence(),
                deliveries: d.deliveries() as u64,
            })),
        };
        let published = self.publish(&subject::dead(&spec.service), &event).await?;
        debug!(seq = published.sequence, "dead letter stored");
        Ok(())
    }
}
