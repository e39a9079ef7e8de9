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

use common::python::{SCRIPT_TIMEOUT, python, run_script, workspace_root};
use common::*;
use llm_proxy_core::BackendType;
use llm_proxy_testkit::{MockUpstream, MockUpstreamConfig};

/// Upstream requests the script makes, per upstream path.
const EXPECTED_REQUESTS: &[(&str, usize)] = &[
    ("/v1/chat/completions", 4),
    ("/v1/responses", 5),
    ("/v1/messages", 6),
];

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
