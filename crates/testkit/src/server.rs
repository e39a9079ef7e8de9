//! The mock upstream server: listener, accept loop, routes and fault behaviour.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use llm_proxy_core::Frontend;
use llm_proxy_core::mock::{self, MOCK_CREATED_AT, MOCK_MODELS, MockFault, MockOptions, MockReply};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::body::EventBody;

type ResponseBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// Server-wide settings of a [`MockUpstream`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MockUpstreamConfig {
    /// Server-wide defaults, overridden per request by model suffixes and `x-mock-*` headers.
    pub defaults: MockOptions,
    /// Keep no history: [`MockUpstream::requests`], [`MockUpstream::probe_requests`]
    /// and [`MockUpstream::sent_event_times`] stay empty. For load benchmarks,
    /// where a history of every request would grow memory without bound.
    pub no_history: bool,
}

/// One request the mock upstream received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Request path without the query, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Headers in arrival order, names lower-case, values lossy UTF-8.
    pub headers: Vec<(String, String)>,
    /// The complete request body.
    pub body: Bytes,
    /// When the request head and body had been read.
    pub received_at: Instant,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// State shared by the handle, the accept loop and every connection.
pub(crate) struct Shared {
    defaults: Mutex<MockOptions>,
    requests: Mutex<Vec<RecordedRequest>>,
    probes: Mutex<Vec<RecordedRequest>>,
    sent_events: Mutex<Vec<(usize, usize, Instant)>>,
    connections: AtomicU64,
    /// `MockUpstreamConfig::no_history`.
    no_history: bool,
    /// Requests numbered so far when no history is kept.
    numbered: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn record_sent_event(&self, request: usize, event: usize, at: Instant) {
        if !self.no_history {
            lock(&self.sent_events).push((request, event, at));
        }
    }

    fn record_probe(&self, request: RecordedRequest) {
        lock(&self.probes).push(request);
    }

    fn record_request(&self, request: RecordedRequest) -> usize {
        let mut requests = lock(&self.requests);
        requests.push(request);
        requests.len() - 1
    }
}

/// A running mock LLM upstream. Dropping the handle stops the server too;
/// [`MockUpstream::shutdown`] also waits until the port is closed.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockUpstream {
    /// Starts a server on `127.0.0.1:0` (a free port).
    pub async fn start(config: MockUpstreamConfig) -> std::io::Result<MockUpstream> {
        MockUpstream::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await
    }

    /// Starts a server on `addr`; it is accepting connections when this returns.
    pub async fn start_on(
        addr: SocketAddr,
        config: MockUpstreamConfig,
    ) -> std::io::Result<MockUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            defaults: Mutex::new(config.defaults),
            requests: Mutex::new(Vec::new()),
            probes: Mutex::new(Vec::new()),
            sent_events: Mutex::new(Vec::new()),
            connections: AtomicU64::new(0),
            no_history: config.no_history,
            numbered: AtomicUsize::new(0),
        });
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), stopped));
        tracing::debug!(%addr, "mock upstream listening");
        Ok(MockUpstream {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT/v1`; a proxy appends `/chat/completions` etc.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request seen except health probes, in arrival order (recorded
    /// once its body was read). Indices match [`MockUpstream::sent_event_times`].
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// The health probes seen (`GET` or `HEAD` of `/`, `/v1` or `/v1/`), in
    /// arrival order. A proxy with health checks on sends them on its own, so
    /// they are kept apart from [`MockUpstream::requests`].
    pub fn probe_requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.probes).clone()
    }

    /// TCP connections accepted so far.
    pub fn connection_count(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Replaces the server-wide defaults for requests that arrive from now on.
    pub fn set_defaults(&self, options: MockOptions) {
        *lock(&self.shared.defaults) = options;
    }

    /// `(request index, event index, instant)` for every SSE event handed to a
    /// connection, in send order. The request index matches [`MockUpstream::requests`].
    pub fn sent_event_times(&self) -> Vec<(usize, usize, Instant)> {
        lock(&self.shared.sent_events).clone()
    }

    /// Stops accepting, closes the listener (the port refuses connections once
    /// this returns) and aborts every open connection.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                Err(error) => {
                    tracing::warn!(%error, "mock upstream accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(handle(request, shared).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(error) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%error, "mock upstream connection ended with an error");
    }
}

async fn handle(request: Request<Incoming>, shared: Arc<Shared>) -> Response<ResponseBody> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let message = format!("failed to read request body: {error}");
            return json_response(400, Frontend::OpenAiChat.error_body(400, &message));
        }
    };
    let path = parts.uri.path().to_owned();
    // Built only when a history is kept: a benchmark's mock skips the copies.
    let recorded = || RecordedRequest {
        method: parts.method.to_string(),
        path: path.clone(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
        received_at: Instant::now(),
    };
    let method = parts.method.clone();
    if is_probe(&method, &path) {
        if !shared.no_history {
            shared.record_probe(recorded());
        }
        return if method == Method::HEAD {
            empty_response(200)
        } else {
            json_response(200, Bytes::from_static(br#"{"status":"ok"}"#))
        };
    }
    let index = if shared.no_history {
        shared.numbered.fetch_add(1, Ordering::Relaxed)
    } else {
        shared.record_request(recorded())
    };
    if let Some(frontend) = Frontend::from_path(&path) {
        if method == Method::POST {
            return llm(frontend, &parts.headers, &body, index, shared).await;
        }
        let message = format!("method {method} not allowed on {path}");
        return json_response(405, frontend.error_body(405, &message));
    }
    match (method, path.as_str()) {
        (Method::GET, "/v1/models") => json_response(200, models_body()),
        (method, path) => {
            let message = format!("no route for {method} {path}");
            json_response(404, Frontend::OpenAiChat.error_body(404, &message))
        }
    }
}

/// `GET`/`HEAD` of the base paths: what health probes send.
fn is_probe(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD) && matches!(path, "/" | "/v1" | "/v1/")
}

async fn llm(
    frontend: Frontend,
    headers: &HeaderMap,
    body: &Bytes,
    index: usize,
    shared: Arc<Shared>,
) -> Response<ResponseBody> {
    let request: serde_json::Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(error) => {
            let message = format!("request body is not valid JSON: {error}");
            return json_response(400, frontend.error_body(400, &message));
        }
    };
    let model = request.get("model").and_then(|m| m.as_str()).unwrap_or("");
    let defaults = lock(&shared.defaults).clone();
    let options = match MockOptions::from_request_with_defaults(&defaults, headers, model) {
        Ok(options) => options,
        Err(error) => {
            return json_response(error.status(), frontend.error_body(400, &error.to_string()));
        }
    };
    let reply = match mock::reply(frontend, &request, &options) {
        Ok(reply) => reply,
        Err(error) => {
            return json_response(error.status(), frontend.error_body(400, &error.to_string()));
        }
    };
    if options.fault == Some(MockFault::NeverAnswer) {
        std::future::pending::<()>().await;
    }
    if !options.first_token_delay.is_zero() {
        tokio::time::sleep(options.first_token_delay).await;
    }
    let reset = options.fault == Some(MockFault::ResetMidStream);
    match reply {
        MockReply::Json { status, body } if reset => {
            let length = body.len();
            let body = EventBody::new(Vec::new(), Duration::ZERO, true, index, shared);
            let mut response = response(status, "application/json", body.boxed_unsync());
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, header::HeaderValue::from(length));
            response
        }
        MockReply::Json { status, body } => json_response(status, body),
        MockReply::Stream { mut events } => {
            if reset {
                events.truncate(mock::reset_point(events.len()));
            }
            let body = EventBody::new(events, options.inter_chunk_delay, reset, index, shared);
            let mut response = response(200, "text/event-stream", body.boxed_unsync());
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-cache"),
            );
            response
        }
    }
}

fn models_body() -> Bytes {
    let data: Vec<serde_json::Value> = MOCK_MODELS
        .iter()
        .map(|id| {
            serde_json::json!({
                "id": id,
                "object": "model",
                "created": MOCK_CREATED_AT,
                "owned_by": "llm-proxy-mock",
            })
        })
        .collect();
    Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string())
}

fn response(status: u16, content_type: &'static str, body: ResponseBody) -> Response<ResponseBody> {
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    if status == 429 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

fn json_response(status: u16, body: Bytes) -> Response<ResponseBody> {
    let body = Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync();
    response(status, "application/json", body)
}

fn empty_response(status: u16) -> Response<ResponseBody> {
    let body = Empty::new().map_err(|never| match never {}).boxed_unsync();
    response(status, "application/json", body)
}
