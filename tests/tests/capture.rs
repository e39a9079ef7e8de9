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
use llm_proxy_wire_capture::inspect::{self, Issue, kind};
use llm_proxy_wire_capture::reader::read_file;
use llm_proxy_wire_capture::replay::{self, ReplayOptions};

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

fn load(dir: &Path) -> Vec<llm_proxy_wire_capture::Entry> {
    let loaded = inspect::load(&[dir.to_path_buf()]).unwrap();
    assert!(loaded.damage.is_empty(), "{:?}", loaded.damage);
    loaded.entries
}

fn issues_of(issues: &[Issue], kind: &str) -> Vec<String> {
    issues
        .iter()
        .filter(|i| i.kind == kind)
        .map(|i| format!("{} {}", i.rid, i.detail))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_issues_finds_injected_faults_and_nothing_on_a_clean_capture() {
    let up = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    // A clean session first.
    let clean = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(capture_config(clean.path(), &up.base_url())).await;
    let url = proxy.url("/v1/chat/completions");
    assert_eq!(
        post(&url, &chat("openai:echo", "hi", false), &[])
            .await
            .status,
        200
    );
    let s = post_stream(
        &url,
        &chat("openai:echo", "hi", true),
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert!(!s.broken);
    let m = post(
        &proxy.url("/v1/messages"),
        &messages("anthropic:echo", "hi", false),
        &[],
    )
    .await;
    assert_eq!(m.status, 200);
    proxy.stop().await;
    let entries = load(clean.path());
    let issues = inspect::detect_issues(&entries, Duration::from_millis(300));
    assert!(issues.is_empty(), "{issues:#?}");

    // Then one fault of each kind.
    let faulty = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(capture_config(faulty.path(), &up.base_url())).await;
    let url = proxy.url("/v1/chat/completions");
    let limited = post(&url, &chat("openai:echo+fault-429", "hi", false), &[]).await;
    assert_eq!(limited.status, 429);
    let rid_429 = limited.headers["x-request-id"].to_str().unwrap().to_owned();
    let reset = post_stream(
        &url,
        &chat("openai:echo+fault-reset", "hi", true),
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert!(
        reset.text().contains("upstream stream failed"),
        "{}",
        reset.text()
    );
    let slow = post(
        &url,
        &chat("openai:echo", "slow", false),
        &[("x-mock-first-token-delay-ms", "700")],
    )
    .await;
    assert_eq!(slow.status, 200);
    let rid_slow = slow.headers["x-request-id"].to_str().unwrap().to_owned();
    proxy.stop().await;
    let entries = load(faulty.path());
    let issues = inspect::detect_issues(&entries, Duration::from_millis(300));
    let rate = issues_of(&issues, kind::RATE_LIMIT);
    assert!(
        rate.iter()
            .any(|i| i.starts_with(&rid_429) && i.contains("429")),
        "{issues:#?}"
    );
    let errors = issues_of(&issues, kind::BACKEND_ERROR);
    assert!(
        errors.iter().any(|i| i.contains("SSE error event")),
        "{issues:#?}"
    );
    let missing = issues_of(&issues, kind::MISSING_RESPONSE);
    assert!(
        missing.iter().any(|i| i.contains("without end marker")),
        "{issues:#?}"
    );
    let slow = issues_of(&issues, kind::SLOW_RESPONSE);
    assert_eq!(slow.len(), 1, "{issues:#?}");
    assert!(slow[0].starts_with(&rid_slow), "{issues:#?}");
    // The default threshold (10 s) does not call a 0.7 s stall slow.
    let default = inspect::detect_issues(&entries, Duration::from_secs(10));
    assert!(issues_of(&default, kind::SLOW_RESPONSE).is_empty());
    up.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_session_replays_offline_with_identical_responses_and_timing() {
    let dir = tempfile::tempdir().unwrap();
    let up = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let proxy = Proxy::start(capture_config(dir.path(), &up.base_url())).await;
    let paced = [
        ("x-mock-inter-chunk-delay-ms", "60"),
        ("x-mock-chunks", "5"),
    ];
    let chat_url = proxy.url("/v1/chat/completions");
    assert_eq!(
        post(&chat_url, &chat("openai:echo", "one", false), &[])
            .await
            .status,
        200
    );
    let s = post_stream(
        &chat_url,
        &chat("openai:echo", "two", true),
        &paced,
        Duration::from_secs(10),
    )
    .await;
    assert!(!s.broken && s.frames.len() >= 5);
    let s = post_stream(
        &proxy.url("/v1/messages"),
        &messages("anthropic:echo", "three", true),
        &paced,
        Duration::from_secs(10),
    )
    .await;
    assert!(!s.broken);
    proxy.stop().await;
    up.shutdown().await;

    // Offline: the capture is the backend.
    let entries = load(dir.path());
    let backend = replay::serve_backend(&entries, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(backend.exchanges, 3);
    let fake = format!("http://{}/v1", backend.addr);
    let mut c = base_config();
    add_backend(&mut c, "openai", BackendType::OpenAi, &fake);
    add_backend(&mut c, "anthropic", BackendType::Anthropic, &fake);
    let proxy = Proxy::start(c).await;
    let report = replay::replay_client(
        &entries,
        &ReplayOptions {
            proxy_url: proxy.url(""),
            speed: 1.0,
            headers: Vec::new(),
        },
    )
    .await
    .unwrap();
    let text = report.text();
    assert_eq!(report.results.len(), 3, "{text}");
    assert_eq!(report.mismatches(), 0, "{text}");
    let streams: Vec<_> = report.results.iter().filter(|r| r.chunks.0 > 1).collect();
    assert_eq!(streams.len(), 2, "{text}");
    for r in streams {
        let skew = r
            .max_chunk_skew_ms
            .unwrap_or_else(|| panic!("chunking differs\n{text}"));
        assert!(skew <= 20.0, "chunk timing off by {skew} ms\n{text}");
    }
    proxy.stop().await;
    backend.stop();

    // A changed backend is a mismatch.
    let up = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let mut c = base_config();
    add_backend(&mut c, "openai", BackendType::OpenAi, &up.base_url());
    add_backend(&mut c, "anthropic", BackendType::Anthropic, &up.base_url());
    let proxy = Proxy::start(c).await;
    let mut altered = entries.clone();
    for e in altered
        .iter_mut()
        .filter(|e| e.dir == llm_proxy_wire_capture::Direction::ProxyToClient)
    {
        if let Some(i) = e.data.iter().position(|b| *b == b'{') {
            e.data.insert(i, b' ');
        }
    }
    let report = replay::replay_client(
        &altered,
        &ReplayOptions {
            proxy_url: proxy.url(""),
            speed: 0.0,
            headers: Vec::new(),
        },
    )
    .await
    .unwrap();
    assert!(report.mismatches() > 0, "{}", report.text());
    proxy.stop().await;
    up.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_rotate_and_the_total_stays_under_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let up = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let mut c = capture_config(dir.path(), &up.base_url());
    c.wire_capture.max_file_bytes = 4096;
    c.wire_capture.max_total_bytes = 16 * 1024;
    let proxy = Proxy::start(c).await;
    let url = proxy.url("/v1/chat/completions");
    for i in 0..40 {
        let r = post(
            &url,
            &chat(
                "openai:echo",
                &format!("request {i} {}", "x".repeat(300)),
                i % 2 == 0,
            ),
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
        let total: u64 = capture_files(dir.path())
            .unwrap_or_default()
            .iter()
            .map(|(_, s)| s)
            .sum();
        assert!(total <= 16 * 1024, "total {total} after {i}");
    }
    proxy.stop().await;
    up.shutdown().await;
    let files = capture_files(dir.path()).unwrap();
    let total: u64 = files.iter().map(|(_, s)| s).sum();
    assert!(files.len() >= 3, "{files:?}");
    assert!(total <= 16 * 1024, "total {total}");
    for (f, size) in &files {
        assert!(*size <= 4096, "{} is {size} bytes", f.display());
        let c = read_file(f).unwrap();
        assert!(c.damage.is_none(), "{}: {:?}", f.display(), c.damage);
        assert!(!c.entries.is_empty());
    }
    // The oldest were deleted: the newest request is there, the first is not.
    let entries = load(dir.path());
    let text: String = entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.data).into_owned())
        .collect();
    assert!(text.contains("request 39"));
    assert!(!text.contains("request 0 "));
}
