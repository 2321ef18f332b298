//! The built-in runner of the `http` kind: [`HttpRunner`] sends an [`HttpAction`] (apply or
//! roll back) and probes an [`HttpProbe`] (a GET expecting a status), over one pooled client.

use crate::runner::{
    ActionError, ActionOutcome, ActionRunner, ProbeError, ProbeResult, action_kind,
};
use baton_proto::{Action, HealthCheck, HttpAction, HttpProbe, action::Kind, health_check};
use futures::future::BoxFuture;
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use std::time::Duration;

/// Header carrying [`Action::idempotency_key`] on HTTP actions, so a receiver that honours it
/// applies a retried action once.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// Largest part of a response body quoted in an error detail, in bytes.
const BODY_EXCERPT_MAX: usize = 200;

/// The runner for `http` actions and `http` health checks, over one pooled
/// [`reqwest::Client`].
#[derive(Debug, Clone)]
pub struct HttpRunner {
    /// Shared connection pool; its timeout bounds every request.
    client: reqwest::Client,
    /// Status meaning healthy for a probe whose `expect_status` is 0
    /// (`execution.health_check_expect_status`).
    expect_status: u16,
}

impl HttpRunner {
    /// A runner whose requests (actions and probes) time out after `timeout`, and whose
    /// probes expect 200 unless they say otherwise.
    pub fn new(timeout: Duration) -> Result<HttpRunner, reqwest::Error> {
        let client = baton_runtime::tls::http_client()
            .timeout(timeout)
            .connect_timeout(timeout)
            // Actions name their endpoint exactly; following redirects could change the target.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(HttpRunner {
            client,
            expect_status: 200,
        })
    }

    /// The same runner with `status` meaning healthy for probes that name none.
    pub fn with_expect_status(mut self, status: u16) -> HttpRunner {
        self.expect_status = status;
        self
    }

    async fn http(&self, action: &Action, http: &HttpAction) -> Result<ActionOutcome, ActionError> {
        let method =
            reqwest::Method::from_bytes(http.method.trim().to_ascii_uppercase().as_bytes())
                .map_err(|_| ActionError::Invalid(format!("bad http method {:?}", http.method)))?;
        let url = reqwest::Url::parse(&http.url)
            .map_err(|e| ActionError::Invalid(format!("bad url {:?}: {e}", http.url)))?;
        let mut request = self.client.request(method.clone(), url);
        let mut has_content_type = false;
        for (name, value) in &http.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ActionError::Invalid(format!("bad header name {name:?}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| ActionError::Invalid(format!("bad value of header {name}")))?;
            has_content_type |= name == CONTENT_TYPE;
            request = request.header(name, value);
        }
        if !action.idempotency_key.is_empty() {
            let key = HeaderValue::from_str(&action.idempotency_key).map_err(|_| {
                ActionError::Invalid("idempotency key is not a valid header value".into())
            })?;
            request = request.header(IDEMPOTENCY_HEADER, key);
        }
        if !http.body.is_empty() {
            if !has_content_type && looks_like_json(&http.body) {
                request = request.header(CONTENT_TYPE, "application/json");
            }
            request = request.body(http.body.clone());
        }
        let response = request.send().await.map_err(|e| {
            ActionError::Transport(format!("{method} {}: {}", http.url, error_chain(&e)))
        })?;
        let status = response.status().as_u16();
        let accepted = if http.expect_status.is_empty() {
            response.status().is_success()
        } else {
            http.expect_status.contains(&u32::from(status))
        };
        if accepted {
            return Ok(ActionOutcome {
                detail: format!("{method} {}: {status}", http.url),
            });
        }
        let text = response.text().await.unwrap_or_default();
        let excerpt = excerpt(&text);
        Err(ActionError::Status {
            method: method.to_string(),
            url: http.url.clone(),
            expected: expected_text(&http.expect_status),
            status,
            body: if excerpt.is_empty() {
                String::new()
            } else {
                format!(": {excerpt}")
            },
        })
    }
}

impl ActionRunner for HttpRunner {
    fn run<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<ActionOutcome, ActionError>> {
        Box::pin(async move {
            match &action.kind {
                Some(Kind::Http(http)) => self.http(action, http).await,
                _ => Err(ActionError::Unsupported(format!(
                    "the http runner runs http actions, not {}",
                    action_kind(action).unwrap_or("an action without a kind")
                ))),
            }
        })
    }

    fn probe<'a>(&'a self, check: &'a HealthCheck) -> BoxFuture<'a, ProbeResult> {
        Box::pin(async move {
            match &check.kind {
                Some(health_check::Kind::Http(http)) => self.get(http).await,
                _ => Err(ProbeError::Unsupported(format!(
                    "the http runner probes http health checks, not {}",
                    crate::runner::probe_kind(check).unwrap_or("a check without a kind")
                ))),
            }
        })
    }
}

impl HttpRunner {
    /// One GET of `probe.url`: healthy when it answers the expected status.
    async fn get(&self, probe: &HttpProbe) -> ProbeResult {
        let expect = match u16::try_from(probe.expect_status) {
            Ok(0) => self.expect_status,
            Ok(status) => status,
            Err(_) => {
                return Err(ProbeError::Unhealthy(format!(
                    "expect_status {} is not an http status",
                    probe.expect_status
                )));
            }
        };
        match self.client.get(&probe.url).send().await {
            Ok(r) if r.status().as_u16() == expect => Ok(()),
            Ok(r) => Err(ProbeError::Unhealthy(format!(
                "expected {expect}, got {}",
                r.status().as_u16()
            ))),
            Err(e) => Err(ProbeError::Unhealthy(format!(
                "expected {expect}, got error: {}",
                error_chain(&e)
            ))),
        }
    }
}

/// True when `body` parses as JSON (then it is sent as `application/json` unless the action
/// names a content type).
fn looks_like_json(body: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// `2xx`, `200`, `200 or 204`.
fn expected_text(expect: &[u32]) -> String {
    match expect {
        [] => "2xx".into(),
        [one] => one.to_string(),
        many => many
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" or "),
    }
}

/// The first line of `text`, at most [`BODY_EXCERPT_MAX`] bytes.
fn excerpt(text: &str) -> String {
    let line = text.trim().lines().next().unwrap_or("");
    let mut end = line.len().min(BODY_EXCERPT_MAX);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
}

/// A reqwest error with its sources (`error sending request: connection refused`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let msg = src.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = src.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_statuses_read_naturally() {
        assert_eq!(expected_text(&[]), "2xx");
        assert_eq!(expected_text(&[200]), "200");
        assert_eq!(expected_text(&[200, 204]), "200 or 204");
    }

    #[test]
    fn excerpt_is_one_bounded_line() {
        assert_eq!(excerpt("  boom\nstack trace"), "boom");
        assert_eq!(excerpt(&"é".repeat(300)).len(), 200);
    }

    #[test]
    fn json_bodies_are_recognised() {
        assert!(looks_like_json(br#"{"config":{}}"#));
        assert!(!looks_like_json(b"key=value"));
    }

    #[tokio::test]
    async fn other_kinds_are_unsupported() {
        let runner = HttpRunner::new(Duration::from_secs(1)).unwrap();
        let noop = Action {
            kind: Some(Kind::Noop(Default::default())),
            ..Default::default()
        };
        assert!(
            matches!(runner.run(&noop).await, Err(ActionError::Unsupported(m)) if m.ends_with("not noop"))
        );
        assert!(matches!(
            runner.probe(&HealthCheck::default()).await,
            Err(ProbeError::Unsupported(_))
        ));
    }

    #[tokio::test]
    async fn bad_method_is_invalid_not_sent() {
        let runner = HttpRunner::new(Duration::from_secs(1)).unwrap();
        let a = Action {
            kind: Some(Kind::Http(HttpAction {
                method: "GE T".into(),
                url: "http://127.0.0.1:1/".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(
            matches!(runner.run(&a).await, Err(ActionError::Invalid(m)) if m.contains("method"))
        );
    }
}
