//! Ed25519 keys and signatures: the one place Baton signs and verifies what it decided.
//!
//! - Validation signs every `TaskApproved` ([`sign_approved`]) with its key; execution verifies
//!   it ([`verify_approved`]) against its trusted public keys before the first action.
//! - Audit signs the head of its log (the anchor) with its own key ([`SigningKey::sign`] with
//!   the context [`ANCHOR_CONTEXT`]) and checks it on start and in `VerifyAudit`.
//!
//! # Keys
//!
//! A private key file holds the 32-byte Ed25519 seed as 64 lowercase hex characters (surrounding
//! whitespace ignored). It must be readable by its owner only (mode `0600` on Unix, as ssh
//! demands of its keys): [`SigningKey::load`] refuses a file the group or others may read.
//! A public key is written as its 32 bytes in hex (64 characters). A key's id is the first 8
//! bytes of the SHA-256 of the public key, as 16 hex characters ([`key_id`]): short enough for a
//! log line, and what the audit log records of the key that signed.
//!
//! Rotation: execution trusts a *set* of keys ([`TrustedKeys`], `execution.trusted_keys`). To
//! rotate, add the new public key to the set, switch validation to the new private key, and once
//! no approval signed by the old key is still waiting to run, remove the old one: a removed key
//! verifies nothing.
//!
//! # What is signed
//!
//! Protobuf encodings are not canonical in general (fields may come in any order, maps in any
//! order, unknown fields are kept by some decoders). Baton therefore never signs received bytes:
//! it signs the encoding that prost writes for the *decoded* value. prost writes the fields of a
//! message in one fixed order (the generated struct's), omits proto3 defaults, drops unknown fields, and — because
//! baton-proto generates every `map<>` as a `BTreeMap` — writes map entries in key order. So two
//! encodings of the same content (reordered fields, reordered map entries) decode to equal values
//! and re-encode to the same bytes. A field this build does not know is dropped before hashing,
//! so an approval carrying one does not verify here: it fails closed.
//!
//! - Plan hash ([`plan_hash`]): lowercase hex SHA-256 over [`PLAN_CONTEXT`] and the plan's
//!   encoding.
//! - Decision digest ([`decision_digest`]): SHA-256 over [`DECISION_CONTEXT`] followed by the
//!   encodings of task, spec, plan, validation result and approval, in that order, each written
//!   as an 8-byte big-endian length and the bytes. The approval holds the plan hash the approver
//!   saw, and the task its id and tenant, which must match the event envelope's.
//! - The signature is Ed25519 over the 32-byte digest.

use baton_proto::{
    Approval, ApprovalSignature, Event, Plan, Task, TaskApproved, TaskSpec, ValidationResult,
};
use ed25519_dalek::{Signer as _, Verifier as _};
use prost::Message as _;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Domain tag of the plan hash.
pub const PLAN_CONTEXT: &[u8] = b"baton.plan.v1\0";
/// Domain tag of the decision digest validation signs.
pub const DECISION_CONTEXT: &[u8] = b"baton.decision.v1\0";
/// Domain tag of the audit anchor audit signs.
pub const ANCHOR_CONTEXT: &[u8] = b"baton.audit-anchor.v1\0";

/// File name of validation's development key under `data_dir`.
pub const VALIDATION_KEY_FILE: &str = "validation.key";
/// File name of audit's development key under `data_dir`.
pub const AUDIT_KEY_FILE: &str = "audit.key";

/// What went wrong with a key file or a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file cannot be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The key file may be read by others than its owner.
    #[error(
        "key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The text is not a key.
    #[error("{what} is not a key: {reason}")]
    Malformed {
        /// What was parsed (a file path, or `execution.trusted_keys[1]`).
        what: String,
        /// Why not: length, hex, or not a point on the curve.
        reason: String,
    },
    /// No random bytes for a new key.
    #[error("cannot generate a key: {0}")]
    Random(String),
}

/// Why a signed decision was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The event carries no signature (forged, or from a build before signing).
    #[error("no signature")]
    Unsigned,
    /// A part the signature covers is missing.
    #[error("no {0} (the signature covers it)")]
    Missing(&'static str),
    /// The signing key is not trusted (unknown, or removed by rotation).
    #[error("key {key_id:?} is not trusted (trusted: {trusted})")]
    UntrustedKey {
        /// The key id the event names.
        key_id: String,
        /// The trusted key ids, comma-separated.
        trusted: String,
    },
    /// The signature does not verify: some signed content was changed, or it was never signed.
    #[error("signature by key {0} does not verify (the signed content was changed or forged)")]
    BadSignature(String),
    /// The plan is not the one whose hash was approved or signed.
    #[error("plan hash {actual} does not match the approved {expected} (the plan was changed)")]
    PlanHash {
        /// The hash that was approved/signed.
        expected: String,
        /// The hash of the plan carried.
        actual: String,
    },
    /// The envelope names another task or tenant than the signed task.
    #[error("event is for {event} but the signed task is {signed}")]
    WrongTask {
        /// `task_id@tenant` of the envelope.
        event: String,
        /// `task_id@tenant` of the signed task.
        signed: String,
    },
    /// The approval says no.
    #[error("the approval is not approved")]
    NotApproved,
}

/// The id of a public key: the first 8 bytes of its SHA-256, as 16 lowercase hex characters.
pub fn key_id(public: &ed25519_dalek::VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

/// A private Ed25519 key and its id.
#[derive(Clone)]
pub struct SigningKey {
    /// The key.
    inner: ed25519_dalek::SigningKey,
    /// [`key_id`] of its public key.
    id: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.id)
            .field("seed", &"<redacted>")
            .finish()
    }
}

impl SigningKey {
    /// A new random key (from the OS).
    pub fn generate() -> Result<SigningKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SigningKey::from_seed(seed))
    }

    /// The key of a 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> SigningKey {
        let inner = ed25519_dalek::SigningKey::from_bytes(&seed);
        let id = key_id(&inner.verifying_key());
        SigningKey { inner, id }
    }

    /// Reads a key file (64 hex characters of seed). Errors: [`KeyError::Io`],
    /// [`KeyError::Permissions`] when group or others may read it, [`KeyError::Malformed`].
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions {
                    path: path.to_path_buf(),
                    mode: mode & 0o777,
                });
            }
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let seed = parse_hex32(text.trim()).map_err(|reason| KeyError::Malformed {
            what: path.display().to_string(),
            reason,
        })?;
        Ok(SigningKey::from_seed(seed))
    }

    /// Reads the key file at `path`, or creates it with a new key (mode `0600`, its directory
    /// created) when there is none. Returns the key and whether it was created. Two processes
    /// creating it at once agree on one key: the file is created exclusively and the loser
    /// reads the winner's.
    pub fn load_or_create(path: &Path) -> Result<(SigningKey, bool), KeyError> {
        match SigningKey::load(path) {
            Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            other => return other.map(|k| (k, false)),
        }
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let key = SigningKey::generate()?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        match opts.open(path) {
            Ok(mut f) => {
                let text = format!("{}\n", hex::encode(key.inner.to_bytes()));
                std::io::Write::write_all(&mut f, text.as_bytes()).map_err(io)?;
                Ok((key, true))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Another process created it first; give it a moment to finish writing.
                std::thread::sleep(std::time::Duration::from_millis(50));
                SigningKey::load(path).map(|k| (k, false))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The key's id ([`key_id`]).
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// The public key, for `execution.trusted_keys` (or audit's anchor check).
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            inner: self.inner.verifying_key(),
            id: self.id.clone(),
        }
    }

    /// Ed25519 signature (64 bytes) over `context` followed by `message`.
    pub fn sign(&self, context: &[u8], message: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(context.len() + message.len());
        m.extend_from_slice(context);
        m.extend_from_slice(message);
        self.inner.sign(&m).to_bytes().to_vec()
    }
}

/// A public Ed25519 key and its id; parsed from and printed as 64 hex characters.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The key.
    inner: ed25519_dalek::VerifyingKey,
    /// [`key_id`] of it.
    id: String,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({} {})", self.id, self)
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.inner.as_bytes()))
    }
}

impl std::str::FromStr for PublicKey {
    type Err = String;

    fn from_str(s: &str) -> Result<PublicKey, String> {
        let bytes = parse_hex32(s.trim())?;
        let inner = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| "not an ed25519 public key".to_string())?;
        Ok(PublicKey {
            id: key_id(&inner),
            inner,
        })
    }
}

impl PublicKey {
    /// The key's id ([`key_id`]).
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// Checks an Ed25519 `signature` over `context` followed by `message`.
    pub fn verify(&self, context: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        let mut m = Vec::with_capacity(context.len() + message.len());
        m.extend_from_slice(context);
        m.extend_from_slice(message);
        self.inner.verify(&m, &sig).is_ok()
    }
}

/// The public keys a verifier accepts, by key id (more than one during a rotation).
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    /// Key id → key.
    by_id: BTreeMap<String, PublicKey>,
}

impl TrustedKeys {
    /// Parses public keys (64 hex characters each); `what` names the setting in errors
    /// (`execution.trusted_keys`). Errors: [`KeyError::Malformed`] naming the entry.
    pub fn parse(what: &str, keys: &[String]) -> Result<TrustedKeys, KeyError> {
        let mut by_id = BTreeMap::new();
        for (i, k) in keys.iter().enumerate() {
            let key: PublicKey = k.parse().map_err(|reason| KeyError::Malformed {
                what: format!("{what}[{i}]"),
                reason,
            })?;
            by_id.insert(key.id.clone(), key);
        }
        Ok(TrustedKeys { by_id })
    }

    /// A set of the given keys.
    pub fn of(keys: impl IntoIterator<Item = PublicKey>) -> TrustedKeys {
        TrustedKeys {
            by_id: keys.into_iter().map(|k| (k.id.clone(), k)).collect(),
        }
    }

    /// True when no key is trusted (then nothing verifies).
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The trusted key ids, in order.
    pub fn ids(&self) -> Vec<&str> {
        self.by_id.keys().map(String::as_str).collect()
    }

    /// Checks that `signature` over `context` + `message` was made by the trusted key `key_id`.
    ///
    /// Errors: [`VerifyError::UntrustedKey`], [`VerifyError::BadSignature`].
    pub fn verify(
        &self,
        key_id: &str,
        context: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), VerifyError> {
        let key = self
            .by_id
            .get(key_id)
            .ok_or_else(|| VerifyError::UntrustedKey {
                key_id: key_id.to_string(),
                trusted: self.ids().join(", "),
            })?;
        if key.verify(context, message, signature) {
            Ok(())
        } else {
            Err(VerifyError::BadSignature(key_id.to_string()))
        }
    }
}

/// The development key `<data_dir>/<file>` ([`VALIDATION_KEY_FILE`], [`AUDIT_KEY_FILE`]),
/// created when missing (see [`SigningKey::load_or_create`]): what `baton up` uses when no key
/// is configured, like the development JWT secret.
pub fn dev_key(data_dir: &Path, file: &str) -> Result<SigningKey, KeyError> {
    let path = data_dir.join(file);
    let (key, created) = SigningKey::load_or_create(&path)?;
    if created {
        tracing::info!(path = %path.display(), key_id = key.key_id(), "created a development signing key");
    }
    Ok(key)
}

/// 32 bytes from 64 hex characters.
fn parse_hex32(s: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(s).map_err(|e| format!("not hex: {e}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes, expected 32", b.len()))
}

/// Lowercase hex SHA-256 of the plan's canonical encoding (see the module docs).
pub fn plan_hash(plan: &Plan) -> String {
    let mut h = Sha256::new();
    h.update(PLAN_CONTEXT);
    h.update(plan.encode_to_vec());
    hex::encode(h.finalize())
}

/// The 32-byte digest validation signs for an approved task (see the module docs).
pub fn decision_digest(
    task: &Task,
    spec: &TaskSpec,
    plan: &Plan,
    validation: &ValidationResult,
    approval: &Approval,
) -> [u8; 32] {
    fn part(h: &mut Sha256, bytes: &[u8]) {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    let mut h = Sha256::new();
    h.update(DECISION_CONTEXT);
    part(&mut h, &task.encode_to_vec());
    part(&mut h, &spec.encode_to_vec());
    part(&mut h, &plan.encode_to_vec());
    part(&mut h, &validation.encode_to_vec());
    part(&mut h, &approval.encode_to_vec());
    h.finalize().into()
}

/// The parts of a `TaskApproved` the signature covers, or the first one missing.
fn parts(
    approved: &TaskApproved,
) -> Result<(&Task, &TaskSpec, &Plan, &ValidationResult, &Approval), VerifyError> {
    Ok((
        approved.task.as_ref().ok_or(VerifyError::Missing("task"))?,
        approved.spec.as_ref().ok_or(VerifyError::Missing("spec"))?,
        approved.plan.as_ref().ok_or(VerifyError::Missing("plan"))?,
        approved
            .validation
            .as_ref()
            .ok_or(VerifyError::Missing("validation result"))?,
        approved
            .approval
            .as_ref()
            .ok_or(VerifyError::Missing("approval"))?,
    ))
}

/// Signs `approved` with `key`: sets `approval.plan_hash` to the plan's hash when it is empty,
/// then `signature` (key id, signature, plan hash). Errors: [`VerifyError::Missing`] when a
/// covered part is absent; [`VerifyError::PlanHash`] when the approval names another plan.
pub fn sign_approved(key: &SigningKey, approved: &mut TaskApproved) -> Result<(), VerifyError> {
    let hash = plan_hash(approved.plan.as_ref().ok_or(VerifyError::Missing("plan"))?);
    let approval = approved
        .approval
        .as_mut()
        .ok_or(VerifyError::Missing("approval"))?;
    if approval.plan_hash.is_empty() {
        approval.plan_hash = hash.clone();
    } else if approval.plan_hash != hash {
        return Err(VerifyError::PlanHash {
            expected: approval.plan_hash.clone(),
            actual: hash,
        });
    }
    let (task, spec, plan, validation, approval) = parts(approved)?;
    let digest = decision_digest(task, spec, plan, validation, approval);
    approved.signature = Some(ApprovalSignature {
        key_id: key.key_id().to_string(),
        signature: key.sign(DECISION_CONTEXT, &digest),
        plan_hash: hash,
    });
    Ok(())
}

/// Verifies a `TaskApproved` before anything of it runs: it is signed by a trusted key over its
/// task, spec, plan, validation result and approval; the plan's hash is the one signed and the
/// one the approval names; the signed task is the envelope's task and tenant; the approval says
/// yes. Returns the key id that signed.
pub fn verify_approved(
    trusted: &TrustedKeys,
    event: &Event,
    approved: &TaskApproved,
) -> Result<String, VerifyError> {
    let signature = approved.signature.as_ref().ok_or(VerifyError::Unsigned)?;
    let (task, spec, plan, validation, approval) = parts(approved)?;
    if task.task_id != event.task_id || task.tenant != event.tenant {
        return Err(VerifyError::WrongTask {
            event: format!("{}@{}", event.task_id, event.tenant),
            signed: format!("{}@{}", task.task_id, task.tenant),
        });
    }
    let actual = plan_hash(plan);
    for expected in [&signature.plan_hash, &approval.plan_hash] {
        if *expected != actual {
            return Err(VerifyError::PlanHash {
                expected: expected.clone(),
                actual,
            });
        }
    }
    let digest = decision_digest(task, spec, plan, validation, approval);
    trusted.verify(
        &signature.key_id,
        DECISION_CONTEXT,
        &digest,
        &signature.signature,
    )?;
    if !approval.approved {
        return Err(VerifyError::NotApproved);
    }
    Ok(signature.key_id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{Action, HttpAction, Phase, Step, Trigger, action};

    fn approved() -> (Event, TaskApproved) {
        let headers: BTreeMap<String, String> = [("b", "2"), ("a", "1"), ("c", "3")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let plan = Plan {
            summary: "put one config".into(),
            phases: vec![Phase {
                name: "canary".into(),
                steps: vec![Step {
                    reason: "drifted".into(),
                    action: Some(Action {
                        idempotency_key: "t-1:0:web-01:apply".into(),
                        kind: Some(action::Kind::Http(HttpAction {
                            method: "PUT".into(),
                            url: "http://127.0.0.1:9/config".into(),
                            headers,
                            ..Default::default()
                        })),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let task = Task {
            task_id: "t-1".into(),
            tenant: "acme".into(),
            trigger: Some(Trigger {
                text: "fix drift".into(),
                labels: [("team".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let approved = TaskApproved {
            task: Some(task),
            spec: Some(TaskSpec {
                task_id: "t-1".into(),
                parameters: [("x".to_string(), "1".to_string())].into(),
                ..Default::default()
            }),
            plan: Some(plan),
            validation: Some(ValidationResult::default()),
            approval: Some(Approval {
                task_id: "t-1".into(),
                approver: "alice".into(),
                approved: true,
                ..Default::default()
            }),
            signature: None,
        };
        let event = Event {
            task_id: "t-1".into(),
            tenant: "acme".into(),
            ..Default::default()
        };
        (event, approved)
    }

    #[test]
    fn signed_approval_verifies_and_any_change_is_refused() {
        let key = SigningKey::generate().unwrap();
        let trusted = TrustedKeys::of([key.public_key()]);
        let (event, mut a) = approved();
        sign_approved(&key, &mut a).unwrap();
        assert_eq!(verify_approved(&trusted, &event, &a).unwrap(), key.key_id());
        assert_eq!(key.key_id().len(), 16);

        let mut unsigned = a.clone();
        unsigned.signature = None;
        assert_eq!(
            verify_approved(&trusted, &event, &unsigned),
            Err(VerifyError::Unsigned)
        );

        // A tampered plan: its hash no longer matches what was approved and signed.
        let mut tampered = a.clone();
        if let Some(action::Kind::Http(h)) = tampered.plan.as_mut().unwrap().phases[0].steps[0]
            .action
            .as_mut()
            .unwrap()
            .kind
            .as_mut()
        {
            h.url = "http://attacker.invalid/".into();
        }
        assert!(matches!(
            verify_approved(&trusted, &event, &tampered),
            Err(VerifyError::PlanHash { .. })
        ));
        // Plan and both hashes replaced consistently: the signature no longer verifies.
        let new_hash = plan_hash(tampered.plan.as_ref().unwrap());
        tampered.approval.as_mut().unwrap().plan_hash = new_hash.clone();
        tampered.signature.as_mut().unwrap().plan_hash = new_hash;
        assert!(matches!(
            verify_approved(&trusted, &event, &tampered),
            Err(VerifyError::BadSignature(_))
        ));
        // Another approver.
        let mut other = a.clone();
        other.approval.as_mut().unwrap().approver = "mallory".into();
        assert!(matches!(
            verify_approved(&trusted, &event, &other),
            Err(VerifyError::BadSignature(_))
        ));
        // The signed decision replayed under another task's envelope.
        let elsewhere = Event {
            task_id: "t-2".into(),
            ..event.clone()
        };
        assert!(matches!(
            verify_approved(&trusted, &elsewhere, &a),
            Err(VerifyError::WrongTask { .. })
        ));
        // Signed by a key that is not trusted.
        let stranger = SigningKey::generate().unwrap();
        let mut forged = approved().1;
        sign_approved(&stranger, &mut forged).unwrap();
        assert!(matches!(
            verify_approved(&trusted, &event, &forged),
            Err(VerifyError::UntrustedKey { .. })
        ));
    }

    #[test]
    fn rotation_trusts_every_listed_key_and_no_removed_one() {
        let (old, new) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
        );
        let (event, a) = approved();
        let (mut by_old, mut by_new) = (a.clone(), a);
        sign_approved(&old, &mut by_old).unwrap();
        sign_approved(&new, &mut by_new).unwrap();
        let both = TrustedKeys::parse(
            "execution.trusted_keys",
            &[old.public_key().to_string(), new.public_key().to_string()],
        )
        .unwrap();
        assert!(verify_approved(&both, &event, &by_old).is_ok());
        assert!(verify_approved(&both, &event, &by_new).is_ok());
        let rotated = TrustedKeys::parse("t", &[new.public_key().to_string()]).unwrap();
        assert!(verify_approved(&rotated, &event, &by_new).is_ok());
        assert!(matches!(
            verify_approved(&rotated, &event, &by_old),
            Err(VerifyError::UntrustedKey { key_id, .. }) if key_id == old.key_id()
        ));
        let bad = TrustedKeys::parse("execution.trusted_keys", &["abc".into()]).unwrap_err();
        assert!(
            bad.to_string().contains("execution.trusted_keys[0]"),
            "{bad}"
        );
    }

    #[test]
    fn equal_content_hashes_the_same_whatever_the_encoding_order() {
        let (_, a) = approved();
        let plan = a.plan.unwrap();
        let bytes = plan.encode_to_vec();
        // Build a second wire encoding of the same plan with the map entries of the HTTP
        // headers in reverse order and the plan's top-level fields in reverse order.
        let step_action = plan.phases[0].steps[0].action.as_ref().unwrap();
        let Some(action::Kind::Http(http)) = step_action.kind.as_ref() else {
            unreachable!()
        };
        let mut reversed_headers = Vec::new();
        for (k, v) in http.headers.iter().rev() {
            prost::encoding::hash_map::encode(
                prost::encoding::string::encode,
                prost::encoding::string::encoded_len,
                prost::encoding::string::encode,
                prost::encoding::string::encoded_len,
                4,
                &std::collections::HashMap::from([(k.clone(), v.clone())]),
                &mut reversed_headers,
            );
        }
        let mut http_bytes = HttpAction {
            headers: BTreeMap::new(),
            ..http.clone()
        }
        .encode_to_vec();
        http_bytes.extend_from_slice(&reversed_headers);
        let decoded_http = HttpAction::decode(http_bytes.as_slice()).unwrap();
        assert_eq!(&decoded_http, http);
        assert_eq!(decoded_http.encode_to_vec(), http.encode_to_vec());

        // Field order: encode each top-level field on its own and concatenate in reverse.
        let fields: Vec<Vec<u8>> = vec![
            Plan {
                summary: plan.summary.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
            Plan {
                phases: plan.phases.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
        ];
        let reordered: Vec<u8> = fields.into_iter().rev().flatten().collect();
        assert_ne!(reordered, bytes, "a different wire encoding");
        let decoded = Plan::decode(reordered.as_slice()).unwrap();
        assert_eq!(plan_hash(&decoded), plan_hash(&plan));

        // Map insertion order does not matter either.
        let mut spec_a = TaskSpec::default();
        let mut spec_b = TaskSpec::default();
        for (k, v) in [("z", "1"), ("a", "2"), ("m", "3")] {
            spec_a.parameters.insert(k.into(), v.into());
        }
        for (k, v) in [("m", "3"), ("z", "1"), ("a", "2")] {
            spec_b.parameters.insert(k.into(), v.into());
        }
        assert_eq!(spec_a.encode_to_vec(), spec_b.encode_to_vec());
    }

    #[test]
    fn key_files_are_owner_only_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/validation.key");
        let (key, created) = SigningKey::load_or_create(&path).unwrap();
        assert!(created);
        let (again, created) = SigningKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again.key_id(), key.key_id());
        assert_eq!(
            dev_key(dir.path().join("sub").as_path(), VALIDATION_KEY_FILE)
                .unwrap()
                .key_id(),
            key.key_id()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = SigningKey::load(&path).unwrap_err();
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        let public: PublicKey = key.public_key().to_string().parse().unwrap();
        assert_eq!(public, key.public_key());
        let sig = key.sign(ANCHOR_CONTEXT, b"head");
        assert!(public.verify(ANCHOR_CONTEXT, b"head", &sig));
        assert!(!public.verify(DECISION_CONTEXT, b"head", &sig));
        assert!(!format!("{key:?}").contains(&hex::encode(key.inner.to_bytes())));
    }
}
