//! The observer seam: synchronous, non-blocking callbacks at each leg of an
//! exchange. Usage tracking and wire capture implement [`ExchangeObserver`];
//! they must return quickly (push into a bounded queue, drop and count when
//! it is full) because every callback runs on the request path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};

use crate::config::BackendType;
use crate::error::UpstreamError;
use crate::protocol::Frontend;

/// Facts about one client exchange, fixed when the request arrives.
#[derive(Debug, Clone)]
pub struct ExchangeContext {
    /// Unique request id (also sent to the client as `x-request-id`).
    pub request_id: Arc<str>,
    /// Front-end protocol.
    pub frontend: Frontend,
    /// Wall-clock receipt time.
    pub received_at: SystemTime,
    /// Monotonic receipt time; all durations are measured from it.
    pub started: Instant,
    /// Client socket address.
    pub client_addr: Option<SocketAddr>,
    /// `User-Agent` of the client.
    pub user_agent: Option<String>,
    /// The proxy API key's label when auth is on (never the key itself).
    pub proxy_user: Option<String>,
    /// Session identity (SPEC §7): header, request field, or fingerprint.
    pub session_id: Arc<str>,
    /// The `model` as the client sent it.
    pub requested_model: String,
    /// Whether the client asked for a stream.
    pub streaming: bool,
}

/// One attempt to serve an exchange from one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptInfo {
    /// 1-based attempt number within the exchange.
    pub attempt: u32,
    /// Backend instance name.
    pub backend: Arc<str>,
    /// Backend type.
    pub backend_type: BackendType,
    /// Model name sent upstream.
    pub model: String,
    /// True when a route rewriter (model replacement) chose this target.
    pub replaced: bool,
    /// The proxy asked this upstream for stream usage the client did not ask
    /// for; the usage-only chunk is in the backend leg but not the client leg.
    pub stream_usage_requested: bool,
}

/// Why an exchange ended before completing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IncompleteReason {
    /// The client went away before the response was complete.
    ClientDisconnect,
    /// The upstream broke the response off.
    BackendError,
    /// The upstream went silent past a timeout.
    Timeout,
}

impl IncompleteReason {
    /// The `incomplete_reason` name used in usage records.
    pub fn as_str(self) -> &'static str {
        match self {
            IncompleteReason::ClientDisconnect => "client_disconnect",
            IncompleteReason::BackendError => "backend_error",
            IncompleteReason::Timeout => "timeout",
        }
    }
}

/// How an exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Completion {
    /// The whole response reached the client (whatever its status).
    Completed,
    /// No response could be obtained; the client got a proxy error.
    Failed,
    /// The response started but did not finish.
    Incomplete(IncompleteReason),
}

/// The end of an exchange, reported exactly once.
#[derive(Debug, Clone)]
pub struct ExchangeOutcome {
    /// HTTP status sent to the client.
    pub status: u16,
    /// How it ended.
    pub completion: Completion,
    /// The attempt whose response the client got, if any.
    pub served_by: Option<AttemptInfo>,
    /// Attempts made (0 when the request failed before routing).
    pub attempts: u32,
    /// Receipt → first response body byte sent to the client.
    pub ttft: Option<Duration>,
    /// Time spent waiting on upstreams (sending to last upstream byte, all attempts).
    pub upstream_time: Duration,
    /// Receipt → end of the response to the client.
    pub total: Duration,
    /// Error message, when the exchange failed or broke off.
    pub error: Option<String>,
}

/// Callbacks at each leg of an exchange. All have no-op defaults.
///
/// Implementations must not block: they run on the request path.
pub trait ExchangeObserver: Send + Sync + 'static {
    /// Leg 1 in: the client's request as received (headers include credentials;
    /// observers that store headers must redact them).
    fn on_client_request(
        &self,
        _ex: &ExchangeContext,
        _method: &Method,
        _uri: &Uri,
        _headers: &HeaderMap,
        _body: &Bytes,
    ) {
    }
    /// Leg 2 out: a request about to be sent to a backend.
    fn on_backend_request(
        &self,
        _ex: &ExchangeContext,
        _attempt: &AttemptInfo,
        _uri: &Uri,
        _headers: &HeaderMap,
        _body: &Bytes,
    ) {
    }
    /// Leg 3 in: the backend's response head.
    fn on_backend_response_head(
        &self,
        _ex: &ExchangeContext,
        _attempt: &AttemptInfo,
        _status: StatusCode,
        _headers: &HeaderMap,
        _at: Instant,
    ) {
    }
    /// Leg 3 in: one chunk of the backend's response body, as received.
    fn on_backend_response_chunk(
        &self,
        _ex: &ExchangeContext,
        _attempt: &AttemptInfo,
        _chunk: &Bytes,
        _at: Instant,
    ) {
    }
    /// Leg 3 end: the backend's body ended (cleanly when `error` is `None`),
    /// or the attempt failed before a response head.
    fn on_backend_response_end(
        &self,
        _ex: &ExchangeContext,
        _attempt: &AttemptInfo,
        _error: Option<&UpstreamError>,
        _at: Instant,
    ) {
    }
    /// Leg 4 out: the response head sent to the client.
    fn on_client_response_head(
        &self,
        _ex: &ExchangeContext,
        _status: StatusCode,
        _headers: &HeaderMap,
        _at: Instant,
    ) {
    }
    /// Leg 4 out: one chunk of the response body sent to the client.
    fn on_client_response_chunk(&self, _ex: &ExchangeContext, _chunk: &Bytes, _at: Instant) {}
    /// The exchange ended; called exactly once per exchange.
    fn on_exchange_end(&self, _ex: &ExchangeContext, _outcome: &ExchangeOutcome) {}
}

/// A fan-out over several observers, itself an observer.
#[derive(Clone, Default)]
pub struct ObserverSet {
    observers: Arc<[Arc<dyn ExchangeObserver>]>,
}

impl ObserverSet {
    /// A set calling `observers` in order.
    pub fn new(observers: Vec<Arc<dyn ExchangeObserver>>) -> ObserverSet {
        ObserverSet {
            observers: observers.into(),
        }
    }

    /// True when nobody is listening (callers may skip building arguments).
    pub fn is_empty(&self) -> bool {
        self.observers.is_empty()
    }
}

impl std::fmt::Debug for ObserverSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObserverSet({} observers)", self.observers.len())
    }
}

impl ExchangeObserver for ObserverSet {
    fn on_client_request(
        &self,
        ex: &ExchangeContext,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &Bytes,
    ) {
        for o in self.observers.iter() {
            o.on_client_request(ex, method, uri, headers, body);
        }
    }
    fn on_backend_request(
        &self,
        ex: &ExchangeContext,
        attempt: &AttemptInfo,
        uri: &Uri,
        headers: &HeaderMap,
        body: &Bytes,
    ) {
        for o in self.observers.iter() {
            o.on_backend_request(ex, attempt, uri, headers, body);
        }
    }
    fn on_backend_response_head(
        &self,
        ex: &ExchangeContext,
        attempt: &AttemptInfo,
        status: StatusCode,
        headers: &HeaderMap,
        at: Instant,
    ) {
        for o in self.observers.iter() {
            o.on_backend_response_head(ex, attempt, status, headers, at);
        }
    }
    fn on_backend_response_chunk(
        &self,
        ex: &ExchangeContext,
        attempt: &AttemptInfo,
        chunk: &Bytes,
        at: Instant,
    ) {
        for o in self.observers.iter() {
            o.on_backend_response_chunk(ex, attempt, chunk, at);
        }
    }
    fn on_backend_response_end(
        &self,
        ex: &ExchangeContext,
        attempt: &AttemptInfo,
        error: Option<&UpstreamError>,
        at: Instant,
    ) {
        for o in self.observers.iter() {
            o.on_backend_response_end(ex, attempt, error, at);
        }
    }
    fn on_client_response_head(
        &self,
        ex: &ExchangeContext,
        status: StatusCode,
        headers: &HeaderMap,
        at: Instant,
    ) {
        for o in self.observers.iter() {
            o.on_client_response_head(ex, status, headers, at);
        }
    }
    fn on_client_response_chunk(&self, ex: &ExchangeContext, chunk: &Bytes, at: Instant) {
        for o in self.observers.iter() {
            o.on_client_response_chunk(ex, chunk, at);
        }
    }
    fn on_exchange_end(&self, ex: &ExchangeContext, outcome: &ExchangeOutcome) {
        for o in self.observers.iter() {
            o.on_exchange_end(ex, outcome);
        }
    }
}
