//! Configuration, loaded the same way by every process (`baton`, `baton serve <service>`, the
//! thin `baton-<service>` binaries):
//!
//! 1. built-in defaults: every section is a typed struct with `#[serde(default)]`, so a file
//!    names only what it changes;
//! 2. the TOML file (`--config FILE` or `BATON_CONFIG`; it must exist when given);
//! 3. `BATON_*` environment variables, `__` between levels (`BATON_NATS__URL`,
//!    `BATON_AUDIT__DATABASE_URL`). Only variables whose first level is a key of `baton.toml`
//!    are configuration, so `BATON_TOKEN` (the client's) or `BATON_TEST_POSTGRES_URL` (the
//!    tests') are left alone; the variables come from an [`EnvVars`], the process's or given;
//! 4. command-line flags ([`CommonFlags`] and the `baton` command's own), as one more layer;
//! 5. derived values: settings that default from others, such as `audit.database_url` and
//!    `agents.inventory_path` under `data_dir` (`Service::prepare`);
//! 6. validation: [`CommonConfig::validate`] and every section's (`Service::validate`).
//!
//! Unknown keys are errors at every level: each section denies unknown fields, and
//! [`Layers::new`] refuses a top-level key that is neither a [`CommonConfig`] key nor one of
//! [`SECTIONS`]. A process that runs some services checks the other services' sections by name
//! only; the processes that run them check their contents.

use crate::auth::AuthConfig;
use crate::catalog::Catalog;
use baton_bus::BusConfig;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Prefix of the configuration variables (`BATON_NATS__URL`).
pub const ENV_PREFIX: &str = "BATON_";

/// The top-level sections of `baton.toml` besides [`CommonConfig`]'s keys: the `baton`
/// command's own (`nats_server`, `client`) and one per service. The `baton` command's
/// `BatonConfig` has exactly these (a test there keeps the two lists equal).
pub const SECTIONS: &[&str] = &[
    "nats_server",
    "client",
    "ingestion",
    "decision",
    "agents",
    "validation",
    "execution",
    "audit",
    "llm",
];

/// Settings shared by all services of a process: the top-level keys of `baton.toml` that are
/// not a service's section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CommonConfig {
    /// `[nats]`: how to reach NATS and how the streams and consumers are set up. An empty
    /// `url` makes `baton up` start a nats-server child; other processes need one.
    pub nats: BusConfig,
    /// `[auth]`: how bearer tokens are verified (HS256 secret, identity provider's JWKS URL,
    /// issuer, audience, clock leeway, tenant and role claims).
    pub auth: AuthConfig,
    /// `[log]`: what is logged and in which format.
    pub log: LogConfig,
    /// gRPC listen address (port 0 picks a free port).
    pub grpc_addr: SocketAddr,
    /// `[grpc_tls]`: the gRPC server's certificate and key (TLS), and optionally the CA of
    /// client certificates (mutual TLS). Empty: plain gRPC.
    pub grpc_tls: crate::tls::GrpcTlsConfig,
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
            grpc_tls: crate::tls::GrpcTlsConfig::default(),
            http_addr: "127.0.0.1:8080".parse().expect("valid address"),
            data_dir: PathBuf::from(".baton"),
            catalog: Catalog::default(),
        }
    }
}

impl CommonConfig {
    /// Checks `[nats]`, `[auth]`, `[log]` and `[catalog]`; the message names the key and what
    /// to set. An empty `nats.url` passes here (`baton up` starts a server): a process that
    /// needs a running server checks it itself.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut nats = self.nats.clone();
        if nats.url.trim().is_empty() {
            // Checked where a server is needed; fill it so the other checks run.
            nats.url = "nats://127.0.0.1:4222".into();
        }
        nats.validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.auth
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.log.validate()?;
        self.grpc_tls
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.catalog
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(())
    }

    /// The same settings with secrets replaced by `<redacted>` (the token secret, a password
    /// in `nats.url`), for printing.
    pub fn redacted(&self) -> CommonConfig {
        let mut c = self.clone();
        c.auth.hs256_secret = redact(&c.auth.hs256_secret);
        c.nats.url = c
            .nats
            .url
            .split(',')
            .map(redact_url_password)
            .collect::<Vec<_>>()
            .join(",");
        c
    }
}

/// `<redacted>` for a non-empty secret, the empty string otherwise (so an unset secret stays
/// visibly unset).
pub fn redact(secret: &str) -> String {
    if secret.is_empty() {
        String::new()
    } else {
        "<redacted>".into()
    }
}

/// `url` with the password of its user info replaced by `<redacted>`
/// (`postgres://baton:<redacted>@db:5432/baton`); other URLs are returned as they are.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:<redacted>{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// Logging settings (`[log]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter directives (`info`, `baton_execution=debug`); `RUST_LOG` wins if set.
    pub filter: String,
    /// JSON lines instead of human-readable text (text is coloured only on a terminal).
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

impl LogConfig {
    /// Checks that `filter` parses as `tracing` filter directives.
    pub fn validate(&self) -> Result<(), ConfigError> {
        tracing_subscriber::EnvFilter::try_new(&self.filter).map_err(|e| {
            ConfigError::Invalid(format!(
                "log.filter {:?} does not parse ({e}): use directives such as \"info,baton_execution=debug\"",
                self.filter
            ))
        })?;
        Ok(())
    }
}

/// A configuration that cannot be loaded or used; the message names the key and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--config` (or `BATON_CONFIG`) names a file that does not exist.
    #[error("config file {} does not exist: fix --config or BATON_CONFIG", path.display())]
    MissingFile {
        /// The path as given.
        path: PathBuf,
    },
    /// A top-level key that no section has.
    #[error("unknown key `{key}` in {source_name}: use one of {known}")]
    UnknownKey {
        /// The key as written.
        key: String,
        /// Where it was set (`TOML file baton.toml`, `command-line flags`, …).
        source_name: String,
        /// The valid top-level keys, comma-separated.
        known: String,
    },
    /// A value does not have its key's type, or a section has an unknown key; figment's
    /// message names the key and where it was set.
    #[error("invalid configuration: {0}")]
    Parse(Box<figment::Error>),
    /// A value has the right type but cannot be used; the message names the key and what to
    /// set.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError::Parse(Box::new(e))
    }
}

/// The `BATON_*` variables a configuration is loaded from: the process's
/// ([`EnvVars::from_process`]) or given ones ([`EnvVars::from_pairs`]), so tests never change
/// the process environment.
#[derive(Debug, Clone, Default)]
pub struct EnvVars(Vec<(String, String)>);

impl EnvVars {
    /// The variables of this process (names and values that are not UTF-8 are converted
    /// lossily).
    pub fn from_process() -> EnvVars {
        EnvVars(
            std::env::vars_os()
                .map(|(k, v)| {
                    (
                        k.to_string_lossy().into_owned(),
                        v.to_string_lossy().into_owned(),
                    )
                })
                .collect(),
        )
    }

    /// The given `(name, value)` pairs, as if they were the environment.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> EnvVars {
        EnvVars(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// [`EnvVars`] as a figment layer: `BATON_A__B=v` becomes key `a.b` (lowercase) with `v`
/// parsed as figment parses variables (`77` a number, `true` a boolean, `[..]` an array), for
/// the variables whose first level is one of `keys`. Errors name the variable.
struct EnvLayer {
    vars: EnvVars,
    keys: Vec<String>,
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("`{ENV_PREFIX}` environment variable(s)")).interpolater(
            |_: &Profile, keys: &[&str]| {
                let name: Vec<String> = keys.iter().map(|k| k.to_ascii_uppercase()).collect();
                format!("{ENV_PREFIX}{}", name.join("__"))
            },
        )
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (name, value) in &self.vars.0 {
            let name = name.trim();
            let Some(rest) = name
                .get(..ENV_PREFIX.len())
                .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
                .map(|_| &name[ENV_PREFIX.len()..])
            else {
                continue;
            };
            let key = rest.replace("__", ".").to_ascii_lowercase();
            if key.split('.').any(str::is_empty)
                || !self.keys.iter().any(|k| key.split('.').next() == Some(k))
            {
                continue;
            }
            let value: figment::value::Value = value.parse().expect("infallible");
            if let Some(nested) = figment::util::nest(&key, value).into_dict() {
                dict = merge(dict, nested);
            }
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// `b` merged into `a`, dictionaries key by key (as figment merges layers).
fn merge(mut a: Dict, b: Dict) -> Dict {
    for (k, v) in b {
        let merged = match (a.remove(&k), v) {
            (Some(figment::value::Value::Dict(_, old)), figment::value::Value::Dict(tag, new)) => {
                figment::value::Value::Dict(tag, merge(old, new))
            }
            (_, v) => v,
        };
        a.insert(k, merged);
    }
    a
}

/// A provider whose errors name keys as written in `baton.toml` (`nats.url`), without
/// figment's profile prefix (`default.nats.url`).
struct Dotted<P>(P);

impl<P: Provider> Provider for Dotted<P> {
    fn metadata(&self) -> Metadata {
        self.0
            .metadata()
            .interpolater(|_: &Profile, keys: &[&str]| keys.join("."))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.0.data()
    }
}

/// Flags every Baton process takes, on top of the file and the environment: `baton up`,
/// `baton serve` and each `baton-<service>` binary share this definition.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonFlags {
    /// Configuration file (TOML); `BATON_*` variables and flags override it.
    #[arg(long, short, global = true, env = "BATON_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// NATS URL of a running server (nats.url; `baton up` starts a nats-server when unset).
    #[arg(long, global = true, value_name = "URL")]
    pub nats_url: Option<String>,
    /// gRPC listen address (grpc_addr; port 0 picks a free port).
    #[arg(long, global = true, value_name = "ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// HTTP listen address of /health, /ready and /metrics (http_addr).
    #[arg(long, global = true, value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Directory of local state: SQLite audit log, nats-server store, development secret
    /// (data_dir).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl Provider for CommonFlags {
    fn metadata(&self) -> Metadata {
        Metadata::named("command-line flags")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut f = Figment::new();
        if let Some(url) = &self.nats_url {
            f = f.merge(Serialized::default("nats.url", url));
        }
        if let Some(a) = self.grpc_addr {
            f = f.merge(Serialized::default("grpc_addr", a));
        }
        if let Some(a) = self.http_addr {
            f = f.merge(Serialized::default("http_addr", a));
        }
        if let Some(d) = &self.data_dir {
            f = f.merge(Serialized::default("data_dir", d));
        }
        f.data()
    }
}

/// The merged layers of one process's configuration (defaults → file → env → flags), with
/// every top-level key known. Sections are read from it with [`Layers::common`] and
/// [`Layers::section`].
#[derive(Debug, Clone)]
pub struct Layers {
    figment: Figment,
}

impl Layers {
    /// Merges `defaults` (every key the process reads), the TOML `file` if given, the
    /// configuration variables of `env`, then `flags`.
    ///
    /// Errors: [`ConfigError::MissingFile`]; [`ConfigError::UnknownKey`] for a top-level key
    /// that is neither a key of `defaults` nor one of [`SECTIONS`]; [`ConfigError::Parse`]
    /// when the file is not TOML.
    pub fn new<D: Serialize>(
        defaults: &D,
        file: Option<&Path>,
        env: &EnvVars,
        flags: impl Provider,
    ) -> Result<Layers, ConfigError> {
        let mut keys = top_level_keys(defaults);
        for s in SECTIONS {
            if !keys.iter().any(|k| k == s) {
                keys.push(s.to_string());
            }
        }
        let mut figment = Figment::from(Serialized::defaults(defaults));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile {
                    path: path.to_path_buf(),
                });
            }
            figment = figment.merge(Dotted(Toml::file_exact(path)));
        }
        let figment = figment
            .merge(EnvLayer {
                vars: env.clone(),
                keys: keys.clone(),
            })
            .merge(Dotted(flags));
        let top: Dict = figment.extract()?;
        for key in top.keys() {
            if !keys.contains(key) {
                let source_name = match figment.find_metadata(key) {
                    Some(Metadata {
                        name,
                        source: Some(source),
                        ..
                    }) => format!("{name} {source}"),
                    Some(md) => md.name.to_string(),
                    None => "the configuration".into(),
                };
                return Err(ConfigError::UnknownKey {
                    key: key.clone(),
                    source_name,
                    known: keys.join(", "),
                });
            }
        }
        Ok(Layers { figment })
    }

    /// The common settings, as merged (not yet validated).
    pub fn common(&self) -> Result<CommonConfig, ConfigError> {
        Ok(self.figment.extract()?)
    }

    /// Section `key` (`audit`, `client`, …) as `T`, as merged; its defaults must have been part
    /// of the `defaults` given to [`Layers::new`].
    pub fn section<T: DeserializeOwned>(&self, key: &str) -> Result<T, ConfigError> {
        self.figment
            .extract_inner(key)
            .map_err(|e| section_first(e, key).into())
    }
}

/// `e` with `key` at the start of each error's path: figment 0.10's `extract_inner` appends
/// it (`nn.audit` for `audit.nn`), which would name the wrong key (`BATON_NN__AUDIT`).
fn section_first(e: figment::Error, key: &str) -> figment::Error {
    let key: Vec<String> = key.split('.').map(String::from).collect();
    let fixed = e.into_iter().map(|mut e| {
        if e.path.len() > key.len() && e.path.ends_with(&key) {
            let tail = e.path.split_off(e.path.len() - key.len());
            e.path.splice(0..0, tail);
        }
        e
    });
    let errors: Vec<figment::Error> = fixed.collect();
    errors
        .into_iter()
        .rev()
        .reduce(|earlier, e| earlier.chain(e))
        .expect("an error has at least itself")
}

/// The top-level keys `value` serialises to.
fn top_level_keys<T: Serialize>(value: &T) -> Vec<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: Option<&str>, env: &[(&str, &str)]) -> Result<CommonConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        let layers = Layers::new(
            &CommonConfig::default(),
            file.map(|_| path.as_path()),
            &EnvVars::from_pairs(env.iter().copied()),
            CommonFlags::default(),
        )?;
        let common = layers.common()?;
        common.validate()?;
        Ok(common)
    }

    #[test]
    fn layers_apply_in_order_defaults_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.toml");
        std::fs::write(
            &path,
            "grpc_addr = \"127.0.0.1:1\"\nhttp_addr = \"127.0.0.1:2\"\n[nats]\nurl = \"nats://file:4222\"\n",
        )
        .unwrap();
        let env = EnvVars::from_pairs([
            ("BATON_NATS__URL", "nats://env:4222"),
            ("BATON_HTTP_ADDR", "127.0.0.1:3"),
            ("BATON_NATS__MAX_DELIVER", "9"),
        ]);
        let flags = CommonFlags {
            http_addr: Some("127.0.0.1:4".parse().unwrap()),
            ..Default::default()
        };
        let c = Layers::new(&CommonConfig::default(), Some(&path), &env, flags)
            .unwrap()
            .common()
            .unwrap();
        assert_eq!(c.grpc_addr.port(), 1, "file over defaults");
        assert_eq!(c.nats.url, "nats://env:4222", "env over file");
        assert_eq!(c.nats.max_deliver, 9, "env values are typed");
        assert_eq!(c.http_addr.port(), 4, "flags over env");
        assert_eq!(c.data_dir, PathBuf::from(".baton"), "defaults stay");
    }

    #[test]
    fn variables_that_are_not_config_keys_are_left_alone() {
        let c = load(
            None,
            &[
                ("BATON_TOKEN", "x"),
                ("BATON_TEST_POSTGRES_URL", "postgres://x"),
                ("BATON_CONFIG", "/nonexistent"),
                ("OTHER__NATS__URL", "nats://no"),
            ],
        )
        .unwrap();
        assert_eq!(c.nats.url, "");
    }

    #[test]
    fn unknown_top_level_key_in_the_file_is_named() {
        let err = load(Some("grpc_adr = \"127.0.0.1:1\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key `grpc_adr`"), "{err}");
        assert!(err.contains("baton.toml"), "{err}");
        assert!(err.contains("grpc_addr"), "lists the valid keys: {err}");
    }

    #[test]
    fn other_sections_are_known_by_name() {
        // A process running one service accepts the file written for all of them.
        load(
            Some("[audit]\nbatch_size = 5\n[client]\ntenant = \"t\"\n"),
            &[],
        )
        .unwrap();
    }

    #[test]
    fn unknown_key_in_a_section_from_the_environment_is_named() {
        let err = load(None, &[("BATON_NATS__URLL", "nats://x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("urll"), "{err}");
        assert!(
            err.contains("BATON_NATS__URLL"),
            "names the variable: {err}"
        );
    }

    #[test]
    fn unknown_key_in_a_section_of_the_file_is_named_with_its_section() {
        let err = load(Some("[nats]\nurll = \"nats://x\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"nats.urll\""), "{err}");
        assert!(err.contains("baton.toml"), "{err}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Layers::new(
            &CommonConfig::default(),
            Some(Path::new("/nonexistent/baton.toml")),
            &EnvVars::default(),
            CommonFlags::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile { .. }), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let err = load(Some("[log]\nfilter = \"info,=[\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("log.filter"), "{err}");
        let err = load(None, &[("BATON_AUTH__HS256_SECRET", "short")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.hs256_secret"), "{err}");
        let err = load(Some("[catalog]\nroles = []\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("catalog.roles"), "{err}");
        let err = load(None, &[("BATON_NATS__MAX_DELIVER", "0")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nats.max_deliver"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_for_printing() {
        let mut c = CommonConfig::default();
        c.auth.hs256_secret = "s".repeat(40);
        c.nats.url = "nats://u:pw@a:4222,nats://b:4222".into();
        let r = c.redacted();
        assert_eq!(r.auth.hs256_secret, "<redacted>");
        assert_eq!(r.nats.url, "nats://u:<redacted>@a:4222,nats://b:4222");
        assert_eq!(CommonConfig::default().redacted().auth.hs256_secret, "");
        assert_eq!(
            redact_url_password("postgres://baton:pw@db:5432/baton?sslmode=require"),
            "postgres://baton:<redacted>@db:5432/baton?sslmode=require"
        );
        assert_eq!(
            redact_url_password("sqlite://.baton/audit.db?mode=rwc"),
            "sqlite://.baton/audit.db?mode=rwc"
        );
    }
}
