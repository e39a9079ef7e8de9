//! `mock-llm`: the testkit mock LLM upstream as a standalone server, for demos
//! and benchmarks. Prints `mock-llm listening on http://HOST:PORT` when ready
//! and runs until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use llm_proxy_testkit::{MockOptions, MockUpstream, MockUpstreamConfig};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Deterministic mock LLM server (OpenAI chat, Responses, Anthropic)"
)]
struct Args {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to bind (0 picks a free one).
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// Default delay before the first byte of every response, in milliseconds.
    #[arg(long, default_value_t = 0)]
    first_token_delay_ms: u64,
    /// Default delay between SSE events, in milliseconds.
    #[arg(long, default_value_t = 0)]
    inter_chunk_delay_ms: u64,
    /// Default number of content chunks per stream.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    chunks: Option<u32>,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let addr = resolve(&args.host, args.port).await?;
    let config = MockUpstreamConfig {
        defaults: MockOptions {
            fault: None,
            first_token_delay: Duration::from_millis(args.first_token_delay_ms),
            inter_chunk_delay: Duration::from_millis(args.inter_chunk_delay_ms),
            chunk_count: args.chunks.and_then(|n| usize::try_from(n).ok()),
        },
        // Nothing can read the history of a standalone server, and under load
        // it would grow memory by every request: keep none.
        no_history: true,
    };
    let server = MockUpstream::start_on(addr, config).await?;
    announce(&args.host, server.addr().port());
    shutdown_signal().await?;
    server.shutdown().await;
    Ok(())
}

async fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("cannot resolve host {host:?}")))
}

#[expect(
    clippy::print_stdout,
    reason = "the ready line is the binary's interface"
)]
fn announce(host: &str, port: u16) {
    println!("mock-llm listening on http://{host}:{port}");
}

async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = terminate.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
