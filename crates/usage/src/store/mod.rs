//! Where usage records live. Every store answers the same questions (recent,
//! aggregates, export) with the same results; the shared conformance tests
//! in `store/conformance.rs` hold them to it.
//!
//! Store methods block (disk, database): call them from a blocking thread,
//! never from the request path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::aggregate::Aggregate;
use crate::error::UsageError;
use crate::query::{GroupKey, UsageFilter};
use crate::record::UsageRecord;

pub mod conformance;
pub mod json;
pub mod memory;
pub(crate) mod packed;
pub mod postgres;
pub(crate) mod rollup;
pub mod spill;
pub mod sqlite;

pub use json::JsonStore;
pub use memory::MemoryStore;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// One page of `/v1/usage/recent`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentPage {
    /// Matching records, newest first.
    pub records: Vec<UsageRecord>,
    /// All matching records (not just this page).
    pub total: u64,
}

/// Partial aggregates: over everything matched, and per group when grouping.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AggregateSet {
    /// Over all matched records.
    pub overall: Aggregate,
    /// Per group: the group's key values (in `group_by` order) → aggregate.
    pub groups: BTreeMap<Vec<String>, Aggregate>,
}

impl AggregateSet {
    /// Adds one record (already known to match the filter).
    pub fn add(&mut self, record: &UsageRecord, group_by: &[GroupKey]) {
        self.overall.add(record);
        if !group_by.is_empty() {
            let key: Vec<String> = group_by.iter().map(|k| k.value_of(record)).collect();
            self.groups.entry(key).or_default().add(record);
        }
    }

    /// Folds `other` into `self`.
    pub fn merge(&mut self, other: &AggregateSet) {
        self.overall.merge(&other.overall);
        for (k, a) in &other.groups {
            self.groups.entry(k.clone()).or_default().merge(a);
        }
    }
}

/// A durable home for usage records.
pub trait UsageStore: Send + Sync + 'static {
    /// A short name for logs (`sqlite:/path`, `json:/path`).
    fn describe(&self) -> String;
    /// Appends records; a record whose `id` is already stored is skipped
    /// (SQLite compares `id` with `timestamp_us`, which a request id never
    /// changes: see `SqliteStore`).
    fn insert(&self, records: &[UsageRecord]) -> Result<(), UsageError>;
    /// Appends records as [`UsageStore::insert`] does, as durably, but may
    /// postpone the work of indexing them until [`UsageStore::catch_up`]
    /// (the writer calls this while the machine has no CPU to spare).
    /// Every query answers the same either way, with one exception: a
    /// record deferred while its `id` is already stored counts twice in
    /// `count` and stats until it is caught up (the request path never
    /// sends one record twice; a retried batch failed as a whole).
    fn insert_deferred(&self, records: &[UsageRecord]) -> Result<(), UsageError> {
        self.insert(records)
    }
    /// Indexes records postponed by [`UsageStore::insert_deferred`], for
    /// about `budget` (at least one batch); returns how many still wait.
    fn catch_up(&self, budget: std::time::Duration) -> Result<u64, UsageError> {
        let _ = budget;
        Ok(0)
    }
    /// Records stored by [`UsageStore::insert_deferred`] and not caught up.
    fn deferred(&self) -> u64 {
        0
    }
    /// Matching records newest first, skipping `offset`, at most `limit`.
    fn recent(
        &self,
        filter: &UsageFilter,
        limit: usize,
        offset: usize,
    ) -> Result<RecentPage, UsageError>;
    /// Aggregates of matching records, grouped by `group_by` when not empty.
    fn aggregate(
        &self,
        filter: &UsageFilter,
        group_by: &[GroupKey],
    ) -> Result<AggregateSet, UsageError>;
    /// Feeds matching records, oldest first, to `sink` until it returns
    /// false; returns how many were fed. Must not load all records at once.
    fn export(
        &self,
        filter: &UsageFilter,
        sink: &mut dyn FnMut(&UsageRecord) -> bool,
    ) -> Result<u64, UsageError>;
    /// Deletes records older than `before_us`; returns how many.
    fn prune(&self, before_us: i64) -> Result<u64, UsageError>;
    /// Makes everything inserted so far durable.
    fn flush(&self) -> Result<(), UsageError>;
    /// Number of stored records.
    fn count(&self) -> Result<u64, UsageError>;
}

/// What opening a store file found and did. When [`OpenReport::problem`] is
/// `Some`, the caller logs it at ERROR: the old file was unreadable and was
/// moved aside (never overwritten or deleted), and a new store started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpenReport {
    /// The store file.
    pub path: PathBuf,
    /// A new, empty store file was created.
    pub created: bool,
    /// The schema was migrated from this version.
    pub migrated_from: Option<i64>,
    /// The existing file was unreadable and moved aside.
    pub moved_aside: Option<MovedAside>,
    /// Rollups were rebuilt from raw records, and why.
    pub rollups_rebuilt: Option<String>,
    /// Records in the store after opening.
    pub records: u64,
}

/// An unreadable store file that was moved out of the way.
#[derive(Debug, Clone, PartialEq)]
pub struct MovedAside {
    /// What was wrong with it.
    pub reason: String,
    /// Where it is now (`<path>.corrupt-<unix_ts>`).
    pub moved_to: PathBuf,
    /// Companion files moved with it (SQLite `-wal` / `-shm`).
    pub companions: Vec<PathBuf>,
}

impl OpenReport {
    /// The error describing a moved-aside file, for the caller to log.
    pub fn problem(&self) -> Option<UsageError> {
        self.moved_aside.as_ref().map(|m| UsageError::Corrupt {
            path: self.path.clone(),
            reason: m.reason.clone(),
            action: format!(
                "moved aside to {} and started a new, empty store",
                m.moved_to.display()
            ),
        })
    }
}

/// Opens the store a `persistence_path` names: `.json` → [`JsonStore`]
/// (the seed's single-document format), anything else → [`SqliteStore`].
pub fn open_store(path: &Path) -> Result<(Arc<dyn UsageStore>, OpenReport), UsageError> {
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if is_json {
        let (store, report) = JsonStore::open(path)?;
        Ok((Arc::new(store), report))
    } else {
        let (store, report) = SqliteStore::open(path)?;
        Ok((Arc::new(store), report))
    }
}

/// Moves an unreadable store file (and the companion files named by
/// `suffixes`, e.g. `-wal`) to `<path>.corrupt-<unix_ts>[-n]<suffix>`.
pub(crate) fn move_aside(
    path: &Path,
    suffixes: &[&str],
    reason: String,
) -> Result<MovedAside, UsageError> {
    let ts = crate::time::system_time_us(std::time::SystemTime::now()) / 1_000_000;
    let with_suffix = |p: &Path, suffix: &str| {
        let mut s = p.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    let mut target = with_suffix(path, &format!(".corrupt-{ts}"));
    let mut n = 1;
    while target.exists() || suffixes.iter().any(|s| with_suffix(&target, s).exists()) {
        target = with_suffix(path, &format!(".corrupt-{ts}-{n}"));
        n += 1;
    }
    let io = |p: &Path, source| UsageError::Io {
        path: p.to_owned(),
        source,
    };
    std::fs::rename(path, &target).map_err(|e| io(path, e))?;
    let mut companions = Vec::new();
    for suffix in suffixes {
        let from = with_suffix(path, suffix);
        if from.exists() {
            let to = with_suffix(&target, suffix);
            std::fs::rename(&from, &to).map_err(|e| io(&from, e))?;
            companions.push(to);
        }
    }
    Ok(MovedAside {
        reason,
        moved_to: target,
        companions,
    })
}

/// Creates the parent directory of a store file when missing.
pub(crate) fn ensure_parent_dir(path: &Path) -> Result<(), UsageError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => std::fs::create_dir_all(dir)
            .map_err(|source| UsageError::Io {
                path: dir.to_owned(),
                source,
            }),
        _ => Ok(()),
    }
}
