//! Every model call as a [`baton_proto::ModelCall`], the record an agent puts in its plan's
//! `AgentRun` (and so in the audit log): provider, model, tokens, latency, cost, outcome,
//! which fallback served it and whether it streamed.
//!
//! Nothing here can carry an API key: a [`ChatResponse`] holds none, and provider errors are
//! redacted where they are made (see [`crate::http`]).

use crate::{ChatResponse, FinishReason, LlmError};
use baton_proto::{ModelCall, ModelCallOutcome};

/// The record of a call answered by `resp` ([`ModelCallOutcome::Ok`], or `Truncated` at the
/// token limit, or `Refused`), not streamed. Use [`model_call`] for a streamed one.
impl From<&ChatResponse> for ModelCall {
    fn from(resp: &ChatResponse) -> ModelCall {
        model_call(resp, false)
    }
}

/// The record of a call answered by `resp`; `streamed` says whether it came through
/// [`crate::ChatModel::chat_streaming`].
pub fn model_call(resp: &ChatResponse, streamed: bool) -> ModelCall {
    let (outcome, error) = match &resp.finish_reason {
        FinishReason::Stop | FinishReason::ToolCalls | FinishReason::Other(_) => {
            (ModelCallOutcome::Ok, String::new())
        }
        FinishReason::Length => (
            ModelCallOutcome::Truncated,
            "the answer was cut at the output token limit".to_string(),
        ),
        FinishReason::Refusal => (ModelCallOutcome::Refused, resp.message.content.clone()),
    };
    ModelCall {
        provider: resp.provider.clone(),
        model: resp.model.clone(),
        input_tokens: resp.usage.input_tokens,
        output_tokens: resp.usage.output_tokens,
        latency_ms: resp.latency_ms,
        cost_micros: resp.cost_micros,
        outcome: outcome as i32,
        fallback_index: resp.fallback_index,
        streamed,
        error,
    }
}

/// The record of an answer that failed the output's JSON schema: as [`model_call`], with
/// outcome [`ModelCallOutcome::Invalid`] and the schema error.
pub fn invalid_model_call(resp: &ChatResponse, streamed: bool, schema_error: &str) -> ModelCall {
    ModelCall {
        outcome: ModelCallOutcome::Invalid as i32,
        error: schema_error.to_string(),
        ..model_call(resp, streamed)
    }
}

/// The record of a call that got no answer: outcome [`ModelCallOutcome::Failed`], the error's
/// message, and for a chain's [`LlmError::Exhausted`] the provider of its last attempt (each
/// line is `provider: error`); `latency_ms` is the wall time the caller measured.
pub fn failed_model_call(error: &LlmError, latency_ms: u64, streamed: bool) -> ModelCall {
    let provider = match error {
        LlmError::Exhausted(lines) => lines
            .last()
            .and_then(|l| l.split_once(": "))
            .map(|(p, _)| p.to_string())
            .unwrap_or_default(),
        _ => String::new(),
    };
    ModelCall {
        provider,
        latency_ms,
        outcome: ModelCallOutcome::Failed as i32,
        streamed,
        error: error.to_string(),
        ..ModelCall::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, Role, Usage};

    fn resp(finish_reason: FinishReason) -> ChatResponse {
        ChatResponse {
            message: Message::text(Role::Assistant, "no"),
            finish_reason,
            usage: Usage {
                input_tokens: 120,
                output_tokens: 30,
            },
            provider: "local".into(),
            model: "qwen".into(),
            latency_ms: 850,
            cost_micros: 12,
            fallback_index: 1,
        }
    }

    #[test]
    fn a_response_becomes_a_model_call_with_its_outcome() {
        let call = ModelCall::from(&resp(FinishReason::ToolCalls));
        assert_eq!(
            call,
            ModelCall {
                provider: "local".into(),
                model: "qwen".into(),
                input_tokens: 120,
                output_tokens: 30,
                latency_ms: 850,
                cost_micros: 12,
                outcome: ModelCallOutcome::Ok as i32,
                fallback_index: 1,
                streamed: false,
                error: String::new(),
            }
        );
        assert_eq!(
            model_call(&resp(FinishReason::Length), true).outcome(),
            ModelCallOutcome::Truncated
        );
        assert!(model_call(&resp(FinishReason::Length), true).streamed);
        let refused = ModelCall::from(&resp(FinishReason::Refusal));
        assert_eq!(
            (refused.outcome(), refused.error.as_str()),
            (ModelCallOutcome::Refused, "no")
        );
        let invalid = invalid_model_call(&resp(FinishReason::Stop), false, "missing field answer");
        assert_eq!(invalid.outcome(), ModelCallOutcome::Invalid);
        assert_eq!(invalid.input_tokens, 120);
        let failed = failed_model_call(
            &LlmError::Exhausted(vec![
                "a: timed out".into(),
                "b: provider answered HTTP 503: x".into(),
            ]),
            4000,
            false,
        );
        assert_eq!(
            (failed.provider.as_str(), failed.outcome()),
            ("b", ModelCallOutcome::Failed)
        );
        assert!(failed.error.contains("HTTP 503"));
    }
}
