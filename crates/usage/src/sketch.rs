//! Mergeable summaries for usage aggregates:
//!
//! - [`LatencySketch`]: a DDSketch-style quantile sketch with 1 % relative
//!   accuracy (log-bucketed; a sparse store that turns dense as it fills;
//!   a zero bucket for 0, tiny and negative values; exact count, sum, min
//!   and max);
//! - [`DistinctCounter`]: distinct session ids, counted exactly (a set of
//!   64-bit hashes) up to [`DistinctCounter::EXACT_LIMIT`], then by a
//!   HyperLogLog (p = 14, ~0.8 % standard error) with the exact set folded in.
//!
//! Both merge exactly: merging the summaries of two record sets gives the
//! same value (`==`) as summarizing their union, in any order — which is
//! what lets hourly rollups answer like a raw scan. Both have a compact,
//! versioned binary encoding for database blobs.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::LazyLock;

use crate::error::UsageError;

// ---------------------------------------------------------------------------
// Binary encoding primitives (LEB128 varints, zigzag, little-endian floats).
// ---------------------------------------------------------------------------

/// Appends a LEB128 unsigned varint.
pub(crate) fn put_u128(buf: &mut Vec<u8>, mut v: u128) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Appends a LEB128 unsigned varint.
pub(crate) fn put_u64(buf: &mut Vec<u8>, mut v: u64) {
    // The same bytes as `put_u128`, without 128-bit arithmetic (hot in
    // `store::packed`).
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Appends a zigzag-encoded signed varint.
pub(crate) fn put_i128(buf: &mut Vec<u8>, v: i128) {
    put_u128(buf, ((v << 1) ^ (v >> 127)) as u128);
}

/// Appends a zigzag-encoded signed varint.
pub(crate) fn put_i64(buf: &mut Vec<u8>, v: i64) {
    // The same bytes as `put_i128`: an `i64`'s zigzag value fits 64 bits.
    put_u64(buf, ((v << 1) ^ (v >> 63)) as u64);
}

/// Appends an `f64` as 8 little-endian bytes.
pub(crate) fn put_f64(buf: &mut Vec<u8>, v: f64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Appends a length-prefixed UTF-8 string.
pub(crate) fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_u64(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

/// Reads what the `put_*` functions wrote; every error is an
/// [`UsageError::Encoding`] naming what was being read.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn err(&self, what: &str) -> UsageError {
        UsageError::Encoding(format!("truncated or invalid {what} at byte {}", self.pos))
    }

    /// The offset of the next byte to read.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// True when everything was read.
    pub(crate) fn is_at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// Fails unless everything was read.
    pub(crate) fn finish(&self, what: &str) -> Result<(), UsageError> {
        if self.is_at_end() {
            Ok(())
        } else {
            Err(UsageError::Encoding(format!(
                "{} trailing bytes after {what}",
                self.buf.len() - self.pos
            )))
        }
    }

    /// One byte.
    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, UsageError> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.err(what))?;
        self.pos += 1;
        Ok(b)
    }

    /// `n` raw bytes.
    pub(crate) fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], UsageError> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.err(what))?;
        let s = self.buf.get(self.pos..end).ok_or_else(|| self.err(what))?;
        self.pos = end;
        Ok(s)
    }

    /// An unsigned varint.
    pub(crate) fn u128(&mut self, what: &str) -> Result<u128, UsageError> {
        let mut v: u128 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.u8(what)?;
            if shift >= 128 || (shift == 126 && b > 0x03) {
                return Err(self.err(what));
            }
            v |= u128::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
        }
    }

    /// An unsigned varint that fits 64 bits.
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, UsageError> {
        u64::try_from(self.u128(what)?).map_err(|_| self.err(what))
    }

    /// A length or count that fits `usize` and is at most `max`.
    pub(crate) fn len(&mut self, max: usize, what: &str) -> Result<usize, UsageError> {
        usize::try_from(self.u64(what)?)
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| self.err(what))
    }

    /// A zigzag signed varint.
    pub(crate) fn i128(&mut self, what: &str) -> Result<i128, UsageError> {
        let u = self.u128(what)?;
        Ok(((u >> 1) as i128) ^ -((u & 1) as i128))
    }

    /// A zigzag signed varint that fits 64 bits.
    pub(crate) fn i64(&mut self, what: &str) -> Result<i64, UsageError> {
        i64::try_from(self.i128(what)?).map_err(|_| self.err(what))
    }

    /// An `f64`.
    pub(crate) fn f64(&mut self, what: &str) -> Result<f64, UsageError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_le_bytes(a))
    }

    /// A length-prefixed UTF-8 string.
    pub(crate) fn str(&mut self, what: &str) -> Result<&'a str, UsageError> {
        let n = self.len(self.buf.len(), what)?;
        let b = self.bytes(n, what)?;
        std::str::from_utf8(b).map_err(|_| self.err(what))
    }
}

// ---------------------------------------------------------------------------
// Latency sketch.
// ---------------------------------------------------------------------------

/// Relative accuracy of [`LatencySketch::quantile`].
pub const RELATIVE_ACCURACY: f64 = 0.01;

/// Values below this (in the sketch's unit, milliseconds) count as zero.
pub const MIN_INDEXABLE: f64 = 1e-6;

/// Smallest and largest bucket keys: values beyond the top key are clamped
/// into it (γ^2047 ≈ 6·10^17 ms), so a sketch never has more than
/// `MAX_KEY - MIN_KEY + 1` buckets.
const MIN_KEY: i32 = -700;
const MAX_KEY: i32 = 2047;

/// A store stays sparse up to this many non-empty buckets.
const SPARSE_MAX: usize = 24;

/// Sketch encoding version.
const SKETCH_FORMAT: u8 = 1;

/// ln γ with γ = (1 + α) / (1 − α).
static LN_GAMMA: LazyLock<f64> =
    LazyLock::new(|| ((1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)).ln());

/// The bucket key of a value ≥ [`MIN_INDEXABLE`]: bucket `k` holds
/// `(γ^(k−1), γ^k]`.
fn key_of(v: f64) -> i32 {
    let k = (v.ln() / *LN_GAMMA).ceil();
    if k >= f64::from(MAX_KEY) {
        MAX_KEY
    } else if k <= f64::from(MIN_KEY) {
        MIN_KEY
    } else {
        k as i32
    }
}

/// The value reported for bucket `k`: within α of every value in it.
fn value_of(k: i32) -> f64 {
    let gamma = LN_GAMMA.exp();
    2.0 * (f64::from(k) * *LN_GAMMA).exp() / (gamma + 1.0)
}

/// Bucket counts: a sorted list while small, a contiguous array after.
#[derive(Debug, Clone)]
enum Buckets {
    /// Sorted by key, counts > 0.
    Sparse(Vec<(i32, u64)>),
    /// `counts[i]` is the count of key `offset + i`.
    Dense { offset: i32, counts: Vec<u64> },
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets::Sparse(Vec::new())
    }
}

impl Buckets {
    fn add(&mut self, key: i32, n: u64) {
        match self {
            Buckets::Sparse(v) => {
                match v.binary_search_by_key(&key, |(k, _)| *k) {
                    Ok(i) => v[i].1 += n,
                    Err(i) => v.insert(i, (key, n)),
                }
                if v.len() > SPARSE_MAX {
                    let entries = std::mem::take(v);
                    *self = Buckets::dense_from(&entries);
                }
            }
            Buckets::Dense { offset, counts } => {
                if counts.is_empty() {
                    *offset = key;
                    counts.push(n);
                    return;
                }
                if key < *offset {
                    let grow = (*offset - key) as usize;
                    counts.splice(0..0, std::iter::repeat_n(0, grow));
                    *offset = key;
                }
                let i = (key - *offset) as usize;
                if i >= counts.len() {
                    counts.resize(i + 1, 0);
                }
                counts[i] += n;
            }
        }
    }

    fn dense_from(entries: &[(i32, u64)]) -> Buckets {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Buckets::default();
        };
        let offset = first.0;
        let mut counts = vec![0u64; (last.0 - offset) as usize + 1];
        for (k, c) in entries {
            counts[(k - offset) as usize] += c;
        }
        Buckets::Dense { offset, counts }
    }

    /// Non-empty buckets in key order.
    fn iter(&self) -> Box<dyn Iterator<Item = (i32, u64)> + '_> {
        match self {
            Buckets::Sparse(v) => Box::new(v.iter().copied()),
            Buckets::Dense { offset, counts } => Box::new(
                counts
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c > 0)
                    .map(move |(i, c)| (offset + i as i32, *c)),
            ),
        }
    }

    fn non_empty(&self) -> usize {
        match self {
            Buckets::Sparse(v) => v.len(),
            Buckets::Dense { counts, .. } => counts.iter().filter(|c| **c > 0).count(),
        }
    }

    fn merge(&mut self, other: &Buckets) {
        match (&mut *self, other) {
            (
                Buckets::Dense { offset, counts },
                Buckets::Dense {
                    offset: o_offset,
                    counts: o_counts,
                },
            ) if !o_counts.is_empty() => {
                if counts.is_empty() {
                    *offset = *o_offset;
                    counts.clone_from(o_counts);
                    return;
                }
                if *o_offset < *offset {
                    let grow = (*offset - *o_offset) as usize;
                    counts.splice(0..0, std::iter::repeat_n(0, grow));
                    *offset = *o_offset;
                }
                let start = (*o_offset - *offset) as usize;
                if start + o_counts.len() > counts.len() {
                    counts.resize(start + o_counts.len(), 0);
                }
                for (a, b) in counts[start..start + o_counts.len()]
                    .iter_mut()
                    .zip(o_counts)
                {
                    *a += b;
                }
            }
            (Buckets::Sparse(v), Buckets::Dense { .. }) => {
                let mine = std::mem::take(v);
                *self = other.clone();
                for (k, c) in mine {
                    self.add(k, c);
                }
            }
            _ => {
                for (k, c) in other.iter() {
                    self.add(k, c);
                }
            }
        }
    }
}

impl PartialEq for Buckets {
    fn eq(&self, other: &Buckets) -> bool {
        self.iter().eq(other.iter())
    }
}

/// A mergeable quantile sketch of non-negative values (milliseconds), with
/// [`RELATIVE_ACCURACY`] on quantiles and exact count, sum, min and max.
///
/// Values below [`MIN_INDEXABLE`] (0, tiny, and negative values — clock
/// skew) land in a zero bucket reported as 0 (clamped to the exact min);
/// NaN is ignored. The sum is kept in integer nanoseconds so that merging is
/// exact and order-independent.
#[derive(Debug, Clone)]
pub struct LatencySketch {
    count: u64,
    zero_count: u64,
    sum_ns: i128,
    min: f64,
    max: f64,
    buckets: Buckets,
}

impl Default for LatencySketch {
    fn default() -> Self {
        LatencySketch {
            count: 0,
            zero_count: 0,
            sum_ns: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            buckets: Buckets::default(),
        }
    }
}

impl PartialEq for LatencySketch {
    fn eq(&self, other: &LatencySketch) -> bool {
        self.count == other.count
            && self.zero_count == other.zero_count
            && self.sum_ns == other.sum_ns
            && self.min.to_bits() == other.min.to_bits()
            && self.max.to_bits() == other.max.to_bits()
            && self.buckets == other.buckets
    }
}

/// Milliseconds to integer nanoseconds (saturating).
pub(crate) fn ms_to_ns(ms: f64) -> i128 {
    (ms * 1e6).round() as i128
}

impl LatencySketch {
    /// An empty sketch.
    pub fn new() -> LatencySketch {
        LatencySketch::default()
    }

    /// Adds one value (milliseconds). NaN is ignored.
    pub fn add(&mut self, v: f64) {
        if v.is_nan() {
            return;
        }
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(ms_to_ns(v));
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if v < MIN_INDEXABLE {
            self.zero_count += 1;
        } else {
            self.buckets.add(key_of(v), 1);
        }
    }

    /// Folds `other` into `self`.
    pub fn merge(&mut self, other: &LatencySketch) {
        if other.count == 0 {
            return;
        }
        self.count += other.count;
        self.zero_count += other.zero_count;
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.buckets.merge(&other.buckets);
    }

    /// Values added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of the values (exact to the nanosecond).
    pub fn sum(&self) -> f64 {
        self.sum_ns as f64 / 1e6
    }

    /// Sum of the values in integer nanoseconds.
    pub fn sum_ns(&self) -> i128 {
        self.sum_ns
    }

    /// Smallest value, `None` when empty.
    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }

    /// Largest value, `None` when empty.
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// Mean, `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum() / self.count as f64)
    }

    /// The `q`-quantile (0 ≤ q ≤ 1): within [`RELATIVE_ACCURACY`] of the
    /// value of rank `⌊q·(count − 1)⌋` among the sorted values; `None` when
    /// empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || q.is_nan() {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        if q == 0.0 {
            return Some(self.min);
        }
        if q == 1.0 {
            return Some(self.max);
        }
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        let mut seen = self.zero_count;
        let mut value = if rank < seen { Some(0.0) } else { None };
        if value.is_none() {
            for (k, c) in self.buckets.iter() {
                seen += c;
                if rank < seen {
                    value = Some(value_of(k));
                    break;
                }
            }
        }
        Some(value.unwrap_or(self.max).clamp(self.min, self.max))
    }

    /// Appends the binary encoding.
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        buf.push(SKETCH_FORMAT);
        put_u64(buf, self.count);
        if self.count == 0 {
            return;
        }
        put_u64(buf, self.zero_count);
        put_i128(buf, self.sum_ns);
        put_f64(buf, self.min);
        put_f64(buf, self.max);
        let entries: Vec<(i32, u64)> = self.buckets.iter().collect();
        let span = match (entries.first(), entries.last()) {
            (Some(a), Some(b)) => (b.0 - a.0) as usize + 1,
            _ => 0,
        };
        // Sparse costs ≥ 2 bytes a bucket, dense ≥ 1 a key of the span.
        if entries.len() * 2 <= span {
            buf.push(0);
            put_u64(buf, entries.len() as u64);
            let mut prev = MIN_KEY - 1;
            for (k, c) in &entries {
                put_u64(buf, (k - prev) as u64);
                put_u64(buf, *c);
                prev = *k;
            }
        } else {
            buf.push(1);
            let offset = entries.first().map_or(0, |e| e.0);
            put_i64(buf, i64::from(offset));
            put_u64(buf, span as u64);
            let mut next = offset;
            for (k, c) in &entries {
                for _ in next..*k {
                    buf.push(0);
                }
                put_u64(buf, *c);
                next = k + 1;
            }
        }
    }

    /// The binary encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.encode_into(&mut buf);
        buf
    }

    /// Decodes what [`LatencySketch::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<LatencySketch, UsageError> {
        let mut r = Reader::new(bytes);
        let s = LatencySketch::decode_from(&mut r)?;
        r.finish("latency sketch")?;
        Ok(s)
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<LatencySketch, UsageError> {
        let bad = |m: &str| UsageError::Encoding(format!("latency sketch: {m}"));
        let version = r.u8("sketch version")?;
        if version != SKETCH_FORMAT {
            return Err(bad(&format!("unknown format version {version}")));
        }
        let count = r.u64("sketch count")?;
        if count == 0 {
            return Ok(LatencySketch::default());
        }
        let zero_count = r.u64("sketch zero count")?;
        let sum_ns = r.i128("sketch sum")?;
        let min = r.f64("sketch min")?;
        let max = r.f64("sketch max")?;
        let max_span = (MAX_KEY - MIN_KEY + 1) as usize;
        let mut entries: Vec<(i32, u64)> = Vec::new();
        match r.u8("sketch store kind")? {
            0 => {
                let n = r.len(max_span, "sketch bucket count")?;
                let mut key = i64::from(MIN_KEY) - 1;
                for _ in 0..n {
                    let delta = r.u64("sketch key delta")?;
                    key = key.saturating_add(i64::try_from(delta).unwrap_or(i64::MAX));
                    if delta == 0 || key > i64::from(MAX_KEY) {
                        return Err(bad("bucket key out of range"));
                    }
                    let c = r.u64("sketch bucket")?;
                    entries.push((key as i32, c));
                }
            }
            1 => {
                let offset = r.i64("sketch offset")?;
                let span = r.len(max_span, "sketch span")?;
                if offset < i64::from(MIN_KEY) || offset + span as i64 - 1 > i64::from(MAX_KEY) {
                    return Err(bad("bucket range out of bounds"));
                }
                for i in 0..span {
                    let c = r.u64("sketch bucket")?;
                    if c > 0 {
                        entries.push(((offset + i as i64) as i32, c));
                    }
                }
            }
            k => return Err(bad(&format!("unknown store kind {k}"))),
        }
        let total = entries
            .iter()
            .try_fold(zero_count, |acc, (_, c)| acc.checked_add(*c));
        if total != Some(count) || min.is_nan() || max.is_nan() || min > max {
            return Err(bad("inconsistent counts or bounds"));
        }
        let buckets = if entries.len() > SPARSE_MAX {
            Buckets::dense_from(&entries)
        } else {
            Buckets::Sparse(entries)
        };
        Ok(LatencySketch {
            count,
            zero_count,
            sum_ns,
            min,
            max,
            buckets,
        })
    }

    /// Number of non-empty buckets (memory and encoding size grow with it).
    pub fn bucket_count(&self) -> usize {
        self.buckets.non_empty()
    }
}

// ---------------------------------------------------------------------------
// Distinct counter.
// ---------------------------------------------------------------------------

/// HyperLogLog precision: 2^14 registers.
const HLL_P: u32 = 14;
const HLL_REGISTERS: usize = 1 << HLL_P;
const DISTINCT_FORMAT_EXACT: u8 = 1;
const DISTINCT_FORMAT_HLL: u8 = 2;

/// The stable 64-bit hash of a session id: FNV-1a, then the MurmurHash3
/// finalizer so every bit is well mixed (HyperLogLog needs that). Part of
/// the stored format: never change it.
pub fn session_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A pass-through hasher for already well-mixed 64-bit hashes.
#[derive(Default)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type HashSet64 = HashSet<u64, BuildHasherDefault<IdentityHasher>>;

/// Counts distinct strings: exactly up to [`DistinctCounter::EXACT_LIMIT`]
/// distinct values, then with a HyperLogLog. The state depends only on the
/// set of values added, never on the order of adds and merges.
#[derive(Debug, Clone, Default)]
pub struct DistinctCounter {
    exact: HashSet64,
    /// Registers once past the exact limit.
    hll: Option<Box<[u8]>>,
}

impl PartialEq for DistinctCounter {
    fn eq(&self, other: &DistinctCounter) -> bool {
        self.exact == other.exact && self.hll == other.hll
    }
}

fn hll_add(regs: &mut [u8], h: u64) {
    let idx = (h >> (64 - HLL_P)) as usize;
    let rest = (h << HLL_P) | (1 << (HLL_P - 1));
    let rho = rest.leading_zeros() as u8 + 1;
    if let Some(r) = regs.get_mut(idx)
        && *r < rho
    {
        *r = rho;
    }
}

impl DistinctCounter {
    /// Largest number of distinct values counted exactly.
    pub const EXACT_LIMIT: usize = 4096;

    /// An empty counter.
    pub fn new() -> DistinctCounter {
        DistinctCounter::default()
    }

    /// Adds a value.
    pub fn insert(&mut self, value: &str) {
        self.insert_hash(session_hash(value));
    }

    /// Adds a value by its [`session_hash`].
    pub fn insert_hash(&mut self, h: u64) {
        match &mut self.hll {
            Some(regs) => hll_add(regs, h),
            None => {
                self.exact.insert(h);
                if self.exact.len() > Self::EXACT_LIMIT {
                    self.convert_to_hll();
                }
            }
        }
    }

    fn convert_to_hll(&mut self) {
        let mut regs = vec![0u8; HLL_REGISTERS].into_boxed_slice();
        for h in self.exact.drain() {
            hll_add(&mut regs, h);
        }
        self.exact = HashSet64::default();
        self.hll = Some(regs);
    }

    /// Folds `other` into `self`.
    pub fn merge(&mut self, other: &DistinctCounter) {
        match (&mut self.hll, &other.hll) {
            (Some(mine), Some(theirs)) => {
                for (a, b) in mine.iter_mut().zip(theirs.iter()) {
                    *a = (*a).max(*b);
                }
            }
            (Some(mine), None) => {
                for h in &other.exact {
                    hll_add(mine, *h);
                }
            }
            (None, Some(theirs)) => {
                let mut regs = theirs.clone();
                for h in self.exact.drain() {
                    hll_add(&mut regs, h);
                }
                self.exact = HashSet64::default();
                self.hll = Some(regs);
            }
            (None, None) => {
                self.exact
                    .reserve(other.exact.len().min(Self::EXACT_LIMIT + 1));
                for h in &other.exact {
                    self.insert_hash(*h);
                }
            }
        }
    }

    /// True while the count is exact.
    pub fn is_exact(&self) -> bool {
        self.hll.is_none()
    }

    /// The number of distinct values (an estimate once past the exact limit).
    pub fn count(&self) -> u64 {
        let Some(regs) = &self.hll else {
            return self.exact.len() as u64;
        };
        let m = HLL_REGISTERS as f64;
        let mut sum = 0.0;
        let mut zeros = 0usize;
        for r in regs.iter() {
            sum += 2f64.powi(-i32::from(*r));
            if *r == 0 {
                zeros += 1;
            }
        }
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        let estimate = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        // Past the exact limit by construction.
        (estimate.round() as u64).max(Self::EXACT_LIMIT as u64 + 1)
    }

    /// Appends the binary encoding.
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        match &self.hll {
            None => {
                buf.push(DISTINCT_FORMAT_EXACT);
                put_u64(buf, self.exact.len() as u64);
                let mut hashes: Vec<u64> = self.exact.iter().copied().collect();
                hashes.sort_unstable();
                for h in hashes {
                    buf.extend_from_slice(&h.to_le_bytes());
                }
            }
            Some(regs) => {
                buf.push(DISTINCT_FORMAT_HLL);
                buf.extend_from_slice(regs);
            }
        }
    }

    /// The binary encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.encode_into(&mut buf);
        buf
    }

    /// Decodes what [`DistinctCounter::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<DistinctCounter, UsageError> {
        let mut r = Reader::new(bytes);
        let c = DistinctCounter::decode_from(&mut r)?;
        r.finish("distinct counter")?;
        Ok(c)
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<DistinctCounter, UsageError> {
        match r.u8("distinct counter kind")? {
            DISTINCT_FORMAT_EXACT => {
                let n = r.len(Self::EXACT_LIMIT, "distinct count")?;
                let mut exact = HashSet64::default();
                exact.reserve(n);
                for chunk in r.bytes(n * 8, "distinct hashes")?.chunks_exact(8) {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(chunk);
                    exact.insert(u64::from_le_bytes(a));
                }
                if exact.len() != n {
                    return Err(UsageError::Encoding(
                        "distinct counter: duplicate hashes".into(),
                    ));
                }
                Ok(DistinctCounter { exact, hll: None })
            }
            DISTINCT_FORMAT_HLL => {
                let regs = r.bytes(HLL_REGISTERS, "hyperloglog registers")?;
                if regs.iter().any(|v| u32::from(*v) > 64 - HLL_P + 1) {
                    return Err(UsageError::Encoding(
                        "distinct counter: register out of range".into(),
                    ));
                }
                Ok(DistinctCounter {
                    exact: HashSet64::default(),
                    hll: Some(regs.to_vec().into_boxed_slice()),
                })
            }
            k => Err(UsageError::Encoding(format!(
                "distinct counter: unknown kind {k}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A small deterministic PRNG (SplitMix64).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let u1 = self.unit().max(1e-300);
            let u2 = self.unit();
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }
    }

    fn assert_quantiles_accurate(values: &[f64]) {
        let mut s = LatencySketch::new();
        for v in values {
            s.add(*v);
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let exact = sorted[(q * (sorted.len() - 1) as f64).floor() as usize];
            let got = s.quantile(q).unwrap();
            let tolerance = RELATIVE_ACCURACY * exact.abs() + 1e-9;
            assert!(
                (got - exact).abs() <= tolerance,
                "q={q}: got {got}, exact {exact}"
            );
        }
        assert_eq!(s.count(), values.len() as u64);
        assert_eq!(s.min(), sorted.first().copied());
        assert_eq!(s.max(), sorted.last().copied());
    }

    #[test]
    fn quantiles_within_one_percent_on_uniform_and_lognormal_data() {
        let mut rng = Rng(7);
        let uniform: Vec<f64> = (0..50_000).map(|_| 1.0 + rng.unit() * 9_999.0).collect();
        assert_quantiles_accurate(&uniform);
        let lognormal: Vec<f64> = (0..50_000)
            .map(|_| (6.0 + 1.5 * rng.normal()).exp())
            .collect();
        assert_quantiles_accurate(&lognormal);
        let small: Vec<f64> = (0..17).map(|_| rng.unit() * 3.0 + 0.01).collect();
        assert_quantiles_accurate(&small);
    }

    #[test]
    fn zero_tiny_and_negative_values_land_in_the_zero_bucket() {
        let mut s = LatencySketch::new();
        for v in [0.0, 0.0, 1e-9, -0.5, 10.0, f64::NAN] {
            s.add(v);
        }
        assert_eq!(s.count(), 5);
        assert_eq!(s.min(), Some(-0.5));
        assert_eq!(s.max(), Some(10.0));
        assert_eq!(s.quantile(0.5), Some(0.0));
        // Rank ⌊0.99 · 4⌋ = 3 is the tiny value, reported as 0.
        assert_eq!(s.quantile(0.99), Some(0.0));
        assert_eq!(s.quantile(1.0), Some(10.0));
        assert!((s.sum() - 9.5).abs() < 1e-9);
        assert_eq!(LatencySketch::from_bytes(&s.to_bytes()).unwrap(), s);
        assert_eq!(LatencySketch::new().quantile(0.5), None);
        assert_eq!(LatencySketch::new().mean(), None);
    }

    #[test]
    fn huge_values_are_clamped_into_the_top_bucket() {
        let mut s = LatencySketch::new();
        s.add(1e300);
        s.add(1.0);
        assert_eq!(s.quantile(1.0), Some(1e300));
        assert_eq!(LatencySketch::from_bytes(&s.to_bytes()).unwrap(), s);
    }

    #[test]
    fn corrupt_sketch_bytes_are_errors_not_panics() {
        let mut s = LatencySketch::new();
        for i in 0..100 {
            s.add(f64::from(i));
        }
        let bytes = s.to_bytes();
        for cut in 0..bytes.len() {
            assert!(
                LatencySketch::from_bytes(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut bad = bytes.clone();
        bad[0] = 99;
        assert!(LatencySketch::from_bytes(&bad).is_err());
    }

    #[test]
    fn exact_counting_under_the_threshold_then_hyperloglog() {
        let mut c = DistinctCounter::new();
        for i in 0..DistinctCounter::EXACT_LIMIT {
            c.insert(&format!("session-{i}"));
            c.insert(&format!("session-{i}"));
        }
        assert!(c.is_exact());
        assert_eq!(c.count(), DistinctCounter::EXACT_LIMIT as u64);
        assert_eq!(DistinctCounter::from_bytes(&c.to_bytes()).unwrap(), c);
        for n in [5_000usize, 20_000, 100_000] {
            let mut c = DistinctCounter::new();
            for i in 0..n {
                c.insert(&format!("s{i}"));
            }
            assert!(!c.is_exact());
            let err = (c.count() as f64 - n as f64).abs() / n as f64;
            assert!(err < 0.03, "n={n}: {} ({err})", c.count());
            assert_eq!(DistinctCounter::from_bytes(&c.to_bytes()).unwrap(), c);
        }
    }

    #[test]
    fn distinct_merge_crossing_the_threshold_equals_the_union() {
        let mut a = DistinctCounter::new();
        let mut b = DistinctCounter::new();
        let mut all = DistinctCounter::new();
        for i in 0..3000 {
            a.insert(&i.to_string());
            all.insert(&i.to_string());
        }
        for i in 2000..5500 {
            b.insert(&i.to_string());
            all.insert(&i.to_string());
        }
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, all);
        assert_eq!(ba, all);
        // Overlapping sets whose union stays under the limit stay exact.
        let mut small = a.clone();
        small.merge(&a);
        assert!(small.is_exact());
        assert_eq!(small.count(), 3000);
    }

    fn sketch_of(values: &[f64]) -> LatencySketch {
        let mut s = LatencySketch::new();
        for v in values {
            s.add(*v);
        }
        s
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(0.0),
            0.0..1e-5f64,
            0.001..10.0f64,
            1.0..1e6f64,
            -5.0..0.0f64,
        ]
    }

    proptest! {
        #[test]
        fn sketch_merge_equals_sketch_of_union(
            a in proptest::collection::vec(value(), 0..200),
            b in proptest::collection::vec(value(), 0..200),
        ) {
            let mut merged = sketch_of(&a);
            merged.merge(&sketch_of(&b));
            let mut union = a.clone();
            union.extend_from_slice(&b);
            prop_assert_eq!(&merged, &sketch_of(&union));
            let mut other_order = sketch_of(&b);
            other_order.merge(&sketch_of(&a));
            prop_assert_eq!(&other_order, &merged);
        }

        #[test]
        fn sketch_round_trips(values in proptest::collection::vec(value(), 0..300)) {
            let s = sketch_of(&values);
            let back = LatencySketch::from_bytes(&s.to_bytes()).unwrap();
            prop_assert_eq!(&back, &s);
            prop_assert_eq!(back.quantile(0.5), s.quantile(0.5));
        }

        #[test]
        fn sketch_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = LatencySketch::from_bytes(&bytes);
            let _ = DistinctCounter::from_bytes(&bytes);
        }

        #[test]
        fn distinct_merge_equals_union(
            a in proptest::collection::vec(0u32..6000, 0..300),
            b in proptest::collection::vec(0u32..6000, 0..300),
            big in any::<bool>(),
        ) {
            let fill = |v: &[u32], offset: u32| {
                let mut c = DistinctCounter::new();
                for x in v { c.insert(&x.to_string()); }
                if big { for x in 0..4100 { c.insert(&format!("{offset}-{x}")); } }
                c
            };
            let mut merged = fill(&a, 1);
            merged.merge(&fill(&b, 2));
            let mut union = fill(&a, 1);
            for x in &b { union.insert(&x.to_string()); }
            if big { for x in 0..4100 { union.insert(&format!("2-{x}")); } }
            prop_assert_eq!(&merged, &union);
            prop_assert_eq!(DistinctCounter::from_bytes(&merged.to_bytes()).unwrap(), merged);
        }
    }
}
