//! Wire capture end to end: the real proxy with capture on, the testkit mock
//! upstream, the capture files decoded by Python's `cbor2` (an independent
//! decoder), issue detection on injected faults, the offline round trip
//! through `replay --serve-backend`, rotation and the size budget.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::python::{python, workspace_root};
use common::*;
use llm_proxy::AppConfig;
use llm_proxy_core::{BackendType, Secret};
use llm_proxy_testkit::{MockUpstream, MockUpstreamConfig};
use llm_proxy_wire_capture::files::capture_files;
use llm_proxy_wire_capture::reader::read_file;

const PROXY_KEY: &str = "proxy-secret-key-0123456789";
const BACKEND_KEY: &str = "sk-backend-secret-abcdef987654";

fn capture_config(dir: &Path, upstream: &str) -> AppConfig {
    let mut c = base_config();
    add_backend(&mut c, "openai", BackendType::OpenAi, upstream);
    add_backend(&mut c, "anthropic", BackendType::Anthropic, upstream);
    c.wire_capture.enabled = true;
    c.wire_capture.output_dir = dir.display().to_string();
    c
}

fn run_python(args: &[&str]) -> (bool, String) {
    let out = Command::new(python())
        .arg(workspace_root().join("tests/py/capture_check.py"))
        .args(args)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("ANTHROPIC_BASE_URL")
        .output()
        .expect("python runs");
    let text = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_session_capture_decodes_with_cbor2_and_holds_no_credential() {
    let dir = tempfile::tempdir().unwrap();
    let up = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let mut c = capture_config(dir.path(), &up.base_url());
    c.auth.api_keys = vec![Secret::new(PROXY_KEY)];
    for b in c.backends.values_mut() {
        b.api_key = Some(Secret::new(BACKEND_KEY));
    }
    let proxy = Proxy::start(c).await;
    let base = proxy.url("");
    let (ok, report) =
        tokio::task::spawn_blocking(move || run_python(&["session", &base, PROXY_KEY]))
            .await
            .unwrap();
    assert!(ok, "SDK session failed\n{report}");
    // The backend key really went upstream (so its absence from the capture means something).
    let seen = up.requests();
    assert_eq!(seen.len(), 4);
    assert!(
        seen.iter().all(|r| {
            r.header("authorization") == Some(&format!("Bearer {BACKEND_KEY}"))
                || r.header("x-api-key") == Some(BACKEND_KEY)
        }),
        "backend key sent upstream"
    );
    proxy.stop().await;
    up.shutdown().await;

    let d = dir.path().display().to_string();
    let (ok, report) = tokio::task::spawn_blocking(move || {
        run_python(&["verify", &d, "4", PROXY_KEY, BACKEND_KEY])
    })
    .await
    .unwrap();
    assert!(ok, "cbor2 verification failed\n{report}");
    assert!(report.contains("\"streams\": 2"), "{report}");
}
