//! The usage tracker handle: builds the collector (observer), the builder
//! thread and the writer thread, answers queries, and flushes on shutdown.
//!
//! Record flow: request path → [`UsageCollector`] (bounded queue, never
//! waits) → builder thread (parse, count, price) → pending buffer → writer
//! thread (batched store insert every `flush_interval_seconds`). Queries see
//! the store plus the pending buffer, so a record is visible as soon as it is
//! built, and never counted twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::builder::RecordBuilder;
use crate::collect::{FinishedExchange, UsageCollector};
use crate::config::UsageTrackingConfig;
use crate::error::UsageError;
use crate::pricing::PriceTable;
use crate::query::{Stats, UsageQuery};
use crate::record::UsageRecord;
use crate::store::{AggregateSet, RecentPage, UsageStore};
use crate::telemetry;
use crate::tokens::TokenCounter;

/// Past this many exchanges waiting, the builder estimates tokens instead of
/// tokenizing, to catch up.
const ESTIMATE_BACKLOG: usize = 1_000;

/// State shared by the threads and the query side.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn UsageStore>,
    /// Built records not yet in the store, oldest first.
    pending: Mutex<Vec<(UsageRecord, Instant)>>,
    /// Held for writing while a batch moves from `pending` to the store, so
    /// readers never see a record in both or in neither.
    moving: RwLock<()>,
    backlog: AtomicUsize,
    stopping: AtomicBool,
    max_pending: usize,
    /// Registered once: `metrics::gauge!` registers its key on every call,
    /// and `note_queued` runs on the request path.
    queue_depth: metrics::Gauge,
    pending_gauge: metrics::Gauge,
}

/// The running usage tracker.
pub struct UsageTracker {
    collector: Arc<UsageCollector>,
    shared: Arc<Shared>,
    builder: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for UsageTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageTracker")
            .field("store", &self.shared.store.describe())
            .finish_non_exhaustive()
    }
}

impl UsageTracker {
    /// Starts the tracker over `store`.
    pub fn start(
        config: &UsageTrackingConfig,
        store: Arc<dyn UsageStore>,
        prices: Arc<PriceTable>,
    ) -> Result<UsageTracker, UsageError> {
        let (tx, rx) = mpsc::sync_channel::<FinishedExchange>(config.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            store,
            pending: Mutex::new(Vec::new()),
            moving: RwLock::new(()),
            backlog: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            max_pending: config.max_records_in_memory.max(1),
            queue_depth: metrics::gauge!(telemetry::QUEUE_DEPTH),
            pending_gauge: metrics::gauge!(telemetry::PENDING_RECORDS),
        });
        let collector = Arc::new(UsageCollector::new(tx, shared.clone()));
        let counter = Arc::new(TokenCounter::shared());
        let builder = RecordBuilder::new(counter, prices);
        let builder = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("usage-builder".into())
                .spawn(move || build_loop(rx, builder, &shared))
                .map_err(|e| {
                    UsageError::Database(format!("cannot start the usage builder thread: {e}"))
                })?
        };
        let interval = Duration::try_from_secs_f64(config.flush_interval_seconds)
            .unwrap_or(Duration::from_secs(1));
        let retention = config
            .retention_days
            .map(|d| Duration::from_secs(u64::from(d) * 86_400));
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("usage-writer".into())
                .spawn(move || write_loop(&shared, interval, retention))
                .map_err(|e| {
                    UsageError::Database(format!("cannot start the usage writer thread: {e}"))
                })?
        };
        Ok(UsageTracker {
            collector,
            shared,
            builder: Some(builder),
            writer: Some(writer),
        })
    }

    /// The store, for logs (`sqlite:/path`, `postgres://user@host:port/db`;
    /// never a password).
    pub fn store_description(&self) -> String {
        self.shared.store.describe()
    }

    /// The observer to register with the pipeline.
    pub fn collector(&self) -> Arc<UsageCollector> {
        self.collector.clone()
    }

    /// A cheap handle for answering queries.
    pub fn queries(&self) -> UsageQueries {
        UsageQueries {
            shared: self.shared.clone(),
        }
    }

    /// Builds every queued exchange, writes every pending record and makes
    /// the store durable. Call after the server stopped taking requests.
    pub fn shutdown(mut self) -> Result<u64, UsageError> {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(b) = self.builder.take() {
            let _ = b.join();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        flush_pending(&self.shared)?;
        self.shared.store.flush()?;
        self.shared.store.count()
    }
}

fn build_loop(rx: Receiver<FinishedExchange>, mut builder: RecordBuilder, shared: &Shared) {
    // Tokenizers are built by the first record that needs each encoding
    // (~100–200 ms here, off the request path; ~50 MB each), so an idle
    // proxy holds none and a one-family deployment holds one.
    let estimated = metrics::counter!(telemetry::ESTIMATED_TOTAL);
    let mut record_metrics = RecordMetrics::default();
    loop {
        let ex = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(ex) => ex,
            Err(RecvTimeoutError::Timeout) => {
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let backlog = shared
            .backlog
            .fetch_sub(1, Ordering::SeqCst)
            .saturating_sub(1);
        shared.queue_depth.set(backlog as f64);
        let estimate = backlog > ESTIMATE_BACKLOG;
        if estimate {
            estimated.increment(1);
        }
        let record = builder.build(&ex, estimate);
        record_metrics.emit(&record);
        let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= shared.max_pending {
            // The writer cannot keep up (the store is failing or too slow).
            // Drop the new record, counted: removing from the front would
            // shift every pending record and break the writer's batch order.
            metrics::counter!(telemetry::RECORDS_DROPPED_TOTAL, "reason" => "buffer_full")
                .increment(1);
            continue;
        }
        pending.push((record, ex.ended_at));
        shared.pending_gauge.set(pending.len() as f64);
    }
}

/// The per-record metrics of one backend, registered once.
struct BackendMetrics {
    records: metrics::Counter,
    prompt: metrics::Counter,
    completion: metrics::Counter,
    cached: metrics::Counter,
    reasoning: metrics::Counter,
    cost: metrics::Gauge,
}

/// Per-record metric handles by backend name, owned by the builder thread.
/// Registering five labelled metrics per record (`metrics::counter!` with a
/// cloned backend label each) cost ~13 k instructions a record (callgrind).
#[derive(Default)]
struct RecordMetrics {
    by_backend: HashMap<String, BackendMetrics>,
}

impl RecordMetrics {
    fn emit(&mut self, r: &UsageRecord) {
        if !self.by_backend.contains_key(&r.backend) {
            let backend = r.backend.clone();
            let tokens = |kind: &'static str| metrics::counter!(telemetry::TOKENS_TOTAL, "backend" => backend.clone(), "kind" => kind);
            let handles = BackendMetrics {
                records: metrics::counter!(telemetry::RECORDS_TOTAL, "backend" => backend.clone()),
                prompt: tokens("prompt"),
                completion: tokens("completion"),
                cached: tokens("cached"),
                reasoning: tokens("reasoning"),
                // A float total: exported as a gauge that only grows.
                cost: metrics::gauge!(telemetry::COST_USD_TOTAL, "backend" => backend.clone()),
            };
            self.by_backend.insert(backend, handles);
        }
        let Some(m) = self.by_backend.get(&r.backend) else {
            return;
        };
        m.records.increment(1);
        m.prompt.increment(r.prompt_tokens);
        m.completion.increment(r.completion_tokens);
        if let Some(u) = &r.backend_reported_usage {
            if let Some(c) = u.cached_tokens {
                m.cached.increment(c);
            }
            if let Some(c) = u.reasoning_tokens {
                m.reasoning.increment(c);
            }
        }
        if let Some(cost) = r.cost_usd {
            m.cost.increment(cost);
        }
    }
}

fn write_loop(shared: &Shared, interval: Duration, retention: Option<Duration>) {
    let mut last_prune: Option<Instant> = None;
    loop {
        let deadline = Instant::now() + interval;
        while Instant::now() < deadline {
            if shared.stopping.load(Ordering::SeqCst) {
                return;
            }
            // Under load, write early rather than let the buffer fill up.
            if shared.pending_len() * 2 >= shared.max_pending {
                break;
            }
            std::thread::sleep(Duration::from_millis(20).min(interval));
        }
        if let Err(e) = flush_pending(shared) {
            tracing::error!(error = %e, store = %shared.store.describe(), "usage flush failed; will retry");
        }
        if let Some(keep) = retention
            && last_prune.is_none_or(|t| t.elapsed() > Duration::from_secs(3600))
        {
            last_prune = Some(Instant::now());
            let cutoff = crate::time::system_time_us(std::time::SystemTime::now())
                - i64::try_from(keep.as_micros()).unwrap_or(i64::MAX);
            match shared.store.prune(cutoff) {
                Ok(n) if n > 0 => {
                    tracing::info!(records = n, "pruned usage records past retention")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "usage pruning failed"),
            }
        }
    }
}

/// Moves every pending record into the store.
fn flush_pending(shared: &Shared) -> Result<(), UsageError> {
    let _moving = shared.moving.write().unwrap_or_else(|p| p.into_inner());
    // One copy: the records stay in `pending` (visible to queries) until stored.
    let (records, ended): (Vec<UsageRecord>, Vec<Instant>) = {
        let pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.iter().map(|(r, e)| (r.clone(), *e)).unzip()
    };
    if records.is_empty() {
        return Ok(());
    }
    // `flush` makes the batch durable: a no-op-ish checkpoint for SQLite, the
    // document rewrite for the JSON store.
    if let Err(e) = shared
        .store
        .insert(&records)
        .and_then(|()| shared.store.flush())
    {
        metrics::counter!(telemetry::STORE_ERRORS_TOTAL).increment(1);
        return Err(e);
    }
    let now = Instant::now();
    let lag = metrics::histogram!(telemetry::FLUSH_LAG_SECONDS);
    for ended in &ended {
        lag.record(now.duration_since(*ended).as_secs_f64());
    }
    let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
    let n = records.len().min(pending.len());
    pending.drain(..n);
    shared.pending_gauge.set(pending.len() as f64);
    Ok(())
}

impl Shared {
    pub(crate) fn note_queued(&self) {
        let depth = self.backlog.fetch_add(1, Ordering::SeqCst) + 1;
        self.queue_depth.set(depth as f64);
    }

    fn pending_len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub(crate) fn note_unqueued(&self) {
        self.backlog.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers usage queries from the store plus the pending records.
#[derive(Clone)]
pub struct UsageQueries {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for UsageQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageQueries").finish_non_exhaustive()
    }
}

impl UsageQueries {
    /// `/v1/usage/stats`. Blocking: call from a blocking thread.
    pub fn stats(&self, query: &UsageQuery) -> Result<Stats, UsageError> {
        let _reading = self.shared.moving.read().unwrap_or_else(|p| p.into_inner());
        let mut set = self
            .shared
            .store
            .aggregate(&query.filter, &query.group_by)?;
        let mut fresh = AggregateSet::default();
        for (r, _) in self.pending_matching(query).iter() {
            fresh.add(r, &query.group_by);
        }
        set.merge(&fresh);
        Ok(crate::aggregate::finish_stats(
            &set,
            &query.filter,
            &query.group_by,
        ))
    }

    /// `/v1/usage/recent`. Blocking: call from a blocking thread.
    pub fn recent(&self, query: &UsageQuery) -> Result<RecentPage, UsageError> {
        let _reading = self.shared.moving.read().unwrap_or_else(|p| p.into_inner());
        // Pending records are the newest: they come first.
        let mut fresh: Vec<UsageRecord> = self
            .pending_matching(query)
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        fresh.sort_by_key(|r| std::cmp::Reverse((r.timestamp_us, r.id.clone())));
        let fresh_total = fresh.len();
        let mut records: Vec<UsageRecord> = fresh
            .into_iter()
            .skip(query.offset)
            .take(query.limit)
            .collect();
        let store_offset = query.offset.saturating_sub(fresh_total);
        let store_limit = query.limit - records.len();
        let page = self
            .shared
            .store
            .recent(&query.filter, store_limit.max(1), store_offset)?;
        if store_limit > 0 {
            records.extend(page.records.into_iter().take(store_limit));
        }
        Ok(RecentPage {
            records,
            total: page.total + fresh_total as u64,
        })
    }

    /// Feeds every matching record, oldest first, to `sink` (stored ones,
    /// then pending ones). Blocking: call from a blocking thread.
    ///
    /// An export can run for minutes, so it holds no lock: it snapshots the
    /// pending records first and skips their ids in the store, so a record
    /// flushed meanwhile is exported exactly once.
    pub fn export(
        &self,
        query: &UsageQuery,
        sink: &mut dyn FnMut(&UsageRecord) -> bool,
    ) -> Result<u64, UsageError> {
        let pending = {
            let _reading = self.shared.moving.read().unwrap_or_else(|p| p.into_inner());
            self.pending_matching(query)
        };
        let pending_ids: std::collections::HashSet<&str> =
            pending.iter().map(|(r, _)| r.id.as_str()).collect();
        let mut more = true;
        let mut n = 0;
        self.shared.store.export(&query.filter, &mut |r| {
            if pending_ids.contains(r.id.as_str()) {
                return true;
            }
            n += 1;
            more = sink(r);
            more
        })?;
        if more {
            for (r, _) in &pending {
                n += 1;
                if !sink(r) {
                    break;
                }
            }
        }
        Ok(n)
    }

    fn pending_matching(&self, query: &UsageQuery) -> Vec<(UsageRecord, Instant)> {
        let pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pending
            .iter()
            .filter(|(r, _)| query.filter.matches(r))
            .cloned()
            .collect()
    }
}
