//! Backend health for llm-proxy: active probes, the per-endpoint state
//! machine, a passive circuit breaker per backend, and the
//! `llm_proxy_core::EndpointHealth` view routing reads.
//!
//! ```text
//! probe tasks (one per endpoint and kind)        request path (no I/O)
//!   ping: raw ICMP socket on a blocking thread     Pipeline::plan ── is_available ─┐
//!   http: HEAD/GET api_url + path, no creds        before attempt ── try_admit ────┤ HealthMonitor
//!        │                                         after attempt ─── record_outcome┘   │
//!        ▼                                                                             ▼
//!   EndpointHealthState (shared per normalized URL)                    CircuitBreaker per backend
//!        └─ transitions ─► WARN log, metrics, HealthEvent broadcast (SSE), HealthListener
//! ```
//!
//! - [`HealthMonitor::start`] takes the `[health_check]` config and the
//!   backends ([`BackendSpec::from_routing`]) and returns the monitor (an
//!   `EndpointHealth`) plus [`HealthTasks`], the probe tasks, with a
//!   shutdown.
//! - [`EndpointUrl`] normalizes `api_url`s; backends whose URLs normalize
//!   alike share one endpoint state. The in-process `mock` type has none:
//!   it is always endpoint-healthy (its breaker still works).
//! - [`HealthRoutes`] serves `/internal/health` and `/internal/health/events`.
//! - Metric names are in [`telemetry`].

pub mod breaker;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod events;
pub mod monitor;
pub mod probe;
pub mod report;
pub mod routes;
pub mod state;
pub mod telemetry;

pub use breaker::CircuitState;
pub use config::{CircuitBreakerConfig, HealthCheckConfig, HttpProbeConfig, PingConfig};
pub use endpoint::EndpointUrl;
pub use error::HealthError;
pub use events::{HealthEvent, HealthEventKind, HealthListener};
pub use monitor::{BackendSpec, HealthMonitor, HealthStopper, HealthTasks};
pub use report::{
    BackendReport, EndpointHealthReport, EndpointReport, HealthReport, HealthSummary,
};
pub use routes::HealthRoutes;
