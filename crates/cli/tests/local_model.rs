//! `baton up` with `[llm.local]`: it starts llama-server as a child, registers it as provider
//! `local`, and stops it; a missing model file is refused with the file and the fix.
//!
//! The real server needs `BATON_LLAMA_SERVER` and `BATON_LOCAL_MODEL` (`bash
//! deploy/local-model.sh --env` prints them; `deploy/test.sh` exports them). Without them the
//! test says it is skipped.

use baton::config::BatonConfig;
use baton::up::{Baton, UpError};
use std::path::Path;
use std::time::Duration;

fn config(data: &Path) -> BatonConfig {
    let mut c = BatonConfig::default();
    c.common.data_dir = data.to_path_buf();
    c.nats_server.port = 0;
    c.common.grpc_addr = "127.0.0.1:0".parse().unwrap();
    c.common.http_addr = "127.0.0.1:0".parse().unwrap();
    c
}

#[tokio::test]
async fn a_missing_model_file_is_refused_naming_the_file_and_the_fix() {
    let data = tempfile::tempdir().unwrap();
    let mut c = config(data.path());
    c.llm.local.server = "/bin/sh".into();
    c.llm.local.model = data.path().join("no-such-model.gguf");
    let err = match Baton::start(c, &[]).await {
        Err(e) => e,
        Ok(b) => {
            b.stop().await;
            panic!("baton started without its model");
        }
    };
    assert!(matches!(err, UpError::LocalModel(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-model.gguf") && msg.contains("bash deploy/local-model.sh"),
        "{msg}"
    );
}

#[tokio::test]
async fn baton_up_starts_the_local_model_registers_it_and_stops_it() {
    let (Ok(server), Ok(model)) = (
        std::env::var("BATON_LLAMA_SERVER"),
        std::env::var("BATON_LOCAL_MODEL"),
    ) else {
        eprintln!(
            "SKIPPED baton_up_starts_the_local_model_registers_it_and_stops_it: \
             BATON_LLAMA_SERVER / BATON_LOCAL_MODEL unset (run `bash deploy/local-model.sh --env`)"
        );
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let mut c = config(data.path());
    c.llm.local.server = server;
    c.llm.local.model = model.into();
    c.llm.local.context_size = 2048;
    let baton = Baton::start(c, &[]).await.unwrap();
    let local = baton.config.llm.providers["local"].clone();
    assert!(
        local.base_url.starts_with("http://127.0.0.1:"),
        "{}",
        local.base_url
    );
    let health = format!("{}/health", local.base_url.trim_end_matches("/v1"));
    let client = baton_runtime::tls::http_client()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert_eq!(
        client.get(&health).send().await.unwrap().status().as_u16(),
        200
    );
    // The registered provider answers.
    let registry = baton.config.llm.registry(|_| None).unwrap();
    let chain = registry.chain(&["local"]).unwrap();
    let req = baton_llm::ChatRequest {
        messages: vec![baton_llm::Message::text(baton_llm::Role::User, "Say OK.")],
        max_tokens: Some(8),
        temperature: Some(0.0),
        ..Default::default()
    };
    let resp = baton_llm::ChatModel::chat(&chain, &req).await.unwrap();
    assert_eq!(resp.provider, "local");
    assert!(resp.usage.output_tokens > 0);
    baton.stop().await;
    assert!(
        client.get(&health).send().await.is_err(),
        "llama-server stopped with baton"
    );
}
