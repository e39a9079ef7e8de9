//! The usage tracker handle: builds the collector (observer), the builder
//! thread and the writer thread, answers queries, and flushes on shutdown.
//!
//! Record flow: request path → [`UsageCollector`] (bounded queue, never
//! waits) → builder thread (reads the response: usage, tools, timings) →
//! counting thread (the proxy's token counts, at the lowest CPU priority;
//! estimates when it falls behind, see [`crate::counting`]) → pending buffer
//! → writer thread (batched store insert every `flush_interval_seconds`).
//! Queries see the store plus the pending buffer, so a record is visible as
//! soon as it is built, and never counted twice.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::builder::{Draft, RecordBuilder, TokenTally, estimate_counts, finish};
use crate::collect::{FinishedExchange, UsageCollector};
use crate::config::UsageTrackingConfig;
use crate::counting::{CountQueue, Heartbeat, SpareCpu, lower_thread_priority};
use crate::error::UsageError;
use crate::pricing::PriceTable;
use crate::query::{Stats, UsageQuery};
use crate::record::{CostSource, UsageRecord};
use crate::store::{AggregateSet, RecentPage, UsageStore};
use crate::telemetry;
use crate::tokens::TokenCounter;

/// Past this many exchanges waiting, the builder estimates tokens instead of
/// offering drafts for counting, to catch up.
const ESTIMATE_BACKLOG: usize = 1_000;
/// The builder lets exchanges gather this long when its queue runs empty, so
/// that under load a sender on the request path rarely has to wake it, and
/// it sleeps and wakes at most 100 times a second (with 1 ms, the kernel's
/// sleep and wake-up paths were a third of its CPU time at saturation, in a
/// VM). Records reach `pending` at most this much later; drafts wait at
/// least 10 ms for counting.
const BUILDER_LINGER: Duration = Duration::from_millis(10);
/// The writer indexes deferred records in slices of about this long (at
/// least one batch), checking between them for a due write.
const CATCH_UP_SLICE: Duration = Duration::from_millis(50);
/// After a failed catch-up the writer waits this long before the next.
const CATCH_UP_RETRY: Duration = Duration::from_secs(5);
/// A query reading rows in time order (`recent`, `export`) waits at most
/// this long for the writer to index deferred records.
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);
/// What a query that waited [`CATCH_UP_WAIT`] in vain tells the client to
/// wait (`Retry-After`, seconds).
const CATCH_UP_RETRY_AFTER_S: u32 = 10;

/// State shared by the threads and the query side.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn UsageStore>,
    /// Built records not yet in the store, oldest first.
    pending: Mutex<Batch>,
    /// The last batch's buffer, emptied, for the next one: a fresh buffer
    /// per write cost the writer a copy of every record (pairs split into
    /// records and end times) and the builder page faults filling it.
    spare: Mutex<Batch>,
    /// Records of the batch being moved to the store (out of `pending`).
    moving_len: AtomicUsize,
    /// A batch is in the store but its `flush` failed.
    flush_owed: AtomicBool,
    /// Held for writing while a batch moves from `pending` to the store, so
    /// readers never see a record in both or in neither.
    moving: RwLock<()>,
    backlog: AtomicUsize,
    stopping: AtomicBool,
    max_pending: usize,
    /// Past this many deferred records, batches are indexed as they are
    /// written even on a busy machine (0: never defer).
    defer_max: u64,
    /// Queries waiting for the writer to index the deferred records (it
    /// then catches up after every write, also on a busy machine).
    catch_up_wanted: AtomicUsize,
    /// Why the writer's last catch-up failed (cleared when one succeeds).
    catch_up_error: Mutex<Option<String>>,
    /// How long a query waits for deferred records ([`CATCH_UP_WAIT`]).
    catch_up_wait: Duration,
    /// Registered once: `metrics::gauge!` registers its key on every call.
    queue_depth: metrics::Gauge,
    pending_gauge: metrics::Gauge,
    deferred_gauge: metrics::Gauge,
}

/// The running usage tracker.
pub struct UsageTracker {
    collector: Arc<UsageCollector>,
    shared: Arc<Shared>,
    builder: Option<JoinHandle<BuildStage>>,
    counting: Arc<CountQueue>,
    counter: Option<JoinHandle<()>>,
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
        let shared = Arc::new(Shared::new(
            store,
            config.max_records_in_memory,
            config.deferred_indexing_max_records,
        ));
        let collector = Arc::new(UsageCollector::new(tx, shared.clone()));
        let tokens = Arc::new(TokenCounter::shared());
        let interval = Duration::try_from_secs_f64(config.flush_interval_seconds)
            .unwrap_or(Duration::from_secs(1));
        let counting = Arc::new(CountQueue::new(interval));
        let unpriced = Arc::new(UnpricedModels::default());
        let counter = {
            let (queue, prices) = (counting.clone(), prices.clone());
            let tally = TokenTally::new(tokens.clone());
            let metrics = RecordMetrics::new(unpriced.clone());
            std::thread::Builder::new()
                .name("usage-counter".into())
                .spawn(move || count_loop(&queue, tally, &prices, metrics))
                .map_err(|e| {
                    UsageError::Database(format!("cannot start the token counting thread: {e}"))
                })?
        };
        let builder = {
            let (shared, queue) = (shared.clone(), counting.clone());
            let spare = SpareCpu::new(config.exact_counting_min_idle_cpu);
            let metrics = RecordMetrics::new(unpriced);
            let stage = BuildStage::new(tokens, prices, queue, spare, metrics);
            std::thread::Builder::new()
                .name("usage-builder".into())
                .spawn(move || build_loop(rx, stage, &shared))
                .map_err(|e| {
                    UsageError::Database(format!("cannot start the usage builder thread: {e}"))
                })?
        };
        let retention = config
            .retention_days
            .map(|d| Duration::from_secs(u64::from(d) * 86_400));
        // A record waits at most one linger for the builder, `deadline` for
        // counting, then at most one write period: durable at most one flush
        // interval after its end.
        let write_period = interval
            .saturating_sub(counting.deadline())
            .saturating_sub(BUILDER_LINGER)
            .max(Duration::from_millis(10));
        let writer = {
            let shared = shared.clone();
            let spare = SpareCpu::new(config.exact_counting_min_idle_cpu);
            std::thread::Builder::new()
                .name("usage-writer".into())
                .spawn(move || write_loop(&shared, write_period, retention, spare))
                .map_err(|e| {
                    UsageError::Database(format!("cannot start the usage writer thread: {e}"))
                })?
        };
        Ok(UsageTracker {
            collector,
            shared,
            builder: Some(builder),
            counting,
            counter: Some(counter),
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
        let stage = self.builder.take().and_then(|b| b.join().ok());
        // The builder offers no more: the counting thread counts what is
        // left and ends.
        self.counting.close();
        if let Some(c) = self.counter.take() {
            let _ = c.join();
        }
        for (record, ended) in self.counting.take_all_counted() {
            self.shared.push_pending(record, ended);
        }
        if let Some(mut stage) = stage {
            // Left by a counting thread that died: estimated, not lost.
            while let Some(draft) = self.counting.pop() {
                stage.estimate(draft, &self.shared);
            }
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        flush_pending(&self.shared, false)?;
        self.shared.store.flush()?;
        self.shared.store.count()
    }
}

/// What the builder thread owns.
struct BuildStage {
    drafts: RecordBuilder,
    tokens: Arc<TokenCounter>,
    prices: Arc<PriceTable>,
    queue: Arc<CountQueue>,
    metrics: RecordMetrics,
    estimated: metrics::Counter,
    /// After a draft went stale (no idle CPU), drafts are estimated at once
    /// until then: the counting thread then does not run at all, so it
    /// neither evicts the request path's caches nor preempts it.
    paused_until: Option<Instant>,
    /// Whether the machine has CPU to spare for exact counting.
    spare_cpu: SpareCpu,
    /// The next pause: doubles (to [`MAX_COUNTING_PAUSE`]) while drafts keep
    /// going stale, back to [`MIN_COUNTING_PAUSE`] once a quiet minute passed.
    pause: Duration,
    last_stale: Option<Instant>,
}

/// The first pause of exact counting after a draft went stale.
const MIN_COUNTING_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause of exact counting.
const MAX_COUNTING_PAUSE: Duration = Duration::from_secs(30);

impl BuildStage {
    fn new(
        tokens: Arc<TokenCounter>,
        prices: Arc<PriceTable>,
        queue: Arc<CountQueue>,
        spare_cpu: SpareCpu,
        metrics: RecordMetrics,
    ) -> BuildStage {
        BuildStage {
            drafts: RecordBuilder::new(),
            tokens,
            prices,
            queue,
            metrics,
            estimated: metrics::counter!(telemetry::ESTIMATED_TOTAL),
            paused_until: None,
            spare_cpu,
            pause: MIN_COUNTING_PAUSE,
            last_stale: None,
        }
    }

    /// Exact counting is paused (the machine had no idle CPU lately).
    fn counting_paused(&mut self, now: Instant) -> bool {
        match self.paused_until {
            Some(until) if now < until => true,
            Some(_) => {
                self.paused_until = None;
                false
            }
            None => false,
        }
    }

    /// Finishes `draft` with length estimates.
    fn estimate(&mut self, draft: Box<Draft>, shared: &Shared) {
        self.estimated.increment(1);
        let counts = estimate_counts(&draft);
        let ended = draft.ended_at();
        let record = finish(*draft, counts, &self.prices);
        self.metrics.emit(&record);
        shared.push_pending(record, ended);
    }

    fn take(&mut self, ex: FinishedExchange, backlog: usize, shared: &Shared) {
        let draft = Box::new(self.drafts.draft(ex));
        let now = Instant::now();
        if backlog > ESTIMATE_BACKLOG
            || self.counting_paused(now)
            || !self.spare_cpu.has_spare(now, self.queue.heartbeat())
        {
            return self.estimate(draft, shared);
        }
        // The tokenizer is built here, at normal priority (~100–200 ms, by the
        // first record that needs each encoding; ~50 MB each), so an idle
        // proxy holds none and a one-family deployment holds one.
        self.tokens.prepare(draft.encoding());
        if let Err(draft) = self.queue.offer(draft) {
            self.estimate(draft, shared);
        }
    }

    /// Moves the records the counting thread finished to `pending`.
    fn collect_counted(&mut self, shared: &Shared) {
        for (record, ended) in self.queue.take_counted() {
            shared.push_pending(record, ended);
        }
    }

    fn take_back_stale(&mut self, shared: &Shared) {
        self.collect_counted(shared);
        let now = Instant::now();
        // Keeps the spare-CPU reading current (at most every 250 ms) also
        // while no draft is offered, so a burst after a quiet spell or a
        // pause is judged on the last quarter second, not the whole spell.
        self.spare_cpu.has_spare(now, self.queue.heartbeat());
        let mut stale = false;
        while let Some(draft) = self.queue.take_stale(now) {
            stale = true;
            self.estimate(draft, shared);
        }
        // A counting thread that made progress lately is busy with a big
        // prompt, not starved: no pause then.
        let starved = self.queue.heartbeat().age(now) >= self.queue.deadline() / 2;
        if stale && starved {
            if self
                .last_stale
                .is_some_and(|t| now.duration_since(t) > Duration::from_secs(60))
            {
                self.pause = MIN_COUNTING_PAUSE;
            }
            self.last_stale = Some(now);
            self.paused_until = Some(now + self.pause);
            self.pause = (self.pause * 2).min(MAX_COUNTING_PAUSE);
        }
    }
}

fn build_loop(
    rx: Receiver<FinishedExchange>,
    mut stage: BuildStage,
    shared: &Shared,
) -> BuildStage {
    let mut lingered = false;
    let mut last_check = Instant::now();
    loop {
        let ex = match rx.try_recv() {
            Ok(ex) => Some(ex),
            Err(TryRecvError::Disconnected) => return stage,
            Err(TryRecvError::Empty) => {
                stage.take_back_stale(shared);
                shared.report_gauges();
                if shared.stopping.load(Ordering::SeqCst) {
                    return stage;
                }
                if !lingered {
                    std::thread::sleep(BUILDER_LINGER);
                    lingered = true;
                    continue;
                }
                // Drafts waiting for the counting thread: wake up in time to
                // take back the ones it cannot get to.
                let wait = if stage.queue.len() > 0 { 10 } else { 100 };
                match rx.recv_timeout(Duration::from_millis(wait)) {
                    Ok(ex) => Some(ex),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return stage,
                }
            }
        };
        let Some(ex) = ex else { continue };
        lingered = false;
        let backlog = shared
            .backlog
            .fetch_sub(1, Ordering::SeqCst)
            .saturating_sub(1);
        stage.take(ex, backlog, shared);
        // Under load, not after every exchange: a draft's deadline is at
        // least 10 ms.
        if last_check.elapsed() >= Duration::from_millis(1) {
            stage.take_back_stale(shared);
            shared.report_gauges();
            last_check = Instant::now();
        }
    }
}

/// The counting thread: exact token counts for the drafts it gets to.
fn count_loop(
    queue: &CountQueue,
    mut tally: TokenTally,
    prices: &PriceTable,
    mut metrics: RecordMetrics,
) {
    lower_thread_priority();
    queue.heartbeat().adopt_thread();
    while let Some(draft) = queue.next() {
        queue.heartbeat().beat();
        let counts = tally.count(&draft, queue.heartbeat());
        let ended = draft.ended_at();
        let record = finish(*draft, counts, prices);
        metrics.emit(&record);
        queue.hand_back(record, ended);
    }
}

/// A record a backend served whose model has no price. (A request no
/// backend served, e.g. for an unknown model, has no price to miss.)
fn unpriced(r: &UsageRecord) -> bool {
    r.cost_source == CostSource::Unknown && r.backend_type != "none"
}

/// Model names with no price, each logged once: shared by the threads that
/// finish records, touched only for unpriced ones.
#[derive(Default)]
struct UnpricedModels(Mutex<HashSet<String>>);

/// Unpriced model names logged; past this no more are (a client can send
/// any model name a catch-all route passes on).
const MAX_UNPRICED_LOGGED: usize = 1_000;

impl UnpricedModels {
    fn note(&self, r: &UsageRecord) {
        let mut logged = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if logged.len() >= MAX_UNPRICED_LOGGED || logged.contains(&r.model) {
            return;
        }
        logged.insert(r.model.clone());
        tracing::warn!(
            model = ?r.model, backend = %r.backend,
            "no price for this model: its usage records get cost_usd = null (cost_source \"unknown\"); \
             add it under [usage_tracking.price_overrides] or give prices_path a table that has it"
        );
        if logged.len() == MAX_UNPRICED_LOGGED {
            tracing::warn!(
                "{MAX_UNPRICED_LOGGED} models without a price logged; further ones are not \
                 (llm_proxy_usage_unpriced_records_total still counts their records)"
            );
        }
    }
}

/// The per-record metrics of one backend, registered once.
struct BackendMetrics {
    records: metrics::Counter,
    unpriced: metrics::Counter,
    prompt: metrics::Counter,
    completion: metrics::Counter,
    cached: metrics::Counter,
    reasoning: metrics::Counter,
    cost: metrics::Gauge,
}

/// Per-record metric handles by backend name, one per thread that finishes
/// records (the builder and the counting thread). Registering five labelled
/// metrics per record (`metrics::counter!` with a cloned backend label each)
/// cost ~13 k instructions a record (callgrind).
struct RecordMetrics {
    by_backend: HashMap<String, BackendMetrics, foldhash::fast::RandomState>,
    unpriced_models: Arc<UnpricedModels>,
}

impl RecordMetrics {
    fn new(unpriced_models: Arc<UnpricedModels>) -> RecordMetrics {
        RecordMetrics {
            by_backend: HashMap::default(),
            unpriced_models,
        }
    }

    fn emit(&mut self, r: &UsageRecord) {
        if unpriced(r) {
            self.unpriced_models.note(r);
        }
        if let Some(m) = self.by_backend.get(&r.backend) {
            m.emit(r);
            return;
        }
        let backend = r.backend.clone();
        let tokens = |kind: &'static str| metrics::counter!(telemetry::TOKENS_TOTAL, "backend" => backend.clone(), "kind" => kind);
        let handles = BackendMetrics {
            records: metrics::counter!(telemetry::RECORDS_TOTAL, "backend" => backend.clone()),
            unpriced: metrics::counter!(telemetry::UNPRICED_RECORDS_TOTAL, "backend" => backend.clone()),
            prompt: tokens("prompt"),
            completion: tokens("completion"),
            cached: tokens("cached"),
            reasoning: tokens("reasoning"),
            // A float total: exported as a gauge that only grows.
            cost: metrics::gauge!(telemetry::COST_USD_TOTAL, "backend" => backend.clone()),
        };
        handles.emit(r);
        self.by_backend.insert(backend, handles);
    }
}

impl BackendMetrics {
    fn emit(&self, r: &UsageRecord) {
        self.records.increment(1);
        if unpriced(r) {
            self.unpriced.increment(1);
        }
        self.prompt.increment(r.prompt_tokens);
        self.completion.increment(r.completion_tokens);
        if let Some(u) = &r.backend_reported_usage {
            if let Some(c) = u.cached_tokens {
                self.cached.increment(c);
            }
            if let Some(c) = u.reasoning_tokens {
                self.reasoning.increment(c);
            }
        }
        if let Some(cost) = r.cost_usd {
            self.cost.increment(cost);
        }
    }
}

fn write_loop(
    shared: &Shared,
    interval: Duration,
    retention: Option<Duration>,
    mut spare_cpu: SpareCpu,
) {
    // The writer's own CPU time counts as busy (a heartbeat with no thread):
    // counted as spare, catching up would keep itself going on a saturated
    // machine, its own time being the spare it sees.
    let no_counter = Heartbeat::new();
    let mut last_prune: Option<Instant> = None;
    let mut catch_up_after = Instant::now();
    let mut catching_up = false;
    shared.deferred_gauge.set(shared.store.deferred() as f64);
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
            // Spare CPU (or a query waiting) indexes what was deferred
            // while the machine was busy.
            let now = Instant::now();
            if shared.store.deferred() > 0
                && now >= catch_up_after
                && (shared.catch_up_wanted.load(Ordering::SeqCst) > 0
                    || spare_cpu.has_spare(now, &no_counter))
            {
                catch_up(shared, &mut catch_up_after);
                catching_up = true;
                continue;
            }
            if catching_up {
                // The writer's own CPU time counts as busy: the next reading
                // starts after catching up (keeping the last verdict), or a
                // window spanning it would send the writer straight back to
                // deferring. (While catching up, readings go on: load that
                // comes back stops it.)
                spare_cpu.restart_window(now, &no_counter);
                catching_up = false;
            }
            std::thread::sleep(Duration::from_millis(20).min(interval));
        }
        // A busy machine writes the batch packed, indexed later.
        let defer = shared.defer_max > 0
            && shared.store.deferred() < shared.defer_max
            && !spare_cpu.has_spare(Instant::now(), &no_counter);
        if let Err(e) = flush_pending(shared, defer) {
            tracing::error!(
                error = %e, store = %shared.store.describe(),
                "usage flush failed; will retry"
            );
        }
        // A waiting query gets a slice after every write, however full the
        // buffer keeps the loop above.
        if shared.catch_up_wanted.load(Ordering::SeqCst) > 0
            && shared.store.deferred() > 0
            && Instant::now() >= catch_up_after
        {
            catch_up(shared, &mut catch_up_after);
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

/// A query waiting for the writer to index every deferred record (see
/// `UsageQueries::wait_for_deferred`), counted in `catch_up_wanted` while
/// it lives.
struct CatchUpWanted<'a>(&'a Shared);

impl<'a> CatchUpWanted<'a> {
    fn new(shared: &'a Shared) -> CatchUpWanted<'a> {
        shared.catch_up_wanted.fetch_add(1, Ordering::SeqCst);
        CatchUpWanted(shared)
    }
}

impl Drop for CatchUpWanted<'_> {
    fn drop(&mut self) {
        self.0.catch_up_wanted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Indexes deferred records for about [`CATCH_UP_SLICE`]; after a failure
/// (logged, kept for waiting queries) not again before `retry_at`.
fn catch_up(shared: &Shared, retry_at: &mut Instant) {
    let result = shared.store.catch_up(CATCH_UP_SLICE);
    shared.deferred_gauge.set(shared.store.deferred() as f64);
    let mut last_error = shared
        .catch_up_error
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(_) => *last_error = None,
        Err(e) => {
            metrics::counter!(telemetry::STORE_ERRORS_TOTAL).increment(1);
            *retry_at = Instant::now() + CATCH_UP_RETRY;
            tracing::error!(
                error = %e, store = %shared.store.describe(),
                "indexing deferred usage records failed; will retry"
            );
            *last_error = Some(e.to_string());
        }
    }
}

/// Moves every pending record into the store; `defer`: packed, indexed
/// later ([`UsageStore::insert_deferred`]).
fn flush_pending(shared: &Shared, defer: bool) -> Result<(), UsageError> {
    // Queries wait while a batch moves (they need `moving` to read), so the
    // batch can leave `pending` at once, without a copy: no query sees it
    // in neither place. The builder keeps adding to `pending` meanwhile.
    let _moving = shared.moving.write().unwrap_or_else(|p| p.into_inner());
    let next = std::mem::take(&mut *shared.spare.lock().unwrap_or_else(|p| p.into_inner()));
    let mut batch = {
        let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
        shared.moving_len.store(pending.len(), Ordering::SeqCst);
        std::mem::replace(&mut *pending, next)
    };
    if batch.is_empty() {
        drop(_moving);
        *shared.spare.lock().unwrap_or_else(|p| p.into_inner()) = batch;
        // A batch inserted earlier whose `flush` failed: retried alone.
        if shared.flush_owed.load(Ordering::SeqCst) {
            return flush_store(shared);
        }
        return Ok(());
    }
    let inserted = if defer {
        shared.store.insert_deferred(&batch.records)
    } else {
        shared.store.insert(&batch.records)
    };
    let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
    shared.moving_len.store(0, Ordering::SeqCst);
    if let Err(e) = inserted {
        // Back in front of the records built meanwhile, in order.
        batch.append(&mut pending);
        *pending = batch;
        shared.pending_gauge.set(pending.len() as f64);
        metrics::counter!(telemetry::STORE_ERRORS_TOTAL).increment(1);
        return Err(e);
    }
    shared.pending_gauge.set(pending.len() as f64);
    drop(pending);
    drop(_moving);
    shared.deferred_gauge.set(shared.store.deferred() as f64);
    let now = Instant::now();
    let lag = metrics::histogram!(telemetry::FLUSH_LAG_SECONDS);
    for ended in &batch.ended {
        lag.record(now.duration_since(*ended).as_secs_f64());
    }
    batch.recycle();
    *shared.spare.lock().unwrap_or_else(|p| p.into_inner()) = batch;
    // The batch is in the store now (queries find it there): a failed
    // `flush` must not put it back in `pending`, or it would count twice.
    flush_store(shared)
}

/// Built records and when their exchanges ended, oldest first.
#[derive(Debug, Default)]
struct Batch {
    records: Vec<UsageRecord>,
    ended: Vec<Instant>,
}

impl Batch {
    fn len(&self) -> usize {
        self.records.len()
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Moves `newer`'s records behind these.
    fn append(&mut self, newer: &mut Batch) {
        self.records.append(&mut newer.records);
        self.ended.append(&mut newer.ended);
    }

    /// Empties the batch for reuse, keeping room for one like it (not more
    /// than twice that: one burst must not hold its memory for good).
    fn recycle(&mut self) {
        let room = self.len().max(64) * 2;
        self.records.clear();
        self.ended.clear();
        self.records.shrink_to(room);
        self.ended.shrink_to(room);
    }
}

/// Makes what the store holds durable: a WAL checkpoint for SQLite, the
/// document rewrite for the JSON store. On failure it is owed, and retried
/// at the next write period even when no record is pending.
fn flush_store(shared: &Shared) -> Result<(), UsageError> {
    match shared.store.flush() {
        Ok(()) => {
            shared.flush_owed.store(false, Ordering::SeqCst);
            Ok(())
        }
        Err(e) => {
            shared.flush_owed.store(true, Ordering::SeqCst);
            metrics::counter!(telemetry::STORE_ERRORS_TOTAL).increment(1);
            Err(e)
        }
    }
}

impl Shared {
    fn new(store: Arc<dyn UsageStore>, max_pending: usize, defer_max: u64) -> Shared {
        Shared {
            store,
            pending: Mutex::new(Batch::default()),
            spare: Mutex::new(Batch::default()),
            moving: RwLock::new(()),
            moving_len: AtomicUsize::new(0),
            flush_owed: AtomicBool::new(false),
            backlog: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            max_pending: max_pending.max(1),
            defer_max,
            catch_up_wanted: AtomicUsize::new(0),
            catch_up_error: Mutex::new(None),
            catch_up_wait: CATCH_UP_WAIT,
            queue_depth: metrics::gauge!(telemetry::QUEUE_DEPTH),
            pending_gauge: metrics::gauge!(telemetry::PENDING_RECORDS),
            deferred_gauge: metrics::gauge!(telemetry::DEFERRED_RECORDS),
        }
    }

    /// Adds a built record to the pending buffer (visible to queries at once).
    fn push_pending(&self, record: UsageRecord, ended: Instant) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() + self.moving_len.load(Ordering::SeqCst) >= self.max_pending {
            // The writer cannot keep up (the store is failing or too slow).
            // Drop the new record, counted: removing from the front would
            // shift every pending record and break the writer's batch order.
            metrics::counter!(telemetry::RECORDS_DROPPED_TOTAL, "reason" => "buffer_full")
                .increment(1);
            return;
        }
        pending.records.push(record);
        pending.ended.push(ended);
    }

    /// Sets the queue and pending gauges (by the builder, every millisecond
    /// under load: setting a gauge per record cost ~5 % of the builder).
    fn report_gauges(&self) {
        self.queue_depth
            .set(self.backlog.load(Ordering::SeqCst) as f64);
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
            + self.moving_len.load(Ordering::SeqCst);
        self.pending_gauge.set(pending as f64);
    }

    pub(crate) fn note_queued(&self) {
        self.backlog.fetch_add(1, Ordering::SeqCst);
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
        for r in &self.pending_matching(query) {
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
        let _indexed = self.wait_for_deferred()?;
        let _reading = self.shared.moving.read().unwrap_or_else(|p| p.into_inner());
        // Pending records are the newest: they come first.
        let mut fresh = self.pending_matching(query);
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
        let _indexed = self.wait_for_deferred()?;
        let pending = {
            let _reading = self.shared.moving.read().unwrap_or_else(|p| p.into_inner());
            self.pending_matching(query)
        };
        let pending_ids: std::collections::HashSet<&str> =
            pending.iter().map(|r| r.id.as_str()).collect();
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
            for r in &pending {
                n += 1;
                if !sink(r) {
                    break;
                }
            }
        }
        Ok(n)
    }

    /// Has the writer thread index the records the store deferred, and
    /// waits (at most [`CATCH_UP_WAIT`]) until at most one buffer's worth
    /// is left (the writer may go on deferring new batches at saturation;
    /// the store indexes that rest itself before reading): reading rows in
    /// time order would otherwise index them all on this thread, under the
    /// query's locks, holding up the writer. The guard keeps the writer
    /// catching up while the query runs. Still indexing after the wait (or
    /// shutting down): an error naming why, not a stall.
    fn wait_for_deferred(&self) -> Result<CatchUpWanted<'_>, UsageError> {
        let shared = &self.shared;
        let wanted = CatchUpWanted::new(shared);
        let until = Instant::now() + shared.catch_up_wait;
        while shared.store.deferred() > shared.max_pending as u64 {
            if Instant::now() >= until || shared.stopping.load(Ordering::SeqCst) {
                let why = shared
                    .catch_up_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .map(|e| format!(" (indexing them failed: {e})"))
                    .unwrap_or_default();
                return Err(UsageError::Unavailable {
                    reason: format!(
                        "{} usage records written while the machine was busy are still being \
                         indexed{why}",
                        shared.store.deferred()
                    ),
                    retry_after_secs: CATCH_UP_RETRY_AFTER_S,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(wanted)
    }

    fn pending_matching(&self, query: &UsageQuery) -> Vec<UsageRecord> {
        let pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pending
            .records
            .iter()
            .filter(|r| query.filter.matches(r))
            .cloned()
            .collect()
    }
}

/// Test stores and queries over them, for this module's tests and the
/// routes'.
#[cfg(test)]
pub(crate) mod test_store {
    use super::*;

    /// A memory store whose next `failures` inserts and next
    /// `flush_failures` flushes fail, and which claims `deferred` records wait
    /// to be indexed (nobody indexes them).
    pub(super) struct FlakyStore {
        pub(super) inner: crate::store::MemoryStore,
        failures: AtomicUsize,
        flush_failures: AtomicUsize,
        pub(super) flushes: AtomicUsize,
        deferred: u64,
    }

    impl FlakyStore {
        pub(super) fn failing(inserts: usize, flushes: usize) -> Arc<FlakyStore> {
            Arc::new(FlakyStore::new(inserts, flushes))
        }

        fn new(inserts: usize, flushes: usize) -> FlakyStore {
            FlakyStore {
                inner: crate::store::MemoryStore::new(),
                failures: AtomicUsize::new(inserts),
                flush_failures: AtomicUsize::new(flushes),
                flushes: AtomicUsize::new(0),
                deferred: 0,
            }
        }
    }

    fn take_one(n: &AtomicUsize) -> bool {
        n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
            .is_ok()
    }

    impl UsageStore for FlakyStore {
        fn describe(&self) -> String {
            "flaky".into()
        }
        fn insert(&self, records: &[UsageRecord]) -> Result<(), UsageError> {
            if take_one(&self.failures) {
                return Err(UsageError::Database("down".into()));
            }
            self.inner.insert(records)
        }
        fn deferred(&self) -> u64 {
            self.deferred
        }
        fn recent(
            &self,
            filter: &crate::query::UsageFilter,
            limit: usize,
            offset: usize,
        ) -> Result<RecentPage, UsageError> {
            self.inner.recent(filter, limit, offset)
        }
        fn aggregate(
            &self,
            filter: &crate::query::UsageFilter,
            group_by: &[crate::query::GroupKey],
        ) -> Result<AggregateSet, UsageError> {
            self.inner.aggregate(filter, group_by)
        }
        fn export(
            &self,
            filter: &crate::query::UsageFilter,
            sink: &mut dyn FnMut(&UsageRecord) -> bool,
        ) -> Result<u64, UsageError> {
            self.inner.export(filter, sink)
        }
        fn prune(&self, before_us: i64) -> Result<u64, UsageError> {
            self.inner.prune(before_us)
        }
        fn flush(&self) -> Result<(), UsageError> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            if take_one(&self.flush_failures) {
                return Err(UsageError::Database("disk full".into()));
            }
            self.inner.flush()
        }
        fn count(&self) -> Result<u64, UsageError> {
            self.inner.count()
        }
    }

    /// Queries over a store that has a million deferred records nobody indexes
    /// (no writer runs) and waits `wait` for them: every ordered read gives up.
    pub(crate) fn queries_over_unindexed_store(wait: Duration) -> UsageQueries {
        let store = FlakyStore {
            deferred: 1_000_000,
            ..FlakyStore::new(0, 0)
        };
        let mut shared = Shared::new(Arc::new(store), 1_000, 0);
        shared.catch_up_wait = wait;
        UsageQueries {
            shared: Arc::new(shared),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_store::{FlakyStore, queries_over_unindexed_store};
    use super::*;
    use crate::builder::test_exchange;
    use crate::record::TokenSource;
    use crate::store::MemoryStore;

    fn shared() -> Arc<Shared> {
        shared_over(Arc::new(MemoryStore::new()))
    }

    fn shared_over(store: Arc<dyn UsageStore>) -> Arc<Shared> {
        Arc::new(Shared::new(store, 1_000, 0))
    }

    /// A tracker's shared state over a store failing as `FlakyStore::failing`
    /// says, its queries, and `n` records to push.
    fn over_flaky_store(
        inserts: usize,
        flushes: usize,
        n: usize,
    ) -> (Arc<FlakyStore>, Arc<Shared>, UsageQueries, Vec<UsageRecord>) {
        let store = FlakyStore::failing(inserts, flushes);
        let shared = shared_over(store.clone());
        let queries = UsageQueries {
            shared: shared.clone(),
        };
        let records =
            crate::store::conformance::synthetic_records(n, 1_700_000_000_000_000, 1_000_000, 7);
        (store, shared, queries, records)
    }

    /// Ordered reads wait for deferred records only so long, then say the
    /// store is not ready yet (a 503 with `Retry-After` on the routes);
    /// stats, which need no row order, answer at once.
    #[test]
    fn ordered_reads_give_up_on_unindexed_records_as_unavailable() {
        let queries = queries_over_unindexed_store(Duration::from_millis(30));
        let all = UsageQuery::default();
        let started = Instant::now();
        let unavailable = |r: Result<(), UsageError>| match r {
            Err(UsageError::Unavailable {
                reason,
                retry_after_secs,
            }) => {
                assert!(reason.contains("1000000 usage records"), "{reason}");
                assert!(reason.contains("still being indexed"), "{reason}");
                assert_eq!(retry_after_secs, CATCH_UP_RETRY_AFTER_S);
            }
            other => panic!("expected Unavailable, got {other:?}"),
        };
        unavailable(queries.recent(&all).map(|_| ()));
        unavailable(queries.export(&all, &mut |_| true).map(|_| ()));
        assert!(
            started.elapsed() >= Duration::from_millis(60),
            "each waited"
        );
        assert_eq!(queries.stats(&all).unwrap().overall.request_count, 0);
    }

    /// The writer moves a batch out of `pending` without copying it; when
    /// the store refuses it, the batch goes back in front of the records
    /// built meanwhile, and queries see every record throughout.
    #[test]
    fn a_batch_the_store_refuses_stays_pending_in_order() {
        let (store, shared, queries, records) = over_flaky_store(1, 0, 5);
        let ids = |v: &Batch| v.records.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        for r in &records[..3] {
            shared.push_pending(r.clone(), Instant::now());
        }
        assert!(flush_pending(&shared, false).is_err());
        for r in &records[3..] {
            shared.push_pending(r.clone(), Instant::now());
        }
        let want: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        assert_eq!(
            ids(&shared.pending.lock().unwrap()),
            want,
            "the refused batch comes first"
        );
        assert_eq!(shared.moving_len.load(Ordering::SeqCst), 0);
        let all = UsageQuery::default();
        assert_eq!(queries.stats(&all).unwrap().overall.request_count, 5);
        flush_pending(&shared, false).unwrap();
        assert_eq!(shared.pending_len(), 0);
        assert_eq!(store.count().unwrap(), 5);
        assert_eq!(
            queries.stats(&all).unwrap().overall.request_count,
            5,
            "never counted twice"
        );
    }

    /// A batch the store took but could not make durable is not pending any
    /// more (it would count twice); the flush is retried alone.
    #[test]
    fn a_failed_flush_after_an_insert_is_retried_without_the_batch() {
        let (store, shared, queries, records) = over_flaky_store(0, 1, 4);
        for r in &records {
            shared.push_pending(r.clone(), Instant::now());
        }
        assert!(flush_pending(&shared, false).is_err());
        assert_eq!(shared.pending_len(), 0, "the batch is in the store");
        assert_eq!(store.count().unwrap(), 4);
        let all = UsageQuery::default();
        assert_eq!(queries.stats(&all).unwrap().overall.request_count, 4);
        assert!(shared.flush_owed.load(Ordering::SeqCst));
        // Nothing pending: the owed flush alone.
        flush_pending(&shared, false).unwrap();
        assert_eq!(store.flushes.load(Ordering::SeqCst), 2);
        assert!(!shared.flush_owed.load(Ordering::SeqCst));
        // Nothing owed: no flush.
        flush_pending(&shared, false).unwrap();
        assert_eq!(store.flushes.load(Ordering::SeqCst), 2);
        assert_eq!(store.count().unwrap(), 4);
    }

    /// A builder thread whose counting thread never runs (as when the CPU is
    /// saturated and it gets none): every record still arrives, estimated,
    /// within the deadline.
    #[test]
    fn drafts_the_counting_thread_cannot_get_to_are_estimated_in_time() {
        let shared = shared();
        let queue = Arc::new(CountQueue::new(Duration::from_millis(200)));
        let (tx, rx) = mpsc::sync_channel(100);
        let stage = BuildStage::new(
            Arc::new(TokenCounter::shared()),
            Arc::new(PriceTable::bundled().unwrap()),
            queue.clone(),
            SpareCpu::new(0.0),
            RecordMetrics::new(Arc::default()),
        );
        let builder = {
            let shared = shared.clone();
            std::thread::spawn(move || build_loop(rx, stage, &shared))
        };
        let sent = Instant::now();
        for _ in 0..5 {
            shared.note_queued();
            tx.send(test_exchange("gpt-4o-mini", "{}")).unwrap();
        }
        while shared.pending_len() < 5 {
            assert!(
                sent.elapsed() < Duration::from_secs(10),
                "the drafts were never taken back"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Not before the deadline (50 ms: a quarter of the flush interval).
        assert!(sent.elapsed() >= Duration::from_millis(50));
        assert_eq!(queue.len(), 0);
        {
            let pending = shared.pending.lock().unwrap();
            for r in &pending.records {
                assert_eq!(r.token_source, TokenSource::Estimate);
                assert!(r.verbatim_prompt_tokens.unwrap() > 0);
            }
        }
        // The machine had no idle CPU: exact counting pauses, the next
        // exchange is estimated at once instead of waiting for the deadline.
        shared.note_queued();
        tx.send(test_exchange("gpt-4o-mini", "{}")).unwrap();
        while shared.pending_len() < 6 {
            assert_eq!(queue.len(), 0, "a draft was offered during the pause");
            assert!(sent.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(1));
        }
        shared.stopping.store(true, Ordering::SeqCst);
        builder.join().unwrap();
    }

    #[test]
    fn the_counting_thread_counts_exactly_when_it_gets_to_a_draft() {
        use llm_proxy_core::ExchangeObserver;
        // A long flush interval: the draft may wait 15 s for the counting
        // thread, however busy the machine running the tests is.
        let config = UsageTrackingConfig {
            flush_interval_seconds: 60.0,
            exact_counting_min_idle_cpu: 0.0,
            ..UsageTrackingConfig::default()
        };
        let tracker = UsageTracker::start(
            &config,
            Arc::new(MemoryStore::new()),
            Arc::new(PriceTable::bundled().unwrap()),
        )
        .unwrap();
        let collector = tracker.collector();
        let answer = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Hello, whole wide world! How are you today?"},"finish_reason":"stop"}]}"#;
        let ex = test_exchange("gpt-4o-mini", answer);
        let (method, uri, headers) = (
            http::Method::POST,
            http::Uri::from_static("/v1/chat/completions"),
            http::HeaderMap::new(),
        );
        let attempt = ex.outcome.served_by.clone().unwrap();
        let now = Instant::now();
        collector.on_client_request(&ex.ctx, &method, &uri, &headers, &ex.client_request);
        let backend_request = ex.backend_request.clone().unwrap();
        collector.on_backend_request(&ex.ctx, &attempt, &uri, &headers, &backend_request);
        collector.on_backend_response_head(&ex.ctx, &attempt, http::StatusCode::OK, &headers, now);
        collector.on_backend_response_chunk(&ex.ctx, &attempt, &ex.backend_response[0], now);
        collector.on_client_response_head(&ex.ctx, http::StatusCode::OK, &headers, now);
        collector.on_client_response_chunk(&ex.ctx, &ex.client_response[0], now);
        collector.on_exchange_end(&ex.ctx, &ex.outcome);
        let queries = tracker.queries();
        assert_eq!(tracker.shutdown().unwrap(), 1);
        let query = UsageQuery {
            limit: 10,
            ..UsageQuery::default()
        };
        let page = queries.recent(&query).unwrap();
        let r = &page.records[0];
        assert_eq!(r.token_source, TokenSource::Proxy, "{r:?}");
        assert_eq!(r.verbatim_completion_tokens, Some(11));
        assert_eq!(r.completion_tokens, 11);
        assert_eq!(r.mutated_prompt_tokens, r.verbatim_prompt_tokens);
    }
}
