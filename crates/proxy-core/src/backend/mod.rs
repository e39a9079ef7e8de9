//! Backends: something that sends one request upstream and returns a
//! response whose body arrives as a stream of chunks.

mod http_backend;
mod idle;
mod mock_backend;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;

use crate::config::{BackendConfig, BackendType, UpstreamConfig};
use crate::error::{ConfigError, UpstreamError};
use crate::protocol::Frontend;

pub use http_backend::HttpBackend;
pub use idle::IdleTimeoutBody;
pub use mock_backend::MockBackend;

/// A response body from an upstream: chunks as they arrive, or the error that broke it off.
pub type UpstreamBody = UnsyncBoxBody<Bytes, UpstreamError>;

/// A boxed future, for object-safe async trait methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One request for a backend, already rewritten for it (model name, headers).
#[derive(Debug, Clone)]
pub struct BackendRequest {
    /// Client protocol (the backend speaks the same one in pass-through).
    pub frontend: Frontend,
    /// Query string of the client's request, without `?`.
    pub query: Option<String>,
    /// Headers to send (hop-by-hop and client credentials already handled).
    pub headers: HeaderMap,
    /// Body to send.
    pub body: Bytes,
}

/// A backend's answer: status, headers, and a streaming body.
pub struct BackendResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers as received.
    pub headers: HeaderMap,
    /// Body chunks.
    pub body: UpstreamBody,
}

impl std::fmt::Debug for BackendResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

/// Sends requests to one backend instance.
pub trait Backend: Send + Sync + 'static {
    /// Instance name.
    fn name(&self) -> &Arc<str>;
    /// Backend type.
    fn backend_type(&self) -> BackendType;
    /// The URI a request would be sent to (for observers and logs).
    fn uri_for(&self, request: &BackendRequest) -> Uri;
    /// Sends one request. Timeouts for connect, first byte and idle gaps are
    /// the backend's business: they surface as [`UpstreamError`]s.
    fn send(
        &self,
        request: BackendRequest,
    ) -> BoxFuture<'_, Result<BackendResponse, UpstreamError>>;
    /// Adds this backend's credential (or keeps the client's) to `headers`.
    fn authorize(&self, headers: &mut HeaderMap);
    /// Health checks found this backend's endpoint (`url`, normalized) down.
    /// Routing already avoids it; a backend may react (the default logs).
    fn on_endpoint_unhealthy(&self, url: &str, reason: &str) {
        tracing::info!(backend = %self.name(), url, reason, "backend endpoint reported unhealthy");
    }
    /// The endpoint at `url` is healthy again.
    fn on_endpoint_healthy(&self, url: &str) {
        tracing::info!(backend = %self.name(), url, "backend endpoint reported healthy");
    }
}

/// Builds the backend for a config entry.
pub fn build(
    name: &str,
    config: &BackendConfig,
    defaults: &UpstreamConfig,
) -> Result<Arc<dyn Backend>, ConfigError> {
    Ok(match config.backend_type {
        BackendType::Mock => Arc::new(MockBackend::new(name, config.timeouts(defaults))),
        BackendType::OpenAi | BackendType::Anthropic => {
            Arc::new(HttpBackend::new(name, config, defaults)?)
        }
    })
}

/// Request headers never forwarded upstream: hop-by-hop headers, ones the
/// proxy recomputes, and compression negotiation (bodies must stay readable
/// for the observers).
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "accept-encoding",
];

/// Response headers never forwarded to the client.
const NOT_RETURNED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// The client's headers as they should go upstream (credentials untouched;
/// see [`Backend::authorize`]).
pub fn forwardable_request_headers(client: &HeaderMap) -> HeaderMap {
    filter_headers(client, NOT_FORWARDED)
}

/// The upstream's response headers as they should go to the client.
pub fn returnable_response_headers(upstream: &HeaderMap) -> HeaderMap {
    filter_headers(upstream, NOT_RETURNED)
}

fn filter_headers(headers: &HeaderMap, drop: &[&str]) -> HeaderMap {
    // Headers named in `Connection` are hop-by-hop too.
    let listed: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let n = name.as_str();
        if drop.contains(&n) || listed.iter().any(|l| l == n) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The credential a client presented: `Authorization: Bearer` or `x-api-key`.
pub fn client_credential(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Puts `key` into `headers` the way `backend_type` expects it, replacing
/// whatever credential the client sent.
pub(crate) fn set_credential(
    headers: &mut HeaderMap,
    backend_type: BackendType,
    key: &HeaderValue,
) {
    headers.remove(http::header::AUTHORIZATION);
    headers.remove("x-api-key");
    headers.remove("api-key");
    match backend_type {
        BackendType::Anthropic => {
            headers.insert("x-api-key", key.clone());
        }
        BackendType::OpenAi | BackendType::Mock => {
            if let Ok(v) = HeaderValue::from_bytes(&[b"Bearer ", key.as_bytes()].concat()) {
                headers.insert(http::header::AUTHORIZATION, v);
            }
        }
    }
}

/// Moves a client credential to the header `backend_type` expects when the
/// client used the other style (pass-through case).
pub(crate) fn normalize_passthrough_credential(headers: &mut HeaderMap, backend_type: BackendType) {
    let Some(key) = client_credential(headers).map(str::to_owned) else {
        return;
    };
    if let Ok(value) = HeaderValue::from_str(&key) {
        let mut value = value;
        value.set_sensitive(true);
        set_credential(headers, backend_type, &value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("x-custom", HeaderValue::from_static("2"));
        h.insert("host", HeaderValue::from_static("proxy"));
        h.insert("content-length", HeaderValue::from_static("10"));
        h.insert("accept-encoding", HeaderValue::from_static("gzip"));
        let out = forwardable_request_headers(&h);
        assert_eq!(out.len(), 1);
        assert_eq!(out["x-custom"], "2");
    }

    #[test]
    fn credentials_follow_the_backend_style() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("client-key"));
        normalize_passthrough_credential(&mut h, BackendType::OpenAi);
        assert_eq!(h["authorization"], "Bearer client-key");
        assert!(h.get("x-api-key").is_none());
        set_credential(
            &mut h,
            BackendType::Anthropic,
            &HeaderValue::from_static("sk-ant"),
        );
        assert_eq!(h["x-api-key"], "sk-ant");
        assert!(h.get("authorization").is_none());
    }
}
