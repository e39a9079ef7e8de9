//! The mock upstream over real sockets: shapes, streaming, faults, delays, shutdown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use llm_proxy_core::mock::{DEFAULT_ANSWER, count_words};
use llm_proxy_testkit::{MockFault, MockOptions, MockUpstream, MockUpstreamConfig, sse_events};
use serde_json::{Value, json};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn start() -> MockUpstream {
    MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap()
}

async fn send(
    client: &HttpClient,
    mock: &MockUpstream,
    path: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> Response<Incoming> {
    let mut builder = Request::post(format!("http://{}{path}", mock.addr()))
        .header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    client.request(request).await.unwrap()
}

async fn post(
    mock: &MockUpstream,
    path: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let response = send(&client(), mock, path, headers, body).await;
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "stream_options": {"include_usage": true},
           "messages": [{"role": "user", "content": "hello mock world"}]})
}

fn anthropic(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "max_tokens": 100,
           "messages": [{"role": "user", "content": "hello mock world"}]})
}

fn responses(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "input": "hello mock world"})
}

#[tokio::test]
async fn json_answers_in_all_three_protocols() {
    let mock = start().await;
    let (status, headers, body) =
        post(&mock, "/v1/chat/completions", &[], chat("echo", false)).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "hello mock world");
    assert_eq!(v["usage"]["total_tokens"], 6);

    let (status, _, body) = post(&mock, "/v1/messages", &[], anthropic("claude", false)).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["content"][0]["text"], DEFAULT_ANSWER);
    assert_eq!(v["usage"]["input_tokens"], 3);
    assert_eq!(v["usage"]["output_tokens"], count_words(DEFAULT_ANSWER));

    let (status, _, body) = post(&mock, "/v1/responses", &[], responses("echo", false)).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["output"][0]["content"][0]["text"], "hello mock world");

    let requests = mock.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/v1/chat/completions");
    assert_eq!(requests[1].path, "/v1/messages");
    assert_eq!(requests[0].header("content-type"), Some("application/json"));
    assert_eq!(requests[2].json().unwrap()["input"], "hello mock world");
    assert!(requests[0].received_at <= requests[1].received_at);
    assert!(mock.connection_count() >= 1);
    mock.shutdown().await;
}

#[tokio::test]
async fn sse_streams_in_all_three_protocols() {
    let mock = start().await;
    let (status, headers, body) = post(
        &mock,
        "/v1/chat/completions",
        &[("x-mock-chunks", "3")],
        chat("echo", true),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    let events = sse_events(std::str::from_utf8(&body).unwrap());
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "hello mock world");
    // role, 3 content, finish, usage
    assert_eq!(chunks.len(), 6);
    assert_eq!(chunks[5]["usage"]["completion_tokens"], 3);

    let (_, _, body) = post(&mock, "/v1/messages", &[], anthropic("echo", true)).await;
    let events = sse_events(std::str::from_utf8(&body).unwrap());
    assert_eq!(events[0].0.as_deref(), Some("message_start"));
    assert_eq!(events.last().unwrap().0.as_deref(), Some("message_stop"));
    let text: String = events
        .iter()
        .filter(|(e, _)| e.as_deref() == Some("content_block_delta"))
        .map(|(_, d)| {
            let v: Value = serde_json::from_str(d).unwrap();
            v["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(text, "hello mock world");

    let (_, _, body) = post(&mock, "/v1/responses", &[], responses("echo", true)).await;
    let events = sse_events(std::str::from_utf8(&body).unwrap());
    assert_eq!(events[0].0.as_deref(), Some("response.created"));
    let (name, data) = events.last().unwrap();
    assert_eq!(name.as_deref(), Some("response.completed"));
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        v["response"]["output"][0]["content"][0]["text"],
        "hello mock world"
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn h2c_prior_knowledge_works() {
    let mock = start().await;
    let h2: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let response = send(&h2, &mock, "/v1/chat/completions", &[], chat("echo", true)).await;
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let events = sse_events(std::str::from_utf8(&body).unwrap());
    assert_eq!(events.last().unwrap().1, "[DONE]");
    mock.shutdown().await;
}

#[tokio::test]
async fn status_faults_from_header_and_model_suffix() {
    let mock = start().await;
    let (status, headers, body) = post(
        &mock,
        "/v1/chat/completions",
        &[("x-mock-fault", "429")],
        chat("m", true),
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(headers["content-type"], "application/json");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");

    let (status, _, body) = post(
        &mock,
        "/v1/messages",
        &[],
        anthropic("claude+fault-503", false),
    )
    .await;
    assert_eq!(status, 503);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "overloaded_error");

    let (status, headers, _) = post(
        &mock,
        "/v1/responses",
        &[("x-mock-fault", "500")],
        responses("m", false),
    )
    .await;
    assert_eq!(status, 500);
    assert!(headers.get("retry-after").is_none());
    mock.shutdown().await;
}

#[tokio::test]
async fn reset_breaks_the_stream_after_about_half() {
    let mock = start().await;
    let response = send(
        &client(),
        &mock,
        "/v1/chat/completions",
        &[],
        chat("echo+fault-reset", true),
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = Vec::new();
    let error = loop {
        match body.frame().await {
            Some(Ok(frame)) => received.extend_from_slice(&frame.into_data().unwrap()),
            Some(Err(error)) => break error,
            None => panic!("stream ended cleanly; expected a broken connection"),
        }
    };
    let _ = error;
    let events = sse_events(std::str::from_utf8(&received).unwrap());
    // the full stream has 9 events (role, 5 content, finish, usage, [DONE])
    assert_eq!(events.len(), 4);
    assert!(events.iter().all(|(_, d)| d != "[DONE]"));

    // JSON: the head arrives, then the connection is aborted before the body.
    let response = send(
        &client(),
        &mock,
        "/v1/messages",
        &[("x-mock-fault", "reset")],
        anthropic("m", false),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(response.into_body().collect().await.is_err());
    mock.shutdown().await;
}

#[tokio::test]
async fn malformed_json_and_malformed_stream() {
    let mock = start().await;
    let (status, headers, body) = post(
        &mock,
        "/v1/chat/completions",
        &[("x-mock-fault", "malformed")],
        chat("m", false),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert!(serde_json::from_slice::<Value>(&body).is_err());

    let (status, _, body) = post(
        &mock,
        "/v1/messages",
        &[],
        anthropic("m+fault-malformed", true),
    )
    .await;
    assert_eq!(status, 200);
    let events = sse_events(std::str::from_utf8(&body).unwrap());
    assert_eq!(events.len(), 2);
    assert!(serde_json::from_str::<Value>(&events[0].1).is_ok());
    assert!(serde_json::from_str::<Value>(&events[1].1).is_err());
    mock.shutdown().await;
}

#[tokio::test]
async fn never_answer_times_out_on_the_client() {
    let mock = start().await;
    let client = client();
    let pending = send(
        &client,
        &mock,
        "/v1/chat/completions",
        &[("x-mock-fault", "hang")],
        chat("m", false),
    );
    let result = tokio::time::timeout(Duration::from_millis(300), pending).await;
    assert!(result.is_err(), "the mock answered a hang fault");
    assert_eq!(mock.requests().len(), 1);
    // The server is still healthy for other requests; shutdown does not wait for the hung one.
    let (status, _, _) = post(&mock, "/v1/chat/completions", &[], chat("m", false)).await;
    assert_eq!(status, 200);
    tokio::time::timeout(Duration::from_secs(5), mock.shutdown())
        .await
        .unwrap();
}

#[tokio::test]
async fn first_token_delay_applies_to_json_and_streams() {
    let mock = start().await;
    let started = Instant::now();
    let (status, _, _) = post(
        &mock,
        "/v1/chat/completions",
        &[("x-mock-first-token-delay-ms", "200")],
        chat("m", false),
    )
    .await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));

    let started = Instant::now();
    let response = send(
        &client(),
        &mock,
        "/v1/messages",
        &[("x-mock-first-token-delay-ms", "150")],
        anthropic("m", true),
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(response.status(), 200);
    mock.shutdown().await;
}

#[tokio::test]
async fn events_are_flushed_one_by_one_with_inter_chunk_delay() {
    let mock = MockUpstream::start(MockUpstreamConfig {
        defaults: MockOptions {
            inter_chunk_delay: Duration::from_millis(60),
            chunk_count: Some(3),
            ..MockOptions::default()
        },
        ..MockUpstreamConfig::default()
    })
    .await
    .unwrap();
    let started = Instant::now();
    let response = send(
        &client(),
        &mock,
        "/v1/chat/completions",
        &[],
        chat("echo", true),
    )
    .await;
    let mut body = response.into_body();
    let mut arrivals = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Ok(data) = frame.into_data() {
            arrivals.push((Instant::now(), data));
        }
    }
    // role, 3 content, finish, usage, [DONE] = 7 events, 6 gaps
    assert!(started.elapsed() >= Duration::from_millis(6 * 60));
    assert_eq!(arrivals.len(), 7, "each event is its own frame");
    let sent = mock.sent_event_times();
    assert_eq!(sent.len(), 7);
    for (k, ((request, event, sent_at), (arrived_at, _))) in sent.iter().zip(&arrivals).enumerate()
    {
        assert_eq!((*request, *event), (0, k));
        let lag = arrived_at.saturating_duration_since(*sent_at);
        assert!(
            lag < Duration::from_millis(50),
            "event {k} arrived {lag:?} after it was sent"
        );
    }
    for pair in sent.windows(2) {
        assert!(pair[1].2.duration_since(pair[0].2) >= Duration::from_millis(55));
    }
    mock.shutdown().await;
}

#[tokio::test]
async fn set_defaults_changes_behaviour_at_run_time() {
    let mock = start().await;
    let (status, _, _) = post(&mock, "/v1/chat/completions", &[], chat("m", false)).await;
    assert_eq!(status, 200);
    mock.set_defaults(MockOptions {
        fault: Some(MockFault::Status(503)),
        ..MockOptions::default()
    });
    let (status, _, _) = post(&mock, "/v1/chat/completions", &[], chat("m", false)).await;
    assert_eq!(status, 503);
    mock.set_defaults(MockOptions::default());
    let (status, _, _) = post(&mock, "/v1/chat/completions", &[], chat("m", false)).await;
    assert_eq!(status, 200);
    mock.shutdown().await;
}

#[tokio::test]
async fn probes_models_unknown_paths_and_bad_requests() {
    let mock = start().await;
    let client = client();
    for (method, path) in [("GET", "/"), ("HEAD", "/"), ("GET", "/v1"), ("HEAD", "/v1")] {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", mock.addr()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(
            client.request(request).await.unwrap().status(),
            200,
            "{method} {path}"
        );
    }
    // Probes are logged apart, so request indices stay those of real traffic.
    assert!(mock.requests().is_empty());
    let probes: Vec<(String, String)> = mock
        .probe_requests()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    assert_eq!(probes.len(), 4);
    assert_eq!(probes[3], ("HEAD".to_owned(), "/v1".to_owned()));
    let request = Request::get(format!("{}/models", mock.base_url()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let v: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["object"], "model");

    let (status, _, body) = post(&mock, "/v1/nope", &[], json!({})).await;
    assert_eq!(status, 404);
    assert!(serde_json::from_slice::<Value>(&body).unwrap()["error"]["message"].is_string());

    let (status, _, body) = post(
        &mock,
        "/v1/messages",
        &[("x-mock-chunks", "lots")],
        anthropic("m", true),
    )
    .await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-mock-chunks")
    );

    let (status, _, _) = post(&mock, "/v1/chat/completions", &[], json!({"messages": []})).await;
    assert_eq!(status, 400);
    mock.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_the_port() {
    let mock = start().await;
    let addr = mock.addr();
    assert!(mock.base_url().starts_with("http://127.0.0.1:"));
    assert!(mock.base_url().ends_with("/v1"));
    tokio::net::TcpStream::connect(addr).await.unwrap();
    mock.shutdown().await;
    let error = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn no_history_answers_and_keeps_nothing() {
    let mock = MockUpstream::start(MockUpstreamConfig {
        no_history: true,
        ..MockUpstreamConfig::default()
    })
    .await
    .unwrap();
    let (status, _, body) = post(&mock, "/v1/chat/completions", &[], chat("m", false)).await;
    assert_eq!(status, 200);
    assert!(
        serde_json::from_slice::<Value>(&body).unwrap()["usage"]["total_tokens"].as_u64() > Some(0)
    );
    let (status, _, body) = post(&mock, "/v1/chat/completions", &[], chat("m", true)).await;
    assert_eq!(status, 200);
    assert!(sse_events(std::str::from_utf8(&body).unwrap()).len() > 2);
    assert!(mock.requests().is_empty());
    assert!(mock.sent_event_times().is_empty());
    mock.shutdown().await;
}
