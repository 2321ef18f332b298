//! A daily budget per tenant: tokens and money spent on model calls per UTC day, across all of
//! the tenant's tasks and all agent-runner replicas.
//!
//! Configured as `[agents.daily_budget]` (the default for every tenant) and
//! `[agents.daily_budget.tenants.<tenant>]` (a tenant's own limits; a limit it does not set is
//! the default's). A limit of 0 is no limit.
//!
//! The usage is counted in the JetStream KV bucket [`BUCKET`], key `<tenant>.<YYYY-MM-DD>`
//! (UTC), value [`Usage`] (JSON), with compare-and-set increments: concurrent tasks on any
//! replica add up exactly. The loop checks the tenant's usage before each model call it makes
//! (a call replayed from the journal costs nothing and is not checked) and adds each call's
//! tokens and cost after it; a tenant at or over a limit fails the task at once, with a reason
//! naming the budget, the tenant and the day. A call in flight when the limit is reached is
//! counted in full, so a day's usage may pass a limit by at most the calls in flight.

use baton_bus::kv::{Codec, Kv, KvError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// The KV bucket of the tenants' daily usage.
pub const BUCKET: &str = "baton_tenant_usage";

/// Attempts at a compare-and-set increment before giving up (each failure means another call
/// of the tenant counted meanwhile).
const ADD_ATTEMPTS: usize = 16;

/// Limits of one tenant per UTC day (0: none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DailyLimits {
    /// Tokens (input + output) of model calls per UTC day.
    pub tokens: u64,
    /// Money spent on model calls per UTC day, in US dollars (the providers' configured
    /// prices).
    pub cost_usd: f64,
}

/// A tenant's own limits over the default; an unset limit is the default's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantLimits {
    /// Tokens per UTC day (0: none).
    pub tokens: Option<u64>,
    /// US dollars per UTC day (0: none).
    pub cost_usd: Option<f64>,
}

/// `[agents.daily_budget]`: the default limits and each tenant's own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Tokens per UTC day of a tenant without its own (0: none).
    pub tokens: u64,
    /// US dollars per UTC day of a tenant without its own (0: none).
    pub cost_usd: f64,
    /// Tenant → its own limits.
    pub tenants: BTreeMap<String, TenantLimits>,
}

impl Config {
    /// The limits of `tenant`.
    pub fn limits(&self, tenant: &str) -> DailyLimits {
        let own = self.tenants.get(tenant).cloned().unwrap_or_default();
        DailyLimits {
            tokens: own.tokens.unwrap_or(self.tokens),
            cost_usd: own.cost_usd.unwrap_or(self.cost_usd),
        }
    }

    /// True when no tenant has a limit (nothing to count).
    pub fn is_unlimited(&self) -> bool {
        self.tokens == 0
            && self.cost_usd == 0.0
            && self
                .tenants
                .values()
                .all(|t| t.tokens.unwrap_or(0) == 0 && t.cost_usd.unwrap_or(0.0) == 0.0)
    }

    /// Checks the values; the message names the bad key.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |key: String, v: f64| {
            Err(format!(
                "{key} is {v}: set a number of US dollars of at least 0 (0: no limit)"
            ))
        };
        if !(self.cost_usd >= 0.0 && self.cost_usd.is_finite()) {
            return bad("agents.daily_budget.cost_usd".into(), self.cost_usd);
        }
        for (tenant, l) in &self.tenants {
            if let Some(c) = l.cost_usd
                && !(c >= 0.0 && c.is_finite())
            {
                return bad(format!("agents.daily_budget.tenants.{tenant}.cost_usd"), c);
            }
        }
        Ok(())
    }
}

/// A tenant's usage on one UTC day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens (input + output).
    pub tokens: u64,
    /// Cost in millionths of a US dollar.
    pub cost_micros: u64,
}

impl Codec for Usage {
    fn to_bytes(&self) -> bytes::Bytes {
        serde_json::to_vec(self)
            .expect("usage is plain data")
            .into()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a tenant usage record: {e}"))
    }
}

/// The UTC day of `at` as `YYYY-MM-DD`.
pub fn utc_day(at: SystemTime) -> String {
    let text = humantime_serde::re::humantime::format_rfc3339_seconds(at).to_string();
    text[..10].to_string()
}

/// The key of `tenant`'s usage on `day`: `<tenant>.<day>` (characters unsafe in a key
/// replaced by `_`).
pub fn key(tenant: &str, day: &str) -> String {
    let tenant = if tenant.is_empty() { "default" } else { tenant };
    format!("{}.{day}", crate::journal::safe_id(tenant))
}

/// The daily budgets of one bus.
#[derive(Clone)]
pub struct TenantBudgets {
    config: Config,
    kv: Kv<Usage>,
}

impl std::fmt::Debug for TenantBudgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantBudgets")
            .field("config", &self.config)
            .finish()
    }
}

impl TenantBudgets {
    /// Opens (creating if needed) the usage bucket on `bus` (history 1).
    pub async fn open(
        bus: &baton_bus::Bus,
        config: Config,
    ) -> Result<TenantBudgets, baton_bus::BusError> {
        Ok(TenantBudgets {
            config,
            kv: bus.kv::<Usage>(BUCKET, 1).await?,
        })
    }

    /// `tenant`'s usage on `day`.
    pub async fn usage(&self, tenant: &str, day: &str) -> Result<Usage, KvError> {
        Ok(self
            .kv
            .get(&key(tenant, day))
            .await?
            .map(|(u, _)| u)
            .unwrap_or_default())
    }

    /// `Err(reason)` when `tenant` is at or over a limit today (UTC); the reason names the
    /// budget, the tenant, the day and the usage. `Ok(Err)` is NATS failing.
    pub async fn check(&self, tenant: &str) -> Result<Result<(), String>, KvError> {
        let limits = self.config.limits(tenant);
        if limits.tokens == 0 && limits.cost_usd == 0.0 {
            return Ok(Ok(()));
        }
        let day = utc_day(SystemTime::now());
        let used = self.usage(tenant, &day).await?;
        if limits.tokens > 0 && used.tokens >= limits.tokens {
            return Ok(Err(format!(
                "tenant {tenant} is over its daily token budget ({} tokens per UTC day; used {} on {day}); raise agents.daily_budget or wait for the next UTC day",
                limits.tokens, used.tokens
            )));
        }
        let max_micros = (limits.cost_usd * 1e6).round() as u64;
        if max_micros > 0 && used.cost_micros >= max_micros {
            return Ok(Err(format!(
                "tenant {tenant} is over its daily money budget (${:.4} per UTC day; used ${:.4} on {day}); raise agents.daily_budget or wait for the next UTC day",
                limits.cost_usd,
                used.cost_micros as f64 / 1e6
            )));
        }
        Ok(Ok(()))
    }

    /// Adds `tokens` and `cost_micros` to `tenant`'s usage today (UTC), with compare-and-set;
    /// returns the new usage.
    pub async fn add(&self, tenant: &str, tokens: u64, cost_micros: u64) -> Result<Usage, KvError> {
        let k = key(tenant, &utc_day(SystemTime::now()));
        let mut last = None;
        for _ in 0..ADD_ATTEMPTS {
            let (now, written) = match self.kv.get(&k).await? {
                None => {
                    let u = Usage {
                        tokens,
                        cost_micros,
                    };
                    (u, self.kv.create(&k, &u).await)
                }
                Some((u, revision)) => {
                    let u = Usage {
                        tokens: u.tokens.saturating_add(tokens),
                        cost_micros: u.cost_micros.saturating_add(cost_micros),
                    };
                    (u, self.kv.update(&k, &u, revision).await)
                }
            };
            match written {
                Ok(_) => return Ok(now),
                Err(e @ KvError::Conflict { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_overrides_only_the_limits_it_sets() {
        let c: Config = toml::from_str(
            "tokens = 1000\ncost_usd = 2.5\n[tenants.acme]\ntokens = 50\n[tenants.free]\ncost_usd = 0.0\n",
        )
        .unwrap();
        assert_eq!(
            c.limits("acme"),
            DailyLimits {
                tokens: 50,
                cost_usd: 2.5
            }
        );
        assert_eq!(
            c.limits("other"),
            DailyLimits {
                tokens: 1000,
                cost_usd: 2.5
            }
        );
        assert_eq!(c.limits("free").cost_usd, 0.0);
        assert!(!c.is_unlimited());
        assert!(Config::default().is_unlimited());
        assert_eq!(utc_day(SystemTime::UNIX_EPOCH), "1970-01-01");
        assert_eq!(key("a.b", "2026-11-30"), "a_b.2026-11-30");
    }
}
