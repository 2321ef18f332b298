//! An API key never leaves the request header: not in a response, an error message, a Debug
//! print, a model call record or a log line (all tracing output captured, at TRACE, while
//! calls succeed, fail, fail over and the server echoes the key back).

use baton_llm::config::{ProviderConfig, ProviderKind};
use baton_llm::testing::{FakeReply, FakeServer, anthropic, openai};
use baton_llm::{ChatModel, ChatRequest, LlmConfig, Message, Role};
use prost::Message as _;
use std::io::Write;
use std::sync::{Arc, Mutex};

const KEY: &str = "sk-live-7f3a9c1e5b2d8a4f6e0c";
const ANT_KEY: &str = "sk-ant-api03-91b2c3d4e5f6a7b8";

/// Everything written through it, for the test to search.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn an_api_key_never_reaches_a_response_an_error_a_debug_print_or_a_log_line() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut seen: Vec<String> = Vec::new();
    rt.block_on(async {
        let (oa, ant) = (FakeServer::openai().await, FakeServer::anthropic().await);
        oa.require_api_key(KEY);
        ant.require_api_key(ANT_KEY);
        let mut config = LlmConfig::default();
        config.providers.insert(
            "openai".into(),
            ProviderConfig {
                base_url: oa.base_url(),
                model: "gpt".into(),
                api_key_env: Some("OPENAI_API_KEY".into()),
                retries: 0,
                ..Default::default()
            },
        );
        config.providers.insert(
            "claude".into(),
            ProviderConfig {
                kind: ProviderKind::Anthropic,
                base_url: ant.base_url(),
                model: "claude".into(),
                api_key_env: Some("ANTHROPIC_API_KEY".into()),
                retries: 0,
                ..Default::default()
            },
        );
        let registry = config
            .registry(|k| match k {
                "OPENAI_API_KEY" => Some(KEY.to_string()),
                "ANTHROPIC_API_KEY" => Some(ANT_KEY.to_string()),
                _ => None,
            })
            .unwrap();
        seen.push(format!("{registry:?}"));
        seen.push(format!("{:?}", registry.get("openai").unwrap()));
        let chain = registry.chain(&["openai", "claude"]).unwrap();
        let req = ChatRequest {
            messages: vec![Message::text(Role::User, "hi")],
            ..Default::default()
        };

        // The key went over the wire (so the test is not vacuous)…
        oa.push(openai::text("ok"));
        let resp = chain.chat(&req).await.unwrap();
        assert_eq!(
            oa.requests()[0].headers["authorization"],
            format!("Bearer {KEY}")
        );
        // …and a server that echoes it in an error, then fails over.
        oa.push(FakeReply::error(
            401,
            &format!("Incorrect API key provided: {KEY}"),
        ));
        ant.push(anthropic::error(
            500,
            &format!("upstream rejected key {ANT_KEY}"),
        ));
        let exhausted = chain.chat(&req).await.unwrap_err();
        oa.push(FakeReply::error(503, &format!("bad gateway for {KEY}")));
        ant.push(anthropic::stream_text(&["fine"]));
        let streamed = chain
            .chat_streaming(&req, &|e| tracing::trace!(?e, "progress"))
            .await
            .unwrap();
        assert_eq!(ant.requests()[1].headers["x-api-key"], ANT_KEY);

        for r in [&resp, &streamed] {
            seen.push(format!("{r:?}"));
            seen.push(serde_json::to_string(r).unwrap());
            let call = baton_llm::accounting::model_call(r, true);
            seen.push(format!("{call:?}"));
            seen.push(String::from_utf8_lossy(&call.encode_to_vec()).into_owned());
        }
        seen.push(format!("{exhausted}"));
        seen.push(format!("{exhausted:?}"));
        let failed = baton_llm::accounting::failed_model_call(&exhausted, 10, false);
        seen.push(format!("{failed:?}"));
        assert!(
            format!("{exhausted}").contains("***"),
            "the echoed key is redacted: {exhausted}"
        );
    });
    seen.push(String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned());
    assert!(
        seen.last().unwrap().len() > 100,
        "tracing output was captured"
    );
    for text in &seen {
        for key in [KEY, ANT_KEY] {
            assert!(!text.contains(key), "the key leaked into: {text}");
            assert!(
                !text.contains(&key[..16]),
                "part of the key leaked into: {text}"
            );
        }
    }
}
