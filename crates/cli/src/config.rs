//! `baton.toml`: the common settings plus one section per service, loaded as every Baton process
//! loads it (see `baton_runtime::config`): defaults → file (`--config`) → `BATON_*` env
//! (`BATON_NATS__URL`, `BATON_AUDIT__DATABASE_URL`) → flags → derived values → validation.
//! `baton config` prints the result, secrets redacted.

use baton_runtime::config::{
    CommonConfig, ConfigError, EnvVars, Layers, redact, redact_url_password,
};
use baton_runtime::service::load_section;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Everything a `baton` process can be configured with: [`CommonConfig`]'s keys at the top
/// level, then the sections of the `baton` command and of each service. Built by
/// [`BatonConfig::load`] (or by hand in tests, from [`Default`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatonConfig {
    /// The top-level keys every service shares (`[nats]`, `[auth]`, `[log]`, `grpc_addr`,
    /// `http_addr`, `data_dir`, `[catalog]`). An empty `nats.url` makes `baton up` start a
    /// nats-server child.
    #[serde(flatten)]
    pub common: CommonConfig,
    /// The nats-server child `baton up` starts when `nats.url` is empty.
    pub nats_server: NatsServerConfig,
    /// What the client commands talk to.
    pub client: ClientConfig,
    /// `[ingestion]`: trigger limits, rate limiting, default tenant.
    pub ingestion: baton_ingestion::Config,
    /// `[decision]`: the rules file and classification concurrency.
    pub decision: baton_decision::Config,
    /// `[agents]`: the agent runner (inventory, timeouts, wave size).
    pub agents: baton_agent_runner::Config,
    /// `[validation]`: the policy directory and the quality thresholds.
    pub validation: baton_validation::Config,
    /// `[execution]`: action timeouts, health checks, rollout concurrency.
    pub execution: baton_execution::Config,
    /// `[audit]`: the log's database and batching.
    pub audit: baton_audit::Config,
    /// `[llm]`: model providers by name (agents list them in failover order) and the local
    /// model server `baton up` starts.
    pub llm: baton_llm::LlmConfig,
}

impl BatonConfig {
    /// Loads defaults → `file` → the `BATON_*` variables of `env` → `flags`, fills derived
    /// values (`audit.database_url`, `agents.inventory_path` under `data_dir`) and validates
    /// every section: what `baton up` runs with.
    ///
    /// Errors: a missing file, an unknown key (naming it and where it was set), a value of the
    /// wrong type, a value a section's `validate` refuses (naming the key).
    pub fn load(
        file: Option<&Path>,
        env: &EnvVars,
        flags: impl figment::Provider,
    ) -> Result<BatonConfig, ConfigError> {
        let layers = Layers::new(&BatonConfig::default(), file, env, flags)?;
        let common = layers.common()?;
        common.validate()?;
        Ok(BatonConfig {
            nats_server: layers.section("nats_server")?,
            client: layers.section("client")?,
            ingestion: load_section::<baton_ingestion::Ingestion>(&layers, &common)?,
            decision: load_section::<baton_decision::Router>(&layers, &common)?,
            agents: load_section::<baton_agent_runner::AgentRunner>(&layers, &common)?,
            validation: load_section::<baton_validation::Validation>(&layers, &common)?,
            execution: load_section::<baton_execution::Executor>(&layers, &common)?,
            audit: load_section::<baton_audit::Audit>(&layers, &common)?,
            llm: {
                let llm: baton_llm::LlmConfig = layers.section("llm")?;
                llm.validate().map_err(ConfigError::Invalid)?;
                llm
            },
            common,
        })
    }

    /// The same configuration with every secret replaced by `<redacted>`: `auth.hs256_secret`,
    /// `client.token`, and passwords in `nats.url` and `audit.database_url`.
    pub fn redacted(&self) -> BatonConfig {
        let mut c = self.clone();
        c.common = self.common.redacted();
        c.client.token = redact(&c.client.token);
        c.audit.database_url = redact_url_password(&c.audit.database_url);
        c
    }

    /// The configuration as TOML, secrets redacted: what `baton config` prints.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(&self.redacted())
    }
}

/// The nats-server child of `baton up`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsServerConfig {
    /// The `nats-server` executable, by name on `PATH` or by path.
    pub binary: String,
    /// Port on 127.0.0.1 (0 = any free port).
    pub port: u16,
    /// Tenants that get a trigger publisher identity (`<data_dir>/nats/keys/trigger-<tenant>.nk`),
    /// allowed to publish only on `baton.trigger.<tenant>.>`.
    pub trigger_tenants: Vec<String>,
}

impl Default for NatsServerConfig {
    fn default() -> Self {
        NatsServerConfig {
            binary: "nats-server".into(),
            port: 4222,
            trigger_tenants: vec!["default".into()],
        }
    }
}

/// Where the client commands connect, and with which token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// gRPC endpoint (`http://127.0.0.1:50051`); `--url` and `BATON_URL` override it.
    pub url: String,
    /// Bearer token; when empty, the client mints one from the development secret in
    /// `data_dir` (local development only) with the roles the command needs. `--token` and
    /// `BATON_TOKEN` override it. Printed as `<redacted>`.
    pub token: String,
    /// Tenant of minted development tokens.
    pub tenant: String,
    /// For an `https://` url: the CA certificate (PEM file) that issued the server's
    /// certificate; empty trusts the system's CAs.
    pub ca: Option<std::path::PathBuf>,
    /// For a server with mutual TLS (`grpc_tls.client_ca`): this client's certificate (PEM
    /// file); needs `key`.
    pub cert: Option<std::path::PathBuf>,
    /// The private key (PEM file) of `cert`.
    pub key: Option<std::path::PathBuf>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            url: "http://127.0.0.1:50051".into(),
            token: String::new(),
            tenant: "default".into(),
            ca: None,
            cert: None,
            key: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_runtime::config::{CommonFlags, SECTIONS};

    #[test]
    fn the_sections_are_the_ones_the_thin_binaries_know() {
        let common: Vec<String> = match serde_json::to_value(CommonConfig::default()) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            other => panic!("{other:?}"),
        };
        let all = match serde_json::to_value(BatonConfig::default()) {
            Ok(serde_json::Value::Object(m)) => m,
            other => panic!("{other:?}"),
        };
        let mut sections: Vec<&str> = all
            .keys()
            .map(String::as_str)
            .filter(|k| !common.iter().any(|c| c == k))
            .collect();
        let mut known = SECTIONS.to_vec();
        sections.sort();
        known.sort();
        assert_eq!(
            sections, known,
            "keep baton_runtime::config::SECTIONS in step"
        );
    }

    #[test]
    fn the_llm_section_loads_from_the_environment_and_is_validated() {
        let env = EnvVars::from_pairs([
            (
                "BATON_LLM__PROVIDERS__GROQ__BASE_URL",
                "https://api.groq.com/openai/v1",
            ),
            ("BATON_LLM__PROVIDERS__GROQ__MODEL", "llama-3.1-8b-instant"),
            ("BATON_LLM__PROVIDERS__GROQ__API_KEY_ENV", "GROQ_API_KEY"),
        ]);
        let c = BatonConfig::load(None, &env, CommonFlags::default()).unwrap();
        let groq = &c.llm.providers["groq"];
        assert_eq!(groq.model, "llama-3.1-8b-instant");
        assert_eq!(groq.api_key_env.as_deref(), Some("GROQ_API_KEY"));
        let env = EnvVars::from_pairs([("BATON_LLM__PROVIDERS__GROQ__BASE_URL", "groq")]);
        let err = BatonConfig::load(None, &env, CommonFlags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("llm.providers.groq.base_url"), "{err}");
    }

    #[test]
    fn derived_values_are_filled_and_printed() {
        let env = EnvVars::from_pairs([("BATON_DATA_DIR", "/var/lib/baton")]);
        let c = BatonConfig::load(None, &env, CommonFlags::default()).unwrap();
        assert_eq!(
            c.audit.database_url,
            "sqlite:///var/lib/baton/audit.db?mode=rwc"
        );
        assert_eq!(
            c.agents.inventory_path,
            Path::new("/var/lib/baton/inventory.toml")
        );
        let text = c.to_toml().unwrap();
        assert!(
            text.contains("database_url = \"sqlite:///var/lib/baton/audit.db?mode=rwc\""),
            "{text}"
        );
    }

    #[test]
    fn printing_redacts_secrets() {
        let env = EnvVars::from_pairs([
            (
                "BATON_AUTH__HS256_SECRET",
                "0123456789abcdef0123456789abcdef-secret",
            ),
            ("BATON_CLIENT__TOKEN", "eyJ-token"),
            (
                "BATON_AUDIT__DATABASE_URL",
                "postgres://baton:pw-secret@db/baton",
            ),
        ]);
        let text = BatonConfig::load(None, &env, CommonFlags::default())
            .unwrap()
            .to_toml()
            .unwrap();
        assert!(
            !text.contains("-secret") && !text.contains("eyJ-token"),
            "{text}"
        );
        assert!(text.contains("hs256_secret = \"<redacted>\""), "{text}");
        assert!(text.contains("token = \"<redacted>\""), "{text}");
        assert!(
            text.contains("postgres://baton:<redacted>@db/baton"),
            "{text}"
        );
    }

    #[test]
    fn a_section_that_does_not_validate_is_refused_with_its_key() {
        let env = EnvVars::from_pairs([("BATON_EXECUTION__HEALTH_CHECK_ATTEMPTS", "0")]);
        let err = BatonConfig::load(None, &env, CommonFlags::default()).unwrap_err();
        assert!(
            err.to_string().contains("execution.health_check_attempts"),
            "{err}"
        );
        let env = EnvVars::from_pairs([("BATON_DECISION__CONCURRENCY", "0")]);
        let err = BatonConfig::load(None, &env, CommonFlags::default()).unwrap_err();
        assert!(err.to_string().contains("decision.concurrency"), "{err}");
    }
}
