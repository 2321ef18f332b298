//! The failover chain: a [`ChatModel`] over an ordered list of providers, where the first
//! healthy one serves the call.
//!
//! For each call, providers are tried in order. A provider whose circuit is open is skipped.
//! Otherwise the call waits for one of the provider's concurrency permits (a
//! `tokio::sync::Semaphore`) and for its rate limiter (`governor`, requests per minute, spaced
//! evenly), then:
//! - an answer is returned, with [`ChatResponse::fallback_index`] set to the provider's index;
//! - an answer with [`FinishReason::Refusal`] fails over to the next provider at once (a
//!   refusal is not retried on the same model);
//! - a retryable error ([`LlmError::is_retryable`]: timeout, 5xx, 429, unreachable) is retried
//!   on the same provider up to `retries` times, waiting an exponential backoff with jitter
//!   (`backon`) between attempts, or the provider's `Retry-After` when it is longer; a
//!   `Retry-After` beyond `max_retry_after` fails over at once instead, and keeps the provider's
//!   circuit open until that time, so no call reaches it earlier;
//! - any other error (400, 401, an answer that cannot be parsed) fails over without a retry;
//! - [`LlmError::Config`] is returned at once (the configuration is wrong, not the provider).
//!
//! When every provider failed the result is [`LlmError::Exhausted`], one line per attempt
//! (provider name and error; errors never carry an API key).
//!
//! The circuit breaker of a provider counts consecutive retryable failures; at
//! `breaker_failures` it opens for `breaker_open_for`, after which one trial call is let
//! through (half-open): its success closes the circuit, its failure opens it again.

use crate::{ChatModel, ChatRequest, ChatResponse, FinishReason, LlmError, StreamEvent};
use backon::BackoffBuilder as _;
use futures::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::warn;

/// How one provider of a chain is retried, limited and circuit-broken.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderLimits {
    /// Extra attempts on the same provider after a retryable error (0: fail over at once).
    pub retries: u32,
    /// First backoff delay; doubles each retry, with jitter, up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest backoff delay.
    pub backoff_max: Duration,
    /// Longest `Retry-After` honoured by waiting; a longer one fails over to the next provider.
    pub max_retry_after: Duration,
    /// Calls in flight to this provider at once (at least 1).
    pub max_concurrency: usize,
    /// Requests per minute, spaced evenly; `None` for no limit.
    pub requests_per_minute: Option<NonZeroU32>,
    /// Consecutive retryable failures that open the circuit (at least 1).
    pub breaker_failures: u32,
    /// How long an open circuit stays open before a trial call.
    pub breaker_open_for: Duration,
}

impl Default for ProviderLimits {
    /// 2 retries from 200 ms to 5 s, `Retry-After` up to 10 s, 4 calls in flight, no rate
    /// limit, the circuit opens after 5 failures for 30 s.
    fn default() -> Self {
        ProviderLimits {
            retries: 2,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(10),
            max_concurrency: 4,
            requests_per_minute: None,
            breaker_failures: 5,
            breaker_open_for: Duration::from_secs(30),
        }
    }
}

/// The state of a provider's circuit breaker, as [`FailoverChain::health`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Calls go through.
    Closed,
    /// Calls skip the provider until the given time.
    Open,
    /// The open time is over: the next call is a trial.
    HalfOpen,
}

#[derive(Debug, Default)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

impl Breaker {
    fn state(&self, now: Instant) -> Circuit {
        match self.open_until {
            None => Circuit::Closed,
            Some(t) if t > now => Circuit::Open,
            Some(_) => Circuit::HalfOpen,
        }
    }
    /// Whether a call may go to the provider now (a half-open circuit admits one trial).
    fn admit(&mut self, now: Instant) -> bool {
        match self.state(now) {
            Circuit::Closed => true,
            Circuit::Open => false,
            Circuit::HalfOpen if self.trial_in_flight => false,
            Circuit::HalfOpen => {
                self.trial_in_flight = true;
                true
            }
        }
    }
    fn success(&mut self) {
        *self = Breaker::default();
    }
    fn failure(&mut self, limits: &ProviderLimits, now: Instant) {
        self.consecutive_failures += 1;
        self.trial_in_flight = false;
        if self.consecutive_failures >= limits.breaker_failures.max(1) {
            self.open_until = Some(now + limits.breaker_open_for);
        }
    }
    /// Keeps the circuit open until `until` (a `Retry-After`).
    fn hold(&mut self, until: Instant) {
        self.trial_in_flight = false;
        self.open_until = Some(self.open_until.map_or(until, |t| t.max(until)));
    }
    fn is_open(&self, now: Instant) -> bool {
        self.state(now) == Circuit::Open
    }
}

/// A provider with its [`ProviderLimits`] and their state: retry policy, circuit breaker,
/// concurrency permits and rate limiter. Shared (`Arc`) by every chain that lists the
/// provider, so its limits hold for the whole process, not per chain.
pub struct GuardedProvider {
    name: String,
    model: Arc<dyn ChatModel>,
    limits: ProviderLimits,
    permits: Semaphore,
    limiter: Option<DefaultDirectRateLimiter>,
    breaker: Mutex<Breaker>,
}

impl std::fmt::Debug for GuardedProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedProvider")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl GuardedProvider {
    /// Provider `name` serving through `model`, guarded by `limits`.
    pub fn new(
        name: impl Into<String>,
        model: Arc<dyn ChatModel>,
        limits: ProviderLimits,
    ) -> Arc<GuardedProvider> {
        let limiter = limits
            .requests_per_minute
            .map(|rpm| RateLimiter::direct(Quota::per_minute(rpm).allow_burst(NonZeroU32::MIN)));
        Arc::new(GuardedProvider {
            name: name.into(),
            model,
            permits: Semaphore::new(limits.max_concurrency.max(1)),
            limiter,
            limits,
            breaker: Mutex::new(Breaker::default()),
        })
    }

    /// Its configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its limits.
    pub fn limits(&self) -> &ProviderLimits {
        &self.limits
    }

    /// The state of its circuit now.
    pub fn circuit(&self) -> Circuit {
        self.breaker().state(Instant::now())
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A [`ChatModel`] over an ordered list of providers: the first healthy one serves the call
/// (see the module docs for the rules).
#[derive(Default)]
pub struct FailoverChain {
    links: Vec<Arc<GuardedProvider>>,
}

impl std::fmt::Debug for FailoverChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.links.iter().map(|l| &l.name))
            .finish()
    }
}

impl FailoverChain {
    /// An empty chain (every call fails with [`LlmError::Exhausted`] until a provider is added).
    pub fn new() -> FailoverChain {
        FailoverChain::default()
    }

    /// A chain over `providers`, in this order (index 0 is the first choice).
    pub fn from_providers(providers: Vec<Arc<GuardedProvider>>) -> FailoverChain {
        FailoverChain { links: providers }
    }

    /// Appends provider `name` (its index is the current length) with `limits`, guarded for
    /// this chain alone.
    pub fn push(
        &mut self,
        name: impl Into<String>,
        model: Arc<dyn ChatModel>,
        limits: ProviderLimits,
    ) {
        self.links.push(GuardedProvider::new(name, model, limits));
    }

    /// Appends a provider shared with other chains (its limits and circuit are shared too).
    pub fn push_shared(&mut self, provider: Arc<GuardedProvider>) {
        self.links.push(provider);
    }

    /// [`FailoverChain::push`], builder style.
    pub fn with(
        mut self,
        name: impl Into<String>,
        model: impl ChatModel,
        limits: ProviderLimits,
    ) -> FailoverChain {
        self.push(name, Arc::new(model), limits);
        self
    }

    /// Number of providers.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// True when it has no provider.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Each provider's name and circuit state, in order.
    pub fn health(&self) -> Vec<(String, Circuit)> {
        let now = Instant::now();
        self.links
            .iter()
            .map(|l| (l.name.clone(), l.breaker().state(now)))
            .collect()
    }

    async fn call(
        &self,
        request: &ChatRequest,
        progress: Option<&(dyn Fn(StreamEvent) + Send + Sync)>,
    ) -> Result<ChatResponse, LlmError> {
        let mut attempts = Vec::new();
        for (index, link) in self.links.iter().enumerate() {
            if !link.breaker().admit(Instant::now()) {
                attempts.push(format!("{}: circuit open", link.name));
                continue;
            }
            match self.try_link(link, request, progress, &mut attempts).await {
                Ok(mut resp) => {
                    resp.fallback_index = index as u32;
                    return Ok(resp);
                }
                Err(LlmError::Config(e)) => return Err(LlmError::Config(e)),
                Err(_) => {
                    if index + 1 < self.links.len() {
                        warn!(provider = %link.name, next = %self.links[index + 1].name, "model provider failed, failing over");
                    }
                }
            }
        }
        Err(LlmError::Exhausted(attempts))
    }

    /// Calls one provider with its retries; pushes a line per failed attempt.
    async fn try_link(
        &self,
        link: &GuardedProvider,
        request: &ChatRequest,
        progress: Option<&(dyn Fn(StreamEvent) + Send + Sync)>,
        attempts: &mut Vec<String>,
    ) -> Result<ChatResponse, LlmError> {
        let _permit = link
            .permits
            .acquire()
            .await
            .map_err(|_| LlmError::Unavailable(format!("{}: closed", link.name)))?;
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(link.limits.backoff_min)
            .with_max_delay(link.limits.backoff_max)
            .with_max_times(link.limits.retries as usize)
            .with_jitter()
            .build();
        loop {
            if let Some(limiter) = &link.limiter {
                limiter.until_ready().await;
            }
            let result = match progress {
                Some(p) => link.model.chat_streaming(request, p).await,
                None => link.model.chat(request).await,
            };
            let err = match result {
                Ok(resp) if resp.finish_reason == FinishReason::Refusal => {
                    // The provider is healthy; the next model may answer.
                    link.breaker().success();
                    let e = LlmError::Refusal(crate::http::truncate(&resp.message.content, 200));
                    attempts.push(format!("{}: {e}", link.name));
                    return Err(e);
                }
                Ok(resp) => {
                    link.breaker().success();
                    return Ok(resp);
                }
                Err(e) => e,
            };
            attempts.push(format!("{}: {err}", link.name));
            if !err.is_retryable() {
                if !matches!(err, LlmError::Config(_)) {
                    // 4xx other than 429, or an answer it could not parse: not the provider's
                    // health, but this call will not work there.
                    link.breaker().success();
                }
                return Err(err);
            }
            let now = Instant::now();
            let retry_after = match &err {
                LlmError::RateLimited {
                    retry_after_ms: Some(ms),
                } => {
                    let wait = Duration::from_millis(*ms);
                    link.breaker().hold(now + wait);
                    Some(wait)
                }
                _ => {
                    link.breaker().failure(&link.limits, now);
                    None
                }
            };
            let Some(backoff) = delays.next() else {
                return Err(err);
            };
            let wait = match retry_after {
                Some(ra) if ra > link.limits.max_retry_after => return Err(err),
                Some(ra) => ra.max(backoff),
                None => backoff,
            };
            if retry_after.is_none() && link.breaker().is_open(now) {
                return Err(err);
            }
            tokio::time::sleep(wait).await;
            if retry_after.is_some() {
                // The Retry-After has passed: this retry is the provider's trial call.
                let mut b = link.breaker();
                if !b.admit(Instant::now()) {
                    return Err(err);
                }
            }
        }
    }
}

impl ChatModel for FailoverChain {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(self.call(request, None))
    }

    fn chat_streaming<'a>(
        &'a self,
        request: &'a ChatRequest,
        progress: &'a (dyn Fn(StreamEvent) + Send + Sync),
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(self.call(request, Some(progress)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_the_threshold_and_admits_one_trial_when_half_open() {
        let limits = ProviderLimits {
            breaker_failures: 2,
            breaker_open_for: Duration::from_secs(10),
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut b = Breaker::default();
        assert!(b.admit(t0));
        b.failure(&limits, t0);
        assert_eq!(b.state(t0), Circuit::Closed);
        b.failure(&limits, t0);
        assert_eq!(b.state(t0), Circuit::Open);
        assert!(!b.admit(t0 + Duration::from_secs(5)));
        let later = t0 + Duration::from_secs(11);
        assert_eq!(b.state(later), Circuit::HalfOpen);
        assert!(b.admit(later));
        assert!(!b.admit(later), "one trial at a time");
        b.failure(&limits, later);
        assert_eq!(b.state(later), Circuit::Open);
        let much_later = later + Duration::from_secs(11);
        assert!(b.admit(much_later));
        b.success();
        assert_eq!(b.state(much_later), Circuit::Closed);
        b.hold(much_later + Duration::from_secs(3));
        assert!(!b.admit(much_later + Duration::from_secs(2)));
        assert!(b.admit(much_later + Duration::from_secs(4)));
    }
}
