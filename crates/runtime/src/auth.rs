//! JWT bearer tokens (RFC 7519) for every gRPC call: `authorization: Bearer <token>`.
//!
//! Claims: `sub` (who), `tenant` (whose tasks), `roles` ⊂ {submitter, approver, operator,
//! admin}, `exp`. HS256 with a shared secret for now; asymmetric keys and JWKS come later.
//! `admin` implies every other role. A verified token becomes a [`Principal`].

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Token verification settings (`[auth]`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 shared secret, at least 32 bytes. Empty in `baton up` means "generate one into
    /// `<data_dir>/jwt.secret`" (development only). Printed and logged as `<redacted>`.
    pub hs256_secret: String,
    /// The `iss` claim every token must carry, when set (the identity provider's name).
    pub issuer: Option<String>,
    /// The `aud` claim every token must carry, when set (this deployment's name at the
    /// identity provider).
    pub audience: Option<String>,
    /// How far the clocks of the token's issuer and of Baton may disagree: a token is still
    /// accepted this long after its `exp` (`"60s"` by default, `"0s"` for none). Whole
    /// seconds; fractions are dropped.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hs256_secret: String::new(),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(60),
        }
    }
}

impl AuthConfig {
    /// Checks the settings before a secret is known: a non-empty `hs256_secret` must have at
    /// least 32 bytes (an empty one means the development secret).
    pub fn validate(&self) -> Result<(), AuthError> {
        if !self.hs256_secret.is_empty() && self.hs256_secret.len() < 32 {
            return Err(AuthError::Config(
                "auth.hs256_secret must be at least 32 bytes (set BATON_AUTH__HS256_SECRET), or empty for the development secret".into(),
            ));
        }
        Ok(())
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
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
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

/// The claims Baton reads from a token.
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
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::MissingToken | AuthError::InvalidToken(_) => {
                tonic::Status::unauthenticated(e.to_string())
            }
            AuthError::MissingRole { .. } => tonic::Status::permission_denied(e.to_string()),
            AuthError::Config(_) => tonic::Status::internal(e.to_string()),
        }
    }
}

/// Verifies (and, for development and tests, mints) tokens.
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    config: AuthConfig,
}

impl Authenticator {
    /// Builds a verifier; the secret must be at least 32 bytes.
    pub fn new(config: &AuthConfig) -> Result<Authenticator, AuthError> {
        if config.hs256_secret.len() < 32 {
            return Err(AuthError::Config(
                "auth.hs256_secret must be at least 32 bytes (set BATON_AUTH__HS256_SECRET)".into(),
            ));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = config.leeway.as_secs();
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
        }
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Authenticator {
            decoding: DecodingKey::from_secret(config.hs256_secret.as_bytes()),
            encoding: EncodingKey::from_secret(config.hs256_secret.as_bytes()),
            validation,
            config: config.clone(),
        })
    }

    /// Verifies a compact JWT.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                AuthError::InvalidToken(match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired; get a new one".into(),
                    ErrorKind::InvalidSignature => {
                        "the signature does not verify: the token was signed with another secret"
                            .into()
                    }
                    ErrorKind::InvalidAlgorithm => "the token is not signed with HS256".into(),
                    ErrorKind::InvalidToken
                    | ErrorKind::Base64(_)
                    | ErrorKind::Json(_)
                    | ErrorKind::Utf8(_) => {
                        format!("not a well-formed JWT ({e})")
                    }
                    _ => e.to_string(),
                })
            })?;
        let c = data.claims;
        if c.tenant.is_empty() {
            return Err(AuthError::InvalidToken("the tenant claim is empty".into()));
        }
        Ok(Principal {
            subject: c.sub,
            tenant: c.tenant,
            roles: c.roles,
        })
    }

    /// Verifies the bearer token of a gRPC request.
    pub fn authenticate<T>(&self, request: &tonic::Request<T>) -> Result<Principal, AuthError> {
        self.bearer(request.metadata().get("authorization").map(|v| v.to_str()))
    }

    /// Verifies the bearer token of an HTTP request (`Authorization: Bearer <jwt>`): the same
    /// check as [`Authenticator::authenticate`], for the routes services add over HTTP.
    pub fn authenticate_http(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Result<Principal, AuthError> {
        self.bearer(
            headers
                .get(axum::http::header::AUTHORIZATION)
                .map(|v| v.to_str()),
        )
    }

    /// Verifies an `authorization` value (`None` when absent, `Err` when not ASCII).
    fn bearer<E>(&self, value: Option<Result<&str, E>>) -> Result<Principal, AuthError> {
        let value = value
            .ok_or(AuthError::MissingToken)?
            .map_err(|_| AuthError::InvalidToken("the authorization value is not ASCII".into()))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| AuthError::InvalidToken("authorization is not `Bearer <jwt>`".into()))?;
        self.verify(token.trim())
    }

    /// Signs a token for `subject` in `tenant` with `roles`, valid for `ttl`.
    pub fn mint(&self, subject: &str, tenant: &str, roles: &[Role], ttl: Duration) -> String {
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
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }
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

    #[test]
    fn minted_token_verifies_with_roles_and_tenant() {
        let a = auth();
        let t = a.mint("alice", "acme", &[Role::Approver], Duration::from_secs(60));
        let p = a.verify(&t).unwrap();
        assert_eq!((p.subject.as_str(), p.tenant.as_str()), ("alice", "acme"));
        assert!(p.has(Role::Approver));
        assert!(!p.has(Role::Operator));
        assert!(p.require(Role::Submitter).is_err());
    }

    #[test]
    fn token_signed_with_another_secret_is_rejected() {
        let other = Authenticator::new(&AuthConfig {
            hs256_secret: "y".repeat(32),
            ..Default::default()
        })
        .unwrap();
        let t = other.mint("mallory", "acme", &[Role::Admin], Duration::from_secs(60));
        let err = auth().verify(&t).unwrap_err();
        assert!(matches!(err, AuthError::InvalidToken(_)), "{err}");
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn expired_token_is_rejected() {
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
        let err = a.verify(&token).unwrap_err();
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

    #[test]
    fn a_token_expired_within_the_leeway_is_accepted_and_beyond_it_refused() {
        let a = auth();
        assert_eq!(AuthConfig::default().leeway, Duration::from_secs(60));
        a.verify(&expired(30))
            .expect("30 s past exp is within the default 60 s leeway");
        let err = a.verify(&expired(120)).unwrap_err();
        assert!(err.to_string().contains("the token has expired"), "{err}");

        let strict = Authenticator::new(&AuthConfig {
            hs256_secret: "x".repeat(32),
            leeway: Duration::from_secs(5),
            ..Default::default()
        })
        .unwrap();
        let err = strict.verify(&expired(30)).unwrap_err();
        assert!(err.to_string().contains("the token has expired"), "{err}");
        strict.verify(&expired(2)).expect("within a 5 s leeway");
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
