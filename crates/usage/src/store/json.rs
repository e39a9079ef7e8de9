//! [`JsonStore`]: the seed's single-document format for a `.json`
//! `persistence_path`:
//!
//! ```json
//! {"version": 1, "saved_at": "2026-01-01T00:00:00.000Z", "records": [ ... ]}
//! ```
//!
//! Records live in memory; `flush` rewrites the whole file atomically
//! (`<path>.tmp`, fsync, rename, fsync of the directory), so a crash leaves
//! either the old or the new document, never half of one. Queries scan in
//! memory: meant for compatibility and small volumes — use SQLite for more.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use crate::error::UsageError;
use crate::query::{GroupKey, UsageFilter};
use crate::record::UsageRecord;
use crate::store::memory::{RecordSet, export_in_chunks};
use crate::store::{AggregateSet, OpenReport, RecentPage, UsageStore, ensure_parent_dir};

/// Newest document version this binary reads and writes.
pub const JSON_FORMAT_VERSION: i64 = 1;

#[derive(Deserialize)]
struct Document {
    version: i64,
    #[serde(default)]
    records: Vec<UsageRecord>,
}

#[derive(Serialize)]
struct DocumentRef<'a> {
    version: i64,
    saved_at: String,
    records: &'a [UsageRecord],
}

/// Usage records in one JSON document, kept in memory between flushes.
#[derive(Debug)]
pub struct JsonStore {
    path: PathBuf,
    records: RwLock<RecordSet>,
    /// Changed since the last flush.
    dirty: AtomicBool,
    /// Serializes flushes.
    flushing: Mutex<()>,
}

fn io_err(path: &Path, source: std::io::Error) -> UsageError {
    UsageError::Io {
        path: path.to_owned(),
        source,
    }
}

impl JsonStore {
    /// Opens (or creates on first flush) the document at `path`. An
    /// unreadable document is moved aside to `<path>.corrupt-<unix_ts>` and
    /// reported; a newer version is refused with [`UsageError::SchemaTooNew`].
    pub fn open(path: impl AsRef<Path>) -> Result<(JsonStore, OpenReport), UsageError> {
        let path = path.as_ref().to_owned();
        ensure_parent_dir(&path)?;
        let mut report = OpenReport {
            path: path.clone(),
            ..OpenReport::default()
        };
        let records = match File::open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                report.created = true;
                Vec::new()
            }
            Err(e) => return Err(io_err(&path, e)),
            Ok(file) => match serde_json::from_reader::<_, Document>(BufReader::new(file)) {
                Ok(doc) if doc.version > JSON_FORMAT_VERSION => {
                    return Err(UsageError::SchemaTooNew {
                        path,
                        found: doc.version,
                        supported: JSON_FORMAT_VERSION,
                    });
                }
                Ok(doc) => doc.records,
                Err(e) if e.is_io() => return Err(io_err(&path, e.into())),
                Err(e) => {
                    let moved = crate::store::move_aside(
                        &path,
                        &[],
                        format!("not a usage JSON document: {e}"),
                    )?;
                    report.moved_aside = Some(moved);
                    report.created = true;
                    Vec::new()
                }
            },
        };
        let set = RecordSet::from_records(records);
        report.records = set.len();
        let store = JsonStore {
            path,
            records: RwLock::new(set),
            dirty: AtomicBool::new(false),
            flushing: Mutex::new(()),
        };
        Ok((store, report))
    }

    fn read(&self) -> RwLockReadGuard<'_, RecordSet> {
        self.records.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, RecordSet> {
        self.records.write().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self) -> Result<(), UsageError> {
        let mut tmp_name = self.path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        let file = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        {
            // Readers (stats) may proceed while the document is written;
            // inserts wait.
            let set = self.read();
            self.dirty.store(false, Ordering::SeqCst);
            let doc = DocumentRef {
                version: JSON_FORMAT_VERSION,
                saved_at: crate::time::format_rfc3339(crate::time::system_time_us(
                    std::time::SystemTime::now(),
                )),
                records: set.records(),
            };
            serde_json::to_writer(&mut out, &doc)
                .map_err(|e| UsageError::Encoding(e.to_string()))?;
        }
        out.flush().map_err(|e| io_err(&tmp, e))?;
        let file = out.into_inner().map_err(|e| io_err(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| io_err(&tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(|e| io_err(&self.path, e))?;
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            // Directory fsync makes the rename durable (not possible on
            // every platform; a failure here is not data loss).
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl UsageStore for JsonStore {
    fn describe(&self) -> String {
        format!("json:{}", self.path.display())
    }

    fn insert(&self, records: &[UsageRecord]) -> Result<(), UsageError> {
        if self.write().insert(records) > 0 {
            self.dirty.store(true, Ordering::SeqCst);
        }
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
        export_in_chunks(&self.records, filter, sink)
    }

    fn prune(&self, before_us: i64) -> Result<u64, UsageError> {
        let n = self.write().prune(before_us);
        if n > 0 {
            self.dirty.store(true, Ordering::SeqCst);
        }
        Ok(n)
    }

    fn flush(&self) -> Result<(), UsageError> {
        let _one_at_a_time = self.flushing.lock().unwrap_or_else(|e| e.into_inner());
        if !self.dirty.load(Ordering::SeqCst) && self.path.exists() {
            return Ok(());
        }
        let result = self.save();
        if result.is_err() {
            self.dirty.store(true, Ordering::SeqCst);
        }
        result
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
    fn json_store_conforms_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.json");
        let (store, report) = JsonStore::open(&path).unwrap();
        assert!(report.created && report.problem().is_none());
        conformance::check_all(&store).unwrap();
        let path = dir.path().join("reopened.json");
        conformance::check_reopen(&mut || {
            JsonStore::open(&path).map(|(s, _)| Box::new(s) as Box<dyn UsageStore>)
        })
        .unwrap();
    }

    #[test]
    fn corrupt_or_truncated_documents_are_moved_aside_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.json");
        let (store, _) = JsonStore::open(&path).unwrap();
        store
            .insert(&conformance::synthetic_records(5, 0, 3_600_000_000, 1))
            .unwrap();
        store.flush().unwrap();
        let good = std::fs::read(&path).unwrap();
        for bad in [
            &good[..good.len() / 2],
            b"garbage".as_slice(),
            b"".as_slice(),
        ] {
            std::fs::write(&path, bad).unwrap();
            let (store, report) = JsonStore::open(&path).unwrap();
            let moved = report.moved_aside.clone().expect("moved aside");
            assert!(report.problem().is_some());
            assert_eq!(std::fs::read(&moved.moved_to).unwrap(), bad);
            assert_eq!(store.count().unwrap(), 0);
            assert!(!path.exists(), "nothing written before the first flush");
        }
    }

    #[test]
    fn newer_versions_are_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.json");
        std::fs::write(&path, r#"{"version": 2, "records": []}"#).unwrap();
        assert!(matches!(
            JsonStore::open(&path),
            Err(UsageError::SchemaTooNew { found: 2, .. })
        ));
        assert!(path.exists());
    }
}
