//! Command line: `llm-proxy [serve] [flags]`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// llm-proxy: a fast LLM proxy with first-class monitoring.
#[derive(Debug, Parser)]
#[command(
    name = "llm-proxy",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to run; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `serve`, accepted without the subcommand too.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Serve(ServeArgs),
    /// Read wire capture files: summary, issues, analysis, timeline.
    Inspect(InspectArgs),
    /// Replay a capture against a proxy, or serve it as the backend.
    Replay(ReplayArgs),
}

/// Flags of `inspect`.
#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// Capture files, or directories of them.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// List problems: slow_response, rate_limit, backend_error, missing_response
    /// (exit code 1 when any is found).
    #[arg(long)]
    pub detect_issues: bool,
    /// Per request: model, TTFT, duration, content length, tool calls, finish reason.
    #[arg(long)]
    pub analyze: bool,
    /// Every entry in time order.
    #[arg(long)]
    pub timeline: bool,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Status code counts per leg.
    #[arg(long)]
    pub status_summary: bool,
    /// Every entry of one request, with payloads.
    #[arg(long, value_name = "RID")]
    pub track_request: Option<String>,
    /// Gaps within a session longer than this are slow_response.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub slow_threshold: f64,
    /// Only this leg, repeatable: 0-3 or client_request, client_response,
    /// backend_request, backend_response.
    #[arg(long = "direction", value_name = "DIR")]
    pub directions: Vec<String>,
    /// Only requests sent to this backend.
    #[arg(long)]
    pub backend: Option<String>,
    /// Only this session.
    #[arg(long)]
    pub session: Option<String>,
    /// Only entries at or after this time (epoch seconds).
    #[arg(long, value_name = "EPOCH_SECONDS")]
    pub since: Option<f64>,
    /// Only entries at or before this time (epoch seconds).
    #[arg(long, value_name = "EPOCH_SECONDS")]
    pub until: Option<f64>,
}

/// Flags of `replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Capture files, or directories of them.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Re-send the captured client requests to this proxy and compare.
    #[arg(long, value_name = "URL", required_unless_present = "serve_backend")]
    pub proxy_url: Option<String>,
    /// Time scale of the replay (2 = twice as fast, 0 = no waiting).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Extra request header, repeatable (`NAME: VALUE`), e.g. a proxy key:
    /// captured credentials are redacted.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// JSON report instead of text.
    #[arg(long)]
    pub json: bool,
    /// Act as the backend: answer captured backend requests with captured responses.
    #[arg(long, conflicts_with = "proxy_url")]
    pub serve_backend: bool,
    /// Address of the fake backend.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port of the fake backend (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

/// Flags of `serve`. Each overrides the config file and the environment.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Config file, TOML or YAML by extension.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on (0 picks a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// Turn authentication off (refused on non-loopback addresses).
    #[arg(long)]
    pub disable_auth: bool,
    /// Capture every leg to CBOR files.
    #[arg(long)]
    pub wire_capture_enabled: bool,
    /// Directory for capture files.
    #[arg(long, value_name = "DIR")]
    pub wire_capture_output_dir: Option<String>,
    /// Turn random model replacement on.
    #[arg(long)]
    pub enable_replacement: bool,
    /// Chance (0–1) that an eligible turn is replaced.
    #[arg(long, value_name = "P")]
    pub replacement_probability: Option<f64>,
    /// Turns served by the replacement once triggered.
    #[arg(long, value_name = "N")]
    pub replacement_turn_count: Option<u32>,
    /// A replacement rule, repeatable: FROM=BACKEND:MODEL (FROM is `*`, a
    /// model substring, or an exact backend:model).
    #[arg(
        long = "random-model-replacement-from-to",
        value_name = "FROM=BACKEND:MODEL"
    )]
    pub replacement_rules: Vec<String>,
    /// Log filter (e.g. `info`, `debug`, `llm_proxy_core=trace`); RUST_LOG also works.
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

impl Cli {
    /// The serve flags, wherever they were given.
    pub fn serve_args(self) -> ServeArgs {
        match self.command {
            Some(Command::Serve(args)) => args,
            _ => self.serve,
        }
    }
}
