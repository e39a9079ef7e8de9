//! Errors of the core crate. Each says who failed: the client (bad request),
//! the upstream (connect, timeout, protocol) or the proxy itself.

use std::fmt;

/// A configuration value that is wrong, with the key path that holds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// Dotted key path, e.g. `backends.openai.api_url`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ConfigError {
    /// A config error for `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// What went wrong talking to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamErrorKind {
    /// TCP/TLS connection could not be established (or was refused).
    Connect,
    /// No connection within the connect timeout.
    ConnectTimeout,
    /// No response head within the first-byte timeout.
    FirstByteTimeout,
    /// No body chunk within the idle timeout.
    IdleTimeout,
    /// The connection broke or the upstream spoke invalid HTTP.
    Protocol,
    /// The upstream's answer could not be understood (e.g. invalid JSON).
    InvalidResponse,
}

impl UpstreamErrorKind {
    /// True for timeouts (mapped to 504 rather than 502).
    pub fn is_timeout(self) -> bool {
        matches!(
            self,
            UpstreamErrorKind::ConnectTimeout
                | UpstreamErrorKind::FirstByteTimeout
                | UpstreamErrorKind::IdleTimeout
        )
    }

    /// A short stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::ConnectTimeout => "connect_timeout",
            UpstreamErrorKind::FirstByteTimeout => "first_byte_timeout",
            UpstreamErrorKind::IdleTimeout => "idle_timeout",
            UpstreamErrorKind::Protocol => "protocol",
            UpstreamErrorKind::InvalidResponse => "invalid_response",
        }
    }
}

impl fmt::Display for UpstreamErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An upstream failure, naming the backend that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backend {backend:?}: {kind}: {detail}")]
pub struct UpstreamError {
    /// Backend instance name.
    pub backend: String,
    /// What failed.
    pub kind: UpstreamErrorKind,
    /// Human-readable detail (never contains credentials).
    pub detail: String,
}

impl UpstreamError {
    /// A new upstream error.
    pub fn new(
        backend: impl Into<String>,
        kind: UpstreamErrorKind,
        detail: impl Into<String>,
    ) -> UpstreamError {
        UpstreamError {
            backend: backend.into(),
            kind,
            detail: detail.into(),
        }
    }

    /// The HTTP status the client sees for this failure: 504 for timeouts, else 502.
    pub fn status(&self) -> u16 {
        if self.kind.is_timeout() { 504 } else { 502 }
    }
}

/// A failed exchange, before any byte reached the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The client sent something we cannot serve (400).
    #[error("{0}")]
    BadRequest(String),
    /// The request names a backend that is not configured (400).
    #[error("unknown backend {backend:?} in model {model:?}; configured backends: {known}")]
    UnknownBackend {
        /// The backend part of the model string.
        backend: String,
        /// The full model string as sent.
        model: String,
        /// Comma-separated configured backend names.
        known: String,
    },
    /// Every route target failed; the last failure is reported (502/504).
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
}

impl ProxyError {
    /// The HTTP status code for this error.
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::BadRequest(_) | ProxyError::UnknownBackend { .. } => 400,
            ProxyError::Upstream(e) => e.status(),
        }
    }

    /// Who failed, as a stable label: `client` or `upstream`.
    pub fn culprit(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) | ProxyError::UnknownBackend { .. } => "client",
            ProxyError::Upstream(_) => "upstream",
        }
    }
}
