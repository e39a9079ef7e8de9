//! Cross-protocol translation end to end: the official OpenAI SDK served by
//! an Anthropic-type backend and the Anthropic SDK served by an OpenAI-type
//! backend (both the testkit mock upstream), JSON and streams, two-step tool
//! round trips, usage records, upstream errors in the client's style, and
//! untranslatable requests refused with a 400 that names the feature. The SDK
//! checks live in `tests/py/translation_check.py`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::time::Duration;

use common::python::{SCRIPT_TIMEOUT, python, run_script, workspace_root};
use common::*;
use llm_proxy_core::BackendType;
use llm_proxy_testkit::{MockUpstream, MockUpstreamConfig};
use serde_json::Value;

async fn translating_proxy(up: &MockUpstream) -> Proxy {
    let mut c = base_config();
    add_backend(&mut c, "claude", BackendType::Anthropic, &up.base_url());
    add_backend(&mut c, "gpt", BackendType::OpenAi, &up.base_url());
    c.usage_tracking.flush_interval_seconds = 0.2;
    Proxy::start(c).await
}

async fn records(proxy: &Proxy, query: &str, n: u64) -> Vec<Value> {
    for _ in 0..200 {
        let r = get(
            &proxy.url(&format!("/v1/usage/recent?limit=1000&{query}")),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        if v["total"].as_u64() == Some(n) {
            return v["records"].as_array().unwrap().clone();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never saw {n} usage records for {query}");
}

/// (prompt, completion, tool names, status) of each record, sorted.
fn usage_of(records: &[Value]) -> Vec<(u64, u64, String, u64)> {
    let mut v: Vec<_> = records
        .iter()
        .map(|r| {
            assert_eq!(r["token_source"], "backend", "{r}");
            let tools: Vec<&str> = r["tool_names"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect();
            (
                r["prompt_tokens"].as_u64().unwrap(),
                r["completion_tokens"].as_u64().unwrap(),
                tools.join(","),
                r["http_status_code"].as_u64().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_talk_across_protocols() {
    let python = python();
    let script = workspace_root().join("tests/py/translation_check.py");
    let up = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let proxy = translating_proxy(&up).await;
    let base = proxy.url("");
    let outcome = tokio::task::spawn_blocking(move || run_script(&python, &script, &base))
        .await
        .expect("script runner");
    let report = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        outcome.stdout, outcome.stderr
    );
    match outcome.status {
        None => panic!("translation_check.py did not finish within {SCRIPT_TIMEOUT:?}\n{report}"),
        Some(status) => assert!(
            status.success(),
            "translation_check.py failed ({status})\n{report}"
        ),
    }
    assert!(outcome.stdout.contains("scenarios passed"), "{report}");

    // Each SDK call reached the upstream in the backend's protocol; refused
    // requests never left the proxy.
    let seen = up.requests();
    let to = |path: &str| seen.iter().filter(|r| r.path == path).count();
    assert_eq!(to("/v1/messages"), 7, "{report}");
    assert_eq!(to("/v1/chat/completions"), 6, "{report}");
    assert_eq!(seen.len(), 13, "{report}");
    for r in &seen {
        let body = r.json().unwrap();
        assert_eq!(body["model"], "echo");
        if r.path == "/v1/messages" {
            // OpenAI clients sent no max_tokens: the documented default.
            assert_eq!(body["max_tokens"], 8192, "{body}");
            assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
            for m in body["messages"].as_array().unwrap() {
                assert!(m["role"] == "user" || m["role"] == "assistant", "{body}");
            }
        } else {
            assert_eq!(body["max_tokens"], 64, "{body}");
            assert!(r.header("anthropic-version").is_none());
            if body["stream"] == true {
                assert_eq!(body["stream_options"]["include_usage"], true, "{body}");
            }
        }
    }

    // Usage records: parsed from the backend's protocol, the mock's counts.
    let step2 = (12, 6, String::new(), 200);
    let tool = (9, 9, "search".to_owned(), 200);
    let plain = (9, 9, String::new(), 200);
    let with_system = (11, 9, String::new(), 200);
    let openai_side = records(&proxy, "frontend_type=openai&backend_type=anthropic", 7).await;
    let mut want = vec![
        with_system.clone(),
        plain.clone(),
        plain.clone(),
        tool.clone(),
        tool.clone(),
        step2.clone(),
        step2.clone(),
    ];
    want.sort();
    assert_eq!(usage_of(&openai_side), want);
    for r in &openai_side {
        assert_eq!(r["backend"], "claude");
        assert_eq!(r["model"], "echo");
    }
    let anthropic_side = records(&proxy, "frontend_type=anthropic&backend_type=openai", 6).await;
    let mut want = vec![with_system, plain, tool.clone(), tool, step2.clone(), step2];
    want.sort();
    assert_eq!(usage_of(&anthropic_side), want);
    // The refused requests are recorded as 400s.
    let refused = records(&proxy, "http_status_code=400", 3).await;
    assert_eq!(refused.len(), 3);

    proxy.stop().await;
    up.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_arrive_in_the_clients_style() {
    let up = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let proxy = translating_proxy(&up).await;

    // Anthropic backend's 429 → an OpenAI error body for the OpenAI client.
    let r = post(
        &proxy.url("/v1/chat/completions"),
        &chat("claude:echo+fault-429", "hi", false),
        &[],
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.body);
    let v = r.json();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("backend error:")
    );
    assert!(v.get("type").is_none(), "not Anthropic-shaped: {v}");

    // OpenAI backend's 503 → an Anthropic error body for the Anthropic client.
    let r = post(
        &proxy.url("/v1/messages"),
        &messages("gpt:echo+fault-503", "hi", true),
        &[],
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);
    let v = r.json();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "overloaded_error", "{v}");

    // Untranslatable features are named; same-protocol traffic is untouched.
    let body = serde_json::json!({"model": "claude:echo", "logprobs": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let r = post(&proxy.url("/v1/chat/completions"), &body.to_string(), &[]).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`logprobs`"),
        "{}",
        r.body
    );
    let raw = r#"{"model":"gpt:echo",  "messages":[{"role":"user","content":"hi"}]}"#;
    let r = post(&proxy.url("/v1/chat/completions"), raw, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let last = up.requests().last().unwrap().body.clone();
    assert_eq!(
        &last[..],
        br#"{"model":"echo",  "messages":[{"role":"user","content":"hi"}]}"#
    );

    proxy.stop().await;
    up.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_transcoded_event_by_event() {
    let up = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let proxy = translating_proxy(&up).await;
    let r = post_stream(
        &proxy.url("/v1/chat/completions"),
        &chat("claude:echo", "one two three four", true),
        &[
            ("x-mock-chunks", "4"),
            ("x-mock-inter-chunk-delay-ms", "20"),
        ],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(!r.broken);
    // Deltas arrive as the backend sends them, not all at the end.
    assert!(r.frames.len() >= 4, "{} frames", r.frames.len());
    let text = r.text();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        !text.contains("\"usage\""),
        "no usage chunk unless asked: {text}"
    );
    assert!(
        !text.contains("event:"),
        "OpenAI chunks have no event names: {text}"
    );
    proxy.stop().await;
    up.shutdown().await;
}

/// An upstream on 127.0.0.1:0 for one POST: writes `response` as it is and,
/// a moment later, drops the connection. Other requests (health probes) get
/// an empty 200. Yields the POST's head and body.
async fn raw_upstream(response: Vec<u8>) -> (String, tokio::task::JoinHandle<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 8192];
            let complete = loop {
                let n = conn.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break false;
                }
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if seen.len() >= end + 4 + length {
                        break true;
                    }
                }
            };
            if !complete {
                continue;
            }
            if !seen.starts_with(b"POST ") {
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                continue;
            }
            // The proxy may stop reading early (a cut-off stream).
            let _ = conn.write_all(&response).await;
            let _ = conn.flush().await;
            // The answer is read before the connection breaks.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return String::from_utf8_lossy(&seen).into_owned();
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_after_its_finish_reason_ends_with_the_error() {
    // An OpenAI backend sends its finish_reason, then the connection breaks
    // before `[DONE]` (the chunked body never ends).
    let chunk = "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\n";
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n",
        chunk.len()
    );
    let (url, upstream) = raw_upstream(response.into_bytes()).await;
    let mut c = base_config();
    add_backend(&mut c, "gpt", BackendType::OpenAi, &url);
    let proxy = Proxy::start(c).await;
    // The Anthropic SDK adds `?beta=true`; it is not sent to an OpenAI backend.
    let r = post_stream(
        &proxy.url("/v1/messages?beta=true"),
        &messages("gpt:m", "hi", true),
        &[],
        Duration::from_secs(10),
    )
    .await;
    let text = r.text();
    assert_eq!(r.status, 200, "{text}");
    assert!(text.contains("text_delta"), "{text}");
    let error = text.find("event: error").expect("an error event");
    // SDKs stop reading at message_stop: the error must come first (and
    // nothing claims the message ended normally).
    assert!(
        text.find("event: message_stop")
            .is_none_or(|stop| stop > error),
        "{text}"
    );
    assert!(!text.contains("message_stop"), "{text}");
    let head = upstream.await.unwrap();
    let request_line = head.lines().next().unwrap();
    assert!(request_line.contains("/chat/completions "), "{head}");
    assert!(!request_line.contains('?'), "{head}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_counts_only_targets_the_request_can_be_translated_for() {
    // Route [gpt (answers 503), claude]: a chat request with `logprobs`
    // cannot go to claude, so gpt is the last target and its 503 reaches the
    // client as it is (not drained for a failover that cannot happen).
    let gpt = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    gpt.set_defaults(llm_proxy_testkit::MockOptions {
        fault: Some(llm_proxy_testkit::MockFault::Status(503)),
        ..llm_proxy_testkit::MockOptions::default()
    });
    let claude = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let mut c = base_config();
    add_backend(&mut c, "gpt", BackendType::OpenAi, &gpt.base_url());
    add_backend(&mut c, "claude", BackendType::Anthropic, &claude.base_url());
    c.failover_routes
        .insert("m".into(), vec!["gpt:echo".into(), "claude:echo".into()]);
    let proxy = Proxy::start(c).await;
    let body = serde_json::json!({"model": "m", "logprobs": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let r = post(&proxy.url("/v1/chat/completions"), &body.to_string(), &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(gpt.requests().len(), 1);
    assert!(claude.requests().is_empty());
    // Without `logprobs` the same route fails over to claude.
    let r = post(
        &proxy.url("/v1/chat/completions"),
        &chat("m", "hi", false),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(claude.requests().len(), 1);
    proxy.stop().await;
    gpt.shutdown().await;
    claude.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_event_without_end_is_cut_off_with_an_error() {
    // An OpenAI backend sends one "event" of 17 MiB with no newline.
    let size = 17 * 1024 * 1024;
    let mut response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\ndata: ",
        size + 6
    )
    .into_bytes();
    response.resize(response.len() + size, b'x');
    let (url, upstream) = raw_upstream(response).await;
    let mut c = base_config();
    add_backend(&mut c, "gpt", BackendType::OpenAi, &url);
    c.usage_tracking.flush_interval_seconds = 0.2;
    let proxy = Proxy::start(c).await;
    let r = post_stream(
        &proxy.url("/v1/messages"),
        &messages("gpt:m", "hi", true),
        &[],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.len() < 4096, "nothing of the event is passed on");
    assert!(text.starts_with("event: error\n"), "{text}");
    assert!(text.contains("exceeded 16 MiB"), "{text}");
    let records = records(&proxy, "", 1).await;
    assert_eq!(
        records[0]["completion_outcome"], "incomplete",
        "{:#}",
        records[0]
    );
    assert_eq!(records[0]["incomplete_reason"], "backend_error");
    upstream.await.unwrap();
    proxy.stop().await;
}
