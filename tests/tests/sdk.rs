//! The official Python `openai` and `anthropic` SDKs, through the proxy to the
//! testkit mock upstream: chat, responses and messages, JSON and streaming,
//! tool calls included. The checks live in `tests/py/sdk_check.py`; the Python
//! interpreter (with the SDKs installed) comes from `LLM_PROXY_TEST_PYTHON` or
//! `<workspace>/.venv/bin/python`, both prepared by `scripts/test.sh`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use llm_proxy_core::BackendType;
use llm_proxy_testkit::{MockUpstream, MockUpstreamConfig};

/// How long the whole script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Upstream requests the script makes, per upstream path.
const EXPECTED_REQUESTS: &[(&str, usize)] = &[
    ("/v1/chat/completions", 4),
    ("/v1/responses", 5),
    ("/v1/messages", 6),
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate is inside the workspace")
        .to_path_buf()
}

/// The Python interpreter that has the SDKs; fails (never skips) without one.
fn python() -> PathBuf {
    let hint = "run `scripts/test.sh` (it creates .venv with tests/py/requirements.txt)";
    if let Some(p) = std::env::var_os("LLM_PROXY_TEST_PYTHON") {
        // A relative path is taken from the workspace root (cargo runs tests in `tests/`).
        let p = workspace_root().join(p);
        assert!(
            p.exists(),
            "LLM_PROXY_TEST_PYTHON={} does not exist; {hint}",
            p.display()
        );
        return p;
    }
    let p = workspace_root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "no Python for the SDK tests: LLM_PROXY_TEST_PYTHON is unset and {} does not exist; {hint}",
        p.display()
    );
    p
}

/// What the script did.
struct Outcome {
    /// `None` when it was killed after [`SCRIPT_TIMEOUT`].
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `python script arg` with a deadline (blocking; call from `spawn_blocking`).
fn run_script(python: &Path, script: &Path, arg: &str) -> Outcome {
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg(arg)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("PYTHONUNBUFFERED", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    // Keep the SDKs hermetic: no proxies, no credentials or URLs from the environment.
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "OPENAI_BASE_URL",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_AUTH_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdks_parse_every_response() {
    let python = python();
    let script = workspace_root().join("tests/py/sdk_check.py");
    assert!(script.exists(), "{} is missing", script.display());

    let up = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let mut c = base_config();
    add_backend(&mut c, "openai", BackendType::OpenAi, &up.base_url());
    add_backend(&mut c, "anthropic", BackendType::Anthropic, &up.base_url());
    let proxy = Proxy::start(c).await;
    let base = proxy.url("");

    let outcome = tokio::task::spawn_blocking(move || run_script(&python, &script, &base))
        .await
        .expect("script runner");
    let report = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        outcome.stdout, outcome.stderr
    );
    match outcome.status {
        None => panic!("sdk_check.py did not finish within {SCRIPT_TIMEOUT:?}\n{report}"),
        Some(status) => assert!(status.success(), "sdk_check.py failed ({status})\n{report}"),
    }
    assert!(
        outcome.stdout.contains("scenarios passed"),
        "sdk_check.py did not report success\n{report}"
    );

    // Every SDK call went through the proxy to the upstream, with the bare model name.
    let seen = up.requests();
    for (path, expected) in EXPECTED_REQUESTS {
        let n = seen.iter().filter(|r| r.path == *path).count();
        assert_eq!(n, *expected, "upstream requests to {path}\n{report}");
    }
    let total: usize = EXPECTED_REQUESTS.iter().map(|(_, n)| n).sum();
    assert_eq!(seen.len(), total, "upstream requests in all\n{report}");
    for r in &seen {
        assert_eq!(r.method, "POST", "{} {}", r.method, r.path);
        let body = r.json().expect("upstream request body is JSON");
        assert_eq!(body["model"], "echo", "model sent upstream to {}", r.path);
    }

    proxy.stop().await;
    up.shutdown().await;
}
