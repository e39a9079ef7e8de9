//! Authentication: keys on every route but `/healthz`, both header styles,
//! the brute-force guard, and the proxy key never travelling upstream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use common::*;
use llm_proxy_core::{BackendType, Secret};
use llm_proxy_testkit::{MockUpstream, MockUpstreamConfig};

async fn keyed_proxy(up: &MockUpstream, max_failed_attempts: u32) -> Proxy {
    let mut c = base_config();
    add_backend(&mut c, "openai", BackendType::OpenAi, &up.base_url());
    add_backend(&mut c, "anthropic", BackendType::Anthropic, &up.base_url());
    c.auth.api_keys = vec![Secret::new("proxy-key-1"), Secret::new("proxy-key-2")];
    c.auth.max_failed_attempts = max_failed_attempts;
    Proxy::start(c).await
}

#[tokio::test]
async fn keys_guard_llm_and_management_routes() {
    let up = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let proxy = keyed_proxy(&up, 100).await;
    let chat_body = chat("openai:echo", "hi", false);

    for (path, method) in [
        ("/v1/chat/completions", "POST"),
        ("/v1/messages", "POST"),
        ("/v1/models", "GET"),
        ("/metrics", "GET"),
    ] {
        let body = if method == "POST" {
            chat_body.as_str()
        } else {
            ""
        };
        let r = send(method, &proxy.url(path), body, &[]).await;
        assert_eq!(r.status, 401, "{method} {path} without a key");
        let r = send(
            method,
            &proxy.url(path),
            body,
            &[("authorization", "Bearer wrong")],
        )
        .await;
        assert_eq!(r.status, 401, "{method} {path} with a wrong key");
    }
    // The messages route answers in Anthropic's error style.
    let r = post(
        &proxy.url("/v1/messages"),
        &messages("anthropic:echo", "hi", false),
        &[],
    )
    .await;
    assert_eq!(r.json()["type"], "error");

    let r = post(
        &proxy.url("/v1/chat/completions"),
        &chat_body,
        &[("authorization", "Bearer proxy-key-2")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        &proxy.url("/v1/messages"),
        &messages("anthropic:echo", "hi", false),
        &[("x-api-key", "proxy-key-1")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        get(&proxy.url("/v1/models"), &[("x-api-key", "proxy-key-1")])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&proxy.url("/healthz"), &[]).await.status,
        200,
        "liveness needs no key"
    );

    // The proxy key authenticated the client; it never reaches the upstream.
    for req in up.requests() {
        assert_eq!(req.header("authorization"), None, "{:?}", req.headers);
        assert_eq!(req.header("x-api-key"), None, "{:?}", req.headers);
    }
    proxy.stop().await;
}

#[tokio::test]
async fn repeated_failures_get_429_with_retry_after() {
    let up = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let proxy = keyed_proxy(&up, 3).await;
    let url = proxy.url("/v1/chat/completions");
    let body = chat("openai:echo", "hi", false);
    assert_eq!(
        post(&url, &body, &[("x-api-key", "guess-1")]).await.status,
        401
    );
    assert_eq!(
        post(&url, &body, &[("x-api-key", "guess-2")]).await.status,
        401
    );
    let r = post(&url, &body, &[("x-api-key", "guess-3")]).await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    // Locked out: even the right key waits.
    let r = post(&url, &body, &[("x-api-key", "proxy-key-1")]).await;
    assert_eq!(r.status, 429);
    assert!(r.headers.contains_key("retry-after"));
    assert!(up.requests().is_empty(), "nothing reached the upstream");
    proxy.stop().await;
}
