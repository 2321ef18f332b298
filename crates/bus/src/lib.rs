//! NATS JetStream plumbing shared by every Baton service.
//!
//! - [`Bus`]: one connection, the streams (`BATON` for the path, `BATON_DEAD` for dead letters),
//!   [`Bus::publish`] with a deterministic `Nats-Msg-Id` (the event id) and W3C `traceparent`.
//! - [`Bus::consume`]: a durable pull consumer with explicit acks; the handler's result decides
//!   between ack, nak with backoff, and terminate-plus-dead-letter (see [`HandlerError`]).
//! - [`Delivery::expect`]: the one way a handler decodes its message: the event and the one body
//!   kind its subject carries, else a poison message naming the subject and the kind received.
//! - [`Bus::kv`]: a typed, versioned key-value bucket ([`kv::Kv`]) whose writes are
//!   compare-and-set on the key's revision, with conflicts as [`kv::KvError::Conflict`].
//! - [`Bus::consume_batch`]: the same guards for a handler of batches, over one or more
//!   consumers merged (see [`BatchSpec`]).
//! - [`server::NatsServer`]: a `nats-server -js` child process for `baton up` and the tests.
//! - [`identity`]: the NATS users (one per service, admin, trigger publishers per tenant), their
//!   permissions, their seed files and the server's `authorization` block.
//! - `testing` (cargo feature `testing`, for dev-dependencies only): the `TestNats` fixture.
//!
//! Delivery is at-least-once; handlers are idempotent and every publish carries a deterministic
//! message id, so the stream's duplicate window drops the second copy of a re-done output.

mod batch;
mod config;
mod consumer;
mod error;
pub mod identity;
pub mod kv;
pub mod server;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;

pub use batch::{BatchResult, BatchSpec};
pub use config::BusConfig;
pub use consumer::{ConsumerSpec, Delivery, HandlerError};
pub use error::{BusError, DecodeError};
pub use kv::{Kv, KvError, Revision};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use baton_proto::Event;
use prost::Message as _;
use std::sync::Arc;
use tracing::debug;

/// Header carrying the tenant of the task an event belongs to.
pub const TENANT_HEADER: &str = "Baton-Tenant";
/// Header carrying the task id, so dead letters and operators can find the task without
/// decoding the payload.
pub const TASK_ID_HEADER: &str = "Baton-Task-Id";
/// Content type of protobuf payloads.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/protobuf";
/// Content type of JSON payloads (accepted on trigger subjects only).
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// A connection to NATS with JetStream, shared (cheaply cloned) by all services of a process.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    config: Arc<BusConfig>,
    /// `(stream, durable)` of every consumer this process created, for the consumer metrics.
    consumers: Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

/// What the stream said about a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Stream sequence of the stored message (of the first copy when `duplicate`).
    pub sequence: u64,
    /// True when the stream already held a message with this `Nats-Msg-Id` in its duplicate
    /// window, so nothing new was stored.
    pub duplicate: bool,
}

impl Bus {
    /// Connects to `config.url` and makes sure both streams exist with the configured settings.
    ///
    /// Errors: [`BusError::Connect`] when NATS is unreachable (the message says how to start
    /// it), [`BusError::Stream`] when JetStream is off or a stream cannot be created.
    pub async fn connect(config: BusConfig) -> Result<Bus, BusError> {
        config.validate()?;
        let mut options = async_nats::ConnectOptions::new()
            .name(&config.client_name)
            .connection_timeout(config.connect_timeout)
            .retry_on_initial_connect();
        if let Some(creds) = &config.credentials_file {
            options =
                options
                    .credentials_file(creds)
                    .await
                    .map_err(|source| BusError::Credentials {
                        path: creds.clone(),
                        source,
                    })?;
        }
        if let Some(file) = &config.nkey_seed_file {
            let seed = std::fs::read_to_string(file).map_err(|e| BusError::Connect {
                url: config.url.clone(),
                reason: format!("cannot read nats.nkey_seed_file {}: {e}", file.display()),
            })?;
            options = options.nkey(seed.trim().to_string());
        }
        options = options.custom_inbox_prefix(&config.inbox_prefix);
        if let Some(ca) = &config.tls_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        // retry_on_initial_connect makes connect() return at once; wait for the first
        // connection ourselves so a wrong URL fails clearly instead of hanging later.
        let servers = config.server_addrs()?;
        let client = options
            .connect(servers.as_slice())
            .await
            .map_err(|e| BusError::Connect {
                url: config.url.clone(),
                reason: e.to_string(),
            })?;
        let deadline = tokio::time::Instant::now() + config.connect_timeout;
        while client.connection_state() != async_nats::connection::State::Connected {
            if tokio::time::Instant::now() > deadline {
                return Err(BusError::Connect {
                    url: config.url.clone(),
                    reason: format!("no connection within {:?}", config.connect_timeout),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .max_ack_inflight(config.max_ack_inflight)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let bus = Bus {
            client,
            js,
            config: Arc::new(config),
            consumers: Arc::default(),
        };
        bus.ensure_streams().await?;
        Ok(bus)
    }

    /// Creates or updates the `BATON` and `BATON_DEAD` streams to match the configuration.
    /// A stream that already has the configured subjects, storage, replicas, duplicate window
    /// and age is left alone (one read), so a service's identity, which may read stream info
    /// but not change streams, connects once the admin has set them up.
    ///
    /// Errors: [`BusError::Stream`]; for a missing or different stream and an identity that
    /// may not change it, the reason says so.
    pub async fn ensure_streams(&self) -> Result<(), BusError> {
        let c = &self.config;
        let main = stream::Config {
            name: c.stream.clone(),
            description: Some("Baton: triggers, tasks and execution events".into()),
            subjects: config::MAIN_SUBJECTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            storage: stream::StorageType::File,
            num_replicas: c.replicas,
            duplicate_window: c.duplicate_window,
            max_age: c.max_age,
            ..Default::default()
        };
        let dead = stream::Config {
            name: c.dead_stream.clone(),
            description: Some("Baton: messages a consumer gave up on".into()),
            subjects: vec![format!("{}.>", baton_proto::subject::DEAD_PREFIX)],
            storage: stream::StorageType::File,
            num_replicas: c.replicas,
            duplicate_window: c.duplicate_window,
            ..Default::default()
        };
        for cfg in [main, dead] {
            let name = cfg.name.clone();
            if let Ok(mut existing) = self.js.get_stream(&name).await
                && let Ok(info) = existing.info().await
                && same_settings(&info.config, &cfg)
            {
                continue;
            }
            self.js
                .create_or_update_stream(cfg)
                .await
                .map_err(|e| BusError::Stream {
                    reason: if e.to_string().to_lowercase().contains("timed out")
                        || e.to_string().to_lowercase().contains("permission")
                    {
                        format!(
                            "{e} (is the stream missing or configured differently, and this \
                             identity not allowed to change it? start `baton up`, or connect \
                             once with the admin seed: see `baton nats-config`)"
                        )
                    } else {
                        e.to_string()
                    },
                    stream: name,
                })?;
        }
        Ok(())
    }

    /// Publishes `event` on `subject` and waits for the stream's ack.
    ///
    /// Headers: `Nats-Msg-Id` = `event.event_id` (deduplicated by the stream), `Content-Type`,
    /// `Baton-Tenant`, `Baton-Task-Id`, and `traceparent` from the current span.
    pub async fn publish(&self, subject: &str, event: &Event) -> Result<Published, BusError> {
        self.publish_with_id(subject, &event.event_id, event).await
    }

    /// [`Bus::publish`] with `msg_id` as its `Nats-Msg-Id` instead of the event id, for an
    /// event whose duplicates are recognised by something else (e.g. an idempotency key).
    ///
    /// Errors: as [`Bus::publish`].
    pub async fn publish_with_id(
        &self,
        subject: &str,
        msg_id: &str,
        event: &Event,
    ) -> Result<Published, BusError> {
        self.publish_raw(
            subject,
            msg_id,
            event_headers(event),
            event.encode_to_vec().into(),
        )
        .await
    }

    /// Publishes every `(subject, event)` in order with the headers of [`Bus::publish`], sending
    /// them all before awaiting the stream's acks (one round trip instead of one per event), and
    /// returns what the stream said about each, in the same order.
    ///
    /// The stream stores the events in the order given (one connection keeps publish order).
    /// On an error some of the events may have been stored: publishing the same events again
    /// is safe, since their message ids are deduplicated.
    pub async fn publish_all(&self, events: &[(&str, &Event)]) -> Result<Vec<Published>, BusError> {
        let mut acks = Vec::with_capacity(events.len());
        for (subject, event) in events {
            let ack = self
                .send(
                    subject,
                    &event.event_id,
                    event_headers(event),
                    event.encode_to_vec().into(),
                )
                .await?;
            acks.push((*subject, event.event_id.as_str(), ack));
        }
        let mut out = Vec::with_capacity(acks.len());
        for (subject, msg_id, ack) in acks {
            out.push(confirm(subject, msg_id, ack).await?);
        }
        Ok(out)
    }

    /// Publishes an arbitrary payload with a message id (which may be empty for none).
    pub async fn publish_raw(
        &self,
        subject: &str,
        msg_id: &str,
        headers: HeaderMap,
        payload: bytes::Bytes,
    ) -> Result<Published, BusError> {
        let ack = self.send(subject, msg_id, headers, payload).await?;
        confirm(subject, msg_id, ack).await
    }

    /// The event stored at `sequence` of the main stream: e.g. the first copy that a publish
    /// answered as [`Published::duplicate`] points at. Two round trips; not for the hot path.
    ///
    /// Errors: [`BusError::Read`] when the message is gone or its payload is not an event.
    pub async fn stored_event(&self, sequence: u64) -> Result<Event, BusError> {
        let read = |reason: String| BusError::Read {
            stream: self.config.stream.clone(),
            sequence,
            reason,
        };
        let stream = self
            .js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| read(e.to_string()))?;
        let message = stream
            .get_raw_message(sequence)
            .await
            .map_err(|e| read(e.to_string()))?;
        decode_event(&message.payload).map_err(|e| read(e.to_string()))
    }

    /// Sends a message with a message id (none when empty) without waiting for the ack.
    async fn send(
        &self,
        subject: &str,
        msg_id: &str,
        mut headers: HeaderMap,
        payload: bytes::Bytes,
    ) -> Result<jetstream::context::PublishAckFuture, BusError> {
        if !msg_id.is_empty() {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        }
        self.js
            .publish_with_headers(subject.to_string(), headers, payload)
            .await
            .map_err(|e| BusError::Publish {
                subject: subject.to_string(),
                reason: e.to_string(),
            })
    }

    /// The JetStream context, for key-value buckets and direct stream reads.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The core NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The configuration this bus was connected with.
    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    /// Opens (creating if needed) a key-value bucket with file storage and the configured
    /// replicas; `history` is how many revisions per key to keep. This is the raw async-nats
    /// store, for tools and tests that handle the stored bytes themselves; services use the
    /// typed [`Bus::kv`], whose writes are compare-and-set.
    ///
    /// The bucket's stream is created directly (`KV_<bucket>` on `$KV.<bucket>.>`, the layout of
    /// ADR-8) rather than through `create_key_value`, which first reads account info with
    /// fields nats-server 2.9 does not send.
    pub async fn key_value(
        &self,
        bucket: &str,
        history: i64,
    ) -> Result<jetstream::kv::Store, BusError> {
        let err = |e: String| BusError::KeyValue {
            bucket: bucket.to_string(),
            reason: e,
        };
        if let Ok(store) = self.js.get_key_value(bucket).await {
            return Ok(store);
        }
        self.js
            .get_or_create_stream(stream::Config {
                name: format!("KV_{bucket}"),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: history,
                storage: stream::StorageType::File,
                num_replicas: self.config.replicas.max(1),
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                duplicate_window: std::time::Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| err(e.to_string()))?;
        self.js
            .get_key_value(bucket)
            .await
            .map_err(|e| err(e.to_string()))
    }

    /// True while the client is connected (for `/ready`).
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// Whether an existing stream has the settings Baton configures (subjects in any order,
/// storage, replicas, duplicate window, age): then [`Bus::ensure_streams`] leaves it alone.
fn same_settings(have: &stream::Config, want: &stream::Config) -> bool {
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    sorted(&have.subjects) == sorted(&want.subjects)
        && have.storage == want.storage
        && have.num_replicas == want.num_replicas
        && have.duplicate_window == want.duplicate_window
        && have.max_age == want.max_age
}

/// The headers of an event publish (all but `Nats-Msg-Id`): `Content-Type`, `Baton-Tenant`,
/// `Baton-Task-Id`, and `traceparent` from the current span.
fn event_headers(event: &Event) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", CONTENT_TYPE_PROTOBUF);
    if !event.tenant.is_empty() {
        headers.insert(TENANT_HEADER, event.tenant.as_str());
    }
    if !event.task_id.is_empty() {
        headers.insert(TASK_ID_HEADER, event.task_id.as_str());
    }
    trace::inject(&mut headers);
    headers
}

/// Waits for the stream's ack of a message sent by [`Bus::send`].
async fn confirm(
    subject: &str,
    msg_id: &str,
    ack: jetstream::context::PublishAckFuture,
) -> Result<Published, BusError> {
    let ack = ack.await.map_err(|e| BusError::Publish {
        subject: subject.to_string(),
        reason: e.to_string(),
    })?;
    debug!(
        subject,
        msg_id,
        seq = ack.sequence,
        duplicate = ack.duplicate,
        "published"
    );
    Ok(Published {
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    })
}

/// Decodes a protobuf [`Event`] and checks that it has a body this build knows.
pub fn decode_event(payload: &[u8]) -> Result<Event, DecodeError> {
    let event = Event::decode(payload).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    if event.body.is_none() {
        return Err(DecodeError::UnknownBody {
            event_id: event.event_id,
        });
    }
    Ok(event)
}
