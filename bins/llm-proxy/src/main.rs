//! `llm-proxy`: load config, build, serve, drain on SIGINT/SIGTERM, exit.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use llm_proxy::cli::{Cli, Command};
use llm_proxy::{App, settings};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: the proxy allocates per request
/// on the tokio workers and frees on the usage threads (and the reverse),
/// where glibc's arenas spent ~10 % of the proxy's CPU in malloc/free.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Inspect(args)) => return llm_proxy::tools::inspect(args),
        Some(Command::Replay(args)) => return llm_proxy::tools::replay(args),
        _ => {}
    }
    let args = cli.serve_args();
    let filter = args
        .log_level
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal: journald, container
        // logs and files get plain text.
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let config = match settings::load(&args) {
            Ok(c) => c,
            Err(e) => return fail(&e),
        };
        let metrics = match metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS_SECONDS)
            .and_then(|b| b.install_recorder())
        {
            Ok(handle) => Some(Arc::new(move || handle.render()) as llm_proxy_api::MetricsRender),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
                None
            }
        };
        let app = match App::build(config, metrics).await {
            Ok(app) => app,
            Err(e) => return fail(&e),
        };
        announce(app.local_addr());
        match app.run(shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        }
    })
}

/// Histogram buckets for every latency metric: 1 ms to 5 min. Histograms
/// (not summaries) so several instances can be aggregated.
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    tracing::error!("{error}");
    #[expect(
        clippy::print_stderr,
        reason = "the reason for exiting must reach the user even with logging filtered"
    )]
    {
        eprintln!("llm-proxy: {error}");
    }
    ExitCode::from(2)
}

/// The ready line scripts and tests wait for.
fn announce(addr: std::net::SocketAddr) {
    tracing::info!(%addr, "listening");
    #[expect(
        clippy::print_stdout,
        reason = "the ready line is part of the CLI contract"
    )]
    {
        println!("llm-proxy listening on http://{addr}");
    }
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits at once,
/// without waiting for the drain.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::warn!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; draining (send it again to exit now)"),
        _ = int.recv() => tracing::info!("SIGINT received; draining (press Ctrl-C again to exit now)"),
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting without waiting for open requests");
        std::process::exit(130);
    });
}
