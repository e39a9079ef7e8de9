//! The writer thread's side: encodes entries, appends them to the current
//! file, rotates at `max_file_bytes` and deletes the oldest files so the
//! directory stays under `max_total_bytes`.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::format::{self, Entry, FileHeader, Meta, MetaValue};
use crate::telemetry;

/// File names are `capture-<epoch ms>-<pid>-<n>.cbor`, so names sort by age
/// and two writers never pick the same name.
pub const FILE_PREFIX: &str = "capture-";
/// Extension of capture files.
pub const FILE_SUFFIX: &str = ".cbor";

/// The open capture files of one writer.
#[derive(Debug)]
pub struct RotatingFiles {
    dir: PathBuf,
    max_file_bytes: u64,
    max_total_bytes: u64,
    session_id: String,
    opened: u64,
    current: Option<OpenFile>,
    scratch: Vec<u8>,
}

#[derive(Debug)]
struct OpenFile {
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
    header_size: u64,
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl RotatingFiles {
    /// Files in `dir` (created on first write).
    pub fn new(
        dir: impl Into<PathBuf>,
        max_file_bytes: u64,
        max_total_bytes: u64,
        session_id: String,
    ) -> RotatingFiles {
        RotatingFiles {
            dir: dir.into(),
            max_file_bytes,
            max_total_bytes,
            session_id,
            opened: 0,
            current: None,
            scratch: Vec::new(),
        }
    }

    /// The file being written, if any.
    pub fn current_path(&self) -> Option<&Path> {
        self.current.as_ref().map(|f| f.path.as_path())
    }

    /// Encodes and appends one entry; returns the bytes written.
    pub fn append(&mut self, entry: &Entry) -> std::io::Result<u64> {
        self.scratch.clear();
        format::encode_entry(entry, &mut self.scratch)?;
        let len = self.scratch.len() as u64;
        let rotate = self
            .current
            .as_ref()
            .is_some_and(|f| f.size > f.header_size && f.size + len > self.max_file_bytes);
        if rotate {
            self.close_current()?;
            metrics::counter!(telemetry::ROTATIONS_TOTAL).increment(1);
        }
        if self.current.is_none() {
            self.open()?;
        }
        if let Some(f) = self.current.as_mut() {
            f.out.write_all(&self.scratch)?;
            f.size += len;
        }
        Ok(len)
    }

    /// Pushes buffered bytes to the kernel.
    pub fn flush(&mut self) -> std::io::Result<()> {
        match self.current.as_mut() {
            Some(f) => f.out.flush(),
            None => Ok(()),
        }
    }

    /// Flushes and fsyncs the current file and closes it.
    pub fn close_current(&mut self) -> std::io::Result<()> {
        if let Some(mut f) = self.current.take() {
            f.out.flush()?;
            f.out.get_ref().sync_all()?;
        }
        Ok(())
    }

    fn open(&mut self) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let now = SystemTime::now();
        let ms = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        self.opened += 1;
        let path = self.dir.join(format!(
            "{FILE_PREFIX}{ms:013}-{}-{:05}{FILE_SUFFIX}",
            std::process::id(),
            self.opened
        ));
        let file = fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        let mut metadata = Meta::default();
        metadata.set("writer", MetaValue::Text("llm-proxy".into()));
        metadata.set(
            "writer_version",
            MetaValue::Text(env!("CARGO_PKG_VERSION").into()),
        );
        metadata.set("file_index", MetaValue::Int(self.opened as i64));
        let header = FileHeader {
            created_at: epoch_secs(now),
            session_id: self.session_id.clone(),
            metadata,
        };
        let mut bytes = Vec::new();
        format::encode_header(&header, &mut bytes)?;
        let mut out = BufWriter::with_capacity(64 * 1024, file);
        out.write_all(&bytes)?;
        // Readers (inspect on a live directory) see a valid empty file,
        // never a 0-byte one, from the start.
        out.flush()?;
        let size = bytes.len() as u64;
        self.current = Some(OpenFile {
            path: path.clone(),
            out,
            size,
            header_size: size,
        });
        self.prune(&path)
    }

    /// Deletes the oldest files until the others plus a full current file fit
    /// in `max_total_bytes`.
    fn prune(&self, current: &Path) -> std::io::Result<()> {
        let mut files = capture_files(&self.dir)?;
        files.retain(|(p, _)| p != current);
        self.remove_old(files)
    }

    /// Deletes from `files` (oldest first, never the open file) until the
    /// rest plus a full current file fit in `max_total_bytes`.
    fn remove_old(&self, files: Vec<(PathBuf, u64)>) -> std::io::Result<()> {
        let budget = self.max_total_bytes.saturating_sub(self.max_file_bytes);
        let mut total: u64 = files.iter().map(|(_, size)| size).sum();
        for (path, size) in files {
            if total <= budget {
                break;
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                // Deleted by someone else meanwhile: already gone is fine.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            total -= size;
            metrics::counter!(telemetry::FILES_DELETED_TOTAL).increment(1);
        }
        Ok(())
    }
}

/// Capture files in `dir`, oldest first, with their sizes.
pub fn capture_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, u64)>> {
    let mut files = Vec::new();
    for item in fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(FILE_PREFIX) && name.ends_with(FILE_SUFFIX) {
            files.push((item.path(), item.metadata()?.len()));
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Direction;

    fn entry(n: u64) -> Entry {
        Entry {
            ts: n as f64,
            dir: Direction::ClientToProxy,
            seq: n,
            // Not compressible, so sizes are predictable.
            data: (0..100u64)
                .map(|i| ((i * 7919 + n * 31) % 251) as u8)
                .collect(),
            meta: Meta::default(),
        }
    }

    #[test]
    fn rotates_and_keeps_the_total_under_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = RotatingFiles::new(dir.path(), 1000, 3000, "s".into());
        for n in 0..200 {
            files.append(&entry(n)).unwrap();
            files.flush().unwrap();
            let list = capture_files(dir.path()).unwrap();
            let total: u64 = list.iter().map(|(_, s)| s).sum();
            assert!(total <= 3000, "total {total} after {n}");
            assert!(list.iter().all(|(_, s)| *s <= 1000));
        }
        files.close_current().unwrap();
        let list = capture_files(dir.path()).unwrap();
        assert!(list.len() >= 2, "{list:?}");
        // The newest file is the one written last and holds the last entry.
        let read = crate::reader::read_file(&list[list.len() - 1].0).unwrap();
        assert_eq!(read.entries.last().unwrap().seq, 199);
        assert!(read.damage.is_none());
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;
    use crate::format::Direction;

    fn entry(n: u64) -> Entry {
        Entry {
            ts: n as f64,
            dir: Direction::ClientToProxy,
            seq: n,
            data: vec![b'x'; 100],
            meta: Meta::default(),
        }
    }

    #[test]
    fn a_new_file_holds_its_header_before_the_first_flush() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = RotatingFiles::new(dir.path(), 1 << 20, 1 << 22, "s".into());
        files.append(&entry(1)).unwrap();
        // No flush: the entry is still buffered, but the header is on disk.
        let path = files.current_path().unwrap().to_path_buf();
        let read = crate::reader::read_file(&path).unwrap();
        assert_eq!(read.header.session_id, "s");
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.contains(&format!("-{}-", std::process::id())),
            "{name}"
        );
    }

    #[test]
    fn a_file_deleted_by_someone_else_does_not_stop_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let files = RotatingFiles::new(dir.path(), 1000, 2000, "s".into());
        // A listing that names a file which is already gone.
        let gone = dir.path().join("capture-0000000000001-1-00001.cbor");
        std::fs::write(&gone, vec![0u8; 5000]).unwrap();
        let current = dir.path().join("capture-9999999999999-1-00001.cbor");
        std::fs::write(&current, b"").unwrap();
        std::fs::remove_file(&gone).unwrap();
        // prune works from its own listing, so simulate the race directly.
        assert!(files.remove_old(vec![(gone, 5000)]).is_ok());
    }
}
