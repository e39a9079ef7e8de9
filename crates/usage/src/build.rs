//! Config → running tracker: choose and open the store, load prices, start
//! the threads.

use std::path::Path;
use std::sync::Arc;

use crate::config::UsageTrackingConfig;
use crate::error::UsageError;
use crate::pricing::PriceTable;
use crate::store::postgres::{PostgresOptions, PostgresStore};
use crate::store::{MemoryStore, UsageStore, open_store};
use crate::tracker::UsageTracker;

/// Opens the store named by `persistence_path`: `:memory:` keeps records in
/// memory, a `.json` file uses the seed's single-document format, anything
/// else is a SQLite database. A damaged file is moved aside (reported in the
/// returned notes, which the caller logs as errors), never overwritten.
pub fn open_configured_store(path: &str) -> Result<(Arc<dyn UsageStore>, Vec<String>), UsageError> {
    if path == ":memory:" {
        return Ok((Arc::new(MemoryStore::new()), Vec::new()));
    }
    let file = Path::new(path);
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| UsageError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let (store, report) = open_store(file)?;
    let notes = report
        .problem()
        .map(|e| e.to_string())
        .into_iter()
        .collect();
    Ok((store, notes))
}

/// Opens the store the config names: PostgreSQL when `database_url` is
/// set, else the `persistence_path` store ([`open_configured_store`]).
pub fn open_store_for(
    config: &UsageTrackingConfig,
) -> Result<(Arc<dyn UsageStore>, Vec<String>), UsageError> {
    match &config.database_url {
        Some(url) => {
            let mut options = PostgresOptions::new(url.0.clone(), &config.spill_path);
            options.spill_max_bytes = config.spill_max_bytes;
            let (store, _report) = PostgresStore::open(options)?;
            Ok((Arc::new(store), Vec::new()))
        }
        None => open_configured_store(&config.persistence_path),
    }
}

/// The price table: the bundled one or `prices_path`, with overrides.
pub fn load_prices(config: &UsageTrackingConfig) -> Result<PriceTable, UsageError> {
    let table = match &config.prices_path {
        Some(path) => PriceTable::from_file(Path::new(path))
            .map_err(|e| UsageError::Encoding(format!("usage_tracking.prices_path {path}: {e}")))?,
        None => PriceTable::bundled()
            .map_err(|e| UsageError::Encoding(format!("bundled price table: {e}")))?,
    };
    table
        .with_overrides(config.price_overrides.clone())
        .map_err(|e| UsageError::Encoding(format!("usage_tracking.price_overrides: {e}")))
}

/// Opens the store, loads prices and starts the tracker. Returns notes about
/// anything the caller should log as errors (e.g. a damaged file moved aside).
pub fn start(config: &UsageTrackingConfig) -> Result<(UsageTracker, Vec<String>), UsageError> {
    let (store, notes) = open_store_for(config)?;
    let prices = Arc::new(load_prices(config)?);
    let tracker = UsageTracker::start(config, store, prices)?;
    Ok((tracker, notes))
}
