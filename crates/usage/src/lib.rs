//! Usage tracking: one record per client request with tokens, cost and
//! timings, durable stores and aggregation (see the issue «Usage tracking»).
//! This crate holds the `[usage_tracking]` configuration so configs load
//! today; the recorder implements `llm_proxy_core::ExchangeObserver`.

pub mod config;

pub use config::UsageTrackingConfig;
