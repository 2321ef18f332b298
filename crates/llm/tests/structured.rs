//! Structured answers against the fake OpenAI server: a valid answer, a repaired one, two
//! invalid ones (both recorded), and a failed repair call.

use baton_llm::testing::{FakeReply, FakeServer, openai};
use baton_llm::{
    ChatRequest, Message, OpenAiProvider, ProviderSettings, ResponseSchema, Role, StructuredError,
    chat_structured,
};
use baton_proto::ModelCallOutcome;
use serde_json::json;

fn schema() -> ResponseSchema {
    ResponseSchema {
        name: "cost_report".into(),
        schema: json!({
            "type": "object",
            "required": ["answer", "savings_usd"],
            "properties": {"answer": {"type": "string"}, "savings_usd": {"type": "number"}},
        }),
    }
}

fn ask() -> ChatRequest {
    ChatRequest {
        messages: vec![Message::text(Role::User, "why did the bill jump?")],
        ..Default::default()
    }
}

fn model(fake: &FakeServer) -> OpenAiProvider {
    OpenAiProvider::new(ProviderSettings::new("fake", fake.base_url(), "m")).unwrap()
}

#[tokio::test]
async fn a_valid_answer_takes_one_call_with_the_schema_as_response_format() {
    let fake = FakeServer::openai().await;
    fake.push(openai::text(
        r#"{"answer": "idle GPUs", "savings_usd": 1200}"#,
    ));
    let got = chat_structured(&model(&fake), &ask(), &schema())
        .await
        .unwrap();
    assert_eq!(got.value["savings_usd"], 1200);
    assert_eq!(got.attempts.len(), 1);
    assert_eq!(
        got.attempts[0].model_call(false).outcome(),
        ModelCallOutcome::Ok
    );
    let body = &fake.requests()[0].body;
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(
        body["response_format"]["json_schema"]["name"],
        "cost_report"
    );
}

#[tokio::test]
async fn a_schema_error_is_sent_back_once_and_the_repaired_answer_is_taken() {
    let fake = FakeServer::openai().await;
    fake.push(openai::text(
        r#"{"answer": "idle GPUs", "savings_usd": "a lot"}"#,
    ));
    fake.push(openai::text(
        r#"{"answer": "idle GPUs", "savings_usd": 1200.5}"#,
    ));
    let got = chat_structured(&model(&fake), &ask(), &schema())
        .await
        .unwrap();
    assert_eq!(got.value["savings_usd"], 1200.5);
    assert_eq!(got.attempts.len(), 2);
    let first_error = got.attempts[0].schema_error.clone().unwrap();
    assert!(first_error.starts_with("/savings_usd: "), "{first_error}");
    assert_eq!(
        got.attempts[0].model_call(false).outcome(),
        ModelCallOutcome::Invalid
    );
    assert_eq!(
        got.attempts[1].model_call(false).outcome(),
        ModelCallOutcome::Ok
    );
    // The repair request: the question, the rejected answer, the error.
    let msgs = &fake.requests()[1].body["messages"];
    assert_eq!(msgs.as_array().unwrap().len(), 3);
    assert_eq!(msgs[0]["content"], "why did the bill jump?");
    assert_eq!(msgs[1]["role"], "assistant");
    assert!(msgs[1]["content"].as_str().unwrap().contains("a lot"));
    assert_eq!(msgs[2]["role"], "user");
    assert!(msgs[2]["content"].as_str().unwrap().contains(&first_error));
}

#[tokio::test]
async fn two_invalid_answers_fail_with_both_recorded() {
    let fake = FakeServer::openai().await;
    fake.push(openai::text("The bill jumped because of GPUs."));
    fake.push(openai::text(r#"{"answer": "GPUs"}"#));
    let err = chat_structured(&model(&fake), &ask(), &schema())
        .await
        .unwrap_err();
    let StructuredError::Invalid { attempts } = &err else {
        panic!("{err}")
    };
    assert_eq!(attempts.len(), 2);
    assert!(
        attempts[0]
            .schema_error
            .as_deref()
            .unwrap()
            .starts_with("the answer is not JSON")
    );
    assert!(
        attempts[1]
            .schema_error
            .as_deref()
            .unwrap()
            .contains("savings_usd")
    );
    for a in attempts {
        let call = a.model_call(false);
        assert_eq!(call.outcome(), ModelCallOutcome::Invalid);
        assert_eq!((call.input_tokens, call.output_tokens), (10, 5));
    }
    assert!(err.to_string().contains("savings_usd"), "{err}");
    assert_eq!(fake.request_count(), 2, "asked once more, not again");
}

#[tokio::test]
async fn a_failed_repair_call_keeps_the_first_attempt() {
    let fake = FakeServer::openai().await;
    fake.push(openai::text("{}"));
    fake.push(FakeReply::error(503, "down"));
    let err = chat_structured(&model(&fake), &ask(), &schema())
        .await
        .unwrap_err();
    let StructuredError::Model { attempts, .. } = err else {
        panic!()
    };
    assert_eq!(attempts.len(), 1);
    assert!(attempts[0].schema_error.is_some());
}
