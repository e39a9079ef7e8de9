//! `[health_check]` configuration (the seed's keys).

use llm_proxy_core::ConfigError;
use serde::{Deserialize, Serialize};

/// Active probes and the passive circuit breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Master switch for probing.
    pub enabled: bool,
    /// Whether request outcomes can open a backend's circuit.
    pub circuit_breaker_enabled: bool,
    /// Whether backends are told when their endpoint changes state.
    pub notify_backends: bool,
    /// ICMP echo probe.
    pub ping: PingConfig,
    /// HTTP probe.
    pub http: HttpProbeConfig,
    /// Passive breaker thresholds.
    pub circuit_breaker: CircuitBreakerConfig,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            enabled: true,
            circuit_breaker_enabled: true,
            notify_backends: true,
            ping: PingConfig::default(),
            http: HttpProbeConfig::default(),
            circuit_breaker: CircuitBreakerConfig::default(),
        }
    }
}

/// ICMP echo probe settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PingConfig {
    /// Probe with ICMP echo.
    pub enabled: bool,
    /// Seconds between checks.
    pub interval_seconds: f64,
    /// Seconds to wait for each reply.
    pub timeout_seconds: f64,
    /// Consecutive failed checks before the endpoint is unhealthy.
    pub failure_threshold: u32,
    /// Echo requests per check.
    pub count: u32,
}

impl Default for PingConfig {
    fn default() -> Self {
        PingConfig {
            enabled: true,
            interval_seconds: 30.0,
            timeout_seconds: 2.0,
            failure_threshold: 3,
            count: 3,
        }
    }
}

/// HTTP probe settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpProbeConfig {
    /// Probe with HTTP.
    pub enabled: bool,
    /// Seconds between checks.
    pub interval_seconds: f64,
    /// Seconds to wait for a response.
    pub timeout_seconds: f64,
    /// Consecutive failed checks before the endpoint is unhealthy.
    pub failure_threshold: u32,
    /// Consecutive successes before an unhealthy endpoint is healthy again.
    pub recovery_threshold: u32,
    /// `HEAD` or `GET`.
    pub method: String,
    /// Path appended to the endpoint URL.
    pub path: String,
}

impl Default for HttpProbeConfig {
    fn default() -> Self {
        HttpProbeConfig {
            enabled: true,
            interval_seconds: 30.0,
            timeout_seconds: 5.0,
            failure_threshold: 3,
            recovery_threshold: 1,
            method: "HEAD".into(),
            path: String::new(),
        }
    }
}

/// Passive circuit breaker on real request outcomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// Seconds an open circuit waits before admitting a probe request.
    pub open_cooldown_seconds: f64,
    /// Requests admitted at once while half-open.
    pub half_open_max_inflight: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            failure_threshold: 3,
            open_cooldown_seconds: 30.0,
            half_open_max_inflight: 1,
        }
    }
}

impl HealthCheckConfig {
    /// Checks values; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            (
                "health_check.ping.interval_seconds",
                self.ping.interval_seconds,
            ),
            (
                "health_check.ping.timeout_seconds",
                self.ping.timeout_seconds,
            ),
            (
                "health_check.http.interval_seconds",
                self.http.interval_seconds,
            ),
            (
                "health_check.http.timeout_seconds",
                self.http.timeout_seconds,
            ),
            (
                "health_check.circuit_breaker.open_cooldown_seconds",
                self.circuit_breaker.open_cooldown_seconds,
            ),
        ];
        for (key, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::new(
                    key,
                    format!("must be a positive number, got {v}"),
                ));
            }
        }
        let at_least_one = [
            (
                "health_check.ping.failure_threshold",
                self.ping.failure_threshold,
            ),
            ("health_check.ping.count", self.ping.count),
            (
                "health_check.http.failure_threshold",
                self.http.failure_threshold,
            ),
            (
                "health_check.http.recovery_threshold",
                self.http.recovery_threshold,
            ),
            (
                "health_check.circuit_breaker.failure_threshold",
                self.circuit_breaker.failure_threshold,
            ),
            (
                "health_check.circuit_breaker.half_open_max_inflight",
                self.circuit_breaker.half_open_max_inflight,
            ),
        ];
        for (key, v) in at_least_one {
            if v == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        if !matches!(
            self.http.method.to_ascii_uppercase().as_str(),
            "HEAD" | "GET"
        ) {
            return Err(ConfigError::new(
                "health_check.http.method",
                format!("must be HEAD or GET, got {:?}", self.http.method),
            ));
        }
        Ok(())
    }
}
