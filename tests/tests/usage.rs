//! Usage tracking end to end: one accurate record per request (SDK traffic
//! of both protocols, JSON and streams, tool calls, upstream errors), stats
//! that add up, filters, cost, client disconnects, and durability.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::time::Duration;

use common::python::{python, run_script, workspace_root};
use common::*;
use llm_proxy_core::{BackendType, Frontend};
use llm_proxy_testkit::{MockUpstream, MockUpstreamConfig};
use serde_json::Value;

async fn proxy_with_usage(up: &MockUpstream, persistence_path: &str) -> Proxy {
    let mut c = base_config();
    add_backend(&mut c, "openai", BackendType::OpenAi, &up.base_url());
    add_backend(&mut c, "anthropic", BackendType::Anthropic, &up.base_url());
    c.usage_tracking.persistence_path = persistence_path.to_owned();
    c.usage_tracking.flush_interval_seconds = 0.2;
    Proxy::start(c).await
}

async fn recent(proxy: &Proxy, query: &str) -> Value {
    let r = get(&proxy.url(&format!("/v1/usage/recent?{query}")), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

async fn stats(proxy: &Proxy, query: &str) -> Value {
    let r = get(&proxy.url(&format!("/v1/usage/stats?{query}")), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Waits until `/v1/usage/recent` reports `n` records.
async fn wait_for_records(proxy: &Proxy, n: u64) -> Value {
    for _ in 0..200 {
        let v = recent(proxy, "limit=1000").await;
        if v["total"].as_u64() == Some(n) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "never saw {n} usage records: {}",
        recent(proxy, "limit=1000").await
    );
}

/// A temp dir, its `usage.sqlite3` path (also as a string), a mock upstream.
async fn store_dir_and_upstream() -> (tempfile::TempDir, std::path::PathBuf, String, MockUpstream) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.sqlite3");
    let path_s = path.to_str().unwrap().to_owned();
    let up = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    (dir, path, path_s, up)
}

fn frontend_of(path: &str) -> Frontend {
    Frontend::from_path(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_traffic_gives_one_accurate_record_per_request() {
    let up = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let proxy = proxy_with_usage(&up, ":memory:").await;
    let script = workspace_root().join("tests/py/usage_mix.py");
    let python = python();
    let url = format!("http://{}", proxy.addr);
    let out = tokio::task::spawn_blocking(move || run_script(&python, &script, &url))
        .await
        .unwrap();
    assert!(
        out.status.is_some_and(|s| s.success()),
        "usage_mix.py failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );

    let v = wait_for_records(&proxy, 8).await;
    let mut records: Vec<Value> = v["records"].as_array().unwrap().clone();
    records.reverse(); // oldest first, the order the script sent them
    let seen = up.requests();
    assert_eq!(
        seen.len(),
        8,
        "one upstream request per SDK call (no retries)"
    );

    let expect_status = [200, 200, 200, 200, 200, 200, 429, 500];
    let expect_tools: [&[&str]; 8] = [
        &[],
        &[],
        &["get_weather"],
        &[],
        &[],
        &["get_weather"],
        &[],
        &[],
    ];
    for (i, (record, upstream)) in records.iter().zip(&seen).enumerate() {
        let ctx = format!("request {} ({}): {record:#}", i + 1, upstream.path);
        assert_eq!(record["http_status_code"], expect_status[i], "{ctx}");
        assert_eq!(record["session_id"], "usage-mix", "{ctx}");
        assert_eq!(record["turn_number"], i as u64 + 1, "{ctx}");
        let tools: Vec<&str> = record["tool_names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(tools, expect_tools[i], "{ctx}");
        assert_eq!(record["tool_call_count"], expect_tools[i].len(), "{ctx}");
        if expect_status[i] == 200 {
            // The mock's own usage for the request it received.
            let body = upstream.json().unwrap();
            let usage =
                llm_proxy_core::mock::usage_for(frontend_of(&upstream.path), &body).unwrap();
            assert_eq!(record["prompt_tokens"], usage.prompt_tokens, "{ctx}");
            assert_eq!(
                record["completion_tokens"], usage.completion_tokens,
                "{ctx}"
            );
            assert_eq!(record["total_tokens"], usage.total_tokens, "{ctx}");
            assert_eq!(record["token_source"], "backend", "{ctx}");
            assert_eq!(record["completion_outcome"], "completed", "{ctx}");
            let ttft = record["ttft_ms"].as_f64().unwrap();
            assert!(
                (100.0..150.0).contains(&ttft),
                "TTFT {ttft} ms vs a 100 ms first-token delay; {ctx}"
            );
            assert!(
                record["verbatim_prompt_tokens"].as_u64().unwrap() > 0,
                "{ctx}"
            );
            assert!(
                record["verbatim_completion_tokens"].as_u64().unwrap() > 0,
                "{ctx}"
            );
        }
    }
    // Streamed OpenAI chat without include_usage still has backend usage.
    assert_eq!(records[1]["streaming"], true);
    assert!(records[1]["backend_reported_usage"]["prompt_tokens"].is_u64());
    assert_eq!(records[3]["frontend_type"], "anthropic");
    assert_eq!(records[3]["backend"], "anthropic");
    assert_eq!(records[3]["model"], "claude-haiku-4-5");
    assert_eq!(records[3]["requested_model"], "anthropic:claude-haiku-4-5");

    // Stats are the sums over the records.
    let s = stats(&proxy, "").await;
    let sum = |field: &str| {
        records
            .iter()
            .map(|r| r[field].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(s["request_count"], 8);
    assert_eq!(s["total_prompt_tokens"], sum("prompt_tokens"));
    assert_eq!(s["total_completion_tokens"], sum("completion_tokens"));
    assert_eq!(s["total_tokens"], sum("total_tokens"));
    assert_eq!(s["total_tool_calls"], 2);
    assert_eq!(s["tool_call_counts"]["get_weather"], 2);
    assert_eq!(s["status_code_counts"]["200"], 6);
    assert_eq!(s["status_code_counts"]["429"], 1);
    assert_eq!(s["status_code_counts"]["500"], 1);
    assert_eq!(s["error_count"], 2);
    assert_eq!(s["unique_sessions"], 1);
    assert_eq!(s["ttft_stats"]["count"], 8);
    let cost: f64 = records.iter().filter_map(|r| r["cost_usd"].as_f64()).sum();
    assert!((s["total_cost"].as_f64().unwrap() - cost).abs() < 1e-12);
    assert!(cost > 0.0, "gpt-4o-mini and claude-haiku-4-5 are priced");

    // Filters and grouping.
    assert_eq!(
        stats(&proxy, "frontend_type=anthropic").await["request_count"],
        4
    );
    assert_eq!(
        stats(&proxy, "backend=openai&http_status_code=429").await["request_count"],
        1
    );
    assert_eq!(stats(&proxy, "model=gpt-4o-mini").await["request_count"], 4);
    let g = stats(&proxy, "group_by=frontend_type").await;
    let groups = g["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    for group in groups {
        assert_eq!(group["request_count"], 4, "{group}");
    }
    let r = get(&proxy.url("/v1/usage/stats?hour_of_day=25"), &[]).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("hour_of_day"), "{}", r.body);
    proxy.stop().await;
}

#[tokio::test]
async fn the_same_exchange_costs_the_same_streamed_or_not_and_unknown_models_cost_null() {
    let up = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let proxy = proxy_with_usage(&up, ":memory:").await;
    let url = proxy.url("/v1/chat/completions");
    assert_eq!(
        post(
            &url,
            &chat("openai:gpt-4o-mini", "one two three", false),
            &[]
        )
        .await
        .status,
        200
    );
    let s = post_stream(
        &url,
        &chat("openai:gpt-4o-mini", "one two three", true),
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(
        post(&url, &chat("openai:no-such-model-xyz", "hi", false), &[])
            .await
            .status,
        200
    );
    let v = wait_for_records(&proxy, 3).await;
    let records = v["records"].as_array().unwrap();
    let (unknown, streamed, plain) = (&records[0], &records[1], &records[2]);
    assert_eq!(plain["streaming"], false);
    assert_eq!(streamed["streaming"], true);
    assert_eq!(plain["cost_source"], "pricing_table");
    assert!(plain["cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(plain["cost_usd"], streamed["cost_usd"]);
    assert_eq!(plain["total_tokens"], streamed["total_tokens"]);
    assert_eq!(unknown["cost_usd"], Value::Null);
    assert_eq!(unknown["cost_source"], "unknown");
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_leaves_an_incomplete_record() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    // Tokens are counted by the counting thread, which runs only on CPU time
    // nothing else wants; a long flush interval gives it 2 s (a quarter)
    // before the record would be estimated, however busy the test machine,
    // and it counts even when the machine has little idle CPU.
    let mut c = base_config();
    add_backend(&mut c, "openai", BackendType::OpenAi, &up.base_url());
    c.usage_tracking.persistence_path = ":memory:".to_owned();
    c.usage_tracking.flush_interval_seconds = 8.0;
    c.usage_tracking.exact_counting_min_idle_cpu = 0.0;
    let proxy = Proxy::start(c).await;
    let mut sock = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let body = chat("openai:gpt-4o-mini", "a b c d e f g h", true);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nx-mock-inter-chunk-delay-ms: 200\r\nx-mock-chunks: 10\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    // Read until a couple of content chunks arrived, then leave.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.windows(7).filter(|w| w == b"content").count() < 3 {
        let n = sock.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    drop(sock);
    let v = wait_for_records(&proxy, 1).await;
    let r = &v["records"][0];
    assert_eq!(r["completion_outcome"], "incomplete", "{r:#}");
    assert_eq!(r["incomplete_reason"], "client_disconnect");
    let seen = r["verbatim_completion_tokens"].as_u64().unwrap();
    assert!(
        seen > 0,
        "the tokens seen before the disconnect are counted: {r:#}"
    );
    assert!(
        r["backend_reported_usage"].is_null(),
        "the stream never reached its usage chunk"
    );
    assert_eq!(r["token_source"], "proxy", "{r:#}");
    proxy.stop().await;
}

#[tokio::test]
async fn records_survive_a_restart_and_a_damaged_store_is_moved_aside() {
    let (dir, _, path_s, up) = store_dir_and_upstream().await;

    let proxy = proxy_with_usage(&up, &path_s).await;
    for i in 0..5 {
        let r = post(
            &proxy.url("/v1/chat/completions"),
            &chat("openai:gpt-4o-mini", &format!("hello {i}"), false),
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    wait_for_records(&proxy, 5).await;
    proxy.stop().await; // drains and flushes

    let proxy = proxy_with_usage(&up, &path_s).await;
    assert_eq!(
        stats(&proxy, "").await["request_count"],
        5,
        "old records are in stats after a restart"
    );
    proxy.stop().await;

    // A store file that is not a database is kept, moved aside, never overwritten.
    let garbage = dir.path().join("broken.sqlite3");
    std::fs::write(
        &garbage,
        b"this is not a sqlite database, just text that must survive",
    )
    .unwrap();
    let proxy = proxy_with_usage(&up, garbage.to_str().unwrap()).await;
    let kept: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("broken.sqlite3.corrupt-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "the damaged file is moved aside");
    assert_eq!(
        std::fs::read(kept[0].path()).unwrap(),
        b"this is not a sqlite database, just text that must survive"
    );
    let r = post(
        &proxy.url("/v1/chat/completions"),
        &chat("openai:gpt-4o-mini", "still works", false),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    wait_for_records(&proxy, 1).await;
    proxy.stop().await;
}

#[cfg(target_os = "linux")]
/// Records the SQLite store holds as rows, and packed (waiting to be indexed).
fn rows_and_deferred_in(path: &std::path::Path) -> (i64, i64) {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(
        "SELECT (SELECT COUNT(*) FROM records), \
         (SELECT COALESCE(SUM(record_count), 0) FROM deferred)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// Linux only: elsewhere there is no `/proc/stat` and CPU counts as spare.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_machine_defers_indexing_and_every_query_still_sees_every_record() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let (_dir, path, path_s, up) = store_dir_and_upstream().await;
    // A machine never this idle: the writer stores every batch packed. A
    // spinning thread makes sure no sample is wholly idle.
    struct Spinner(Arc<AtomicBool>);
    impl Drop for Spinner {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Relaxed);
        }
    }
    let spinner = Spinner(Arc::new(AtomicBool::new(true)));
    {
        let spinning = spinner.0.clone();
        std::thread::spawn(move || {
            while spinning.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
    }
    let mut c = base_config();
    add_backend(&mut c, "openai", BackendType::OpenAi, &up.base_url());
    c.usage_tracking.persistence_path = path_s.clone();
    c.usage_tracking.flush_interval_seconds = 0.2;
    c.usage_tracking.exact_counting_min_idle_cpu = 1.0;
    let proxy = Proxy::start(c).await;
    // The writer's first CPU reading needs two samples (¼ s apart); until
    // then it writes rows. A first request, then time for the samples.
    let r = post(
        &proxy.url("/v1/chat/completions"),
        &chat("openai:gpt-4o-mini", "first", false),
        &[("user-agent", "common-agent/1")],
    )
    .await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    const N: i64 = 24;
    for i in 0..N {
        let r = post(
            &proxy.url("/v1/chat/completions"),
            &chat("openai:gpt-4o-mini", &format!("busy {i}"), i % 2 == 0),
            &[(
                "user-agent",
                if i < 4 {
                    "rare-agent/1"
                } else {
                    "common-agent/1"
                },
            )],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    // Every record written (the first one perhaps as a row).
    let (mut rows, mut deferred) = (0, 0);
    for _ in 0..200 {
        (rows, deferred) = rows_and_deferred_in(&path);
        if rows + deferred == N + 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(rows + deferred, N + 1);
    assert!(deferred >= N, "every batch was stored packed: {deferred}");
    // Stats see the packed records: from the rollups, and by scanning them
    // for filters the rollups cannot answer.
    assert_eq!(stats(&proxy, "").await["request_count"], N + 1);
    assert_eq!(
        stats(&proxy, "user_agent=rare-agent/1").await["request_count"],
        4
    );
    assert_eq!(
        rows_and_deferred_in(&path),
        (rows, deferred),
        "stats index nothing"
    );
    // Export reads rows in time order: the writer indexes them first.
    let r = get(&proxy.url("/v1/usage/export?format=jsonl"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ids: std::collections::HashSet<String> = r
        .body
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].to_string())
        .collect();
    assert_eq!(ids.len() as i64, N + 1, "every record exported once");
    assert_eq!(rows_and_deferred_in(&path), (N + 1, 0));
    // More records, packed again; recent has them indexed too.
    const M: i64 = 6;
    for i in 0..M {
        let r = post(
            &proxy.url("/v1/chat/completions"),
            &chat("openai:gpt-4o-mini", &format!("later {i}"), false),
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    for _ in 0..200 {
        if rows_and_deferred_in(&path) == (N + 1, M) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(rows_and_deferred_in(&path), (N + 1, M));
    let v = recent(&proxy, "limit=1000").await;
    assert_eq!(v["total"], N + 1 + M);
    assert_eq!(v["records"].as_array().unwrap().len(), (N + 1 + M) as usize);
    assert_eq!(rows_and_deferred_in(&path), (N + 1 + M, 0));
    drop(spinner);
    proxy.stop().await;

    let proxy = proxy_with_usage(&up, &path_s).await;
    assert_eq!(stats(&proxy, "").await["request_count"], N + 1 + M);
    proxy.stop().await;
}
