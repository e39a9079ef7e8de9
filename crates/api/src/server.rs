//! The HTTP server: accept loop (HTTP/1.1 and h2c), per-connection service,
//! graceful drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use llm_proxy_core::Pipeline;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::routes::{AppState, MetricsRender, RouteHandler, dispatch};

/// What the server serves besides the pipeline.
#[derive(Default)]
pub struct Services {
    /// Renders `/metrics`; without it `/metrics` is empty.
    pub metrics: Option<MetricsRender>,
    /// Management routes: method, exact path, handler.
    pub management: Vec<(Method, String, Arc<dyn RouteHandler>)>,
}

impl Services {
    /// Adds a management route.
    pub fn route(mut self, method: Method, path: &str, handler: Arc<dyn RouteHandler>) -> Services {
        self.management.push((method, path.to_owned(), handler));
        self
    }
}

/// A bound, not yet serving, API server.
pub struct ApiServer {
    listener: TcpListener,
    state: Arc<AppState>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("local_addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Validates `config` and binds its address.
    pub async fn bind(
        config: ServerConfig,
        pipeline: Arc<Pipeline>,
        services: Services,
    ) -> Result<ApiServer, ApiError> {
        config.validate()?;
        let addr = SocketAddr::new(config.ip()?, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ApiError::Bind { addr, source })?;
        let auth = Authenticator::new(&config.auth);
        if !auth.enforced() {
            tracing::info!("authentication is off (no API keys configured; loopback only)");
        }
        Ok(ApiServer {
            listener,
            state: Arc::new(AppState {
                pipeline,
                auth,
                config,
                metrics: services.metrics,
                management: services.management,
            }),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, ApiError> {
        self.listener.local_addr().map_err(ApiError::Io)
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets open
    /// requests and streams finish for up to `shutdown_grace_seconds`.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ApiError> {
        let ApiServer { listener, state } = self;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(ServerConfig::secs(state.config.header_read_timeout_seconds))
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)));
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, remote) = match accepted {
                        Ok(v) => v,
                        Err(e) => {
                            // Out of file descriptors and the like: back off, don't spin.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let state = state.clone();
                    let service = service_fn(move |req| dispatch(state.clone(), req, remote));
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let conn = graceful.watch(conn.into_owned());
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, client = %remote, "connection ended with error");
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        let grace = ServerConfig::secs(state.config.shutdown_grace_seconds);
        tracing::info!(
            grace_seconds = grace.as_secs_f64(),
            "no longer accepting; draining open connections"
        );
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections drained"),
            () = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing remaining connections"),
        }
        Ok(())
    }
}
