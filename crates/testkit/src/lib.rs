//! llm-proxy test kit: the mock LLM upstream server every test uses as its fake
//! backend, and small helpers for tests.
//!
//! [`MockUpstream`] is a real HTTP/1.1 + h2c server on `127.0.0.1:0` that answers
//! `POST /v1/chat/completions`, `POST /v1/messages` and `POST /v1/responses` with
//! the deterministic mock model of [`llm_proxy_core::mock`] (see its docs for the
//! `x-mock-*` headers, `+fault-<name>` model suffixes and token-count formula),
//! `GET /v1/models` with an OpenAI model list, and `GET`/`HEAD` `/` and `/v1`
//! with 200 for health probes. Unknown paths get a 404 JSON error. Health
//! probes are recorded apart from other requests (`probe_requests()`), so a
//! proxy probing in the background never shifts `requests()`.

mod body;
pub mod postgres;
mod server;
mod sse;

pub use llm_proxy_core::mock::{MockFault, MockOptions};
pub use postgres::{PgCluster, PgClusterError};
pub use server::{MockUpstream, MockUpstreamConfig, RecordedRequest};
pub use sse::sse_events;
