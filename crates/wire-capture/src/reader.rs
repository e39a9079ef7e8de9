//! Reading capture files: the header, then entries up to the end or up to
//! the first damage (a truncated or corrupt item), which is reported.

use std::path::Path;

use ciborium::Value;

use crate::format::{self, Entry, FileHeader};

/// What a file held.
#[derive(Debug, Clone, PartialEq)]
pub struct Capture {
    /// The header.
    pub header: FileHeader,
    /// Entries read before the end or the damage.
    pub entries: Vec<Entry>,
    /// Where reading stopped early, and why.
    pub damage: Option<Damage>,
}

/// A damaged region: reading stopped at `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset of the item that could not be read.
    pub offset: u64,
    /// Entries read before it.
    pub entries_read: usize,
    /// Bytes after `offset` that were skipped.
    pub bytes_skipped: u64,
    /// What was wrong.
    pub reason: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "damaged at byte {} after {} entries ({} bytes skipped): {}",
            self.offset, self.entries_read, self.bytes_skipped, self.reason
        )
    }
}

/// Why a file could not be read at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The first item is not a capture header.
    #[error("{0}")]
    Format(#[from] format::FormatError),
}

/// Largest nesting a reader follows (entries are two levels deep).
const RECURSION_LIMIT: usize = 16;

fn next_item(rest: &mut &[u8]) -> Result<Value, String> {
    // A length prefix larger than what is left is damage, not an allocation.
    ciborium::de::from_reader_with_recursion_limit(&mut *rest, RECURSION_LIMIT).map_err(|e| match e
    {
        ciborium::de::Error::Io(_) => "truncated item".to_owned(),
        other => other.to_string(),
    })
}

/// Reads a capture from bytes.
pub fn read_bytes(bytes: &[u8]) -> Result<Capture, ReadError> {
    let total = bytes.len() as u64;
    let mut rest = bytes;
    let header = match next_item(&mut rest) {
        Ok(v) => format::decode_header(&v)?,
        Err(e) => {
            return Err(ReadError::Format(format::FormatError::NotCapture(e)));
        }
    };
    let mut entries = Vec::new();
    let mut damage = None;
    while !rest.is_empty() {
        let offset = total - rest.len() as u64;
        let item =
            next_item(&mut rest).and_then(|v| format::decode_entry(v).map_err(|e| e.to_string()));
        match item {
            Ok(e) => entries.push(e),
            Err(reason) => {
                damage = Some(Damage {
                    offset,
                    entries_read: entries.len(),
                    bytes_skipped: total - offset,
                    reason,
                });
                break;
            }
        }
    }
    Ok(Capture {
        header,
        entries,
        damage,
    })
}

/// Reads a capture file.
pub fn read_file(path: &Path) -> Result<Capture, ReadError> {
    let bytes = std::fs::read(path).map_err(|source| ReadError::Io {
        path: path.display().to_string(),
        source,
    })?;
    read_bytes(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Direction, Meta, encode_entry, encode_header};

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        encode_header(
            &FileHeader {
                created_at: 1.0,
                session_id: "s".into(),
                metadata: Meta::default(),
            },
            &mut out,
        )
        .unwrap();
        for n in 0..3 {
            encode_entry(
                &Entry {
                    ts: f64::from(n),
                    dir: Direction::ClientToProxy,
                    seq: u64::from(n as u8),
                    data: vec![b'x'; 300],
                    meta: Meta::default(),
                },
                &mut out,
            )
            .unwrap();
        }
        out
    }

    #[test]
    fn a_truncated_file_is_read_up_to_the_damage() {
        let bytes = sample();
        let whole = read_bytes(&bytes).unwrap();
        assert_eq!(whole.entries.len(), 3);
        assert!(whole.damage.is_none());
        let cut = read_bytes(&bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(cut.entries.len(), 2);
        let d = cut.damage.unwrap();
        assert_eq!(d.entries_read, 2);
        assert!(d.offset > 0 && d.bytes_skipped > 0, "{d}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(read_bytes(b"").is_err());
        assert!(
            read_bytes(&[
                0xff, 0x00, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
            ])
            .is_err()
        );
        let mut bytes = sample();
        bytes.extend_from_slice(&[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let c = read_bytes(&bytes).unwrap();
        assert_eq!(c.entries.len(), 3);
        assert!(c.damage.is_some());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::format::{Direction, Meta, MetaValue, encode_entry, encode_header};

    fn file(entries: &[(f64, u8, Vec<u8>, String)]) -> (Vec<u8>, Vec<Entry>) {
        let mut out = Vec::new();
        encode_header(
            &FileHeader {
                created_at: 1.0,
                session_id: "s".into(),
                metadata: Meta::default(),
            },
            &mut out,
        )
        .unwrap();
        let mut written = Vec::new();
        for (n, (ts, dir, data, rid)) in entries.iter().enumerate() {
            let mut meta = Meta::default();
            meta.set("rid", MetaValue::Text(rid.clone()));
            meta.set("ci", MetaValue::Int(n as i64));
            let e = Entry {
                ts: *ts,
                dir: Direction::ALL[usize::from(*dir % 4)],
                seq: n as u64,
                data: data.clone(),
                meta,
            };
            encode_entry(&e, &mut out).unwrap();
            written.push(e);
        }
        (out, written)
    }

    fn entries() -> impl Strategy<Value = Vec<(f64, u8, Vec<u8>, String)>> {
        prop::collection::vec(
            (
                0.0f64..2e9,
                any::<u8>(),
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..400),
                    "[a-z ]{0,600}".prop_map(String::into_bytes),
                ],
                "[a-z0-9-]{0,12}",
            ),
            0..12,
        )
    }

    proptest! {
        #[test]
        fn whatever_is_written_reads_back(list in entries()) {
            let (bytes, written) = file(&list);
            let c = read_bytes(&bytes).unwrap();
            prop_assert!(c.damage.is_none());
            prop_assert_eq!(c.entries, written);
        }

        #[test]
        fn any_prefix_reads_up_to_the_damage(list in entries(), cut in any::<prop::sample::Index>()) {
            let (bytes, written) = file(&list);
            let at = cut.index(bytes.len() + 1);
            if let Ok(c) = read_bytes(&bytes[..at]) {
                prop_assert!(c.entries.len() <= written.len());
                prop_assert_eq!(&c.entries[..], &written[..c.entries.len()]);
                if c.entries.len() < written.len() {
                    prop_assert!(c.damage.is_some() || at < bytes.len());
                }
            }
        }

        #[test]
        fn garbage_never_panics(junk in prop::collection::vec(any::<u8>(), 0..2000), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8), list in entries()) {
            let _ = read_bytes(&junk);
            let (mut bytes, _) = file(&list);
            for (i, b) in flips {
                let i = i.index(bytes.len());
                bytes[i] ^= b;
            }
            let _ = read_bytes(&bytes);
            let _ = crate::inspect::detect_issues(
                &read_bytes(&bytes).map(|c| c.entries).unwrap_or_default(),
                std::time::Duration::from_secs(1),
            );
        }
    }
}
