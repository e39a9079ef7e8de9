//! The passive circuit breaker of one backend instance, fed by real request
//! outcomes.
//!
//! ```text
//!            failure_threshold failures in a row, or a 429
//!   closed ─────────────────────────────────────────────► open
//!     ▲                                                    │ open_cooldown_seconds
//!     │ the probe succeeds                                 ▼ (or Retry-After) passed
//!     └──────────────────────────────────────────────── half_open ── the probe fails ──► open
//!                                                      admits half_open_max_inflight probes
//! ```
//!
//! Connect errors, timeouts, broken streams and 500/502/503/504 count as
//! failures; other statuses (4xx included) show the server answering and
//! count as successes; a client that goes away says nothing about the
//! backend. While closed, every check is one atomic load; the mutex is taken
//! only on failures and in the open and half-open states.

use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use llm_proxy_core::AttemptOutcome;

/// The longest `Retry-After` honoured; a longer one is capped to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// State of a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CircuitState {
    /// Traffic flows.
    Closed,
    /// Cooldown passed: probe requests are admitted.
    HalfOpen,
    /// No traffic until the cooldown has passed.
    Open,
}

impl CircuitState {
    /// `closed`, `half_open` or `open`, as in `/internal/health`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
        }
    }

    /// The value of the circuit-state gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }

    fn tag(self) -> u8 {
        self.gauge() as u8
    }
}

/// Breaker settings, from `[health_check]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BreakerSettings {
    pub enabled: bool,
    pub failure_threshold: u32,
    pub cooldown: Duration,
    pub max_inflight: u32,
}

/// A state change caused by a request outcome or an admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CircuitTransition {
    pub to: CircuitState,
    pub reason: String,
}

/// How an outcome counts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Success,
    Failure(String),
    RateLimited(Option<Duration>),
    Neutral,
}

fn classify(outcome: AttemptOutcome) -> Verdict {
    match outcome {
        AttemptOutcome::Success => Verdict::Success,
        AttemptOutcome::Status {
            status: 429,
            retry_after,
        } => Verdict::RateLimited(retry_after),
        AttemptOutcome::Status {
            status: status @ (500 | 502 | 503 | 504),
            ..
        } => Verdict::Failure(format!("HTTP {status}")),
        AttemptOutcome::Status { .. } => Verdict::Success,
        AttemptOutcome::Error(kind) => Verdict::Failure(kind.as_str().to_owned()),
        _ => Verdict::Neutral,
    }
}

#[derive(Debug)]
struct BreakerInner {
    state: CircuitState,
    failures: u32,
    open_until: Instant,
    inflight: u32,
}

/// One backend's breaker.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    settings: BreakerSettings,
    /// Mirror of `inner.state` for the lock-free closed path.
    state: AtomicU8,
    /// Mirror of `inner.failures`: lets a success skip the lock when nothing failed.
    failures: AtomicU32,
    inner: Mutex<BreakerInner>,
}

const CLOSED: u8 = 0;

impl CircuitBreaker {
    pub fn new(settings: BreakerSettings) -> Self {
        CircuitBreaker {
            settings,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            inner: Mutex::new(BreakerInner {
                state: CircuitState::Closed,
                failures: 0,
                open_until: Instant::now(),
                inflight: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BreakerInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn closed_fast(&self) -> bool {
        !self.settings.enabled || self.state.load(Ordering::Acquire) == CLOSED
    }

    fn set(&self, inner: &mut BreakerInner, state: CircuitState) {
        inner.state = state;
        self.state.store(state.tag(), Ordering::Release);
        if state != CircuitState::Closed {
            inner.failures = 0;
            self.failures.store(0, Ordering::Release);
        }
    }

    /// May routing plan this backend? Pure: takes no probe slot.
    pub fn is_available(&self, now: Instant) -> bool {
        if self.closed_fast() {
            return true;
        }
        let inner = self.lock();
        match inner.state {
            CircuitState::Closed => true,
            CircuitState::Open => now >= inner.open_until,
            CircuitState::HalfOpen => inner.inflight < self.settings.max_inflight,
        }
    }

    /// Admission right before an attempt: an open circuit whose cooldown has
    /// passed turns half-open and admits up to `max_inflight` probes.
    pub fn try_admit(&self, now: Instant) -> (bool, Option<CircuitTransition>) {
        if self.closed_fast() {
            return (true, None);
        }
        let mut inner = self.lock();
        match inner.state {
            CircuitState::Closed => (true, None),
            CircuitState::Open if now >= inner.open_until => {
                self.set(&mut inner, CircuitState::HalfOpen);
                inner.inflight = 1;
                let transition = CircuitTransition {
                    to: CircuitState::HalfOpen,
                    reason: "cooldown passed; admitting a probe request".into(),
                };
                (true, Some(transition))
            }
            CircuitState::Open => (false, None),
            CircuitState::HalfOpen if inner.inflight < self.settings.max_inflight => {
                inner.inflight += 1;
                (true, None)
            }
            CircuitState::HalfOpen => (false, None),
        }
    }

    /// Applies the outcome of an attempt.
    pub fn record(&self, outcome: AttemptOutcome, now: Instant) -> Option<CircuitTransition> {
        if !self.settings.enabled {
            return None;
        }
        let verdict = classify(outcome);
        if matches!(verdict, Verdict::Success | Verdict::Neutral)
            && self.state.load(Ordering::Acquire) == CLOSED
            && self.failures.load(Ordering::Acquire) == 0
        {
            return None;
        }
        let mut inner = self.lock();
        let cooldown = self.settings.cooldown;
        match (inner.state, verdict) {
            (CircuitState::Closed, Verdict::Success) => {
                inner.failures = 0;
                self.failures.store(0, Ordering::Release);
                None
            }
            (CircuitState::Closed, Verdict::Failure(why)) => {
                inner.failures = inner.failures.saturating_add(1);
                self.failures.store(inner.failures, Ordering::Release);
                if inner.failures < self.settings.failure_threshold {
                    return None;
                }
                let reason = format!("{} failures in a row (last: {why})", inner.failures);
                Some(self.open(&mut inner, now, cooldown, reason))
            }
            (CircuitState::Open, Verdict::RateLimited(after)) => {
                // Still open: a later Retry-After extends the cooldown.
                let wait = after.unwrap_or(cooldown).min(MAX_RETRY_AFTER);
                inner.open_until = inner.open_until.max(now + wait);
                None
            }
            (_, Verdict::RateLimited(after)) => {
                let wait = after.unwrap_or(cooldown).min(MAX_RETRY_AFTER);
                let reason = format!(
                    "rate limited (HTTP 429); cooling down for {:.3}s",
                    wait.as_secs_f64()
                );
                Some(self.open(&mut inner, now, wait, reason))
            }
            (CircuitState::HalfOpen, Verdict::Success) => {
                self.set(&mut inner, CircuitState::Closed);
                inner.inflight = 0;
                Some(CircuitTransition {
                    to: CircuitState::Closed,
                    reason: "probe request succeeded".into(),
                })
            }
            (CircuitState::HalfOpen, Verdict::Failure(why)) => {
                let reason = format!("probe request failed ({why})");
                Some(self.open(&mut inner, now, cooldown, reason))
            }
            (CircuitState::HalfOpen, Verdict::Neutral) => {
                inner.inflight = inner.inflight.saturating_sub(1);
                None
            }
            // Outcomes of requests admitted before the circuit opened (or
            // sent by the all-unavailable fallback) leave it as it is.
            (CircuitState::Open, _) | (CircuitState::Closed, Verdict::Neutral) => None,
        }
    }

    fn open(
        &self,
        inner: &mut BreakerInner,
        now: Instant,
        wait: Duration,
        reason: String,
    ) -> CircuitTransition {
        self.set(inner, CircuitState::Open);
        inner.open_until = now + wait;
        inner.inflight = 0;
        CircuitTransition {
            to: CircuitState::Open,
            reason,
        }
    }

    /// The state as shown to users: an open circuit whose cooldown has passed
    /// shows as half-open (the next request is a probe).
    pub fn state(&self, now: Instant) -> CircuitState {
        if self.closed_fast() {
            return CircuitState::Closed;
        }
        let inner = self.lock();
        match inner.state {
            CircuitState::Open if now >= inner.open_until => CircuitState::HalfOpen,
            state => state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llm_proxy_core::UpstreamErrorKind;

    const COOLDOWN: Duration = Duration::from_secs(30);

    fn breaker(max_inflight: u32) -> CircuitBreaker {
        CircuitBreaker::new(BreakerSettings {
            enabled: true,
            failure_threshold: 3,
            cooldown: COOLDOWN,
            max_inflight,
        })
    }

    fn status(status: u16) -> AttemptOutcome {
        AttemptOutcome::Status {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn opens_after_threshold_failures_and_only_server_errors_count() {
        let b = breaker(1);
        let t0 = Instant::now();
        for s in [400, 401, 404, 422, 501] {
            assert_eq!(b.record(status(s), t0), None);
        }
        assert_eq!(b.record(status(503), t0), None);
        assert_eq!(
            b.record(AttemptOutcome::Error(UpstreamErrorKind::Connect), t0),
            None
        );
        // A client leaving neither counts nor resets.
        assert_eq!(b.record(AttemptOutcome::ClientGone, t0), None);
        let t = b.record(
            AttemptOutcome::Error(UpstreamErrorKind::FirstByteTimeout),
            t0,
        );
        let t = t.unwrap();
        assert_eq!(t.to, CircuitState::Open);
        assert!(t.reason.contains("first_byte_timeout"), "{}", t.reason);
        assert!(!b.is_available(t0));
        assert_eq!(b.state(t0), CircuitState::Open);
        assert_eq!(b.try_admit(t0), (false, None));
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = breaker(1);
        let t0 = Instant::now();
        for _ in 0..10 {
            b.record(status(502), t0);
            b.record(status(500), t0);
            b.record(AttemptOutcome::Success, t0);
        }
        assert_eq!(b.state(t0), CircuitState::Closed);
    }

    #[test]
    fn half_open_admits_exactly_max_inflight_and_availability_takes_no_slot() {
        let b = breaker(1);
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(status(504), t0);
        }
        let later = t0 + COOLDOWN;
        assert_eq!(b.state(later), CircuitState::HalfOpen);
        for _ in 0..5 {
            assert!(b.is_available(later), "checking must not use the slot");
        }
        let (admitted, t) = b.try_admit(later);
        assert!(admitted);
        assert_eq!(t.unwrap().to, CircuitState::HalfOpen);
        assert!(!b.is_available(later));
        assert_eq!(b.try_admit(later), (false, None));
        let t = b.record(AttemptOutcome::Success, later).unwrap();
        assert_eq!(t.to, CircuitState::Closed);
        assert!(b.is_available(later));
        assert_eq!(b.try_admit(later), (true, None));
    }

    #[test]
    fn a_failed_probe_reopens_for_another_cooldown() {
        let b = breaker(2);
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(status(500), t0);
        }
        let t1 = t0 + COOLDOWN;
        assert!(b.try_admit(t1).0);
        assert!(b.try_admit(t1).0, "two probes allowed");
        assert!(!b.try_admit(t1).0);
        let t = b.record(status(503), t1).unwrap();
        assert_eq!(t.to, CircuitState::Open);
        assert!(!b.is_available(t1 + COOLDOWN - Duration::from_millis(1)));
        assert!(b.is_available(t1 + COOLDOWN));
        // The second probe's late success does not close a re-opened circuit.
        assert_eq!(b.record(AttemptOutcome::Success, t1), None);
        assert_eq!(b.state(t1), CircuitState::Open);
    }

    #[test]
    fn a_probe_whose_client_left_frees_its_slot() {
        let b = breaker(1);
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(status(500), t0);
        }
        let t1 = t0 + COOLDOWN;
        assert!(b.try_admit(t1).0);
        assert!(!b.is_available(t1));
        assert_eq!(b.record(AttemptOutcome::ClientGone, t1), None);
        assert!(b.is_available(t1));
        assert_eq!(b.state(t1), CircuitState::HalfOpen);
    }

    #[test]
    fn rate_limit_opens_for_retry_after_capped() {
        let b = breaker(1);
        let t0 = Instant::now();
        let t = b
            .record(
                AttemptOutcome::Status {
                    status: 429,
                    retry_after: Some(Duration::from_secs(2)),
                },
                t0,
            )
            .unwrap();
        assert_eq!(t.to, CircuitState::Open);
        assert!(!b.is_available(t0 + Duration::from_millis(1999)));
        assert!(b.is_available(t0 + Duration::from_secs(2)));
        // Without Retry-After: the configured cooldown; absurd values are capped.
        let b = breaker(1);
        b.record(status(429), t0);
        assert!(!b.is_available(t0 + COOLDOWN - Duration::from_millis(1)));
        let b = breaker(1);
        b.record(
            AttemptOutcome::Status {
                status: 429,
                retry_after: Some(Duration::from_secs(86_400)),
            },
            t0,
        );
        assert!(b.is_available(t0 + MAX_RETRY_AFTER));
    }

    #[test]
    fn disabled_breaker_never_opens() {
        let b = CircuitBreaker::new(BreakerSettings {
            enabled: false,
            failure_threshold: 1,
            cooldown: COOLDOWN,
            max_inflight: 1,
        });
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(b.record(status(500), t0), None);
        }
        assert!(b.is_available(t0));
        assert_eq!(b.state(t0), CircuitState::Closed);
    }
}
