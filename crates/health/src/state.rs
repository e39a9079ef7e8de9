//! The per-endpoint state machine. Each probe kind (ping, HTTP) counts
//! consecutive results: `failure_threshold` failures in a row mark the kind
//! failing, `recovery_threshold` successes in a row clear it. The endpoint is
//! healthy while no kind is failing. Routing reads one atomic; everything
//! else sits behind a mutex that only probes and the status route take.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use crate::endpoint::EndpointUrl;

/// Which probe produced a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// ICMP echo.
    Ping,
    /// HTTP request.
    Http,
}

impl ProbeKind {
    /// `ping` or `http`: the metric label and the prefix of reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Ping => "ping",
            ProbeKind::Http => "http",
        }
    }
}

/// The result of one check, as the state machine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    /// `Some(true)` passed, `Some(false)` failed, `None` could not be run
    /// (no raw socket): neither passes nor fails the endpoint.
    pub passed: Option<bool>,
    /// How long a passing check took.
    pub latency: Option<Duration>,
    /// Why the check failed or could not run.
    pub error: Option<String>,
    /// HTTP status of the final response, if one arrived.
    pub status: Option<u16>,
}

/// Consecutive counts that flip a probe kind.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Thresholds {
    pub failure: u32,
    pub recovery: u32,
}

/// What one probe kind has seen so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ProbeTrack {
    pub success: Option<bool>,
    pub last_check: Option<SystemTime>,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    /// Reached the failure threshold and has not recovered yet.
    pub failing: bool,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
}

/// Everything the status route shows about an endpoint's probes.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct EndpointStatus {
    pub ping: ProbeTrack,
    pub http: ProbeTrack,
    pub ping_available: bool,
    pub last_http_status: Option<u16>,
}

/// A change of an endpoint's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EndpointTransition {
    pub healthy: bool,
    /// Why it is unhealthy (empty when it became healthy).
    pub reason: String,
}

/// One endpoint (normalized URL) and the backends that use it.
#[derive(Debug)]
pub(crate) struct EndpointHealthState {
    pub url: EndpointUrl,
    pub backends: Vec<String>,
    healthy: AtomicBool,
    status: Mutex<EndpointStatus>,
}

impl EndpointHealthState {
    /// A new endpoint: healthy until probes say otherwise.
    pub fn new(url: EndpointUrl, backends: Vec<String>, ping_enabled: bool) -> Self {
        EndpointHealthState {
            url,
            backends,
            healthy: AtomicBool::new(true),
            status: Mutex::new(EndpointStatus {
                ping_available: ping_enabled,
                ..EndpointStatus::default()
            }),
        }
    }

    /// Lock-free read for routing.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// A copy of the probe status.
    pub fn status(&self) -> EndpointStatus {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, EndpointStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies one check; returns the transition it caused, if any.
    pub fn record(
        &self,
        kind: ProbeKind,
        result: CheckResult,
        thresholds: Thresholds,
        at: SystemTime,
    ) -> Option<EndpointTransition> {
        let mut status = self.lock();
        if kind == ProbeKind::Http {
            status.last_http_status = result.status;
        }
        if kind == ProbeKind::Ping {
            status.ping_available = result.passed.is_some();
        }
        let track = match kind {
            ProbeKind::Ping => &mut status.ping,
            ProbeKind::Http => &mut status.http,
        };
        track.last_check = Some(at);
        track.latency_ms = result.latency.map(|d| round_ms(d.as_secs_f64() * 1000.0));
        track.error = result.error;
        track.success = result.passed;
        match result.passed {
            None => {
                track.consecutive_failures = 0;
                track.consecutive_successes = 0;
                track.failing = false;
            }
            Some(true) => {
                track.consecutive_failures = 0;
                track.consecutive_successes = track.consecutive_successes.saturating_add(1);
                if track.failing && track.consecutive_successes >= thresholds.recovery {
                    track.failing = false;
                }
            }
            Some(false) => {
                track.consecutive_successes = 0;
                track.consecutive_failures = track.consecutive_failures.saturating_add(1);
                if !track.failing && track.consecutive_failures >= thresholds.failure {
                    track.failing = true;
                }
            }
        }
        let healthy = !status.ping.failing && !status.http.failing;
        if healthy == self.healthy.load(Ordering::Acquire) {
            return None;
        }
        self.healthy.store(healthy, Ordering::Release);
        let reason = if healthy {
            String::new()
        } else {
            [
                (ProbeKind::Ping, &status.ping),
                (ProbeKind::Http, &status.http),
            ]
            .into_iter()
            .filter(|(_, t)| t.failing)
            .map(|(k, t)| {
                let n = t.consecutive_failures;
                format!(
                    "{} check failed {n} time{} in a row: {}",
                    k.as_str(),
                    if n == 1 { "" } else { "s" },
                    t.error.as_deref().unwrap_or("no answer")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
        };
        Some(EndpointTransition { healthy, reason })
    }
}

/// Milliseconds with three decimals.
pub(crate) fn round_ms(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> EndpointHealthState {
        EndpointHealthState::new(
            EndpointUrl::parse("http://127.0.0.1:1/v1").unwrap(),
            vec!["a".into()],
            true,
        )
    }

    fn pass() -> CheckResult {
        CheckResult {
            passed: Some(true),
            latency: Some(Duration::from_micros(1500)),
            error: None,
            status: Some(200),
        }
    }

    fn fail(why: &str) -> CheckResult {
        CheckResult {
            passed: Some(false),
            latency: None,
            error: Some(why.into()),
            status: None,
        }
    }

    const T: Thresholds = Thresholds {
        failure: 3,
        recovery: 2,
    };

    #[test]
    fn failure_threshold_then_recovery_threshold() {
        let e = endpoint();
        let now = SystemTime::now();
        assert_eq!(e.record(ProbeKind::Http, fail("refused"), T, now), None);
        assert_eq!(e.record(ProbeKind::Http, fail("refused"), T, now), None);
        assert!(e.is_healthy());
        let t = e.record(ProbeKind::Http, fail("refused"), T, now).unwrap();
        assert!(!t.healthy);
        assert_eq!(t.reason, "http check failed 3 times in a row: refused");
        assert!(!e.is_healthy());
        assert_eq!(e.record(ProbeKind::Http, fail("refused"), T, now), None);
        assert_eq!(
            e.record(ProbeKind::Http, pass(), T, now),
            None,
            "one success is not enough"
        );
        let t = e.record(ProbeKind::Http, pass(), T, now).unwrap();
        assert!(t.healthy);
        assert!(e.is_healthy());
        let s = e.status();
        assert_eq!(s.http.latency_ms, Some(1.5));
        assert_eq!(s.last_http_status, Some(200));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let e = endpoint();
        let now = SystemTime::now();
        for _ in 0..5 {
            e.record(
                ProbeKind::Http,
                fail("x"),
                Thresholds {
                    failure: 2,
                    recovery: 1,
                },
                now,
            );
            e.record(
                ProbeKind::Http,
                pass(),
                Thresholds {
                    failure: 2,
                    recovery: 1,
                },
                now,
            );
        }
        assert!(e.is_healthy());
    }

    #[test]
    fn either_kind_failing_makes_the_endpoint_unhealthy_and_both_must_recover() {
        let e = endpoint();
        let now = SystemTime::now();
        let one = Thresholds {
            failure: 1,
            recovery: 1,
        };
        assert!(
            e.record(ProbeKind::Ping, fail("no reply"), one, now)
                .is_some()
        );
        assert_eq!(e.record(ProbeKind::Http, fail("500"), one, now), None);
        assert_eq!(
            e.record(ProbeKind::Ping, pass(), one, now),
            None,
            "http still failing"
        );
        assert!(e.record(ProbeKind::Http, pass(), one, now).unwrap().healthy);
    }

    #[test]
    fn unavailable_ping_neither_fails_nor_passes() {
        let e = endpoint();
        let now = SystemTime::now();
        let unavailable = CheckResult {
            passed: None,
            latency: None,
            error: Some("raw socket: Operation not permitted".into()),
            status: None,
        };
        for _ in 0..10 {
            assert_eq!(e.record(ProbeKind::Ping, unavailable.clone(), T, now), None);
        }
        let s = e.status();
        assert!(!s.ping_available);
        assert_eq!(s.ping.success, None);
        assert_eq!(s.ping.consecutive_failures, 0);
        assert!(e.is_healthy());
    }
}
