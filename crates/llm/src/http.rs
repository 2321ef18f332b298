//! The HTTP transport the three providers share: one `reqwest` client with rustls, a JSON POST
//! whose failures become [`LlmError`]s (status → variant, `Retry-After` parsed, the API key
//! redacted from any echoed body), and line framing for streamed answers (SSE `data:` lines
//! for OpenAI and Anthropic, NDJSON for Ollama).

use crate::LlmError;
use crate::provider::ProviderSettings;
use std::time::{Duration, Instant};

/// How much of an error body an [`LlmError::Http`] keeps.
const ERROR_BODY_LIMIT: usize = 512;

/// A provider's HTTP client and settings.
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    client: reqwest::Client,
    pub(crate) settings: ProviderSettings,
}

impl Transport {
    /// Stamps a provider's parsed answer with what the transport knows: the configured
    /// provider name, the call's latency since `started` (ms) and its cost at the configured
    /// price. Every provider ends its call with it, so the accounting is done in one place.
    pub(crate) fn account(
        &self,
        mut out: crate::ChatResponse,
        started: Instant,
    ) -> crate::ChatResponse {
        out.provider = self.settings.name.clone();
        out.latency_ms = elapsed_ms(started);
        out.cost_micros = self.settings.price.cost_micros(out.usage);
        out
    }

    /// A client for `settings` (rustls with the ring provider, no proxy from the environment,
    /// the settings' timeout on every call).
    pub(crate) fn new(settings: ProviderSettings) -> Result<Transport, LlmError> {
        let client = baton_runtime::tls::http_client()
            .no_proxy()
            .build()
            .map_err(|e| LlmError::Config(format!("cannot build the http client: {e}")))?;
        Ok(Transport { client, settings })
    }

    /// POSTs `body` as JSON to `path` (after the base URL) with `headers`; returns the response
    /// when its status is 2xx, else the error it stands for. `started` is when the call began
    /// (for the timeout message).
    pub(crate) async fn post(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: &serde_json::Value,
    ) -> Result<reqwest::Response, LlmError> {
        let mut req = self
            .client
            .post(self.settings.url(path))
            .timeout(self.settings.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).map_err(|e| LlmError::Protocol(e.to_string()))?);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.map_err(|e| self.map_error(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after_ms = retry_after_ms(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        Err(self.status_error(status.as_u16(), retry_after_ms, &text))
    }

    /// The error for an HTTP `status` answer with `body`.
    pub(crate) fn status_error(
        &self,
        status: u16,
        retry_after_ms: Option<u64>,
        body: &str,
    ) -> LlmError {
        if status == 429 {
            return LlmError::RateLimited { retry_after_ms };
        }
        LlmError::Http {
            status,
            body: self.redact(&truncate(body, ERROR_BODY_LIMIT)),
        }
    }

    /// A transport error as an [`LlmError`]: a timeout, or the provider being unreachable.
    pub(crate) fn map_error(&self, e: reqwest::Error) -> LlmError {
        if e.is_timeout() {
            return LlmError::Timeout(self.settings.timeout.as_millis() as u64);
        }
        // Without the URL's query (none here) and never the headers; redact anyway.
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        if e.is_decode() || e.is_body() {
            return LlmError::Protocol(self.redact(&msg));
        }
        LlmError::Unavailable(self.redact(&msg))
    }

    /// `text` with every occurrence of the API key replaced by `***` (a provider may echo it).
    pub(crate) fn redact(&self, text: &str) -> String {
        match &self.settings.api_key {
            Some(k) if !k.expose().is_empty() => text.replace(k.expose(), "***"),
            _ => text.to_string(),
        }
    }

    /// Reads the whole body of `resp` as JSON of type `T`.
    pub(crate) async fn json<T: serde::de::DeserializeOwned>(
        &self,
        resp: reqwest::Response,
    ) -> Result<T, LlmError> {
        let bytes = resp.bytes().await.map_err(|e| self.map_error(e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            LlmError::Protocol(self.redact(&format!(
                "{e} in {}",
                truncate(&String::from_utf8_lossy(&bytes), ERROR_BODY_LIMIT)
            )))
        })
    }

    /// Feeds each complete line of `resp`'s body (without its `\n` or `\r\n`) to `on_line`
    /// as it arrives, until the body ends or `on_line` returns `Ok(false)`.
    pub(crate) async fn for_each_line(
        &self,
        mut resp: reqwest::Response,
        mut on_line: impl FnMut(&str) -> Result<bool, LlmError>,
    ) -> Result<(), LlmError> {
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = resp.chunk().await.map_err(|e| self.map_error(e))?;
            let Some(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line);
                if !on_line(line.trim_end_matches(['\n', '\r']))? {
                    return Ok(());
                }
            }
        }
        if !buf.is_empty() {
            let line = String::from_utf8_lossy(&buf).to_string();
            on_line(line.trim_end_matches('\r'))?;
        }
        Ok(())
    }
}

/// Server-sent events framing: feeds the payload of each `data:` line to `on_data` (comments,
/// `event:` and `id:` lines are skipped; every event of the wire formats here is one `data:`
/// line of JSON).
pub(crate) fn sse_data(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("data:")?;
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

/// `Retry-After` in milliseconds: delta-seconds (`2`, `0.5`) or an HTTP date.
pub(crate) fn retry_after_ms(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then_some((secs * 1000.0) as u64);
    }
    let when = httpdate(v)?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64,
    )
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form `Retry-After` dates take.
fn httpdate(s: &str) -> Option<std::time::SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: u64 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as u64
        + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<u64> = parts[4].split(':').filter_map(|p| p.parse().ok()).collect();
    if hms.len() != 3 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = (y - era * 400) as u64;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe as i64 - 719_468;
    let secs = days * 86_400 + (hms[0] * 3600 + hms[1] * 60 + hms[2]) as i64;
    u64::try_from(secs)
        .ok()
        .map(|s| std::time::UNIX_EPOCH + Duration::from_secs(s))
}

/// At most `limit` bytes of `s`, cut at a character boundary.
pub(crate) fn truncate(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_string();
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Milliseconds since `started`.
pub(crate) fn elapsed_ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after_ms(&h), Some(2000));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        // In the past: retry now.
        assert_eq!(retry_after_ms(&h), Some(0));
        assert_eq!(
            httpdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after_ms(&h), None);
    }
}
