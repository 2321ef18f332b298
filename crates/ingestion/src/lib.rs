//! The ingestion service: Baton's front door. It turns triggers into tasks.
//!
//! In: `baton.trigger.<tenant>.<source…>` (durable consumer `ingestion`; JSON or protobuf
//! `baton.v1.Trigger`), and gRPC `baton.v1.TriggerService/SubmitTask`.
//!
//! A NATS trigger's tenant is the subject's first token after `baton.trigger`: the NATS server
//! lets a trigger publisher publish only under its own tenant (see `baton_bus::identity`), so
//! the tenant is the one its credential was allowed, whatever `Baton-Tenant` header it sets
//! (the header is ignored). A gRPC submission is its caller's tenant (the token's).
//! Out: `baton.task.received` (`TaskReceived`, event id `<task_id>.received`) for an accepted
//! trigger, `baton.ingestion.rejected` (`TriggerRejected`) for a NATS trigger it refuses:
//! the payload's SHA-256, size and first [`REJECTED_PREFIX_MAX`] bytes with the (bounded)
//! reason, never the payload itself (see [`TriggerRejected::for_payload`]).
//!
//! Every trigger is validated the same way whichever way it came ([`validate::normalise`]).
//!
//! Task ids are time-ordered: the UUID v7 layout (RFC 9562), so ids sort by creation time and
//! the audit log's indexes and the key-value stores keyed by task grow at their end instead of
//! rewriting pages all over (`cargo bench -p baton-tests --bench pipeline`: SQLite wrote ~83 KB
//! per task instead of ~190 KB with hash-like ids). They are also deterministic wherever a
//! retry could happen:
//! - a NATS trigger gets [`task_id_for_sequence`]: its time and the rest of its bits from its
//!   stream sequence, so a redelivered trigger never becomes a second task;
//! - a trigger with an idempotency key publishes its `task.received` under the message id
//!   [`idempotency_msg_id`] (tenant and key), so within the stream's duplicate window a second
//!   submission stores nothing, and is answered with the task id of the first (read back from
//!   the stream);
//! - a gRPC submission without a key gets a fresh UUID v7.
//!
//! gRPC callers need the `submitter` role and are rate-limited per tenant.

pub mod validate;

use baton_bus::{ConsumerSpec, Delivery, HandlerError};
use baton_proto::trigger_service_server::{TriggerService, TriggerServiceServer};
use baton_proto::{
    Event, SubmitTaskRequest, SubmitTaskResponse, Task, TaskReceived, Trigger, TriggerRejected,
    event::Body, redact, subject,
};
use baton_runtime::Context;
use baton_runtime::auth::Role;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

/// Producer name on events and the metrics label.
pub const SERVICE: &str = "ingestion";
/// gRPC services this crate serves (for gRPC health).
pub const GRPC_SERVICES: &[&str] = &["baton.v1.TriggerService"];
/// Durable consumer name on `baton.trigger.>`.
pub const DURABLE: &str = "ingestion";
/// Namespace of the UUID v5 task ids ingestion derives.
pub const TASK_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5b1c_07a2_4e3d_5f68_9a0b_c1d2_e3f4_a5b6);
/// Most payload bytes a `TriggerRejected` event keeps (its prefix; the event also carries the
/// payload's SHA-256 and size): see [`baton_proto::TRIGGER_REJECTED_PREFIX_MAX`] for why.
pub const REJECTED_PREFIX_MAX: usize = baton_proto::TRIGGER_REJECTED_PREFIX_MAX;
/// Longest accepted tenant name (a trigger subject's tenant token), in bytes.
pub const MAX_TENANT_BYTES: usize = 128;

/// Settings of the ingestion service (`[ingestion]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Longest accepted trigger text, in bytes (after trimming whitespace).
    pub max_text_bytes: usize,
    /// Most labels one trigger may carry.
    pub max_labels: usize,
    /// Longest label key, in bytes.
    pub max_label_key_bytes: usize,
    /// Longest label value, in bytes.
    pub max_label_value_bytes: usize,
    /// gRPC submissions allowed per tenant per second (sustained); 0 disables rate limiting.
    pub rate_limit_per_second: u32,
    /// gRPC submissions a tenant may make at once above the sustained rate (at least 1 when
    /// rate limiting is on).
    pub burst: u32,
    /// NATS triggers handled at once by this process.
    pub concurrency: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_text_bytes: 16 * 1024,
            max_labels: 32,
            max_label_key_bytes: 64,
            max_label_value_bytes: 256,
            rate_limit_per_second: 50,
            burst: 100,
            concurrency: 64,
        }
    }
}

impl Config {
    /// Checks the settings; the message names the key to fix.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.max_text_bytes == 0 {
            return bad("ingestion.max_text_bytes must be at least 1");
        }
        if self.concurrency == 0 {
            return bad("ingestion.concurrency must be at least 1");
        }
        Ok(())
    }
}

/// What went wrong in ingestion.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid ingestion configuration: {0}")]
    Config(String),
    /// The trigger was refused; the message says why and what to do.
    #[error("invalid trigger: {0}")]
    InvalidTrigger(String),
    /// The task could not be published; the caller may retry (with the same idempotency key).
    #[error("nats unavailable: {0}; retry (with the same idempotency_key to avoid a second task)")]
    Unavailable(String),
    /// The tenant submits faster than `rate_limit_per_second`.
    #[error(
        "tenant {tenant} exceeds {per_second} submissions per second: retry in {} ms",
        retry_after.as_millis()
    )]
    RateLimited {
        /// The tenant that is over its rate (from the caller's token).
        tenant: String,
        /// The configured sustained rate.
        per_second: u32,
        /// When the next submission would be allowed.
        retry_after: Duration,
    },
    /// The trigger consumer could not be set up or read from.
    #[error(transparent)]
    Bus(#[from] baton_bus::BusError),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Config(_) => tonic::Code::FailedPrecondition,
            Error::InvalidTrigger(_) => tonic::Code::InvalidArgument,
            Error::Unavailable(_) | Error::Bus(_) => tonic::Code::Unavailable,
            Error::RateLimited { .. } => tonic::Code::ResourceExhausted,
        };
        tonic::Status::new(code, e.to_string())
    }
}

/// A trigger that became (or already was) a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The task's id.
    pub task_id: String,
    /// True when the stream already had this task (same idempotency key, or a redelivered
    /// trigger): nothing new was published.
    pub deduplicated: bool,
}

/// The `Nats-Msg-Id` of the `task.received` of a trigger with an idempotency key:
/// `key.<UUID v5 over tenant + "\0" + key>`, so the stream drops a second submission of the same
/// key of the same tenant within its duplicate window. Tenants never contain NUL
/// ([`validate::tenant`]), so the separator is unambiguous.
pub fn idempotency_msg_id(tenant: &str, key: &str) -> String {
    format!(
        "key.{}",
        Uuid::new_v5(&TASK_ID_NAMESPACE, format!("{tenant}\0{key}").as_bytes())
    )
}

/// A deterministic time-ordered id: the UUID v7 layout (RFC 9562 §5.7) with `unix_millis` as
/// its timestamp and the other 74 bits from a UUID v5 over `seed`.
pub fn time_ordered_id(unix_millis: u64, seed: &str) -> Uuid {
    let hash = Uuid::new_v5(&TASK_ID_NAMESPACE, seed.as_bytes());
    let mut rest = [0u8; 10];
    rest.copy_from_slice(&hash.as_bytes()[6..]);
    uuid::Builder::from_unix_timestamp_millis(unix_millis, &rest).into_uuid()
}

/// The task id of a NATS trigger: [`time_ordered_id`] of when the stream stored it and
/// `<stream>:<sequence>`, both stable across redeliveries.
pub fn task_id_for_sequence(stream: &str, sequence: u64, stored_at_millis: u64) -> Uuid {
    time_ordered_id(stored_at_millis, &format!("{stream}:{sequence}"))
}

/// The task id under which a refused NATS trigger is recorded: [`time_ordered_id`] of when the
/// stream stored it and `rejected:<stream>:<sequence>`.
pub fn rejected_task_id(stream: &str, sequence: u64, stored_at_millis: u64) -> Uuid {
    time_ordered_id(stored_at_millis, &format!("rejected:{stream}:{sequence}"))
}

/// Parses a trigger payload. A declared `Content-Type` decides: `application/json` is JSON,
/// `application/protobuf` is protobuf `baton.v1.Trigger`. Without one (or with another), a
/// payload whose first non-blank byte is `{` is read as JSON, and if that fails, as protobuf
/// (a protobuf can start that way: a 123-byte text is encoded `0x0a 0x7b …`, a newline and a
/// brace); anything else is protobuf.
///
/// Errors: what is wrong with the payload (serde's message with line and column for JSON) and
/// what to send instead.
pub fn parse_trigger(payload: &[u8], content_type: Option<&str>) -> Result<Trigger, String> {
    let declared = content_type
        .and_then(|ct| ct.split(';').next())
        .map(|ct| ct.trim().to_ascii_lowercase());
    let json = || {
        serde_json::from_slice::<Trigger>(payload).map_err(|e| {
            format!(
                "malformed JSON trigger: {e}; send an object like \
                 {{\"text\":\"Fix drift on production web servers\",\"environment\":\"production\"}}"
            )
        })
    };
    let protobuf = || {
        Trigger::decode(payload).map_err(|e| {
            format!(
                "payload is neither JSON nor a baton.v1.Trigger protobuf ({e}); publish a JSON \
                 object like {{\"text\":\"…\"}} or an encoded baton.v1.Trigger"
            )
        })
    };
    match declared.as_deref() {
        Some(baton_bus::CONTENT_TYPE_JSON) => json(),
        Some(baton_bus::CONTENT_TYPE_PROTOBUF) => protobuf(),
        _ if payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') => {
            json().or_else(|json_error| protobuf().map_err(|_| json_error))
        }
        _ => protobuf(),
    }
}

/// The ingestion service: the trigger consumer and the `TriggerService` gRPC server.
#[derive(Clone)]
pub struct Ingestion {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Context,
    config: Config,
    /// Per-tenant token buckets of gRPC submissions; `None` when rate limiting is off.
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

/// What happened to one NATS trigger.
enum Outcome {
    Accepted(Submitted),
    Rejected,
}

impl Ingestion {
    /// Validates `config` and builds the service.
    ///
    /// Errors: [`Error::Config`] naming the setting to fix.
    pub async fn new(ctx: Context, config: Config) -> Result<Self, Error> {
        config.validate()?;
        let limiter = NonZeroU32::new(config.rate_limit_per_second).map(|rate| {
            let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
            DefaultKeyedRateLimiter::hashmap(Quota::per_second(rate).allow_burst(burst))
        });
        Ok(Ingestion {
            inner: Arc::new(Inner {
                ctx,
                config,
                limiter,
            }),
        })
    }

    /// Adds `baton.v1.TriggerService` to `routes`.
    pub fn add_grpc(&self, routes: &mut tonic::service::RoutesBuilder) {
        routes.add_service(TriggerServiceServer::new(TriggerApi {
            inner: self.inner.clone(),
        }));
    }

    /// Consumes `baton.trigger.>` until `shutdown`, then finishes the triggers in hand.
    ///
    /// Errors: [`Error::Bus`] when the consumer cannot be created.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let spec = ConsumerSpec::new(SERVICE, DURABLE, subject::TRIGGERS)
            .concurrency(self.inner.config.concurrency);
        let inner = self.inner.clone();
        info!(filter = subject::TRIGGERS, "ingestion consuming triggers");
        self.inner
            .ctx
            .bus
            .consume(spec, shutdown, move |delivery| {
                let inner = inner.clone();
                async move { inner.handle(delivery).await }
            })
            .await?;
        Ok(())
    }

    /// Validates `trigger` and publishes it as a task of `tenant` submitted by `submitted_by`,
    /// from `source` (overwriting the trigger's own `source`). Without an idempotency key the
    /// task gets a fresh UUID v7. Not rate-limited (callers that face users apply their own).
    ///
    /// Errors: [`Error::InvalidTrigger`] with the reason, [`Error::Unavailable`] when NATS did
    /// not store the task.
    pub async fn submit(
        &self,
        tenant: &str,
        submitted_by: &str,
        source: &str,
        trigger: Trigger,
    ) -> Result<Submitted, Error> {
        self.inner
            .submit(tenant, submitted_by, source, trigger)
            .await
    }
}

impl Inner {
    /// See [`Ingestion::submit`].
    async fn submit(
        &self,
        tenant: &str,
        submitted_by: &str,
        source: &str,
        mut trigger: Trigger,
    ) -> Result<Submitted, Error> {
        trigger.source = source.to_string();
        validate::tenant(tenant).map_err(Error::InvalidTrigger)?;
        validate::normalise(&mut trigger, &self.config, &self.ctx.catalog)
            .map_err(Error::InvalidTrigger)?;
        self.accept(tenant, submitted_by, trigger, Uuid::now_v7())
            .await
    }

    /// Publishes a validated trigger as `TaskReceived` of task `task_id`, or, when its
    /// idempotency key was submitted before (within the duplicate window), answers with the task
    /// of the first submission.
    async fn accept(
        &self,
        tenant: &str,
        submitted_by: &str,
        trigger: Trigger,
        task_id: Uuid,
    ) -> Result<Submitted, Error> {
        let task_id = task_id.to_string();
        let msg_id = (!trigger.idempotency_key.is_empty())
            .then(|| idempotency_msg_id(tenant, &trigger.idempotency_key));
        let source = trigger.source.clone();
        let task = Task {
            task_id: task_id.clone(),
            tenant: tenant.to_string(),
            submitted_by: submitted_by.to_string(),
            trigger: Some(trigger),
            received_at: Some(baton_proto::now()),
        };
        let event = Event::first(
            &task_id,
            tenant,
            "received",
            SERVICE,
            Body::TaskReceived(TaskReceived { task: Some(task) }),
        );
        let bus = &self.ctx.bus;
        let published = match &msg_id {
            Some(id) => {
                bus.publish_with_id(subject::TASK_RECEIVED, id, &event)
                    .await
            }
            None => bus.publish(subject::TASK_RECEIVED, &event).await,
        }
        .map_err(|e| Error::Unavailable(e.to_string()))?;
        let task_id = if published.duplicate && msg_id.is_some() {
            // The key's first submission is the task: read its id back.
            bus.stored_event(published.sequence)
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?
                .task_id
        } else {
            task_id
        };
        if published.duplicate {
            info!(task_id = %task_id, tenant, source, "duplicate trigger: task already received");
        } else {
            info!(task_id = %task_id, tenant, source, seq = published.sequence, "task received");
        }
        Ok(Submitted {
            task_id,
            deduplicated: published.duplicate,
        })
    }

    /// Handles one NATS trigger and records its metrics.
    async fn handle(&self, delivery: Delivery) -> Result<(), HandlerError> {
        let started = Instant::now();
        let result = self.handle_trigger(&delivery).await;
        let outcome = match &result {
            Ok(Outcome::Accepted(s)) if s.deduplicated => "duplicate",
            Ok(Outcome::Accepted(_)) => "ok",
            Ok(Outcome::Rejected) => "rejected",
            Err(_) => "retry",
        };
        self.ctx
            .metrics
            .observe(SERVICE, outcome, started.elapsed().as_secs_f64());
        result.map(|_| ())
    }

    async fn handle_trigger(&self, d: &Delivery) -> Result<Outcome, HandlerError> {
        let stream = self.ctx.bus.config().stream.clone();
        let sequence = d.stream_sequence();
        // The tenant is the subject's, which the publisher's NATS identity was allowed to
        // publish on; a `Baton-Tenant` header on a trigger is the publisher's claim and ignored.
        // The consumer's filter is `baton.trigger.>`, so the subject has at least one token.
        let (tenant, source) = subject::parse_trigger(d.subject()).unwrap_or(("", "nats"));
        let (tenant, source) = (tenant.to_string(), source.to_string());

        let parsed = validate::tenant(&tenant)
            .map_err(|e| format!("the trigger subject's tenant: {e}"))
            .and_then(|()| parse_trigger(d.payload(), d.header("Content-Type")))
            .and_then(|mut trigger| {
                trigger.source = source.clone();
                validate::normalise(&mut trigger, &self.config, &self.ctx.catalog).map(|()| trigger)
            });
        match parsed {
            Ok(trigger) => {
                let submitted_by = format!("nats:{source}");
                let task_id = task_id_for_sequence(&stream, sequence, d.stored_at_millis());
                match self.accept(&tenant, &submitted_by, trigger, task_id).await {
                    Ok(s) => Ok(Outcome::Accepted(s)),
                    Err(e) => Err(HandlerError::Retry(e.to_string())),
                }
            }
            Err(reason) => {
                let task_id = rejected_task_id(&stream, sequence, d.stored_at_millis()).to_string();
                // The payload is not kept, only its hash, size and a bounded prefix, and the
                // reason (which may quote the payload) is bounded too: a flood of large
                // malformed triggers must not grow the audit log by their size.
                let rejected = TriggerRejected::for_payload(d.subject(), &reason, d.payload());
                warn!(
                    task_id = %task_id,
                    tenant,
                    subject = d.subject(),
                    size = rejected.payload_size,
                    sha256 = %rejected.payload_sha256,
                    reason = %redact::for_log(&rejected.reason),
                    "trigger rejected"
                );
                let event = Event::first(
                    &task_id,
                    &tenant,
                    "rejected",
                    SERVICE,
                    Body::TriggerRejected(rejected),
                );
                self.ctx
                    .bus
                    .publish(subject::TRIGGER_REJECTED, &event)
                    .await?;
                Ok(Outcome::Rejected)
            }
        }
    }

    /// `RESOURCE_EXHAUSTED` when `tenant` is over its rate.
    fn check_rate(&self, tenant: &str) -> Result<(), Error> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        match limiter.check_key(&tenant.to_string()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                // Keep the per-tenant map from growing without bound.
                if limiter.len() > 10_000 {
                    limiter.retain_recent();
                }
                Err(Error::RateLimited {
                    tenant: tenant.to_string(),
                    per_second: self.config.rate_limit_per_second,
                    retry_after: not_until.wait_time_from(DefaultClock::default().now()),
                })
            }
        }
    }
}

/// The `TriggerService` gRPC server.
struct TriggerApi {
    inner: Arc<Inner>,
}

#[tonic::async_trait]
impl TriggerService for TriggerApi {
    async fn submit_task(
        &self,
        request: tonic::Request<SubmitTaskRequest>,
    ) -> Result<tonic::Response<SubmitTaskResponse>, tonic::Status> {
        let started = Instant::now();
        let principal = self.inner.ctx.auth.authenticate(&request).await?;
        principal.require(Role::Submitter)?;
        self.inner.check_rate(&principal.tenant)?;
        let trigger = request.into_inner().trigger.ok_or_else(|| {
            Error::InvalidTrigger("trigger is missing: set SubmitTaskRequest.trigger".into())
        })?;
        let result = self
            .inner
            .submit(&principal.tenant, &principal.subject, "grpc", trigger)
            .await;
        let outcome = match &result {
            Ok(s) if s.deduplicated => "duplicate",
            Ok(_) => "ok",
            Err(Error::InvalidTrigger(_)) => "rejected",
            Err(_) => "failed",
        };
        self.inner
            .ctx
            .metrics
            .observe(SERVICE, outcome, started.elapsed().as_secs_f64());
        let s = result?;
        Ok(tonic::Response::new(SubmitTaskResponse {
            task_id: s.task_id,
            deduplicated: s.deduplicated,
        }))
    }
}

impl baton_runtime::service::Service for Ingestion {
    type Config = Config;
    type Error = Error;
    const NAME: &'static str = SERVICE;
    const SECTION: &'static str = "ingestion";
    const GRPC_SERVICES: &'static [&'static str] = GRPC_SERVICES;

    fn validate(config: &Config) -> Result<(), Error> {
        config.validate()
    }

    fn start(
        ctx: Context,
        config: Config,
    ) -> impl std::future::Future<Output = Result<Self, Error>> + Send {
        Ingestion::new(ctx, config)
    }

    fn add_grpc(&self, routes: &mut tonic::service::RoutesBuilder) {
        Ingestion::add_grpc(self, routes)
    }

    fn serve(
        self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send {
        self.run(shutdown)
    }
}

/// Builds the service and consumes triggers until `shutdown` (the design's `run(config,
/// shutdown)`; the gRPC server is the caller's, via [`Ingestion::add_grpc`]).
pub async fn run(ctx: Context, config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    Ingestion::new(ctx, config).await?.run(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_tenant_same_msg_id_and_tenants_do_not_collide() {
        assert_eq!(
            idempotency_msg_id("acme", "k1"),
            idempotency_msg_id("acme", "k1")
        );
        assert_ne!(
            idempotency_msg_id("acme", "k1"),
            idempotency_msg_id("other", "k1")
        );
        assert_ne!(
            idempotency_msg_id("acme", "k1"),
            idempotency_msg_id("acme", "k2")
        );
        // "a\0b" + "c" and "a" + "b\0c" would collide without the tenant rule; tenants have no NUL.
        assert!(validate::tenant("a\0b").is_err());
    }

    #[test]
    fn sequence_ids_are_stable_time_ordered_v7_and_distinct_from_rejections() {
        let t = 1_763_700_000_000;
        let id = task_id_for_sequence("BATON", 7, t);
        assert_eq!(id, task_id_for_sequence("BATON", 7, t));
        assert_ne!(id, task_id_for_sequence("BATON", 8, t));
        assert_ne!(id, rejected_task_id("BATON", 7, t));
        assert_eq!(id.get_version_num(), 7);
        let (secs, nanos) = id.get_timestamp().expect("a v7 timestamp").to_unix();
        assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, t);
        // Later triggers sort after earlier ones, whatever their sequence.
        let later = task_id_for_sequence("BATON", 1, t + 1);
        assert!(
            later.to_string() > id.to_string(),
            "{later} sorts after {id}"
        );
    }

    #[test]
    fn json_is_detected_by_content_type_or_first_byte() {
        let t = parse_trigger(b"  {\"text\":\"hi\",\"environment\":\"staging\"}", None).unwrap();
        assert_eq!((t.text.as_str(), t.environment.as_str()), ("hi", "staging"));
        let err = parse_trigger(b"[1]", Some("application/json; charset=utf-8")).unwrap_err();
        assert!(err.starts_with("malformed JSON trigger"), "{err}");
    }

    #[test]
    fn malformed_json_reports_line_and_column() {
        let err = parse_trigger(b"{\"text\": \"x\",\n \"environment\" }", None).unwrap_err();
        assert!(err.contains("line 2 column"), "{err}");
    }

    #[test]
    fn unknown_json_fields_are_named() {
        let err = parse_trigger(br#"{"txt":"x"}"#, None).unwrap_err();
        assert!(err.contains("unknown field `txt`"), "{err}");
    }

    #[test]
    fn protobuf_round_trips_and_garbage_is_explained() {
        let t = Trigger {
            text: "Fix drift".into(),
            role: "drift".into(),
            ..Default::default()
        };
        assert_eq!(
            parse_trigger(&t.encode_to_vec(), Some("application/protobuf")).unwrap(),
            t
        );
        let err = parse_trigger(b"Fix drift please", None).unwrap_err();
        assert!(
            err.contains("neither JSON nor a baton.v1.Trigger protobuf"),
            "{err}"
        );
        // Found by the property test: a 123-byte text encodes as `\n{…`, which looks like
        // JSON. With its content type, or without, it is still the protobuf it is.
        let t = Trigger {
            text: "x".repeat(123),
            ..Default::default()
        };
        let bytes = t.encode_to_vec();
        assert_eq!(&bytes[..2], b"\n{");
        assert_eq!(
            parse_trigger(&bytes, Some("application/protobuf")).unwrap(),
            t
        );
        assert_eq!(parse_trigger(&bytes, None).unwrap(), t);
    }

    #[test]
    fn status_codes_are_explicit() {
        let code = |e: Error| tonic::Status::from(e).code();
        assert_eq!(
            code(Error::InvalidTrigger("x".into())),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(Error::Unavailable("x".into())),
            tonic::Code::Unavailable
        );
        let limited = Error::RateLimited {
            tenant: "acme".into(),
            per_second: 1,
            retry_after: Duration::from_millis(20),
        };
        assert_eq!(code(limited), tonic::Code::ResourceExhausted);
        assert!(
            tonic::Status::from(Error::Unavailable("down".into()))
                .message()
                .starts_with("nats unavailable: down")
        );
    }
}
