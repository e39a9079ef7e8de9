//! Random model replacement per session (SPEC §7): with some probability a
//! session's turns go to another `backend:model` for `turn_count` turns,
//! then back for at least one turn.
//!
//! - [`ModelReplacer`] implements core's `RouteRewriter`; the pipeline asks
//!   it once per request, after routing and before health filtering.
//! - Rules ([`rules`]) are tried in order; the first match whose target
//!   differs from the request's target wins.
//! - Session state ([`session`]) is an LRU with a cap
//!   (`max_sessions`) and idle expiry (`session_idle_seconds`), sharded
//!   behind a few mutexes; every operation is O(1).
//! - [`ReplacementRoutes`] serves `GET /v1/replacement/metrics`.

pub mod config;
pub mod metrics;
pub mod replacer;
pub mod routes;
pub mod rules;
pub mod session;
pub mod telemetry;

pub use config::{ReplacementConfig, ReplacementRule};
pub use metrics::ReplacementReport;
pub use replacer::{ModelReplacer, OPT_OUT_HEADER};
pub use routes::ReplacementRoutes;
