//! Tokens from an identity provider: RS256 and ES256 verified against a JSON Web Key Set
//! served by a real HTTP server on loopback, claim mapping for tenant and roles, every reason
//! a token is refused, and the key cache's TTL and rate-limited refresh on an unknown `kid`.
//!
//! The keys in `tests/keys/` were made for these tests with `openssl genpkey` (RSA 2048 as
//! PKCS#1 DER, EC P-256 as PKCS#8 DER: what jsonwebtoken reads without its `use_pem` feature)
//! and protect nothing.

use axum::extract::State;
use axum::routing::get;
use baton_runtime::auth::{AuthConfig, Authenticator, Role};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const RSA: &[u8] = include_bytes!("keys/rsa.der");
const RSA_OTHER: &[u8] = include_bytes!("keys/rsa-other.der");
const EC: &[u8] = include_bytes!("keys/ec.der");
const ISSUER: &str = "https://idp.example/realms/baton";
const AUDIENCE: &str = "baton";

/// A loopback identity provider: serves `keys` at `/jwks.json` and counts the requests.
struct Idp {
    addr: SocketAddr,
    keys: Arc<Mutex<JwkSet>>,
    fetches: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct IdpState {
    keys: Arc<Mutex<JwkSet>>,
    fetches: Arc<AtomicUsize>,
}

impl Idp {
    async fn start() -> Idp {
        let keys = Arc::new(Mutex::new(JwkSet {
            keys: vec![
                public(RSA, Algorithm::RS256, "rsa-1"),
                public(EC, Algorithm::ES256, "ec-1"),
            ],
        }));
        let fetches = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .route(
                "/jwks.json",
                get(|State(s): State<IdpState>| async move {
                    s.fetches.fetch_add(1, Ordering::SeqCst);
                    let set = s.keys.lock().unwrap().clone();
                    axum::Json(set)
                }),
            )
            .with_state(IdpState {
                keys: keys.clone(),
                fetches: fetches.clone(),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Idp {
            addr,
            keys,
            fetches,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// The settings of a deployment that trusts this provider, Keycloak-style claims.
    fn config(&self) -> AuthConfig {
        AuthConfig {
            jwks_url: Some(self.url()),
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
            roles_claim: "realm_access.roles".into(),
            tenant_claim: "org.tenant".into(),
            ..Default::default()
        }
    }
}

/// The public JWK of the private key `pem`, named `kid`.
fn public(der: &[u8], alg: Algorithm, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(&encoding(der, alg), alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk
}

fn encoding(der: &[u8], alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::ES256 => EncodingKey::from_ec_der(der),
        _ => EncodingKey::from_rsa_der(der),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims as Keycloak shapes them, valid for ten minutes.
fn claims() -> serde_json::Value {
    json!({
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now() + 600,
        "iat": now(),
        "org": {"tenant": "acme"},
        "realm_access": {"roles": ["approver", "offline_access", "uma_authorization", "submitter"]},
    })
}

fn sign(der: &[u8], alg: Algorithm, kid: &str, claims: &serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &encoding(der, alg)).unwrap()
}

/// `claims()` with `changes` merged over it.
fn with(changes: serde_json::Value) -> serde_json::Value {
    let mut c = claims();
    for (k, v) in changes.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// Authenticates `token` as a gRPC request would be.
async fn call(
    auth: &Authenticator,
    token: &str,
) -> Result<baton_runtime::auth::Principal, tonic::Status> {
    let mut request = tonic::Request::new(());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    auth.authenticate(&request)
        .await
        .map_err(tonic::Status::from)
}

/// Expects UNAUTHENTICATED with a message containing `reason`.
async fn refused(auth: &Authenticator, token: &str, reason: &str) {
    let status = call(auth, token).await.expect_err(reason);
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains(reason),
        "expected `{reason}` in: {}",
        status.message()
    );
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_with_mapped_tenant_and_roles() {
    let idp = Idp::start().await;
    let auth = Authenticator::new(&idp.config()).unwrap();
    for (pem, alg, kid) in [
        (RSA, Algorithm::RS256, "rsa-1"),
        (EC, Algorithm::ES256, "ec-1"),
    ] {
        let p = call(&auth, &sign(pem, alg, kid, &claims()))
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert_eq!((p.subject.as_str(), p.tenant.as_str()), ("alice", "acme"));
        assert_eq!(p.roles, vec![Role::Approver, Role::Submitter], "{alg:?}");
        assert!(!p.has(Role::Operator));
    }
    assert_eq!(idp.fetches(), 1, "the key set is cached between calls");
}

#[tokio::test]
async fn every_bad_token_is_unauthenticated_with_its_reason() {
    let idp = Idp::start().await;
    let auth = Authenticator::new(&AuthConfig {
        leeway: Duration::from_secs(30),
        ..idp.config()
    })
    .unwrap();
    let rs = |c: serde_json::Value| sign(RSA, Algorithm::RS256, "rsa-1", &c);

    // Past exp by more than the leeway; a little past it is still fine.
    refused(
        &auth,
        &rs(with(json!({"exp": now() - 120}))),
        "the token has expired",
    )
    .await;
    call(&auth, &rs(with(json!({"exp": now() - 10}))))
        .await
        .expect("10 s past exp is within a 30 s leeway");
    // Not valid before a time beyond the leeway.
    refused(
        &auth,
        &rs(with(json!({"nbf": now() + 600}))),
        "not valid yet",
    )
    .await;
    call(&auth, &rs(with(json!({"nbf": now() + 10}))))
        .await
        .expect("nbf 10 s ahead is within a 30 s leeway");
    refused(
        &auth,
        &rs(with(json!({"aud": "another-app"}))),
        "audience (aud) is not `baton`",
    )
    .await;
    refused(
        &auth,
        &rs(with(json!({"iss": "https://evil.example"}))),
        &format!("issuer (iss) is not `{ISSUER}`"),
    )
    .await;
    let mut no_iss = claims();
    no_iss.as_object_mut().unwrap().remove("iss");
    refused(&auth, &rs(no_iss), "no `iss` claim").await;
    refused(
        &auth,
        &sign(RSA, Algorithm::RS256, "rsa-9", &claims()),
        "unknown key id `rsa-9`",
    )
    .await;
    // Signed by another key under a published kid.
    refused(
        &auth,
        &sign(RSA_OTHER, Algorithm::RS256, "rsa-1", &claims()),
        "does not verify against the identity provider's key `rsa-1`",
    )
    .await;
    // An RSA key's kid on an EC-signed token (algorithm confusion).
    refused(
        &auth,
        &sign(EC, Algorithm::ES256, "rsa-1", &claims()),
        "is signed with ES256, but key `rsa-1` is for RS256",
    )
    .await;

    // alg none: header {"alg":"none"}, no signature.
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(claims())
    );
    refused(&auth, &unsigned, "unsigned (alg `none`)").await;

    // HS256 when only the identity provider is configured, even with a plausible secret.
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(&[7u8; 32]),
    )
    .unwrap();
    refused(&auth, &hs, "accepts only tokens from its identity provider").await;

    // Claim mapping: no tenant where auth.tenant_claim points.
    let mut no_tenant = claims();
    no_tenant.as_object_mut().unwrap().remove("org");
    refused(&auth, &rs(no_tenant), "no tenant claim `org.tenant`").await;
    refused(&auth, "not-a-jwt", "not a well-formed JWT").await;
}

#[tokio::test]
async fn hs256_still_works_beside_jwks_when_a_secret_is_configured() {
    let idp = Idp::start().await;
    let auth = Authenticator::new(&AuthConfig {
        hs256_secret: "d".repeat(32),
        issuer: None,
        audience: None,
        roles_claim: "roles".into(),
        tenant_claim: "tenant".into(),
        ..idp.config()
    })
    .unwrap();
    let dev = auth.mint("dev", "acme", &[Role::Operator], Duration::from_secs(60));
    let p = call(&auth, &dev).await.unwrap();
    assert!(p.has(Role::Operator) && p.tenant == "acme");
    let only_jwks = Authenticator::new(&idp.config()).unwrap();
    assert!(
        only_jwks
            .try_mint("dev", "acme", &[Role::Operator], Duration::from_secs(60))
            .is_err(),
        "without a secret nothing can be minted"
    );
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_set_at_most_once_per_min_refresh() {
    let idp = Idp::start().await;
    let min_refresh = Duration::from_secs(2);
    // Signing with RSA is slow in a debug build: sign everything before the clock matters.
    let valid = sign(RSA, Algorithm::RS256, "rsa-1", &claims());
    let rotated = sign(RSA_OTHER, Algorithm::RS256, "rsa-2", &claims());
    let bogus: Vec<String> = (0..20)
        .map(|i| sign(EC, Algorithm::ES256, &format!("bogus-{i}"), &claims()))
        .collect();
    let auth = Authenticator::new(&AuthConfig {
        jwks_min_refresh: min_refresh,
        ..idp.config()
    })
    .unwrap();
    call(&auth, &valid).await.unwrap();
    assert_eq!(idp.fetches(), 1);

    // The provider rotates in a new key; a token signed with it right away is refused (the set
    // was fetched less than min_refresh ago), and a flood of made-up kids fetches nothing.
    idp.keys
        .lock()
        .unwrap()
        .keys
        .push(public(RSA_OTHER, Algorithm::RS256, "rsa-2"));
    refused(&auth, &rotated, "unknown key id `rsa-2`").await;
    for token in &bogus {
        refused(&auth, token, "unknown key id `bogus-").await;
    }
    assert_eq!(idp.fetches(), 1, "within min_refresh nothing is refetched");

    tokio::time::sleep(min_refresh + Duration::from_millis(100)).await;
    let p = call(&auth, &rotated)
        .await
        .expect("the rotated key, after one refetch");
    assert_eq!(p.subject, "alice");
    assert_eq!(idp.fetches(), 2);
    for token in &bogus {
        refused(&auth, token, "unknown key id").await;
    }
    assert_eq!(
        idp.fetches(),
        2,
        "the refetch just made counts against the limit"
    );
}

#[tokio::test]
async fn keys_are_refetched_after_the_ttl_and_kept_when_the_provider_is_down() {
    let idp = Idp::start().await;
    let auth = Authenticator::new(&AuthConfig {
        jwks_ttl: Duration::from_millis(300),
        jwks_min_refresh: Duration::from_millis(0),
        ..idp.config()
    })
    .unwrap();
    let token = sign(EC, Algorithm::ES256, "ec-1", &claims());
    call(&auth, &token).await.unwrap();
    call(&auth, &token).await.unwrap();
    assert_eq!(idp.fetches(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    call(&auth, &token).await.unwrap();
    assert_eq!(idp.fetches(), 2, "a stale set is fetched again");

    // A provider that cannot be reached at all: UNAVAILABLE, saying where and why.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", closed.local_addr().unwrap());
    drop(closed);
    let down = Authenticator::new(&AuthConfig {
        jwks_url: Some(url.clone()),
        ..idp.config()
    })
    .unwrap();
    let status = call(&down, &token).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains(&url), "{}", status.message());
}

#[test]
fn claim_names_and_url_are_validated() {
    let bad_url = AuthConfig {
        jwks_url: Some("ftp://idp/keys".into()),
        ..Default::default()
    };
    assert!(
        bad_url
            .validate()
            .unwrap_err()
            .to_string()
            .contains("auth.jwks_url")
    );
    let bad_claim = AuthConfig {
        roles_claim: "realm_access.".into(),
        ..Default::default()
    };
    assert!(
        bad_claim
            .validate()
            .unwrap_err()
            .to_string()
            .contains("auth.roles_claim")
    );
    let c: AuthConfig = serde_json::from_value(json!({
        "jwks_url": "https://idp/certs", "roles_claim": "realm_access.roles",
        "tenant_claim": "tenant", "jwks_ttl": "10m", "jwks_min_refresh": "30s"
    }))
    .unwrap();
    assert_eq!(c.jwks_ttl, Duration::from_secs(600));
    assert!(!c.wants_dev_secret());
    assert!(AuthConfig::default().wants_dev_secret());
}
