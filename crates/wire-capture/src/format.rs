//! The capture file format (SPEC §8, the original proxy's capture V2): a
//! header map, then entry maps, concatenated CBOR data items.

use std::io::{Read, Write};

use ciborium::Value;
use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;

/// The header's `magic`.
pub const MAGIC: &str = "LLMPROXY-CAPTURE-V2";
/// The header's `version`.
pub const VERSION: u64 = 2;
/// Payloads longer than this are zlib-compressed when that makes them smaller.
pub const COMPRESS_ABOVE: usize = 128;

/// Which leg an entry belongs to (`dir`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// 0: client → proxy.
    ClientToProxy,
    /// 1: proxy → client.
    ProxyToClient,
    /// 2: proxy → backend.
    ProxyToBackend,
    /// 3: backend → proxy.
    BackendToProxy,
}

impl Direction {
    /// All four, in `dir` order.
    pub const ALL: [Direction; 4] = [
        Direction::ClientToProxy,
        Direction::ProxyToClient,
        Direction::ProxyToBackend,
        Direction::BackendToProxy,
    ];

    /// The `dir` number.
    pub fn code(self) -> u8 {
        match self {
            Direction::ClientToProxy => 0,
            Direction::ProxyToClient => 1,
            Direction::ProxyToBackend => 2,
            Direction::BackendToProxy => 3,
        }
    }

    /// The direction of a `dir` number.
    pub fn from_code(code: u64) -> Option<Direction> {
        Direction::ALL
            .into_iter()
            .find(|d| u64::from(d.code()) == code)
    }

    /// A short name for listings (`client_request`, ...), also accepted by filters.
    pub fn name(self) -> &'static str {
        match self {
            Direction::ClientToProxy => "client_request",
            Direction::ProxyToClient => "client_response",
            Direction::ProxyToBackend => "backend_request",
            Direction::BackendToProxy => "backend_response",
        }
    }

    /// Parses a filter value: a `dir` number or a [`Direction::name`].
    pub fn parse(s: &str) -> Option<Direction> {
        let s = s.trim();
        s.parse::<u64>()
            .ok()
            .and_then(Direction::from_code)
            .or_else(|| Direction::ALL.into_iter().find(|d| d.name() == s))
    }
}

/// A `meta` value: the format only uses these shapes.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Text (`sid`, `rid`, `be`, `mod`, `ua`, `err`).
    Text(String),
    /// Integer (`sc`, `ci`, `tc`, `tb`).
    Int(i64),
    /// Milliseconds (`ttfb`, `lat`, `sdur`).
    Float(f64),
    /// Flags (`ss`, `se`).
    Bool(bool),
}

/// An entry's `meta` map, in insertion order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta(pub Vec<(String, MetaValue)>);

impl Meta {
    /// Adds or replaces `key`.
    pub fn set(&mut self, key: &str, value: MetaValue) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `key` as text.
    pub fn text(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            MetaValue::Text(s) => Some(s),
            _ => None,
        }
    }

    /// `key` as an integer.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            MetaValue::Int(i) => Some(*i),
            MetaValue::Float(f) => Some(*f as i64),
            _ => None,
        }
    }

    /// `key` as a number.
    pub fn float(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            MetaValue::Float(f) => Some(*f),
            MetaValue::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// `key` is `true`.
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some(MetaValue::Bool(true)))
    }
}

/// The first data item of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileHeader {
    /// Creation time, epoch seconds.
    pub created_at: f64,
    /// The writer's session (one per proxy run).
    pub session_id: String,
    /// Free-form facts about the writer.
    pub metadata: Meta,
}

/// One captured payload of one leg.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Epoch seconds.
    pub ts: f64,
    /// Leg.
    pub dir: Direction,
    /// Position in the writer's sequence.
    pub seq: u64,
    /// The payload, decompressed.
    pub data: Vec<u8>,
    /// Compact metadata.
    pub meta: Meta,
}

impl Entry {
    /// The request id (`meta.rid`), empty when absent.
    pub fn rid(&self) -> &str {
        self.meta.text("rid").unwrap_or("")
    }

    /// The session id (`meta.sid`), empty when absent.
    pub fn sid(&self) -> &str {
        self.meta.text("sid").unwrap_or("")
    }
}

fn meta_value(m: &Meta) -> Value {
    Value::Map(
        m.0.iter()
            .map(|(k, v)| {
                let v = match v {
                    MetaValue::Text(s) => Value::Text(s.clone()),
                    MetaValue::Int(i) => Value::Integer((*i).into()),
                    MetaValue::Float(f) => Value::Float(*f),
                    MetaValue::Bool(b) => Value::Bool(*b),
                };
                (Value::Text(k.clone()), v)
            })
            .collect(),
    )
}

fn encode(value: &Value, out: &mut Vec<u8>) -> std::io::Result<()> {
    ciborium::into_writer(value, out).map_err(|e| std::io::Error::other(e.to_string()))
}

/// Appends the CBOR of a header to `out`.
pub fn encode_header(h: &FileHeader, out: &mut Vec<u8>) -> std::io::Result<()> {
    let map = Value::Map(vec![
        (Value::Text("magic".into()), Value::Text(MAGIC.into())),
        (
            Value::Text("version".into()),
            Value::Integer(VERSION.into()),
        ),
        (Value::Text("created_at".into()), Value::Float(h.created_at)),
        (
            Value::Text("session_id".into()),
            Value::Text(h.session_id.clone()),
        ),
        (Value::Text("metadata".into()), meta_value(&h.metadata)),
    ]);
    encode(&map, out)
}

/// Appends the CBOR of an entry to `out`, compressing `data` when it pays.
pub fn encode_entry(e: &Entry, out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut map = vec![
        (Value::Text("ts".into()), Value::Float(e.ts)),
        (
            Value::Text("dir".into()),
            Value::Integer(e.dir.code().into()),
        ),
        (Value::Text("seq".into()), Value::Integer(e.seq.into())),
    ];
    match compress(&e.data)? {
        Some(z) => {
            map.push((Value::Text("data".into()), Value::Bytes(z)));
            map.push((Value::Text("enc".into()), Value::Text("zlib".into())));
        }
        None => map.push((Value::Text("data".into()), Value::Bytes(e.data.clone()))),
    }
    if !e.meta.0.is_empty() {
        map.push((Value::Text("meta".into()), meta_value(&e.meta)));
    }
    encode(&Value::Map(map), out)
}

/// The zlib form of `data` when it is over [`COMPRESS_ABOVE`] and smaller.
fn compress(data: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    if data.len() <= COMPRESS_ABOVE {
        return Ok(None);
    }
    let mut z = ZlibEncoder::new(Vec::with_capacity(data.len() / 2), Compression::fast());
    z.write_all(data)?;
    let z = z.finish()?;
    Ok((z.len() < data.len()).then_some(z))
}

/// Why a data item is not a valid header or entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The first item is not a capture V2 header.
    #[error("not a capture file: {0}")]
    NotCapture(String),
    /// An entry map lacks a field or has the wrong type.
    #[error("bad entry: {0}")]
    BadEntry(String),
}

fn field<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Float(f) => Some(*f),
        Value::Integer(i) => Some(i128::from(*i) as f64),
        _ => None,
    }
}

fn meta_from(v: Option<&Value>) -> Meta {
    let Some(Value::Map(m)) = v else {
        return Meta::default();
    };
    Meta(
        m.iter()
            .filter_map(|(k, v)| {
                let k = k.as_text()?.to_owned();
                let v = match v {
                    Value::Text(s) => MetaValue::Text(s.clone()),
                    Value::Integer(i) => MetaValue::Int(i64::try_from(*i).ok()?),
                    Value::Float(f) => MetaValue::Float(*f),
                    Value::Bool(b) => MetaValue::Bool(*b),
                    _ => return None,
                };
                Some((k, v))
            })
            .collect(),
    )
}

/// Reads a header from a decoded data item.
pub fn decode_header(v: &Value) -> Result<FileHeader, FormatError> {
    let Value::Map(m) = v else {
        return Err(FormatError::NotCapture("first item is not a map".into()));
    };
    let magic = field(m, "magic").and_then(Value::as_text);
    if magic != Some(MAGIC) {
        return Err(FormatError::NotCapture(format!(
            "magic is {magic:?}, expected {MAGIC:?}"
        )));
    }
    let version = field(m, "version").and_then(number);
    if version != Some(VERSION as f64) {
        return Err(FormatError::NotCapture(format!(
            "version is {version:?}, expected {VERSION}"
        )));
    }
    Ok(FileHeader {
        created_at: field(m, "created_at").and_then(number).unwrap_or(0.0),
        session_id: field(m, "session_id")
            .and_then(Value::as_text)
            .unwrap_or("")
            .to_owned(),
        metadata: meta_from(field(m, "metadata")),
    })
}

/// Largest payload a reader inflates (a guard against zlib bombs).
const MAX_INFLATED: u64 = 256 * 1024 * 1024;

/// Reads an entry from a decoded data item, inflating `data`.
pub fn decode_entry(v: Value) -> Result<Entry, FormatError> {
    let Value::Map(mut m) = v else {
        return Err(FormatError::BadEntry("not a map".into()));
    };
    let ts = field(&m, "ts")
        .and_then(number)
        .ok_or_else(|| FormatError::BadEntry("no ts".into()))?;
    let dir = field(&m, "dir")
        .and_then(number)
        .and_then(|d| Direction::from_code(d as u64))
        .ok_or_else(|| FormatError::BadEntry("no valid dir".into()))?;
    let seq = field(&m, "seq").and_then(number).unwrap_or(0.0) as u64;
    let zlib = field(&m, "enc").and_then(Value::as_text) == Some("zlib");
    let meta = meta_from(field(&m, "meta"));
    let pos = m.iter().position(|(k, _)| k.as_text() == Some("data"));
    let raw = match pos.map(|i| m.swap_remove(i).1) {
        Some(Value::Bytes(b)) => b,
        Some(Value::Text(t)) => t.into_bytes(),
        None => Vec::new(),
        Some(_) => return Err(FormatError::BadEntry("data is not bytes".into())),
    };
    let data = if zlib {
        let mut out = Vec::new();
        ZlibDecoder::new(&raw[..])
            .take(MAX_INFLATED)
            .read_to_end(&mut out)
            .map_err(|e| FormatError::BadEntry(format!("zlib: {e}")))?;
        out
    } else {
        raw
    };
    Ok(Entry {
        ts,
        dir,
        seq,
        data,
        meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips_and_compresses_only_when_it_pays() {
        let mut meta = Meta::default();
        meta.set("rid", MetaValue::Text("r1".into()));
        meta.set("ci", MetaValue::Int(3));
        meta.set("ss", MetaValue::Bool(true));
        for data in [b"short".to_vec(), vec![b'a'; 4000]] {
            let e = Entry {
                ts: 1.5,
                dir: Direction::BackendToProxy,
                seq: 7,
                data: data.clone(),
                meta: meta.clone(),
            };
            let mut out = Vec::new();
            encode_entry(&e, &mut out).unwrap();
            if data.len() > COMPRESS_ABOVE {
                assert!(out.len() < 200, "compressed: {}", out.len());
            }
            let v: Value = ciborium::from_reader(&out[..]).unwrap();
            let zlib = matches!(&v, Value::Map(m) if field(m, "enc").is_some());
            assert_eq!(zlib, data.len() > COMPRESS_ABOVE);
            assert_eq!(decode_entry(v).unwrap(), e);
        }
    }

    #[test]
    fn header_checks_magic_and_version() {
        let h = FileHeader {
            created_at: 2.0,
            session_id: "s".into(),
            metadata: Meta::default(),
        };
        let mut out = Vec::new();
        encode_header(&h, &mut out).unwrap();
        let v: Value = ciborium::from_reader(&out[..]).unwrap();
        assert_eq!(decode_header(&v).unwrap(), h);
        let bad = Value::Map(vec![(Value::Text("magic".into()), Value::Text("X".into()))]);
        assert!(matches!(
            decode_header(&bad),
            Err(FormatError::NotCapture(_))
        ));
    }

    #[test]
    fn directions_parse_by_number_and_name() {
        assert_eq!(Direction::parse("2"), Some(Direction::ProxyToBackend));
        assert_eq!(
            Direction::parse("client_response"),
            Some(Direction::ProxyToClient)
        );
        assert_eq!(Direction::parse("9"), None);
    }
}
