//! The counting stage: the proxy's own token counts are exact when the
//! machine has CPU to spare, and length estimates when it has none.
//!
//! The builder thread (normal priority) drafts every record and offers the
//! draft here. The counting thread runs at the lowest CPU priority
//! (`SCHED_IDLE` on Linux), so tokenizing never competes with serving
//! requests: when the
//! proxy saturates the CPU, the counting thread gets little of it, drafts
//! wait, and the builder takes back any draft that waited longer than the
//! deadline (a quarter of the flush interval) and finishes it with estimates
//! (`token_source = "estimate"` when the backend reported no usage;
//! `llm_proxy_usage_estimated_records_total` counts them). A record therefore
//! reaches the pending buffer at most one deadline after its exchange ended,
//! counted or not, and the writer flushes every three quarters of the
//! interval: a record is durable at most one flush interval after its end.
//! While the machine has less than `exact_counting_min_idle_cpu` of its CPU
//! time to spare ([`SpareCpu`]), the builder does not offer drafts at all.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use crate::builder::Draft;
use crate::record::UsageRecord;

/// Drafts waiting at most; past this the builder estimates at once.
const MAX_JOBS: usize = 4_096;
/// Body bytes held by waiting drafts at most.
const MAX_BYTES: usize = 64 * 1024 * 1024;

struct Job {
    draft: Box<Draft>,
    bytes: usize,
    queued_at: Instant,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Records the counting thread finished, for the builder to collect.
    counted: Vec<(UsageRecord, Instant)>,
    bytes: usize,
    /// The counting thread sleeps on `ready` (so a push wakes it only then).
    idle: bool,
    closed: bool,
}

/// Drafts waiting for the counting thread, oldest first.
///
/// The counting thread runs at idle priority and can be preempted for long
/// while it holds the lock, so the builder never waits for it: it uses
/// `try_lock` and, when the lock is taken, estimates or tries again later.
pub(crate) struct CountQueue {
    state: Mutex<State>,
    ready: Condvar,
    deadline: Duration,
    heartbeat: Heartbeat,
}

/// When the counting thread last made progress (a line or a draft counted),
/// and how much CPU time it has used.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    start: Instant,
    /// Nanoseconds since `start`.
    last: AtomicU64,
    /// The counting thread's Linux thread id (0: not known).
    tid: AtomicI32,
}

impl Heartbeat {
    /// A heartbeat that has not beaten since now.
    pub(crate) fn new() -> Heartbeat {
        Heartbeat {
            start: Instant::now(),
            last: AtomicU64::new(0),
            tid: AtomicI32::new(0),
        }
    }

    /// The counting thread is making progress now.
    pub(crate) fn beat(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
    }

    /// Records the calling thread as the counting thread (Linux: its CPU
    /// time is then read from `/proc`).
    pub(crate) fn adopt_thread(&self) {
        #[cfg(target_os = "linux")]
        self.tid.store(
            rustix::thread::gettid().as_raw_nonzero().get(),
            Ordering::Relaxed,
        );
    }

    /// The counting thread's CPU time so far (`None` when unknown).
    fn cpu_time(&self) -> Option<Duration> {
        let tid = self.tid.load(Ordering::Relaxed);
        if tid <= 0 {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
        let ns = stat.split_ascii_whitespace().next()?.parse::<u64>().ok()?;
        Some(Duration::from_nanos(ns))
    }

    /// How long ago the counting thread last made progress.
    pub(crate) fn age(&self, now: Instant) -> Duration {
        let last = self.start + Duration::from_nanos(self.last.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }
}

impl CountQueue {
    /// A queue whose drafts wait at most a quarter of `flush_interval`
    /// (at least 10 ms).
    pub(crate) fn new(flush_interval: Duration) -> CountQueue {
        CountQueue {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            deadline: (flush_interval / 4).max(Duration::from_millis(10)),
            heartbeat: Heartbeat::new(),
        }
    }

    /// The counting thread's progress.
    pub(crate) fn heartbeat(&self) -> &Heartbeat {
        &self.heartbeat
    }

    /// The lock, unless the counting thread holds it.
    fn try_lock(&self) -> Option<MutexGuard<'_, State>> {
        match self.state.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// The longest a draft waits for exact counting.
    pub(crate) fn deadline(&self) -> Duration {
        self.deadline
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `draft` for exact counting, or gives it back when the queue is
    /// full (the counting thread is far behind), closed, or locked by the
    /// counting thread.
    pub(crate) fn offer(&self, draft: Box<Draft>) -> Result<(), Box<Draft>> {
        let bytes = draft.held_bytes();
        let Some(mut state) = self.try_lock() else {
            return Err(draft);
        };
        if state.closed || state.jobs.len() >= MAX_JOBS || state.bytes + bytes > MAX_BYTES {
            return Err(draft);
        }
        state.bytes += bytes;
        state.jobs.push_back(Job {
            draft,
            bytes,
            queued_at: Instant::now(),
        });
        if state.idle {
            state.idle = false;
            drop(state);
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The oldest draft if it waited past the deadline, taken back from the
    /// queue (the caller estimates it). `None` too while the counting thread
    /// holds the lock (the caller tries again soon).
    pub(crate) fn take_stale(&self, now: Instant) -> Option<Box<Draft>> {
        let mut state = self.try_lock()?;
        let stale = state
            .jobs
            .front()
            .is_some_and(|j| now.saturating_duration_since(j.queued_at) >= self.deadline);
        if !stale {
            return None;
        }
        let job = state.jobs.pop_front()?;
        state.bytes -= job.bytes;
        Some(job.draft)
    }

    /// The next draft to count; blocks while the queue is empty. `None` once
    /// the queue is closed and empty.
    pub(crate) fn next(&self) -> Option<Box<Draft>> {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                state.bytes -= job.bytes;
                return Some(job.draft);
            }
            if state.closed {
                return None;
            }
            state.idle = true;
            state = self.ready.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// No more offers; the counting thread ends once the queue is empty.
    /// Hands a counted record back (counting thread). Blocking is fine
    /// here: the builder holds the lock only briefly, and never waits for it.
    pub(crate) fn hand_back(&self, record: UsageRecord, ended: Instant) {
        self.lock().counted.push((record, ended));
    }

    /// The records counted so far (builder). Empty when the counting thread
    /// holds the lock: they are collected next time.
    pub(crate) fn take_counted(&self) -> Vec<(UsageRecord, Instant)> {
        self.try_lock()
            .map(|mut state| std::mem::take(&mut state.counted))
            .unwrap_or_default()
    }

    /// Every record counted (at shutdown, after the counting thread ended).
    pub(crate) fn take_all_counted(&self) -> Vec<(UsageRecord, Instant)> {
        std::mem::take(&mut self.lock().counted)
    }

    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// The oldest draft, whatever its age (at shutdown, for what the
    /// counting thread left).
    pub(crate) fn pop(&self) -> Option<Box<Draft>> {
        let mut state = self.lock();
        let job = state.jobs.pop_front()?;
        state.bytes -= job.bytes;
        Some(job.draft)
    }

    /// Drafts waiting (1 while the counting thread holds the lock: some may be).
    pub(crate) fn len(&self) -> usize {
        self.try_lock().map_or(1, |state| state.jobs.len())
    }
}

/// `/proc/stat` counts in `USER_HZ` ticks: 100 per second on every Linux
/// architecture we build for.
const NANOS_PER_TICK: u128 = 10_000_000;
/// How often the machine's CPU times are read.
const SPARE_SAMPLE_PERIOD: Duration = Duration::from_millis(250);

/// Whether the machine has CPU to spare, from `/proc/stat` (Linux), sampled
/// every [`SPARE_SAMPLE_PERIOD`] by the builder thread.
///
/// On a saturated machine an idle-priority thread still runs in the short
/// gaps between busy threads, and tokenizing there evicts the request
/// path's caches: at saturation the request path ran ~5 µs per request
/// slower with exact counting than with none. So drafts are estimated at
/// once while less than `usage_tracking.exact_counting_min_idle_cpu` (0.2) of the CPU time
/// went unused
/// (time the counting thread used counts as unused: it would have been).
/// Where `/proc/stat` cannot be read, the machine is taken to have CPU to
/// spare (the stale-draft pause still applies).
///
/// A proxy allowed fewer cores than the machine has (a container's CPU
/// quota or an affinity mask, see [`crate::cpu_limit`]) must also have
/// spare time within that limit: its own CPU time against the limit's
/// capacity over the same window. There the counting thread's time counts
/// as used: at idle priority it yields to the machine's other threads, but
/// it still spends the container's quota, which throttles the request
/// path with it.
#[derive(Debug)]
pub(crate) struct SpareCpu {
    last: Option<Sample>,
    /// Cores the process may use, when fewer than the machine's (read at the
    /// first sample; `Some(None)`: no such limit).
    limit: Option<Option<f64>>,
    /// When the CPU times were last read (or found unreadable).
    read_at: Option<Instant>,
    spare: bool,
    /// The least spare share of CPU time for exact counting.
    min_share: f64,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    times: CpuTimes,
    counter: Duration,
    /// The whole process's CPU time, and when it was read.
    process: Duration,
    at: Instant,
}

/// The CPU time of every thread of this process so far.
fn process_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Machine-wide CPU time in clock ticks (`/proc/stat`, first line).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct CpuTimes {
    /// idle + iowait.
    idle: u64,
    /// user + nice + system + idle + iowait + irq + softirq + steal.
    total: u64,
    /// CPUs counted (`cpuN` lines).
    cpus: u32,
}

impl CpuTimes {
    /// Parses the `cpu ` line of `/proc/stat`.
    fn parse(stat: &str) -> Option<CpuTimes> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let mut fields = line.split_ascii_whitespace().skip(1).map(str::parse::<u64>);
        let mut next = || fields.next().and_then(Result::ok);
        let (user, nice, system, idle) = (next()?, next()?, next()?, next()?);
        // Older kernels stop after idle; missing fields are zero.
        let (iowait, irq, softirq, steal) = (
            next().unwrap_or(0),
            next().unwrap_or(0),
            next().unwrap_or(0),
            next().unwrap_or(0),
        );
        let cpus = stat
            .lines()
            .filter(|l| {
                l.strip_prefix("cpu")
                    .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit()))
            })
            .count();
        Some(CpuTimes {
            idle: idle + iowait,
            total: user + nice + system + idle + iowait + irq + softirq + steal,
            cpus: u32::try_from(cpus).unwrap_or(u32::MAX),
        })
    }

    fn read() -> Option<CpuTimes> {
        CpuTimes::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }
}

/// The share of the CPU time between two samples that was spare: idle, or
/// used by the counting thread (`counter`, in ticks). `None` when no time
/// passed.
fn spare_share(before: CpuTimes, after: CpuTimes, counter_ticks: u64) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    if total == 0 {
        return None;
    }
    let idle = after.idle.saturating_sub(before.idle);
    Some(((idle + counter_ticks) as f64 / total as f64).min(1.0))
}

/// The share of a CPU limit of `cores` that went unused over `wall`, in
/// which the process used `process` CPU time. `None` when no time passed.
fn limit_spare_share(process: Duration, wall: Duration, cores: f64) -> Option<f64> {
    let capacity = wall.as_secs_f64() * cores;
    if capacity <= 0.0 {
        return None;
    }
    Some((1.0 - process.as_secs_f64() / capacity).clamp(0.0, 1.0))
}

impl SpareCpu {
    /// Spare when at least `min_share` of the CPU time went unused; 0:
    /// always (`/proc/stat` is then never read).
    pub(crate) fn new(min_share: f64) -> SpareCpu {
        SpareCpu {
            last: None,
            limit: None,
            read_at: None,
            spare: true,
            min_share,
        }
    }

    /// Whether the machine had CPU to spare over the last sample period.
    pub(crate) fn has_spare(&mut self, now: Instant, heartbeat: &Heartbeat) -> bool {
        if self.min_share <= 0.0 {
            return true;
        }
        let due = self
            .read_at
            .is_none_or(|t| now.saturating_duration_since(t) >= SPARE_SAMPLE_PERIOD);
        if due {
            // Also when unreadable: no file is opened per record.
            self.read_at = Some(now);
            self.sample(heartbeat);
        }
        self.spare
    }

    /// Starts the next reading's window now, keeping the current verdict:
    /// time before `now` (e.g. the writer catching up) is not judged.
    pub(crate) fn restart_window(&mut self, now: Instant, heartbeat: &Heartbeat) {
        if self.min_share <= 0.0 {
            return;
        }
        self.read_at = Some(now);
        self.last = CpuTimes::read().map(|times| Sample {
            times,
            counter: heartbeat.cpu_time().unwrap_or_default(),
            process: process_cpu_time(),
            at: Instant::now(),
        });
    }

    fn sample(&mut self, heartbeat: &Heartbeat) {
        let Some(times) = CpuTimes::read() else {
            self.spare = true;
            self.last = None;
            return;
        };
        let counter = heartbeat.cpu_time().unwrap_or_default();
        let (process, at) = (process_cpu_time(), Instant::now());
        let limit = *self
            .limit
            .get_or_insert_with(|| crate::cpu_limit::cpu_limit(times.cpus));
        if let Some(last) = self.last {
            let counted = counter.saturating_sub(last.counter);
            let counter_ticks =
                u64::try_from(counted.as_nanos() / NANOS_PER_TICK).unwrap_or(u64::MAX);
            if let Some(share) = spare_share(last.times, times, counter_ticks) {
                self.spare = share >= self.min_share;
            }
            if let Some(cores) = limit
                && let Some(share) = limit_spare_share(
                    process.saturating_sub(last.process),
                    at.saturating_duration_since(last.at),
                    cores,
                )
            {
                self.spare &= share >= self.min_share;
            }
        }
        self.last = Some(Sample {
            times,
            counter,
            process,
            at,
        });
    }
}

/// Lowers the calling thread's CPU priority to the least: `SCHED_IDLE` on
/// Linux (it runs only on CPU time nothing else wants, and any other thread
/// waking up preempts it at once), else nice 19. Best effort: a failure is
/// logged.
pub(crate) fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
            set_thread_priority_and_policy, thread_native_id,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        if set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle).is_ok() {
            return;
        }
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), 19) {
            tracing::debug!(error = %e, "cannot lower the token counting thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{RecordBuilder, test_exchange};

    fn draft(builder: &mut RecordBuilder) -> Box<Draft> {
        Box::new(builder.draft(test_exchange("gpt-4o-mini", "{}")))
    }

    #[test]
    fn cpu_times_are_read_from_the_cpu_line() {
        let stat = "cpu  100 5 50 800 20 3 2 10 7 0\ncpu0 50 2 25 400 10 1 1 5 3 0\nintr 1 2\n";
        assert_eq!(
            CpuTimes::parse(stat),
            Some(CpuTimes {
                idle: 820,
                total: 990,
                cpus: 1
            })
        );
        // An old kernel's four fields.
        assert_eq!(
            CpuTimes::parse("cpu 1 2 3 4\ncpu0 1 1 1 1\ncpu1 0 1 2 1\ncpufreq 3\n"),
            Some(CpuTimes {
                idle: 4,
                total: 10,
                cpus: 2
            })
        );
        assert_eq!(CpuTimes::parse("cpu0 1 2 3 4\n"), None);
        assert_eq!(CpuTimes::parse("cpu  1 x 3 4\n"), None);
        assert_eq!(CpuTimes::parse(""), None);
        if cfg!(target_os = "linux") {
            assert!(CpuTimes::read().is_some_and(|t| t.total > 0));
        }
    }

    /// Under a CPU limit the proxy's own use decides: a container using
    /// all of its 2 cores has nothing to spare however idle the machine.
    #[test]
    fn a_cpu_limit_is_spare_only_where_the_process_leaves_it_unused() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(limit_spare_share(s(2), s(1), 2.0), Some(0.0));
        assert_eq!(limit_spare_share(ms(500), s(1), 2.0), Some(0.75));
        assert_eq!(limit_spare_share(ms(250), s(1), 0.5), Some(0.5));
        // Over the limit (a quota is enforced per period): nothing spare.
        assert_eq!(limit_spare_share(s(3), s(1), 2.0), Some(0.0));
        assert_eq!(limit_spare_share(s(1), s(0), 2.0), None);
        // The process's CPU time grows with work on any of its threads.
        let before = process_cpu_time();
        let t = Instant::now();
        while t.elapsed() < ms(30) {
            std::hint::spin_loop();
        }
        assert!(process_cpu_time().saturating_sub(before) >= ms(20));
    }

    #[test]
    fn the_counting_threads_cpu_time_is_read_from_proc() {
        let beat = Heartbeat::new();
        assert_eq!(beat.cpu_time(), None, "no thread adopted yet");
        beat.adopt_thread();
        if cfg!(target_os = "linux") {
            let before = beat.cpu_time().unwrap();
            let spin = Instant::now();
            while spin.elapsed() < Duration::from_millis(100) {
                std::hint::black_box(0u64);
            }
            assert!(beat.cpu_time().unwrap() > before);
        }
    }

    #[test]
    fn a_core_kept_busy_leaves_no_spare_cpu_at_a_share_of_one() {
        let beat = Heartbeat::new();
        assert!(SpareCpu::new(0.0).has_spare(Instant::now(), &beat));
        if !cfg!(target_os = "linux") {
            return;
        }
        // 1.0: spare only while every core is idle, never while this
        // thread spins.
        let mut spare = SpareCpu::new(1.0);
        assert!(
            spare.has_spare(Instant::now(), &beat),
            "spare until measured"
        );
        let until = Instant::now() + SPARE_SAMPLE_PERIOD * 3;
        while Instant::now() < until {
            std::hint::black_box(0u64);
        }
        assert!(!spare.has_spare(Instant::now(), &beat));
    }

    /// Limited to one core, a process keeping one core busy has nothing to
    /// spare, whatever the rest of the machine does. (On a machine too busy
    /// to have 5 % idle this holds for the machine's reading alone.)
    #[test]
    fn a_process_using_its_whole_cpu_limit_has_none_to_spare() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let beat = Heartbeat::new();
        let mut spare = SpareCpu::new(0.05);
        spare.limit = Some(Some(1.0));
        assert!(spare.has_spare(Instant::now(), &beat));
        let until = Instant::now() + SPARE_SAMPLE_PERIOD * 3;
        while Instant::now() < until {
            std::hint::black_box(0u64);
        }
        assert!(!spare.has_spare(Instant::now(), &beat));
    }

    #[test]
    fn spare_cpu_counts_idle_time_and_the_counting_threads_own() {
        let before = CpuTimes {
            idle: 1_000,
            total: 10_000,
            cpus: 2,
        };
        // 100 ticks passed, 5 idle: busy.
        let busy = CpuTimes {
            idle: 1_005,
            total: 10_100,
            cpus: 2,
        };
        assert_eq!(spare_share(before, busy, 0), Some(0.05));
        // The counting thread used 30 of the busy ticks: it would yield them.
        assert_eq!(spare_share(before, busy, 30), Some(0.35));
        assert_eq!(spare_share(before, before, 0), None);
        assert_eq!(spare_share(busy, before, 0), None, "a counter going back");
        assert_eq!(spare_share(before, busy, 500), Some(1.0));
    }

    #[test]
    fn drafts_wait_until_the_deadline_then_are_taken_back_oldest_first() {
        let mut builder = RecordBuilder::new();
        // A 40 ms flush interval: a 10 ms deadline.
        let queue = CountQueue::new(Duration::from_millis(40));
        assert!(queue.offer(draft(&mut builder)).is_ok());
        assert!(queue.offer(draft(&mut builder)).is_ok());
        assert!(queue.take_stale(Instant::now()).is_none(), "not stale yet");
        assert_eq!(queue.len(), 2);
        let later = Instant::now() + Duration::from_millis(10);
        assert!(queue.offer(draft(&mut builder)).is_ok());
        let first = queue.take_stale(later).unwrap();
        let second = queue.take_stale(later).unwrap();
        assert!(first.ended_at() <= second.ended_at());
        // The third was queued just now: it stays for the counting thread.
        assert!(queue.take_stale(later).is_none());
        assert_eq!(queue.len(), 1);
        assert!(queue.next().is_some());
        queue.close();
        assert!(queue.next().is_none(), "closed and empty: the thread ends");
        assert!(
            queue.offer(draft(&mut builder)).is_err(),
            "closed: no offers"
        );
    }

    #[test]
    fn a_full_queue_gives_the_draft_back() {
        let mut builder = RecordBuilder::new();
        let queue = CountQueue::new(Duration::from_secs(1));
        for _ in 0..MAX_JOBS {
            assert!(queue.offer(draft(&mut builder)).is_ok());
        }
        assert!(queue.offer(draft(&mut builder)).is_err());
        // Bytes bound too.
        let queue = CountQueue::new(Duration::from_secs(1));
        let mut big = test_exchange("gpt-4o-mini", "{}");
        big.client_request = bytes::Bytes::from(vec![b' '; MAX_BYTES / 2 + 1]);
        assert!(queue.offer(Box::new(builder.draft(big))).is_ok());
        let mut big = test_exchange("gpt-4o-mini", "{}");
        big.client_request = bytes::Bytes::from(vec![b' '; MAX_BYTES / 2 + 1]);
        assert!(queue.offer(Box::new(builder.draft(big))).is_err());
    }

    #[test]
    fn a_waiting_counter_wakes_for_a_new_draft() {
        let queue = std::sync::Arc::new(CountQueue::new(Duration::from_secs(1)));
        let (woke, woken) = std::sync::mpsc::channel();
        {
            let queue = queue.clone();
            std::thread::spawn(move || {
                let _ = woke.send(queue.next().is_some());
            });
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut builder = RecordBuilder::new();
        assert!(queue.offer(draft(&mut builder)).is_ok());
        // A lost wake-up fails here instead of hanging the test.
        assert_eq!(woken.recv_timeout(Duration::from_secs(10)), Ok(true));
    }
}
