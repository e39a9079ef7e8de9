//! Health transitions as events: a broadcast channel for the
//! `/internal/health/events` stream, and [`HealthListener`]s that are told
//! when an endpoint goes down or comes back.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;

/// Events buffered per stream client; a client further behind is dropped.
pub const EVENT_BUFFER: usize = 256;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthEventKind {
    /// Probes marked the endpoint unhealthy.
    EndpointUnhealthy,
    /// Probes marked the endpoint healthy again.
    EndpointHealthy,
    /// A backend's circuit opened.
    CircuitOpen,
    /// A backend's circuit admitted a probe request.
    CircuitHalfOpen,
    /// A backend's circuit closed again.
    CircuitClosed,
}

impl HealthEventKind {
    /// The snake_case name (also the SSE `event:` field).
    pub fn as_str(self) -> &'static str {
        match self {
            HealthEventKind::EndpointUnhealthy => "endpoint_unhealthy",
            HealthEventKind::EndpointHealthy => "endpoint_healthy",
            HealthEventKind::CircuitOpen => "circuit_open",
            HealthEventKind::CircuitHalfOpen => "circuit_half_open",
            HealthEventKind::CircuitClosed => "circuit_closed",
        }
    }
}

/// One transition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthEvent {
    /// What changed.
    pub event: HealthEventKind,
    /// When, RFC 3339 UTC.
    pub timestamp: String,
    /// The normalized endpoint URL (`null` for a circuit of a backend without one).
    pub api_url: Option<String>,
    /// The backends concerned: those using the endpoint, or the circuit's backend.
    pub backends: Vec<String>,
    /// Why.
    pub reason: String,
}

impl HealthEvent {
    pub(crate) fn new(
        event: HealthEventKind,
        api_url: Option<String>,
        backends: Vec<String>,
        reason: String,
    ) -> HealthEvent {
        HealthEvent {
            event,
            timestamp: llm_proxy_core::time::rfc3339(SystemTime::now()),
            api_url,
            backends,
            reason,
        }
    }

    /// The event as one SSE message.
    pub fn to_sse(&self) -> String {
        let data = serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned());
        format!("event: {}\ndata: {data}\n\n", self.event.as_str())
    }
}

/// Told about endpoint transitions (when `notify_backends` is on). Called
/// synchronously from the probe task: implementations must return quickly
/// and never block. `url` is the normalized endpoint URL.
pub trait HealthListener: Send + Sync + 'static {
    /// The endpoint at `url` became unhealthy.
    fn on_endpoint_unhealthy(&self, url: &str, reason: &str);
    /// The endpoint at `url` is healthy again.
    fn on_endpoint_healthy(&self, url: &str);
}

/// Fans events out to stream subscribers and listeners.
pub(crate) struct EventHub {
    sender: broadcast::Sender<Arc<HealthEvent>>,
    listeners: RwLock<Vec<Arc<dyn HealthListener>>>,
    notify_listeners: bool,
}

impl EventHub {
    pub fn new(notify_listeners: bool) -> EventHub {
        let (sender, _) = broadcast::channel(EVENT_BUFFER);
        EventHub {
            sender,
            listeners: RwLock::new(Vec::new()),
            notify_listeners,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<HealthEvent>> {
        self.sender.subscribe()
    }

    pub fn add_listener(&self, listener: Arc<dyn HealthListener>) {
        self.listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listener);
    }

    /// Sends to every stream subscriber; never waits.
    pub fn publish(&self, event: HealthEvent) {
        // An error only means nobody is subscribed.
        let _ = self.sender.send(Arc::new(event));
    }

    /// Tells the listeners about an endpoint transition.
    pub fn notify_endpoint(&self, url: &str, healthy: bool, reason: &str) {
        if !self.notify_listeners {
            return;
        }
        let listeners = self
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for listener in listeners {
            let call = AssertUnwindSafe(|| {
                if healthy {
                    listener.on_endpoint_healthy(url);
                } else {
                    listener.on_endpoint_unhealthy(url, reason);
                }
            });
            if catch_unwind(call).is_err() {
                tracing::error!(endpoint = %url, "a health listener panicked; ignored");
            }
        }
    }
}
