//! `[usage_tracking]` configuration (the seed's keys).

use llm_proxy_core::ConfigError;
use serde::{Deserialize, Serialize};

/// Where and how usage records are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageTrackingConfig {
    /// Record usage at all.
    pub enabled: bool,
    /// Store file: `.sqlite3`/`.db` for SQLite, `.json` for the seed's single-document format.
    pub persistence_path: String,
    /// Seconds between batched writes.
    pub flush_interval_seconds: f64,
    /// Records kept in memory for `/v1/usage/recent`.
    pub max_records_in_memory: usize,
}

impl Default for UsageTrackingConfig {
    fn default() -> Self {
        UsageTrackingConfig {
            enabled: true,
            persistence_path: "./var/usage.sqlite3".into(),
            flush_interval_seconds: 1.0,
            max_records_in_memory: 10_000,
        }
    }
}

impl UsageTrackingConfig {
    /// Checks values; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.flush_interval_seconds.is_finite() && self.flush_interval_seconds > 0.0) {
            return Err(ConfigError::new(
                "usage_tracking.flush_interval_seconds",
                format!(
                    "must be a positive number, got {}",
                    self.flush_interval_seconds
                ),
            ));
        }
        if self.persistence_path.trim().is_empty() {
            return Err(ConfigError::new(
                "usage_tracking.persistence_path",
                "must not be empty",
            ));
        }
        Ok(())
    }
}
