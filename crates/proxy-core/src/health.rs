//! The health seam: routing asks whether a backend may get traffic, and
//! reports how each attempt went. The `health` crate implements it with
//! probes and a circuit breaker; [`AlwaysAvailable`] is the no-op default.

use std::time::Duration;

use crate::error::UpstreamErrorKind;

/// How one attempt against a backend went, as health sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptOutcome {
    /// A response below 500 (and not 429) arrived and, for streams, finished.
    Success,
    /// The upstream answered with this status (5xx or 429).
    Status {
        /// HTTP status.
        status: u16,
        /// Parsed `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The attempt failed without a usable response.
    Error(UpstreamErrorKind),
    /// The client went away; says nothing about the backend.
    ClientGone,
}

/// Whether a backend may be sent traffic, and what happened when it was.
pub trait EndpointHealth: Send + Sync + 'static {
    /// True when the backend is believed reachable (endpoint healthy and its
    /// circuit not open). Pure: must not consume a half-open probe slot.
    fn is_available(&self, backend: &str) -> bool;
    /// Called right before sending; may refuse (e.g. a half-open circuit whose
    /// single probe slot is taken). Defaults to admitting.
    fn try_admit(&self, _backend: &str) -> bool {
        true
    }
    /// Reports the outcome of an attempt admitted by [`EndpointHealth::try_admit`].
    fn record_outcome(&self, backend: &str, outcome: AttemptOutcome);
}

/// Health view that considers every backend available.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysAvailable;

impl EndpointHealth for AlwaysAvailable {
    fn is_available(&self, _backend: &str) -> bool {
        true
    }
    fn record_outcome(&self, _backend: &str, _outcome: AttemptOutcome) {}
}
