//! The probes against real sockets on 127.0.0.1: what counts as up or down,
//! the errors users see, the redirect policy, and ICMP to loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llm_proxy_health::probe::http::HttpProber;
use llm_proxy_health::probe::icmp::{self, PingOutcome};
use llm_proxy_health::{EndpointUrl, HttpProbeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A tiny HTTP/1.1 server on 127.0.0.1:0 answering every request with
/// `response(path)` and recording each request head.
struct CannedServer {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl CannedServer {
    async fn start(response: fn(&str, SocketAddr) -> String) -> CannedServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    seen.lock().unwrap().push(head);
                    let _ = socket.write_all(response(&path, addr).as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        CannedServer { addr, heads }
    }

    fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn status(code: u16, extra: &str) -> String {
    format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n{extra}\r\n")
}

fn prober(method: &str, path: &str) -> HttpProber {
    HttpProber::new(&HttpProbeConfig {
        method: method.into(),
        path: path.into(),
        timeout_seconds: 2.0,
        ..HttpProbeConfig::default()
    })
    .unwrap()
}

fn endpoint(url: &str) -> EndpointUrl {
    EndpointUrl::parse(url).unwrap()
}

#[tokio::test]
async fn nothing_listening_is_down_with_a_clear_error() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let result = prober("HEAD", "")
        .check(&endpoint(&format!("http://{addr}/v1")))
        .await;
    assert_eq!(result.passed, Some(false));
    assert_eq!(result.status, None);
    let error = result.error.unwrap();
    assert!(error.starts_with("connection failed:"), "{error}");
    assert!(error.contains("refused"), "{error}");
}

#[tokio::test]
async fn server_errors_are_down_and_client_errors_are_up() {
    let s500 = CannedServer::start(|_, _| status(500, "")).await;
    let r = prober("HEAD", "").check(&endpoint(&s500.url())).await;
    assert_eq!(r.passed, Some(false));
    assert_eq!(r.status, Some(500));
    assert_eq!(r.error.as_deref(), Some("HTTP 500"));

    let s404 = CannedServer::start(|_, _| status(404, "")).await;
    let r = prober("GET", "/health").check(&endpoint(&s404.url())).await;
    assert_eq!(r.passed, Some(true));
    assert_eq!(r.status, Some(404));
    assert_eq!(r.error, None);
    assert!(r.latency.is_some());
    // GET of api_url + path, with no credentials and no body.
    let head = &s404.heads()[0];
    assert!(head.starts_with("GET /v1/health HTTP/1.1\r\n"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(!lower.contains("authorization"), "{head}");
    assert!(!lower.contains("x-api-key"), "{head}");
    assert!(!lower.contains("content-length"), "{head}");
    assert!(lower.contains("user-agent: llm-proxy-health/"), "{head}");
}

#[tokio::test]
async fn the_up_threshold_is_configurable() {
    let s404 = CannedServer::start(|_, _| status(404, "")).await;
    let strict = HttpProber::new(&HttpProbeConfig {
        healthy_below_status: 400,
        ..HttpProbeConfig::default()
    })
    .unwrap();
    let r = strict.check(&endpoint(&s404.url())).await;
    assert_eq!(r.passed, Some(false));
    assert_eq!(r.error.as_deref(), Some("HTTP 404"));
}

#[tokio::test]
async fn a_redirect_to_link_local_is_refused_without_connecting() {
    let s = CannedServer::start(|_, _| {
        status(
            302,
            "location: http://169.254.169.254/latest/meta-data/iam/\r\n",
        )
    })
    .await;
    let started = Instant::now();
    let r = prober("HEAD", "").check(&endpoint(&s.url())).await;
    assert_eq!(r.passed, Some(false));
    let error = r.error.unwrap();
    assert!(
        error.contains("redirect to http://169.254.169.254/latest/meta-data/iam refused"),
        "{error}"
    );
    assert!(error.contains("link-local"), "{error}");
    // Refused before any connection: no connect timeout was waited for.
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(s.heads().len(), 1);
}

#[tokio::test]
async fn same_host_redirects_are_followed_and_loops_end() {
    let s = CannedServer::start(|path, addr| {
        if path == "/v1" {
            status(301, &format!("location: http://{addr}/v1/\r\n"))
        } else {
            status(200, "")
        }
    })
    .await;
    let r = prober("HEAD", "").check(&endpoint(&s.url())).await;
    assert_eq!(r.passed, Some(true), "{:?}", r.error);
    assert_eq!(r.status, Some(200));
    assert_eq!(s.heads().len(), 2);

    let looping = CannedServer::start(|_, _| status(307, "location: /v1\r\n")).await;
    let r = prober("HEAD", "").check(&endpoint(&looping.url())).await;
    assert_eq!(r.passed, Some(false));
    assert_eq!(r.error.as_deref(), Some("more than 5 redirects"));
}

#[tokio::test]
async fn a_silent_server_is_down_after_the_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let p = HttpProber::new(&HttpProbeConfig {
        timeout_seconds: 0.3,
        ..HttpProbeConfig::default()
    })
    .unwrap();
    let started = Instant::now();
    let r = p.check(&endpoint(&format!("http://{addr}/v1"))).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(r.passed, Some(false));
    assert_eq!(r.error.as_deref(), Some("no response within 0.3s"));
}

/// ICMP echo to 127.0.0.1 through the async entry point. CI runs as root;
/// without CAP_NET_RAW this must say "unavailable", never fail.
#[tokio::test]
async fn ping_loopback_reports_a_latency() {
    let outcome = icmp::ping(
        "127.0.0.1",
        3,
        Duration::from_secs(1),
        Arc::new(AtomicBool::new(false)),
    )
    .await;
    match outcome {
        PingOutcome::Done {
            sent: 3,
            received: 3,
            mean_rtt: Some(rtt),
        } => assert!(rtt > Duration::ZERO && rtt < Duration::from_secs(1)),
        other => panic!("expected three replies from 127.0.0.1 (run as root): {other:?}"),
    }
}
