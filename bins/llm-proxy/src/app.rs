//! Wiring: config → subsystems → pipeline → server. `main.rs` only adds the
//! process concerns (logging, metrics recorder, signals, exit code).

use std::net::SocketAddr;
use std::sync::Arc;

use llm_proxy_api::{ApiServer, MetricsRender, Services};
use llm_proxy_core::Pipeline;

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
}

/// A built proxy, bound to its address, not yet serving.
#[derive(Debug)]
pub struct App {
    server: ApiServer,
    addr: SocketAddr,
}

impl App {
    /// Validates `config`, builds every subsystem and binds the listener.
    pub async fn build(config: AppConfig, metrics: Option<MetricsRender>) -> Result<App, AppError> {
        config.validate()?;
        let routing = config.routing()?;
        let server_config = config.server()?;
        report_pending_subsystems(&config);
        let pipeline = Arc::new(Pipeline::new(routing)?);
        let services = Services {
            metrics,
            ..Services::default()
        };
        let server = ApiServer::bind(server_config, pipeline, services).await?;
        let addr = server.local_addr()?;
        Ok(App { server, addr })
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, drains, then runs subsystem shutdown hooks.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), AppError> {
        self.server.serve(shutdown).await?;
        Ok(())
    }
}

/// Subsystems whose configuration loads but which this build does not run yet:
/// say so once at start-up rather than pretend.
fn report_pending_subsystems(config: &AppConfig) {
    let pending = [
        ("health_check", config.health_check.enabled),
        ("usage_tracking", config.usage_tracking.enabled),
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
