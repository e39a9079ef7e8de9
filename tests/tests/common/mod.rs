//! Shared helpers for the end-to-end tests: start the real proxy in-process
//! on 127.0.0.1:0, talk to it over real sockets.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use llm_proxy::{App, AppConfig};
use llm_proxy_core::{BackendConfig, BackendType};
use tokio::sync::oneshot;

/// A proxy running in this process.
pub struct Proxy {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(config: AppConfig) -> Proxy {
        let app = App::build(config, None).await.expect("proxy builds");
        let addr = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run(async {
                let _ = stopped.await;
            })
            .await
            .expect("proxy runs");
        });
        Proxy {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

/// A config on 127.0.0.1:0 with no backends yet and short timeouts.
pub fn base_config() -> AppConfig {
    let mut c = AppConfig {
        port: 0,
        shutdown_grace_seconds: 5.0,
        ..AppConfig::default()
    };
    c.upstream.connect_timeout_seconds = 2.0;
    c.upstream.first_byte_timeout_seconds = 5.0;
    c.upstream.idle_timeout_seconds = 5.0;
    c.usage_tracking.persistence_path = ":memory:".into();
    c
}

/// Adds a backend called `name`.
pub fn add_backend(config: &mut AppConfig, name: &str, backend_type: BackendType, url: &str) {
    config.backends.insert(
        name.to_owned(),
        BackendConfig::new(backend_type).with_url(url),
    );
    if config.default_backend.is_none() {
        config.default_backend = Some(name.to_owned());
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn request(method: &str, url: &str, body: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(url);
    if !body.is_empty() {
        b = b.header("content-type", "application/json");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_owned())))
        .expect("request")
}

/// Sends a request and reads the whole answer (bounded by 30 s).
pub async fn send(method: &str, url: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    let fut = async {
        let resp = client()
            .request(request(method, url, body, headers))
            .await
            .expect("request sent");
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("body read").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .expect("response within 30 s")
}

pub async fn post(url: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    send("POST", url, body, headers).await
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send("GET", url, "", headers).await
}

/// A streamed answer: every body frame with the instant it arrived.
#[derive(Debug)]
pub struct StreamReply {
    pub status: StatusCode,
    pub frames: Vec<(Instant, Bytes)>,
    /// Whether the body ended with an error (connection broken).
    pub broken: bool,
}

impl StreamReply {
    pub fn text(&self) -> String {
        let all: Vec<u8> = self.frames.iter().flat_map(|(_, b)| b.to_vec()).collect();
        String::from_utf8_lossy(&all).into_owned()
    }
}

/// Sends a request and reads the body frame by frame (bounded by `limit`).
pub async fn post_stream(
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
    limit: Duration,
) -> StreamReply {
    let fut = async {
        let resp = client()
            .request(request("POST", url, body, headers))
            .await
            .expect("request sent");
        let status = resp.status();
        let mut body = resp.into_body();
        let mut frames = Vec::new();
        let mut broken = false;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Ok(data) = f.into_data() {
                        frames.push((Instant::now(), data));
                    }
                }
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        StreamReply {
            status,
            frames,
            broken,
        }
    };
    tokio::time::timeout(limit, fut)
        .await
        .expect("stream ended in time")
}

/// A chat request body.
pub fn chat(model: &str, text: &str, stream: bool) -> String {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    })
    .to_string()
}

/// An Anthropic messages request body.
pub fn messages(model: &str, text: &str, stream: bool) -> String {
    serde_json::json!({
        "model": model,
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    })
    .to_string()
}

/// Polls `check` until it holds or `within` passes.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}
pub mod python;
