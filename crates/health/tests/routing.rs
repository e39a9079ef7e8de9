//! The monitor as the pipeline's health view, with real upstreams on
//! 127.0.0.1: the all-unavailable fallback (original plan, WARNING, request
//! still tried) and what `try_admit` does to a half-open circuit.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use http_body_util::BodyExt;
use llm_proxy_core::{
    BackendConfig, BackendType, ClientRequest, EndpointHealth, Frontend, Pipeline, RoutingConfig,
};
use llm_proxy_health::{BackendSpec, HealthCheckConfig, HealthMonitor};
use llm_proxy_testkit::{MockUpstream, MockUpstreamConfig};

/// Log lines written while the guard of `capture_logs` lives (this thread only).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let sink = logs.0.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || LogWriter(sink.clone()))
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

fn routing(a: &MockUpstream, b: &MockUpstream) -> RoutingConfig {
    let mut r = RoutingConfig {
        default_backend: "a".into(),
        ..RoutingConfig::default()
    };
    r.backends.insert(
        "a".into(),
        BackendConfig::new(BackendType::OpenAi).with_url(a.base_url()),
    );
    r.backends.insert(
        "b".into(),
        BackendConfig::new(BackendType::OpenAi).with_url(b.base_url()),
    );
    r.failover_routes
        .insert("pair".into(), vec!["a:echo".into(), "b:echo".into()]);
    r
}

fn chat_request(model: &str) -> ClientRequest {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
    })
    .to_string();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    ClientRequest {
        frontend: Frontend::OpenAiChat,
        method: Method::POST,
        uri: Uri::from_static("/v1/chat/completions"),
        headers,
        body: Bytes::from(body),
        client_addr: None,
        proxy_user: None,
        received: Instant::now(),
        received_at: SystemTime::now(),
    }
}

async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

fn llm_requests(up: &MockUpstream) -> usize {
    up.requests().iter().filter(|r| r.method == "POST").count()
}

#[tokio::test]
async fn all_targets_unavailable_uses_the_original_plan_warns_and_still_tries() {
    let (logs, _guard) = capture_logs();
    let a = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let b = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let routing = routing(&a, &b);
    // Both endpoints fail their HTTP probe (404 counts as down here) while
    // their LLM routes work: health says "unavailable", the backends are fine.
    let mut config = HealthCheckConfig::default();
    config.ping.enabled = false;
    config.http.interval_seconds = 0.2;
    config.http.failure_threshold = 1;
    config.http.path = "/no-such-probe-path".into();
    config.http.healthy_below_status = 400;
    let (monitor, tasks) =
        HealthMonitor::start(&config, &BackendSpec::from_routing(&routing)).unwrap();
    assert!(
        eventually(Duration::from_secs(3), || !monitor.is_available("a")
            && !monitor.is_available("b"))
        .await,
        "both endpoints unhealthy"
    );
    let pipeline = Pipeline::new(routing).unwrap().with_health(monitor.clone());

    let response = pipeline.handle(chat_request("pair")).await;
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(!body.is_empty());
    // The first target of the original plan got the request.
    assert_eq!(llm_requests(&a), 1);
    assert_eq!(llm_requests(&b), 0);
    let text = logs.text();
    assert!(
        text.contains("WARN")
            && text.contains(
                "every target of this request is unhealthy; trying the original plan anyway"
            ),
        "{text}"
    );
    assert!(
        text.contains("endpoint is unhealthy; routing skips it"),
        "{text}"
    );
    tasks.shutdown().await;
}

#[tokio::test]
async fn an_unhealthy_endpoint_is_skipped_while_another_is_healthy() {
    let a = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let b = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let mut routing = routing(&a, &b);
    // Only a's probe path fails.
    routing.backends.get_mut("a").unwrap().api_url = Some(format!("{}/broken", a.base_url()));
    let mut config = HealthCheckConfig::default();
    config.ping.enabled = false;
    config.http.interval_seconds = 0.2;
    config.http.failure_threshold = 1;
    config.http.healthy_below_status = 400;
    let (monitor, tasks) =
        HealthMonitor::start(&config, &BackendSpec::from_routing(&routing)).unwrap();
    assert!(eventually(Duration::from_secs(3), || !monitor.is_available("a")).await);
    assert!(monitor.is_available("b"));
    // `a` answers on its (real) base URL, so this shows routing skipped it.
    routing.backends.get_mut("a").unwrap().api_url = Some(a.base_url());
    let pipeline = Pipeline::new(routing).unwrap().with_health(monitor.clone());
    for _ in 0..3 {
        let response = pipeline.handle(chat_request("pair")).await;
        assert_eq!(response.status(), 200);
        let _ = response.into_body().collect().await.unwrap();
    }
    assert_eq!(llm_requests(&a), 0);
    assert_eq!(llm_requests(&b), 3);
    tasks.shutdown().await;
}

#[tokio::test]
async fn a_probe_whose_client_leaves_before_the_answer_frees_the_half_open_slot() {
    let a = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let b = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let routing = routing(&a, &b);
    let mut config = HealthCheckConfig {
        enabled: false,
        ..HealthCheckConfig::default()
    };
    config.circuit_breaker.open_cooldown_seconds = 0.2;
    let (monitor, _tasks) =
        HealthMonitor::start(&config, &BackendSpec::from_routing(&routing)).unwrap();
    let pipeline = Arc::new(Pipeline::new(routing).unwrap().with_health(monitor.clone()));
    a.set_defaults(llm_proxy_testkit::MockOptions {
        fault: Some(llm_proxy_testkit::MockFault::Status(503)),
        ..Default::default()
    });
    for _ in 0..3 {
        let r = pipeline.handle(chat_request("pair")).await;
        let _ = r.into_body().collect().await.unwrap();
    }
    assert!(!monitor.is_available("a"), "circuit open");
    tokio::time::sleep(Duration::from_millis(250)).await;
    // The probe hangs; its client gives up before any answer arrives.
    a.set_defaults(llm_proxy_testkit::MockOptions {
        fault: Some(llm_proxy_testkit::MockFault::NeverAnswer),
        ..Default::default()
    });
    let p = pipeline.clone();
    let probe = tokio::spawn(async move { p.handle(chat_request("pair")).await });
    assert!(eventually(Duration::from_secs(2), || llm_requests(&a) == 4).await);
    assert!(!monitor.is_available("a"), "the slot is taken");
    probe.abort();
    let _ = probe.await;
    assert!(
        eventually(Duration::from_secs(1), || monitor.is_available("a")).await,
        "the slot is free again"
    );
    // The next probe succeeds and closes the circuit.
    a.set_defaults(llm_proxy_testkit::MockOptions::default());
    let r = pipeline.handle(chat_request("pair")).await;
    let _ = r.into_body().collect().await.unwrap();
    assert_eq!(llm_requests(&a), 5);
    let r = pipeline.handle(chat_request("pair")).await;
    let _ = r.into_body().collect().await.unwrap();
    assert_eq!(llm_requests(&a), 6, "closed: a serves again");
}
