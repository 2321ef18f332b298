//! gRPC clients of the Baton services with a bearer token on every call, and the one-line
//! rendering of audit records used by `baton watch` and the demo.

use baton_proto::approval_service_client::ApprovalServiceClient;
use baton_proto::event::Body;
use baton_proto::execution_service_client::ExecutionServiceClient;
use baton_proto::task_service_client::TaskServiceClient;
use baton_proto::trigger_service_client::TriggerServiceClient;
use baton_proto::{AuditRecord, PhaseKind, event_kind};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct BearerToken(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

type Authed = InterceptedService<Channel, BearerToken>;

/// Clients of all Baton gRPC services over one channel, authenticated with one token.
#[derive(Clone)]
pub struct Clients {
    /// `TriggerService` (ingestion): `SubmitTask`.
    pub triggers: TriggerServiceClient<Authed>,
    /// `ApprovalService` (validation): `ListPending`, `Approve`, `Reject`.
    pub approvals: ApprovalServiceClient<Authed>,
    /// `ExecutionService` (execution): `GetExecution`, a rollout's progress.
    pub executions: ExecutionServiceClient<Authed>,
    /// `TaskService` (audit): `GetTask`, `ListTasks`, `WatchTask`, `VerifyAudit`.
    pub tasks: TaskServiceClient<Authed>,
    /// `DecisionService` (decision): `Classify`, the decision it would make, without publishing.
    pub decisions: baton_proto::decision_service_client::DecisionServiceClient<Authed>,
    /// `AgentService` (agent runner): `ListAgents`, `ListTools`.
    pub agents: baton_proto::agent_service_client::AgentServiceClient<Authed>,
}

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not usable or the server is not there.
    #[error(
        "cannot connect to baton at {url}: {reason}; is `baton up` running? (set client.url or BATON_CLIENT__URL)"
    )]
    Connect {
        /// The endpoint as configured (`client.url`, `--url`).
        url: String,
        /// tonic's error and its cause (refused connection, bad URL).
        reason: String,
    },
    /// The token has characters that cannot go in a header.
    #[error("the token is not a valid header value")]
    BadToken,
}

/// TLS settings of a client for an `https://` URL: the CA that issued the server's
/// certificate (without one, the system's trusted CAs) and, for a server that asks for client
/// certificates (mutual TLS), the client's certificate and key. PEM contents, not paths.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// The CA certificate(s) to trust, PEM.
    pub ca: Option<Vec<u8>>,
    /// The client's certificate chain and private key, PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Clients {
    /// Connects to `url` (`http://127.0.0.1:50051`) with `token`; an `https://` URL is
    /// verified against the system's trusted CAs.
    pub async fn connect(url: &str, token: &str) -> Result<Clients, ClientError> {
        Self::connect_tls(url, token, &ClientTls::default()).await
    }

    /// Connects to `url` with `token`; for an `https://` URL, over TLS with `tls` (ignored for
    /// `http://`).
    pub async fn connect_tls(
        url: &str,
        token: &str,
        tls: &ClientTls,
    ) -> Result<Clients, ClientError> {
        let err = |reason: String| ClientError::Connect {
            url: url.to_string(),
            reason,
        };
        let mut endpoint = Channel::from_shared(url.to_string()).map_err(|e| err(e.to_string()))?;
        if url.starts_with("https://") {
            baton_runtime::tls::install_crypto_provider();
            let mut config = tonic::transport::ClientTlsConfig::new();
            config = match &tls.ca {
                Some(ca) => config.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
                None => config.with_native_roots(),
            };
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| err(format!("unusable TLS settings: {e}")))?;
        }
        let channel = endpoint.connect().await.map_err(|e| {
            err(format!(
                "{e} ({})",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            ))
        })?;
        let bearer = BearerToken(
            format!("Bearer {token}")
                .parse()
                .map_err(|_| ClientError::BadToken)?,
        );
        let i = |c: Channel| InterceptedService::new(c, bearer.clone());
        Ok(Clients {
            triggers: TriggerServiceClient::new(i(channel.clone())),
            approvals: ApprovalServiceClient::new(i(channel.clone())),
            executions: ExecutionServiceClient::new(i(channel.clone())),
            tasks: TaskServiceClient::new(i(channel.clone())),
            decisions: baton_proto::decision_service_client::DecisionServiceClient::new(i(
                channel.clone()
            )),
            agents: baton_proto::agent_service_client::AgentServiceClient::new(i(channel)),
        })
    }
}

/// One line describing an audit record for humans: `#<sequence> <kind> <detail>`. A record
/// that execution merged from several events (`Body::unmerged`: a rollout's start with its
/// first phase's, a phase's completion with its last asset changes) gets one such line per
/// event, in order, all with the record's sequence, so it reads as the events did apart.
pub fn describe(record: &AuditRecord) -> String {
    let Some(event) = &record.event else {
        return "(empty record)".into();
    };
    match &event.body {
        Some(body) if body.stands_for() > 1 => body
            .unmerged()
            .into_iter()
            .map(|b| line(record.sequence, b.kind(), &Some(b)))
            .collect::<Vec<_>>()
            .join("\n"),
        body => line(record.sequence, event_kind(event), body),
    }
}

/// `#<sequence> <kind> <detail>` for one event body.
fn line(sequence: u64, kind: &str, body: &Option<Body>) -> String {
    let detail = match body {
        Some(Body::TriggerRejected(r)) => {
            let (_, size) = r.shown_payload();
            if r.payload_sha256.is_empty() {
                format!("trigger on {} rejected: {}", r.subject, r.reason)
            } else {
                format!(
                    "trigger on {} rejected ({size} bytes, sha256 {}): {}",
                    r.subject, r.payload_sha256, r.reason
                )
            }
        }
        Some(Body::TaskReceived(r)) => {
            let t = r.task.clone().unwrap_or_default();
            let trig = t.trigger.unwrap_or_default();
            format!(
                "\"{}\" from {} ({}), tenant {}",
                trig.text,
                t.submitted_by,
                if trig.environment.is_empty() {
                    "environment from rules"
                } else {
                    &trig.environment
                },
                t.tenant
            )
        }
        Some(Body::TaskRouted(r)) => {
            let d = r.decision.clone().unwrap_or_default();
            let s = d.spec.unwrap_or_default();
            format!(
                "→ role {} ({}, {}, risk {}, target {}) by {} with confidence {:.2}",
                s.role,
                s.task_type,
                s.environment,
                s.risk().label(),
                if s.target.is_empty() { "-" } else { &s.target },
                d.matched_by,
                d.confidence
            )
        }
        Some(Body::PlanProposed(p)) => {
            let plan = p.plan.clone().unwrap_or_default();
            let phases: Vec<String> = plan
                .phases
                .iter()
                .map(|ph| {
                    let ids: Vec<&str> = ph
                        .steps
                        .iter()
                        .filter_map(|s| s.asset.as_ref().map(|a| a.id.as_str()))
                        .collect();
                    format!("{} [{}]", ph.name, ids.join(", "))
                })
                .collect();
            format!(
                "{} — {}",
                plan.summary,
                if phases.is_empty() {
                    "no phases".into()
                } else {
                    phases.join(" → ")
                }
            )
        }
        Some(Body::AwaitingClarification(a)) => {
            let d = a.decision.clone().unwrap_or_default();
            format!(
                "waiting for an operator to choose the role (`baton route`): {}",
                d.explanation
            )
        }
        Some(Body::ToolCallAwaitingApproval(a)) => {
            let p = a.pending.clone().unwrap_or_default();
            format!(
                "tool call {} at agent step {} waits for an approver (`baton approve {} --step {}`): {}; arguments {}",
                p.tool, p.step, p.task_id, p.step, p.reason, p.arguments
            )
        }
        Some(Body::ToolCallDecided(d)) => {
            let p = d.pending.clone().unwrap_or_default();
            let a = d.approval.clone().unwrap_or_default();
            format!(
                "tool call {} at agent step {} {} by {}{}",
                p.tool,
                p.step,
                if a.approved { "approved" } else { "denied" },
                a.approver,
                if a.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", a.reason)
                }
            )
        }
        Some(Body::AwaitingApproval(a)) => {
            let v = a
                .pending
                .as_ref()
                .and_then(|p| p.validation.clone())
                .unwrap_or_default();
            format!(
                "waiting for an approver: quality {}/100; {}",
                v.quality.map(|q| q.total).unwrap_or(0),
                v.reasons.join("; ")
            )
        }
        Some(Body::TaskApproved(a)) => {
            let ap = a.approval.clone().unwrap_or_default();
            let v = a.validation.clone().unwrap_or_default();
            format!(
                "approved by {}{} (quality {}/100, policy {}; {})",
                ap.approver,
                if ap.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", ap.reason)
                },
                v.quality.map(|q| q.total).unwrap_or(0),
                v.policy
                    .map(|p| p.policy_version.chars().take(12).collect::<String>())
                    .unwrap_or_default(),
                match &a.signature {
                    Some(sig) => format!(
                        "signed by key {}, plan {}",
                        sig.key_id,
                        sig.plan_hash.chars().take(12).collect::<String>()
                    ),
                    None => "unsigned".to_string(),
                }
            )
        }
        Some(Body::TaskRejected(r)) => format!("rejected: {}", r.reasons.join("; ")),
        Some(Body::ExecutionStarted(e)) => {
            format!("rollout started: {} phases, {} steps", e.phases, e.steps)
        }
        Some(Body::PhaseStarted(p)) => {
            let canary = p.kind() == PhaseKind::Canary && !p.name.contains("canary");
            format!(
                "{}{} started: {}",
                p.name,
                if canary { " (canary)" } else { "" },
                p.asset_ids.join(", ")
            )
        }
        Some(Body::AssetUpdated(a)) => {
            let s = a.asset.clone().unwrap_or_default();
            let state = s
                .state()
                .as_str_name()
                .trim_start_matches("ASSET_STATE_")
                .to_ascii_lowercase();
            format!(
                "{} {}{}",
                s.asset_id,
                state,
                if s.detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.detail)
                }
            )
        }
        Some(Body::PhaseCompleted(p)) => format!(
            "{} {}",
            p.name,
            if p.healthy { "healthy" } else { "FAILED" }
        ),
        Some(Body::RollbackStarted(r)) => {
            format!("ROLLBACK of {}: {}", r.asset_ids.join(", "), r.reason)
        }
        Some(Body::TaskCompleted(_)) => "completed".into(),
        Some(Body::TaskFailed(f)) => format!("FAILED at {} ({}): {}", f.stage, f.code, f.reason),
        Some(Body::DeadLetter(d)) => format!(
            "dead letter from {} on {}: {}",
            d.service, d.subject, d.reason
        ),
        None => "(event of an unknown kind)".into(),
    };
    format!("#{sequence:<5} {kind:<18} {detail}")
}

/// True if this record ends its task (the same rule `WatchTask` ends its stream by).
pub fn is_final(record: &AuditRecord) -> bool {
    record
        .event
        .as_ref()
        .is_some_and(|e| baton_proto::ends_task(event_kind(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{
        AssetState, AssetStatus, AssetUpdated, Event, Execution, ExecutionStarted, ExecutionStatus,
        PhaseCompleted, PhaseStarted, TaskCompleted,
    };

    fn record(sequence: u64, body: Body) -> AuditRecord {
        AuditRecord {
            sequence,
            event: Some(Event::first("t1", "acme", "x", "execution", body)),
            ..Default::default()
        }
    }

    #[test]
    fn a_merged_record_reads_as_the_events_it_carries_did_apart() {
        let first = PhaseStarted {
            index: 0,
            name: "canary".into(),
            kind: PhaseKind::Canary as i32,
            asset_ids: vec!["web-01".into()],
        };
        let counts = ExecutionStarted {
            phases: 1,
            steps: 1,
            first_phase: None,
        };
        let merged = describe(&record(
            7,
            Body::ExecutionStarted(ExecutionStarted {
                first_phase: Some(first.clone()),
                ..counts.clone()
            }),
        ));
        let apart = [
            describe(&record(7, Body::ExecutionStarted(counts))),
            describe(&record(7, Body::PhaseStarted(first))),
        ];
        assert_eq!(merged, apart.join("\n"));
        assert_eq!(
            merged,
            "#7     execution_started  rollout started: 1 phases, 1 steps\n\
             #7     phase_started      canary started: web-01"
        );

        let applied = AssetStatus {
            asset_id: "web-01".into(),
            state: AssetState::Applied as i32,
            detail: "PUT /config: 200".into(),
        };
        let completed = PhaseCompleted {
            index: 0,
            name: "canary".into(),
            healthy: true,
            assets: vec![],
        };
        let merged = describe(&record(
            9,
            Body::PhaseCompleted(PhaseCompleted {
                assets: vec![applied.clone()],
                ..completed.clone()
            }),
        ));
        assert_eq!(
            merged,
            "#9     asset_updated      web-01 applied (PUT /config: 200)\n\
             #9     phase_completed    canary healthy"
        );
        let apart = [
            describe(&record(
                9,
                Body::AssetUpdated(AssetUpdated {
                    phase_index: 0,
                    asset: Some(applied.clone()),
                }),
            )),
            describe(&record(9, Body::PhaseCompleted(completed.clone()))),
        ];
        assert_eq!(merged, apart.join("\n"));

        // A rollout's end carries its last phase's completion, itself carrying the asset change.
        let execution = Execution {
            task_id: "t1".into(),
            status: ExecutionStatus::Succeeded as i32,
            ..Default::default()
        };
        let ended = describe(&record(
            11,
            Body::TaskCompleted(TaskCompleted {
                execution: Some(execution.clone()),
                last_phase: Some(PhaseCompleted {
                    assets: vec![applied.clone()],
                    ..completed.clone()
                }),
            }),
        ));
        let end_alone = describe(&record(
            11,
            Body::TaskCompleted(TaskCompleted {
                execution: Some(execution),
                last_phase: None,
            }),
        ));
        let apart = [
            describe(&record(
                11,
                Body::AssetUpdated(AssetUpdated {
                    phase_index: 0,
                    asset: Some(applied),
                }),
            )),
            describe(&record(11, Body::PhaseCompleted(completed))),
            end_alone.clone(),
        ];
        assert_eq!(ended, apart.join("\n"));
        assert_eq!(ended.lines().count(), 3, "{ended}");
        assert!(end_alone.contains("task_completed"), "{end_alone}");
    }
}
