//! Structured output: a final answer that must be one JSON document satisfying a JSON schema.
//!
//! [`chat_structured`] asks with the schema as [`ChatRequest::response_schema`] (sent as
//! `response_format: json_schema` by OpenAI-compatible servers, `format` by Ollama, an
//! instruction by Anthropic), checks the answer with the `jsonschema` crate, and on a schema
//! error asks once more with the error appended to the conversation. A second failure is
//! [`StructuredError::Invalid`] carrying both attempts, so the agent records both model calls
//! (see [`Attempt::model_call`]).
//!
//! [`OutputSchema`] is the same check as building blocks, for a loop that interleaves it with
//! tool calls.

use crate::accounting::{invalid_model_call, model_call};
use crate::{ChatModel, ChatRequest, ChatResponse, LlmError, Message, ResponseSchema, Role};
use baton_proto::ModelCall;
use serde_json::Value;

/// Why a structured answer could not be had.
#[derive(Debug, thiserror::Error)]
pub enum StructuredError {
    /// The schema itself is not a valid JSON schema.
    #[error("invalid output schema {name}: {reason}")]
    BadSchema {
        /// The schema's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A model call failed; `attempts` holds the answers received before it.
    #[error("model call failed: {error}")]
    Model {
        /// The call's error.
        error: LlmError,
        /// Earlier attempts (an invalid first answer, when the repair call failed).
        attempts: Vec<Attempt>,
    },
    /// Both answers failed the schema.
    #[error("the answer failed the output schema twice: {}", .attempts.last().and_then(|a| a.schema_error.as_deref()).unwrap_or("unknown error"))]
    Invalid {
        /// Both attempts, each with its schema error.
        attempts: Vec<Attempt>,
    },
}

/// One model call of a structured answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// The model's answer.
    pub response: ChatResponse,
    /// Why it failed the schema; `None` when it passed.
    pub schema_error: Option<String>,
}

impl Attempt {
    /// The call's record: outcome `Invalid` with the schema error when it failed the schema.
    pub fn model_call(&self, streamed: bool) -> ModelCall {
        match &self.schema_error {
            Some(e) => invalid_model_call(&self.response, streamed, e),
            None => model_call(&self.response, streamed),
        }
    }
}

/// A valid structured answer and the calls it took (one, or two after a repair).
#[derive(Debug, Clone, PartialEq)]
pub struct StructuredAnswer {
    /// The answer, valid against the schema.
    pub value: Value,
    /// Every call made, oldest first; the last one is the valid answer.
    pub attempts: Vec<Attempt>,
}

/// A compiled output schema.
pub struct OutputSchema {
    schema: ResponseSchema,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for OutputSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputSchema")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl OutputSchema {
    /// Compiles `schema` (drafts 4 to 2020-12, by its `$schema`, default 2020-12).
    ///
    /// Errors: [`StructuredError::BadSchema`].
    pub fn new(schema: ResponseSchema) -> Result<OutputSchema, StructuredError> {
        let validator =
            jsonschema::validator_for(&schema.schema).map_err(|e| StructuredError::BadSchema {
                name: schema.name.clone(),
                reason: e.to_string(),
            })?;
        Ok(OutputSchema { schema, validator })
    }

    /// The schema.
    pub fn schema(&self) -> &ResponseSchema {
        &self.schema
    }

    /// The JSON value of an answer's text when it satisfies the schema (surrounding
    /// whitespace and a Markdown code fence are ignored); else what is wrong, one line per
    /// error with its JSON pointer (`/findings/0/severity: "urgent" is not one of …`).
    pub fn check(&self, answer: &str) -> Result<Value, String> {
        let text = strip_fence(answer.trim());
        if text.is_empty() {
            return Err("the answer is empty, not a JSON document".into());
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("the answer is not JSON: {e}"))?;
        let errors: Vec<String> = self
            .validator
            .iter_errors(&value)
            .map(|e| {
                let at = e.instance_path().to_string();
                format!("{}: {e}", if at.is_empty() { "/" } else { &at })
            })
            .collect();
        if errors.is_empty() {
            Ok(value)
        } else {
            Err(errors.join("; "))
        }
    }

    /// `request` with the schema set, for the first attempt.
    pub fn request(&self, request: &ChatRequest) -> ChatRequest {
        ChatRequest {
            response_schema: Some(self.schema.clone()),
            ..request.clone()
        }
    }

    /// The repair request: `request`'s conversation, then the rejected answer, then a user
    /// turn with the schema error asking for a corrected answer.
    pub fn repair_request(
        &self,
        request: &ChatRequest,
        rejected: &ChatResponse,
        error: &str,
    ) -> ChatRequest {
        let mut repaired = self.request(request);
        repaired.messages.push(Message::text(
            Role::Assistant,
            rejected.message.content.clone(),
        ));
        repaired.messages.push(Message::text(
            Role::User,
            format!(
                "Your answer does not satisfy the required JSON schema: {error}\n\
                 Answer again with one JSON document only, no prose, that satisfies this \
                 schema:\n{}",
                self.schema.schema
            ),
        ));
        repaired
    }
}

/// `{…}` out of a Markdown code fence (```json … ```), else `text` itself.
fn strip_fence(text: &str) -> &str {
    let Some(inner) = text.strip_prefix("```") else {
        return text;
    };
    let inner = inner.strip_prefix("json").unwrap_or(inner);
    inner.trim_end().strip_suffix("```").unwrap_or(inner).trim()
}

/// Asks `model` for an answer to `request` that is one JSON document satisfying `schema`;
/// on a schema error asks once more with the error appended.
///
/// Errors: [`StructuredError::BadSchema`] before any call; [`StructuredError::Model`] when a
/// call fails (with the attempts before it); [`StructuredError::Invalid`] with both attempts
/// when the repaired answer fails the schema too.
pub async fn chat_structured(
    model: &dyn ChatModel,
    request: &ChatRequest,
    schema: &ResponseSchema,
) -> Result<StructuredAnswer, StructuredError> {
    let output = OutputSchema::new(schema.clone())?;
    let mut attempts = Vec::new();
    let mut next = output.request(request);
    for _ in 0..2 {
        let response = match model.chat(&next).await {
            Ok(r) => r,
            Err(error) => return Err(StructuredError::Model { error, attempts }),
        };
        match output.check(&response.message.content) {
            Ok(value) => {
                attempts.push(Attempt {
                    response,
                    schema_error: None,
                });
                return Ok(StructuredAnswer { value, attempts });
            }
            Err(error) => {
                tracing::info!(schema = %schema.name, error = %error, "model answer failed the output schema");
                next = output.repair_request(request, &response, &error);
                attempts.push(Attempt {
                    response,
                    schema_error: Some(error),
                });
            }
        }
    }
    Err(StructuredError::Invalid { attempts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> OutputSchema {
        OutputSchema::new(ResponseSchema {
            name: "report".into(),
            schema: json!({
                "type": "object",
                "required": ["answer", "severity"],
                "properties": {
                    "answer": {"type": "string"},
                    "severity": {"enum": ["low", "high"]},
                },
                "additionalProperties": false,
            }),
        })
        .unwrap()
    }

    #[test]
    fn check_accepts_a_valid_answer_in_or_out_of_a_fence_and_names_what_is_wrong() {
        let s = schema();
        assert_eq!(
            s.check(r#" {"answer": "ok", "severity": "low"} "#).unwrap()["answer"],
            "ok"
        );
        assert!(
            s.check("```json\n{\"answer\": \"ok\", \"severity\": \"high\"}\n```")
                .is_ok()
        );
        let err = s
            .check(r#"{"answer": "ok", "severity": "urgent"}"#)
            .unwrap_err();
        assert!(err.starts_with("/severity: "), "{err}");
        let err = s.check(r#"{"answer": 1}"#).unwrap_err();
        assert!(err.contains("severity") && err.contains("/answer"), "{err}");
        assert!(
            s.check("sure! here it is")
                .unwrap_err()
                .starts_with("the answer is not JSON")
        );
        assert!(s.check("").is_err());
    }

    #[test]
    fn a_bad_schema_is_refused_before_any_call() {
        let err = OutputSchema::new(ResponseSchema {
            name: "x".into(),
            schema: json!({"type": "no-such-type"}),
        })
        .unwrap_err();
        assert!(matches!(err, StructuredError::BadSchema { .. }));
    }
}
