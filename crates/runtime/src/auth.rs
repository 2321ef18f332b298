//! JWT bearer tokens (RFC 7519) for every gRPC call: `authorization: Bearer <token>`.
//!
//! Two ways to sign, chosen by the token's `alg` header:
//! - **HS256** with the shared `auth.hs256_secret`, for development (`baton up` makes one, the
//!   local `baton` client mints tokens from it). Accepted only when a secret is configured.
//! - **RS256/RS384/RS512/PS256/…/ES256/ES384** from an identity provider (Keycloak, Auth0, Dex,
//!   any OIDC provider), verified against the keys it publishes at `auth.jwks_url`
//!   (module `jwks`: cached, refreshed on a TTL and, rate-limited, on an unknown `kid`).
//!
//! Every token needs `sub` and `exp`; `nbf` is checked when present; `exp` and `nbf` are
//! allowed `auth.leeway` of clock skew; `iss` and `aud` are required and checked when
//! `auth.issuer`/`auth.audience` are set. `alg: none` is refused. The tenant and the roles are
//! read from the claims `auth.tenant_claim` and `auth.roles_claim` (dotted paths such as
//! Keycloak's `realm_access.roles`); role names other than submitter, approver, operator and
//! admin are ignored (identity providers add their own). `admin` implies every other role. A
//! verified token becomes a [`Principal`].

use crate::jwks::Jwks;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Token verification settings (`[auth]`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 shared secret, at least 32 bytes. Empty in `baton up` means "generate one into
    /// `<data_dir>/jwt.secret`" (development only) unless `jwks_url` is set, in which case
    /// HS256 tokens are refused. Printed and logged as `<redacted>`.
    pub hs256_secret: String,
    /// The identity provider's JSON Web Key Set (`http(s)://…/jwks.json`, for Keycloak
    /// `https://<host>/realms/<realm>/protocol/openid-connect/certs`). When set, RS*/PS*/ES*
    /// tokens are verified against its keys; HS256 then needs an explicit `hs256_secret`.
    pub jwks_url: Option<String>,
    /// How long fetched keys are used before the set is fetched again (`"5m"` by default).
    #[serde(with = "humantime_serde")]
    pub jwks_ttl: Duration,
    /// The least time between two fetches caused by tokens with an unknown `kid` (`"10s"` by
    /// default), so a stream of made-up key ids cannot make Baton hammer the provider.
    #[serde(with = "humantime_serde")]
    pub jwks_min_refresh: Duration,
    /// The `iss` claim every token must carry, when set (the identity provider's issuer URL).
    pub issuer: Option<String>,
    /// The `aud` claim every token must carry, when set (this deployment's client id or
    /// audience at the identity provider).
    pub audience: Option<String>,
    /// How far the clocks of the token's issuer and of Baton may disagree: a token is still
    /// accepted this long after its `exp`, and this long before its `nbf` (`"60s"` by default,
    /// `"0s"` for none). Whole seconds; fractions are dropped.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// The claim holding the caller's roles: a list of names, or one space-separated string
    /// (`"roles"` by default; a dotted path such as `realm_access.roles` for Keycloak realm
    /// roles). Names other than submitter, approver, operator and admin are ignored.
    pub roles_claim: String,
    /// The claim holding the caller's tenant, a string (`"tenant"` by default; a dotted path
    /// for a nested claim).
    pub tenant_claim: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hs256_secret: String::new(),
            jwks_url: None,
            jwks_ttl: Duration::from_secs(300),
            jwks_min_refresh: Duration::from_secs(10),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(60),
            roles_claim: "roles".into(),
            tenant_claim: "tenant".into(),
        }
    }
}

impl AuthConfig {
    /// Checks the settings before a secret is known: a non-empty `hs256_secret` must have at
    /// least 32 bytes (an empty one means the development secret, or none with `jwks_url`),
    /// `jwks_url` must be an `http(s)` URL, and the claim names must not be empty.
    pub fn validate(&self) -> Result<(), AuthError> {
        if !self.hs256_secret.is_empty() && self.hs256_secret.len() < 32 {
            return Err(AuthError::Config(
                "auth.hs256_secret must be at least 32 bytes (set BATON_AUTH__HS256_SECRET), or empty for the development secret".into(),
            ));
        }
        if let Some(url) = &self.jwks_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(AuthError::Config(format!(
                "auth.jwks_url must be an http(s) URL of the identity provider's key set, not `{url}`"
            )));
        }
        for (key, value) in [
            ("auth.roles_claim", &self.roles_claim),
            ("auth.tenant_claim", &self.tenant_claim),
        ] {
            if value.is_empty() || value.split('.').any(str::is_empty) {
                return Err(AuthError::Config(format!(
                    "{key} must name a claim (`roles`, or a dotted path like `realm_access.roles`), not `{value}`"
                )));
            }
        }
        Ok(())
    }

    /// True when HS256 tokens need a secret that is not configured: the development secret is
    /// used only when no identity provider (`jwks_url`) is configured.
    pub fn wants_dev_secret(&self) -> bool {
        self.hs256_secret.is_empty() && self.jwks_url.is_none()
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "hs256_secret",
                &if self.hs256_secret.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("jwks_url", &self.jwks_url)
            .field("jwks_ttl", &self.jwks_ttl)
            .field("jwks_min_refresh", &self.jwks_min_refresh)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("roles_claim", &self.roles_claim)
            .field("tenant_claim", &self.tenant_claim)
            .finish()
    }
}

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May submit triggers.
    Submitter,
    /// May approve or reject gated plans.
    Approver,
    /// May pause, resume and cancel rollouts and verify the audit log.
    Operator,
    /// May do everything, across tenants.
    Admin,
}

impl Role {
    /// Parses `submitter|approver|operator|admin`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "submitter" => Some(Role::Submitter),
            "approver" => Some(Role::Approver),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Submitter => "submitter",
            Role::Approver => "approver",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// The claims of the tokens Baton mints (HS256, development); verification reads the tenant and
/// roles from the configured claim names instead.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: who is calling.
    pub sub: String,
    /// Tenant the caller acts for.
    pub tenant: String,
    /// Granted roles.
    #[serde(default)]
    pub roles: Vec<Role>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: u64,
    /// Issuer: who signed the token (checked against `auth.issuer` when that is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience: whom the token is for (checked against `auth.audience` when that is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// A caller whose token verified.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Who is calling: the token's `sub` claim.
    pub subject: String,
    /// Whose tasks the caller acts on: the token's `tenant` claim.
    pub tenant: String,
    /// What the caller may do: the token's `roles` claim (`admin` implies the others).
    pub roles: Vec<Role>,
}

impl Principal {
    /// True if the caller has `role` (admin has all).
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }
    /// `PERMISSION_DENIED` unless the caller has `role`.
    pub fn require(&self, role: Role) -> Result<(), AuthError> {
        if self.has(role) {
            Ok(())
        } else {
            Err(AuthError::MissingRole {
                subject: self.subject.clone(),
                role,
            })
        }
    }
    /// True if the caller may see `tenant`'s tasks (its own, or any for admin).
    pub fn can_see(&self, tenant: &str) -> bool {
        self.tenant == tenant || self.roles.contains(&Role::Admin)
    }
}

/// Why a call was not authenticated or not authorised.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `authorization: Bearer …` metadata.
    #[error(
        "missing bearer token: send `authorization: Bearer <jwt>` (mint one with `baton token`)"
    )]
    MissingToken,
    /// The token did not verify.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The token verified but lacks a role.
    #[error("{subject} lacks the {} role needed for this call", role.as_str())]
    MissingRole {
        /// The caller's `sub` claim.
        subject: String,
        /// The role needed.
        role: Role,
    },
    /// The configuration cannot verify tokens.
    #[error("auth configuration: {0}")]
    Config(String),
    /// The identity provider's keys could not be fetched and none are cached.
    #[error(
        "cannot fetch the token signing keys from {url}: {reason}; retry when the identity provider is reachable"
    )]
    KeysUnavailable {
        /// `auth.jwks_url`.
        url: String,
        /// What went wrong (connection, HTTP status, not a JWK set).
        reason: String,
    },
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::MissingToken | AuthError::InvalidToken(_) => {
                tonic::Status::unauthenticated(e.to_string())
            }
            AuthError::MissingRole { .. } => tonic::Status::permission_denied(e.to_string()),
            AuthError::Config(_) => tonic::Status::internal(e.to_string()),
            AuthError::KeysUnavailable { .. } => tonic::Status::unavailable(e.to_string()),
        }
    }
}

/// Verifies (and, for development and tests, mints) tokens.
pub struct Authenticator {
    /// The shared secret's keys, when `auth.hs256_secret` is set.
    hs256: Option<(DecodingKey, EncodingKey)>,
    /// The identity provider's keys, when `auth.jwks_url` is set.
    jwks: Option<Jwks>,
    config: AuthConfig,
}

/// The parts of a JOSE header Baton reads before choosing a key, parsed leniently so that an
/// algorithm jsonwebtoken does not know (`none`) gets its own answer.
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
}

impl Authenticator {
    /// Builds a verifier from `config`: HS256 when `hs256_secret` is set (at least 32 bytes),
    /// JWKS when `jwks_url` is set; at least one of them.
    ///
    /// Errors: [`AuthError::Config`] for a short secret, neither way configured, or an HTTP
    /// client that cannot be built.
    pub fn new(config: &AuthConfig) -> Result<Authenticator, AuthError> {
        config.validate()?;
        let hs256 = if config.hs256_secret.is_empty() {
            None
        } else {
            Some((
                DecodingKey::from_secret(config.hs256_secret.as_bytes()),
                EncodingKey::from_secret(config.hs256_secret.as_bytes()),
            ))
        };
        let jwks = config
            .jwks_url
            .as_ref()
            .map(|url| Jwks::new(url, config))
            .transpose()?;
        if hs256.is_none() && jwks.is_none() {
            return Err(AuthError::Config(
                "auth.hs256_secret must be at least 32 bytes (set BATON_AUTH__HS256_SECRET), or set auth.jwks_url".into(),
            ));
        }
        Ok(Authenticator {
            hs256,
            jwks,
            config: config.clone(),
        })
    }

    /// The checks every token gets, for `alg`.
    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        let mut required = vec!["exp", "sub"];
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        if let Some(iss) = &self.config.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// Verifies a compact JWT: its header picks the key (HS256 secret or a JWKS key by `kid`),
    /// then signature, `exp`/`nbf` (with `auth.leeway`), `iss` and `aud`, then the tenant and
    /// role claims.
    ///
    /// Errors: [`AuthError::InvalidToken`] saying what was wrong (UNAUTHENTICATED), or
    /// [`AuthError::KeysUnavailable`] when the identity provider cannot be reached and no keys
    /// are cached (UNAVAILABLE).
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = raw_header(token)?;
        let alg_name = header.alg.unwrap_or_default();
        if alg_name.eq_ignore_ascii_case("none") || alg_name.is_empty() {
            return Err(AuthError::InvalidToken(
                "the token is unsigned (alg `none`): only signed tokens are accepted".into(),
            ));
        }
        let alg: Algorithm = alg_name.parse().map_err(|_| {
            AuthError::InvalidToken(format!(
                "the token's algorithm `{alg_name}` is not supported (HS256, RS256, ES256, …)"
            ))
        })?;
        let (key, source) = match alg.family() {
            AlgorithmFamily::Hmac => {
                if alg != Algorithm::HS256 {
                    return Err(AuthError::InvalidToken(format!(
                        "the token is signed with {alg:?}; shared-secret tokens must use HS256"
                    )));
                }
                match &self.hs256 {
                    Some((decoding, _)) => (std::sync::Arc::new(decoding.clone()), None),
                    None => {
                        return Err(AuthError::InvalidToken(
                            "the token is signed with HS256 (a shared secret), but this deployment accepts only tokens from its identity provider (auth.jwks_url)".into(),
                        ));
                    }
                }
            }
            _ => match &self.jwks {
                Some(jwks) => {
                    let key = jwks.key(header.kid.as_deref(), alg).await?;
                    (key, Some(header.kid.unwrap_or_default()))
                }
                None => {
                    return Err(AuthError::InvalidToken(format!(
                        "the token is signed with {alg:?}, but no identity provider is configured (set auth.jwks_url)"
                    )));
                }
            },
        };
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key,
            &self.validation(alg),
        )
        .map_err(|e| self.reason(e, source.as_deref()))?;
        self.principal(&data.claims)
    }

    /// What a verification error means, for the caller.
    fn reason(&self, e: jsonwebtoken::errors::Error, kid: Option<&str>) -> AuthError {
        use jsonwebtoken::errors::ErrorKind;
        AuthError::InvalidToken(match e.kind() {
            ErrorKind::ExpiredSignature => "the token has expired; get a new one".into(),
            ErrorKind::ImmatureSignature => format!(
                "the token is not valid yet (its nbf is more than auth.leeway = {}s ahead)",
                self.config.leeway.as_secs()
            ),
            ErrorKind::InvalidIssuer => format!(
                "the token's issuer (iss) is not `{}`",
                self.config.issuer.as_deref().unwrap_or_default()
            ),
            ErrorKind::InvalidAudience => format!(
                "the token's audience (aud) is not `{}`",
                self.config.audience.as_deref().unwrap_or_default()
            ),
            ErrorKind::MissingRequiredClaim(claim) => {
                format!("the token has no `{claim}` claim")
            }
            ErrorKind::InvalidSignature => match kid {
                None => {
                    "the signature does not verify: the token was signed with another secret".into()
                }
                Some(kid) => format!(
                    "the signature does not verify against the identity provider's key `{kid}`"
                ),
            },
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => {
                "the token's algorithm does not match its key".into()
            }
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => {
                format!("not a well-formed JWT ({e})")
            }
            _ => e.to_string(),
        })
    }

    /// The caller described by verified `claims`: `sub`, the tenant and role claims.
    fn principal(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Principal, AuthError> {
        let subject = match claims.get("sub") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(AuthError::InvalidToken("the sub claim is empty".into())),
        };
        let tenant = match claim(claims, &self.config.tenant_claim) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            Some(serde_json::Value::String(_)) => {
                return Err(AuthError::InvalidToken("the tenant claim is empty".into()));
            }
            Some(_) => {
                return Err(AuthError::InvalidToken(format!(
                    "the tenant claim `{}` is not a string",
                    self.config.tenant_claim
                )));
            }
            None => {
                return Err(AuthError::InvalidToken(format!(
                    "the token has no tenant claim `{}` (auth.tenant_claim)",
                    self.config.tenant_claim
                )));
            }
        };
        let mut roles = Vec::new();
        let mut add = |name: &str| {
            if let Some(role) = Role::parse(name)
                && !roles.contains(&role)
            {
                roles.push(role);
            }
        };
        match claim(claims, &self.config.roles_claim) {
            Some(serde_json::Value::Array(items)) => {
                items.iter().filter_map(|v| v.as_str()).for_each(&mut add)
            }
            Some(serde_json::Value::String(s)) => s.split_whitespace().for_each(&mut add),
            _ => {}
        }
        Ok(Principal {
            subject,
            tenant,
            roles,
        })
    }

    /// Verifies the bearer token of a gRPC request.
    pub async fn authenticate<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> Result<Principal, AuthError> {
        let value = bearer(request.metadata().get("authorization").map(|v| v.to_str()))?;
        self.verify(value).await
    }

    /// Verifies the bearer token of an HTTP request (`Authorization: Bearer <jwt>`): the same
    /// check as [`Authenticator::authenticate`], for the routes services add over HTTP.
    pub async fn authenticate_http(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Result<Principal, AuthError> {
        let value = bearer(
            headers
                .get(axum::http::header::AUTHORIZATION)
                .map(|v| v.to_str()),
        )?;
        self.verify(value).await
    }

    /// Signs an HS256 token for `subject` in `tenant` with `roles`, valid for `ttl`.
    ///
    /// Errors: [`AuthError::Config`] when no `hs256_secret` is configured (with only
    /// `auth.jwks_url`, tokens come from the identity provider).
    pub fn try_mint(
        &self,
        subject: &str,
        tenant: &str,
        roles: &[Role],
        ttl: Duration,
    ) -> Result<String, AuthError> {
        let (_, encoding) = self.hs256.as_ref().ok_or_else(|| {
            AuthError::Config(
                "cannot mint a token without auth.hs256_secret: get one from the identity provider at auth.jwks_url".into(),
            )
        })?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            sub: subject.into(),
            tenant: tenant.into(),
            roles: roles.to_vec(),
            exp: now + ttl.as_secs(),
            iat: now,
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
        };
        Ok(
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, encoding)
                .expect("HS256 signing cannot fail"),
        )
    }

    /// [`Authenticator::try_mint`] for development and tests.
    ///
    /// # Panics
    /// Without `auth.hs256_secret`.
    pub fn mint(&self, subject: &str, tenant: &str, roles: &[Role], ttl: Duration) -> String {
        self.try_mint(subject, tenant, roles, ttl)
            .expect("minting needs auth.hs256_secret")
    }
}

/// The token of an `authorization` value (`None` when absent, `Err` when not ASCII).
fn bearer<E>(value: Option<Result<&str, E>>) -> Result<&str, AuthError> {
    let value = value
        .ok_or(AuthError::MissingToken)?
        .map_err(|_| AuthError::InvalidToken("the authorization value is not ASCII".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| AuthError::InvalidToken("authorization is not `Bearer <jwt>`".into()))?;
    Ok(token.trim())
}

/// The header of a compact JWT, before any verification.
fn raw_header(token: &str) -> Result<RawHeader, AuthError> {
    let malformed = |why: &str| {
        AuthError::InvalidToken(format!(
            "not a well-formed JWT ({why}): send header.payload.signature"
        ))
    };
    if token.split('.').count() != 3 {
        return Err(malformed("not three dot-separated parts"));
    }
    let encoded = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| malformed("the header is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| malformed("the header is not a JSON object"))
}

/// The value at a dotted `path` of `claims` (`realm_access.roles`), if any. A claim whose
/// name itself contains dots is found too when the whole path is one top-level key.
fn claim<'a>(
    claims: &'a serde_json::Map<String, serde_json::Value>,
    path: &str,
) -> Option<&'a serde_json::Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// The development secret of a data directory: `<data_dir>/jwt.secret`, created with 48 random
/// bytes (hex) and mode 0600 when missing. Used when `auth.hs256_secret` is empty, so a local
/// `baton up` and the `baton` client on the same machine agree without configuration.
pub fn dev_secret(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join("jwt.secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_string();
        if s.len() >= 32 {
            return Ok(s);
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let mut bytes = [0u8; 48];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    std::io::Write::write_all(&mut opts.open(&path)?, secret.as_bytes())?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(&AuthConfig {
            hs256_secret: "x".repeat(32),
            ..Default::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn minted_token_verifies_with_roles_and_tenant() {
        let a = auth();
        let t = a.mint("alice", "acme", &[Role::Approver], Duration::from_secs(60));
        let p = a.verify(&t).await.unwrap();
        assert_eq!((p.subject.as_str(), p.tenant.as_str()), ("alice", "acme"));
        assert!(p.has(Role::Approver));
        assert!(!p.has(Role::Operator));
        assert!(p.require(Role::Submitter).is_err());
    }

    #[tokio::test]
    async fn token_signed_with_another_secret_is_rejected() {
        let other = Authenticator::new(&AuthConfig {
            hs256_secret: "y".repeat(32),
            ..Default::default()
        })
        .unwrap();
        let t = other.mint("mallory", "acme", &[Role::Admin], Duration::from_secs(60));
        let err = auth().verify(&t).await.unwrap_err();
        assert!(matches!(err, AuthError::InvalidToken(_)), "{err}");
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::Unauthenticated
        );
    }

    #[tokio::test]
    async fn expired_token_is_rejected() {
        let a = auth();
        let claims = Claims {
            sub: "late".into(),
            tenant: "acme".into(),
            roles: vec![Role::Admin],
            exp: 1_000_000_000, // 2001
            iat: 999_999_000,
            iss: None,
            aud: None,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret("x".repeat(32).as_bytes()),
        )
        .unwrap();
        let err = a.verify(&token).await.unwrap_err();
        assert!(err.to_string().contains("the token has expired"), "{err}");
    }

    /// A token for `auth()`'s secret that expired `ago` seconds before now.
    fn expired(ago: u64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = Claims {
            sub: "late".into(),
            tenant: "acme".into(),
            roles: vec![Role::Submitter],
            exp: now - ago,
            iat: now - ago - 600,
            iss: None,
            aud: None,
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret("x".repeat(32).as_bytes()),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_token_expired_within_the_leeway_is_accepted_and_beyond_it_refused() {
        let a = auth();
        assert_eq!(AuthConfig::default().leeway, Duration::from_secs(60));
        a.verify(&expired(30))
            .await
            .expect("30 s past exp is within the default 60 s leeway");
        let err = a.verify(&expired(120)).await.unwrap_err();
        assert!(err.to_string().contains("the token has expired"), "{err}");

        let strict = Authenticator::new(&AuthConfig {
            hs256_secret: "x".repeat(32),
            leeway: Duration::from_secs(5),
            ..Default::default()
        })
        .unwrap();
        let err = strict.verify(&expired(30)).await.unwrap_err();
        assert!(err.to_string().contains("the token has expired"), "{err}");
        strict
            .verify(&expired(2))
            .await
            .expect("within a 5 s leeway");
    }

    #[test]
    fn leeway_is_configuration_in_humantime() {
        let c: AuthConfig = serde_json::from_str(r#"{"leeway": "2m"}"#).unwrap();
        assert_eq!(c.leeway, Duration::from_secs(120));
    }

    #[test]
    fn short_secret_is_a_config_error() {
        assert!(
            AuthConfig::default().validate().is_ok(),
            "empty: the dev secret"
        );
        let short = AuthConfig {
            hs256_secret: "short".into(),
            ..Default::default()
        };
        assert!(
            matches!(short.validate(), Err(AuthError::Config(m)) if m.contains("auth.hs256_secret"))
        );
        let err = Authenticator::new(&AuthConfig {
            hs256_secret: "short".into(),
            ..Default::default()
        });
        assert!(matches!(err, Err(AuthError::Config(m)) if m.contains("32 bytes")));
    }

    #[test]
    fn admin_implies_every_role_and_sees_all_tenants() {
        let p = Principal {
            subject: "root".into(),
            tenant: "ops".into(),
            roles: vec![Role::Admin],
        };
        assert!(p.has(Role::Approver) && p.has(Role::Operator) && p.can_see("acme"));
        let q = Principal {
            subject: "bob".into(),
            tenant: "ops".into(),
            roles: vec![Role::Submitter],
        };
        assert!(!q.can_see("acme") && q.can_see("ops"));
    }
}
