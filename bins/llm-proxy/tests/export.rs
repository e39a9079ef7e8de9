//! `/v1/usage/export` streams: a million stored records leave the real
//! binary in every format while its memory stays flat.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use llm_proxy_usage::UsageStore;
use llm_proxy_usage::store::SqliteStore;
use llm_proxy_usage::store::conformance::synthetic_records;

const RECORDS: usize = 1_000_000;

/// Resident set size of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// GETs `path` and reads the whole (chunked) answer without keeping it;
/// returns (newlines seen, bytes, peak RSS of `pid` meanwhile, first 2 KB).
fn stream(addr: SocketAddr, path: &str, pid: u32) -> (u64, u64, u64, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let (mut lines, mut bytes, mut peak, mut reads) = (0u64, 0u64, 0u64, 0u64);
    let mut head = Vec::new();
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        if head.len() < 2048 {
            head.extend_from_slice(&buf[..n.min(2048)]);
        }
        bytes += n as u64;
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        reads += 1;
        if reads % 32 == 0 {
            peak = peak.max(rss_bytes(pid));
        }
    }
    (
        lines,
        bytes,
        peak.max(rss_bytes(pid)),
        String::from_utf8_lossy(&head).into_owned(),
    )
}

#[test]
fn exporting_a_million_records_keeps_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.sqlite3");
    {
        let (store, _) = SqliteStore::open(&path).unwrap();
        let start_us = 1_767_225_600_000_000; // 2026-01-01
        let hour = 3_600_000_000;
        for (i, chunk) in (0..RECORDS).collect::<Vec<_>>().chunks(50_000).enumerate() {
            let records =
                synthetic_records(chunk.len(), start_us + i as i64 * hour, hour, i as u64);
            store.insert(&records).unwrap();
        }
        store.flush().unwrap();
        assert_eq!(store.count().unwrap(), RECORDS as u64);
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_llm-proxy"))
        .args(["--port", "0"])
        .env("USAGE_TRACKING_PERSISTENCE_PATH", &path)
        .env("RUST_LOG", "warn")
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("llm-proxy listening on http://") {
                let _ = tx.send(a.parse::<SocketAddr>().unwrap());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(120)).unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(500));

    let before = rss_bytes(pid);
    let (lines, bytes, peak, _) = stream(addr, "/v1/usage/export?format=jsonl", pid);
    assert!(lines >= RECORDS as u64, "one line per record: {lines}");
    assert!(
        bytes > 500 * RECORDS as u64,
        "whole records were sent ({bytes} bytes)"
    );
    let growth = peak.saturating_sub(before);
    assert!(
        growth < 50 * 1024 * 1024,
        "the proxy's RSS grew by {} MB while exporting {RECORDS} records ({} MB of JSONL)",
        growth >> 20,
        bytes >> 20
    );

    let (lines, _, peak, head) = stream(addr, "/v1/usage/export?format=csv", pid);
    assert!(head.contains("\r\nid,timestamp,session_id,"), "{head}");
    assert!(
        lines > RECORDS as u64,
        "header + one row per record: {lines}"
    );
    assert!(peak.saturating_sub(before) < 50 * 1024 * 1024);

    let (_, bytes, _, head) = stream(
        addr,
        "/v1/usage/export?format=json&backend=openai&end_date=2026-01-01T00:59:59Z",
        pid,
    );
    assert!(head.contains("\"version\":1"), "{head}");
    assert!(bytes > 0);
    let _ = child.kill();
    let _ = child.wait();
}
