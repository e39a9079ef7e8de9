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
            None => self.serve,
        }
    }
}
