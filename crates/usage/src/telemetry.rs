//! Usage metric names, in one place. Labels are backend names (from config)
//! and fixed sets only.

/// Records built (visible to queries; written at the next flush), by `backend`.
pub const RECORDS_TOTAL: &str = "llm_proxy_usage_records_total";
/// Exchanges that produced no record, by `reason` (`queue_full`, `shut_down`, `buffer_full`).
pub const RECORDS_DROPPED_TOTAL: &str = "llm_proxy_usage_records_dropped_total";
/// Tokens of record, by `backend` and `kind` (`prompt`, `completion`, `cached`, `reasoning`).
pub const TOKENS_TOTAL: &str = "llm_proxy_usage_tokens_total";
/// Known cost in USD, by `backend` (a gauge that only grows: costs are fractional).
pub const COST_USD_TOTAL: &str = "llm_proxy_usage_cost_usd_total";
/// Records a backend served whose model has no price (`cost_source =
/// "unknown"`: in neither the price table nor `price_overrides`), by `backend`.
pub const UNPRICED_RECORDS_TOTAL: &str = "llm_proxy_usage_unpriced_records_total";
/// Exchanges waiting for the record builder.
pub const QUEUE_DEPTH: &str = "llm_proxy_usage_queue_depth";
/// Records built but not yet in the store.
pub const PENDING_RECORDS: &str = "llm_proxy_usage_pending_records";
/// Records stored packed while the machine was busy, not yet indexed (SQLite).
pub const DEFERRED_RECORDS: &str = "llm_proxy_usage_deferred_records";
/// Exchange end → record durable in the store.
pub const FLUSH_LAG_SECONDS: &str = "llm_proxy_usage_flush_lag_seconds";
/// Failed store writes.
pub const STORE_ERRORS_TOTAL: &str = "llm_proxy_usage_store_errors_total";
/// Records whose tokens were estimated because the builder fell behind.
pub const ESTIMATED_TOTAL: &str = "llm_proxy_usage_estimated_records_total";
/// Records in the Postgres store's spill journal, waiting for the database.
pub const SPILL_RECORDS: &str = "llm_proxy_usage_spill_records";
/// Bytes in the Postgres store's spill journal.
pub const SPILL_BYTES: &str = "llm_proxy_usage_spill_bytes";
/// Failed Postgres writes (each spilled its batch to the journal, or kept it for a retry).
pub const DATABASE_WRITE_ERRORS_TOTAL: &str = "llm_proxy_usage_database_write_errors_total";
/// Records the Postgres database refused as bad data (set aside in `<spill_path>.rejected`).
pub const DATABASE_REJECTED_TOTAL: &str = "llm_proxy_usage_database_rejected_total";
