//! Errors of usage tracking.

use std::path::PathBuf;

/// What can go wrong storing or querying usage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// The store file exists but cannot be read as a store; it was left in
    /// place or moved aside, never overwritten.
    #[error("usage store {path} is unreadable ({reason}); {action}")]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// What was done with it, e.g. "moved aside to …".
        action: String,
    },
    /// The store's schema is newer than this binary understands.
    #[error(
        "usage store {path} has schema version {found}, newer than this binary's {supported}; upgrade llm-proxy or point usage_tracking.persistence_path elsewhere"
    )]
    SchemaTooNew {
        /// The store file.
        path: PathBuf,
        /// Version found.
        found: i64,
        /// Newest version this binary knows.
        supported: i64,
    },
    /// The usage database's schema is newer than this binary understands.
    #[error(
        "usage database {database} has schema version {found}, newer than this binary's {supported}; upgrade llm-proxy or point usage_tracking.database_url elsewhere"
    )]
    DatabaseSchemaTooNew {
        /// The database (URL without password).
        database: String,
        /// Version found.
        found: i64,
        /// Newest version this binary knows.
        supported: i64,
    },
    /// A filesystem error.
    #[error("usage store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A database error.
    #[error("usage database: {0}")]
    Database(String),
    /// The store cannot answer now but will soon: deferred records are still
    /// being indexed, or the database is unreachable. Routes answer 503 with
    /// `Retry-After`.
    #[error("{reason}; try again in {retry_after_secs} s")]
    Unavailable {
        /// Why, naming what is not ready.
        reason: String,
        /// When trying again makes sense.
        retry_after_secs: u32,
    },
    /// A record could not be encoded or decoded.
    #[error("usage record encoding: {0}")]
    Encoding(String),
}
