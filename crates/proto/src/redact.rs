//! Redaction of secrets from what Baton keeps: the audit log and log lines.
//!
//! What is replaced by [`REDACTED`]:
//! - **by name**: the value of a header, label, parameter, JSON field or `name=value` /
//!   `name: value` pair in text whose name — case-insensitive, `-` read as `_` — contains one of
//!   [`SECRET_NAMES`] (`authorization`, `cookie`, `password`, `secret`, `token`, `api_key`,
//!   `apikey`, `private_key`, …). So `Authorization`, `Cookie`, `Set-Cookie`, `X-Api-Key`,
//!   `{"password": …}`, `?access_token=…` and `db_password=…` lose their values;
//! - **by value**, wherever it appears in text: `Bearer <token>`, JWT-looking `eyJ…` tokens,
//!   `-----BEGIN … PRIVATE KEY-----` blocks (to their end, or to the end of a cut text), AWS
//!   access key ids (`AKIA…`, `ASIA…`), and the password of a URL's userinfo
//!   (`https://user:<redacted>@host`).
//!
//! Why: the audit log is kept for years, copied into backups and read by operators and
//! auditors; log lines go to files and collectors. Neither may hold a credential a trigger, a
//! plan or a response happened to carry. The hash chain covers the redacted record: audit
//! redacts each event ([`Redact`]) *before* it is hashed and stored, so what is verified is what
//! is kept.
//!
//! Where it is not applied, on purpose: events on the bus. Execution needs the real header
//! values of the approved plan to run its HTTP actions, so the plan travels in clear inside
//! JetStream (whose access is NATS's permissions' job) and is redacted only where it is kept
//! for people: the audit store, and the log lines that show plan or trigger contents
//! ([`text`]).
//!
//! Over-redaction is preferred to a leak: a label named `token_budget` loses its value too.
//! Binary payloads that are neither JSON nor text are left as they are (there is no name or
//! pattern to find in them).

use regex::{Captures, Regex, RegexSet};
use std::collections::BTreeMap;
use std::sync::LazyLock;

use crate::*;

/// What a secret is replaced by.
pub const REDACTED: &str = "<redacted>";

/// Parts of names (lowercase, `-` read as `_`) whose values are secrets: a name containing any
/// of them is redacted.
pub const SECRET_NAMES: &[&str] = &[
    "authorization",
    "cookie",
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "private_key",
    "access_key",
    "credential",
];

/// True when a value named `name` is a secret (see [`SECRET_NAMES`]).
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase().replace('-', "_");
    SECRET_NAMES.iter().any(|s| name.contains(s))
}

/// Name part of the `name=value` pattern (a regex alternation of [`SECRET_NAMES`] with `-` or
/// `_` between words).
const NAME_RE: &str = r"authorization|cookie|password|passwd|secret|token|api[_\-]?key|private[_\-]?key|access[_\-]?key|credential";

/// How a pattern's match is replaced.
type Replace = fn(&Captures<'_>) -> String;

/// The value patterns, in the order they are applied, each with how a match is replaced.
static PATTERNS: LazyLock<Vec<(Regex, Replace)>> = LazyLock::new(|| {
    let whole: Replace = |_| REDACTED.to_string();
    vec![
        // A PEM private key, to its end or to the end of a cut text.
        (
            Regex::new(r"(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)")
                .expect("valid regex"),
            whole,
        ),
        // The password of a URL's userinfo.
        (
            Regex::new(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/\s:@]*):[^/\s@]+@").expect("valid regex"),
            |c| format!("{}:{REDACTED}@", &c[1]),
        ),
        // `name=value`, `name: value`, `"name": "value"` with a secret name; an HTTP
        // authorization scheme (`Basic …`) goes with its value.
        (
            Regex::new(&format!(
                r#"(?i)(["']?[a-z0-9_\-]*(?:{NAME_RE})[a-z0-9_\-]*["']?\s*[:=]\s*)(?:"[^"]*"|'[^']*'|"[^"]*\z|(?:(?:bearer|basic|digest|token)\s+)?[^\s"'&,;)}}\]]+)"#
            ))
            .expect("valid regex"),
            |c| {
                let value = &c[0][c[1].len()..];
                if value.starts_with('"') {
                    format!("{}\"{REDACTED}\"", &c[1])
                } else if value.starts_with('\'') {
                    format!("{}'{REDACTED}'", &c[1])
                } else {
                    format!("{}{REDACTED}", &c[1])
                }
            },
        ),
        // `Bearer <token>` anywhere.
        (
            Regex::new(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]{8,}=*").expect("valid regex"),
            |c| format!("{} {REDACTED}", &c[1]),
        ),
        // A JWT (or any base64url JSON starting `{"`), also when cut.
        (
            Regex::new(r"\beyJ[A-Za-z0-9_\-]{8,}(?:\.[A-Za-z0-9_\-]*){0,2}").expect("valid regex"),
            whole,
        ),
        // An AWS access key id.
        (
            Regex::new(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b").expect("valid regex"),
            whole,
        ),
    ]
});

/// All patterns at once: one pass to tell that a text has nothing to redact (the common case).
static ANY: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new(PATTERNS.iter().map(|(re, _)| re.as_str())).expect("valid regexes")
});

/// `s` with the secrets its text shows replaced (see the module doc); `None` when there are
/// none.
pub fn text(s: &str) -> Option<String> {
    if !ANY.is_match(s) {
        return None;
    }
    let mut out = s.to_string();
    for (re, replace) in PATTERNS.iter() {
        if let std::borrow::Cow::Owned(changed) =
            re.replace_all(&out, |c: &Captures<'_>| replace(c))
        {
            out = changed;
        }
    }
    (out != s).then_some(out)
}

/// `s` as a log line may show it: [`text`] applied, or `s` itself when there is nothing to
/// redact.
pub fn for_log(s: &str) -> std::borrow::Cow<'_, str> {
    match text(s) {
        Some(r) => std::borrow::Cow::Owned(r),
        None => std::borrow::Cow::Borrowed(s),
    }
}

/// Redacts a string in place; true when it changed.
fn string(s: &mut String) -> bool {
    match text(s) {
        Some(r) => {
            *s = r;
            true
        }
        None => false,
    }
}

/// Redacts a map of named values (headers, labels, parameters) in place: a secret name's value
/// becomes [`REDACTED`], the other values go through [`text`]. True when anything changed.
pub fn map(m: &mut BTreeMap<String, String>) -> bool {
    let mut changed = false;
    for (k, v) in m.iter_mut() {
        if is_secret_name(k) {
            if v != REDACTED {
                *v = REDACTED.to_string();
                changed = true;
            }
        } else {
            changed |= string(v);
        }
    }
    changed
}

/// Redacts a JSON document in place: fields with a secret name get [`REDACTED`] as their
/// value, strings go through [`text`]. True when anything changed.
pub fn json(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => string(s),
        Value::Array(items) => items.iter_mut().fold(false, |c, v| json(v) | c),
        Value::Object(fields) => {
            let mut changed = false;
            for (k, v) in fields.iter_mut() {
                if is_secret_name(k) {
                    if v.as_str() != Some(REDACTED) {
                        *v = Value::String(REDACTED.into());
                        changed = true;
                    }
                } else {
                    changed |= json(v);
                }
            }
            changed
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Redacts a string holding a JSON document (a plug-in's `spec_json`, a tool call's arguments):
/// as JSON when it parses, else as [`text`]. True when it changed.
fn json_string(s: &mut String) -> bool {
    if let Ok(mut value) = serde_json::from_str::<serde_json::Value>(s) {
        if json(&mut value) {
            *s = value.to_string();
            return true;
        }
        return false;
    }
    string(s)
}

/// Redacts bytes that may be a document (an HTTP body, a payload, a prefix of one) in place: a
/// JSON document as JSON; else text (UTF-8, or UTF-8 cut inside its last character) as
/// [`text`]; anything else is left alone. True when it changed.
pub fn bytes(b: &mut Vec<u8>) -> bool {
    let first = b.iter().find(|c| !c.is_ascii_whitespace());
    if matches!(first, Some(b'{' | b'['))
        && let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(b)
    {
        if json(&mut value) {
            *b = serde_json::to_vec(&value).unwrap_or_default();
            return true;
        }
        return false;
    }
    let valid = match std::str::from_utf8(b) {
        Ok(_) => b.len(),
        Err(e) if b.len() - e.valid_up_to() < 4 && e.error_len().is_none() => e.valid_up_to(),
        Err(_) => return false,
    };
    let head = std::str::from_utf8(&b[..valid]).unwrap_or_default();
    match text(head) {
        Some(r) => {
            let mut out = r.into_bytes();
            out.extend_from_slice(&b[valid..]);
            *b = out;
            true
        }
        None => false,
    }
}

/// Something that may carry secrets, redacted in place.
pub trait Redact {
    /// Replaces the secrets `self` carries with [`REDACTED`] (see the module doc); true when
    /// anything changed (so a caller can keep the original encoding otherwise).
    fn redact(&mut self) -> bool;
}

impl Redact for String {
    fn redact(&mut self) -> bool {
        string(self)
    }
}

impl<T: Redact> Redact for Option<T> {
    fn redact(&mut self) -> bool {
        self.as_mut().is_some_and(Redact::redact)
    }
}

impl<T: Redact> Redact for Vec<T> {
    fn redact(&mut self) -> bool {
        self.iter_mut().fold(false, |c, x| x.redact() | c)
    }
}

impl Redact for Event {
    fn redact(&mut self) -> bool {
        self.body.redact()
    }
}

impl Redact for event::Body {
    fn redact(&mut self) -> bool {
        use event::Body;
        match self {
            Body::TriggerRejected(r) => r.redact(),
            Body::TaskReceived(r) => r.task.redact(),
            Body::TaskRouted(r) => r.task.redact() | r.decision.redact(),
            Body::PlanProposed(p) => p.task.redact() | p.spec.redact() | p.plan.redact(),
            Body::AwaitingApproval(a) => a.pending.redact(),
            Body::TaskApproved(a) => {
                a.task.redact()
                    | a.spec.redact()
                    | a.plan.redact()
                    | a.validation.redact()
                    | a.approval.redact()
            }
            Body::TaskRejected(r) => {
                r.validation.redact() | r.approval.redact() | r.reasons.redact()
            }
            Body::ExecutionStarted(_) | Body::PhaseStarted(_) => false,
            // The asset changes merged into it read like `asset_updated`'s.
            Body::PhaseCompleted(p) => p.assets.redact(),
            Body::AssetUpdated(a) => a.asset.redact(),
            Body::RollbackStarted(r) => r.reason.redact(),
            // The last phase's completion merged into it reads like `phase_completed`'s.
            Body::TaskCompleted(c) => {
                c.execution.redact() | c.last_phase.as_mut().is_some_and(|p| p.assets.redact())
            }
            Body::TaskFailed(f) => f.reason.redact() | f.execution.redact(),
            Body::DeadLetter(d) => d.redact(),
            Body::AwaitingClarification(a) => {
                a.task.redact() | a.decision.redact() | a.candidates.redact()
            }
            Body::ToolCallAwaitingApproval(a) => a.pending.redact(),
            Body::ToolCallDecided(d) => d.pending.redact() | d.approval.redact(),
        }
    }
}

impl Redact for TriggerRejected {
    fn redact(&mut self) -> bool {
        self.reason.redact() | bytes(&mut self.payload) | bytes(&mut self.payload_prefix)
    }
}

impl Redact for DeadLetter {
    /// The carried message is redacted as an event when it is one (re-encoded only when
    /// something changed), else as bytes.
    fn redact(&mut self) -> bool {
        use prost::Message as _;
        let payload = match Event::decode(self.payload.as_slice()) {
            Ok(mut event) if event.body.is_some() => {
                if event.redact() {
                    self.payload = event.encode_to_vec();
                    true
                } else {
                    false
                }
            }
            _ => bytes(&mut self.payload),
        };
        payload | self.reason.redact() | map(&mut self.headers)
    }
}

impl Redact for Trigger {
    fn redact(&mut self) -> bool {
        self.text.redact() | map(&mut self.labels)
    }
}

impl Redact for Task {
    fn redact(&mut self) -> bool {
        self.trigger.redact()
    }
}

impl Redact for TaskSpec {
    fn redact(&mut self) -> bool {
        self.intent.redact() | map(&mut self.parameters)
    }
}

impl Redact for Decision {
    fn redact(&mut self) -> bool {
        self.spec.redact() | self.explanation.redact()
    }
}

impl Redact for Asset {
    fn redact(&mut self) -> bool {
        self.address.redact() | map(&mut self.labels)
    }
}

impl Redact for HttpAction {
    fn redact(&mut self) -> bool {
        self.url.redact() | bytes(&mut self.body) | map(&mut self.headers)
    }
}

impl Redact for Action {
    fn redact(&mut self) -> bool {
        let kind = match &mut self.kind {
            Some(action::Kind::Http(h)) => h.redact(),
            Some(action::Kind::Plugin(p)) => json_string(&mut p.spec_json),
            // A script may quote a token: its text and arguments go through `text`.
            Some(action::Kind::Sandbox(s)) => {
                let files = s.files.values_mut().fold(false, |c, v| string(v) | c);
                s.command.iter_mut().fold(files, |c, v| string(v) | c)
            }
            Some(action::Kind::Noop(_)) | None => false,
        };
        kind | self.description.redact()
    }
}

impl Redact for HealthCheck {
    fn redact(&mut self) -> bool {
        match &mut self.kind {
            Some(health_check::Kind::Http(h)) => h.url.redact(),
            Some(health_check::Kind::Tcp(t)) => t.address.redact(),
            Some(health_check::Kind::Plugin(p)) => json_string(&mut p.spec_json),
            None => false,
        }
    }
}

impl Redact for Step {
    fn redact(&mut self) -> bool {
        self.asset.redact()
            | self.action.redact()
            | self.rollback.redact()
            | self.health_check.redact()
            | self.reason.redact()
    }
}

impl Redact for Phase {
    fn redact(&mut self) -> bool {
        self.steps.redact()
    }
}

impl Redact for Artifact {
    fn redact(&mut self) -> bool {
        let run = self
            .sandbox_run
            .as_mut()
            .is_some_and(|r| r.stdout.redact() | r.stderr.redact());
        bytes(&mut self.content) | run
    }
}

impl Redact for ToolCall {
    fn redact(&mut self) -> bool {
        json_string(&mut self.arguments) | json_string(&mut self.result) | self.reason.redact()
    }
}

impl Redact for Plan {
    fn redact(&mut self) -> bool {
        let tools = self
            .agent_run
            .as_mut()
            .is_some_and(|r| r.tool_calls.redact());
        self.summary.redact() | self.phases.redact() | self.artifacts.redact() | tools
    }
}

impl Redact for ValidationResult {
    fn redact(&mut self) -> bool {
        let policy = self
            .policy
            .as_mut()
            .is_some_and(|p| p.deny_reasons.redact() | p.approval_reasons.redact());
        let quality = self.quality.as_mut().is_some_and(|q| q.notes.redact());
        policy | quality | self.reasons.redact()
    }
}

impl Redact for Approval {
    fn redact(&mut self) -> bool {
        self.reason.redact()
    }
}

impl Redact for PendingToolCall {
    fn redact(&mut self) -> bool {
        self.task.redact()
            | self.decision.redact()
            | json_string(&mut self.arguments)
            | self.reason.redact()
    }
}

impl Redact for PendingApproval {
    fn redact(&mut self) -> bool {
        self.task.redact() | self.spec.redact() | self.plan.redact() | self.validation.redact()
    }
}

impl Redact for AssetStatus {
    fn redact(&mut self) -> bool {
        self.detail.redact()
    }
}

impl Redact for Execution {
    fn redact(&mut self) -> bool {
        let phases = self
            .phases
            .iter_mut()
            .fold(false, |c, p| p.assets.redact() | c);
        phases | self.error.redact() | self.plan.redact()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ";

    fn t(s: &str) -> String {
        text(s).unwrap_or_else(|| s.to_string())
    }

    #[test]
    fn names_are_matched_case_insensitively_with_dashes_as_underscores() {
        for name in [
            "Authorization",
            "COOKIE",
            "Set-Cookie",
            "X-Api-Key",
            "apikey",
            "db_password",
            "client-secret",
            "access_token",
            "private_key",
            "AWS_ACCESS_KEY_ID",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in ["Content-Type", "Idempotency-Key", "team", "environment"] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn a_sandbox_actions_script_and_arguments_are_redacted() {
        let mut a = Action {
            kind: Some(action::Kind::Sandbox(crate::SandboxAction {
                language: "python".into(),
                command: vec!["python3".into(), "main.py".into(), format!("--jwt={JWT}")],
                files: [(
                    "main.py".to_string(),
                    format!("TOKEN = '{JWT}'\nprint(1)\n"),
                )]
                .into(),
                timeout_ms: 0,
            })),
            ..Default::default()
        };
        assert!(a.redact());
        let Some(action::Kind::Sandbox(s)) = &a.kind else {
            unreachable!()
        };
        assert!(!s.files["main.py"].contains(JWT), "{:?}", s.files);
        assert!(s.files["main.py"].contains("print(1)"));
        assert!(!s.command[2].contains(JWT), "{:?}", s.command);
        assert_eq!(s.command[..2], ["python3", "main.py"]);
        assert!(!a.redact(), "idempotent");
    }

    #[test]
    fn values_that_look_like_secrets_are_redacted_in_text() {
        assert_eq!(
            t(&format!("deploy with {JWT} please")),
            "deploy with <redacted> please"
        );
        assert_eq!(
            t("curl -H 'Authorization: Bearer abc.def-123456' x"),
            "curl -H 'Authorization: <redacted>' x"
        );
        assert_eq!(t("use bearer abcdefgh12345"), "use bearer <redacted>");
        assert_eq!(t("(token: abc) done"), "(token: <redacted>) done");
        assert_eq!(t("key AKIAIOSFODNN7EXAMPLE here"), "key <redacted> here");
        assert_eq!(
            t("k=-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY----- done"),
            "k=<redacted> done"
        );
        assert_eq!(
            t("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADAN (cut"),
            "<redacted>"
        );
        assert_eq!(
            t("GET https://bob:hunter2@example.com/x?access_token=abc&page=2"),
            "GET https://bob:<redacted>@example.com/x?access_token=<redacted>&page=2"
        );
        assert_eq!(
            t(r#"{"user": "bob", "password": "hunter 2", "api_key": 'k'}"#),
            r#"{"user": "bob", "password": "<redacted>", "api_key": '<redacted>'}"#
        );
        assert_eq!(
            t(r#"{"text":"x","password": "cut here"#),
            r#"{"text":"x","password": "<redacted>""#
        );
    }

    #[test]
    fn ordinary_text_is_left_alone_and_redaction_is_idempotent() {
        for s in [
            "Fix drift on production web servers",
            "basic checks on 3 tokens",
            "unknown field `token`, expected one of `text`",
            "",
        ] {
            assert_eq!(text(s), None, "{s}");
        }
        let once = t(&format!("Authorization: Bearer {JWT}; password=x"));
        assert_eq!(text(&once), None, "{once}");
    }

    #[test]
    fn maps_json_and_bytes_redact_by_name_and_by_value() {
        let mut headers: BTreeMap<String, String> = [
            ("Authorization", "Bearer abcdefgh12345"),
            ("X-Api-Key", "k1"),
            ("Content-Type", "application/json"),
            ("X-Note", JWT),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert!(map(&mut headers));
        assert_eq!(headers["Authorization"], REDACTED);
        assert_eq!(headers["X-Api-Key"], REDACTED);
        assert_eq!(headers["Content-Type"], "application/json");
        assert_eq!(headers["X-Note"], REDACTED);
        assert!(!map(&mut headers), "a second pass changes nothing");

        let mut body =
            br#"{"name":"web","auth":{"password":"p","tokens":[1,2]},"note":"ok"}"#.to_vec();
        assert!(bytes(&mut body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["auth"]["password"], REDACTED);
        assert_eq!(v["auth"]["tokens"], REDACTED);
        assert_eq!(
            (v["name"].as_str(), v["note"].as_str()),
            (Some("web"), Some("ok"))
        );

        let mut form = b"user=bob&password=hunter2".to_vec();
        assert!(bytes(&mut form));
        assert_eq!(form, b"user=bob&password=<redacted>");
        let mut binary = vec![0xff, 0x00, 0x01];
        assert!(!bytes(&mut binary));
        // Text cut inside a character keeps its tail.
        let mut cut = format!("token={JWT} caf\u{e9}").into_bytes();
        cut.pop();
        assert!(bytes(&mut cut));
        assert!(cut.starts_with(b"token=<redacted> caf"));
    }

    #[test]
    fn an_approved_plan_loses_its_secrets_everywhere_it_is_carried() {
        let http = Action {
            idempotency_key: "t1:canary:web-01:apply".into(),
            kind: Some(action::Kind::Http(HttpAction {
                method: "PUT".into(),
                url: "http://127.0.0.1:1/config".into(),
                body: br#"{"db_password":"pw","size":3}"#.to_vec(),
                headers: [(
                    "Authorization".to_string(),
                    "Bearer s3cr3t-t0ken".to_string(),
                )]
                .into(),
                expect_status: vec![],
            })),
            ..Default::default()
        };
        let plan = Plan {
            phases: vec![Phase {
                steps: vec![Step {
                    action: Some(http),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let task = Task {
            trigger: Some(Trigger {
                text: format!("rotate with {JWT}"),
                labels: [("api_key".to_string(), "k".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut event = Event::first(
            "t1",
            "acme",
            "approved",
            "validation",
            event::Body::TaskApproved(TaskApproved {
                task: Some(task),
                plan: Some(plan),
                ..Default::default()
            }),
        );
        assert!(event.redact());
        let shown = format!("{event:?}");
        for secret in ["s3cr3t-t0ken", JWT] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        let Some(event::Body::TaskApproved(a)) = &event.body else {
            unreachable!()
        };
        let trigger = a.task.as_ref().unwrap().trigger.as_ref().unwrap();
        assert_eq!(trigger.text, "rotate with <redacted>");
        assert_eq!(trigger.labels["api_key"], REDACTED);
        let step = &a.plan.as_ref().unwrap().phases[0].steps[0];
        let Some(action::Kind::Http(h)) = &step.action.as_ref().unwrap().kind else {
            unreachable!()
        };
        assert_eq!(h.headers["Authorization"], REDACTED);
        assert_eq!(h.body, br#"{"db_password":"<redacted>","size":3}"#);
        assert!(!event.redact(), "a second pass changes nothing");

        // Inside a dead letter too.
        use prost::Message as _;
        let mut event2 = event.clone();
        let Some(event::Body::TaskApproved(a)) = &mut event2.body else {
            unreachable!()
        };
        a.plan.as_mut().unwrap().summary = "Authorization: Bearer abcdefgh12345".into();
        let mut dead = DeadLetter {
            payload: event2.encode_to_vec(),
            headers: [("Authorization".to_string(), "x".to_string())].into(),
            ..Default::default()
        };
        assert!(dead.redact());
        let inner = Event::decode(dead.payload.as_slice()).unwrap();
        assert!(!format!("{inner:?}").contains("abcdefgh12345"));
        assert_eq!(dead.headers["Authorization"], REDACTED);
    }

    #[test]
    fn asset_details_merged_into_a_phase_completion_are_redacted_like_asset_updates() {
        let asset = AssetStatus {
            asset_id: "web-01".into(),
            detail: format!("PUT /config with {JWT}: 200"),
            ..Default::default()
        };
        let mut alone = event::Body::AssetUpdated(AssetUpdated {
            phase_index: 0,
            asset: Some(asset.clone()),
        });
        let mut merged = event::Body::PhaseCompleted(PhaseCompleted {
            index: 0,
            name: "canary".into(),
            healthy: true,
            assets: vec![asset],
        });
        assert!(alone.redact());
        assert!(merged.redact());
        assert!(!format!("{merged:?}").contains(JWT));
        assert_eq!(
            merged.unmerged()[0],
            alone,
            "merged and alone redact the same"
        );
        assert!(!merged.redact(), "a second pass changes nothing");

        // Merged once more, into the task's end: the same again.
        let mut ended = event::Body::TaskCompleted(TaskCompleted {
            execution: None,
            last_phase: Some(PhaseCompleted {
                index: 0,
                name: "canary".into(),
                healthy: true,
                assets: vec![AssetStatus {
                    asset_id: "web-01".into(),
                    detail: format!("PUT /config with {JWT}: 200"),
                    ..Default::default()
                }],
            }),
        });
        assert!(ended.redact());
        assert!(!format!("{ended:?}").contains(JWT));
        assert_eq!(
            ended.unmerged()[0],
            alone,
            "merged twice and alone redact the same"
        );
        assert!(!ended.redact(), "a second pass changes nothing");
    }
}
