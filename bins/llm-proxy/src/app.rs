//! Wiring: config → subsystems → pipeline → server. `main.rs` only adds the
//! process concerns (logging, metrics recorder, signals, exit code).

use std::net::SocketAddr;
use std::sync::Arc;

use http::Method;
use llm_proxy_api::{ApiServer, MetricsRender, Services};
use llm_proxy_core::{ExchangeObserver, ObserverSet, Pipeline};
use llm_proxy_health::{BackendSpec, HealthMonitor, HealthRoutes, HealthTasks};
use llm_proxy_usage::routes::UsageRoutes;
use llm_proxy_usage::tracker::UsageTracker;

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
}

/// A built proxy, bound to its address, not yet serving.
#[derive(Debug)]
pub struct App {
    server: ApiServer,
    addr: SocketAddr,
    usage: Option<UsageTracker>,
    health: HealthTasks,
}

impl App {
    /// Validates `config`, builds every subsystem and binds the listener.
    pub async fn build(config: AppConfig, metrics: Option<MetricsRender>) -> Result<App, AppError> {
        config.validate()?;
        let routing = config.routing()?;
        let server_config = config.server()?;
        report_pending_subsystems(&config);
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
            tracing::info!(store = %config.usage_tracking.persistence_path, "usage tracking on");
            observers.push(tracker.collector());
            Some(tracker)
        } else {
            None
        };
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
        let pipeline = Arc::new(
            Pipeline::new(routing)?
                .with_observers(ObserverSet::new(observers))
                .with_health(health),
        );
        let server = ApiServer::bind(server_config, pipeline, services).await?;
        let addr = server.local_addr()?;
        Ok(App {
            server,
            addr,
            usage,
            health: health_tasks,
        })
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, drains, then runs subsystem
    /// shutdown hooks: usage records still queued are built and written.
    /// Health probes stop and health event streams end as the drain begins.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), AppError> {
        let App {
            server,
            usage,
            health,
            ..
        } = self;
        let stop_health = health.stopper();
        let served = server
            .serve(async move {
                shutdown.await;
                stop_health.stop();
            })
            .await;
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

/// Subsystems whose configuration loads but which this build does not run yet:
/// say so once at start-up rather than pretend.
fn report_pending_subsystems(config: &AppConfig) {
    let pending = [
        ("wire_capture", config.wire_capture.enabled),
        ("replacement", config.replacement.enabled),
    ];
    for (section, enabled) in pending {
        if enabled {
            tracing::info!(
                section,
                "configuration accepted; this subsystem is not part of this build yet"
            );
        }
    }
}
