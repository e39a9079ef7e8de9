//! Health metric names, in one place. Labels: `endpoint` (a normalized URL
//! from the config), `backend` (a backend name from the config), `probe`
//! (`ping` | `http`), `result` and `to` (fixed sets).

/// 1 when the endpoint is healthy, 0 when not; by `endpoint`.
pub const ENDPOINT_HEALTHY: &str = "llm_proxy_health_endpoint_healthy";
/// Probe checks, by `endpoint`, `probe` and `result` (`success`, `failure`, `unavailable`).
pub const PROBES_TOTAL: &str = "llm_proxy_health_probes_total";
/// Latency of passing checks (HTTP: to the final response head; ping: mean
/// round trip), by `endpoint` and `probe`.
pub const PROBE_LATENCY_SECONDS: &str = "llm_proxy_health_probe_latency_seconds";
/// Endpoint transitions, by `endpoint` and `to` (`healthy`, `unhealthy`).
pub const ENDPOINT_TRANSITIONS_TOTAL: &str = "llm_proxy_health_endpoint_transitions_total";
/// Circuit state by `backend`: 0 closed, 1 half-open, 2 open.
pub const CIRCUIT_STATE: &str = "llm_proxy_health_circuit_state";
/// Circuit transitions, by `backend` and `to` (`open`, `half_open`, `closed`).
pub const CIRCUIT_TRANSITIONS_TOTAL: &str = "llm_proxy_health_circuit_transitions_total";
/// Event-stream clients dropped because they fell behind.
pub const EVENT_CLIENTS_DROPPED_TOTAL: &str = "llm_proxy_health_event_clients_dropped_total";
