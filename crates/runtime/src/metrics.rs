//! Prometheus metrics of all services, named and described in one place, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Mutex;

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
        Metrics {
            registry: Mutex::new(registry),
            messages,
            handler_seconds,
            policy_decisions,
            executions,
            audit_records,
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
}
