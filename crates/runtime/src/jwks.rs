//! The identity provider's signing keys (a JSON Web Key Set, RFC 7517) fetched from
//! `auth.jwks_url`, for verifying RS*/PS*/ES* tokens.
//!
//! Keys are fetched on first use and cached for `auth.jwks_ttl`; a token whose `kid` is not in
//! the cache causes one more fetch (the provider rotated its keys), at most once per
//! `auth.jwks_min_refresh`, so made-up key ids cannot turn Baton into a load generator against
//! the provider. Concurrent callers share one fetch. When a fetch fails, the keys already
//! cached stay in use (a provider outage does not lock everybody out until the TTL runs out);
//! with nothing cached, verification answers [`AuthError::KeysUnavailable`]. Symmetric (`oct`)
//! keys and keys marked `"use": "enc"` are ignored: a key set can only add public keys.

use crate::auth::{AuthConfig, AuthError};
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, RwLock};

/// A cached key set and how to refresh it.
pub(crate) struct Jwks {
    /// `auth.jwks_url`.
    url: String,
    /// HTTP(S) client with a 10 s timeout.
    client: reqwest::Client,
    /// `auth.jwks_ttl`.
    ttl: Duration,
    /// `auth.jwks_min_refresh`.
    min_refresh: Duration,
    /// The keys and when they were fetched.
    cache: RwLock<Cache>,
    /// Held while fetching, so concurrent misses share one request.
    fetching: Mutex<()>,
}

/// One usable key of the set.
pub(crate) struct Key {
    /// The verifying key.
    decoding: Arc<DecodingKey>,
    /// The key's `alg`, when the set names one: tokens must then use exactly it.
    alg: Option<Algorithm>,
    /// RSA, EC or Ed: tokens must use an algorithm of this family.
    family: AlgorithmFamily,
}

#[derive(Default)]
struct Cache {
    /// Keys by `kid` (a key without one under `""`).
    keys: HashMap<String, Key>,
    /// When the keys were last fetched successfully.
    fetched: Option<Instant>,
    /// When a fetch was last started (successful or not).
    attempted: Option<Instant>,
    /// Why the last fetch failed, if it did.
    error: Option<String>,
}

impl Cache {
    /// The key for `kid`; without a `kid`, the only key of the set.
    fn find(&self, kid: Option<&str>) -> Option<&Key> {
        match kid {
            Some(kid) => self.keys.get(kid),
            None if self.keys.len() == 1 => self.keys.values().next(),
            None => None,
        }
    }
}

impl Jwks {
    /// A key set at `url` with `config`'s TTL and refresh limit; nothing is fetched yet.
    pub(crate) fn new(url: &str, config: &AuthConfig) -> Result<Jwks, AuthError> {
        let client = crate::tls::http_client()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AuthError::Config(format!("cannot build the JWKS http client: {e}")))?;
        Ok(Jwks {
            url: url.to_string(),
            client,
            ttl: config.jwks_ttl,
            min_refresh: config.jwks_min_refresh,
            cache: RwLock::new(Cache::default()),
            fetching: Mutex::new(()),
        })
    }

    /// The key that must have signed a token with header `kid` and `alg`, fetching the set
    /// when it is stale or does not have `kid` (rate-limited).
    ///
    /// Errors: [`AuthError::InvalidToken`] for an unknown `kid` or a key of another
    /// algorithm; [`AuthError::KeysUnavailable`] when nothing could ever be fetched.
    pub(crate) async fn key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<DecodingKey>, AuthError> {
        let asked = Instant::now();
        let refetch = {
            let cache = self.cache.read().await;
            let fresh = cache.fetched.is_some_and(|t| asked - t < self.ttl);
            let recently_tried = cache
                .attempted
                .is_some_and(|t| asked - t < self.min_refresh);
            match cache.find(kid) {
                Some(_) if fresh => false,
                // Stale: refresh, but not more often than min_refresh when the provider fails.
                Some(_) => !recently_tried,
                None => !recently_tried,
            }
        };
        if refetch {
            self.refresh(asked).await;
        }
        let cache = self.cache.read().await;
        let Some(key) = cache.find(kid) else {
            if cache.keys.is_empty()
                && let Some(reason) = &cache.error
            {
                return Err(AuthError::KeysUnavailable {
                    url: self.url.clone(),
                    reason: reason.clone(),
                });
            }
            return Err(AuthError::InvalidToken(match kid {
                Some(kid) => format!(
                    "unknown key id `{kid}`: the identity provider's keys at {} do not include it",
                    self.url
                ),
                None => format!(
                    "the token names no key id (kid) and the key set at {} has {} keys",
                    self.url,
                    cache.keys.len()
                ),
            }));
        };
        if key.family != alg.family() || key.alg.is_some_and(|a| a != alg) {
            return Err(AuthError::InvalidToken(format!(
                "the token is signed with {alg:?}, but key `{}` is for {}",
                kid.unwrap_or_default(),
                key.alg
                    .map(|a| format!("{a:?}"))
                    .unwrap_or_else(|| format!("{:?} algorithms", key.family))
            )));
        }
        Ok(key.decoding.clone())
    }

    /// Fetches the set unless another caller started a fetch after `asked`.
    async fn refresh(&self, asked: Instant) {
        let _one = self.fetching.lock().await;
        if self
            .cache
            .read()
            .await
            .attempted
            .is_some_and(|t| t >= asked)
        {
            return;
        }
        let started = Instant::now();
        let result = self.fetch().await;
        let mut cache = self.cache.write().await;
        cache.attempted = Some(started);
        match result {
            Ok(keys) => {
                tracing::debug!(url = %self.url, keys = keys.len(), "fetched the identity provider's keys");
                cache.keys = keys;
                cache.fetched = Some(started);
                cache.error = None;
            }
            Err(reason) => {
                tracing::warn!(url = %self.url, error = %reason, cached = cache.keys.len(), "cannot fetch the identity provider's keys");
                cache.error = Some(reason);
            }
        }
    }

    /// One GET of the key set, its usable keys by `kid`.
    async fn fetch(&self) -> Result<HashMap<String, Key>, String> {
        let response = self
            .client
            .get(&self.url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("the server answered {status}"));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("reading the body failed: {e}"))?;
        let set: JwkSet = serde_json::from_slice(&body)
            .map_err(|e| format!("the body is not a JSON Web Key Set: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let decoding = match DecodingKey::from_jwk(jwk) {
                Ok(k) => k,
                Err(e) => {
                    tracing::debug!(kid = %kid, error = %e, "skipping a key Baton cannot use");
                    continue;
                }
            };
            let family = decoding.family();
            if family == AlgorithmFamily::Hmac {
                continue;
            }
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| Algorithm::try_from(a).ok());
            keys.insert(
                kid,
                Key {
                    decoding: Arc::new(decoding),
                    alg,
                    family,
                },
            );
        }
        Ok(keys)
    }
}
