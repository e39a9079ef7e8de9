//! [`HealthMonitor`]: the endpoint registry, the probe tasks that feed it,
//! the per-backend breakers, and the [`EndpointHealth`] view routing reads.
//!
//! Routing cost: `is_available` / `try_admit` / `record_outcome` look the
//! backend up in a map built at start and read atomics (a breaker's mutex
//! only when it is not closed or has seen failures). No I/O, no waiting.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use llm_proxy_core::{AttemptOutcome, BackendType, ConfigError, EndpointHealth, RoutingConfig};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::breaker::{BreakerSettings, CircuitBreaker, CircuitState, CircuitTransition};
use crate::config::{HealthCheckConfig, seconds};
use crate::endpoint::EndpointUrl;
use crate::error::HealthError;
use crate::events::{EventHub, HealthEvent, HealthEventKind, HealthListener};
use crate::probe::http::HttpProber;
use crate::probe::icmp;
use crate::report::{
    BackendReport, EndpointHealthReport, EndpointReport, HealthReport, HealthSummary,
};
use crate::state::{CheckResult, EndpointHealthState, ProbeKind, Thresholds};
use crate::telemetry;
use llm_proxy_core::time::rfc3339;

/// A backend as health sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// Instance name (the routing key).
    pub name: String,
    /// Its type; `mock` has no endpoint.
    pub backend_type: BackendType,
    /// The configured `api_url`.
    pub api_url: Option<String>,
}

impl BackendSpec {
    /// Every backend of a routing configuration.
    pub fn from_routing(routing: &RoutingConfig) -> Vec<BackendSpec> {
        routing
            .backends
            .iter()
            .map(|(name, b)| BackendSpec {
                name: name.clone(),
                backend_type: b.backend_type,
                api_url: b.api_url.clone(),
            })
            .collect()
    }
}

/// One backend: its endpoint (none for `mock`) and its breaker.
#[derive(Debug)]
struct BackendHealth {
    backend_type: BackendType,
    endpoint: Option<Arc<EndpointHealthState>>,
    breaker: CircuitBreaker,
}

/// Backend health: probes, endpoint states and circuit breakers.
pub struct HealthMonitor {
    config: HealthCheckConfig,
    /// Sorted by URL.
    endpoints: Vec<Arc<EndpointHealthState>>,
    /// Sorted by name.
    backends: BTreeMap<String, BackendHealth>,
    hub: EventHub,
    stopped: watch::Receiver<bool>,
    ping_unavailable_logged: AtomicBool,
}

impl std::fmt::Debug for HealthMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthMonitor")
            .field("endpoints", &self.endpoints.len())
            .field("backends", &self.backends.len())
            .finish_non_exhaustive()
    }
}

/// Stops the probe tasks and ends the event streams. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HealthStopper {
    stop: Arc<watch::Sender<bool>>,
    cancel_pings: Arc<AtomicBool>,
}

impl HealthStopper {
    /// Signals every probe task and event stream to end; returns at once.
    pub fn stop(&self) {
        self.cancel_pings.store(true, Ordering::Release);
        self.stop.send_replace(true);
    }
}

/// The background probe tasks. Dropping this stops them too.
#[derive(Debug)]
pub struct HealthTasks {
    stopper: HealthStopper,
    handles: Vec<JoinHandle<()>>,
}

impl HealthTasks {
    /// A handle that stops the tasks (e.g. when the server starts draining).
    pub fn stopper(&self) -> HealthStopper {
        self.stopper.clone()
    }

    /// Number of probe tasks (one per endpoint and enabled probe kind).
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// True when nothing is probed.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Stops the tasks and waits for them (a ping in progress stops within
    /// a quarter second).
    pub async fn shutdown(mut self) {
        self.stopper.stop();
        for handle in self.handles.drain(..) {
            let _ = handle.await;
        }
    }
}

impl Drop for HealthTasks {
    fn drop(&mut self) {
        self.stopper.stop();
    }
}

impl HealthMonitor {
    /// Validates `config`, registers the endpoints of `backends` (backends
    /// whose URLs normalize alike share one) and, when probing is enabled,
    /// spawns one task per endpoint and probe kind. Must run inside a Tokio
    /// runtime.
    pub fn start(
        config: &HealthCheckConfig,
        backends: &[BackendSpec],
    ) -> Result<(Arc<HealthMonitor>, HealthTasks), HealthError> {
        config.validate()?;
        let probing = config.enabled;
        let prober = if probing && config.http.enabled {
            Some(Arc::new(HttpProber::new(&config.http)?))
        } else {
            None
        };
        let mut by_url: BTreeMap<EndpointUrl, Vec<String>> = BTreeMap::new();
        let mut url_of: HashMap<&str, EndpointUrl> = HashMap::new();
        for b in backends {
            let Some(raw) = b
                .api_url
                .as_deref()
                .filter(|_| b.backend_type != BackendType::Mock)
            else {
                continue;
            };
            let key = format!("backends.{}.api_url", b.name);
            let url = EndpointUrl::parse(raw)
                .map_err(|e| ConfigError::new(key.clone(), e.to_string()))?;
            if let Some(p) = &prober {
                p.probe_url(&url)
                    .map_err(|e| ConfigError::new(key, e.to_string()))?;
            }
            by_url.entry(url.clone()).or_default().push(b.name.clone());
            url_of.insert(&b.name, url);
        }
        let ping_on = probing && config.ping.enabled;
        let endpoints: BTreeMap<EndpointUrl, Arc<EndpointHealthState>> = by_url
            .into_iter()
            .map(|(url, mut names)| {
                names.sort();
                let state = Arc::new(EndpointHealthState::new(url.clone(), names, ping_on));
                (url, state)
            })
            .collect();
        let settings = BreakerSettings {
            enabled: config.circuit_breaker_enabled,
            failure_threshold: config.circuit_breaker.failure_threshold,
            cooldown: seconds(config.circuit_breaker.open_cooldown_seconds),
            max_inflight: config.circuit_breaker.half_open_max_inflight,
        };
        let backend_map = backends
            .iter()
            .map(|b| {
                let endpoint = url_of
                    .get(b.name.as_str())
                    .and_then(|u| endpoints.get(u))
                    .cloned();
                let health = BackendHealth {
                    backend_type: b.backend_type,
                    endpoint,
                    breaker: CircuitBreaker::new(settings),
                };
                (b.name.clone(), health)
            })
            .collect::<BTreeMap<_, _>>();
        let (stop, stopped) = watch::channel(false);
        let stopper = HealthStopper {
            stop: Arc::new(stop),
            cancel_pings: Arc::new(AtomicBool::new(false)),
        };
        let monitor = Arc::new(HealthMonitor {
            config: config.clone(),
            endpoints: endpoints.into_values().collect(),
            backends: backend_map,
            hub: EventHub::new(config.notify_backends),
            stopped: stopped.clone(),
            ping_unavailable_logged: AtomicBool::new(false),
        });
        for e in &monitor.endpoints {
            metrics::gauge!(telemetry::ENDPOINT_HEALTHY, "endpoint" => e.url.to_string()).set(1.0);
        }
        for name in monitor.backends.keys() {
            metrics::gauge!(telemetry::CIRCUIT_STATE, "backend" => name.clone()).set(0.0);
        }
        let mut handles = Vec::new();
        for endpoint in &monitor.endpoints {
            if ping_on {
                let (m, e, cancel) = (
                    monitor.clone(),
                    endpoint.clone(),
                    stopper.cancel_pings.clone(),
                );
                let interval = seconds(config.ping.interval_seconds);
                handles.push(tokio::spawn(every(interval, stopped.clone(), move || {
                    let (m, e, cancel) = (m.clone(), e.clone(), cancel.clone());
                    async move { m.ping_once(&e, cancel).await }
                })));
            }
            if let Some(prober) = &prober {
                let (m, e, p) = (monitor.clone(), endpoint.clone(), prober.clone());
                let interval = seconds(config.http.interval_seconds);
                handles.push(tokio::spawn(every(interval, stopped.clone(), move || {
                    let (m, e, p) = (m.clone(), e.clone(), p.clone());
                    async move {
                        let result = p.check(&e.url).await;
                        m.apply(&e, ProbeKind::Http, result);
                    }
                })));
            }
        }
        Ok((monitor, HealthTasks { stopper, handles }))
    }

    /// Registers a listener for endpoint transitions (called only when
    /// `notify_backends` is on).
    pub fn add_listener(&self, listener: Arc<dyn HealthListener>) {
        self.hub.add_listener(listener);
    }

    /// A receiver of every transition from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<HealthEvent>> {
        self.hub.subscribe()
    }

    /// Resolves when the monitor is stopped.
    pub(crate) fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    }

    /// The `/internal/health` answer.
    pub fn report(&self) -> HealthReport {
        let now = Instant::now();
        let endpoints: Vec<EndpointReport> = self
            .endpoints
            .iter()
            .map(|e| {
                let s = e.status();
                let circuit = e
                    .backends
                    .iter()
                    .filter_map(|name| self.backends.get(name))
                    .map(|b| b.breaker.state(now))
                    .max()
                    .unwrap_or(CircuitState::Closed);
                EndpointReport {
                    api_url: e.url.to_string(),
                    is_healthy: e.is_healthy(),
                    ping_check_success: s.ping.success,
                    http_check_success: s.http.success,
                    ping_available: s.ping_available,
                    last_ping_check_timestamp: s.ping.last_check.map(rfc3339),
                    last_http_check_timestamp: s.http.last_check.map(rfc3339),
                    consecutive_ping_failures: s.ping.consecutive_failures,
                    consecutive_http_failures: s.http.consecutive_failures,
                    last_ping_latency_ms: s.ping.latency_ms,
                    last_http_latency_ms: s.http.latency_ms,
                    last_http_status_code: s.last_http_status,
                    last_ping_error: s.ping.error,
                    last_http_error: s.http.error,
                    circuit_state: circuit.as_str(),
                    backends_using_url: e.backends.clone(),
                }
            })
            .collect();
        let healthy = endpoints.iter().filter(|e| e.is_healthy).count();
        let backends = self
            .backends
            .iter()
            .map(|(name, b)| BackendReport {
                name: name.clone(),
                api_url: b.endpoint.as_ref().map(|e| e.url.to_string()),
                backend_type: b.backend_type.as_str(),
                is_endpoint_healthy: b.endpoint.as_ref().is_none_or(|e| e.is_healthy()),
            })
            .collect();
        HealthReport {
            endpoint_health: EndpointHealthReport {
                enabled: self.config.enabled,
                summary: HealthSummary {
                    total_endpoints: endpoints.len(),
                    healthy_endpoints: healthy,
                    unhealthy_endpoints: endpoints.len() - healthy,
                },
                endpoints,
                backends,
            },
        }
    }

    async fn ping_once(&self, endpoint: &EndpointHealthState, cancel: Arc<AtomicBool>) {
        let host = endpoint.url.host().to_owned();
        let timeout = seconds(self.config.ping.timeout_seconds);
        let outcome = icmp::ping(&host, self.config.ping.count, timeout, cancel).await;
        if let icmp::PingOutcome::Unavailable(why) = &outcome
            && !self.ping_unavailable_logged.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(reason = %why, "ICMP ping is unavailable; ping results are ignored and HTTP probes alone decide endpoint health");
        }
        self.apply(
            endpoint,
            ProbeKind::Ping,
            outcome.into_check(&host, timeout),
        );
    }

    /// Records one check: metrics, state, and on a transition the log line,
    /// event and listeners.
    fn apply(&self, endpoint: &EndpointHealthState, kind: ProbeKind, result: CheckResult) {
        let label = endpoint.url.to_string();
        let outcome = match result.passed {
            Some(true) => "success",
            Some(false) => "failure",
            None => "unavailable",
        };
        metrics::counter!(telemetry::PROBES_TOTAL, "endpoint" => label.clone(), "probe" => kind.as_str(), "result" => outcome).increment(1);
        if let (Some(true), Some(latency)) = (result.passed, result.latency) {
            metrics::histogram!(telemetry::PROBE_LATENCY_SECONDS, "endpoint" => label.clone(), "probe" => kind.as_str())
                .record(latency.as_secs_f64());
        }
        if result.passed == Some(false) {
            tracing::debug!(endpoint = %label, probe = kind.as_str(), error = result.error.as_deref().unwrap_or(""), "health check failed");
        }
        let thresholds = match kind {
            ProbeKind::Ping => Thresholds {
                failure: self.config.ping.failure_threshold,
                recovery: self.config.ping.recovery_threshold,
            },
            ProbeKind::Http => Thresholds {
                failure: self.config.http.failure_threshold,
                recovery: self.config.http.recovery_threshold,
            },
        };
        let Some(transition) = endpoint.record(kind, result, thresholds, SystemTime::now()) else {
            return;
        };
        let to = if transition.healthy {
            "healthy"
        } else {
            "unhealthy"
        };
        metrics::gauge!(telemetry::ENDPOINT_HEALTHY, "endpoint" => label.clone())
            .set(if transition.healthy { 1.0 } else { 0.0 });
        metrics::counter!(telemetry::ENDPOINT_TRANSITIONS_TOTAL, "endpoint" => label.clone(), "to" => to)
            .increment(1);
        let backends = endpoint.backends.join(",");
        if transition.healthy {
            tracing::warn!(endpoint = %label, backends = %backends, "endpoint is healthy again; routing uses it");
        } else {
            tracing::warn!(endpoint = %label, backends = %backends, reason = %transition.reason, "endpoint is unhealthy; routing skips it");
        }
        let (kind, reason) = if transition.healthy {
            (
                HealthEventKind::EndpointHealthy,
                "probes pass again".to_owned(),
            )
        } else {
            (
                HealthEventKind::EndpointUnhealthy,
                transition.reason.clone(),
            )
        };
        self.hub.publish(HealthEvent::new(
            kind,
            Some(label.clone()),
            endpoint.backends.clone(),
            reason,
        ));
        self.hub
            .notify_endpoint(&label, transition.healthy, &transition.reason);
    }

    fn circuit_transition(&self, name: &str, backend: &BackendHealth, t: CircuitTransition) {
        metrics::gauge!(telemetry::CIRCUIT_STATE, "backend" => name.to_owned()).set(t.to.gauge());
        metrics::counter!(telemetry::CIRCUIT_TRANSITIONS_TOTAL, "backend" => name.to_owned(), "to" => t.to.as_str())
            .increment(1);
        let event = match t.to {
            CircuitState::Open => {
                tracing::warn!(backend = %name, reason = %t.reason, "circuit open; routing skips this backend until the cooldown has passed");
                HealthEventKind::CircuitOpen
            }
            CircuitState::HalfOpen => {
                tracing::info!(backend = %name, "circuit half-open; sending a probe request");
                HealthEventKind::CircuitHalfOpen
            }
            CircuitState::Closed => {
                tracing::warn!(backend = %name, reason = %t.reason, "circuit closed; routing uses this backend again");
                HealthEventKind::CircuitClosed
            }
        };
        let url = backend.endpoint.as_ref().map(|e| e.url.to_string());
        self.hub.publish(HealthEvent::new(
            event,
            url,
            vec![name.to_owned()],
            t.reason,
        ));
    }
}

impl EndpointHealth for HealthMonitor {
    fn is_available(&self, backend: &str) -> bool {
        let Some(b) = self.backends.get(backend) else {
            return true;
        };
        b.endpoint.as_ref().is_none_or(|e| e.is_healthy()) && b.breaker.is_available(Instant::now())
    }

    fn try_admit(&self, backend: &str) -> bool {
        let Some(b) = self.backends.get(backend) else {
            return true;
        };
        let (admitted, transition) = b.breaker.try_admit(Instant::now());
        if let Some(t) = transition {
            self.circuit_transition(backend, b, t);
        }
        admitted
    }

    fn record_outcome(&self, backend: &str, outcome: AttemptOutcome) {
        let Some(b) = self.backends.get(backend) else {
            return;
        };
        if let Some(t) = b.breaker.record(outcome, Instant::now()) {
            self.circuit_transition(backend, b, t);
        }
    }
}

/// Runs `check` now and then every `interval` (a slow check delays the next
/// rather than piling up) until `stopped` turns true or its sender is gone.
async fn every<F, Fut>(interval: Duration, mut stopped: watch::Receiver<bool>, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        if *stopped.borrow() {
            return;
        }
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        tokio::select! {
            _ = check() => {}
            _ = stopped.changed() => return,
        }
    }
}
