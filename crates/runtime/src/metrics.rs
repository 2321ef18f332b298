//! Prometheus metrics of all services, named and described in one place, served on `/metrics`.
//! The exposed names are the constants of [`names`]; the dashboard
//! (`deploy/grafana/baton.json`) and the alert rules (`deploy/prometheus/alerts.yml`) use only
//! those, which a test checks.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// The exposed metric names (with the `baton_` prefix and the `_total` suffix of counters),
/// for dashboards, alert rules and tests. Histograms also expose `_bucket`, `_sum` and
/// `_count` series.
pub mod names {
    /// Counter `{service, outcome}`: messages handled by each service (stage). Outcomes: `ok`,
    /// a handler's own label (`routed`, `approved`, …), `retry`, `rejected`.
    pub const MESSAGES: &str = "baton_messages_total";
    /// Histogram `{service, outcome}`, seconds: time to handle one message: the latency of
    /// each stage.
    pub const STAGE_SECONDS: &str = "baton_handler_seconds";
    /// Counter `{status}`: tasks that reached a final status (`completed`, `failed`,
    /// `rejected`), counted once each, as the audit log stores the final event.
    pub const TASKS: &str = "baton_tasks_total";
    /// Counter `{verdict}`: validation verdicts (`approved`, `awaiting_approval`, `rejected`).
    pub const POLICY_DECISIONS: &str = "baton_policy_decisions_total";
    /// Counter `{service, outcome}`: finished rollouts (`succeeded`, `failed`, …).
    pub const EXECUTIONS: &str = "baton_executions_total";
    /// Counter: events stored in the audit log.
    pub const AUDIT_RECORDS: &str = "baton_audit_records_total";
    /// Counter: batches the audit log could not store (they are redelivered).
    pub const AUDIT_WRITE_ERRORS: &str = "baton_audit_write_errors_total";
    /// Counter: batches the audit log committed (one database transaction each); records per
    /// commit is `baton_audit_records_total` over this.
    pub const AUDIT_BATCHES: &str = "baton_audit_batches_total";
    /// Histogram, seconds: from an event's time to its storage in the audit log.
    pub const AUDIT_LAG_SECONDS: &str = "baton_audit_lag_seconds";
    /// Gauge `{stream, consumer}`: messages of the stream not yet delivered to the durable
    /// consumer (its lag), from JetStream's consumer info.
    pub const CONSUMER_PENDING: &str = "baton_consumer_pending_messages";
    /// Gauge `{stream, consumer}`: messages delivered and not yet acknowledged.
    pub const CONSUMER_ACK_PENDING: &str = "baton_consumer_ack_pending_messages";
    /// Gauge `{stream, consumer}`: messages delivered more than once and not yet acknowledged.
    pub const CONSUMER_REDELIVERED: &str = "baton_consumer_redelivered_messages";
    /// Gauge `{stream, consumer}`: the stream sequence below which every message is
    /// acknowledged; a consumer whose ack floor stops moving while messages wait is stuck.
    pub const CONSUMER_ACK_FLOOR: &str = "baton_consumer_ack_floor_sequence";

    /// Every name above (for checks of dashboards and rules).
    pub const ALL: &[&str] = &[
        MESSAGES,
        STAGE_SECONDS,
        TASKS,
        POLICY_DECISIONS,
        EXECUTIONS,
        AUDIT_RECORDS,
        AUDIT_WRITE_ERRORS,
        AUDIT_BATCHES,
        AUDIT_LAG_SECONDS,
        CONSUMER_PENDING,
        CONSUMER_ACK_PENDING,
        CONSUMER_REDELIVERED,
        CONSUMER_ACK_FLOOR,
    ];
}

/// How often each process reads its durable consumers' info for the `baton_consumer_*`
/// gauges: one JetStream request per consumer per period, never per event.
pub const CONSUMER_POLL: Duration = Duration::from_secs(10);

/// Labels of the per-consumer gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    /// Stream (`BATON`).
    pub stream: String,
    /// Durable consumer name (`decision`, `audit`, …).
    pub consumer: String,
}

/// Labels of [`names::TASKS`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// `completed`, `failed`, `rejected`.
    pub status: String,
}

/// Labels of per-stage counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// Service (`ingestion`, …).
    pub service: String,
    /// Outcome (`ok`, `rejected`, `failed`, …).
    pub outcome: String,
}

/// Labels of policy decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// `approved`, `awaiting_approval`, `rejected`.
    pub verdict: String,
}

/// All metrics. Registered once per process.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// `baton_messages_total{service,outcome}`: messages handled by each service.
    pub messages: Family<StageLabels, Counter>,
    /// `baton_handler_seconds{service,outcome}`: time spent per message.
    pub handler_seconds: Family<StageLabels, Histogram>,
    /// `baton_policy_decisions_total{verdict}`.
    pub policy_decisions: Family<VerdictLabels, Counter>,
    /// `baton_executions_total{service,outcome}`: finished rollouts.
    pub executions: Family<StageLabels, Counter>,
    /// `baton_audit_records_total`: events stored in the audit log.
    pub audit_records: Counter,
    /// `baton_audit_write_errors_total`: batches the audit log could not store.
    pub audit_write_errors: Counter,
    /// `baton_audit_batches_total`: batches the audit log committed (one transaction each).
    pub audit_batches: Counter,
    /// `baton_audit_lag_seconds`: event time to storage in the audit log.
    pub audit_lag_seconds: Histogram,
    /// `baton_tasks_total{status}`: tasks by final status.
    pub tasks: Family<StatusLabels, Counter>,
    /// `baton_consumer_pending_messages{stream,consumer}`.
    pub consumer_pending: Family<ConsumerLabels, Gauge>,
    /// `baton_consumer_ack_pending_messages{stream,consumer}`.
    pub consumer_ack_pending: Family<ConsumerLabels, Gauge>,
    /// `baton_consumer_redelivered_messages{stream,consumer}`.
    pub consumer_redelivered: Family<ConsumerLabels, Gauge>,
    /// `baton_consumer_ack_floor_sequence{stream,consumer}`.
    pub consumer_ack_floor: Family<ConsumerLabels, Gauge<u64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("baton");
        let messages = Family::<StageLabels, Counter>::default();
        let handler_seconds = Family::<StageLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let policy_decisions = Family::<VerdictLabels, Counter>::default();
        let executions = Family::<StageLabels, Counter>::default();
        let audit_records = Counter::default();
        let audit_write_errors = Counter::default();
        let audit_batches = Counter::default();
        let audit_lag_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let tasks = Family::<StatusLabels, Counter>::default();
        let consumer_pending = Family::<ConsumerLabels, Gauge>::default();
        let consumer_ack_pending = Family::<ConsumerLabels, Gauge>::default();
        let consumer_redelivered = Family::<ConsumerLabels, Gauge>::default();
        let consumer_ack_floor = Family::<ConsumerLabels, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "messages",
            "Messages handled, by service and outcome",
            messages.clone(),
        );
        registry.register(
            "handler_seconds",
            "Time to handle one message",
            handler_seconds.clone(),
        );
        registry.register(
            "policy_decisions",
            "Validation verdicts",
            policy_decisions.clone(),
        );
        registry.register(
            "executions",
            "Finished rollouts, by outcome",
            executions.clone(),
        );
        registry.register(
            "audit_records",
            "Events stored in the audit log",
            audit_records.clone(),
        );
        registry.register(
            "audit_write_errors",
            "Batches the audit log could not store (redelivered)",
            audit_write_errors.clone(),
        );
        registry.register(
            "audit_batches",
            "Batches the audit log committed, one database transaction each",
            audit_batches.clone(),
        );
        registry.register(
            "audit_lag_seconds",
            "Time from an event to its storage in the audit log",
            audit_lag_seconds.clone(),
        );
        registry.register("tasks", "Tasks by final status", tasks.clone());
        registry.register(
            "consumer_pending_messages",
            "Messages not yet delivered to a durable consumer (its lag)",
            consumer_pending.clone(),
        );
        registry.register(
            "consumer_ack_pending_messages",
            "Messages delivered to a durable consumer and not yet acknowledged",
            consumer_ack_pending.clone(),
        );
        registry.register(
            "consumer_redelivered_messages",
            "Messages redelivered to a durable consumer and not yet acknowledged",
            consumer_redelivered.clone(),
        );
        registry.register(
            "consumer_ack_floor_sequence",
            "Stream sequence below which a durable consumer has acknowledged everything",
            consumer_ack_floor.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            messages,
            handler_seconds,
            policy_decisions,
            executions,
            audit_records,
            audit_write_errors,
            audit_batches,
            audit_lag_seconds,
            tasks,
            consumer_pending,
            consumer_ack_pending,
            consumer_redelivered,
            consumer_ack_floor,
        }
    }
}

impl Metrics {
    /// Counts one handled message and its duration.
    pub fn observe(&self, service: &str, outcome: &str, seconds: f64) {
        let labels = StageLabels {
            service: service.into(),
            outcome: outcome.into(),
        };
        self.messages.get_or_create(&labels).inc();
        self.handler_seconds.get_or_create(&labels).observe(seconds);
    }

    /// Records a consumer handler's result, labelled by its own outcome (`Ok(label)`) or by
    /// [`baton_bus::HandlerError::outcome`], with the time since `started`, and passes the result
    /// on without the label, as `Bus::consume` expects it.
    pub fn observe_handler(
        &self,
        service: &str,
        started: std::time::Instant,
        result: Result<&'static str, baton_bus::HandlerError>,
    ) -> Result<(), baton_bus::HandlerError> {
        let outcome = match &result {
            Ok(label) => label,
            Err(e) => e.outcome(),
        };
        self.observe(service, outcome, started.elapsed().as_secs_f64());
        result.map(|_| ())
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics registry lock");
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String");
        out
    }

    /// Reads the info of every durable consumer this process created ([`baton_bus::Bus::consumers`])
    /// into the `baton_consumer_*` gauges; a consumer whose info cannot be read keeps its last
    /// values (logged at debug).
    pub async fn poll_consumers(&self, bus: &baton_bus::Bus) {
        for (stream, durable) in bus.consumers() {
            let info = match bus.consumer_info(&stream, &durable).await {
                Ok(info) => info,
                Err(e) => {
                    tracing::debug!(error = %e, %stream, consumer = %durable, "cannot read consumer info");
                    continue;
                }
            };
            let labels = ConsumerLabels {
                stream,
                consumer: durable,
            };
            let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            self.consumer_pending
                .get_or_create(&labels)
                .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
            self.consumer_ack_pending
                .get_or_create(&labels)
                .set(gauge(info.num_ack_pending));
            self.consumer_redelivered
                .get_or_create(&labels)
                .set(gauge(info.num_redelivered));
            self.consumer_ack_floor
                .get_or_create(&labels)
                .set(info.ack_floor.stream_sequence);
        }
    }

    /// Polls [`Metrics::poll_consumers`] every `every` until `shutdown`.
    pub fn spawn_consumer_poller(
        self: std::sync::Arc<Self>,
        bus: baton_bus::Bus,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => self.poll_consumers(&bus).await,
                }
            }
        })
    }

    /// Counts the final events among `subjects` (`baton.task.completed`, `.failed`,
    /// `.rejected`) in [`names::TASKS`]; call it once per stored event.
    pub fn count_final(&self, subject: &str) {
        use baton_proto::subject::{TASK_COMPLETED, TASK_FAILED, TASK_REJECTED};
        let status = match subject {
            TASK_COMPLETED => "completed",
            TASK_FAILED => "failed",
            TASK_REJECTED => "rejected",
            _ => return,
        };
        self.tasks
            .get_or_create(&StatusLabels {
                status: status.into(),
            })
            .inc();
    }
}
