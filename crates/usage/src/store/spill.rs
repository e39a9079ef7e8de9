//! [`SpillJournal`]: a bounded, append-only file of records that could not
//! be written to the database, replayed in order when it returns.
//!
//! **Format.** One JSON record per line (`<path>`), appended and
//! `fdatasync`ed. The offset of the first record not yet replayed lives in
//! `<path>.head` (written to a temporary file, synced, renamed). A crash
//! between a replayed batch's commit and the head update replays that batch
//! again, which the database skips (`ON CONFLICT (id) DO NOTHING`). When
//! everything is replayed both files are truncated. A torn last line (a
//! crash mid-append) is cut off at open. The bound (`max_bytes`) counts the
//! records waiting, not the replayed prefix; when that prefix is more than
//! half the file the waiting tail is rewritten to a new file (written,
//! synced, then the head reset to 0, then renamed over the journal: a crash
//! in between replays the prefix again, which the database skips).
//!
//! Records the database refuses as bad data go to `<path>.rejected`
//! ([`append_rejected`]), one JSON record per line, for an operator to look at.
//!
//! **Ownership.** The journal file is locked (`flock`) while open: two
//! proxies cannot share one journal.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::UsageError;
use crate::record::UsageRecord;
use crate::store::ensure_parent_dir;

/// A replayed prefix smaller than this is never compacted away (rewriting
/// a small file buys nothing).
const COMPACT_MIN_BYTES: u64 = 64 * 1024;

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Where records refused as bad data are set aside for the journal `path`.
pub fn rejected_path(path: &Path) -> PathBuf {
    with_suffix(path, ".rejected")
}

/// Appends `records` (one JSON record per line) to [`rejected_path`] of the
/// journal `path`, synced; returns the file written.
pub fn append_rejected(path: &Path, records: &[UsageRecord]) -> Result<PathBuf, UsageError> {
    let target = rejected_path(path);
    let mut buf = Vec::with_capacity(records.len() * 700);
    for r in records {
        serde_json::to_writer(&mut buf, r).map_err(|e| UsageError::Encoding(e.to_string()))?;
        buf.push(b'\n');
    }
    let written = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&target)
        .and_then(|mut f| f.write_all(&buf).and_then(|()| f.sync_data()));
    match written {
        Ok(()) => Ok(target),
        Err(e) => Err(io_err(&target)(e)),
    }
}

/// Records spilled and not yet replayed, in order.
#[derive(Debug)]
pub struct SpillJournal {
    path: PathBuf,
    head_path: PathBuf,
    file: File,
    /// Offset of the first record not yet replayed.
    head: u64,
    /// File length (end of the last complete line).
    len: u64,
    /// Records between `head` and `len`.
    records: u64,
    max_bytes: u64,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> UsageError + '_ {
    move |source| UsageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The length of `file` up to its last newline (reading backwards, in
/// chunks: the journal may be large).
fn complete_len(file: &mut File, len: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

impl SpillJournal {
    /// Opens (or creates) the journal at `path`, at most `max_bytes` long.
    pub fn open(path: &Path, max_bytes: u64) -> Result<SpillJournal, UsageError> {
        ensure_parent_dir(path)?;
        let err = io_err(path);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(&err)?;
        file.try_lock().map_err(|e| {
            UsageError::Database(format!(
                "usage_tracking.spill_path {} is in use by another process ({e}); \
                 give each proxy its own spill journal",
                path.display()
            ))
        })?;
        let head_path = with_suffix(path, ".head");
        let mut len = file.metadata().map_err(&err)?.len();
        // Cut a torn last line.
        let complete = complete_len(&mut file, len).map_err(&err)?;
        if complete < len {
            file.set_len(complete).map_err(&err)?;
            len = complete;
        }
        let head = match std::fs::read_to_string(&head_path) {
            Ok(s) => s.trim().parse::<u64>().unwrap_or(0).min(len),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&head_path)(e)),
        };
        let mut journal = SpillJournal {
            path: path.to_owned(),
            head_path,
            file,
            head,
            len,
            records: 0,
            max_bytes,
        };
        journal.records = journal.count_from_head()?;
        journal.report();
        Ok(journal)
    }

    fn count_from_head(&mut self) -> Result<u64, UsageError> {
        let err = io_err(&self.path);
        self.file.seek(SeekFrom::Start(self.head)).map_err(&err)?;
        let reader = BufReader::new((&self.file).take(self.len - self.head));
        let mut n = 0;
        for line in reader.split(b'\n') {
            line.map_err(&err)?;
            n += 1;
        }
        Ok(n)
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records waiting to be replayed.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes waiting to be replayed.
    pub fn bytes(&self) -> u64 {
        self.len - self.head
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    fn report(&self) {
        metrics::gauge!(crate::telemetry::SPILL_RECORDS).set(self.records as f64);
        metrics::gauge!(crate::telemetry::SPILL_BYTES).set(self.bytes() as f64);
    }

    /// Appends `records` durably, all or none. Refuses (an error) when the
    /// journal would grow past its bound.
    pub fn append(&mut self, records: &[UsageRecord]) -> Result<(), UsageError> {
        let mut buf = Vec::with_capacity(records.len() * 700);
        for r in records {
            serde_json::to_writer(&mut buf, r).map_err(|e| UsageError::Encoding(e.to_string()))?;
            buf.push(b'\n');
        }
        if self.bytes() + buf.len() as u64 > self.max_bytes {
            return Err(UsageError::Database(format!(
                "spill journal {} is full ({} bytes waiting, usage_tracking.spill_max_bytes = {})",
                self.path.display(),
                self.bytes(),
                self.max_bytes
            )));
        }
        let err = io_err(&self.path);
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Leave no partial line behind.
            let _ = self.file.set_len(self.len);
            return Err(err(e));
        }
        self.len += buf.len() as u64;
        self.records += records.len() as u64;
        self.report();
        Ok(())
    }

    /// Up to `max` records from the head, in order, and the offset after
    /// them (pass it to [`SpillJournal::advance`] once they are stored).
    /// Lines that do not decode are skipped and counted as dropped.
    pub fn peek(&mut self, max: usize) -> Result<(Vec<UsageRecord>, u64, u64), UsageError> {
        let err = io_err(&self.path);
        self.file.seek(SeekFrom::Start(self.head)).map_err(&err)?;
        let mut reader = BufReader::new((&self.file).take(self.len - self.head));
        let mut out = Vec::new();
        let mut offset = self.head;
        let mut lines = 0;
        let mut line = Vec::new();
        while out.len() < max {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(&err)?;
            if n == 0 {
                break;
            }
            offset += n as u64;
            lines += 1;
            match serde_json::from_slice::<UsageRecord>(&line) {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::error!(journal = %self.path.display(), error = %e, "undecodable spilled usage record skipped");
                    metrics::counter!(crate::telemetry::RECORDS_DROPPED_TOTAL, "reason" => "spill_corrupt")
                        .increment(1);
                }
            }
        }
        Ok((out, offset, lines))
    }

    /// Marks everything before `offset` (`lines` records) as replayed.
    pub fn advance(&mut self, offset: u64, lines: u64) -> Result<(), UsageError> {
        self.head = offset.min(self.len);
        self.records = self.records.saturating_sub(lines);
        if self.head == self.len {
            // Everything replayed: start over (head first, so a crash in
            // between never points past the end).
            self.write_head(0)?;
            self.file.set_len(0).map_err(io_err(&self.path))?;
            self.file.sync_data().map_err(io_err(&self.path))?;
            self.head = 0;
            self.len = 0;
            self.records = 0;
        } else if self.head >= COMPACT_MIN_BYTES && self.head > self.len / 2 {
            self.compact()?;
        } else {
            self.write_head(self.head)?;
        }
        self.report();
        Ok(())
    }

    /// Rewrites the records waiting to a new file that replaces the journal
    /// (see the module docs for the crash order).
    fn compact(&mut self) -> Result<(), UsageError> {
        let tmp = with_suffix(&self.path, ".compact");
        let err = io_err(&tmp);
        {
            let mut out = File::create(&tmp).map_err(&err)?;
            self.file
                .seek(SeekFrom::Start(self.head))
                .map_err(io_err(&self.path))?;
            let copied = std::io::copy(&mut (&self.file).take(self.len - self.head), &mut out)
                .map_err(&err)?;
            out.sync_data().map_err(&err)?;
            if copied != self.len - self.head {
                return Err(UsageError::Database(format!(
                    "spill journal {} shrank while compacting",
                    self.path.display()
                )));
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&tmp)
            .map_err(&err)?;
        file.try_lock().map_err(|e| err(std::io::Error::other(e)))?;
        self.write_head(0)?;
        std::fs::rename(&tmp, &self.path).map_err(io_err(&self.path))?;
        if let Some(dir) = self.path.parent()
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        self.file = file;
        self.len -= self.head;
        self.head = 0;
        Ok(())
    }

    /// Gives up the journal's lock (its owner is shutting down), so a new
    /// store may open it at once.
    pub fn release(&self) {
        let _ = self.file.unlock();
    }

    fn write_head(&self, head: u64) -> Result<(), UsageError> {
        let tmp = with_suffix(&self.head_path, ".tmp");
        let err = io_err(&tmp);
        let mut f = File::create(&tmp).map_err(&err)?;
        f.write_all(head.to_string().as_bytes()).map_err(&err)?;
        f.sync_data().map_err(&err)?;
        std::fs::rename(&tmp, &self.head_path).map_err(io_err(&self.head_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::synthetic_records;

    #[test]
    fn appends_replay_in_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var").join("spill.jsonl");
        let records = synthetic_records(50, 1_767_608_243_456_000, 3_600_000_000, 3);
        {
            let mut j = SpillJournal::open(&path, 1 << 20).unwrap();
            assert!(j.is_empty());
            j.append(&records[..30]).unwrap();
            j.append(&records[30..]).unwrap();
            assert_eq!(j.records(), 50);
            let (got, offset, lines) = j.peek(20).unwrap();
            assert_eq!(got, records[..20].to_vec());
            j.advance(offset, lines).unwrap();
            assert_eq!(j.records(), 30);
        }
        // A torn append at the end is cut off.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"id\":\"torn")
            .unwrap();
        let mut j = SpillJournal::open(&path, 1 << 20).unwrap();
        assert_eq!(j.records(), 30);
        let (got, offset, lines) = j.peek(1000).unwrap();
        assert_eq!(got, records[20..].to_vec());
        j.advance(offset, lines).unwrap();
        assert!(j.is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn a_full_journal_refuses_and_a_locked_one_is_not_shared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill.jsonl");
        let records = synthetic_records(20, 1_767_608_243_456_000, 3_600_000_000, 4);
        let mut j = SpillJournal::open(&path, 4000).unwrap();
        j.append(&records[..2]).unwrap();
        let e = j.append(&records).unwrap_err().to_string();
        assert!(e.contains("full"), "{e}");
        assert_eq!(j.records(), 2);
        let e = SpillJournal::open(&path, 4000).unwrap_err().to_string();
        assert!(e.contains("usage_tracking.spill_path"), "{e}");
    }

    #[test]
    fn the_bound_counts_waiting_bytes_and_a_replayed_prefix_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill.jsonl");
        let records = synthetic_records(600, 1_767_608_243_456_000, 3_600_000_000, 6);
        let size = |a: usize, b: usize| -> u64 {
            records[a..b]
                .iter()
                .map(|r| serde_json::to_vec(r).unwrap().len() as u64 + 1)
                .sum()
        };
        let max = size(100, 390) + 50;
        let mut j = SpillJournal::open(&path, max).unwrap();
        j.append(&records[..280]).unwrap();
        let (got, offset, lines) = j.peek(100).unwrap();
        assert_eq!(got, records[..100].to_vec());
        j.advance(offset, lines).unwrap();
        // Less than half replayed: not compacted.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size(0, 280));
        // 290 records wait: within the bound although the file is past it.
        j.append(&records[280..390]).unwrap();
        assert!(size(0, 390) > max);
        assert_eq!(j.records(), 290);
        let (got, offset, lines) = j.peek(150).unwrap();
        assert_eq!(got, records[100..250].to_vec());
        j.advance(offset, lines).unwrap();
        assert!(offset >= COMPACT_MIN_BYTES);
        // More than half replayed: compacted away.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), j.bytes());
        assert_eq!(j.bytes(), size(250, 390));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("spill.jsonl.head")).unwrap(),
            "0"
        );
        j.append(&records[390..530]).unwrap();
        assert_eq!(j.records(), 280);
        let e = j.append(&records[530..]).unwrap_err().to_string();
        assert!(e.contains("full"), "{e}");
        // Still locked after the rename, and it reopens in order.
        assert!(SpillJournal::open(&path, max).is_err());
        drop(j);
        let mut j = SpillJournal::open(&path, max).unwrap();
        assert_eq!(j.records(), 280);
        let (got, offset, lines) = j.peek(1000).unwrap();
        assert_eq!(got, records[250..530].to_vec());
        j.advance(offset, lines).unwrap();
        assert!(j.is_empty());
    }

    #[test]
    fn journal_lines_from_other_versions_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill.jsonl");
        let records = synthetic_records(2, 1_767_608_243_456_000, 3_600_000_000, 7);
        // One line with a field from a newer version, one lacking optional fields.
        let mut newer = serde_json::to_value(&records[0]).unwrap();
        newer["added_later"] = serde_json::json!("x");
        let mut older = serde_json::to_value(&records[1]).unwrap();
        for k in ["call_purpose", "replaced", "tool_names", "proxy_user"] {
            older.as_object_mut().unwrap().remove(k);
        }
        std::fs::write(&path, format!("{newer}\n{older}\n")).unwrap();
        let mut j = SpillJournal::open(&path, 1 << 20).unwrap();
        let (got, _, lines) = j.peek(10).unwrap();
        assert_eq!(lines, 2);
        assert_eq!(got.len(), 2, "no line is discarded as corrupt");
        assert_eq!(got[0], records[0]);
        assert_eq!(got[1].id, records[1].id);
        assert!(!got[1].replaced && got[1].tool_names.is_empty());
    }

    #[test]
    fn rejected_records_append_to_their_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill.jsonl");
        let records = synthetic_records(3, 1_767_608_243_456_000, 3_600_000_000, 8);
        let at = append_rejected(&path, &records[..1]).unwrap();
        append_rejected(&path, &records[1..]).unwrap();
        assert_eq!(at, dir.path().join("spill.jsonl.rejected"));
        let text = std::fs::read_to_string(&at).unwrap();
        let back: Vec<UsageRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, records);
    }
}
