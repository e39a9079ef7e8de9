//! The real binary, as a user runs it: zero-config start, refusal to expose
//! itself without keys, config precedence, and draining on SIGTERM.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{command, command_with_store, sample, start};

/// A running `llm-proxy` process.
/// Runs the binary expecting it to exit; returns (exit code, stderr).
fn run_to_exit(mut cmd: Command) -> (Option<i32>, String) {
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the binary did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP/1.1 POST over a fresh connection; returns the raw response text.
fn post_raw(addr: SocketAddr, path: &str, body: &str, headers: &[(&str, &str)]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    s
}

fn read_all(mut s: TcpStream) -> String {
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The JSON body of a response with `Content-Length` (the proxy sends one for JSON).
fn json_body(raw: &str) -> serde_json::Value {
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {raw}"))
}

#[test]
fn zero_config_start_serves_the_mock_backend() {
    let proxy = start(command(&["--port", "0"]));
    assert!(proxy.addr.ip().is_loopback());
    let raw = read_all(post_raw(
        proxy.addr,
        "/v1/chat/completions",
        r#"{"model":"mock:echo","messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    ));
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let v = json_body(&raw);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "hi");
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn non_loopback_without_keys_refuses_to_start_and_says_how_to_fix_it() {
    let (code, err) = run_to_exit(command(&["--host", "0.0.0.0", "--port", "0"]));
    assert_ne!(code, Some(0));
    assert!(
        err.contains("refusing to listen on non-loopback address"),
        "{err}"
    );
    assert!(err.contains("API_KEYS"), "{err}");

    let mut cmd = command(&["--host", "0.0.0.0", "--port", "0", "--disable-auth"]);
    cmd.env("API_KEYS", "k1");
    let (code, err) = run_to_exit(cmd);
    assert_ne!(code, Some(0));
    assert!(err.contains("auth.disable_auth"), "{err}");
}

#[test]
fn config_errors_name_the_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(&file, "port = 0\n[upstream]\nconnect_timeout = 3\n").unwrap();
    let (code, err) = run_to_exit(command(&["--config", file.to_str().unwrap()]));
    assert_ne!(code, Some(0));
    assert!(err.contains("upstream.connect_timeout"), "{err}");
    assert!(err.contains("proxy.toml"), "{err}");
}

#[test]
fn file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.yaml");
    std::fs::write(&file, "host: 127.0.0.2\nport: 0\n").unwrap();
    let path = file.to_str().unwrap();

    let p = start(command(&["--config", path]));
    assert_eq!(p.addr.ip().to_string(), "127.0.0.2");
    drop(p);

    let mut cmd = command(&["--config", path]);
    cmd.env("LLM_PROXY__HOST", "127.0.0.3");
    let p = start(cmd);
    assert_eq!(p.addr.ip().to_string(), "127.0.0.3");
    drop(p);

    let mut cmd = command(&["--config", path, "--host", "127.0.0.4"]);
    cmd.env("LLM_PROXY__HOST", "127.0.0.3");
    let p = start(cmd);
    assert_eq!(p.addr.ip().to_string(), "127.0.0.4");
}

#[test]
fn sigterm_lets_an_open_stream_finish_then_exits_zero() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream = runtime.block_on(async {
        llm_proxy_testkit::MockUpstream::start(Default::default())
            .await
            .unwrap()
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(
        &file,
        format!(
            "port = 0\nshutdown_grace_seconds = 20\n[backends.up]\ntype = \"openai\"\napi_url = \"{}\"\n",
            upstream.base_url()
        ),
    )
    .unwrap();
    let mut proxy = start(command(&["--config", file.to_str().unwrap()]));
    let addr = proxy.addr;
    let mut stream = post_raw(
        addr,
        "/v1/chat/completions",
        r#"{"model":"up:echo","stream":true,"messages":[{"role":"user","content":"one two three four five six"}]}"#,
        &[
            ("x-mock-inter-chunk-delay-ms", "150"),
            ("x-mock-chunks", "6"),
        ],
    );
    // Wait for the first bytes of the stream, then ask the proxy to stop.
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).unwrap();
    received.extend_from_slice(&buf[..n]);
    assert!(String::from_utf8_lossy(&received).starts_with("HTTP/1.1 200"));
    let status = Command::new("kill")
        .args(["-TERM", &proxy.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // New connections are refused once the listener is closed.
    let refused = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        TcpStream::connect(addr).is_err()
    });
    assert!(refused, "listener still accepting after SIGTERM");
    // The open stream still runs to its end.
    stream.read_to_end(&mut received).unwrap();
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("data: [DONE]"), "stream cut short: {text}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(s) = proxy.child.try_wait().unwrap() {
            break s.code();
        }
        assert!(
            Instant::now() < deadline,
            "proxy did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let logs: Vec<String> = proxy.stderr.try_iter().collect();
    assert_eq!(code, Some(0), "exit code; stderr:\n{}", logs.join("\n"));
    assert!(logs.iter().any(|l| l.contains("SIGTERM")), "{logs:?}");
}

/// `request_count` of `/v1/usage/stats` on a running proxy.
fn stored_requests(addr: SocketAddr) -> u64 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /v1/usage/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let raw = read_all(s);
    json_body(&raw)["request_count"].as_u64().unwrap()
}

fn mock_request(addr: SocketAddr, i: usize) -> bool {
    let body = format!(
        r#"{{"model":"mock:echo","messages":[{{"role":"user","content":"request {i}"}}]}}"#
    );
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut out = String::new();
    s.read_to_string(&mut out).is_ok()
        && out.starts_with("HTTP/1.1 200")
        && out.contains("chat.completion")
}

#[test]
fn sigterm_stores_every_served_request() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("usage.sqlite3");
    let store = store.to_str().unwrap();
    let proxy = start(command_with_store(&["--port", "0"], store));
    let served = (0..40).filter(|i| mock_request(proxy.addr, *i)).count() as u64;
    assert_eq!(served, 40);
    let mut proxy = proxy;
    Command::new("kill")
        .args(["-TERM", &proxy.child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(proxy);
    let again = start(command_with_store(&["--port", "0"], store));
    assert_eq!(
        stored_requests(again.addr),
        served,
        "every served request is stored after SIGTERM"
    );
}

#[test]
fn sigkill_loses_at_most_one_flush_interval_sqlite() {
    sigkill_loses_at_most_one_flush_interval("usage.sqlite3");
}

#[test]
fn sigkill_loses_at_most_one_flush_interval_json() {
    sigkill_loses_at_most_one_flush_interval("usage.json");
}

fn sigkill_loses_at_most_one_flush_interval(file: &str) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join(file);
    let store = store.to_str().unwrap();
    let mut cmd = command_with_store(&["--port", "0"], store);
    cmd.env("USAGE_TRACKING_FLUSH_INTERVAL_SECONDS", "1");
    let mut proxy = start(cmd);
    let addr = proxy.addr;
    // The record builder loads its tokenizers first (slow in a debug build);
    // the guarantee is about steady state, so wait until it is building.
    assert!(mock_request(addr, 0));
    let ready = Instant::now() + Duration::from_secs(60);
    while stored_requests(addr) == 0 {
        assert!(
            Instant::now() < ready,
            "the usage builder never produced a record"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Steady load (~100 requests/s: a debug build's tokenizer keeps up with
    // that) for ~3 s, remembering when each response completed.
    let started = Instant::now();
    let load = std::thread::spawn(move || {
        let mut done = Vec::new();
        let mut i = 0;
        while started.elapsed() < Duration::from_secs(4) {
            if mock_request(addr, i) {
                done.push(Instant::now());
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        done
    });
    std::thread::sleep(Duration::from_secs(3));
    let killed_at = Instant::now();
    Command::new("kill")
        .args(["-KILL", &proxy.child.id().to_string()])
        .status()
        .unwrap();
    let _ = proxy.child.wait();
    let done = load.join().unwrap();
    drop(proxy);
    // +1: the warm-up request.
    let served = done.iter().filter(|t| **t <= killed_at).count() as u64 + 1;
    // Responses finished more than one flush interval (plus scheduling slack)
    // before the kill must all be stored.
    let safe = done
        .iter()
        .filter(|t| killed_at.saturating_duration_since(**t) > Duration::from_millis(1500))
        .count() as u64;
    assert!(
        safe > 50,
        "the load produced too few requests to judge: {safe}"
    );
    let again = start(command_with_store(&["--port", "0"], store));
    let stored = stored_requests(again.addr);
    assert!(
        stored >= safe,
        "stored {stored} < {safe} requests served over one flush interval before SIGKILL"
    );
    assert!(stored <= served, "stored {stored} > served {served}");
}

/// `GET path` over a fresh connection; the raw response, which must be a 200.
fn get_raw(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let raw = read_all(s);
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    raw
}

/// `GET path` over a fresh connection; the JSON body.
fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    json_body(&get_raw(addr, path))
}

#[test]
fn usage_metrics_agree_with_the_records_and_unpriced_models_are_counted_and_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("usage.sqlite3");
    let proxy = start(command_with_store(
        &["--port", "0"],
        store.to_str().unwrap(),
    ));
    // Two requests for a model in the bundled price table, three for one
    // that is not in it (both answered by the built-in mock backend).
    let requests = [
        ("/v1/chat/completions", "gpt-4o-mini", 2),
        ("/v1/messages", "claude-sonnet-4", 3),
    ];
    for (path, model, n) in requests {
        for i in 0..n {
            let body = format!(
                r#"{{"model":"{model}","max_tokens":50,"messages":[{{"role":"user","content":"hello {i}"}}]}}"#
            );
            let raw = read_all(post_raw(proxy.addr, path, &body, &[]));
            assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
        }
    }
    // Records reach the store within a flush interval (1 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let m = get_raw(proxy.addr, "/metrics");
        if sample(&m, "llm_proxy_usage_flush_lag_seconds_count", &[]) == Some(5.0) {
            break m;
        }
        assert!(Instant::now() < deadline, "5 records never flushed:\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let stats = get_json(proxy.addr, "/v1/usage/stats");
    assert_eq!(stats["request_count"], 5, "{stats}");
    let mock = [("backend", "mock")];
    let metric = |name: &str, labels: &[(&str, &str)]| sample(&metrics, name, labels);
    assert_eq!(metric("llm_proxy_usage_records_total", &mock), Some(5.0));
    assert_eq!(
        metric("llm_proxy_usage_unpriced_records_total", &mock),
        Some(3.0)
    );
    for (kind, field) in [
        ("prompt", "total_prompt_tokens"),
        ("completion", "total_completion_tokens"),
    ] {
        let tokens = metric(
            "llm_proxy_usage_tokens_total",
            &[("backend", "mock"), ("kind", kind)],
        );
        assert_eq!(tokens, stats[field].as_f64(), "{kind}");
        assert!(tokens.unwrap() > 0.0);
    }
    let cost = metric("llm_proxy_usage_cost_usd_total", &mock).unwrap();
    let total_cost = stats["total_cost"].as_f64().unwrap();
    assert!(
        cost > 0.0 && (cost - total_cost).abs() < 1e-12,
        "{cost} vs {total_cost}"
    );
    for histogram in [
        "llm_proxy_ttft_seconds_count",
        "llm_proxy_exchange_duration_seconds_count",
        "llm_proxy_overhead_seconds_count",
    ] {
        assert_eq!(metric(histogram, &[]), Some(5.0), "{histogram}");
    }
    assert_eq!(
        metric("llm_proxy_usage_records_dropped_total", &[]).unwrap_or(0.0),
        0.0
    );
    // The unpriced model is named once in the log, however many records it has.
    let warned: Vec<String> = proxy
        .stderr
        .try_iter()
        .filter(|l| l.contains("no price for this model"))
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].contains(r#"model="claude-sonnet-4""#),
        "{warned:?}"
    );
    // Logs into a pipe (journald, container logs) carry no colour codes.
    assert!(!warned[0].contains('\u{1b}'), "{warned:?}");
}

/// The model that answered each of `turns` turns of one session asking for `mock:echo`.
fn served_models(addr: SocketAddr, session: &str, turns: usize) -> Vec<String> {
    (0..turns)
        .map(|_| {
            let raw = read_all(post_raw(
                addr,
                "/v1/chat/completions",
                r#"{"model":"mock:echo","messages":[{"role":"user","content":"hi"}]}"#,
                &[("x-session-id", session)],
            ));
            assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
            json_body(&raw)["model"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn replacement_flags_work_end_to_end() {
    let proxy = start(command(&[
        "--port",
        "0",
        "--enable-replacement",
        "--replacement-probability",
        "1",
        "--replacement-turn-count",
        "2",
        "--random-model-replacement-from-to",
        "echo=mock:mock",
    ]));
    assert_eq!(
        served_models(proxy.addr, "s1", 6),
        ["echo", "mock", "mock", "echo", "mock", "mock"]
    );
    let m = get_json(proxy.addr, "/v1/replacement/metrics");
    assert_eq!(m["enabled"], true);
    assert_eq!(m["activation_metrics"]["total_activations"], 2);
    assert_eq!(m["turn_count_metrics"]["total_turns_completed"], 4);
    assert_eq!(m["turn_count_metrics"]["turn_count_distribution"]["2"], 2);
}

#[test]
fn replacement_seed_environment_names_work_end_to_end() {
    let mut cmd = command(&["--port", "0"]);
    cmd.env("REPLACEMENT_ENABLED", "true")
        .env("REPLACEMENT_PROBABILITY", "1.0")
        .env("REPLACEMENT_TURN_COUNT", "1")
        .env(
            "REPLACEMENT_RULES",
            r#"[{"from_pattern":"mock:echo","to_backend":"mock","to_model":"mock"}]"#,
        );
    let proxy = start(cmd);
    assert_eq!(
        served_models(proxy.addr, "s1", 4),
        ["echo", "mock", "echo", "mock"]
    );
    // Probability 0 from the environment, overridden by nothing: never replaced.
    let mut cmd = command(&["--port", "0", "--enable-replacement"]);
    cmd.env("REPLACEMENT_PROBABILITY", "0").env(
        "REPLACEMENT_RULES",
        r#"[{"from_pattern":"*","to_backend":"mock","to_model":"mock"}]"#,
    );
    let proxy = start(cmd);
    assert_eq!(served_models(proxy.addr, "s1", 4), ["echo"; 4]);
    let m = get_json(proxy.addr, "/v1/replacement/metrics");
    assert_eq!(
        m["probability_check_metrics"]["total_probability_checks"],
        3
    );
    assert_eq!(m["activation_metrics"]["total_activations"], 0);
}

#[test]
fn replacement_off_says_so_and_bad_rules_name_the_key() {
    let proxy = start(command(&["--port", "0"]));
    let m = get_json(proxy.addr, "/v1/replacement/metrics");
    assert_eq!(m["enabled"], false);
    assert_eq!(m["activation_metrics"]["total_activations"], 0);
    assert_eq!(served_models(proxy.addr, "s1", 3), ["echo"; 3]);
    drop(proxy);

    let (code, err) = run_to_exit(command(&[
        "--port",
        "0",
        "--enable-replacement",
        "--random-model-replacement-from-to",
        "echo=mock:mock",
        "--random-model-replacement-from-to",
        "*=nope:x",
    ]));
    assert_ne!(code, Some(0));
    assert!(
        err.contains("replacement.replacement_rules[1].to_backend"),
        "{err}"
    );
    let (code, err) = run_to_exit(command(&[
        "--port",
        "0",
        "--enable-replacement",
        "--replacement-probability",
        "1.5",
        "--random-model-replacement-from-to",
        "*=mock:mock",
    ]));
    assert_ne!(code, Some(0));
    assert!(err.contains("replacement.probability"), "{err}");
    let (code, err) = run_to_exit(command(&["--port", "0", "--enable-replacement"]));
    assert_ne!(code, Some(0));
    assert!(err.contains("replacement.replacement_rules"), "{err}");
    let mut cmd = command(&["--port", "0"]);
    cmd.env("REPLACEMENT_TURN_COUNT", "0");
    let (code, err) = run_to_exit(cmd);
    assert_ne!(code, Some(0));
    assert!(err.contains("replacement.turn_count"), "{err}");
}
