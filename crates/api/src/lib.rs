//! llm-proxy API server: the LLM front-end routes (handed to the core
//! pipeline), management routes (served by handlers other crates provide),
//! `/healthz`, `/metrics`, authentication with a brute-force guard, and
//! graceful shutdown. HTTP statuses for edge errors are decided here.

pub mod auth;
pub mod config;
pub mod error;
pub mod routes;
pub mod server;

pub use config::{AuthConfig, ServerConfig};
pub use error::ApiError;
pub use routes::{ApiBody, BoxFuture, MetricsRender, RouteHandler, full, json_response};
pub use server::{ApiServer, Services};
