//! Starting the real `llm-proxy` binary from tests: a clean environment, the
//! ready line parsed for the address, stderr collected line by line.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "shared by several test binaries; each uses part of it"
)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_llm-proxy");
/// The line `serve` prints when it accepts connections.
pub const READY: &str = "llm-proxy listening on http://";

/// A running binary; killed when dropped.
pub struct Running {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary with `args`, no inherited keys or `LLM_PROXY__*` settings,
/// usage in memory.
pub fn command(args: &[&str]) -> Command {
    command_with_store(args, ":memory:")
}

/// [`command`] with the usage store at `usage_store`.
pub fn command_with_store(args: &[&str], usage_store: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("API_KEYS")
        .env("RUST_LOG", "info")
        .env("USAGE_TRACKING_PERSISTENCE_PATH", usage_store)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("LLM_PROXY__") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Starts the proxy and waits for its ready line.
pub fn start(cmd: Command) -> Running {
    start_until(cmd, READY)
}

/// Starts `cmd` and waits for a stdout line starting with `ready_prefix`
/// followed by an address (the proxy's, or `replay --serve-backend`'s).
pub fn start_until(mut cmd: Command, ready_prefix: &str) -> Running {
    let mut child = cmd.spawn().expect("binary starts");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_tx.send(line);
        }
    });
    let (tx, rx) = mpsc::channel();
    let prefix = ready_prefix.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(&prefix) {
                let addr = rest.split_whitespace().next().unwrap_or("");
                let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            let logs: Vec<String> = err_rx.try_iter().collect();
            panic!("no ready line; stderr:\n{}", logs.join("\n"));
        }
    };
    Running {
        child,
        addr,
        stderr: err_rx,
    }
}

/// The sum of the Prometheus samples of `name` whose labels include every
/// pair of `labels` (`None`: no such sample).
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let matches = n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().unwrap())
        })
        .reduce(|a, b| a + b)
}
