//! Usage tracking: one durable, accurate record per client request — tokens
//! at four points, backend-reported usage, cost, timings — plus the stores
//! that keep them and the aggregates served by `/v1/usage/*`.
//!
//! Config → build → handles: [`UsageTrackingConfig`] is validated, then the
//! tracker is built with its store and background workers; it implements
//! `llm_proxy_core::ExchangeObserver` and never blocks the request path.

pub mod aggregate;
pub mod config;
pub mod error;
pub mod query;
pub mod record;
pub mod store;
pub mod time;

pub use config::UsageTrackingConfig;
pub use error::UsageError;
pub use record::{BackendUsage, CompletionOutcome, CostSource, TokenSource, UsageRecord};
