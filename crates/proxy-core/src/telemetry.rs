//! Metric names and label helpers, in one place. Labels come from bounded
//! sets only: backend names (from config), front-end protocol, status class,
//! error kind — never paths, keys, models or session ids.

/// Exchanges finished, by `frontend`, `backend`, `status_class`, `outcome`.
pub const EXCHANGES_TOTAL: &str = "llm_proxy_exchanges_total";
/// Receipt → end of response, by `frontend`, `backend`.
pub const EXCHANGE_DURATION_SECONDS: &str = "llm_proxy_exchange_duration_seconds";
/// Receipt → first response byte to the client, by `frontend`, `backend`.
pub const TTFT_SECONDS: &str = "llm_proxy_ttft_seconds";
/// Proxy time (total minus upstream waiting), by `frontend`.
pub const PROXY_OVERHEAD_SECONDS: &str = "llm_proxy_overhead_seconds";
/// Upstream attempts, by `backend`, `result` (`ok`, `status_5xx`, `status_429`, or an error kind).
pub const UPSTREAM_ATTEMPTS_TOTAL: &str = "llm_proxy_upstream_attempts_total";
/// Failovers to the next route target, by `from_backend`.
pub const FAILOVERS_TOTAL: &str = "llm_proxy_failovers_total";

/// HTTP requests of any route, by `route` (a fixed set) and `status_class`.
pub const HTTP_REQUESTS_TOTAL: &str = "llm_proxy_http_requests_total";
/// Receipt → response head, by `route`.
pub const HTTP_RESPONSE_HEAD_SECONDS: &str = "llm_proxy_http_response_head_seconds";
/// Requests with a missing or wrong proxy API key.
pub const AUTH_FAILURES_TOTAL: &str = "llm_proxy_auth_failures_total";
/// Client addresses locked out by the brute-force guard.
pub const AUTH_LOCKOUTS_TOTAL: &str = "llm_proxy_auth_lockouts_total";

/// `2xx`, `4xx`, … for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

// --- Handle cache ------------------------------------------------------------------
//
// `metrics::counter!(name, "label" => value)` builds a key and asks the
// recorder to register it on every call: with the Prometheus recorder that is
// label cloning, hashing and a sharded-map lookup, ~2 µs for the four
// per-exchange metrics (~8 % of the request path in a callgrind profile).
// The handles below are registered once per distinct name + labels and then
// reused; a handle increments the very same storage the recorder renders.
// Handles are registered with the recorder installed at first use: the binary
// installs its recorder before serving.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use metrics::{Counter, Histogram, Label};

/// Most labels a cached handle may have.
const MAX_LABELS: usize = 4;
/// Distinct handles kept per kind; past this, handles are registered per call
/// (labels come from bounded sets, so this is only a safety net).
const MAX_HANDLES: usize = 4096;

/// A label value of a cached metric handle.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LabelValue {
    /// A fixed value (route, status class, outcome, …).
    Static(&'static str),
    /// A name from configuration (backend names), shared.
    Shared(Arc<str>),
}

impl LabelValue {
    fn as_str(&self) -> &str {
        match self {
            LabelValue::Static(s) => s,
            LabelValue::Shared(s) => s,
        }
    }
}

impl From<&'static str> for LabelValue {
    fn from(s: &'static str) -> LabelValue {
        LabelValue::Static(s)
    }
}

impl From<&Arc<str>> for LabelValue {
    fn from(s: &Arc<str>) -> LabelValue {
        LabelValue::Shared(Arc::clone(s))
    }
}

type HandleKey = (
    &'static str,
    [Option<(&'static str, LabelValue)>; MAX_LABELS],
);

/// The FxHash step (rustc's hasher): a key is a few short strings, and
/// SipHash over them cost more than the registration the cache saves.
#[derive(Default)]
struct KeyHasher(u64);

impl KeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        for b in chunks.remainder() {
            self.add(u64::from(*b));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type HandleMap<T> = HashMap<HandleKey, T, std::hash::BuildHasherDefault<KeyHasher>>;

fn handle_key<const N: usize>(
    name: &'static str,
    labels: [(&'static str, LabelValue); N],
) -> HandleKey {
    let mut slots: [Option<(&'static str, LabelValue)>; MAX_LABELS] = Default::default();
    for (slot, label) in slots.iter_mut().zip(labels) {
        *slot = Some(label);
    }
    (name, slots)
}

fn metric_labels(key: &HandleKey) -> Vec<Label> {
    key.1
        .iter()
        .flatten()
        .map(|(k, v)| Label::new(*k, v.as_str().to_owned()))
        .collect()
}

fn cached<T: Clone>(
    cache: &RwLock<HandleMap<T>>,
    key: HandleKey,
    register: impl FnOnce(&HandleKey) -> T,
) -> T {
    if let Some(handle) = cache
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
    {
        return handle.clone();
    }
    let handle = register(&key);
    let mut map = cache.write().unwrap_or_else(PoisonError::into_inner);
    if map.len() < MAX_HANDLES {
        map.insert(key, handle.clone());
    }
    handle
}

static COUNTERS: LazyLock<RwLock<HandleMap<Counter>>> = LazyLock::new(Default::default);
static HISTOGRAMS: LazyLock<RwLock<HandleMap<Histogram>>> = LazyLock::new(Default::default);

/// The counter `name` with `labels` (at most 4), registered on first use only.
pub fn counter<const N: usize>(
    name: &'static str,
    labels: [(&'static str, LabelValue); N],
) -> Counter {
    const { assert!(N <= MAX_LABELS, "at most MAX_LABELS labels") };
    cached(&COUNTERS, handle_key(name, labels), |key| {
        metrics::counter!(name, metric_labels(key))
    })
}

/// The histogram `name` with `labels` (at most 4), registered on first use only.
pub fn histogram<const N: usize>(
    name: &'static str,
    labels: [(&'static str, LabelValue); N],
) -> Histogram {
    const { assert!(N <= MAX_LABELS, "at most MAX_LABELS labels") };
    cached(&HISTOGRAMS, handle_key(name, labels), |key| {
        metrics::histogram!(name, metric_labels(key))
    })
}
