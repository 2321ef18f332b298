//! Layered configuration: built-in defaults, then a TOML file, then `BATON_*` environment
//! variables (`__` separates levels: `BATON_NATS__URL`, `BATON_AUDIT__DATABASE_URL`), then
//! command-line flags. Every section is a typed struct with `#[serde(default)]`, so a file
//! names only what it changes; unknown keys are errors.

use crate::auth::AuthConfig;
use crate::catalog::Catalog;
use baton_bus::BusConfig;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Settings shared by all services of a process. Other top-level keys (the service sections)
/// are ignored here; `baton config` checks the whole file, unknown keys included.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CommonConfig {
    /// NATS connection and streams.
    pub nats: BusConfig,
    /// Token verification.
    pub auth: AuthConfig,
    /// Logging.
    pub log: LogConfig,
    /// gRPC listen address (port 0 picks a free port).
    pub grpc_addr: SocketAddr,
    /// HTTP listen address for `/health`, `/ready`, `/metrics`.
    pub http_addr: SocketAddr,
    /// Where local state lives (the SQLite audit log, the nats-server store, the dev secret).
    pub data_dir: PathBuf,
    /// The roles and environments tasks may use.
    pub catalog: Catalog,
}

impl Default for CommonConfig {
    fn default() -> Self {
        CommonConfig {
            nats: BusConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            grpc_addr: "127.0.0.1:50051".parse().expect("valid address"),
            http_addr: "127.0.0.1:8080".parse().expect("valid address"),
            data_dir: PathBuf::from(".baton"),
            catalog: Catalog::default(),
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter directives (`info`, `baton_execution=debug`); `RUST_LOG` wins if set.
    pub filter: String,
    /// JSON lines instead of human-readable text.
    pub json: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info,async_nats=warn,sqlx=warn".into(),
            json: false,
        }
    }
}

/// A configuration file or variable that does not fit.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// The layered sources: `T`'s defaults, then `file` (if given; it must exist), then `BATON_*`
/// variables. Callers merge CLI flags on top and [`extract`] the sections they need.
///
/// Only variables naming a top-level key of `T` (or one of `extra_sections`) are taken, so
/// variables that share the prefix but are not configuration (`BATON_TOKEN` for the client,
/// `BATON_TEST_POSTGRES_URL` for the tests) do not make the configuration invalid.
pub fn figment<T: Serialize + Default>(
    file: Option<&Path>,
    extra_sections: &[&str],
) -> Result<Figment, ConfigError> {
    let mut keys = top_level_keys(&T::default());
    keys.extend(extra_sections.iter().map(|s| s.to_string()));
    let mut f = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        f = f.merge(Toml::file(path));
    }
    Ok(f.merge(
        Env::prefixed("BATON_")
            .split("__")
            .filter(move |k| is_config_key(&keys, k.as_str())),
    ))
}

/// The top-level keys `value` serialises to.
fn top_level_keys<T: Serialize>(value: &T) -> Vec<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// True if `key` (`nats.url`, as figment splits `BATON_NATS__URL`) starts with one of `keys`.
fn is_config_key(keys: &[String], key: &str) -> bool {
    let first = key
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    keys.contains(&first)
}

/// Extracts the whole configuration as `T`, with a message naming the bad key.
pub fn extract<T: DeserializeOwned>(figment: &Figment) -> Result<T, ConfigError> {
    figment.extract().map_err(|e| ConfigError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_variables_naming_config_keys_are_taken() {
        let keys = top_level_keys(&CommonConfig::default());
        assert!(keys.contains(&"nats".to_string()) && keys.contains(&"grpc_addr".to_string()));
        assert!(is_config_key(&keys, "nats.url"));
        assert!(is_config_key(&keys, "GRPC_ADDR"));
        assert!(!is_config_key(&keys, "token"));
        assert!(!is_config_key(&keys, "test_postgres_url"));
    }
}
