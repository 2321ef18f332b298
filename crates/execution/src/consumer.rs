//! The `baton.task.approved` consumer loop. Like [`baton_bus::Bus::consume`] (same settling:
//! ack, nak with backoff, dead letter), but on a durable consumer **without** a server-side
//! `backoff` list.
//!
//! Why: with `backoff` set, nats-server measures the ack deadline of a delivery against the
//! backoff entry (`backoff[0]`, 250 ms by default, 50 ms in tests) instead of `ack_wait`, so a
//! rollout that runs longer than that is redelivered — to this or another replica — while it
//! is still running, and progress acks sent every few seconds cannot prevent it. Without the
//! list, the deadline is `ack_wait`, which `Delivery::in_progress` resets; retry delays still
//! follow `nats.backoff`, because `Bus::settle` naks with an explicit delay.
//!
//! The server-side `max_deliver` is unlimited: a rollout interrupted by shutdowns (each one a
//! delivery) must never be dropped half-applied. Handler failures are still dead-lettered after
//! `nats.max_deliver` attempts, by [`Bus::settle`]; an [`Outcome::Abandon`] never is.

use baton_bus::{Bus, BusError, ConsumerSpec, Delivery, HandlerError, TASK_ID_HEADER};
use async_nats::jetstream::consumer::{AckPolicy, Consumer, pull};
use futures::StreamExt;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// What to do with a delivery once its handler returned.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Ack, nak or dead-letter it by [`Bus::settle`].
    Settle(Result<(), HandlerError>),
    /// The handler stopped early (shutdown) and the work resumes from saved state: have it
    /// redelivered soon (nak with backoff) while under `nats.max_deliver` deliveries, else leave
    /// it to the ack-wait redelivery. Never dead-lettered.
    Abandon,
}

/// Creates, or updates to the configuration below, the durable consumer of `spec`.
pub(crate) async fn durable(bus: &Bus, spec: &ConsumerSpec) -> Result<Consumer<pull::Config>, BusError> {
    let c = bus.config();
    let stream_name = if spec.stream.is_empty() { c.stream.clone() } else { spec.stream.clone() };
    let err = |reason: String| BusError::Consumer {
        stream: stream_name.clone(),
        consumer: spec.durable.clone(),
        reason,
    };
    let stream = bus.jetstream().get_stream(&stream_name).await.map_err(|e| err(e.to_string()))?;
    let config = pull::Config {
        durable_name: Some(spec.durable.clone()),
        description: Some(format!("{} on {}", spec.service, spec.filter_subject)),
        ack_policy: AckPolicy::Explicit,
        ack_wait: c.ack_wait,
        max_deliver: -1,
        backoff: Vec::new(),
        filter_subject: spec.filter_subject.clone(),
        max_ack_pending: c.max_ack_pending,
        ..Default::default()
    };
    stream.create_consumer(config).await.map_err(|e| err(e.to_string()))
}

/// Runs `handler` on every message of `spec`'s consumer until `shutdown`, up to
/// `spec.concurrency` at once, settling each with [`Bus::settle`]; then waits for the handlers
/// in flight.
pub(crate) async fn consume<F, Fut>(
    bus: &Bus,
    spec: ConsumerSpec,
    shutdown: CancellationToken,
    handler: F,
) -> Result<(), BusError>
where
    F: Fn(Delivery) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let consumer = durable(bus, &spec).await?;
    while !shutdown.is_cancelled() {
        let messages = consumer.messages().await.map_err(|e| BusError::Consumer {
            stream: spec.stream.clone(),
            consumer: spec.durable.clone(),
            reason: e.to_string(),
        })?;
        messages
            .take_until(shutdown.cancelled())
            .for_each_concurrent(spec.concurrency, |item| {
                let (spec, handler) = (&spec, &handler);
                async move {
                    match item {
                        Ok(msg) => {
                            let delivery = Delivery::new(msg);
                            let span = tracing::info_span!(
                                "handle",
                                service = %spec.service,
                                subject = delivery.subject(),
                                task_id = delivery.header(TASK_ID_HEADER).unwrap_or(""),
                                attempt = delivery.deliveries(),
                            );
                            baton_bus::trace::set_parent(&span, delivery.headers());
                            let result = match handler(delivery.clone()).instrument(span.clone()).await {
                                Outcome::Settle(result) => Some(result),
                                Outcome::Abandon if delivery.deliveries() < bus.config().max_deliver => {
                                    Some(Err(HandlerError::Retry("stopped early; resumes on redelivery".into())))
                                }
                                Outcome::Abandon => None,
                            };
                            if let Some(result) = result {
                                bus.settle(spec, &delivery, result).instrument(span).await;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, consumer = %spec.durable, "pull consumer error"),
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
