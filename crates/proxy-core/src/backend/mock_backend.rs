//! The in-process `mock` backend: the deterministic mock model of
//! [`crate::mock`] answered without a network hop. It honours the same
//! per-request knobs (delays, chunk count, faults) as the testkit mock
//! upstream, and the same timeouts as an HTTP backend, so `+fault-hang`
//! ends in a 504 rather than a hang.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::sync::mpsc;

use super::{Backend, BackendRequest, BackendResponse, BoxFuture, IdleTimeoutBody, UpstreamBody};
use crate::config::{BackendType, Timeouts};
use crate::error::{UpstreamError, UpstreamErrorKind};
use crate::mock::{self, MockFault, MockOptions, MockReply};

/// The built-in mock backend.
pub struct MockBackend {
    name: Arc<str>,
    timeouts: Timeouts,
}

impl MockBackend {
    /// A mock backend called `name` with the given timeouts.
    pub fn new(name: &str, timeouts: Timeouts) -> MockBackend {
        MockBackend {
            name: Arc::from(name),
            timeouts,
        }
    }

    fn error(&self, kind: UpstreamErrorKind, detail: impl Into<String>) -> UpstreamError {
        UpstreamError::new(self.name.to_string(), kind, detail)
    }

    /// The answer, before the first-byte timeout is applied.
    async fn answer(&self, request: BackendRequest) -> Result<BackendResponse, UpstreamError> {
        let frontend = request.frontend;
        let json_error = |status: u16, message: &str| BackendResponse {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            headers: headers("application/json"),
            body: full(frontend.error_body(status, message)),
        };
        let value: serde_json::Value = match serde_json::from_slice(&request.body) {
            Ok(v) => v,
            Err(e) => return Ok(json_error(400, &format!("mock: invalid JSON: {e}"))),
        };
        let model = value
            .get("model")
            .and_then(|m| m.as_str())
            .unwrap_or_default();
        let options = match MockOptions::from_request(&request.headers, model) {
            Ok(o) => o,
            Err(e) => return Ok(json_error(e.status(), &e.to_string())),
        };
        if !options.first_token_delay.is_zero() {
            tokio::time::sleep(options.first_token_delay).await;
        }
        if options.fault == Some(MockFault::NeverAnswer) {
            std::future::pending::<()>().await;
        }
        let reply = match mock::reply(frontend, &value, &options) {
            Ok(r) => r,
            Err(e) => return Ok(json_error(e.status(), &e.to_string())),
        };
        let status = StatusCode::from_u16(reply.status()).unwrap_or(StatusCode::OK);
        let mut head = headers(reply.content_type());
        if status == StatusCode::TOO_MANY_REQUESTS {
            head.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        let reset = options.fault == Some(MockFault::ResetMidStream);
        let reset_error = self.error(UpstreamErrorKind::Protocol, "mock: connection reset");
        let events = match reply {
            // A JSON reset: the head arrives, then the body breaks off.
            MockReply::Json { body, .. } if !reset => {
                return Ok(BackendResponse {
                    status,
                    headers: head,
                    body: full(body),
                });
            }
            MockReply::Json { .. } => Vec::new(),
            MockReply::Stream { events } => events,
        };
        let reset_after = reset.then(|| mock::reset_point(events.len()));
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, UpstreamError>>(4);
        tokio::spawn(feed(
            events,
            options.inter_chunk_delay,
            reset_after,
            reset_error,
            tx,
        ));
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let body = IdleTimeoutBody::new(
            StreamBody::new(Box::pin(stream)),
            self.timeouts.idle,
            self.name.clone(),
        );
        Ok(BackendResponse {
            status,
            headers: head,
            body: body.boxed_unsync(),
        })
    }
}

impl Backend for MockBackend {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn backend_type(&self) -> BackendType {
        BackendType::Mock
    }

    fn uri_for(&self, request: &BackendRequest) -> Uri {
        format!(
            "mock://{}/v1{}",
            self.name,
            request.frontend.upstream_path()
        )
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"))
    }

    fn authorize(&self, _headers: &mut HeaderMap) {}

    fn send(
        &self,
        request: BackendRequest,
    ) -> BoxFuture<'_, Result<BackendResponse, UpstreamError>> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeouts.first_byte, self.answer(request)).await {
                Ok(result) => result,
                Err(_) => Err(self.error(
                    UpstreamErrorKind::FirstByteTimeout,
                    format!("no response within {:?}", self.timeouts.first_byte),
                )),
            }
        })
    }
}

/// Sends `events` with `gap` between them; after `reset_after` events, the error.
async fn feed(
    events: Vec<Bytes>,
    gap: Duration,
    reset_after: Option<usize>,
    reset_error: UpstreamError,
    tx: mpsc::Sender<Result<Frame<Bytes>, UpstreamError>>,
) {
    for (i, event) in events.into_iter().enumerate() {
        if reset_after == Some(i) {
            break;
        }
        if i > 0 && !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        if tx.send(Ok(Frame::data(event))).await.is_err() {
            return; // receiver gone: the client left
        }
    }
    if reset_after.is_some() {
        let _ = tx.send(Err(reset_error)).await;
    }
}

fn full(bytes: Bytes) -> UpstreamBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn headers(content_type: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    if content_type == "text/event-stream" {
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
    }
    h
}
