//! The `[llm]` section of `baton.toml`: model providers by name, and the local model server
//! `baton up` may start.
//!
//! ```toml
//! [llm.providers.openai]
//! kind = "openai"                      # openai | anthropic | ollama
//! base_url = "https://api.openai.com/v1"
//! model = "gpt-4o-mini"
//! api_key_env = "OPENAI_API_KEY"       # or api_key_file = "/run/secrets/openai"
//! timeout = "60s"
//! retries = 2
//! max_concurrency = 4
//! requests_per_minute = 500            # 0: no limit
//! price_input_per_million = 0.15       # US dollars, for cost_micros
//! price_output_per_million = 0.60
//!
//! [llm.local]                          # llama-server started by `baton up`
//! server = "/root/.cache/baton-llama/…/llama-server"
//! model = "/root/.cache/baton-models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
//! ```
//!
//! An API key is never written in the file: a provider names the environment variable or the
//! file that holds it, and [`LlmConfig::registry`] reads it once into an [`ApiKey`] (which
//! prints `***`). An agent lists providers by name, in failover order; [`ProviderRegistry::chain`]
//! builds its [`FailoverChain`], sharing each provider's limits and circuit with every other
//! chain of the process.

use crate::chain::{FailoverChain, GuardedProvider, ProviderLimits};
use crate::provider::{ApiKey, Price, ProviderSettings};
use crate::{AnthropicProvider, ChatModel, LlmError, OllamaProvider, OpenAiProvider};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The name under which `baton up` registers the local model server it starts.
pub const LOCAL_PROVIDER: &str = "local";

/// `[llm]`: providers by name and the local model server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// `[llm.providers.<name>]`: every model provider agents may list, by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// `[llm.local]`: the llama-server `baton up` starts as provider `local` when `model` is
    /// set and `providers.local` has no `base_url`.
    pub local: LocalModelConfig,
}

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI-compatible chat completions (OpenAI, Groq, OpenRouter, vLLM, LM Studio,
    /// llama-server, Ollama's `/v1`).
    #[default]
    Openai,
    /// Anthropic Messages.
    Anthropic,
    /// Ollama's native `/api/chat`.
    Ollama,
}

/// `[llm.providers.<name>]`: one model endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// Wire format.
    pub kind: ProviderKind,
    /// Base URL (OpenAI-compatible: up to `/v1`; Anthropic `https://api.anthropic.com`; Ollama
    /// `http://127.0.0.1:11434`). Empty only for `local` when `[llm.local]` starts the server.
    pub base_url: String,
    /// Model name to ask for. Empty only for `local` (llama-server serves one model).
    pub model: String,
    /// Environment variable holding the API key (`OPENAI_API_KEY`). Keys are never written in
    /// the file itself.
    pub api_key_env: Option<String>,
    /// File holding the API key (a mounted secret); surrounding whitespace is trimmed.
    pub api_key_file: Option<PathBuf>,
    /// Wall-time limit of one HTTP call, whole answer included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra attempts on this provider after a timeout, 5xx, 429 or connection error, with
    /// exponential backoff and jitter, before failing over.
    pub retries: u32,
    /// Calls in flight to this provider at once, across all agents of the process.
    pub max_concurrency: usize,
    /// Requests per minute to this provider, spaced evenly; 0 for no limit.
    pub requests_per_minute: u32,
    /// Price in US dollars per million input tokens (0: unknown or free).
    pub price_input_per_million: f64,
    /// Price in US dollars per million output tokens.
    pub price_output_per_million: f64,
    /// Consecutive failures that open the provider's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit keeps calls away before a trial call.
    #[serde(with = "humantime_serde")]
    pub breaker_open_for: Duration,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        let limits = ProviderLimits::default();
        ProviderConfig {
            kind: ProviderKind::Openai,
            base_url: String::new(),
            model: String::new(),
            api_key_env: None,
            api_key_file: None,
            timeout: Duration::from_secs(60),
            retries: limits.retries,
            max_concurrency: limits.max_concurrency,
            requests_per_minute: 0,
            price_input_per_million: 0.0,
            price_output_per_million: 0.0,
            breaker_failures: limits.breaker_failures,
            breaker_open_for: limits.breaker_open_for,
        }
    }
}

/// `[llm.local]`: a llama.cpp `llama-server` that `baton up` starts on loopback and stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalModelConfig {
    /// The `llama-server` executable: a path, or a name on `PATH`. `bash
    /// deploy/local-model.sh --env` prints it as `BATON_LLAMA_SERVER`.
    pub server: String,
    /// The GGUF model file; empty: no local model. `deploy/local-model.sh --env` prints it as
    /// `BATON_LOCAL_MODEL`.
    pub model: PathBuf,
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Context window in tokens (`-c`), shared by the server's parallel slots.
    pub context_size: u32,
    /// More `llama-server` arguments (`["--parallel", "2"]`). The default, `--no-repack`,
    /// keeps weights in their file layout: llama.cpp repacks them for Intel AMX on CPUs that
    /// advertise it, and crashes (SIGSEGV at `ldtilecfg`) in a VM that does not grant the AMX
    /// tile state, as seen here.
    pub extra_args: Vec<String>,
    /// How long to wait for `/health` to answer 200 (loading the model) before giving up.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
}

impl Default for LocalModelConfig {
    fn default() -> Self {
        LocalModelConfig {
            server: "llama-server".into(),
            model: PathBuf::new(),
            port: 0,
            context_size: 8192,
            extra_args: vec!["--no-repack".into()],
            startup_timeout: Duration::from_secs(120),
        }
    }
}

impl LocalModelConfig {
    /// True when a model file is configured.
    pub fn is_configured(&self) -> bool {
        !self.model.as_os_str().is_empty()
    }
}

impl LlmConfig {
    /// True when `baton up` should start the local model server: `[llm.local]` names a model
    /// and `providers.local` gives no `base_url` of its own.
    pub fn starts_local_server(&self) -> bool {
        self.local.is_configured()
            && self
                .providers
                .get(LOCAL_PROVIDER)
                .is_none_or(|p| p.base_url.is_empty())
    }

    /// Registers the local server at `base_url` as provider `local` (OpenAI-compatible; the
    /// model name, timeout and limits of an existing `providers.local` are kept).
    pub fn set_local_url(&mut self, base_url: String) {
        let p = self
            .providers
            .entry(LOCAL_PROVIDER.to_string())
            .or_default();
        p.kind = ProviderKind::Openai;
        p.base_url = base_url;
        if p.model.is_empty() {
            p.model = LOCAL_PROVIDER.into();
        }
    }

    /// Checks every provider and the local server settings.
    ///
    /// Errors: a message naming the key (`llm.providers.openai.base_url`) and what to set.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in &self.providers {
            let key = |field: &str| format!("llm.providers.{name}.{field}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!(
                    "llm.providers.{name}: a provider name is letters, digits, `_` and `-`"
                ));
            }
            let local_started = name == LOCAL_PROVIDER && self.starts_local_server();
            if !local_started {
                if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
                    return Err(format!(
                        "{} must be an http:// or https:// URL, not {:?}",
                        key("base_url"),
                        p.base_url
                    ));
                }
                if p.model.is_empty() && name != LOCAL_PROVIDER {
                    return Err(format!(
                        "{} is empty: set the model to ask for",
                        key("model")
                    ));
                }
            }
            if p.api_key_env.is_some() && p.api_key_file.is_some() {
                return Err(format!(
                    "{} and {} are both set: keep one",
                    key("api_key_env"),
                    key("api_key_file")
                ));
            }
            if p.api_key_env.as_deref().is_some_and(str::is_empty) {
                return Err(format!(
                    "{} is empty: name an environment variable",
                    key("api_key_env")
                ));
            }
            if p.timeout.is_zero() {
                return Err(format!("{} must be more than 0", key("timeout")));
            }
            if p.max_concurrency == 0 {
                return Err(format!("{} must be at least 1", key("max_concurrency")));
            }
            if p.breaker_failures == 0 {
                return Err(format!("{} must be at least 1", key("breaker_failures")));
            }
            for (field, v) in [
                ("price_input_per_million", p.price_input_per_million),
                ("price_output_per_million", p.price_output_per_million),
            ] {
                if !v.is_finite() || v < 0.0 {
                    return Err(format!("{} must be a price of 0 or more", key(field)));
                }
            }
        }
        if self.local.is_configured() {
            if self.local.server.is_empty() {
                return Err(
                    "llm.local.server is empty: set the llama-server executable \
                            (`bash deploy/local-model.sh --env` prints it)"
                        .into(),
                );
            }
            if self.local.context_size == 0 {
                return Err("llm.local.context_size must be at least 1".into());
            }
            if self.local.startup_timeout.is_zero() {
                return Err("llm.local.startup_timeout must be more than 0".into());
            }
        }
        Ok(())
    }

    /// Builds every configured provider, reading each API key once: from the variable
    /// `api_key_env` names (looked up with `env`, e.g. `|k| std::env::var(k).ok()`) or from
    /// `api_key_file`.
    ///
    /// Errors: [`LlmError::Config`] naming the provider and the missing variable or unreadable
    /// file (never a key), or a provider whose base URL is still empty (`local` before `baton
    /// up` started its server).
    pub fn registry(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ProviderRegistry, LlmError> {
        let mut providers = BTreeMap::new();
        for (name, p) in &self.providers {
            if p.base_url.is_empty() {
                return Err(LlmError::Config(format!(
                    "provider {name} has no base_url: set llm.providers.{name}.base_url"
                )));
            }
            let api_key = match (&p.api_key_env, &p.api_key_file) {
                (Some(var), _) => Some(ApiKey::new(env(var).filter(|v| !v.trim().is_empty()).ok_or_else(
                    || {
                        LlmError::Config(format!(
                            "provider {name}: environment variable {var} (llm.providers.{name}.api_key_env) is not set"
                        ))
                    },
                )?)),
                (None, Some(file)) => Some(ApiKey::new(std::fs::read_to_string(file).map_err(
                    |e| {
                        LlmError::Config(format!(
                            "provider {name}: cannot read api_key_file {}: {e}",
                            file.display()
                        ))
                    },
                )?)),
                (None, None) => None,
            };
            let settings = ProviderSettings {
                name: name.clone(),
                base_url: p.base_url.clone(),
                model: if p.model.is_empty() {
                    name.clone()
                } else {
                    p.model.clone()
                },
                api_key,
                timeout: p.timeout,
                price: Price {
                    input_per_million: p.price_input_per_million,
                    output_per_million: p.price_output_per_million,
                },
            };
            let model: Arc<dyn ChatModel> = match p.kind {
                ProviderKind::Openai => Arc::new(OpenAiProvider::new(settings)?),
                ProviderKind::Anthropic => Arc::new(AnthropicProvider::new(settings)?),
                ProviderKind::Ollama => Arc::new(OllamaProvider::new(settings)?),
            };
            let limits = ProviderLimits {
                retries: p.retries,
                max_concurrency: p.max_concurrency,
                requests_per_minute: NonZeroU32::new(p.requests_per_minute),
                breaker_failures: p.breaker_failures,
                breaker_open_for: p.breaker_open_for,
                ..ProviderLimits::default()
            };
            providers.insert(
                name.clone(),
                GuardedProvider::new(name.clone(), model, limits),
            );
        }
        Ok(ProviderRegistry { providers })
    }
}

/// The providers of a process, built once from [`LlmConfig`]; agents get failover chains over
/// them by name.
#[derive(Debug, Clone, Default)]
pub struct ProviderRegistry {
    providers: BTreeMap<String, Arc<GuardedProvider>>,
}

impl ProviderRegistry {
    /// Adds (or replaces) a provider.
    pub fn insert(&mut self, provider: Arc<GuardedProvider>) {
        self.providers.insert(provider.name().to_string(), provider);
    }

    /// Provider names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.providers.keys().map(String::as_str).collect()
    }

    /// Provider `name`, if configured.
    pub fn get(&self, name: &str) -> Option<&Arc<GuardedProvider>> {
        self.providers.get(name)
    }

    /// A failover chain over `names`, in that order.
    ///
    /// Errors: [`LlmError::Config`] for an empty list or a name that is not configured
    /// (naming it and the configured ones).
    pub fn chain<S: AsRef<str>>(&self, names: &[S]) -> Result<FailoverChain, LlmError> {
        if names.is_empty() {
            return Err(LlmError::Config(
                "the model list is empty: name at least one provider".into(),
            ));
        }
        let mut chain = FailoverChain::new();
        for n in names {
            let n = n.as_ref();
            let p = self.providers.get(n).ok_or_else(|| {
                LlmError::Config(format!(
                    "unknown model provider {n}: configure [llm.providers.{n}] or use one of {}",
                    if self.providers.is_empty() {
                        "(none configured)".to_string()
                    } else {
                        self.names().join(", ")
                    }
                ))
            })?;
            chain.push_shared(p.clone());
        }
        Ok(chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openai() -> ProviderConfig {
        ProviderConfig {
            base_url: "https://api.openai.com/v1".into(),
            model: "gpt-4o-mini".into(),
            api_key_env: Some("OPENAI_API_KEY".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_section_parses_from_toml_and_refuses_an_inline_key() {
        let text = r#"
            [providers.openai]
            kind = "openai"
            base_url = "https://api.openai.com/v1"
            model = "gpt-4o-mini"
            api_key_env = "OPENAI_API_KEY"
            timeout = "30s"
            requests_per_minute = 500
            price_input_per_million = 0.15
            [providers.claude]
            kind = "anthropic"
            base_url = "https://api.anthropic.com"
            model = "claude-sonnet-4-5"
            api_key_file = "/run/secrets/anthropic"
            [local]
            server = "/opt/llama-server"
            model = "/models/qwen.gguf"
        "#;
        let c: LlmConfig = toml::from_str(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.providers["openai"].timeout, Duration::from_secs(30));
        assert_eq!(c.providers["claude"].kind, ProviderKind::Anthropic);
        assert!(c.starts_local_server());
        let inline = "[providers.x]\nbase_url = \"http://h/v1\"\nmodel = \"m\"\napi_key = \"sk-1\"";
        let err = toml::from_str::<LlmConfig>(inline).unwrap_err().to_string();
        assert!(err.contains("api_key"), "{err}");
    }

    #[test]
    fn validate_names_the_bad_key() {
        let mut c = LlmConfig::default();
        c.providers.insert(
            "openai".into(),
            ProviderConfig {
                base_url: "api.openai.com".into(),
                ..openai()
            },
        );
        assert!(
            c.validate()
                .unwrap_err()
                .starts_with("llm.providers.openai.base_url")
        );
        c.providers.insert(
            "openai".into(),
            ProviderConfig {
                api_key_file: Some("/k".into()),
                ..openai()
            },
        );
        assert!(c.validate().unwrap_err().contains("both set"));
        c.providers.insert(
            "openai".into(),
            ProviderConfig {
                max_concurrency: 0,
                ..openai()
            },
        );
        assert!(
            c.validate()
                .unwrap_err()
                .starts_with("llm.providers.openai.max_concurrency")
        );
        c.providers.insert(
            "openai".into(),
            ProviderConfig {
                price_output_per_million: -1.0,
                ..openai()
            },
        );
        assert!(
            c.validate()
                .unwrap_err()
                .contains("price_output_per_million")
        );
        c.providers.insert("open ai".into(), openai());
        assert!(c.validate().is_err());
    }

    #[test]
    fn local_needs_no_url_only_when_baton_up_starts_it() {
        let mut c = LlmConfig::default();
        c.providers
            .insert(LOCAL_PROVIDER.into(), ProviderConfig::default());
        assert!(c.validate().is_err(), "no server configured and no url");
        c.local.model = "/models/qwen.gguf".into();
        c.validate().unwrap();
        assert!(c.starts_local_server());
        c.set_local_url("http://127.0.0.1:8080/v1".into());
        assert!(!c.starts_local_server(), "a url is given: nothing to start");
        assert_eq!(c.providers[LOCAL_PROVIDER].model, "local");
    }

    #[test]
    fn keys_come_from_the_environment_or_a_file_once_and_chains_refuse_unknown_names() {
        let dir = std::env::temp_dir().join(format!("baton-llm-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "sk-from-file\n").unwrap();
        let mut c = LlmConfig::default();
        c.providers.insert("openai".into(), openai());
        c.providers.insert(
            "ollama".into(),
            ProviderConfig {
                kind: ProviderKind::Ollama,
                base_url: "http://127.0.0.1:11434".into(),
                model: "qwen".into(),
                api_key_file: Some(file),
                ..Default::default()
            },
        );
        let err = c.registry(|_| None).unwrap_err().to_string();
        assert!(
            err.contains("OPENAI_API_KEY") && err.contains("not set"),
            "{err}"
        );
        let reg = c
            .registry(|k| (k == "OPENAI_API_KEY").then(|| "sk-env".to_string()))
            .unwrap();
        assert_eq!(reg.names(), vec!["ollama", "openai"]);
        let chain = reg.chain(&["openai", "ollama"]).unwrap();
        assert_eq!(chain.len(), 2);
        let err = reg.chain(&["openai", "gpt5"]).unwrap_err().to_string();
        assert!(
            err.contains("unknown model provider gpt5") && err.contains("ollama, openai"),
            "{err}"
        );
        assert!(reg.chain::<&str>(&[]).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
