//! The drift runbook (`drift-runbook@1`): compares each in-scope asset's reported configuration
//! with its group's golden configuration and proposes a canary-then-waves rollout that puts the
//! drifted assets back to golden, with a rollback to what each asset reported.
//!
//! The planning itself ([`plan_phases`], [`build_plan`]) is pure; [`DriftRunbook`] adds the
//! inventory file and the `GET <address><config_path>` calls.

use crate::agent::{Agent, AgentError};
use crate::inventory::{Group, Inventory, InventoryAsset};
use baton_proto::{
    Action, AgentRun, Asset, HealthCheck, HttpAction, HttpProbe, Phase, PhaseKind, Plan, Step,
    Task, TaskSpec, ToolCall, action, health_check,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Name recorded in `AgentRun.agent`.
pub const NAME: &str = "drift-runbook@1";
/// Tool name of a configuration read, as recorded in `ToolCall.tool`.
pub const TOOL_GET_CONFIG: &str = "asset.get_config";
/// Health-check attempts per asset.
pub const HEALTH_ATTEMPTS: u32 = 3;
/// Pause between health-check attempts, in milliseconds.
pub const HEALTH_INTERVAL_MS: u32 = 200;

/// Largest number of assets in one wave: `max(1, floor(total_assets × fraction))`. A tiny
/// epsilon absorbs binary rounding (`0.29 × 100` is `28.999…`, meant as 29).
pub fn max_phase_size(total_assets: usize, fraction: f64) -> usize {
    ((total_assets as f64 * fraction + 1e-9).floor() as usize).max(1)
}

/// Sizes of the phases for `drifted` changed assets out of `total_assets` in scope: a canary
/// of one, then waves of at most [`max_phase_size`]. Empty when nothing drifted.
pub fn plan_phases(drifted: usize, total_assets: usize, fraction: f64) -> Vec<usize> {
    if drifted == 0 {
        return Vec::new();
    }
    let wave = max_phase_size(total_assets, fraction);
    let mut sizes = vec![1];
    let mut left = drifted - 1;
    while left > 0 {
        let n = left.min(wave);
        sizes.push(n);
        left -= n;
    }
    sizes
}

/// One key whose reported value differs from golden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDrift {
    /// Configuration key.
    pub key: String,
    /// What the asset reported; `None` when the key is missing.
    pub actual: Option<String>,
    /// The golden value.
    pub want: String,
}

/// What the runbook found on one in-scope asset.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The asset, from the inventory.
    pub asset: InventoryAsset,
    /// Its configuration as reported (the rollback target), values as the asset sent them.
    pub reported: BTreeMap<String, Value>,
    /// Keys that differ from golden or are missing, in key order; empty when in sync.
    pub drift: Vec<KeyDrift>,
}

/// The text of a reported value, for comparison with golden strings (`"8"` and `8` match).
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Keys of `golden` that `reported` lacks or holds with another value.
pub fn diff(
    golden: &BTreeMap<String, String>,
    reported: &BTreeMap<String, Value>,
) -> Vec<KeyDrift> {
    golden
        .iter()
        .filter_map(|(k, want)| {
            let actual = reported.get(k).map(value_text);
            (actual.as_deref() != Some(want.as_str())).then(|| KeyDrift {
                key: k.clone(),
                actual,
                want: want.clone(),
            })
        })
        .collect()
}

/// `nginx_version 1.22.1 → 1.24.0, worker_processes (missing) → 8`.
pub fn describe_drift(drift: &[KeyDrift]) -> String {
    drift
        .iter()
        .map(|d| {
            format!(
                "{} {} → {}",
                d.key,
                d.actual.as_deref().unwrap_or("(missing)"),
                d.want
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn join_url(address: &str, path: &str) -> String {
    format!("{}{}", address.trim_end_matches('/'), path)
}

fn put_config(
    url: &str,
    config: &impl serde::Serialize,
    key: String,
    description: String,
) -> Action {
    let body =
        serde_json::to_vec(&serde_json::json!({ "config": config })).expect("json of a string map");
    Action {
        idempotency_key: key.clone(),
        description,
        kind: Some(action::Kind::Http(HttpAction {
            method: "PUT".into(),
            url: url.to_string(),
            body,
            headers: [
                ("Content-Type".to_string(), "application/json".to_string()),
                ("Idempotency-Key".to_string(), key),
            ]
            .into(),
            expect_status: Vec::new(),
        })),
    }
}

fn step(task_id: &str, group: &Group, f: &Finding) -> Step {
    let a = &f.asset;
    let config_url = join_url(&a.address, &group.config_path);
    Step {
        asset: Some(Asset {
            id: a.id.clone(),
            name: a.name.clone().unwrap_or_else(|| a.id.clone()),
            kind: group.kind.clone(),
            address: a.address.clone(),
            labels: a.labels.clone().into_iter().collect(),
        }),
        action: Some(put_config(
            &config_url,
            &group.golden,
            format!("{task_id}:{}:apply", a.id),
            format!("set {} to the golden {} configuration", a.id, a.group),
        )),
        rollback: Some(put_config(
            &config_url,
            &f.reported,
            format!("{task_id}:{}:rollback", a.id),
            format!(
                "restore the configuration {} reported before the change",
                a.id
            ),
        )),
        health_check: Some(HealthCheck {
            attempts: HEALTH_ATTEMPTS,
            interval_ms: HEALTH_INTERVAL_MS,
            kind: Some(health_check::Kind::Http(HttpProbe {
                url: join_url(&a.address, &group.health_path),
                expect_status: 200,
            })),
        }),
        reason: describe_drift(&f.drift),
    }
}

/// The plan for the in-scope `findings` (all of them, sorted by asset id; in sync or not):
/// drifted assets only get steps, in a canary of one and then waves `wave 1`, `wave 2`, ….
/// `agent_run` holds no tool calls yet; the caller adds them.
pub fn build_plan(
    task_id: &str,
    group_name: &str,
    group: &Group,
    environment: &str,
    findings: &[Finding],
    max_phase_fraction: f64,
) -> Plan {
    let total = findings.len();
    let drifted: Vec<&Finding> = findings.iter().filter(|f| !f.drift.is_empty()).collect();
    let sizes = plan_phases(drifted.len(), total, max_phase_fraction);
    let mut phases = Vec::with_capacity(sizes.len());
    let mut next = drifted.iter();
    for (i, n) in sizes.iter().enumerate() {
        let (name, kind) = if i == 0 {
            ("canary".to_string(), PhaseKind::Canary)
        } else {
            (format!("wave {i}"), PhaseKind::Wave)
        };
        let steps = next
            .by_ref()
            .take(*n)
            .map(|f| step(task_id, group, f))
            .collect();
        phases.push(Phase {
            name,
            kind: kind as i32,
            steps,
        });
    }
    let summary = match drifted.first() {
        None => format!("no drift found on {total} assets ({group_name} in {environment})"),
        Some(canary) => {
            let waves = match sizes.len() - 1 {
                0 => String::new(),
                1 => ", then 1 wave".to_string(),
                n => format!(", then {n} waves"),
            };
            format!(
                "fix drift on {} of {total} {group_name} assets in {environment}: canary {}{waves}",
                drifted.len(),
                canary.asset.id
            )
        }
    };
    // Nothing to change is an answer, not an empty plan: it is delivered as a report (a plan
    // with no steps and nothing to deliver is refused by validation).
    let artifacts = if drifted.is_empty() {
        let report = baton_proto::report::Report {
            answer: summary.clone(),
            findings: findings
                .iter()
                .map(|f| format!("{} matches its golden configuration", f.asset.id).into())
                .collect(),
            recommendations: Vec::new(),
        };
        vec![report.to_artifact()]
    } else {
        Vec::new()
    };
    Plan {
        task_id: task_id.to_string(),
        summary,
        phases,
        total_assets: total as u32,
        artifacts,
        agent_run: None,
    }
}

/// Picks the group and the in-scope assets (sorted by id) for `spec`.
pub fn scope<'a>(
    inv: &'a Inventory,
    spec: &TaskSpec,
) -> Result<(&'a str, &'a Group, Vec<&'a InventoryAsset>), AgentError> {
    let target = spec.target.trim();
    let (name, group) = if target.is_empty() {
        if inv.groups.len() == 1 {
            inv.groups.iter().next().expect("one group")
        } else {
            return Err(AgentError::permanent(
                "task names no asset group; say e.g. 'web servers'".to_string(),
            ));
        }
    } else {
        inv.groups
            .get_key_value(target)
            .or_else(|| {
                inv.groups
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(target))
            })
            .ok_or_else(|| {
                AgentError::permanent(format!(
                    "unknown asset group {target:?}: the inventory has groups {}",
                    if inv.groups.is_empty() {
                        "(none)".to_string()
                    } else {
                        inv.group_names()
                    }
                ))
            })?
    };
    let env = spec.environment.trim();
    if env.is_empty() {
        return Err(AgentError::permanent(
            "task names no environment; say e.g. 'in production'".to_string(),
        ));
    }
    let mut assets: Vec<&InventoryAsset> = inv
        .assets
        .iter()
        .filter(|a| &a.group == name && a.environment == env)
        .collect();
    if assets.is_empty() {
        return Err(AgentError::permanent(format!(
            "the inventory has no {name} assets in {env}"
        )));
    }
    assets.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((name.as_str(), group, assets))
}

/// The drift runbook agent. Re-reads the inventory on every task, so the file may be written
/// or changed while the runner is up.
#[derive(Debug, Clone)]
pub struct DriftRunbook {
    inventory_path: PathBuf,
    client: reqwest::Client,
    max_phase_fraction: f64,
    fetch_concurrency: usize,
}

impl DriftRunbook {
    /// A runbook reading `inventory_path`, with `http_timeout` per request to an asset,
    /// waves of at most `max_phase_fraction` of the in-scope assets, and at most
    /// `fetch_concurrency` configuration reads at once.
    ///
    /// Errors: the HTTP client cannot be built (the message says why).
    pub fn new(
        inventory_path: PathBuf,
        http_timeout: Duration,
        max_phase_fraction: f64,
        fetch_concurrency: usize,
    ) -> Result<DriftRunbook, String> {
        let client = baton_runtime::tls::http_client()
            .timeout(http_timeout)
            .connect_timeout(http_timeout)
            .user_agent(concat!("baton-agent-runner/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the http client: {e}"))?;
        Ok(DriftRunbook {
            inventory_path,
            client,
            max_phase_fraction,
            fetch_concurrency: fetch_concurrency.max(1),
        })
    }

    /// `GET <address><config_path>` → `{"config": {...}}`, with the tool-call record.
    async fn read_config(
        &self,
        asset: &InventoryAsset,
        url: String,
    ) -> (Result<BTreeMap<String, Value>, AgentError>, u64) {
        let started = Instant::now();
        let result = self.fetch(asset, &url).await;
        (result, started.elapsed().as_millis() as u64)
    }

    async fn fetch(
        &self,
        asset: &InventoryAsset,
        url: &str,
    ) -> Result<BTreeMap<String, Value>, AgentError> {
        #[derive(serde::Deserialize)]
        struct Body {
            config: BTreeMap<String, Value>,
        }
        let id = &asset.id;
        let response = self.client.get(url).send().await.map_err(|e| {
            if e.is_builder() {
                AgentError::permanent(format!("asset {id}: bad config url {url}: {e}"))
            } else {
                AgentError::transient(format!("asset {id} unreachable: GET {url}: {e}"))
            }
        })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| AgentError::transient(format!("asset {id}: reading GET {url}: {e}")))?;
        if !status.is_success() {
            let msg = format!("asset {id} answered GET {url} with {status}");
            return Err(
                if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                    AgentError::transient(msg)
                } else {
                    AgentError::permanent(msg)
                },
            );
        }
        serde_json::from_slice::<Body>(&body).map(|b| b.config).map_err(|e| {
            AgentError::permanent(format!(
                "asset {id} answered GET {url} with something other than {{\"config\": {{...}}}}: {e}"
            ))
        })
    }

    async fn run(&self, task: &Task, spec: &TaskSpec) -> Result<Plan, AgentError> {
        let inv = Inventory::load(&self.inventory_path)
            .await
            .map_err(AgentError::Permanent)?;
        let (group_name, group, assets) = scope(&inv, spec)?;
        let mut pending = Vec::with_capacity(assets.len());
        for a in assets.iter().copied() {
            let url = join_url(&a.address, &group.config_path);
            pending.push(async move {
                let (result, latency_ms) = self.read_config(a, url.clone()).await;
                (a, url, result, latency_ms)
            });
        }
        let reads: Vec<_> = futures::stream::iter(pending)
            .buffered(self.fetch_concurrency)
            .collect()
            .await;
        let mut findings = Vec::with_capacity(reads.len());
        let mut tool_calls = Vec::with_capacity(reads.len());
        for (asset, url, result, latency_ms) in reads {
            let reported = result?;
            let drift = diff(&group.golden, &reported);
            let drifted_keys: Vec<&str> = drift.iter().map(|d| d.key.as_str()).collect();
            tool_calls.push(ToolCall {
                tool: TOOL_GET_CONFIG.into(),
                arguments: serde_json::json!({ "asset": asset.id, "url": url }).to_string(),
                result: serde_json::json!({ "keys": reported.len(), "drifted_keys": drifted_keys })
                    .to_string(),
                ok: true,
                latency_ms,
                decision: "allowed".into(),
                ..Default::default()
            });
            findings.push(Finding {
                asset: asset.clone(),
                reported,
                drift,
            });
        }
        let mut plan = build_plan(
            &task.task_id,
            group_name,
            group,
            spec.environment.trim(),
            &findings,
            self.max_phase_fraction,
        );
        plan.agent_run = Some(AgentRun {
            agent: NAME.into(),
            tool_calls,
            ..Default::default()
        });
        Ok(plan)
    }
}

impl Agent for DriftRunbook {
    fn name(&self) -> &str {
        NAME
    }

    fn kind(&self) -> baton_proto::AgentKind {
        baton_proto::AgentKind::Runbook
    }

    fn plan<'a>(
        &'a self,
        task: &'a Task,
        spec: &'a TaskSpec,
    ) -> BoxFuture<'a, Result<Plan, AgentError>> {
        Box::pin(self.run(task, spec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(id: &str) -> InventoryAsset {
        InventoryAsset {
            id: id.into(),
            name: None,
            group: "web".into(),
            environment: "production".into(),
            address: format!("http://{id}.invalid"),
            labels: Default::default(),
        }
    }

    fn group() -> Group {
        Group {
            kind: "web_server".into(),
            golden: [("nginx_version", "1.24.0"), ("tls_min_version", "1.2")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            config_path: "/config".into(),
            health_path: "/health".into(),
        }
    }

    fn finding(id: &str, drifted: bool) -> Finding {
        let g = group();
        let mut reported: BTreeMap<String, Value> = g
            .golden
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        if drifted {
            reported.insert("nginx_version".into(), Value::String("1.22.1".into()));
        }
        let drift = diff(&g.golden, &reported);
        Finding {
            asset: asset(id),
            reported,
            drift,
        }
    }

    #[test]
    fn ten_assets_six_drifted_is_a_canary_and_three_waves_of_two() {
        assert_eq!(plan_phases(6, 10, 0.2), vec![1, 2, 2, 1]);
        let findings: Vec<Finding> = (1..=10)
            .map(|i| finding(&format!("web-{i:02}"), [2, 3, 5, 6, 8, 9].contains(&i)))
            .collect();
        let plan = build_plan("t1", "web", &group(), "production", &findings, 0.2);
        assert_eq!(plan.total_assets, 10);
        assert_eq!(
            plan.summary,
            "fix drift on 6 of 10 web assets in production: canary web-02, then 3 waves"
        );
        let names: Vec<(&str, i32, Vec<String>)> = plan
            .phases
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.kind,
                    p.steps
                        .iter()
                        .map(|s| s.asset.as_ref().unwrap().id.clone())
                        .collect(),
                )
            })
            .collect();
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names,
            vec![
                ("canary", PhaseKind::Canary as i32, ids(&["web-02"])),
                ("wave 1", PhaseKind::Wave as i32, ids(&["web-03", "web-05"])),
                ("wave 2", PhaseKind::Wave as i32, ids(&["web-06", "web-08"])),
                ("wave 3", PhaseKind::Wave as i32, ids(&["web-09"])),
            ]
        );
        let s = &plan.phases[0].steps[0];
        assert_eq!(s.reason, "nginx_version 1.22.1 → 1.24.0");
        assert_eq!(
            s.action.as_ref().unwrap().idempotency_key,
            "t1:web-02:apply"
        );
        assert_eq!(
            s.rollback.as_ref().unwrap().idempotency_key,
            "t1:web-02:rollback"
        );
        let Some(action::Kind::Http(put)) = &s.rollback.as_ref().unwrap().kind else {
            panic!()
        };
        let body: Value = serde_json::from_slice(&put.body).unwrap();
        assert_eq!(body["config"]["nginx_version"], "1.22.1");
        assert_eq!(put.url, "http://web-02.invalid/config");
        let Some(health_check::Kind::Http(probe)) = &s.health_check.as_ref().unwrap().kind else {
            panic!("not an http health check")
        };
        assert_eq!(probe.url, "http://web-02.invalid/health");
    }

    #[test]
    fn one_asset_is_a_canary_only() {
        assert_eq!(plan_phases(1, 1, 0.2), vec![1]);
        let plan = build_plan(
            "t",
            "web",
            &group(),
            "staging",
            &[finding("web-01", true)],
            0.2,
        );
        assert_eq!(plan.phases.len(), 1);
        assert_eq!(
            plan.summary,
            "fix drift on 1 of 1 web assets in staging: canary web-01"
        );
    }

    #[test]
    fn no_drift_is_an_empty_plan() {
        assert!(plan_phases(0, 10, 0.2).is_empty());
        let findings: Vec<Finding> = (1..=4)
            .map(|i| finding(&format!("web-{i:02}"), false))
            .collect();
        let plan = build_plan("t", "web", &group(), "production", &findings, 0.2);
        assert!(plan.phases.is_empty());
        assert_eq!(plan.total_assets, 4);
        assert!(
            plan.summary.starts_with("no drift found on 4 assets"),
            "{}",
            plan.summary
        );
        // Delivered as a report, so validation accepts it as report-only.
        let report = baton_proto::report::Report::parse(plan.report_artifact().unwrap()).unwrap();
        assert_eq!(report.answer, plan.summary);
        assert_eq!(report.findings.len(), 4);
        assert!(plan.is_delivery_only());
    }

    #[test]
    fn wave_size_rounds_down_but_never_below_one() {
        assert_eq!(max_phase_size(10, 0.2), 2);
        assert_eq!(max_phase_size(14, 0.2), 2); // 2.8 → 2
        assert_eq!(max_phase_size(4, 0.2), 1); // 0.8 → at least 1
        assert_eq!(max_phase_size(100, 0.29), 29); // 28.999… in binary
        assert_eq!(max_phase_size(3, 1.0), 3);
        assert_eq!(plan_phases(4, 4, 0.2), vec![1, 1, 1, 1]);
        assert_eq!(plan_phases(10, 14, 0.2), vec![1, 2, 2, 2, 2, 1]);
        // No wave exceeds the policy's share of the total.
        for total in 1..60 {
            for drifted in 0..=total {
                let sizes = plan_phases(drifted, total, 0.2);
                assert_eq!(sizes.iter().sum::<usize>(), drifted);
                assert!(sizes.iter().all(|&n| n <= max_phase_size(total, 0.2)));
            }
        }
    }

    #[test]
    fn missing_and_numeric_values_are_compared_as_text() {
        let golden: BTreeMap<String, String> = [
            ("a".to_string(), "8".to_string()),
            ("b".to_string(), "x".to_string()),
        ]
        .into();
        let reported: BTreeMap<String, Value> = [("a".to_string(), serde_json::json!(8))].into();
        let d = diff(&golden, &reported);
        assert_eq!(d.len(), 1);
        assert_eq!(describe_drift(&d), "b (missing) → x");
    }

    #[test]
    fn scope_needs_a_known_group_and_an_environment() {
        let inv = Inventory {
            groups: [("web".to_string(), group()), ("db".to_string(), group())].into(),
            assets: vec![asset("web-02"), asset("web-01")],
        };
        let spec = |target: &str, env: &str| TaskSpec {
            target: target.into(),
            environment: env.into(),
            ..Default::default()
        };
        let (name, _, assets) = scope(&inv, &spec("web", "production")).unwrap();
        assert_eq!(name, "web");
        assert_eq!(
            assets.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
            ["web-01", "web-02"]
        );
        let err = scope(&inv, &spec("cache", "production")).unwrap_err();
        assert_eq!(
            err,
            AgentError::permanent(
                "unknown asset group \"cache\": the inventory has groups db, web"
            )
        );
        assert!(
            scope(&inv, &spec("", "production"))
                .unwrap_err()
                .to_string()
                .contains("names no asset group")
        );
        assert!(scope(&inv, &spec("web", "")).is_err());
        assert!(
            scope(&inv, &spec("db", "production"))
                .unwrap_err()
                .to_string()
                .contains("no db assets")
        );
    }
}
