//! Random model replacement end to end: many concurrent sessions through the
//! real proxy (each session's sequence, the metrics endpoint's counts), and
//! the official OpenAI Python SDK with replaced turns that show up in usage.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::python;
use common::*;
use llm_proxy::AppConfig;
use llm_proxy_core::BackendType;
use llm_proxy_testkit::{MockUpstream, MockUpstreamConfig};
use serde_json::{Value, json};

/// The backend type that serves replaced turns in the SDK test: replacement
/// across protocols (an OpenAI client served by an Anthropic backend), so the
/// replaced turns also exercise cross-protocol translation.
const SDK_REPLACEMENT_BACKEND_TYPE: BackendType = BackendType::Anthropic;

/// `primary` (OpenAI type) on one upstream, `secondary` of `secondary_type` on
/// another; replacement on with probability 1 and `turn_count` 2, every model
/// of `primary` replaced by `secondary:<to_model>`.
fn config(
    primary: &MockUpstream,
    secondary: &MockUpstream,
    secondary_type: BackendType,
    to_model: &str,
) -> AppConfig {
    let mut c = base_config();
    add_backend(&mut c, "primary", BackendType::OpenAi, &primary.base_url());
    add_backend(&mut c, "secondary", secondary_type, &secondary.base_url());
    c.default_backend = Some("primary".into());
    c.replacement.enabled = true;
    c.replacement.probability = 1.0;
    c.replacement.turn_count = 2;
    c.replacement.replacement_rules = serde_json::from_value(json!([
        {"from_pattern": "secondary:never", "to_backend": "primary", "to_model": "never"},
        {"from_pattern": "*", "to_backend": "secondary", "to_model": to_model},
    ]))
    .unwrap();
    c
}

/// Two mock upstreams: the original's and the replacement's.
async fn upstreams() -> (MockUpstream, MockUpstream) {
    let start = || async {
        MockUpstream::start(MockUpstreamConfig::default())
            .await
            .unwrap()
    };
    (start().await, start().await)
}

async fn stop(proxy: Proxy, primary: MockUpstream, secondary: MockUpstream) {
    proxy.stop().await;
    primary.shutdown().await;
    secondary.shutdown().await;
}

async fn metrics(proxy: &Proxy) -> Value {
    let r = get(&proxy.url("/v1/replacement/metrics"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

const SESSIONS: usize = 1000;
const TURNS: usize = 4;

/// How session `i` identifies itself (all three SPEC §7 ways are used).
fn identify(i: usize, body: &mut Value, headers: &mut Vec<(String, String)>) {
    match i % 3 {
        0 => headers.push(("x-session-id".into(), format!("header-session-{i}"))),
        1 => body["user"] = json!(format!("user-{i}")),
        // No id at all: the conversation's opening identifies the session.
        _ => {}
    }
}

/// Sessions whose second turn carries `X-Disable-Replacement: true`.
fn opts_out(i: usize) -> bool {
    i.is_multiple_of(10)
}

/// What each turn of session `i` must be served by (`R` replacement, `O` original).
fn expected(i: usize) -> &'static str {
    if opts_out(i) {
        // Turn 2 opted out; turn 3 rolls (probability 1) and starts two replaced turns.
        "OORR"
    } else {
        // Turn 2 rolls and hits; turn 3 is the second replaced turn; turn 4 cools down.
        "ORRO"
    }
}

/// Runs the `TURNS` turns of session `i` one after another; returns `O`/`R` per turn.
async fn run_session(proxy: Arc<Proxy>, limit: Arc<tokio::sync::Semaphore>, i: usize) -> String {
    // The opening stays the same on every turn, so a session without an id
    // keeps its fingerprint as the conversation grows.
    let opening = format!("session {i} opening");
    let mut messages = vec![json!({"role": "user", "content": opening})];
    let mut served = String::new();
    for turn in 1..=TURNS {
        let last = if turn == 1 {
            opening.clone()
        } else {
            let text = format!("session {i} turn {turn}");
            messages.push(json!({"role": "user", "content": text}));
            text
        };
        let mut body = json!({"model": "primary:mock", "messages": messages});
        let mut headers = Vec::new();
        identify(i, &mut body, &mut headers);
        if turn == 2 && opts_out(i) {
            headers.push(("x-disable-replacement".into(), "true".into()));
        }
        let header_refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let reply = {
            let _permit = limit.acquire().await.unwrap();
            post(
                &proxy.url("/v1/chat/completions"),
                &body.to_string(),
                &header_refs,
            )
            .await
        };
        assert_eq!(reply.status, 200, "session {i} turn {turn}: {}", reply.body);
        let v = reply.json();
        // The replacement (`echo`) repeats the last user message; the original (`mock`) does not.
        let answer = v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned();
        served.push(match v["model"].as_str().unwrap() {
            "echo" => {
                assert_eq!(answer, last, "session {i} turn {turn}");
                'R'
            }
            "mock" => 'O',
            other => panic!("session {i} turn {turn}: served by model {other}"),
        });
        messages.push(json!({"role": "assistant", "content": answer}));
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_sessions_each_keep_their_sequence_and_the_counts_add_up() {
    let (primary, secondary) = upstreams().await;
    let mut c = config(&primary, &secondary, BackendType::OpenAi, "echo");
    c.usage_tracking.enabled = false;
    let proxy = Arc::new(Proxy::start(c).await);

    // Every session runs at once; at most 64 requests are in flight.
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|i| tokio::spawn(run_session(proxy.clone(), limit.clone(), i)))
        .collect();
    let mut wrong = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let served = task.await.unwrap();
        if served != expected(i) {
            wrong.push(format!("session {i}: {served}, want {}", expected(i)));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} sessions out of sequence: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );

    // What the upstreams saw matches.
    let opted_out = (0..SESSIONS).filter(|i| opts_out(*i)).count() as u64;
    let replaced: u64 = 2 * SESSIONS as u64;
    let total = (SESSIONS * TURNS) as u64;
    assert_eq!(secondary.requests().len() as u64, replaced);
    assert_eq!(primary.requests().len() as u64, total - replaced);
    assert!(
        secondary
            .requests()
            .iter()
            .all(|r| r.json().unwrap()["model"] == "echo")
    );

    let m = metrics(&proxy).await;
    assert_eq!(m["enabled"], true);
    let a = &m["activation_metrics"];
    assert_eq!(a["total_activations"], SESSIONS as u64, "{m}");
    assert_eq!(a["unique_sessions_activated"], SESSIONS as u64, "{m}");
    assert_eq!(a["activations_last_60s"], SESSIONS as u64, "{m}");
    let t = &m["turn_count_metrics"];
    assert_eq!(t["total_turns_completed"], replaced, "{m}");
    assert_eq!(t["average_turn_count"], 2.0, "{m}");
    assert_eq!(t["turn_count_distribution"], json!({"2": SESSIONS}), "{m}");
    assert_eq!(t["unique_sessions_with_turns"], SESSIONS as u64, "{m}");
    let o = &m["opt_out_metrics"];
    assert_eq!(o["total_opt_outs"], opted_out, "{m}");
    assert_eq!(o["header_opt_outs"], opted_out, "{m}");
    assert_eq!(o["session_opt_outs"], 0, "{m}");
    assert_eq!(o["unique_sessions_opted_out"], opted_out, "{m}");
    // One roll per session: turn 2, or turn 3 after an opt-out; turn 4 is a cool-down or replaced.
    let p = &m["probability_check_metrics"];
    assert_eq!(p["total_probability_checks"], SESSIONS as u64, "{m}");
    assert_eq!(p["unique_sessions_checked"], SESSIONS as u64, "{m}");
    assert_eq!(
        m["session_metrics"]["tracked_sessions"], SESSIONS as u64,
        "{m}"
    );
    assert!(m["elapsed_seconds"].as_f64().unwrap() > 0.0);

    stop(Arc::try_unwrap(proxy).ok().unwrap(), primary, secondary).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacement_off_answers_enabled_false_and_never_rewrites() {
    let (primary, secondary) = upstreams().await;
    let mut c = config(&primary, &secondary, BackendType::OpenAi, "echo");
    c.replacement.enabled = false;
    let proxy = Proxy::start(c).await;
    for _ in 0..4 {
        let r = post(
            &proxy.url("/v1/chat/completions"),
            &chat("primary:mock", "hello", false),
            &[("x-session-id", "s")],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(primary.requests().len(), 4);
    assert!(secondary.requests().is_empty());
    let m = metrics(&proxy).await;
    assert_eq!(m["enabled"], false);
    assert_eq!(m["activation_metrics"]["total_activations"], 0);
    stop(proxy, primary, secondary).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_turns_through_the_openai_sdk_answer_and_are_recorded_as_replaced() {
    let (primary, secondary) = upstreams().await;
    let mut c = config(&primary, &secondary, SDK_REPLACEMENT_BACKEND_TYPE, "echo");
    c.usage_tracking.flush_interval_seconds = 0.2;
    let proxy = Proxy::start(c).await;
    let outcome = python::run_passing(
        "replacement_check.py",
        proxy.url(""),
        "replacement turns passed",
    )
    .await;
    let report = outcome.report();
    // Turns 2, 3, 5 and 6 went to the replacement backend, 1 and 4 to the original.
    assert_eq!(secondary.requests().len(), 4, "{report}");
    assert_eq!(primary.requests().len(), 2, "{report}");

    // Usage: six records of the session, the replaced ones flagged, with requested vs served model.
    let mut records = Vec::new();
    for _ in 0..200 {
        let r = get(
            &proxy.url("/v1/usage/recent?session_id=sdk-replacement-session&limit=100"),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        records = r.json()["records"].as_array().unwrap().clone();
        if records.len() == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(records.len(), 6, "{records:?}");
    records.sort_by_key(|r| r["turn_number"].as_u64());
    let mut replaced_turns = Vec::new();
    for r in &records {
        assert_eq!(r["requested_model"], "primary:mock", "{r}");
        assert_eq!(r["http_status_code"], 200, "{r}");
        if r["replaced"] == true {
            replaced_turns.push(r["turn_number"].as_u64().unwrap());
            assert_eq!(r["call_purpose"], "replacement", "{r}");
            assert_eq!(r["backend"], "secondary", "{r}");
            assert_eq!(r["model"], "echo", "{r}");
            assert_eq!(
                r["backend_type"],
                SDK_REPLACEMENT_BACKEND_TYPE.to_string(),
                "{r}"
            );
        } else {
            assert_eq!(r["replaced"], false, "{r}");
            assert_eq!(r["call_purpose"], Value::Null, "{r}");
            assert_eq!(r["backend"], "primary", "{r}");
            assert_eq!(r["model"], "mock", "{r}");
        }
    }
    assert_eq!(replaced_turns, [2, 3, 5, 6], "{records:?}");
    let m = metrics(&proxy).await;
    assert_eq!(m["activation_metrics"]["total_activations"], 2, "{m}");
    assert_eq!(m["turn_count_metrics"]["total_turns_completed"], 4, "{m}");

    stop(proxy, primary, secondary).await;
}
