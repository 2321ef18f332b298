//! The failover chain against fake OpenAI servers on loopback: which provider serves, how often
//! each was called, retries with backoff, `Retry-After`, the circuit breaker and the limits.

use baton_llm::testing::{FakeReply, FakeServer, openai};
use baton_llm::{
    ChatModel, ChatRequest, Circuit, FailoverChain, LlmError, Message, OpenAiProvider,
    ProviderLimits, ProviderSettings, Role, StreamEvent,
};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn provider(fake: &FakeServer, name: &str) -> OpenAiProvider {
    OpenAiProvider::new(
        ProviderSettings::new(name, fake.base_url(), "m").with_timeout(Duration::from_millis(300)),
    )
    .unwrap()
}

fn ask() -> ChatRequest {
    ChatRequest {
        messages: vec![Message::text(Role::User, "hi")],
        ..Default::default()
    }
}

/// Fast retries for tests.
fn quick(retries: u32) -> ProviderLimits {
    ProviderLimits {
        retries,
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(80),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_first_healthy_provider_serves_after_the_first_one_exhausts_its_retries() {
    let (a, b) = (FakeServer::openai().await, FakeServer::openai().await);
    a.push_all((0..3).map(|_| FakeReply::error(503, "overloaded")));
    b.push(openai::text("from b"));
    let chain = FailoverChain::new()
        .with("a", provider(&a, "a"), quick(2))
        .with("b", provider(&b, "b"), quick(2));
    let resp = chain.chat(&ask()).await.unwrap();
    assert_eq!(resp.message.content, "from b");
    assert_eq!(resp.provider, "b");
    assert_eq!(resp.fallback_index, 1);
    assert_eq!(a.request_count(), 3, "one call and two retries at a");
    assert_eq!(b.request_count(), 1);
}

#[tokio::test]
async fn a_retry_on_the_same_provider_waits_an_exponential_backoff() {
    let a = FakeServer::openai().await;
    a.push_all([
        FakeReply::error(502, "bad gateway"),
        FakeReply::error(500, "oops"),
        openai::text("third time"),
    ]);
    let limits = ProviderLimits {
        retries: 2,
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        ..Default::default()
    };
    let chain = FailoverChain::new().with("a", provider(&a, "a"), limits);
    let started = Instant::now();
    let resp = chain.chat(&ask()).await.unwrap();
    assert_eq!(resp.message.content, "third time");
    assert_eq!(resp.fallback_index, 0);
    assert_eq!(a.request_count(), 3);
    // 100 ms then 200 ms at least (jitter only adds).
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_short_retry_after_is_waited_for_on_the_same_provider() {
    let (a, b) = (FakeServer::openai().await, FakeServer::openai().await);
    a.push_all([
        FakeReply::error(429, "slow down").retry_after(1),
        openai::text("from a"),
    ]);
    let chain = FailoverChain::new()
        .with("a", provider(&a, "a"), quick(2))
        .with("b", provider(&b, "b"), quick(2));
    let started = Instant::now();
    let resp = chain.chat(&ask()).await.unwrap();
    assert_eq!(resp.message.content, "from a");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
    assert_eq!(b.request_count(), 0);
}

#[tokio::test]
async fn a_long_retry_after_fails_over_at_once_and_keeps_the_provider_away_until_then() {
    let (a, b) = (FakeServer::openai().await, FakeServer::openai().await);
    a.push(FakeReply::error(429, "quota").retry_after(60));
    b.push_all([openai::text("b1"), openai::text("b2")]);
    let chain = FailoverChain::new()
        .with("a", provider(&a, "a"), quick(2))
        .with("b", provider(&b, "b"), quick(2));
    let started = Instant::now();
    let resp = chain.chat(&ask()).await.unwrap();
    assert_eq!(
        (resp.message.content.as_str(), resp.fallback_index),
        ("b1", 1)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The next call does not reach a before its Retry-After.
    let resp = chain.chat(&ask()).await.unwrap();
    assert_eq!(resp.message.content, "b2");
    assert_eq!(a.request_count(), 1);
    assert_eq!(chain.health()[0], ("a".to_string(), Circuit::Open));
}

#[tokio::test]
async fn a_timeout_and_a_refusal_each_fail_over() {
    let (a, b) = (FakeServer::openai().await, FakeServer::openai().await);
    a.push(openai::text("late").delayed(Duration::from_secs(2)));
    a.push(openai::refusal("no"));
    b.push_all([openai::text("b1"), openai::text("b2")]);
    let chain = FailoverChain::new()
        .with("a", provider(&a, "a"), quick(0))
        .with("b", provider(&b, "b"), quick(0));
    let resp = chain.chat(&ask()).await.unwrap();
    assert_eq!(
        (resp.message.content.as_str(), resp.fallback_index),
        ("b1", 1)
    );
    let resp = chain.chat(&ask()).await.unwrap();
    assert_eq!(
        (resp.message.content.as_str(), resp.fallback_index),
        ("b2", 1)
    );
    assert_eq!(
        a.request_count(),
        2,
        "a refusal is not retried on the same model"
    );
}

#[tokio::test]
async fn the_circuit_opens_after_consecutive_failures_and_a_trial_closes_it() {
    let (a, b) = (FakeServer::openai().await, FakeServer::openai().await);
    a.push_all([
        FakeReply::error(500, "down"),
        FakeReply::error(500, "down"),
        openai::text("a is back"),
    ]);
    b.push_all((0..3).map(|i| openai::text(&format!("b{i}"))));
    let limits = ProviderLimits {
        breaker_failures: 2,
        breaker_open_for: Duration::from_millis(300),
        ..quick(0)
    };
    let chain = FailoverChain::new()
        .with("a", provider(&a, "a"), limits.clone())
        .with("b", provider(&b, "b"), limits);
    for _ in 0..2 {
        assert_eq!(chain.chat(&ask()).await.unwrap().fallback_index, 1);
    }
    assert_eq!(chain.health()[0].1, Circuit::Open);
    // Open: a is skipped without a request.
    assert_eq!(chain.chat(&ask()).await.unwrap().message.content, "b2");
    assert_eq!(a.request_count(), 2);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(chain.health()[0].1, Circuit::HalfOpen);
    let resp = chain.chat(&ask()).await.unwrap();
    assert_eq!(
        (resp.message.content.as_str(), resp.fallback_index),
        ("a is back", 0)
    );
    assert_eq!(chain.health()[0].1, Circuit::Closed);
}

#[tokio::test]
async fn when_every_provider_fails_each_attempt_is_listed() {
    let (a, b) = (FakeServer::openai().await, FakeServer::openai().await);
    a.push_all([
        FakeReply::error(503, "a down"),
        FakeReply::error(503, "a still down"),
    ]);
    b.push(FakeReply::error(400, "b says bad request"));
    let chain = FailoverChain::new()
        .with("a", provider(&a, "a"), quick(1))
        .with("b", provider(&b, "b"), quick(1));
    let LlmError::Exhausted(lines) = chain.chat(&ask()).await.unwrap_err() else {
        panic!("expected Exhausted");
    };
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0].starts_with("a: provider answered HTTP 503"),
        "{lines:?}"
    );
    assert!(lines[1].contains("a still down"));
    assert!(
        lines[2].starts_with("b: provider answered HTTP 400"),
        "not retried: {lines:?}"
    );
    assert_eq!(b.request_count(), 1);
}

#[tokio::test]
async fn the_concurrency_limit_queues_calls_beyond_it() {
    let a = FakeServer::openai().await;
    a.push_all((0..3).map(|_| openai::text("ok").delayed(Duration::from_millis(150))));
    let limits = ProviderLimits {
        max_concurrency: 1,
        ..quick(0)
    };
    let chain = Arc::new(FailoverChain::new().with(
        "a",
        OpenAiProvider::new(ProviderSettings::new("a", a.base_url(), "m")).unwrap(),
        limits,
    ));
    let started = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let chain = chain.clone();
            tokio::spawn(async move { chain.chat(&ask()).await })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_rate_limit_spaces_calls_evenly() {
    let a = FakeServer::openai().await;
    a.push_all((0..3).map(|_| openai::text("ok")));
    // 600 per minute: one every 100 ms.
    let limits = ProviderLimits {
        requests_per_minute: NonZeroU32::new(600),
        ..quick(0)
    };
    let chain = FailoverChain::new().with("a", provider(&a, "a"), limits);
    let started = Instant::now();
    for _ in 0..3 {
        chain.chat(&ask()).await.unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_streamed_call_fails_over_and_reports_the_serving_providers_pieces() {
    let (a, b) = (FakeServer::openai().await, FakeServer::openai().await);
    a.push(FakeReply::error(503, "down"));
    b.push(openai::stream_text(&["po", "ng"]));
    let chain = FailoverChain::new()
        .with("a", provider(&a, "a"), quick(0))
        .with("b", provider(&b, "b"), quick(0));
    let seen = Mutex::new(String::new());
    let progress = |e: StreamEvent| {
        if let StreamEvent::TextDelta(t) = e {
            seen.lock().unwrap().push_str(&t);
        }
    };
    let resp = chain.chat_streaming(&ask(), &progress).await.unwrap();
    assert_eq!(resp.message.content, "pong");
    assert_eq!(resp.fallback_index, 1);
    assert_eq!(*seen.lock().unwrap(), "pong");
    assert_eq!(b.requests()[0].body["stream"], true);
}
