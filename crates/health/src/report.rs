//! The `/internal/health` answer (SPEC §4). Missing values serialize as
//! `null`, never as absent keys.

use serde::Serialize;

/// The whole answer: `{"endpoint_health": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    /// Everything health knows.
    pub endpoint_health: EndpointHealthReport,
}

/// Probing switch, counts, endpoints and backends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointHealthReport {
    /// `health_check.enabled`: whether probes run.
    pub enabled: bool,
    /// Endpoint counts.
    pub summary: HealthSummary,
    /// One entry per normalized URL, sorted by URL.
    pub endpoints: Vec<EndpointReport>,
    /// One entry per backend instance, sorted by name.
    pub backends: Vec<BackendReport>,
}

/// Endpoint counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HealthSummary {
    /// Endpoints (distinct normalized URLs).
    pub total_endpoints: usize,
    /// Endpoints whose probes pass.
    pub healthy_endpoints: usize,
    /// Endpoints whose probes fail.
    pub unhealthy_endpoints: usize,
}

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointReport {
    /// Normalized URL.
    pub api_url: String,
    /// Probes say it is up (the circuit is reported separately).
    pub is_healthy: bool,
    /// Last ping check passed; `null` before the first check, when ping is
    /// off or unavailable.
    pub ping_check_success: Option<bool>,
    /// Last HTTP check passed; `null` before the first check or when off.
    pub http_check_success: Option<bool>,
    /// A raw ICMP socket could be opened (false also when ping is off).
    pub ping_available: bool,
    /// RFC 3339 time of the last ping check.
    pub last_ping_check_timestamp: Option<String>,
    /// RFC 3339 time of the last HTTP check.
    pub last_http_check_timestamp: Option<String>,
    /// Failed ping checks in a row.
    pub consecutive_ping_failures: u32,
    /// Failed HTTP checks in a row.
    pub consecutive_http_failures: u32,
    /// Mean round trip of the last passing ping check, ms.
    pub last_ping_latency_ms: Option<f64>,
    /// Duration of the last passing HTTP check, ms.
    pub last_http_latency_ms: Option<f64>,
    /// Status of the last HTTP check's final response.
    pub last_http_status_code: Option<u16>,
    /// Why the last ping check failed or could not run.
    pub last_ping_error: Option<String>,
    /// Why the last HTTP check failed.
    pub last_http_error: Option<String>,
    /// The most open circuit among the backends using this URL:
    /// `closed`, `half_open` or `open`.
    pub circuit_state: &'static str,
    /// Names of the backends configured with this URL.
    pub backends_using_url: Vec<String>,
}

/// One backend instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendReport {
    /// Backend name.
    pub name: String,
    /// Normalized URL (`null` for the in-process `mock` type).
    pub api_url: Option<String>,
    /// `openai`, `anthropic` or `mock`.
    pub backend_type: &'static str,
    /// Its endpoint's `is_healthy` (always true without an endpoint).
    pub is_endpoint_healthy: bool,
}
