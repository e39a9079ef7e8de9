//! The Postgres usage store end to end: proxies sharing one database, and a
//! database outage while requests flow. Each test starts its own private
//! PostgreSQL cluster (`llm_proxy_testkit::PgCluster`); without PostgreSQL
//! installed these tests fail, they do not skip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use llm_proxy_core::BackendType;
use llm_proxy_testkit::{MockUpstream, MockUpstreamConfig, PgCluster};
use serde_json::Value;

async fn proxy_on_postgres(up: &MockUpstream, url: &str, spill: &std::path::Path) -> Proxy {
    let mut c = base_config();
    add_backend(&mut c, "openai", BackendType::OpenAi, &up.base_url());
    add_backend(&mut c, "anthropic", BackendType::Anthropic, &up.base_url());
    c.usage_tracking.database_url = Some(serde_json::from_value(Value::from(url)).unwrap());
    c.usage_tracking.spill_path = spill.display().to_string();
    c.usage_tracking.flush_interval_seconds = 0.2;
    Proxy::start(c).await
}

async fn stats(proxy: &Proxy, query: &str) -> Option<Value> {
    let r = get(&proxy.url(&format!("/v1/usage/stats?{query}")), &[]).await;
    (r.status == 200).then(|| r.json())
}

/// Waits until `/v1/usage/stats` on `proxy` counts `n` requests.
async fn wait_for_count(proxy: &Proxy, n: u64, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = stats(proxy, "").await
            && v["request_count"].as_u64() == Some(n)
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {n} requests: {:?}",
            stats(proxy, "").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn one_request(proxy: &Proxy, i: u64) {
    let (path, body) = if i.is_multiple_of(3) {
        (
            "/v1/messages",
            messages(
                "anthropic:claude-sonnet-4",
                &format!("hello {i}"),
                i.is_multiple_of(2),
            ),
        )
    } else {
        (
            "/v1/chat/completions",
            chat(
                "openai:gpt-4o-mini",
                &format!("hi there {i}"),
                i.is_multiple_of(2),
            ),
        )
    };
    let r = post(
        &proxy.url(path),
        &body,
        &[("x-session-id", &format!("s{}", i % 7))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_on_one_database_report_the_same_totals() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .unwrap()
        .expect("PostgreSQL is needed for this test");
    let url = cluster.create_database("shared").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let up = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let a = proxy_on_postgres(&up, &url, &dir.path().join("a.jsonl")).await;
    let b = proxy_on_postgres(&up, &url, &dir.path().join("b.jsonl")).await;
    let n = 40;
    for i in 0..n {
        one_request(if i % 2 == 0 { &a } else { &b }, i).await;
    }
    let on_a = wait_for_count(&a, n, Duration::from_secs(20)).await;
    let on_b = wait_for_count(&b, n, Duration::from_secs(20)).await;
    assert_eq!(on_a, on_b, "both instances answer from the shared database");
    assert_eq!(on_a["total_turns"], n);
    // Grouped and filtered answers agree too.
    for q in [
        "group_by=backend,streaming",
        "frontend_type=anthropic",
        "group_by=session_id",
    ] {
        assert_eq!(stats(&a, q).await, stats(&b, q).await, "{q}");
    }
    let by_backend = stats(&a, "group_by=backend").await.unwrap();
    let total: u64 = by_backend["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["request_count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, n);
    let rows = cluster
        .psql("shared", "SELECT count(DISTINCT id) FROM usage_records")
        .unwrap();
    assert_eq!(rows.trim(), n.to_string());
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_second_database_outage_loses_and_duplicates_nothing() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .unwrap()
        .expect("PostgreSQL is needed for this test");
    let url = cluster.create_database("outage").unwrap();
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join("spill.jsonl");
    let up = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let proxy = Arc::new(proxy_on_postgres(&up, &url, &spill).await);

    // Requests flow the whole time, every 40 ms.
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (proxy, sent, stop) = (proxy.clone(), sent.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                one_request(&proxy, i).await;
                i += 1;
                sent.store(i, Ordering::SeqCst);
                if let Some(rest) = Duration::from_millis(40).checked_sub(started.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.lock().unwrap().stop_server())
        .await
        .unwrap()
        .unwrap();
    let before = sent.load(Ordering::SeqCst);
    // Requests are served while the database is down, and records spill.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spilled = std::fs::metadata(&spill).unwrap().len();
    assert!(spilled > 0, "nothing spilled while the database was down");
    // Queries cannot be answered meanwhile: 503 with `Retry-After`, naming
    // the database, not a 500.
    for path in ["/v1/usage/stats", "/v1/usage/recent", "/v1/usage/export"] {
        let r = get(&proxy.url(path), &[]).await;
        assert_eq!(r.status, 503, "{path}: {}", r.body);
        assert_eq!(r.headers["retry-after"], "5", "{path}");
        assert!(
            r.body.contains("usage database unreachable"),
            "{path}: {}",
            r.body
        );
    }
    tokio::time::sleep(Duration::from_secs(7)).await;
    let during = sent.load(Ordering::SeqCst) - before;
    assert!(during > 20, "requests stalled during the outage: {during}");
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.lock().unwrap().start_server())
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    let n = sent.load(Ordering::SeqCst);

    let v = wait_for_count(&proxy, n, Duration::from_secs(30)).await;
    assert_eq!(v["total_turns"], n);
    // Stats also count records still waiting for the next flush: wait
    // until the database itself holds them all.
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let c = cluster.clone();
        let rows = tokio::task::spawn_blocking(move || {
            c.lock()
                .unwrap()
                .psql(
                    "outage",
                    "SELECT count(*) || ' ' || count(DISTINCT id) FROM usage_records",
                )
                .unwrap()
        })
        .await
        .unwrap();
        if rows.trim() == format!("{n} {n}") || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rows.trim(), format!("{n} {n}"), "every record exactly once");
    assert_eq!(
        std::fs::metadata(&spill).unwrap().len(),
        0,
        "journal drained"
    );
    Arc::try_unwrap(proxy).ok().unwrap().stop().await;
}
