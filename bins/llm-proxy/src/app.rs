//! Wiring: config → subsystems → pipeline → server. `main.rs` only adds the
//! process concerns (logging, metrics recorder, signals, exit code).

use std::net::SocketAddr;
use std::sync::Arc;

use http::Method;
use llm_proxy_api::{ApiServer, MetricsRender, Services};
use llm_proxy_core::{Backend, ExchangeObserver, ObserverSet, Pipeline, RoutingConfig};
use llm_proxy_health::{
    BackendSpec, EndpointUrl, HealthListener, HealthMonitor, HealthRoutes, HealthTasks,
};
use llm_proxy_replacement::{ModelReplacer, ReplacementRoutes};
use llm_proxy_usage::routes::UsageRoutes;
use llm_proxy_usage::tracker::UsageTracker;
use llm_proxy_wire_capture::CaptureHandle;

use crate::settings::{AppConfig, SettingsError};

/// Why the proxy could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// Bad configuration.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The server failed.
    #[error(transparent)]
    Api(#[from] llm_proxy_api::ApiError),
    /// Routing could not be built.
    #[error("invalid configuration: {0}")]
    Core(#[from] llm_proxy_core::ConfigError),
    /// Usage tracking could not start (e.g. the store cannot be opened).
    #[error("usage tracking: {0}")]
    Usage(#[from] llm_proxy_usage::UsageError),
    /// Health monitoring could not start (e.g. an `api_url` does not parse).
    #[error("health check: {0}")]
    Health(#[from] llm_proxy_health::HealthError),
    /// The wire capture writer thread could not start.
    #[error("wire capture: {0}")]
    Capture(std::io::Error),
}

/// A built proxy, bound to its address, not yet serving.
#[derive(Debug)]
pub struct App {
    server: ApiServer,
    addr: SocketAddr,
    usage: Option<UsageTracker>,
    health: HealthTasks,
    capture: Option<CaptureHandle>,
}

impl App {
    /// Validates `config`, builds every subsystem and binds the listener.
    pub async fn build(config: AppConfig, metrics: Option<MetricsRender>) -> Result<App, AppError> {
        config.validate()?;
        let routing = config.routing()?;
        let server_config = config.server()?;
        let mut observers: Vec<Arc<dyn ExchangeObserver>> = Vec::new();
        let mut services = Services {
            metrics,
            ..Services::default()
        };
        let usage = if config.usage_tracking.enabled {
            let (tracker, notes) = llm_proxy_usage::build::start(&config.usage_tracking)?;
            for note in notes {
                tracing::error!("{note}");
            }
            tracing::info!(store = %tracker.store_description(), "usage tracking on");
            observers.push(tracker.collector());
            Some(tracker)
        } else {
            None
        };
        let capture = start_capture(&config)?;
        if let Some(c) = &capture {
            observers.push(c.observer());
        }
        let usage_routes = Arc::new(match &usage {
            Some(t) => UsageRoutes::new(t.queries()),
            None => UsageRoutes::disabled(),
        });
        for path in llm_proxy_usage::routes::ROUTES {
            services = services.route(Method::GET, path, usage_routes.clone());
        }
        let (health, health_tasks) =
            HealthMonitor::start(&config.health_check, &BackendSpec::from_routing(&routing))?;
        if config.health_check.enabled {
            tracing::info!(probe_tasks = health_tasks.len(), "health checks on");
        }
        let health_routes = Arc::new(HealthRoutes::new(health.clone()));
        for path in llm_proxy_health::routes::ROUTES {
            services = services.route(Method::GET, path, health_routes.clone());
        }
        let mut pipeline = Pipeline::new(routing.clone())?
            .with_observers(ObserverSet::new(observers))
            .with_health(health.clone());
        let replacement_routes = if config.replacement.enabled {
            let replacer = Arc::new(ModelReplacer::new(&config.replacement));
            tracing::info!(
                probability = config.replacement.probability,
                turn_count = config.replacement.turn_count,
                rules = config.replacement.replacement_rules.len(),
                "model replacement on"
            );
            pipeline = pipeline.with_rewriter(replacer.clone());
            ReplacementRoutes::new(replacer)
        } else {
            ReplacementRoutes::disabled()
        };
        let replacement_routes = Arc::new(replacement_routes);
        for path in llm_proxy_replacement::routes::ROUTES {
            services = services.route(Method::GET, path, replacement_routes.clone());
        }
        let pipeline = Arc::new(pipeline);
        if config.health_check.enabled && config.health_check.notify_backends {
            health.add_listener(Arc::new(BackendNotifier::new(&routing, &pipeline)));
        }
        let server = ApiServer::bind(server_config, pipeline, services).await?;
        let addr = server.local_addr()?;
        Ok(App {
            server,
            addr,
            usage,
            health: health_tasks,
            capture,
        })
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, drains, then runs subsystem
    /// shutdown hooks: the wire capture is flushed and fsynced, then usage
    /// records still queued are built and written.
    /// Health probes stop and health event streams end as the drain begins.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), AppError> {
        let App {
            server,
            usage,
            health,
            capture,
            ..
        } = self;
        let stop_health = health.stopper();
        let served = server
            .serve(async move {
                shutdown.await;
                stop_health.stop();
            })
            .await;
        // Capture first: its flush + fsync is quick, while usage shutdown
        // (a database) can take long enough for a supervisor's SIGKILL.
        if let Some(capture) = capture {
            match tokio::task::spawn_blocking(move || capture.shutdown()).await {
                Ok(stats) => tracing::info!(
                    entries = stats.written,
                    dropped = stats.dropped,
                    enabled = stats.enabled,
                    "wire capture flushed"
                ),
                Err(e) => tracing::error!(error = %e, "wire capture flush on shutdown panicked"),
            }
        }
        health.shutdown().await;
        if let Some(tracker) = usage {
            match tokio::task::spawn_blocking(move || tracker.shutdown()).await {
                Ok(Ok(count)) => tracing::info!(records = count, "usage records flushed"),
                Ok(Err(e)) => tracing::error!(error = %e, "usage flush on shutdown failed"),
                Err(e) => tracing::error!(error = %e, "usage flush on shutdown panicked"),
            }
        }
        served?;
        Ok(())
    }
}

/// Starts wire capture when enabled, redacting every configured key.
fn start_capture(config: &AppConfig) -> Result<Option<CaptureHandle>, AppError> {
    if !config.wire_capture.enabled {
        llm_proxy_wire_capture::telemetry::report_off();
        return Ok(None);
    }
    let secrets = config
        .backends
        .values()
        .filter_map(|b| b.api_key.as_ref())
        .chain(config.auth.api_keys.iter())
        .map(|k| k.expose().to_owned());
    let handle = llm_proxy_wire_capture::writer::start(&config.wire_capture, secrets)
        .map_err(AppError::Capture)?;
    tracing::info!(dir = %config.wire_capture.output_dir, "wire capture on");
    Ok(Some(handle))
}

/// Tells each backend when the health checks find its endpoint down or back.
struct BackendNotifier {
    /// Normalized endpoint URL → the backends that use it.
    backends: Vec<(String, Arc<dyn Backend>)>,
}

impl BackendNotifier {
    fn new(routing: &RoutingConfig, pipeline: &Pipeline) -> BackendNotifier {
        let backends = routing
            .backends
            .iter()
            .filter_map(|(name, b)| {
                let url = EndpointUrl::parse(b.api_url.as_deref()?).ok()?;
                Some((url.as_str().to_owned(), pipeline.backend(name)?.clone()))
            })
            .collect();
        BackendNotifier { backends }
    }
}

impl HealthListener for BackendNotifier {
    fn on_endpoint_unhealthy(&self, url: &str, reason: &str) {
        for (u, b) in &self.backends {
            if u == url {
                b.on_endpoint_unhealthy(url, reason);
            }
        }
    }

    fn on_endpoint_healthy(&self, url: &str) {
        for (u, b) in &self.backends {
            if u == url {
                b.on_endpoint_healthy(url);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use llm_proxy_core::backend::{BackendRequest, BackendResponse, BoxFuture};
    use llm_proxy_core::{BackendType, UpstreamError, UpstreamErrorKind};

    use super::*;

    /// A backend that only records health notifications.
    struct Recording {
        name: Arc<str>,
        seen: Mutex<Vec<String>>,
    }

    impl Backend for Recording {
        fn name(&self) -> &Arc<str> {
            &self.name
        }
        fn backend_type(&self) -> BackendType {
            BackendType::OpenAi
        }
        fn uri_for(&self, _: &BackendRequest) -> http::Uri {
            http::Uri::from_static("/")
        }
        fn send(&self, _: BackendRequest) -> BoxFuture<'_, Result<BackendResponse, UpstreamError>> {
            Box::pin(async {
                Err(UpstreamError::new(
                    "x",
                    UpstreamErrorKind::Connect,
                    "unused",
                ))
            })
        }
        fn authorize(&self, _: &mut http::HeaderMap) {}
        fn on_endpoint_unhealthy(&self, url: &str, reason: &str) {
            self.seen
                .lock()
                .unwrap()
                .push(format!("down {url} {reason}"));
        }
        fn on_endpoint_healthy(&self, url: &str) {
            self.seen.lock().unwrap().push(format!("up {url}"));
        }
    }

    #[test]
    fn backends_sharing_a_url_are_all_told_and_no_others() {
        let mk = |name: &str| {
            Arc::new(Recording {
                name: Arc::from(name),
                seen: Mutex::new(Vec::new()),
            })
        };
        let (a, b, c) = (mk("a"), mk("b"), mk("c"));
        let notifier = BackendNotifier {
            backends: vec![
                (
                    "http://127.0.0.1:9/v1".into(),
                    a.clone() as Arc<dyn Backend>,
                ),
                (
                    "http://127.0.0.1:9/v1".into(),
                    b.clone() as Arc<dyn Backend>,
                ),
                (
                    "http://127.0.0.1:10/v1".into(),
                    c.clone() as Arc<dyn Backend>,
                ),
            ],
        };
        notifier.on_endpoint_unhealthy("http://127.0.0.1:9/v1", "refused");
        notifier.on_endpoint_healthy("http://127.0.0.1:9/v1");
        let want = vec![
            "down http://127.0.0.1:9/v1 refused".to_owned(),
            "up http://127.0.0.1:9/v1".to_owned(),
        ];
        assert_eq!(*a.seen.lock().unwrap(), want);
        assert_eq!(*b.seen.lock().unwrap(), want);
        assert!(c.seen.lock().unwrap().is_empty());
    }
}
