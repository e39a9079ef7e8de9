//! `[usage_tracking]` configuration (the seed's keys, plus retention,
//! prices and queue sizing).

use std::collections::BTreeMap;

use llm_proxy_core::ConfigError;
use serde::{Deserialize, Serialize};

use crate::pricing::ModelPrice;

/// Where and how usage records are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageTrackingConfig {
    /// Record usage at all.
    pub enabled: bool,
    /// Store file (unless `database_url` is set): `.json` keeps the seed's single-document format; any other
    /// name is a SQLite database; `:memory:` keeps records in memory only.
    pub persistence_path: String,
    /// Seconds between batched writes (at most this much is lost on a crash).
    pub flush_interval_seconds: f64,
    /// Built records held in memory while the store is unavailable.
    pub max_records_in_memory: usize,
    /// Delete records older than this many days (never, when unset).
    pub retention_days: Option<u32>,
    /// A price table to use instead of the bundled one (same JSON format).
    pub prices_path: Option<String>,
    /// Per-model price overrides (USD per token).
    pub price_overrides: BTreeMap<String, ModelPrice>,
    /// Finished exchanges waiting for the record builder before new ones are
    /// dropped (and counted).
    pub queue_capacity: usize,
    /// `postgres://user:password@host:port/db`: keep records in PostgreSQL
    /// (shared by every proxy pointing at it) instead of `persistence_path`.
    /// Secret: never logged.
    pub database_url: Option<DatabaseUrl>,
    /// The Postgres store's local spill journal: records the database could
    /// not take (down or slow), replayed in order when it answers again.
    /// One per proxy instance.
    pub spill_path: String,
    /// Bound of the spill journal in bytes; past it, batches stay in memory
    /// (`max_records_in_memory`) and then are dropped, counted.
    pub spill_max_bytes: u64,
    /// The least share (0–1) of the machine's CPU time that must have gone
    /// unused lately for the proxy to count tokens exactly (on an
    /// idle-priority thread); below it records get estimates, so a
    /// saturated proxy spends nothing on tokenizing. 0: count whenever the
    /// counting thread gets CPU.
    pub exact_counting_min_idle_cpu: f64,
    /// While less than `exact_counting_min_idle_cpu` of the CPU is idle,
    /// the SQLite store writes each batch as one packed row and indexes it
    /// later, on idle CPU; past this many records waiting, batches are
    /// indexed as they are written again. 0: never defer.
    pub deferred_indexing_max_records: u64,
}

/// A database URL whose password never shows in `Debug` output.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(pub String);

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::store::postgres::redacted_url(&self.0))
    }
}

impl Default for UsageTrackingConfig {
    fn default() -> Self {
        UsageTrackingConfig {
            enabled: true,
            persistence_path: "./var/usage.sqlite3".into(),
            flush_interval_seconds: 1.0,
            max_records_in_memory: 10_000,
            retention_days: None,
            prices_path: None,
            price_overrides: BTreeMap::new(),
            queue_capacity: 65_536,
            database_url: None,
            spill_path: "./var/usage-spill.jsonl".into(),
            spill_max_bytes: 1 << 30,
            exact_counting_min_idle_cpu: 0.2,
            deferred_indexing_max_records: 1_000_000,
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
        if !(0.0..=1.0).contains(&self.exact_counting_min_idle_cpu) {
            return Err(ConfigError::new(
                "usage_tracking.exact_counting_min_idle_cpu",
                format!(
                    "must be a share between 0 and 1, got {}",
                    self.exact_counting_min_idle_cpu
                ),
            ));
        }
        if self.persistence_path.trim().is_empty() {
            return Err(ConfigError::new(
                "usage_tracking.persistence_path",
                "must not be empty",
            ));
        }
        if self.retention_days == Some(0) {
            return Err(ConfigError::new(
                "usage_tracking.retention_days",
                "must be at least 1 (or unset)",
            ));
        }
        if self.queue_capacity == 0 {
            return Err(ConfigError::new(
                "usage_tracking.queue_capacity",
                "must be at least 1",
            ));
        }
        if let Some(url) = &self.database_url {
            crate::store::postgres::check_url(&url.0)
                .map_err(|e| ConfigError::new("usage_tracking.database_url", e))?;
            if self.spill_path.trim().is_empty() {
                return Err(ConfigError::new(
                    "usage_tracking.spill_path",
                    "must not be empty",
                ));
            }
            if self.spill_max_bytes < 1 << 20 {
                return Err(ConfigError::new(
                    "usage_tracking.spill_max_bytes",
                    "must be at least 1048576 (1 MiB)",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_cpu_share_for_exact_counting_is_a_share() {
        for ok in [0.0, 0.2, 1.0] {
            let c = UsageTrackingConfig {
                exact_counting_min_idle_cpu: ok,
                ..UsageTrackingConfig::default()
            };
            assert!(c.validate().is_ok(), "{ok}");
        }
        for bad in [-0.1, 1.5, f64::NAN] {
            let c = UsageTrackingConfig {
                exact_counting_min_idle_cpu: bad,
                ..UsageTrackingConfig::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.contains("usage_tracking.exact_counting_min_idle_cpu"),
                "{bad}: {e}"
            );
        }
    }
}
