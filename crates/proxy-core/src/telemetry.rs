//! Metric names and label helpers, in one place. Labels come from bounded
//! sets only: backend names (from config), front-end protocol, status class,
//! error kind — never paths, keys, models or session ids.

/// Exchanges finished, by `frontend`, `backend`, `status_class`, `outcome`.
pub const EXCHANGES_TOTAL: &str = "llm_proxy_exchanges_total";
/// Receipt → end of response, by `frontend`, `backend`.
pub const EXCHANGE_DURATION_SECONDS: &str = "llm_proxy_exchange_duration_seconds";
/// Receipt → first response byte to the client, by `frontend`, `backend`.
pub const TTFT_SECONDS: &str = "llm_proxy_ttft_seconds";
/// Proxy time (total minus upstream waiting), by `frontend`.
pub const PROXY_OVERHEAD_SECONDS: &str = "llm_proxy_overhead_seconds";
/// Upstream attempts, by `backend`, `result` (`ok`, `status_5xx`, `status_429`, or an error kind).
pub const UPSTREAM_ATTEMPTS_TOTAL: &str = "llm_proxy_upstream_attempts_total";
/// Failovers to the next route target, by `from_backend`.
pub const FAILOVERS_TOTAL: &str = "llm_proxy_failovers_total";

/// HTTP requests of any route, by `route` (a fixed set) and `status_class`.
pub const HTTP_REQUESTS_TOTAL: &str = "llm_proxy_http_requests_total";
/// Receipt → response head, by `route`.
pub const HTTP_RESPONSE_HEAD_SECONDS: &str = "llm_proxy_http_response_head_seconds";
/// Requests with a missing or wrong proxy API key.
pub const AUTH_FAILURES_TOTAL: &str = "llm_proxy_auth_failures_total";
/// Client addresses locked out by the brute-force guard.
pub const AUTH_LOCKOUTS_TOTAL: &str = "llm_proxy_auth_lockouts_total";

/// `2xx`, `4xx`, … for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
