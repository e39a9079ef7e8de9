//! Pass-through proxying against the testkit mock upstream: streaming without
//! buffering, failover, and errors that never hang or crash the proxy.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::time::Duration;

use common::*;
use llm_proxy_core::BackendType;
use llm_proxy_testkit::{MockFault, MockOptions, MockUpstream, MockUpstreamConfig, sse_events};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn mock() -> MockUpstream {
    MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap()
}

/// A port on which nothing listens (connections are refused).
async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn json_and_stream_pass_through_with_model_rewritten() {
    let up = mock().await;
    let mut c = base_config();
    add_backend(&mut c, "openai", BackendType::OpenAi, &up.base_url());
    let proxy = Proxy::start(c).await;

    let r = post(
        &proxy.url("/v1/chat/completions"),
        &chat("openai:echo", "hello proxy", false),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["choices"][0]["message"]["content"], "hello proxy");
    assert!(r.headers.contains_key("x-request-id"));
    // The upstream got the bare model name, and nothing else of the body changed.
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    let sent = seen[0].json().unwrap();
    assert_eq!(sent["model"], "echo");
    assert_eq!(sent["messages"][0]["content"], "hello proxy");

    let s = post_stream(
        &proxy.url("/v1/chat/completions"),
        &chat("openai:echo", "one two three", true),
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(s.status, 200);
    let events = sse_events(&s.text());
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let text: String = events
        .iter()
        .filter(|(_, d)| d != "[DONE]")
        .filter_map(|(_, d)| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "one two three");
    proxy.stop().await;
}

#[tokio::test]
async fn stream_chunks_reach_the_client_as_the_upstream_sends_them() {
    let up = mock().await;
    let mut c = base_config();
    add_backend(&mut c, "openai", BackendType::OpenAi, &up.base_url());
    let proxy = Proxy::start(c).await;
    // The client asks for usage itself, so every upstream event is forwarded.
    let body = serde_json::json!({
        "model": "openai:echo", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "a b c d e f"}],
    })
    .to_string();
    let s = post_stream(
        &proxy.url("/v1/chat/completions"),
        &body,
        &[
            ("x-mock-inter-chunk-delay-ms", "200"),
            ("x-mock-chunks", "4"),
        ],
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(s.status, 200);
    let sent: Vec<_> = up
        .sent_event_times()
        .into_iter()
        .filter(|(req, _, _)| *req == 0)
        .collect();
    assert!(sent.len() >= 5, "mock sent {} events", sent.len());
    assert_eq!(
        s.frames.len(),
        sent.len(),
        "each upstream event is its own frame at the client: {:?}",
        s.text()
    );
    for ((_, k, sent_at), (received_at, _)) in sent.iter().zip(&s.frames) {
        let lag = received_at.saturating_duration_since(*sent_at);
        assert!(
            lag < Duration::from_millis(50),
            "event {k} reached the client {lag:?} after the upstream sent it"
        );
    }
    proxy.stop().await;
}

#[tokio::test]
async fn failover_skips_a_refusing_primary() {
    let good = mock().await;
    let mut c = base_config();
    add_backend(&mut c, "primary", BackendType::OpenAi, &dead_url().await);
    add_backend(&mut c, "backup", BackendType::OpenAi, &good.base_url());
    c.failover_routes.insert(
        "gpt-4".into(),
        vec!["primary:gpt-4".into(), "backup:gpt-4-backup".into()],
    );
    let proxy = Proxy::start(c).await;
    let r = post(
        &proxy.url("/v1/chat/completions"),
        &chat("gpt-4", "hi", false),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(good.requests().len(), 1);
    assert_eq!(good.requests()[0].json().unwrap()["model"], "gpt-4-backup");
    proxy.stop().await;
}

#[tokio::test]
async fn failover_on_503_and_429_and_last_status_passes_through() {
    let primary = mock().await;
    primary.set_defaults(MockOptions {
        fault: Some(MockFault::Status(503)),
        ..MockOptions::default()
    });
    let backup = mock().await;
    let mut c = base_config();
    add_backend(&mut c, "primary", BackendType::OpenAi, &primary.base_url());
    add_backend(&mut c, "backup", BackendType::OpenAi, &backup.base_url());
    c.failover_routes
        .insert("m".into(), vec!["primary:m".into(), "backup:m".into()]);
    let proxy = Proxy::start(c).await;
    let r = post(
        &proxy.url("/v1/chat/completions"),
        &chat("m", "hi", true),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(primary.requests().len(), 1);
    assert_eq!(backup.requests().len(), 1);

    // Both fail with 429: the client gets the last upstream's answer as is.
    backup.set_defaults(MockOptions {
        fault: Some(MockFault::Status(429)),
        ..MockOptions::default()
    });
    let r = post(
        &proxy.url("/v1/chat/completions"),
        &chat("m", "hi", false),
        &[],
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_failure_mid_stream_ends_with_an_error_event() {
    let up = mock().await;
    let mut c = base_config();
    add_backend(&mut c, "openai", BackendType::OpenAi, &up.base_url());
    add_backend(&mut c, "anthropic", BackendType::Anthropic, &up.base_url());
    let proxy = Proxy::start(c).await;

    let s = post_stream(
        &proxy.url("/v1/chat/completions"),
        &chat("openai:echo", "a b c d e f g h", true),
        &[("x-mock-fault", "reset"), ("x-mock-chunks", "8")],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(s.status, 200);
    let events = sse_events(&s.text());
    assert!(events.len() >= 2, "some chunks arrived before the failure");
    let last: serde_json::Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream"),
        "{last}"
    );
    assert!(!events.iter().any(|(_, d)| d == "[DONE]"));

    let s = post_stream(
        &proxy.url("/v1/messages"),
        &messages("anthropic:echo", "a b c d e f g h", true),
        &[("x-mock-fault", "reset")],
        Duration::from_secs(10),
    )
    .await;
    let events = sse_events(&s.text());
    let (name, data) = events.last().unwrap();
    assert_eq!(name.as_deref(), Some("error"));
    let v: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["type"], "error");
    proxy.stop().await;
}

#[tokio::test]
async fn bad_input_gets_documented_statuses_and_the_proxy_stays_up() {
    let up = mock().await;
    // A "server" that answers HTTP requests with bytes that are not HTTP.
    let garbage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage_url = format!("http://{}/v1", garbage.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = garbage.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01garbage\r\n\r\n")
                    .await;
            });
        }
    });
    let mut c = base_config();
    c.max_request_body_bytes = 4096;
    c.header_read_timeout_seconds = 1.0;
    add_backend(&mut c, "openai", BackendType::OpenAi, &up.base_url());
    add_backend(&mut c, "anthropic", BackendType::Anthropic, &up.base_url());
    add_backend(&mut c, "garbage", BackendType::OpenAi, &garbage_url);
    c.backends
        .get_mut("openai")
        .unwrap()
        .upstream
        .first_byte_timeout_seconds = Some(1.0);
    let proxy = Proxy::start(c).await;
    let chat_url = proxy.url("/v1/chat/completions");

    let r = post(&chat_url, "{\"model\": \"openai:echo\", ", &[]).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );

    let r = post(&chat_url, r#"{"messages":[]}"#, &[]).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`model`")
    );

    let r = post(
        &proxy.url("/v1/messages"),
        &messages("nope:claude", "hi", false),
        &[],
    )
    .await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(
        v["type"], "error",
        "Anthropic-style error on the messages route"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown backend \"nope\"")
    );

    let big = chat("openai:echo", &"x".repeat(5000), false);
    let r = post(&chat_url, &big, &[]).await;
    assert_eq!(r.status, 413);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_request_body_bytes")
    );

    // A request head that never completes is cut off by the header timeout.
    let mut slow = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(_)) | Ok(Err(_))),
        "connection closed by the header timeout"
    );

    let r = post(&chat_url, &chat("garbage:m", "hi", false), &[]).await;
    assert_eq!(r.status, 502, "{}", r.body);

    let r = post(
        &chat_url,
        &chat("openai:echo", "hi", false),
        &[("x-mock-fault", "malformed")],
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );

    let started = std::time::Instant::now();
    let r = post(
        &chat_url,
        &chat("openai:echo", "hi", false),
        &[("x-mock-fault", "hang")],
    )
    .await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(r.json()["error"]["type"], "timeout_error");

    // Still serving.
    let r = post(&chat_url, &chat("openai:echo", "still here", false), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "still here");
    proxy.stop().await;
}

#[tokio::test]
async fn headers_are_forwarded_except_hop_by_hop_and_backend_key_replaces_client_key() {
    let up = mock().await;
    let mut c = base_config();
    add_backend(&mut c, "keyed", BackendType::OpenAi, &up.base_url());
    c.backends.get_mut("keyed").unwrap().api_key = Some(llm_proxy_core::Secret::new("sk-backend"));
    add_backend(&mut c, "open", BackendType::Anthropic, &up.base_url());
    let proxy = Proxy::start(c).await;
    let r = post(
        &proxy.url("/v1/chat/completions"),
        &chat("keyed:echo", "hi", false),
        &[
            ("authorization", "Bearer client-key"),
            ("x-custom-trace", "abc"),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let req = &up.requests()[0];
    assert_eq!(req.header("authorization"), Some("Bearer sk-backend"));
    assert_eq!(req.header("x-custom-trace"), Some("abc"));
    assert_eq!(req.header("x-drop-me"), None);

    // No backend key: the client's credential passes through, in the backend's style.
    let r = post(
        &proxy.url("/v1/messages"),
        &messages("open:echo", "hi", false),
        &[("authorization", "Bearer client-key")],
    )
    .await;
    assert_eq!(r.status, 200);
    let req = &up.requests()[1];
    assert_eq!(req.header("x-api-key"), Some("client-key"));
    assert_eq!(req.header("authorization"), None);
    assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));
    proxy.stop().await;
}

#[tokio::test]
async fn models_lists_routable_targets() {
    let mut c = base_config();
    c.backends.insert(
        "mock".into(),
        llm_proxy_core::BackendConfig::new(BackendType::Mock),
    );
    c.default_backend = Some("mock".into());
    c.failover_routes
        .insert("fast".into(), vec!["mock:echo".into()]);
    let proxy = Proxy::start(c).await;
    let r = get(&proxy.url("/v1/models"), &[]).await;
    assert_eq!(r.status, 200);
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.contains(&"mock:echo".to_owned()), "{ids:?}");
    assert!(ids.contains(&"fast".to_owned()), "{ids:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_stalled_stream_ends_with_an_error_event_after_the_idle_timeout() {
    let up = mock().await;
    let mut c = base_config();
    add_backend(&mut c, "openai", BackendType::OpenAi, &up.base_url());
    c.backends
        .get_mut("openai")
        .unwrap()
        .upstream
        .idle_timeout_seconds = Some(0.5);
    let proxy = Proxy::start(c).await;
    let started = std::time::Instant::now();
    let s = post_stream(
        &proxy.url("/v1/chat/completions"),
        &chat("openai:echo", "a b c", true),
        &[("x-mock-inter-chunk-delay-ms", "3000")],
        Duration::from_secs(10),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut off by the idle timeout"
    );
    let events = sse_events(&s.text());
    let last: serde_json::Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert_eq!(last["error"]["type"], "timeout_error", "{last}");
    proxy.stop().await;
}

#[tokio::test]
async fn h2c_clients_are_served() {
    use http_body_util::{BodyExt, Full};
    let up = mock().await;
    let mut c = base_config();
    add_backend(&mut c, "openai", BackendType::OpenAi, &up.base_url());
    let proxy = Proxy::start(c).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<bytes::Bytes>>();
    let req = http::Request::post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(chat(
            "openai:echo",
            "over h2",
            true,
        ))))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("data: [DONE]"));
    proxy.stop().await;
}

#[tokio::test]
async fn the_in_process_mock_backend_honours_timeouts_and_faults() {
    let mut c = base_config();
    c.backends.insert(
        "mock".into(),
        llm_proxy_core::BackendConfig::new(BackendType::Mock),
    );
    c.backends
        .get_mut("mock")
        .unwrap()
        .upstream
        .first_byte_timeout_seconds = Some(0.5);
    c.default_backend = Some("mock".into());
    let proxy = Proxy::start(c).await;
    let url = proxy.url("/v1/chat/completions");
    let r = post(&url, &chat("mock:echo+fault-hang", "hi", false), &[]).await;
    assert_eq!(r.status, 504, "{}", r.body);
    let r = post(
        &url,
        &chat("mock:echo", "hi", false),
        &[("x-mock-fault", "429")],
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "1");
    let r = post(
        &url,
        &chat("mock:echo", "hi", false),
        &[("x-mock-fault", "malformed")],
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.body);
    let s = post_stream(
        &url,
        &chat("mock:echo", "a b c d e f", true),
        &[("x-mock-fault", "reset")],
        Duration::from_secs(5),
    )
    .await;
    let last: serde_json::Value =
        serde_json::from_str(&sse_events(&s.text()).last().unwrap().1).unwrap();
    assert!(
        last["error"]["message"].as_str().unwrap().contains("reset"),
        "{last}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_backend_of_the_other_protocol_translates_or_refuses_with_a_clear_400() {
    let up = mock().await;
    let mut c = base_config();
    add_backend(&mut c, "claude", BackendType::Anthropic, &up.base_url());
    add_backend(&mut c, "gpt", BackendType::OpenAi, &up.base_url());
    c.failover_routes
        .insert("mixed".into(), vec!["claude:m".into(), "gpt:m".into()]);
    let proxy = Proxy::start(c).await;
    // OpenAI chat to an Anthropic backend is translated.
    let r = post(
        &proxy.url("/v1/chat/completions"),
        &chat("claude:m", "hi", false),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["object"], "chat.completion");
    assert_eq!(up.requests()[0].path, "/v1/messages");
    // The Responses API is not translated: a clear 400.
    let body = serde_json::json!({"model": "claude:m", "input": "hi"}).to_string();
    let r = post(&proxy.url("/v1/responses"), &body, &[]).await;
    assert_eq!(r.status, 400);
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("OpenAI responses") && message.contains("claude (anthropic)"),
        "{message}"
    );
    // In a mixed route the backend that speaks it serves it.
    let body = serde_json::json!({"model": "mixed", "input": "hi"}).to_string();
    let r = post(&proxy.url("/v1/responses"), &body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.requests().len(), 2);
    assert_eq!(up.requests()[1].path, "/v1/responses");
    proxy.stop().await;
}

#[tokio::test]
async fn stream_usage_is_always_requested_but_only_shown_when_asked_for() {
    let up = mock().await;
    let mut c = base_config();
    add_backend(&mut c, "openai", BackendType::OpenAi, &up.base_url());
    let proxy = Proxy::start(c).await;
    let url = proxy.url("/v1/chat/completions");
    let has_usage_chunk = |text: &str| {
        sse_events(text).iter().any(|(_, d)| {
            serde_json::from_str::<serde_json::Value>(d).is_ok_and(|v| {
                v["choices"].as_array().is_some_and(Vec::is_empty) && v["usage"].is_object()
            })
        })
    };

    // The client did not ask: upstream is asked anyway, the client never sees it.
    let s = post_stream(
        &url,
        &chat("openai:echo", "one two", true),
        &[],
        Duration::from_secs(10),
    )
    .await;
    let upstream_body = up.requests()[0].json().unwrap();
    assert_eq!(upstream_body["stream_options"]["include_usage"], true);
    assert!(!has_usage_chunk(&s.text()), "{}", s.text());
    assert!(s.text().ends_with("data: [DONE]\n\n"));

    // The client asked: it gets the usage chunk, and the body went upstream unchanged.
    let body = serde_json::json!({
        "model": "openai:echo", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "one two"}],
    })
    .to_string();
    let s = post_stream(&url, &body, &[], Duration::from_secs(10)).await;
    assert!(has_usage_chunk(&s.text()), "{}", s.text());
    proxy.stop().await;
}
