//! Errors of the health crate.

use llm_proxy_core::ConfigError;

/// Why health monitoring could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// A configuration value is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A backend's `api_url` is not an absolute http(s) URL.
    #[error("invalid endpoint URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL, credentials hidden.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP probe client could not be built.
    #[error("HTTP probe client: {0}")]
    Client(String),
}
