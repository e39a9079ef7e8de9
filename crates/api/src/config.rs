//! Server and auth configuration.

use std::net::IpAddr;
use std::time::Duration;

use llm_proxy_core::{ConfigError, Secret};
use serde::{Deserialize, Serialize};

/// The listener, limits and shutdown behaviour of the HTTP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to bind; loopback by default.
    pub host: String,
    /// Port to bind; 0 picks a free one.
    pub port: u16,
    /// Largest accepted request body; larger ones get 413.
    pub max_request_body_bytes: u64,
    /// Longest time a client may take to send its request head.
    pub header_read_timeout_seconds: f64,
    /// Longest time a client may take to send its request body.
    pub body_read_timeout_seconds: f64,
    /// On shutdown, how long in-flight requests and streams may run on.
    pub shutdown_grace_seconds: f64,
    /// Authentication.
    pub auth: AuthConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            max_request_body_bytes: 32 * 1024 * 1024,
            header_read_timeout_seconds: 30.0,
            body_read_timeout_seconds: 60.0,
            shutdown_grace_seconds: 30.0,
            auth: AuthConfig::default(),
        }
    }
}

/// Client authentication with proxy API keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Turn auth off entirely (only allowed on a loopback address).
    pub disable_auth: bool,
    /// Accepted keys (`Authorization: Bearer` or `x-api-key`). Empty = auth off on loopback.
    #[serde(skip_serializing)]
    pub api_keys: Vec<Secret>,
    /// Failed attempts from one client address before it is locked out.
    pub max_failed_attempts: u32,
    /// Window in which failed attempts are counted.
    pub failure_window_seconds: f64,
    /// How long a locked-out address gets 429.
    pub lockout_seconds: f64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            disable_auth: false,
            api_keys: Vec::new(),
            max_failed_attempts: 10,
            failure_window_seconds: 60.0,
            lockout_seconds: 60.0,
        }
    }
}

impl AuthConfig {
    /// True when requests must carry a key.
    pub fn enforced(&self) -> bool {
        !self.disable_auth && !self.api_keys.is_empty()
    }
}

impl ServerConfig {
    /// Checks values, and refuses an exposed listener without auth.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ip: IpAddr = self.ip()?;
        if !ip.is_loopback() {
            if self.auth.disable_auth {
                return Err(ConfigError::new(
                    "auth.disable_auth",
                    format!(
                        "refusing to listen on non-loopback address {ip} with auth disabled: anyone who can reach \
                         this port could spend your LLM credits. Set auth.api_keys (or API_KEYS) and remove \
                         disable_auth, or bind 127.0.0.1"
                    ),
                ));
            }
            if self.auth.api_keys.is_empty() {
                return Err(ConfigError::new(
                    "auth.api_keys",
                    format!(
                        "refusing to listen on non-loopback address {ip} without API keys: anyone who can reach \
                         this port could spend your LLM credits. Set API_KEYS=key1,key2 (or auth.api_keys in the \
                         config file), or bind 127.0.0.1"
                    ),
                ));
            }
        }
        if self
            .auth
            .api_keys
            .iter()
            .any(|k| k.expose().trim().is_empty())
        {
            return Err(ConfigError::new("auth.api_keys", "keys must not be empty"));
        }
        if self.max_request_body_bytes == 0 {
            return Err(ConfigError::new(
                "max_request_body_bytes",
                "must be greater than 0",
            ));
        }
        for (key, v) in [
            (
                "header_read_timeout_seconds",
                self.header_read_timeout_seconds,
            ),
            ("body_read_timeout_seconds", self.body_read_timeout_seconds),
            (
                "auth.failure_window_seconds",
                self.auth.failure_window_seconds,
            ),
            ("auth.lockout_seconds", self.auth.lockout_seconds),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::new(
                    key,
                    format!("must be a positive number of seconds, got {v}"),
                ));
            }
        }
        if !(self.shutdown_grace_seconds.is_finite() && self.shutdown_grace_seconds >= 0.0) {
            return Err(ConfigError::new(
                "shutdown_grace_seconds",
                "must be 0 or more seconds",
            ));
        }
        if self.auth.max_failed_attempts == 0 {
            return Err(ConfigError::new(
                "auth.max_failed_attempts",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The bind address as an IP.
    pub fn ip(&self) -> Result<IpAddr, ConfigError> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        if host == "localhost" {
            return Ok(IpAddr::from([127, 0, 0, 1]));
        }
        host.parse()
            .map_err(|_| ConfigError::new("host", format!("{:?} is not an IP address", self.host)))
    }

    pub(crate) fn secs(v: f64) -> Duration {
        Duration::try_from_secs_f64(v).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_bind_needs_keys() {
        let mut c = ServerConfig {
            host: "0.0.0.0".into(),
            ..ServerConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert_eq!(err.key, "auth.api_keys");
        assert!(err.message.contains("API_KEYS"));
        c.auth.api_keys = vec![Secret::new("k")];
        c.validate().unwrap();
        c.auth.disable_auth = true;
        assert_eq!(c.validate().unwrap_err().key, "auth.disable_auth");
    }

    #[test]
    fn loopback_without_keys_is_fine() {
        ServerConfig::default().validate().unwrap();
        let c = ServerConfig {
            host: "::1".into(),
            ..ServerConfig::default()
        };
        c.validate().unwrap();
    }
}
