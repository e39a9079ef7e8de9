//! `llm-proxy inspect` and `replay` as a user runs them (golden outputs over
//! a synthetic capture with fixed timestamps), and capture turning itself
//! off on a write failure while the proxy keeps serving.
//!
//! Regenerate the golden files with `UPDATE_GOLDEN=1 cargo test -p llm-proxy --test capture`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use llm_proxy_wire_capture::format::{encode_entry, encode_header};
use llm_proxy_wire_capture::{Direction, Entry, FileHeader, Meta, MetaValue};

mod common;

use common::{BIN, Running, command, sample, start_until};
/// 2027-01-15T08:00:00Z.
const T: f64 = 1_800_000_000.0;

struct Builder {
    entries: Vec<Entry>,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            entries: Vec::new(),
        }
    }

    fn add(
        &mut self,
        at: f64,
        dir: Direction,
        rid: &str,
        sid: &str,
        data: &str,
        meta: &[(&str, MetaValue)],
    ) {
        let mut m = Meta::default();
        m.set("sid", MetaValue::Text(sid.into()));
        m.set("rid", MetaValue::Text(rid.into()));
        if matches!(dir, Direction::ProxyToBackend | Direction::BackendToProxy) {
            m.set("be", MetaValue::Text("openai".into()));
            m.set("mod", MetaValue::Text("gpt-x".into()));
        }
        for (k, v) in meta {
            m.set(k, v.clone());
        }
        let seq = self.entries.len() as u64 + 1;
        self.entries.push(Entry {
            ts: T + at,
            dir,
            seq,
            data: data.as_bytes().to_vec(),
            meta: m,
        });
    }

    fn request(&mut self, at: f64, rid: &str, sid: &str, stream: bool) {
        let body = format!(
            r#"{{"model":"gpt-x","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        self.add(at, Direction::ClientToProxy, rid, sid, &format!("POST /v1/chat/completions HTTP/1.1\r\ncontent-type: application/json\r\nauthorization: [REDACTED]\r\n\r\n{body}"), &[("ua", MetaValue::Text("test/1".into()))]);
        self.add(at + 0.001, Direction::ProxyToBackend, rid, sid, &format!("POST http://127.0.0.1:9/v1/chat/completions HTTP/1.1\r\ncontent-type: application/json\r\n\r\n{body}"), &[]);
    }

    fn json_reply(
        &mut self,
        at: f64,
        dir: Direction,
        rid: &str,
        sid: &str,
        status: i64,
        body: &str,
    ) {
        let reason = if status == 200 { "OK" } else { "Error" };
        self.add(
            at,
            dir,
            rid,
            sid,
            &format!("HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\r\n{body}"),
            &[
                ("sc", MetaValue::Int(status)),
                ("ttfb", MetaValue::Float(5.0)),
                ("lat", MetaValue::Float(10.0)),
            ],
        );
    }

    fn write(&self, path: &Path) {
        let mut out = Vec::new();
        encode_header(
            &FileHeader {
                created_at: T,
                session_id: "golden".into(),
                metadata: Meta::default(),
            },
            &mut out,
        )
        .unwrap();
        for e in &self.entries {
            encode_entry(e, &mut out).unwrap();
        }
        std::fs::write(path, out).unwrap();
    }
}

const OK_BODY: &str = r#"{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hello there"},"finish_reason":"stop"}]}"#;

fn clean(b: &mut Builder) {
    b.request(0.0, "r1", "s1", false);
    b.json_reply(0.5, Direction::BackendToProxy, "r1", "s1", 200, OK_BODY);
    b.json_reply(0.501, Direction::ProxyToClient, "r1", "s1", 200, OK_BODY);
}

fn stream_leg(
    b: &mut Builder,
    at: f64,
    dir: Direction,
    rid: &str,
    sid: &str,
    chunks: &[&str],
    end: bool,
) {
    b.add(
        at,
        dir,
        rid,
        sid,
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n",
        &[("sc", MetaValue::Int(200))],
    );
    b.add(at, dir, rid, sid, "", &[("ss", MetaValue::Bool(true))]);
    for (i, c) in chunks.iter().enumerate() {
        b.add(
            at + 0.1 * (i as f64 + 1.0),
            dir,
            rid,
            sid,
            c,
            &[("ci", MetaValue::Int(i as i64 + 1))],
        );
    }
    let bytes: usize = chunks.iter().map(|c| c.len()).sum();
    let at = at + 0.1 * chunks.len() as f64;
    if end {
        b.add(
            at,
            dir,
            rid,
            sid,
            "",
            &[
                ("se", MetaValue::Bool(true)),
                ("tc", MetaValue::Int(chunks.len() as i64)),
                ("tb", MetaValue::Int(bytes as i64)),
                ("sdur", MetaValue::Float(100.0)),
            ],
        );
    } else {
        b.add(
            at,
            dir,
            rid,
            sid,
            "",
            &[("err", MetaValue::Text("connection reset".into()))],
        );
    }
}

/// One request of each problem, plus a clean one.
fn troubled() -> Builder {
    let mut b = Builder::new();
    clean(&mut b);
    // A rate limit.
    b.request(1.0, "r2", "s1", false);
    let limited = r#"{"error":{"type":"rate_limit_error","message":"slow down"}}"#;
    b.json_reply(1.01, Direction::BackendToProxy, "r2", "s1", 429, limited);
    b.json_reply(1.011, Direction::ProxyToClient, "r2", "s1", 429, limited);
    // A stream that ends in an error event.
    b.request(2.0, "r3", "s2", true);
    let chunks = [
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"}}]}\n\n",
        "data: {\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}\n\n",
    ];
    stream_leg(
        &mut b,
        2.1,
        Direction::BackendToProxy,
        "r3",
        "s2",
        &chunks,
        true,
    );
    stream_leg(
        &mut b,
        2.101,
        Direction::ProxyToClient,
        "r3",
        "s2",
        &chunks,
        true,
    );
    // A stall of 15 s before the backend answered.
    b.request(20.0, "r4", "s2", false);
    b.json_reply(35.0, Direction::BackendToProxy, "r4", "s2", 200, OK_BODY);
    b.json_reply(35.001, Direction::ProxyToClient, "r4", "s2", 200, OK_BODY);
    // A dropped upstream stream.
    b.request(40.0, "r5", "s3", true);
    let chunks = ["data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n"];
    stream_leg(
        &mut b,
        40.1,
        Direction::BackendToProxy,
        "r5",
        "s3",
        &chunks,
        false,
    );
    stream_leg(
        &mut b,
        40.101,
        Direction::ProxyToClient,
        "r5",
        "s3",
        &chunks,
        false,
    );
    b
}

/// Runs `llm-proxy ARGS`; returns (exit code, stdout with `dir` shown as `<DIR>`, stderr).
fn run(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let norm = |b: &[u8]| String::from_utf8_lossy(b).replace(&dir.display().to_string(), "<DIR>");
    (
        out.status.code().unwrap_or(-1),
        norm(&out.stdout),
        norm(&out.stderr),
    )
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(actual, expected, "golden {name} differs; actual:\n{actual}");
}

#[test]
fn inspect_detect_issues_golden() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("capture.cbor");
    troubled().write(&file);
    let f = file.to_str().unwrap();
    let (code, out, err) = run(&["inspect", f, "--detect-issues"], dir.path());
    assert_eq!(code, 1, "issues found → exit 1; stderr: {err}");
    golden("inspect_detect_issues.txt", &out);
    for kind in [
        "slow_response",
        "rate_limit",
        "backend_error",
        "missing_response",
    ] {
        assert!(out.contains(&format!("[{kind}]")), "{kind} missing:\n{out}");
    }

    let (code, out, _) = run(
        &["inspect", f, "--analyze", "--status-summary", "--timeline"],
        dir.path(),
    );
    assert_eq!(code, 0);
    golden("inspect_analyze.txt", &out);

    // Filters: session s2 holds the error event and the stall only.
    let (_, out, _) = run(
        &["inspect", f, "--detect-issues", "--session", "s2", "--json"],
        dir.path(),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kinds: Vec<&str> = v["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["backend_error", "slow_response"], "{out}");
    assert_eq!(v["summary"]["requests"], 2);
    let (_, out, _) = run(
        &["inspect", f, "--direction", "backend_response", "--json"],
        dir.path(),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["summary"]["per_direction"]["client_request"], 0);
    assert!(
        v["summary"]["per_direction"]["backend_response"]
            .as_u64()
            .unwrap()
            > 0
    );
    // A smaller threshold finds the 0.5 s backend wait of r1 too.
    let (_, out, _) = run(
        &[
            "inspect",
            f,
            "--detect-issues",
            "--slow-threshold",
            "0.4",
            "--json",
            "--until",
            &(T + 1.5).to_string(),
        ],
        dir.path(),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let slow: Vec<&str> = v["issues"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "slow_response")
        .map(|i| i["rid"].as_str().unwrap())
        .collect();
    assert_eq!(slow, ["r1"], "{out}");

    let (code, out, _) = run(&["inspect", f, "--track-request", "r3"], dir.path());
    assert_eq!(code, 0);
    golden("inspect_track_request.txt", &out);
}

#[test]
fn inspect_says_no_issues_on_a_clean_capture_and_reports_damage() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clean.cbor");
    let mut b = Builder::new();
    clean(&mut b);
    b.write(&file);
    let f = file.to_str().unwrap();
    let (code, out, _) = run(&["inspect", f, "--detect-issues"], dir.path());
    assert_eq!(code, 0);
    golden("inspect_clean.txt", &out);
    assert!(out.contains("No issues detected"));

    // Cut into the last entry: the rest is read and the damage reported.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 20]).unwrap();
    let (code, out, _) = run(&["inspect", f], dir.path());
    assert_eq!(code, 0);
    golden("inspect_truncated.txt", &out);
    assert!(out.contains("DAMAGE"), "{out}");

    let (code, _, err) = run(
        &["inspect", dir.path().join("nope.cbor").to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(code, 2);
    assert!(err.contains("cannot read"), "{err}");
    std::fs::write(&file, b"not cbor at all").unwrap();
    let (code, _, err) = run(&["inspect", f], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("not a capture file"), "{err}");
}

/// A running `llm-proxy` process.
fn start(args: &[&str], ready_prefix: &str) -> Running {
    start_until(command(args), ready_prefix)
}

/// Stops the process with SIGTERM and waits for it to exit.
fn terminate(r: Running) {
    terminate_keep_logs(r);
}

fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn chat(i: usize) -> String {
    format!(
        r#"{{"model":"mock:echo","messages":[{{"role":"user","content":"request {i} {}"}}]}}"#,
        "x".repeat(200)
    )
}

fn gauge(metrics: &str) -> Option<f64> {
    sample(metrics, "llm_proxy_wire_capture_enabled", &[])
}

#[test]
fn a_write_failure_turns_capture_off_and_the_proxy_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("captures");
    let config = tmp.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[wire_capture]\nenabled = true\noutput_dir = \"{}\"\nmax_file_bytes = 1024\nmax_total_bytes = 65536\n",
            out_dir.display()
        ),
    )
    .unwrap();
    let proxy = start(
        &["--port", "0", "--config", config.to_str().unwrap()],
        "llm-proxy listening on http://",
    );
    let raw = http(proxy.addr, "POST", "/v1/chat/completions", &chat(0));
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&out_dir).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no capture file appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(gauge(&http(proxy.addr, "GET", "/metrics", "")), Some(1.0));

    // The directory becomes a file: the next rotation cannot create one.
    // The writer may still be rotating (and recreating the directory) for
    // the first request, so retry until the file is in place.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // NotFound or a file created mid-removal: the write below decides.
        let _ = std::fs::remove_dir_all(&out_dir);
        match std::fs::write(&out_dir, b"in the way") {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::IsADirectory => {
                assert!(
                    Instant::now() < deadline,
                    "the writer keeps recreating the directory"
                );
            }
            Err(e) => panic!("writing {}: {e}", out_dir.display()),
        }
    }
    for i in 1..6 {
        let raw = http(proxy.addr, "POST", "/v1/chat/completions", &chat(i));
        assert!(
            raw.starts_with("HTTP/1.1 200"),
            "request {i} after the failure: {raw}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = http(proxy.addr, "GET", "/metrics", "");
        if gauge(&metrics) == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "capture still on:\n{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let raw = http(proxy.addr, "POST", "/v1/chat/completions", &chat(9));
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    std::thread::sleep(Duration::from_millis(200));
    let logs: Vec<String> = proxy.stderr.try_iter().collect();
    let errors = logs
        .iter()
        .filter(|l| l.contains("wire capture write failed"))
        .count();
    assert_eq!(errors, 1, "exactly one error line:\n{}", logs.join("\n"));
}

#[test]
fn replay_cli_serves_a_capture_as_the_backend_and_compares() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("captures");
    // Capture a session with the zero-config mock backend.
    let proxy = start_capturing(&out_dir);
    for i in 0..3 {
        let raw = http(proxy.addr, "POST", "/v1/chat/completions", &chat(i));
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    }
    // SIGTERM: the drain flushes and fsyncs the capture.
    terminate(proxy);
    let files: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
    assert_eq!(files.len(), 1);
    let capture = out_dir.to_str().unwrap();

    let backend = start(
        &["replay", capture, "--serve-backend", "--port", "0"],
        "replay backend listening on http://",
    );
    let config = tmp.path().join("replayed.toml");
    std::fs::write(
        &config,
        format!("default_backend = \"mock\"\n[backends.mock]\ntype = \"openai\"\napi_url = \"http://{}/v1\"\n", backend.addr),
    )
    .unwrap();
    let proxy = start(
        &["--port", "0", "--config", config.to_str().unwrap()],
        "llm-proxy listening on http://",
    );
    let (code, out, err) = run(
        &[
            "replay",
            capture,
            "--proxy-url",
            &format!("http://{}", proxy.addr),
            "--speed",
            "0",
        ],
        tmp.path(),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("3 requests replayed, 0 mismatches"), "{out}");
    drop(proxy);
    drop(backend);
}

#[test]
fn absurd_timestamps_and_flags_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("capture.cbor");
    let mut b = Builder::new();
    clean(&mut b);
    b.request(1.0, "r2", "s1", false);
    b.json_reply(1.5, Direction::BackendToProxy, "r2", "s1", 200, OK_BODY);
    b.json_reply(1.6, Direction::ProxyToClient, "r2", "s1", 200, OK_BODY);
    let n = b.entries.len();
    b.entries[n - 2].ts = 1e300;
    b.entries[n - 1].ts = f64::NEG_INFINITY;
    b.entries[n - 3].ts = 1e300;
    b.entries[n - 4].ts = 1e300;
    b.write(&file);
    let f = file.to_str().unwrap();
    let no_panic = |(code, out, err): (i32, String, String)| {
        assert!(
            !err.contains("panicked") && code != 101,
            "{code}\n{out}\n{err}"
        );
        (code, out, err)
    };

    let (code, _, _) = no_panic(run(&["inspect", f, "--detect-issues"], dir.path()));
    assert!(code == 0 || code == 1);
    no_panic(run(&["inspect", f, "--timeline"], dir.path()));
    no_panic(run(&["inspect", f, "--analyze"], dir.path()));
    let (code, _, err) = no_panic(run(&["inspect", f, "--slow-threshold", "1e20"], dir.path()));
    assert_eq!(code, 2);
    assert!(err.contains("--slow-threshold"), "{err}");
    let (code, _, err) = no_panic(run(
        &[
            "replay",
            f,
            "--proxy-url",
            "http://127.0.0.1:9",
            "--speed",
            "1e-30",
        ],
        dir.path(),
    ));
    assert_eq!(code, 2);
    assert!(err.contains("--speed"), "{err}");
    // Planning the replay reads every offset (the 1e300 request's too).
    let (code, out, err) = no_panic(run(
        &[
            "replay",
            f,
            "--proxy-url",
            "http://127.0.0.1:9",
            "--speed",
            "0",
        ],
        dir.path(),
    ));
    assert_eq!(code, 1, "{out}\n{err}");
    // The fake backend builds its scripts (1e300 and -inf offsets) at start.
    let backend = start(
        &["replay", f, "--serve-backend", "--port", "0"],
        "replay backend listening on http://",
    );
    drop(backend);
}

#[test]
fn filters_do_not_make_answered_requests_look_unanswered() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clean.cbor");
    let mut b = Builder::new();
    clean(&mut b);
    b.write(&file);
    let f = file.to_str().unwrap();
    let (code, out, err) = run(
        &[
            "inspect",
            f,
            "--detect-issues",
            "--direction",
            "client_request",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("No issues detected"), "{out}");
    // A window that ends between the request and its answer.
    let until = format!("{}", T + 0.2);
    let (code, out, err) = run(
        &["inspect", f, "--detect-issues", "--until", &until],
        dir.path(),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("No issues detected"), "{out}");

    // Real issues are still reported through a filter, but only for the
    // requests it selects.
    let file = dir.path().join("troubled.cbor");
    troubled().write(&file);
    let f = file.to_str().unwrap();
    let (all_code, all, _) = run(&["inspect", f, "--detect-issues", "--json"], dir.path());
    let (dir_code, filtered, _) = run(
        &[
            "inspect",
            f,
            "--detect-issues",
            "--json",
            "--direction",
            "client_request",
        ],
        dir.path(),
    );
    assert_eq!((all_code, dir_code), (1, 1));
    let count = |s: &str| -> usize {
        let v: serde_json::Value = serde_json::from_str(s).unwrap();
        v["issues"].as_array().map_or(0, Vec::len)
    };
    assert_eq!(count(&all), count(&filtered), "{filtered}");
    let (code, none, _) = run(
        &[
            "inspect",
            f,
            "--detect-issues",
            "--json",
            "--session",
            "no-such-session",
        ],
        dir.path(),
    );
    assert_eq!(code, 0);
    assert_eq!(count(&none), 0);
}

#[test]
fn capture_is_flushed_before_usage_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("captures");
    let proxy = start_capturing(&out_dir);
    let raw = http(proxy.addr, "POST", "/v1/chat/completions", &chat(0));
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let logs = terminate_keep_logs(proxy);
    let at = |needle: &str| {
        logs.iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{}", logs.join("\n")))
    };
    assert!(
        at("wire capture flushed") < at("usage records flushed"),
        "{}",
        logs.join("\n")
    );
}

/// The proxy with the mock backend, capturing to `out_dir`.
fn start_capturing(out_dir: &Path) -> Running {
    start(
        &[
            "--port",
            "0",
            "--wire-capture-enabled",
            "--wire-capture-output-dir",
            out_dir.to_str().unwrap(),
        ],
        "llm-proxy listening on http://",
    )
}

/// SIGTERM, wait for the exit, and return everything the process logged.
fn terminate_keep_logs(r: Running) -> Vec<String> {
    let mut r = r;
    let status = Command::new("kill")
        .args(["-TERM", &r.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    while r.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut logs = Vec::new();
    while let Ok(line) = r.stderr.recv_timeout(Duration::from_secs(2)) {
        logs.push(line);
    }
    logs
}
