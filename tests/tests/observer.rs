//! The observer seam sees every leg of every exchange, in order, with the end
//! reported exactly once: on success (JSON and SSE), on upstream failure and
//! when the client walks away mid-stream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Method, StatusCode, Uri};
use llm_proxy_api::{ApiServer, ServerConfig, Services};
use llm_proxy_core::{
    AttemptInfo, BackendConfig, BackendType, Completion, ExchangeContext, ExchangeObserver,
    ExchangeOutcome, IncompleteReason, ObserverSet, Pipeline, RoutingConfig, UpstreamError,
};
use llm_proxy_testkit::{MockUpstream, MockUpstreamConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, PartialEq)]
enum Leg {
    ClientRequest,
    BackendRequest(String),
    BackendHead(u16),
    BackendChunk,
    BackendEnd { error: bool },
    ClientHead(u16),
    ClientChunk,
    End(Completion, u16),
}

#[derive(Default)]
struct Recorder {
    legs: Mutex<Vec<(String, Leg, Instant)>>,
    outcomes: Mutex<Vec<ExchangeOutcome>>,
}

impl Recorder {
    fn push(&self, ex: &ExchangeContext, leg: Leg) {
        self.legs
            .lock()
            .unwrap()
            .push((ex.request_id.to_string(), leg, Instant::now()));
    }
    /// The legs of the one exchange recorded, with consecutive chunks collapsed.
    fn sequence(&self) -> Vec<Leg> {
        let legs = self.legs.lock().unwrap();
        let ids: std::collections::HashSet<_> = legs.iter().map(|(id, _, _)| id.clone()).collect();
        assert_eq!(ids.len(), 1, "one exchange");
        let mut out: Vec<Leg> = Vec::new();
        for (_, leg, _) in legs.iter() {
            if matches!(leg, Leg::BackendChunk | Leg::ClientChunk)
                && out.len() >= 2
                && out[out.len() - 2] == *leg
            {
                continue;
            }
            out.push(leg.clone());
        }
        out
    }
    fn clear(&self) {
        self.legs.lock().unwrap().clear();
        self.outcomes.lock().unwrap().clear();
    }
}

impl ExchangeObserver for Recorder {
    fn on_client_request(
        &self,
        ex: &ExchangeContext,
        _: &Method,
        _: &Uri,
        _: &HeaderMap,
        _: &Bytes,
    ) {
        self.push(ex, Leg::ClientRequest);
    }
    fn on_backend_request(
        &self,
        ex: &ExchangeContext,
        a: &AttemptInfo,
        _: &Uri,
        _: &HeaderMap,
        _: &Bytes,
    ) {
        self.push(ex, Leg::BackendRequest(a.backend.to_string()));
    }
    fn on_backend_response_head(
        &self,
        ex: &ExchangeContext,
        _: &AttemptInfo,
        s: StatusCode,
        _: &HeaderMap,
        _: Instant,
    ) {
        self.push(ex, Leg::BackendHead(s.as_u16()));
    }
    fn on_backend_response_chunk(
        &self,
        ex: &ExchangeContext,
        _: &AttemptInfo,
        _: &Bytes,
        _: Instant,
    ) {
        self.push(ex, Leg::BackendChunk);
    }
    fn on_backend_response_end(
        &self,
        ex: &ExchangeContext,
        _: &AttemptInfo,
        e: Option<&UpstreamError>,
        _: Instant,
    ) {
        self.push(ex, Leg::BackendEnd { error: e.is_some() });
    }
    fn on_client_response_head(
        &self,
        ex: &ExchangeContext,
        s: StatusCode,
        _: &HeaderMap,
        _: Instant,
    ) {
        self.push(ex, Leg::ClientHead(s.as_u16()));
    }
    fn on_client_response_chunk(&self, ex: &ExchangeContext, _: &Bytes, _: Instant) {
        self.push(ex, Leg::ClientChunk);
    }
    fn on_exchange_end(&self, ex: &ExchangeContext, outcome: &ExchangeOutcome) {
        self.push(ex, Leg::End(outcome.completion, outcome.status));
        self.outcomes.lock().unwrap().push(outcome.clone());
    }
}

async fn observed_proxy(
    up: &MockUpstream,
    dead: &str,
) -> (Arc<Recorder>, String, tokio::sync::oneshot::Sender<()>) {
    let mut routing = RoutingConfig {
        default_backend: "up".into(),
        ..RoutingConfig::default()
    };
    routing.backends.insert(
        "up".into(),
        BackendConfig::new(BackendType::OpenAi).with_url(up.base_url()),
    );
    routing.backends.insert(
        "dead".into(),
        BackendConfig::new(BackendType::OpenAi).with_url(dead),
    );
    let recorder = Arc::new(Recorder::default());
    let pipeline = Pipeline::new(routing)
        .unwrap()
        .with_observers(ObserverSet::new(vec![recorder.clone()]));
    let server = ApiServer::bind(
        ServerConfig {
            port: 0,
            ..ServerConfig::default()
        },
        Arc::new(pipeline),
        Services::default(),
    )
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        let _ = rx.await;
    }));
    (recorder, format!("http://{addr}"), tx)
}

#[tokio::test]
async fn every_leg_is_reported_in_order_and_the_end_exactly_once() {
    let up = MockUpstream::start(MockUpstreamConfig::default())
        .await
        .unwrap();
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    };
    let (rec, base, _stop) = observed_proxy(&up, &dead).await;
    let url = format!("{base}/v1/chat/completions");

    // JSON success.
    let started = Instant::now();
    let r = post(&url, &chat("up:echo", "hello", false), &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        eventually(Duration::from_secs(2), || !rec
            .outcomes
            .lock()
            .unwrap()
            .is_empty())
        .await
    );
    assert_eq!(
        rec.sequence(),
        vec![
            Leg::ClientRequest,
            Leg::BackendRequest("up".into()),
            Leg::BackendHead(200),
            Leg::ClientHead(200),
            Leg::BackendChunk,
            Leg::ClientChunk,
            Leg::BackendEnd { error: false },
            Leg::End(Completion::Completed, 200),
        ]
    );
    let outcome = rec.outcomes.lock().unwrap()[0].clone();
    assert!(outcome.ttft.unwrap() <= started.elapsed());
    assert!(outcome.upstream_time <= outcome.total);
    assert_eq!(outcome.served_by.unwrap().model, "echo");
    rec.clear();

    // SSE success: many chunks, one end.
    let s = post_stream(
        &url,
        &chat("up:echo", "a b c", true),
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(s.status, 200);
    assert!(
        eventually(Duration::from_secs(2), || !rec
            .outcomes
            .lock()
            .unwrap()
            .is_empty())
        .await
    );
    let seq = rec.sequence();
    assert_eq!(seq.first(), Some(&Leg::ClientRequest));
    assert_eq!(seq.last(), Some(&Leg::End(Completion::Completed, 200)));
    let chunks = rec
        .legs
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, l, _)| *l == Leg::ClientChunk)
        .count();
    assert_eq!(
        chunks,
        s.frames.len(),
        "one client chunk report per frame sent"
    );
    rec.clear();

    // Upstream refuses: the attempt ends with an error, the client gets 502.
    let r = post(&url, &chat("dead:echo", "hi", false), &[]).await;
    assert_eq!(r.status, 502);
    assert!(
        eventually(Duration::from_secs(2), || !rec
            .outcomes
            .lock()
            .unwrap()
            .is_empty())
        .await
    );
    assert_eq!(
        rec.sequence(),
        vec![
            Leg::ClientRequest,
            Leg::BackendRequest("dead".into()),
            Leg::BackendEnd { error: true },
            Leg::ClientHead(502),
            Leg::ClientChunk,
            Leg::End(Completion::Failed, 502),
        ]
    );
    rec.clear();

    // The client walks away mid-stream.
    let addr = base.trim_start_matches("http://").to_owned();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = chat("up:echo", "a b c d e f g h", true);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nx-mock-inter-chunk-delay-ms: 300\r\nx-mock-chunks: 8\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 2048];
    let n = sock.read(&mut buf).await.unwrap();
    assert!(n > 0);
    drop(sock);
    assert!(
        eventually(Duration::from_secs(3), || !rec
            .outcomes
            .lock()
            .unwrap()
            .is_empty())
        .await,
        "the end of an abandoned stream is reported"
    );
    let outcome = rec.outcomes.lock().unwrap()[0].clone();
    assert_eq!(
        outcome.completion,
        Completion::Incomplete(IncompleteReason::ClientDisconnect)
    );
    assert_eq!(rec.outcomes.lock().unwrap().len(), 1);

    rec.clear();

    // The client walks away before any response head exists.
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = chat("up:echo", "hi", false);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nx-mock-fault: hang\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(2), || up.requests().len() >= 4).await,
        "request reached the upstream"
    );
    drop(sock);
    assert!(
        eventually(Duration::from_secs(3), || !rec
            .outcomes
            .lock()
            .unwrap()
            .is_empty())
        .await,
        "an exchange abandoned before its head is still reported"
    );
    let outcome = rec.outcomes.lock().unwrap()[0].clone();
    assert_eq!(
        outcome.completion,
        Completion::Incomplete(IncompleteReason::ClientDisconnect)
    );
    assert_eq!(outcome.status, 499);
}
