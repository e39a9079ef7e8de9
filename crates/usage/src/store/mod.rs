//! Where usage records live. Every store answers the same questions (recent,
//! aggregates, export) with the same results; the shared conformance tests
//! in `store/conformance.rs` hold them to it.
//!
//! Store methods block (disk, database): call them from a blocking thread,
//! never from the request path.

use std::collections::BTreeMap;

use crate::aggregate::Aggregate;
use crate::error::UsageError;
use crate::query::{GroupKey, UsageFilter};
use crate::record::UsageRecord;

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
    /// Appends records; a record whose `id` is already stored is skipped.
    fn insert(&self, records: &[UsageRecord]) -> Result<(), UsageError>;
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
