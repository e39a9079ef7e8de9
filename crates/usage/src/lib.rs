//! Usage tracking: one durable, accurate record per client request — tokens
//! at four points, backend-reported usage, cost, timings — plus the stores
//! that keep them and the aggregates served by `/v1/usage/*`.
//!
//! Config → build → handles: [`UsageTrackingConfig`] is validated, then the
//! tracker is built with its store and background workers; it implements
//! `llm_proxy_core::ExchangeObserver` and never blocks the request path.

pub mod aggregate;
pub mod build;
pub mod builder;
pub mod collect;
pub mod config;
mod counting;
mod cpu_limit;
pub mod error;
pub mod extract;
pub mod pricing;
pub mod query;
pub mod record;
pub mod routes;
pub mod sketch;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod tokens;
pub mod tracker;

pub use config::UsageTrackingConfig;
pub use error::UsageError;
pub use record::{BackendUsage, CompletionOutcome, CostSource, TokenSource, UsageRecord};
pub use store::{JsonStore, MemoryStore, OpenReport, SqliteStore, UsageStore, open_store};
