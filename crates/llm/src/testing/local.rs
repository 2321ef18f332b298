//! A fixture that starts the real local model (llama-server with Qwen2.5-Coder-0.5B) for a
//! test, for this crate's tests and any other crate's (`baton-llm` with feature `testing`).
//!
//! It reads `BATON_LLAMA_SERVER` and `BATON_LOCAL_MODEL` (`bash deploy/local-model.sh --env`
//! prints them; `deploy/test.sh` exports them, so `.ci/run` runs these tests). When they are
//! unset, [`LocalModel::start`] prints `SKIPPED <test>: …` to stderr and returns `None`, so a
//! skipped test says so instead of passing silently.

use crate::config::LocalModelConfig;
use crate::local::LlamaServer;
use crate::{OpenAiProvider, ProviderSettings};
use std::time::Duration;

/// A llama-server on a free loopback port, stopped when dropped.
#[derive(Debug)]
pub struct LocalModel {
    server: LlamaServer,
}

impl LocalModel {
    /// Starts the local model for test `test` (its name, for the skip message), with a
    /// 4096-token context, one slot and `/metrics` on; `None` when the environment does not
    /// name the server and model.
    ///
    /// Panics when they are named but the server does not start (a broken setup must fail
    /// the test, not skip it).
    pub async fn start(test: &str) -> Option<LocalModel> {
        let (Ok(server), Ok(model)) = (
            std::env::var("BATON_LLAMA_SERVER"),
            std::env::var("BATON_LOCAL_MODEL"),
        ) else {
            eprintln!(
                "SKIPPED {test}: BATON_LLAMA_SERVER and BATON_LOCAL_MODEL are unset; run \
                 `export $(bash deploy/local-model.sh --env)` or deploy/test.sh"
            );
            return None;
        };
        let defaults = LocalModelConfig::default();
        let mut extra_args = defaults.extra_args.clone();
        // One thread that does not spin-wait: on 2 cores busy with builds and other tests,
        // two threads wait on each other and generation drops below 1 token/s.
        extra_args.extend(
            [
                "--parallel",
                "1",
                "--metrics",
                "--threads",
                "1",
                "--poll",
                "0",
            ]
            .map(String::from),
        );
        let config = LocalModelConfig {
            server,
            model: model.into(),
            context_size: 4096,
            extra_args,
            ..defaults
        };
        let server = LlamaServer::start(&config)
            .await
            .unwrap_or_else(|e| panic!("the local model did not start: {e}"));
        Some(LocalModel { server })
    }

    /// `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> &str {
        self.server.base_url()
    }

    /// Provider `local` on it (model `local`, a 600 s timeout: a CPU shared with other work
    /// can be slow).
    pub fn provider(&self) -> OpenAiProvider {
        OpenAiProvider::new(
            ProviderSettings::new("local", self.base_url(), "local")
                .with_timeout(Duration::from_secs(600)),
        )
        .expect("an http client")
    }

    /// The server's Prometheus metrics text (`/metrics`): `llamacpp:prompt_tokens_total`,
    /// `llamacpp:tokens_predicted_total`, `llamacpp:n_decode_total`, … — what the server itself
    /// counted, for tests that must prove a call was or was not made.
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.base_url().trim_end_matches("/v1"));
        baton_runtime::tls::http_client()
            .no_proxy()
            .build()
            .expect("an http client")
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("llama-server /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// A counter of [`LocalModel::metrics`] by name (`llamacpp:tokens_predicted_total`).
    pub async fn counter(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    }
}
