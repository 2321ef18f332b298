//! What every provider needs to know besides its wire format: its configured name, where it
//! is, which model to ask for, its API key, its timeout and its prices.
//!
//! An [`ApiKey`] is read once (from the environment or a file, see [`crate::config`]) and kept
//! in a type that prints `***` in `Debug` and `Display`, so a key cannot reach a log line, an
//! error message or an event by accident; [`ApiKey::expose`] is the one way to read it, used only
//! where a request header is built.

use std::time::Duration;

/// A provider's secret API key. `Debug` and `Display` print `***`; [`ApiKey::expose`] gives the
/// key itself, for the request header only.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key (surrounding whitespace, e.g. a key file's trailing newline, is trimmed).
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into().trim().to_string())
    }
    /// The key itself. Only for building the request's authentication header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Prices of a model, in US dollars per million tokens (0 when unknown or free, e.g. a local
/// model). One token at `$p` per million costs `p` micro-dollars, so
/// [`Price::cost_micros`] is `input_tokens × input + output_tokens × output`, rounded.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Price {
    /// Dollars per million input (prompt) tokens.
    pub input_per_million: f64,
    /// Dollars per million output (completion) tokens.
    pub output_per_million: f64,
}

impl Price {
    /// Cost of a call in micro-dollars (millionths of a US dollar), rounded to the nearest.
    pub fn cost_micros(&self, usage: crate::Usage) -> u64 {
        let c = f64::from(usage.input_tokens) * self.input_per_million
            + f64::from(usage.output_tokens) * self.output_per_million;
        if c.is_finite() && c > 0.0 {
            c.round() as u64
        } else {
            0
        }
    }
}

/// One configured provider endpoint, whatever its wire format.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// Name as configured (`local`, `openai`, `claude`); reported in
    /// [`crate::ChatResponse::provider`] and in log lines.
    pub name: String,
    /// Base URL. OpenAI-compatible: up to and including `/v1` (`https://api.openai.com/v1`,
    /// `http://127.0.0.1:8080/v1`); Anthropic: `https://api.anthropic.com`; Ollama:
    /// `http://127.0.0.1:11434`. A trailing `/` is ignored.
    pub base_url: String,
    /// Model to ask for (`gpt-4o-mini`, `claude-sonnet-4-5`, `qwen2.5-coder:0.5b`).
    pub model: String,
    /// API key, when the provider needs one (local servers do not).
    pub api_key: Option<ApiKey>,
    /// Wall-time limit of one HTTP call, whole body included; exceeding it is
    /// [`crate::LlmError::Timeout`].
    pub timeout: Duration,
    /// Prices, for [`crate::ChatResponse::cost_micros`].
    pub price: Price,
}

impl ProviderSettings {
    /// Settings for `name` at `base_url` serving `model`, with no key, a 60 s timeout and no
    /// price.
    pub fn new(
        name: impl Into<String>,
        base_url: impl Into<String>,
        model: impl Into<String>,
    ) -> ProviderSettings {
        ProviderSettings {
            name: name.into(),
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            timeout: Duration::from_secs(60),
            price: Price::default(),
        }
    }
    /// With this API key.
    pub fn with_api_key(mut self, key: ApiKey) -> Self {
        self.api_key = Some(key);
        self
    }
    /// With this per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// With these prices.
    pub fn with_price(mut self, price: Price) -> Self {
        self.price = price;
        self
    }
    /// `base_url` without a trailing `/`, followed by `path` (which starts with `/`).
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url.trim_end_matches('/'))
    }
}
