//! [`MemoryStore`]: records in memory only (tests, and tracking without a
//! persistence path). [`RecordSet`] is the sorted, deduplicated record list
//! it shares with the JSON store.

use std::collections::HashSet;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::error::UsageError;
use crate::query::{GroupKey, UsageFilter};
use crate::record::UsageRecord;
use crate::store::{AggregateSet, RecentPage, UsageStore};

/// Records sorted by `(timestamp_us, id)`, ids unique.
#[derive(Debug, Default)]
pub(crate) struct RecordSet {
    records: Vec<UsageRecord>,
    ids: HashSet<String>,
}

fn order(a: &UsageRecord, b: &UsageRecord) -> std::cmp::Ordering {
    (a.timestamp_us, &a.id).cmp(&(b.timestamp_us, &b.id))
}

impl RecordSet {
    /// A set of `records` (later duplicates of an id are dropped).
    pub(crate) fn from_records(records: Vec<UsageRecord>) -> RecordSet {
        let mut set = RecordSet::default();
        set.insert(&records);
        set
    }

    /// All records, oldest first.
    pub(crate) fn records(&self) -> &[UsageRecord] {
        &self.records
    }

    /// Adds records whose id is new; returns how many were added.
    pub(crate) fn insert(&mut self, records: &[UsageRecord]) -> usize {
        let before = self.records.len();
        let mut sorted = true;
        for r in records {
            if self.ids.contains(&r.id) {
                continue;
            }
            self.ids.insert(r.id.clone());
            if let Some(last) = self.records.last()
                && order(last, r).is_gt()
            {
                sorted = false;
            }
            self.records.push(r.clone());
        }
        if !sorted {
            self.records.sort_by(order);
        }
        self.records.len() - before
    }

    pub(crate) fn recent(&self, filter: &UsageFilter, limit: usize, offset: usize) -> RecentPage {
        let mut total = 0u64;
        let mut records = Vec::new();
        for r in self.records.iter().rev().filter(|r| filter.matches(r)) {
            if total >= offset as u64 && records.len() < limit {
                records.push(r.clone());
            }
            total += 1;
        }
        RecentPage { records, total }
    }

    pub(crate) fn aggregate(&self, filter: &UsageFilter, group_by: &[GroupKey]) -> AggregateSet {
        let mut set = AggregateSet::default();
        for r in self.records.iter().filter(|r| filter.matches(r)) {
            set.add(r, group_by);
        }
        set
    }

    /// Up to `max` matching records after the `(timestamp_us, id)` cursor,
    /// oldest first (exports read in chunks so writers are not held up).
    pub(crate) fn export_chunk(
        &self,
        filter: &UsageFilter,
        after: Option<&(i64, String)>,
        max: usize,
    ) -> Vec<UsageRecord> {
        let start = after.map_or(0, |(ts, id)| {
            self.records
                .partition_point(|r| (r.timestamp_us, &r.id) <= (*ts, id))
        });
        self.records[start..]
            .iter()
            .filter(|r| filter.matches(r))
            .take(max)
            .cloned()
            .collect()
    }

    /// Drops records older than `before_us`; returns how many.
    pub(crate) fn prune(&mut self, before_us: i64) -> u64 {
        let cut = self.records.partition_point(|r| r.timestamp_us < before_us);
        for r in self.records.drain(..cut) {
            self.ids.remove(&r.id);
        }
        cut as u64
    }

    pub(crate) fn len(&self) -> u64 {
        self.records.len() as u64
    }
}

/// Feeds `sink` from a locked [`RecordSet`] in chunks, releasing the lock
/// between chunks.
pub(crate) fn export_in_chunks(
    set: &RwLock<RecordSet>,
    filter: &UsageFilter,
    sink: &mut dyn FnMut(&UsageRecord) -> bool,
) -> Result<u64, UsageError> {
    const CHUNK: usize = 1024;
    let mut cursor: Option<(i64, String)> = None;
    let mut fed = 0;
    loop {
        let chunk = set.read().unwrap_or_else(|e| e.into_inner()).export_chunk(
            filter,
            cursor.as_ref(),
            CHUNK,
        );
        for r in &chunk {
            fed += 1;
            if !sink(r) {
                return Ok(fed);
            }
        }
        match chunk.last() {
            Some(last) if chunk.len() == CHUNK => {
                cursor = Some((last.timestamp_us, last.id.clone()));
            }
            _ => return Ok(fed),
        }
    }
}

/// Usage records in memory only: lost on exit.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: RwLock<RecordSet>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, RecordSet> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, RecordSet> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl UsageStore for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn insert(&self, records: &[UsageRecord]) -> Result<(), UsageError> {
        self.write().insert(records);
        Ok(())
    }

    fn recent(
        &self,
        filter: &UsageFilter,
        limit: usize,
        offset: usize,
    ) -> Result<RecentPage, UsageError> {
        Ok(self.read().recent(filter, limit, offset))
    }

    fn aggregate(
        &self,
        filter: &UsageFilter,
        group_by: &[GroupKey],
    ) -> Result<AggregateSet, UsageError> {
        Ok(self.read().aggregate(filter, group_by))
    }

    fn export(
        &self,
        filter: &UsageFilter,
        sink: &mut dyn FnMut(&UsageRecord) -> bool,
    ) -> Result<u64, UsageError> {
        export_in_chunks(&self.inner, filter, sink)
    }

    fn prune(&self, before_us: i64) -> Result<u64, UsageError> {
        Ok(self.write().prune(before_us))
    }

    fn flush(&self) -> Result<(), UsageError> {
        Ok(())
    }

    fn count(&self) -> Result<u64, UsageError> {
        Ok(self.read().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    #[test]
    fn memory_store_conforms() {
        conformance::check_all(&MemoryStore::new()).unwrap();
    }
}
