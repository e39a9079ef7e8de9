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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use crate::builder::Draft;

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

/// When the counting thread last made progress (a line or a draft counted).
#[derive(Debug)]
pub(crate) struct Heartbeat {
    start: Instant,
    /// Nanoseconds since `start`.
    last: AtomicU64,
}

impl Heartbeat {
    /// A heartbeat that has not beaten since now.
    pub(crate) fn new() -> Heartbeat {
        Heartbeat {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// The counting thread is making progress now.
    pub(crate) fn beat(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
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
