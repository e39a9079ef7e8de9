//! [`SpillJournal`]: a bounded, append-only file of records that could not
//! be written to the database, replayed in order when it returns.
//!
//! **Format.** One JSON record per line (`<path>`), appended and
//! `fdatasync`ed. The offset of the first record not yet replayed lives in
//! `<path>.head` (written to a temporary file, synced, renamed). A crash
//! between a replayed batch's commit and the head update replays that batch
//! again, which the database skips (`ON CONFLICT (id) DO NOTHING`). When
//! everything is replayed both files are truncated. A torn last line (a
//! crash mid-append) is cut off at open.
//!
//! **Ownership.** The journal file is locked (`flock`) while open: two
//! proxies cannot share one journal.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::UsageError;
use crate::record::UsageRecord;
use crate::store::ensure_parent_dir;

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
        let head_path = {
            let mut s = path.as_os_str().to_owned();
            s.push(".head");
            PathBuf::from(s)
        };
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
        if self.len + buf.len() as u64 > self.max_bytes {
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
        } else {
            self.write_head(self.head)?;
        }
        self.report();
        Ok(())
    }

    /// Gives up the journal's lock (its owner is shutting down), so a new
    /// store may open it at once.
    pub fn release(&self) {
        let _ = self.file.unlock();
    }

    fn write_head(&self, head: u64) -> Result<(), UsageError> {
        let tmp = {
            let mut s = self.head_path.as_os_str().to_owned();
            s.push(".tmp");
            PathBuf::from(s)
        };
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
}
