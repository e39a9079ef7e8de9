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
    /// Echo requests per check. A check passes when at least one is answered.
    pub count: u32,
    /// Consecutive passing checks before a failed ping counts as passing again.
    pub recovery_threshold: u32,
}

impl Default for PingConfig {
    fn default() -> Self {
        PingConfig {
            enabled: true,
            interval_seconds: 30.0,
            timeout_seconds: 2.0,
            failure_threshold: 3,
            count: 3,
            recovery_threshold: 1,
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
    /// Path appended to the endpoint URL (`/models` probes `<api_url>/models`;
    /// empty probes `api_url` itself).
    pub path: String,
    /// A response with a status below this is up (default 500: any answer
    /// that is not a server error).
    pub healthy_below_status: u16,
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
            healthy_below_status: 500,
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
                "health_check.ping.recovery_threshold",
                self.ping.recovery_threshold,
            ),
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
        if !(200..=600).contains(&self.http.healthy_below_status) {
            return Err(ConfigError::new(
                "health_check.http.healthy_below_status",
                format!(
                    "must be between 200 and 600, got {}",
                    self.http.healthy_below_status
                ),
            ));
        }
        if self.ping.count > 100 {
            return Err(ConfigError::new(
                "health_check.ping.count",
                format!("must be at most 100, got {}", self.ping.count),
            ));
        }
        Ok(())
    }
}

/// The longest interval, timeout or cooldown honoured (one year): longer
/// values are capped, so instant arithmetic never overflows.
pub(crate) const MAX_SECONDS: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// A validated number of seconds as a `Duration`, capped at [`MAX_SECONDS`].
pub(crate) fn seconds(value: f64) -> std::time::Duration {
    std::time::Duration::try_from_secs_f64(value)
        .unwrap_or(MAX_SECONDS)
        .min(MAX_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_seed() {
        let c = HealthCheckConfig::default();
        c.validate().unwrap();
        assert_eq!(c.http.recovery_threshold, 1);
        assert_eq!(c.http.healthy_below_status, 500);
        assert_eq!(c.circuit_breaker.failure_threshold, 3);
        assert_eq!(c.circuit_breaker.open_cooldown_seconds, 30.0);
        assert_eq!(c.circuit_breaker.half_open_max_inflight, 1);
    }

    #[test]
    fn errors_name_the_key() {
        let mut c = HealthCheckConfig::default();
        c.http.method = "POST".into();
        assert_eq!(c.validate().unwrap_err().key, "health_check.http.method");
        let mut c = HealthCheckConfig::default();
        c.http.healthy_below_status = 100;
        assert_eq!(
            c.validate().unwrap_err().key,
            "health_check.http.healthy_below_status"
        );
        let mut c = HealthCheckConfig::default();
        c.ping.interval_seconds = f64::NAN;
        assert_eq!(
            c.validate().unwrap_err().key,
            "health_check.ping.interval_seconds"
        );
        let mut c = HealthCheckConfig::default();
        c.ping.recovery_threshold = 0;
        assert_eq!(
            c.validate().unwrap_err().key,
            "health_check.ping.recovery_threshold"
        );
    }

    #[test]
    fn huge_durations_saturate() {
        assert_eq!(seconds(1e300), MAX_SECONDS);
        assert_eq!(seconds(0.5), std::time::Duration::from_millis(500));
    }
}
