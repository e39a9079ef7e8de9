//! The replayer: re-send captured client requests to a proxy and compare
//! what comes back ([`replay_client`]), or act as the backend, answering each
//! captured backend request with its captured response at its original
//! chunk timing ([`serve_backend`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::format::{Direction, Entry};
use crate::inspect::by_request;
use crate::redact::REDACTED;

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// `--proxy-url` is not an `http://` URL.
    #[error("invalid proxy url {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// `speed` is neither 0 nor a finite number >= [`MIN_SPEED`].
    #[error("invalid speed {0}: expected 0 (as fast as possible) or a number >= 0.001")]
    BadSpeed(f64),
    /// The capture holds no client requests.
    #[error("the capture holds no client requests")]
    Empty,
}

/// A parsed HTTP head and body of one entry.
#[derive(Debug, Clone, Default)]
struct Message {
    first_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn parse_message(data: &[u8]) -> Message {
    let split = data.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, body) = match split {
        Some(i) => (&data[..i], &data[i + 4..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let first_line = lines.next().unwrap_or("").to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Message {
        first_line,
        headers,
        body: body.to_vec(),
    }
}

/// Request-line target as a path with query.
fn path_of(first_line: &str) -> (String, String) {
    let mut parts = first_line.split_whitespace();
    let method = parts.next().unwrap_or("POST").to_owned();
    let target = parts.next().unwrap_or("/");
    let path = target
        .parse::<Uri>()
        .ok()
        .and_then(|u| u.path_and_query().map(|p| p.as_str().to_owned()))
        .unwrap_or_else(|| target.to_owned());
    (method, path)
}

/// Headers that describe the connection or the framing, not the message.
const HOP_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "date",
];

/// One captured response leg: status, headers, and body pieces with their
/// offsets from the request.
#[derive(Debug, Clone, Default)]
struct CapturedResponse {
    status: u16,
    headers: Vec<(String, String)>,
    /// Offset of the head from the request.
    head_at: Duration,
    /// Body pieces (stream chunks, or one whole body).
    chunks: Vec<(Duration, Vec<u8>)>,
    stream: bool,
}

/// The longest wait replay honours: offsets from damaged or hand-made
/// captures (`ts` of 1e300, infinities) are clamped to it.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// The slowest `--speed` other than 0 (as fast as possible).
pub const MIN_SPEED: f64 = 0.001;

/// Seconds as a wait, clamped to `0..=MAX_WAIT` (NaN is 0).
fn wait_of(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs).map_or(MAX_WAIT, |d| d.min(MAX_WAIT))
}

fn offset(from: f64, to: f64) -> Duration {
    wait_of(to - from)
}

/// `t + d`, or `t + MAX_WAIT` (or `t`) when that does not fit in an `Instant`.
fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(MAX_WAIT))
        .unwrap_or(t)
}

/// The response of `dir` after the request entry at `req_ts`, from `es`
/// (the entries of one attempt or exchange, in sequence).
fn captured_response(es: &[&Entry], dir: Direction, req_ts: f64) -> Option<CapturedResponse> {
    let leg: Vec<&&Entry> = es.iter().filter(|e| e.dir == dir).collect();
    let head = leg.iter().find(|e| e.data.starts_with(b"HTTP/"))?;
    let msg = parse_message(&head.data);
    let status = msg
        .first_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let stream = leg.iter().any(|e| e.meta.flag("ss"));
    let chunks = if stream {
        leg.iter()
            .filter(|e| e.meta.int("ci").is_some())
            .map(|e| (offset(req_ts, e.ts), e.data.clone()))
            .collect()
    } else {
        vec![(offset(req_ts, head.ts), msg.body)]
    };
    Some(CapturedResponse {
        status,
        headers: msg.headers,
        head_at: offset(req_ts, head.ts),
        chunks,
        stream,
    })
}

/// A captured backend exchange the fake backend can answer.
#[derive(Debug, Clone)]
struct BackendScript {
    method: String,
    path: String,
    body: Vec<u8>,
    response: CapturedResponse,
    used: bool,
    /// When the proxy sent the captured request, and its writer sequence:
    /// identical requests are answered in capture order.
    sent: (f64, u64),
}

fn backend_scripts(entries: &[Entry]) -> Vec<BackendScript> {
    let mut out = Vec::new();
    for (_, es) in by_request(entries) {
        // Split into attempts: each backend request starts one.
        let starts: Vec<usize> = es
            .iter()
            .enumerate()
            .filter(|(_, e)| e.dir == Direction::ProxyToBackend)
            .map(|(i, _)| i)
            .collect();
        for (n, &i) in starts.iter().enumerate() {
            let end = starts.get(n + 1).copied().unwrap_or(es.len());
            let req = es[i];
            let msg = parse_message(&req.data);
            let (method, path) = path_of(&msg.first_line);
            if let Some(response) =
                captured_response(&es[i..end], Direction::BackendToProxy, req.ts)
            {
                out.push(BackendScript {
                    method,
                    path,
                    body: msg.body,
                    response,
                    used: false,
                    sent: (req.ts, req.seq),
                });
            }
        }
    }
    out.sort_by(|a, b| a.sent.0.total_cmp(&b.sent.0).then(a.sent.1.cmp(&b.sent.1)));
    out
}

/// A response body fed from a channel.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn pick(
    scripts: &Mutex<Vec<BackendScript>>,
    method: &str,
    path: &str,
    body: &[u8],
) -> Option<CapturedResponse> {
    let mut scripts = scripts.lock().unwrap_or_else(|p| p.into_inner());
    let exact = |s: &BackendScript| s.method == method && s.path == path && s.body == body;
    let same_path = |s: &BackendScript| s.method == method && s.path == path;
    let i = scripts
        .iter()
        .position(|s| !s.used && exact(s))
        .or_else(|| scripts.iter().position(exact))
        .or_else(|| scripts.iter().position(|s| !s.used && same_path(s)))?;
    scripts[i].used = true;
    Some(scripts[i].response.clone())
}

async fn answer(
    scripts: Arc<Mutex<Vec<BackendScript>>>,
    req: Request<Incoming>,
) -> Response<ChannelBody> {
    let received = Instant::now();
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (tx, rx) = mpsc::channel(64);
    let Some(captured) = pick(&scripts, &method, &path, &body) else {
        let msg = json!({"error": {"type": "not_found", "message": format!("no captured response for {method} {path}")}});
        let _ = tx.try_send(Bytes::from(msg.to_string()));
        let mut resp = Response::new(ChannelBody { rx });
        *resp.status_mut() = StatusCode::NOT_FOUND;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return resp;
    };
    tokio::time::sleep_until(after(received, captured.head_at)).await;
    let mut resp = Response::new(ChannelBody { rx });
    *resp.status_mut() = StatusCode::from_u16(captured.status).unwrap_or(StatusCode::OK);
    for (k, v) in &captured.headers {
        if HOP_HEADERS.contains(&k.as_str()) || v == REDACTED {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            HeaderName::try_from(k.as_str()),
            HeaderValue::try_from(v.as_str()),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    tokio::spawn(async move {
        for (at, chunk) in captured.chunks {
            tokio::time::sleep_until(after(received, at)).await;
            if tx.send(Bytes::from(chunk)).await.is_err() {
                return;
            }
        }
    });
    resp
}

/// A running fake backend.
#[derive(Debug)]
pub struct BackendServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Captured backend exchanges it can answer.
    pub exchanges: usize,
    task: tokio::task::JoinHandle<()>,
}

impl BackendServer {
    /// Serves until the process ends.
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Stops serving.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Starts the fake backend on `addr`: each request is matched to a captured
/// backend request (method, path and body; then method and path) and answered
/// with the captured status, headers and body chunks, each at its captured
/// offset from the request.
pub async fn serve_backend(
    entries: &[Entry],
    addr: SocketAddr,
) -> Result<BackendServer, ReplayError> {
    let scripts = backend_scripts(entries);
    let exchanges = scripts.len();
    let scripts = Arc::new(Mutex::new(scripts));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ReplayError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ReplayError::Bind { addr, source })?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let scripts = scripts.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let scripts = scripts.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(scripts, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(BackendServer {
        addr,
        exchanges,
        task,
    })
}

/// How one replayed request compared with the capture.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayResult {
    /// Captured request id.
    pub rid: String,
    /// `POST /v1/...`.
    pub request: String,
    /// Captured status to the client.
    pub expected_status: u16,
    /// Status now.
    pub status: u16,
    /// Whether the body bytes are identical.
    pub content_matches: bool,
    /// What differs, when something does.
    pub difference: Option<String>,
    /// Captured and replayed chunk counts (streams).
    pub chunks: (usize, usize),
    /// Largest difference between captured and replayed chunk arrival
    /// offsets (ms), when the chunking is the same.
    pub max_chunk_skew_ms: Option<f64>,
}

impl ReplayResult {
    /// Status and content both match.
    pub fn ok(&self) -> bool {
        self.status == self.expected_status && self.content_matches
    }
}

/// The whole replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    /// One per captured client request, in capture order.
    pub results: Vec<ReplayResult>,
}

impl ReplayReport {
    /// Requests whose status or content differ.
    pub fn mismatches(&self) -> usize {
        self.results.iter().filter(|r| !r.ok()).count()
    }

    /// A human report.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for r in &self.results {
            s.push_str(&format!(
                "{} {} {} status={}/{} content={} chunks={}/{} skew_ms={}{}\n",
                if r.ok() { "OK      " } else { "MISMATCH" },
                r.rid,
                r.request,
                r.status,
                r.expected_status,
                if r.content_matches {
                    "same"
                } else {
                    "different"
                },
                r.chunks.1,
                r.chunks.0,
                r.max_chunk_skew_ms
                    .map_or("-".to_owned(), |v| format!("{v:.1}")),
                r.difference
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default(),
            ));
        }
        s.push_str(&format!(
            "{} requests replayed, {} mismatches\n",
            self.results.len(),
            self.mismatches()
        ));
        s
    }

    /// A JSON report.
    pub fn json(&self) -> String {
        let v = json!({
            "requests": self.results.len(),
            "mismatches": self.mismatches(),
            "results": self.results.iter().map(|r| json!({
                "rid": r.rid, "request": r.request, "ok": r.ok(),
                "expected_status": r.expected_status, "status": r.status,
                "content_matches": r.content_matches, "difference": r.difference,
                "captured_chunks": r.chunks.0, "replayed_chunks": r.chunks.1,
                "max_chunk_skew_ms": r.max_chunk_skew_ms,
            })).collect::<Vec<_>>(),
        });
        serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
    }
}

/// Options of the client mode.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Base URL of the proxy (`http://127.0.0.1:8080`).
    pub proxy_url: String,
    /// Time scale: 2.0 replays twice as fast; 0 sends without waiting.
    pub speed: f64,
    /// Extra headers (e.g. a proxy key, since captured credentials are redacted).
    pub headers: Vec<(String, String)>,
}

struct Planned {
    rid: String,
    at: Duration,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
    expected: CapturedResponse,
}

fn plan(entries: &[Entry], extra: &[(String, String)]) -> Vec<Planned> {
    let mut out = Vec::new();
    let t0 = entries
        .iter()
        .filter(|e| e.dir == Direction::ClientToProxy)
        .map(|e| e.ts)
        .fold(f64::INFINITY, f64::min);
    for (rid, es) in by_request(entries) {
        let Some(req) = es.iter().find(|e| e.dir == Direction::ClientToProxy) else {
            continue;
        };
        let msg = parse_message(&req.data);
        let (method, path) = path_of(&msg.first_line);
        let mut headers = HeaderMap::new();
        for (k, v) in msg.headers.iter().chain(extra.iter()) {
            if HOP_HEADERS.contains(&k.as_str()) || v == REDACTED || k == "x-request-id" {
                continue;
            }
            if let (Ok(k), Ok(v)) = (
                HeaderName::try_from(k.as_str()),
                HeaderValue::try_from(v.as_str()),
            ) {
                headers.insert(k, v);
            }
        }
        let expected = captured_response(&es, Direction::ProxyToClient, req.ts).unwrap_or_default();
        out.push(Planned {
            rid: rid.to_owned(),
            at: offset(t0, req.ts),
            method: Method::from_bytes(method.as_bytes()).unwrap_or(Method::POST),
            path,
            headers,
            body: msg.body,
            expected,
        });
    }
    out.sort_by_key(|p| p.at);
    out
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<String> {
    if a == b {
        return None;
    }
    let i = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    Some(format!(
        "bodies differ at byte {i} (captured {} bytes, replayed {} bytes)",
        a.len(),
        b.len()
    ))
}

/// Re-sends every captured client request to `opts.proxy_url`, keeping the
/// captured spacing (scaled by `speed`), and compares status and body bytes.
pub async fn replay_client(
    entries: &[Entry],
    opts: &ReplayOptions,
) -> Result<ReplayReport, ReplayError> {
    let base: Uri =
        opts.proxy_url
            .trim_end_matches('/')
            .parse()
            .map_err(|e: http::uri::InvalidUri| ReplayError::BadUrl {
                url: opts.proxy_url.clone(),
                reason: e.to_string(),
            })?;
    if base.scheme_str() != Some("http") || base.authority().is_none() {
        return Err(ReplayError::BadUrl {
            url: opts.proxy_url.clone(),
            reason: "expected http://HOST:PORT".into(),
        });
    }
    if !(opts.speed == 0.0 || (opts.speed.is_finite() && opts.speed >= MIN_SPEED)) {
        return Err(ReplayError::BadSpeed(opts.speed));
    }
    let planned = plan(entries, &opts.headers);
    if planned.is_empty() {
        return Err(ReplayError::Empty);
    }
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in planned {
        let client = client.clone();
        let wait = if opts.speed > 0.0 {
            wait_of(p.at.as_secs_f64() / opts.speed)
        } else {
            Duration::ZERO
        };
        let url = format!("{}{}", opts.proxy_url.trim_end_matches('/'), p.path);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(after(start, wait)).await;
            let mut req = Request::builder().method(p.method.clone()).uri(&url);
            if let Some(h) = req.headers_mut() {
                *h = p.headers.clone();
            }
            let request = format!("{} {}", p.method, p.path);
            let sent = Instant::now();
            let mut result = ReplayResult {
                rid: p.rid.clone(),
                request,
                expected_status: p.expected.status,
                status: 0,
                content_matches: false,
                difference: None,
                chunks: (p.expected.chunks.len(), 0),
                max_chunk_skew_ms: None,
            };
            let resp = match req.body(Full::new(Bytes::from(p.body))) {
                Ok(r) => client.request(r).await,
                Err(e) => {
                    result.difference = Some(format!("cannot build request: {e}"));
                    return result;
                }
            };
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    result.difference = Some(format!("request failed: {e}"));
                    return result;
                }
            };
            result.status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut got: Vec<(Duration, Bytes)> = Vec::new();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Ok(d) = f.into_data() {
                            got.push((sent.elapsed(), d));
                        }
                    }
                    Err(e) => {
                        result.difference = Some(format!("body broke off: {e}"));
                        break;
                    }
                }
            }
            let replayed: Vec<u8> = got.iter().flat_map(|(_, b)| b.to_vec()).collect();
            let captured: Vec<u8> = p
                .expected
                .chunks
                .iter()
                .flat_map(|(_, b)| b.clone())
                .collect();
            result.content_matches = replayed == captured;
            if let Some(d) = first_difference(&captured, &replayed) {
                result.difference.get_or_insert(d);
            }
            result.chunks.1 = got.len();
            if p.expected.stream && got.len() == p.expected.chunks.len() {
                let skew = got
                    .iter()
                    .zip(&p.expected.chunks)
                    .map(|((a, _), (b, _))| (a.as_secs_f64() - b.as_secs_f64()).abs() * 1e3)
                    .fold(0.0, f64::max);
                result.max_chunk_skew_ms = Some((skew * 10.0).round() / 10.0);
            }
            result
        }));
    }
    let mut report = ReplayReport::default();
    for t in tasks {
        if let Ok(r) = t.await {
            report.results.push(r);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Meta, MetaValue};

    fn entry(ts: f64, seq: u64, dir: Direction, rid: &str, data: &str) -> Entry {
        let mut meta = Meta::default();
        meta.set("sid", MetaValue::Text("s".into()));
        meta.set("rid", MetaValue::Text(rid.into()));
        Entry {
            ts,
            dir,
            seq,
            data: data.as_bytes().to_vec(),
            meta,
        }
    }

    const REQ: &str = "POST /v1/chat/completions HTTP/1.1\r\n\r\n{}";

    #[test]
    fn identical_backend_requests_are_answered_in_capture_order() {
        // r1 at t=1 got a slow 200; r2 at t=10 got a fast 500.
        let entries = vec![
            entry(1.0, 1, Direction::ProxyToBackend, "r1", REQ),
            entry(
                6.0,
                2,
                Direction::BackendToProxy,
                "r1",
                "HTTP/1.1 200 OK\r\n\r\nok",
            ),
            entry(10.0, 3, Direction::ProxyToBackend, "r2", REQ),
            entry(
                10.1,
                4,
                Direction::BackendToProxy,
                "r2",
                "HTTP/1.1 500 Error\r\n\r\nno",
            ),
        ];
        let scripts = backend_scripts(&entries);
        let statuses: Vec<u16> = scripts.iter().map(|s| s.response.status).collect();
        assert_eq!(statuses, [200, 500]);
        let scripts = Mutex::new(scripts);
        let first = pick(&scripts, "POST", "/v1/chat/completions", b"{}").unwrap();
        let second = pick(&scripts, "POST", "/v1/chat/completions", b"{}").unwrap();
        assert_eq!((first.status, second.status), (200, 500));
    }

    #[test]
    fn absurd_timestamps_clamp_instead_of_panicking() {
        assert_eq!(offset(0.0, 1e300), MAX_WAIT);
        assert_eq!(offset(0.0, f64::INFINITY), MAX_WAIT);
        assert_eq!(offset(0.0, f64::NEG_INFINITY), Duration::ZERO);
        assert_eq!(offset(f64::NEG_INFINITY, 0.0), MAX_WAIT);
        assert_eq!(offset(0.0, f64::NAN), Duration::ZERO);
        assert_eq!(wait_of(1.0 / 1e-30), MAX_WAIT);
        let now = Instant::now();
        assert!(after(now, Duration::MAX) >= now);
        let entries = vec![
            entry(1e300, 1, Direction::ProxyToBackend, "r1", REQ),
            entry(
                f64::NEG_INFINITY,
                2,
                Direction::BackendToProxy,
                "r1",
                "HTTP/1.1 200 OK\r\n\r\nok",
            ),
        ];
        assert_eq!(backend_scripts(&entries).len(), 1);
    }
}
